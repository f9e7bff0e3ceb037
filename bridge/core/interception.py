"""One interception, from the parsed request to its ended record.

Rules of this module:

* An interception runs in **its own nursery**, which owns everything it starts:
  the upstream response, the relay to the client, the keep-alive pings and the
  watcher of the client's connection. When the client goes away, the watcher
  cancels that nursery: the upstream connection is closed, so the provider stops
  generating (and billing).
* Nothing outlives the interception: when :func:`intercept` returns, every task it
  started has ended and every socket it opened is closed.
* Recording survives cancellation: what was learnt (usage so far) and the single
  ended record are written under a shielded cancel scope with a deadline.
* Errors never leave as tracebacks: before the response starts they become a real
  HTTP status in the provider's shape; after, an in-stream error event.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from bridge.core.exchange import Request, ResponseSink
from bridge.core.relay import Relay
from bridge.dialects.base import (
    Dialect,
    ParsedRequest,
    ToolCall,
    ToolOutcome,
    Turn,
    TurnResult,
    dumps,
    outcome_text,
)
from bridge.dialects.clients import guess_client, session_id
from bridge.dialects.providers import Credential, Route, forwardable_response_headers
from bridge.errors import (
    BridgeError,
    CircuitOpen,
    KeysExhausted,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.identity.auth import Actor
from bridge.protocol.sse import Decoder, Event
from bridge.protocol.sse import UpstreamProtocolError as SSEProtocolError
from bridge.recording.recorder import Recorder
from bridge.recording.records import (
    CredentialKind,
    InterceptionEnded,
    InterceptionStarted,
    ModelThought,
    Outcome,
    PromptUsage,
    Record,
    TokenUsage,
    ToolUsage,
)
from bridge.services.breaker import CircuitBreaker, Ticket
from bridge.services.mcp import Tool, ToolHub
from bridge.services.resilience import Key, KeyPool, NoKeyAvailable, next_step
from bridge.services.upstream import MAX_ERROR_BODY, UpstreamClient, UpstreamResponse
from bridge.telemetry.apidump import APIDump
from bridge.telemetry.logs import interception_log
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import (
    SPAN_INTERCEPT,
    SPAN_PROCESS_REQUEST,
    SPAN_RECORD_INTERCEPTION,
    SPAN_RECORD_INTERCEPTION_ENDED,
    SPAN_RECORD_MODEL_THOUGHT,
    SPAN_RECORD_PROMPT_USAGE,
    SPAN_RECORD_TOKEN_USAGE,
    SPAN_RECORD_TOOL_USAGE,
    SPAN_TOOL_CALL,
    SPAN_UPSTREAM,
    Tracer,
)

__all__ = ["RECORD_DEADLINE", "Interception", "intercept"]

logger = logging.getLogger("bridge.interception")

RECORD_DEADLINE = 5.0
"""Seconds the final records of a cancelled interception may take to be queued."""

_JSON = ("content-type", "application/json")


@dataclass(slots=True)
class Interception:
    """The state of one interception, shared by its tasks."""

    id: str
    route: Route
    request: Request
    actor: Actor
    parsed: ParsedRequest
    dialect: Dialect
    credential: Credential
    upstream: UpstreamClient
    recorder: Recorder
    strip_headers: tuple[str, ...] = ()
    trusted_peer: bool = False
    """The client's address is in ``server.trusted_proxies``: its X-Forwarded-For holds."""
    hub: ToolHub | None = None
    tools: tuple[Tool, ...] = ()
    """The injected tools offered to the model, sorted by id."""
    max_iterations: int = 16
    call_timeout: float = 30.0
    breaker: CircuitBreaker | None = None
    pool: KeyPool | None = None
    """The provider's centralized keys; used only for centralized requests."""
    max_retries: int = 0
    client_write_timeout: float = 60.0
    """Seconds a write to the client may block before the client counts as gone."""
    sleep: Callable[[float], Awaitable[None]] = trio.sleep
    """How retries wait (tests pass a recording fake)."""
    rejected: bool = False
    outcome: Outcome = Outcome.FAILED
    error: str | None = None
    """Why the outcome is not ``completed``, as recorded."""
    metrics: Metrics | None = None
    tracer: Tracer = field(default_factory=Tracer)
    waited: float = 0.0
    """Seconds spent waiting for the upstream and for tools (the rest is the gateway's)."""
    client: str = "Unknown"
    dump: APIDump | None = None
    """Writes every upstream request and response to files (``observability.dump_dir``)."""
    client_gone: bool = False
    held_back: bool = False
    """Whether raw frames of the current upstream call are held back, not yet relayed."""
    prompt_recorded: bool = False
    failure: str | None = None
    turns: list[TurnResult] = field(default_factory=list)

    @property
    def injected_names(self) -> frozenset[str]:
        """The names the model calls injected tools by."""
        return frozenset(tool.id for tool in self.tools)


