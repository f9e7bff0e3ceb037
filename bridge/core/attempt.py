"""One upstream call: the provider's resilience (breaker, retries, key failover), then
the relay of its response to the client, and the turn's records.

Nothing of a call reaches the client before :func:`attempt` yields its final response,
so every retry and failover here is invisible to the client.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bridge.core.accounting import record_turn
from bridge.core.relay import Relay
from bridge.core.state import RECORD_DEADLINE, Interception
from bridge.dialects.base import Turn, TurnResult
from bridge.dialects.providers import forwardable_response_headers
from bridge.errors import CircuitOpen, KeysExhausted, UpstreamProtocolError, UpstreamUnavailable
from bridge.protocol.headers import header_value
from bridge.protocol.sse import Decoder, Event, SSEProtocolError
from bridge.recording.records import CredentialKind
from bridge.services.breaker import Ticket
from bridge.services.resilience import Key, KeyPool, NoKeyAvailable, next_step
from bridge.services.upstream import MAX_ERROR_BODY, UpstreamResponse
from bridge.telemetry.tracing import SPAN_UPSTREAM

__all__ = ["attempt", "call_upstream"]

_JSON = ("content-type", "application/json")


@asynccontextmanager
async def attempt(ix: Interception, body: bytes) -> AsyncIterator[UpstreamResponse]:
    """Send ``body`` upstream with the provider's resilience; yield the final response.

    Each attempt passes the circuit breaker first (open: :class:`CircuitOpen`, the
    upstream is not called) and feeds it its outcome. Then :func:`next_step` decides:
    keep the response, retry it (connection errors and response timeouts,
    408/409/429/5xx, after ``retry-after`` or a backoff), or fail over to the
    provider's next centralized key (429/401/403). Nothing has been sent to the client
    for this call yet, so retrying is invisible to it. :class:`KeysExhausted` when
    every key is resting.

    The final response's body is read under its idle guard (``stream_idle_timeout``),
    and the breaker hears of it once it is closed: a body cut by a timeout or a
    connection failure counts as a failure, like a connection that never answered.
    """
    provider = ix.route.provider
    settings = provider.config
    services, progress = ix.services, ix.progress
    url = ix.route.upstream_url(ix.request.query)
    pool = services.pool if ix.credential.kind is CredentialKind.CENTRALIZED else None
    key = _choose_key(ix, pool, set())
    tried: set[int] = set()
    attempt = 0
    while True:
        ticket = _admit(ix)
        credential = provider.centralized(key.secret) if key is not None else ix.credential
        headers = provider.upstream_headers(
            list(ix.request.headers),
            credential,
            strip=ix.strip_headers,
            actor=ix.actor,
            client_address=ix.request.client_address,
            scheme=ix.request.scheme,
            trusted_peer=ix.trusted_peer,
        )
        dump_base = _dump_request(ix, url, headers, body)
        try:
            with services.observer.span(SPAN_UPSTREAM):
                response = await services.upstream.send(
                    "POST",
                    url,
                    headers,
                    body,
                    response_timeout=settings.response_timeout,
                    idle_timeout=settings.stream_idle_timeout,
                    settings=f"providers.{provider.name}.",
                )
        except UpstreamUnavailable as exc:
            if services.dump is not None and dump_base is not None:
                services.dump.write_error(dump_base, str(exc))
            _judge(ix, ticket, None)
            step = next_step(
                None,
                {},
                attempt=attempt,
                max_retries=ix.max_retries,
                byok=pool is None,
                pool=pool,
                key=key,
                tried=tried,
            )
            if step.action != "retry":
                raise
            await services.sleep(step.delay)
            attempt, key = step.attempt, step.key
            continue
        except BaseException:
            # Cancelled (the client left, or shutdown) before the upstream answered. Its
            # health is unknown, so this must not count as a failure; but the ticket must
            # go back, or a half-open breaker would wait for it for ever.
            _judge(ix, ticket, None, neutral=True)
            raise
        if services.dump is not None and dump_base is not None:
            dumped = services.dump.open_response(dump_base, response.status, response.headers)
            response.tee = dumped.write
        services.observer.upstream_answered(ix, response.status, response.waited, key is not None)
        step = next_step(
            response.status,
            dict(response.headers),
            attempt=attempt,
            max_retries=ix.max_retries,
            byok=pool is None,
            pool=pool,
            key=key,
            tried=tried,
        )
        if step.action in ("done", "give_up"):
            break
        _judge(ix, ticket, response.status)
        progress.waited += response.waited
        await response.aclose()
        await services.sleep(step.delay)
        attempt, key = step.attempt, step.key
    cut = False
    try:
        with response.guard():
            yield response
    except UpstreamUnavailable:
        cut = True  # timed out or reset in the middle of the body
        raise
    finally:
        _judge(ix, ticket, None if cut else response.status)
        progress.waited += response.waited
        await response.aclose()


def _dump_request(
    ix: Interception, url: str, headers: list[tuple[str, str]], body: bytes
) -> Path | None:
    """Write the request to the API dump (a debugging aid, off by default), if on."""
    dump = ix.services.dump
    if dump is None:
        return None
    base = dump.request_path(ix.route.provider.name, ix.parsed.model, ix.id)
    dump.write_request(base, "POST", url, headers, body)
    return base


def _choose_key(ix: Interception, pool: KeyPool | None, tried: set[int]) -> Key | None:
    if pool is None:
        return None
    try:
        return pool.choose(exclude=tried)
    except NoKeyAvailable as exc:
        raise KeysExhausted(
            f"every key of provider {ix.route.provider.name!r} is rate limited or disabled",
            max(1, math.ceil(exc.retry_after)),
        ) from None


def _admit(ix: Interception) -> Ticket | None:
    if ix.breaker is None:
        return None
    ticket = ix.breaker.allow()
    if ticket is None:
        ix.progress.rejected = True
        ix.services.observer.breaker_rejected(ix)
        raise CircuitOpen("circuit breaker is open", ix.breaker.retry_after())
    return ticket


def _judge(
    ix: Interception, ticket: Ticket | None, status: int | None, *, neutral: bool = False
) -> None:
    """Tell the breaker how an attempt went (a connection failure counts as ``None``).

    ``neutral``: the attempt was abandoned, not failed; it is returned as a success.
    """
    if ix.breaker is not None and ticket is not None:
        success = neutral or not ix.breaker.settings.is_failure(status)
        ix.breaker.record(ticket, success=success)


async def call_upstream(
    ix: Interception, relay: Relay, body: bytes, turn: Turn, *, buffer: bool
) -> tuple[TurnResult, tuple[int, list[tuple[str, str]], bytes] | None, list[bytes]] | None:
    """One upstream call: relay the stream as it comes, or read the whole body.

    Returns what the call amounted to, the client response of a blocking call (sent
    by the loop only if the model is done), and raw chunks held back when buffering;
    ``None`` if the upstream answered with an HTTP error (relayed to the client).
    The turn is recorded whatever happens, also when cancelled.
    """
    client_body = None
    buffered: list[bytes] = []
    try:
        async with attempt(ix, body) as response:
            if response.status >= 400:
                await _relay_upstream_error(ix, relay, response)
                return None
            passed = forwardable_response_headers(response.headers)
            if ix.parsed.stream and response.content_type == "text/event-stream":
                relay.set_stream_headers(passed)
                sink = buffered.append if buffer else None
                await _relay_stream(response, turn, relay, raw=ix.dialect.relay_raw, hold=sink)
            else:
                client = turn.feed_body(await response.read())
                if not ix.dialect.relay_raw:  # the body was rewritten as JSON
                    passed = [_JSON, *((k, v) for k, v in passed if k != "content-type")]
                client_body = (response.status, passed, client)
    finally:
        result = turn.result()
        with trio.move_on_after(RECORD_DEADLINE, shield=True):
            await record_turn(ix, result)
    return result, client_body, buffered


async def _relay_stream(
    response: UpstreamResponse,
    turn: Turn,
    relay: Relay,
    *,
    raw: bool,
    hold: Callable[[bytes], None] | None = None,
) -> None:
    """Relay the upstream stream as it arrives.

    Frame by frame (each event as soon as it is complete, one write per frame, as the
    turn rewrites it), or with ``raw``, each chunk exactly as read while the events
    are only read for accounting; ``hold`` takes raw chunks instead of the client.
    """
    decoder = Decoder()

    async def drain() -> None:
        while True:
            event = decoder.next_event()
            if not isinstance(event, Event):
                return
            frame = turn.feed_event(event)
            if frame is not None and not raw:
                await relay.send_frame(frame)

    try:
        async for chunk in response.chunks():
            if raw and chunk:
                if hold is not None:
                    hold(chunk)
                else:
                    await relay.send_frame(chunk)
            decoder.receive_data(chunk)
            await drain()
        decoder.receive_data(b"")
        await drain()
    except SSEProtocolError as exc:
        raise UpstreamProtocolError(f"upstream stream is malformed: {exc}") from None


async def _relay_upstream_error(ix: Interception, relay: Relay, response: UpstreamResponse) -> None:
    content_type, body = ix.dialect.upstream_error(
        response.status,
        header_value(response.headers, "content-type"),
        await response.read(MAX_ERROR_BODY),
    )
    headers = [
        (k, v) for k, v in forwardable_response_headers(response.headers) if k != "content-type"
    ]
    ix.progress.failure = f"upstream returned HTTP {response.status}"
    await relay.respond(response.status, [("content-type", content_type), *headers], body)
