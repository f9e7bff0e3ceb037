"""The HTTP layer: an ASGI entry point that owns bridged requests, Quart for the rest.

Why not a Quart view for the bridged routes: a view returns its ``Response``
before the body streams, so a nursery opened in the view cannot own the stream,
and clients leaving between the upstream headers and the body's first step leaked
upstream connections. Here one task owns each request from its first
byte to its last: it has the engine admit the request from its head alone (route,
method, credentials), so a request without a valid key is answered before a byte of
its body is read; then it reads the body, bounded in size
(``server.max_body_bytes``), in time (``server.body_timeout``) and, across all the
requests of the process, in bytes held (``server.max_buffered_bytes``); then it hands
the request to the engine with a sink over ASGI ``send``, and reports the client
leaving through ``receive()``, which hypercorn's ``send()`` never does.

An answer given before the body was read closes the connection (``Connection:
close``): the rest of the body is never read, so the connection cannot carry another
request.

Everything that is not a provider route (health, readiness, metrics, and the 404
for unknown paths) is served by a small Quart-Trio app.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from bridge.config import ConfigError
from bridge.core.engine import Engine
from bridge.core.exchange import Request
from bridge.dialects.providers import suggest_route
from bridge.errors import (
    BridgeError,
    ClientError,
    GatewayBusy,
    GatewayUnavailable,
    PayloadTooLarge,
    RequestTimeout,
)
from bridge.protocol.headers import bearer_token
from bridge.recording.reports import format_usage, parse_since, usage_records
from bridge.telemetry.metrics import render

__all__ = ["ASGIApp", "make_asgi_app"]

logger = logging.getLogger("bridge.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGISink:
    """A :class:`~bridge.core.exchange.ResponseSink` over one ASGI HTTP exchange."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.started = False
        self.ended = False

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )

    async def send(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, last: bytes = b"") -> None:
        self.ended = True
        await self._send({"type": "http.response.body", "body": last, "more_body": False})

    async def wait_disconnected(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass


class _BodyBudget:
    """The request bodies the process holds at once, against ``server.max_buffered_bytes``.

    A body counts from its first byte (or, announced by ``Content-Length``, whole and at
    once) until its request has ended: the engine keeps it for retries and the inner
    loop. Past the budget a request gets 503 with ``Retry-After`` rather than waiting:
    a waiting request would still hold its connection, and SDKs retry a 503 by
    themselves.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self) -> Iterator[_Hold]:
        """What one request holds; given back when the block ends."""
        hold = _Hold(self)
        try:
            yield hold
        finally:
            self.held -= hold.size


class _Hold:
    def __init__(self, budget: _BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all; :class:`GatewayBusy` if the budget has no room."""
        extra = size - self.size
        if extra <= 0:
            return
        if self.budget.held + extra > self.budget.limit:
            raise GatewayBusy(
                "the gateway holds as many request bodies as it may right now"
                f" (server.max_buffered_bytes = {self.budget.limit}); retry shortly"
            )
        self.budget.held += extra
        self.size = size


async def _read_body(
    receive: Receive, limit: int, declared: int | None, hold: _Hold
) -> bytes | None:
    """The whole request body, or ``None`` if the client left while sending it."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit} byte limit")
    if declared is not None:
        hold.grow_to(declared)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit} byte limit")
        hold.grow_to(size)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _request_from_scope(scope: Scope, body: bytes) -> Request:
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    client = scope.get("client")
    return Request(
        method=scope["method"],
        path=path,
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        body=body,
        client_address=client[0] if client else "",
        scheme=scope.get("scheme", "http"),
    )


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _may_have_body(scope: Scope) -> bool:
    """Whether the request announced a body (a length above 0, or chunks)."""
    for key, value in scope["headers"]:
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _serve_provider_route(
    engine: Engine, budget: _BodyBudget, scope: Scope, receive: Receive, send: Send
) -> None:
    sink = ASGISink(receive, send)
    path = scope["path"]
    head = _request_from_scope(scope, b"")
    try:
        with budget.hold() as hold:
            try:
                admission = await engine.admit(head)
            except (ClientError, GatewayUnavailable) as exc:
                close = _may_have_body(scope)
                await _plain_error(sink, exc, engine=engine, path=path, close=close)
                return
            server = engine.config.server
            try:
                with trio.move_on_after(server.body_timeout) as reading:
                    body = await _read_body(
                        receive, server.max_body_bytes, _declared_length(scope), hold
                    )
                if reading.cancelled_caught:
                    raise RequestTimeout(
                        "the request body did not arrive within server.body_timeout"
                        f" ({server.body_timeout:g} s); send it faster, or in smaller requests"
                    )
            except (ClientError, GatewayUnavailable) as exc:
                await _plain_error(sink, exc, engine=engine, path=path, close=True)
                return
            if body is None:
                return
            await engine.handle(replace(head, body=body), sink, admission)
    except Exception:
        logger.exception("unexpected error serving %s %s", scope["method"], path)
        if not sink.started:
            error = BridgeError("internal error in the gateway")
            await _plain_error(sink, error, engine=engine, path=path)


async def _plain_error(
    sink: ASGISink,
    error: BridgeError,
    *,
    engine: Engine,
    path: str,
    close: bool = False,
) -> None:
    status = error.status_hint
    body = engine.error_body(path, status, str(error))
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    headers += error.headers
    if not close:
        await sink.start(status, headers)
        await sink.end(body)
        return
    # The rest of the body will not be read: the connection cannot carry another request
    # (and quart-trio/hypercorn-trio hang a keep-alive one after an early answer).
    headers.append(("connection", "close"))
    await sink.start(status, headers)
    async with trio.open_nursery() as nursery:
        # Ending the response has hypercorn queue a disconnect for this request, behind
        # the body chunks it read ahead; with its queue full of them, that would wait
        # for ever. Chunks are dropped meanwhile, and stop once the connection closes.
        nursery.start_soon(sink.wait_disconnected)
        await sink.end(body)
        nursery.cancel_scope.cancel()


async def _refuse_websocket(engine: Engine, scope: Scope, send: Send) -> None:
    """Answer a WebSocket upgrade on a provider route with ``426 Upgrade Required``.

    Codex tries WebSocket mode on ``/responses`` first; a 426 makes it fall back to
    HTTP at once, where 404/405/500/501 cost it seven retries and about 6.5 s.
    """
    message = "WebSocket mode is not available on this gateway yet; use HTTP (SSE) streaming"
    body = engine.error_body(scope["path"], 426, message)
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1003})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "websocket.http.response.start", "status": 426, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def _control_app(engine: Engine) -> QuartTrio:
    app = QuartTrio("bridge")
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready or not by status code; the checks too, unless they need the metrics key
        (they name MCP servers, the journal backlog, the providers)."""
        checks = await engine.readiness()
        required = [c["ok"] for c in checks.values() if c.get("required", True)]
        optional = [c["ok"] for c in checks.values() if not c.get("required", True)]
        ready = all(required)
        status = 200 if ready else 503
        if not _may_observe(engine):
            return _json({"ready": ready}, status)
        state = "ok" if ready and all(optional) else "degraded" if ready else "unready"
        return _json({"ready": ready, "status": state, "checks": checks}, status)

    @app.get("/api/v1/usage")
    async def usage() -> Response:
        """The usage report of ``bridgectl usage``: ``since`` and ``by`` as there,
        ``format`` json (the default) or csv (a download)."""
        admin_key = engine.config.auth.admin_key
        if not admin_key:
            message = "the usage API is off: set auth.admin_key to enable it"
            return _json({"error": {"type": "not_found", "message": message}}, 404)
        presented = bearer_token(request.headers.get("authorization", ""))
        if not hmac.compare_digest(presented.encode(), admin_key.encode()):
            message = "the usage API needs 'Authorization: Bearer <auth.admin_key>'"
            return _json({"error": {"type": "authentication_error", "message": message}}, 401)
        by = tuple(dict.fromkeys(request.args.getlist("by") or ["user"]))
        fmt = request.args.get("format", "json")
        try:
            if unknown := sorted(set(request.args) - _USAGE_PARAMETERS):
                raise ValueError(
                    f"unknown parameter {unknown[0]!r}; the usage API takes"
                    f" {', '.join(sorted(_USAGE_PARAMETERS))}"
                )
            if fmt not in ("json", "csv"):
                raise ValueError(f"format must be json or csv, got {fmt[:40]!r}")
            since_text = request.args.get("since")
            since = parse_since(since_text, name="since") if since_text else None
            rows = await trio.to_thread.run_sync(lambda: engine.store.usage(since=since, by=by))
        except (ConfigError, ValueError) as exc:
            return _json({"error": {"type": "invalid_request_error", "message": str(exc)}}, 400)
        if fmt == "csv":
            return Response(
                format_usage(rows, by, "csv") + "\n",
                content_type="text/csv; charset=utf-8",
                headers={"content-disposition": 'attachment; filename="usage.csv"'},
            )
        return _json(
            {
                "since": since.isoformat() if since else None,
                "by": list(by),
                "rows": usage_records(rows, by),
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        if not _may_observe(engine):
            key = "metrics_key" if engine.config.observability.metrics_key else "admin_key"
            section = "observability" if key == "metrics_key" else "auth"
            message = f"/metrics needs 'Authorization: Bearer <{section}.{key}>'"
            return _json({"error": {"type": "authentication_error", "message": message}}, 401)
        engine.metrics.recorder_observed(engine.recorder.stats)
        body, content_type = await trio.to_thread.run_sync(render, engine.metrics)
        return Response(body, content_type=content_type)

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Response:
        message = f"route not supported: {request.method} {request.path}"
        if meant := suggest_route(engine.providers.values(), request.path):
            provider, path = meant
            base = f"{request.scheme}://{request.host}{provider.prefix}"
            message += f"; did you mean {path}? (the base URL is {base})"
        return _json({"error": {"type": "not_found", "message": message}}, 404)

    @app.errorhandler(405)
    async def not_allowed(_: Exception) -> Response:
        message = f"method not allowed: {request.method} {request.path}"
        return _json({"error": {"type": "method_not_allowed", "message": message}}, 405)

    @app.after_request
    async def close_after_early_errors(response: Response) -> Response:
        if response.status_code in (408, 413):
            response.headers["Connection"] = "close"
        return response

    return app


def _may_observe(engine: Engine) -> bool:
    """Whether this request may read ``/metrics`` and the ``/readyz`` checks: always,
    unless ``observability.metrics_auth`` asks for the metrics key (user ids, models and
    clients are in the labels)."""
    if not engine.config.observability.metrics_auth:
        return True
    presented = bearer_token(request.headers.get("authorization", ""))
    return hmac.compare_digest(presented.encode(), engine.config.metrics_key.encode())


_USAGE_PARAMETERS = frozenset({"since", "by", "format"})


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, content_type="application/json")


def make_asgi_app(engine: Engine) -> ASGIApp:
    """The gateway's ASGI application over ``engine``."""
    control = _control_app(engine)
    budget = _BodyBudget(engine.config.server.max_buffered_bytes)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and engine.owns(scope["path"]):
            await _serve_provider_route(engine, budget, scope, receive, send)
        elif scope["type"] == "websocket" and engine.owns(scope["path"]):
            await _refuse_websocket(engine, scope, send)
        else:
            await control(scope, receive, send)  # type: ignore[arg-type]

    return app
