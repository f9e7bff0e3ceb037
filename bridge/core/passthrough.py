"""Passthrough routes: relayed to the provider as they are (the engine records each call).

Model lists, token counting, telemetry. The request goes to the provider's base
URL with the suffix below the route prefix (never another host, never above the
base path: :meth:`bridge.dialects.providers.Provider.route` refuses such paths), and the
response streams back unchanged. Like an interception, the relay runs in a
nursery with a watcher of the client, so a client leaving closes the upstream, and
the provider's ``response_timeout`` and ``stream_idle_timeout`` bound a stalled one.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from bridge.core.exchange import Request, ResponseSink
from bridge.dialects.providers import Headers, Route, forwardable_response_headers
from bridge.errors import ClientError, UpstreamError
from bridge.services.upstream import UpstreamClient, UpstreamTimeout

__all__ = ["passthrough"]


async def passthrough(
    route: Route,
    request: Request,
    sink: ResponseSink,
    upstream: UpstreamClient,
    *,
    headers: Headers,
    error_body: Callable[[int, str], bytes],
) -> None:
    """Relay one request and its response, sending ``headers`` upstream (built by
    :meth:`~bridge.dialects.providers.Provider.upstream_headers`); ``error_body`` shapes errors
    for the provider.

    Failures before the response started are answered here (a 502 for an upstream
    that cannot be reached, a 4xx for a request that cannot be sent); after it, the
    body is left unended (the sink's owner cuts the client's connection). Nothing
    leaves this function as an exception group.
    """
    started = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await sink.wait_disconnected()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            url = route.upstream_url(request.query)
            settings = route.provider.config
            async with upstream.open(
                request.method,
                url,
                headers,
                request.body,
                response_timeout=settings.response_timeout,
                idle_timeout=settings.stream_idle_timeout,
                settings=f"providers.{route.provider.name}.",
            ) as response:
                await sink.start(response.status, forwardable_response_headers(response.headers))
                started = True
                with response.guard():
                    async for chunk in response.chunks():
                        await sink.send(chunk)
                await sink.end()
        except (UpstreamError, ClientError) as exc:
            if started:
                # The upstream failed mid-way. The body is left unfinished, never ended
                # as if whole: the server closes the connection, so the client sees it cut.
                nursery.cancel_scope.cancel()
                return
            unreachable = isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamTimeout)
            message = "the upstream is unreachable" if unreachable else str(exc)
            body = error_body(exc.status_hint, message)
            await sink.start(exc.status_hint, [("content-type", "application/json")])
            await sink.end(body)
        nursery.cancel_scope.cancel()