async def intercept(ix: Interception, sink: ResponseSink, *, ping_interval: float) -> Outcome:
    """Run the interception to its end and record it; return its outcome.

    Cancellation: if the enclosing scope is cancelled (the gateway is shutting down)
    the client may have seen a prefix of the response, the upstream is closed, what
    was learnt is recorded with outcome ``failed``, and ``Cancelled`` propagates.
    """
    started = time.perf_counter()
    record = _started_record(ix)
    ix.client = record.client
    attributes = ix.tracer.interception_attributes(
        request_path=ix.request.path,
        interception_id=ix.id,
        user_id=ix.actor.id,
        provider=ix.route.provider.name,
        model=ix.parsed.model,
        streaming=ix.parsed.stream,
    )
    with ix.tracer.span(SPAN_INTERCEPT, attributes):
        with ix.tracer.span(SPAN_RECORD_INTERCEPTION, attributes):
            await ix.recorder.record(record)
        if ix.metrics is not None:
            ix.metrics.interception_started(
                provider=ix.route.provider.name, model=ix.parsed.model, route=ix.route.suffix
            )
        try:
            outcome = await _intercept(ix, sink, ping_interval=ping_interval)
        finally:
            _ended_metrics(ix, started)
    return outcome


def _ended_metrics(ix: Interception, started: float) -> None:
    duration = time.perf_counter() - started
    if ix.metrics is not None:
        ix.metrics.interception_ended(
            provider=ix.route.provider.name,
            model=ix.parsed.model,
            route=ix.route.suffix,
            method=ix.request.method,
            initiator_id=ix.actor.id,
            client=ix.client,
            status=ix.outcome.value,
            duration=duration,
            added=max(0.0, duration - ix.waited),
        )
    totals = [t.usage for t in ix.turns if t.usage is not None]
    logger.info(
        "interception ended",
        extra=interception_log(
            interception_id=ix.id,
            user=ix.actor.id,
            provider=ix.route.provider.name,
            model=ix.parsed.model,
            outcome=ix.outcome.value,
            duration_ms=round(duration * 1000, 3),
            input_tokens=sum(u.input for u in totals),
            output_tokens=sum(u.output for u in totals),
            cache_read=sum(u.cache_read for u in totals),
            cache_write=sum(u.cache_write for u in totals),
            client=ix.client,
            streaming=ix.parsed.stream,
            error=ix.error,
        ),
    )


async def _intercept(ix: Interception, sink: ResponseSink, *, ping_interval: float) -> Outcome:
    relay = Relay(sink, write_timeout=ix.client_write_timeout)
    outcome: Outcome = Outcome.FAILED
    error: str | None = "cancelled: the gateway is shutting down"
    try:
        async with trio.open_nursery() as nursery:
            relay.on_stall = partial(_client_left, ix, nursery.cancel_scope)
            ping = ix.dialect.ping_frame() if ix.parsed.stream else None
            nursery.start_soon(
                _watch_client, ix, sink, relay, nursery.cancel_scope, ping, ping_interval
            )
            with ix.tracer.span(SPAN_PROCESS_REQUEST):
                await _run(ix, relay)
            nursery.cancel_scope.cancel()
        last = ix.turns[-1] if ix.turns else None
        if ix.failure is None and last is not None and last.error is not None:
            # The client left after the provider's error event, before the loop saw the
            # end of that stream: the answer it got is still that error.
            ix.failure = _stream_failure(last.error)
        final: Outcome
        reason: str | None
        if ix.client_gone and not _answer_delivered(ix, relay):
            final, reason = Outcome.CLIENT_DISCONNECTED, "the client disconnected"
        elif ix.rejected:
            final, reason = Outcome.REJECTED, ix.failure
        elif ix.failure is not None:
            final, reason = Outcome.FAILED, ix.failure
        else:
            final, reason = Outcome.COMPLETED, None
        if not ix.client_gone:
            final, reason = await _deliver(ix, relay, final, reason)
        outcome, error = final, reason
    finally:
        ix.outcome, ix.error = outcome, error
        with trio.move_on_after(RECORD_DEADLINE, shield=True):
            with ix.tracer.span(SPAN_RECORD_INTERCEPTION_ENDED):
                await ix.recorder.record(InterceptionEnded(ix.id, outcome, error))
    return outcome


async def _deliver(
    ix: Interception, relay: Relay, outcome: Outcome, error: str | None
) -> tuple[Outcome, str | None]:
    """Send the rest of the response (a blocking answer, or a stream's end); return the
    outcome to record, which is what the client got.

    The ended record is written after this, so that it can say so: an answer the
    connection refused (a header the HTTP server will not send) makes the interception
    ``failed`` with the reason, a client that stopped reading ``client_disconnected``.
    Every other record of the interception was queued before the client saw its end.
    """
    try:
        await relay.close()
    except Exception as exc:
        logger.error(
            "interception %s: the answer could not be delivered to the client", ix.id, exc_info=exc
        )
        reason = f"the answer could not be delivered to the client: {type(exc).__name__}: {exc}"
        return Outcome.FAILED, reason
    if relay.stalled and outcome is Outcome.COMPLETED:
        return Outcome.CLIENT_DISCONNECTED, "the client stopped reading before the end"
    return outcome, error


def _answer_delivered(ix: Interception, relay: Relay) -> bool:
    """Whether the client was handed the whole answer before it left.

    A client may read the final event (Anthropic's ``message_stop``, or the provider's
    ``error`` event) and hang up before the gateway has read the upstream's end or
    written the end of the body: it got everything. That is so when the stream's every
    frame went out (none cut short), nothing was held back, and the last upstream turn
    either ended with an error event or completed with no injected tool call the loop
    would still run. A blocking answer goes out only after the records are queued, so a
    client that left before never saw it.
    """
    if not relay.frames_delivered:
        return False
    if relay.complete:
        return True  # the end frame went out as well
    last = ix.turns[-1] if ix.turns else None
    return (
        last is not None
        and not ix.held_back
        and (
            last.error is not None
            or (
                last.complete
                and not any(call.name in ix.injected_names for call in last.tool_calls)
            )
        )
    )


async def _watch_client(
    ix: Interception,
    sink: ResponseSink,
    relay: Relay,
    scope: trio.CancelScope,
    ping: bytes | None,
    interval: float,
) -> None:
    """Wait for the client to leave, keeping a silent stream alive with ``ping`` meanwhile
    (one task for both, per interception)."""
    await relay.keep_alive_while(sink.wait_disconnected, ping, interval)
    _client_left(ix, scope)


def _client_left(ix: Interception, scope: trio.CancelScope) -> None:
    """The client went away (or stopped reading): cancel everything the interception runs."""
    ix.client_gone = True
    scope.cancel()


async def _run(ix: Interception, relay: Relay) -> None:
    """Call upstream and relay; turn every failure into the right client-visible error."""
    try:
        await _loop(ix, relay)
    except (CircuitOpen, KeysExhausted) as exc:
        headers = [("retry-after", str(exc.retry_after))]
        await _fail(ix, relay, exc.status_hint, str(exc), headers=headers)
    except UpstreamError as exc:
        await _fail(ix, relay, exc.status_hint, str(exc))
    except BridgeError as exc:
        await _fail(ix, relay, exc.status_hint, str(exc))
    except Exception:
        logger.exception("interception %s failed unexpectedly", ix.id)
        await _fail(ix, relay, 500, f"internal error in the gateway (interception {ix.id})")


async def _fail(
    ix: Interception,
    relay: Relay,
    status: int,
    message: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    ix.failure = message
    if relay.complete:
        return
    if relay.started:
        await relay.send_frame(ix.dialect.stream_error_frame(message))
        await relay.finish(ix.dialect.stream_end_frame())
    else:
        await relay.respond(status, [_JSON, *headers], ix.dialect.error_body(status, message))


async def _loop(ix: Interception, relay: Relay) -> None:
    """The agentic loop: call upstream, relay, and while the model calls injected tools,
    run them and call upstream again with their results.

    Written once for every API; the dialect's exchange decides what the client sees.
    Injected calls run in a nursery inside the interception's own, so a client that
    leaves cancels them (and the MCP server is told).
    """
    tools = ix.tools if ix.dialect.wants_tools(ix.parsed) else ()
    document, body = ix.dialect.prepare(ix.parsed, ix.request.body, tools)
    injected = frozenset(tool.id for tool in tools)
    exchange = ix.dialect.open_exchange(ix.id, injected)
    # Raw relays (Responses) cannot hold back part of an iteration: with injected tools
    # each iteration is buffered, and only the last one reaches the client.
    buffer_raw = ix.dialect.relay_raw and bool(injected)
    for iteration in range(1, ix.max_iterations + 1):
        ix.held_back = buffer_raw
        step = await _call_upstream(ix, relay, body, exchange.new_turn(), buffer=buffer_raw)
        if step is None:
            return  # an upstream HTTP error was relayed
        result, client_body, buffered = step
        pending = [call for call in result.tool_calls if call.name in injected]
        if result.error is not None:
            if client_body is None:
                ix.failure = _stream_failure(result.error)
            else:  # a blocking body the dialect relays as received, though unreadable
                ix.failure = result.error
                await relay.respond(*client_body)
            await relay.send_frames(buffered)
            break
        if not result.complete:
            await relay.send_frames(buffered)
            message = "the upstream closed the stream before the message was complete"
            await _fail(ix, relay, 502, message)
            return
        if not pending:
            if client_body is not None:
                await relay.respond(*client_body)
            await relay.send_frames(buffered)
            ix.held_back = False
            break
        if iteration == ix.max_iterations:
            message = (
                f"the model kept calling gateway tools: the inner loop stopped at its cap of "
                f"{ix.max_iterations} iterations (mcp.max_iterations)"
            )
            await _fail(ix, relay, 500, message)
            return
        assert document is not None  # tools were injected, so the body was edited
        outcomes = await _run_tools(ix, result.response_id, pending)
        ix.dialect.append_results(document, result, outcomes)
        body = dumps(document)
    await relay.finish(ix.dialect.stream_end_frame())


def _stream_failure(error: str) -> str:
    """The recorded failure of a stream that ended with the provider's error event."""
    return f"upstream error in stream: {error}"


async def _call_upstream(
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
        async with _attempt(ix, body) as response:
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
            await _record_turn(ix, result)
    return result, client_body, buffered


@asynccontextmanager
async def _attempt(ix: Interception, body: bytes) -> AsyncIterator[UpstreamResponse]:
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
    url = ix.route.upstream_url(ix.request.query)
    pool = ix.pool if ix.credential.kind is CredentialKind.CENTRALIZED else None
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
            with ix.tracer.span(SPAN_UPSTREAM):
                response = await ix.upstream.send(
                    "POST",
                    url,
                    headers,
                    body,
                    response_timeout=settings.response_timeout,
                    idle_timeout=settings.stream_idle_timeout,
                    settings=f"providers.{provider.name}.",
                )
        except UpstreamUnavailable as exc:
            if ix.dump is not None and dump_base is not None:
                ix.dump.write_error(dump_base, str(exc))
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
            await ix.sleep(step.delay)
            attempt, key = step.attempt, step.key
            continue
        except BaseException:
            # Cancelled (the client left, or shutdown) before the upstream answered. Its
            # health is unknown, so this must not count as a failure; but the ticket must
            # go back, or a half-open breaker would wait for it for ever.
            _judge(ix, ticket, None, neutral=True)
            raise
        if ix.dump is not None and dump_base is not None:
            response.tee = ix.dump.open_response(dump_base, response.status, response.headers).write
        if ix.metrics is not None:
            if 200 <= response.status < 300:  # the provider knows the model: label it by name
                ix.metrics.model_served(provider=provider.name, model=ix.parsed.model)
            ix.metrics.upstream_ttfb(
                provider=provider.name, model=ix.parsed.model, seconds=response.waited
            )
            if key is not None and response.status in (401, 403):
                ix.metrics.provider_key_refused(provider=provider.name, status=response.status)
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
        ix.waited += response.waited
        await response.aclose()
        await ix.sleep(step.delay)
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
        ix.waited += response.waited
        await response.aclose()


def _dump_request(
    ix: Interception, url: str, headers: list[tuple[str, str]], body: bytes
) -> Path | None:
    """Write the request to the API dump (a debugging aid, off by default), if on."""
    if ix.dump is None:
        return None
    base = ix.dump.request_path(ix.route.provider.name, ix.parsed.model, ix.id)
    ix.dump.write_request(base, "POST", url, headers, body)
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
        ix.rejected = True
        if ix.metrics is not None:
            ix.metrics.breaker_rejected(
                provider=ix.route.provider.name, endpoint=ix.route.suffix, model=ix.parsed.model
            )
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


async def _run_tools(
    ix: Interception, response_id: str, calls: list[ToolCall]
) -> list[ToolOutcome]:
    """Run the injected calls of one turn concurrently; record each; never raise for a tool."""
    outcomes: list[ToolOutcome | None] = [None] * len(calls)

    async def run(index: int, call: ToolCall) -> None:
        outcomes[index] = await _run_tool(ix, response_id, call)

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(run, index, call)
    return [outcome for outcome in outcomes if outcome is not None]


async def _run_tool(ix: Interception, response_id: str, call: ToolCall) -> ToolOutcome:
    assert ix.hub is not None
    tool = ix.hub.get(call.name)
    arguments = call.input if isinstance(call.input, dict) else None
    if tool is None:
        outcome = ToolOutcome(call, error=f"tool {call.name} is not available")
        server_url = None
    else:
        started = time.perf_counter()
        mcp_attributes = {
            "mcp_tool_name": tool.name,
            "mcp_server_name": tool.server,
            "mcp_server_url": tool.server_url,
            "mcp_input": json.dumps(arguments)[:100],
        }
        with ix.tracer.span(SPAN_TOOL_CALL, mcp_attributes):
            result = await ix.hub.call(tool, arguments, actor=ix.actor, timeout=ix.call_timeout)
        seconds = time.perf_counter() - started
        ix.waited += seconds
        if ix.metrics is not None:
            kind = "ok" if result.error is None and not result.is_error else "error"
            if result.error is not None and "timed out" in result.error:
                kind = "timeout"
            ix.metrics.mcp_tool_call(
                server=tool.server, name=tool.name, outcome=kind, seconds=seconds
            )
            ix.metrics.injected_tool_invocation(
                provider=ix.route.provider.name,
                model=ix.parsed.model,
                server=tool.server,
                name=tool.name,
            )
        outcome = ToolOutcome(
            call,
            content=result.content,
            is_error=result.is_error,
            error=result.error,
            result_json=result.as_json(),
        )
        server_url = tool.server_url
    error = outcome.error
    if error is None and outcome.is_error:
        error = "the tool reported an error: " + outcome_text(outcome)[:500]
    with trio.move_on_after(RECORD_DEADLINE, shield=True):
        await ix.recorder.record(
            ToolUsage(
                ix.id,
                response_id,
                tool.name if tool is not None else call.name,
                call.id,
                call.input,
                injected=True,
                server_url=server_url,
                invocation_error=error,
            )
        )
    return outcome


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
        next((v for k, v in response.headers if k == "content-type"), ""),
        await response.read(MAX_ERROR_BODY),
    )
    headers = [
        (k, v) for k, v in forwardable_response_headers(response.headers) if k != "content-type"
    ]
    ix.failure = f"upstream returned HTTP {response.status}"
    await relay.respond(response.status, [("content-type", content_type), *headers], body)


def _started_record(ix: Interception) -> InterceptionStarted:
    headers = ix.request.headers
    client = guess_client(headers)
    user_agent = next((v for k, v in headers if k == "user-agent"), "")
    return InterceptionStarted(
        id=ix.id,
        initiator_id=ix.actor.id,
        provider=ix.route.provider.type,
        provider_name=ix.route.provider.name,
        model=ix.parsed.model,
        streaming=ix.parsed.stream,
        client=client,
        user_agent=user_agent,
        credential_kind=ix.credential.kind,
        credential_hint=ix.credential.hint,
        session_id=session_id(client, headers, ix.parsed.session_hint),
        correlating_tool_call_id=ix.parsed.correlating_tool_call_id,
        metadata=dict(ix.actor.metadata),
    )


async def _record_turn(ix: Interception, result: TurnResult) -> None:
    """Queue the records of one upstream response (also of a cut one)."""
    ix.turns.append(result)
    records: list[Record] = []
    if not ix.prompt_recorded and ix.parsed.prompt:
        ix.prompt_recorded = True
        records.append(PromptUsage(ix.id, result.response_id, ix.parsed.prompt))
    if result.usage is not None:
        u = result.usage
        records.append(
            TokenUsage(
                ix.id,
                result.response_id,
                input=u.input,
                output=u.output,
                cache_read=u.cache_read,
                cache_write=u.cache_write,
                cache_write_5m=u.cache_write_5m,
                cache_write_1h=u.cache_write_1h,
                reasoning=u.reasoning,
                web_search_requests=u.web_search_requests,
                extra=dict(u.extra),
            )
        )
    records.extend(
        ToolUsage(ix.id, result.response_id, call.name, call.id, call.input)
        for call in result.tool_calls
        if call.name not in ix.injected_names
    )
    records.extend(ModelThought(ix.id, content, source) for source, content in result.thoughts)
    for record in records:
        with ix.tracer.span(_RECORD_SPANS[type(record)]):
            await ix.recorder.record(record)
    if ix.metrics is not None:
        _turn_metrics(ix, ix.metrics, records)


def _turn_metrics(ix: Interception, metrics: Metrics, records: list[Record]) -> None:
    labels = {
        "provider": ix.route.provider.name,
        "model": ix.parsed.model,
        "initiator_id": ix.actor.id,
        "client": ix.client,
    }
    for record in records:
        if isinstance(record, PromptUsage):
            metrics.prompt(**labels)
        elif isinstance(record, TokenUsage):
            counts = {
                "input": record.input,
                "output": record.output,
                "cache_read_input_tokens": record.cache_read,
                "cache_write_input_tokens": record.cache_write,
                "reasoning": record.reasoning,
                "web_search_requests": record.web_search_requests,
                **record.extra,
            }
            metrics.tokens(**labels, counts={k: max(0, v) for k, v in counts.items()})
        elif isinstance(record, ToolUsage):
            metrics.non_injected_tool_selection(
                provider=ix.route.provider.name, model=ix.parsed.model, name=record.tool
            )


_RECORD_SPANS: dict[type[Record], str] = {
    PromptUsage: SPAN_RECORD_PROMPT_USAGE,
    TokenUsage: SPAN_RECORD_TOKEN_USAGE,
    ToolUsage: SPAN_RECORD_TOOL_USAGE,
    ModelThought: SPAN_RECORD_MODEL_THOUGHT,
}
