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

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from bridge.auth import Actor
from bridge.breaker import CircuitBreaker, Ticket
from bridge.clients import guess_client, session_id
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
from bridge.errors import (
    BridgeError,
    CircuitOpen,
    KeysExhausted,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.mcp_tools import Tool, ToolHub
from bridge.providers import Credential, Route, forwardable_response_headers
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
    new_id,
)
from bridge.resilience import Key, KeyPool, NoKeyAvailable, next_step
from bridge.sse import Decoder, Event
from bridge.sse import UpstreamProtocolError as SSEProtocolError
from bridge.upstream import MAX_ERROR_BODY, UpstreamClient, UpstreamResponse

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
    hub: ToolHub | None = None
    tools: tuple[Tool, ...] = ()
    """The injected tools offered to the model, sorted by id."""
    max_iterations: int = 16
    call_timeout: float = 30.0
    breaker: CircuitBreaker | None = None
    pool: KeyPool | None = None
    """The provider's centralized keys; used only for centralized requests."""
    max_retries: int = 0
    sleep: Callable[[float], Awaitable[None]] = trio.sleep
    """How retries wait (tests pass a recording fake)."""
    rejected: bool = False
    client_gone: bool = False
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
    await ix.recorder.record(_started_record(ix))
    relay = Relay(sink)
    outcome: Outcome = Outcome.FAILED
    error: str | None = "cancelled: the gateway is shutting down"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_client, ix, sink, nursery.cancel_scope)
            ping = ix.dialect.ping_frame()
            if ix.parsed.stream and ping is not None:
                nursery.start_soon(relay.keep_alive, ping, ping_interval)
            await _run(ix, relay)
            nursery.cancel_scope.cancel()
        if ix.client_gone and not relay.complete:
            outcome, error = Outcome.CLIENT_DISCONNECTED, "the client disconnected"
        elif ix.rejected:
            outcome, error = Outcome.REJECTED, ix.failure
        elif ix.failure is not None:
            outcome, error = Outcome.FAILED, ix.failure
        else:
            outcome, error = Outcome.COMPLETED, None
    finally:
        with trio.move_on_after(RECORD_DEADLINE, shield=True):
            await ix.recorder.record(InterceptionEnded(ix.id, outcome, error))
    if not ix.client_gone:
        # The client sees the end of the body only once the records are queued.
        await relay.close()
    return outcome


async def _watch_client(ix: Interception, sink: ResponseSink, scope: trio.CancelScope) -> None:
    await sink.wait_disconnected()
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
        step = await _call_upstream(ix, relay, body, exchange.new_turn(), buffer=buffer_raw)
        if step is None:
            return  # an upstream HTTP error was relayed
        result, client_body, buffered = step
        pending = [call for call in result.tool_calls if call.name in injected]
        if result.error is not None:
            ix.failure = f"upstream error in stream: {result.error}"
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
            passed = [(k, v) for k, v in passed if k != "content-type"]
            if ix.parsed.stream and response.content_type == "text/event-stream":
                relay.set_stream_headers(passed)
                sink = buffered.append if buffer else None
                await _relay_stream(response, turn, relay, raw=ix.dialect.relay_raw, hold=sink)
            else:
                client = turn.feed_body(await response.read())
                client_body = (response.status, [_JSON, *passed], client)
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
    keep the response, retry it (connection errors, 408/409/429/5xx, after
    ``retry-after`` or a backoff), or fail over to the provider's next centralized
    key (429/401/403). Nothing has been sent to the client for this call yet, so
    retrying is invisible to it. :class:`KeysExhausted` when every key is resting.
    """
    provider = ix.route.provider
    url = ix.route.upstream_url(ix.request.query)
    pool = ix.pool if ix.credential.kind is CredentialKind.CENTRALIZED else None
    key = _choose_key(ix, pool, set())
    tried: set[int] = set()
    attempt = 0
    while True:
        ticket = _admit(ix)
        credential = provider.centralized(key.secret) if key is not None else ix.credential
        headers = provider.upstream_headers(
            list(ix.request.headers), credential, strip=ix.strip_headers, actor=ix.actor
        )
        try:
            response = await ix.upstream.send("POST", url, headers, body)
        except UpstreamUnavailable:
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
        _judge(ix, ticket, response.status)
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
        await response.aclose()
        await ix.sleep(step.delay)
        attempt, key = step.attempt, step.key
    try:
        yield response
    finally:
        await response.aclose()


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
        raise CircuitOpen("circuit breaker is open", ix.breaker.retry_after())
    return ticket


def _judge(ix: Interception, ticket: Ticket | None, status: int | None) -> None:
    """Tell the breaker how an attempt went (a connection failure counts as ``None``)."""
    if ix.breaker is not None and ticket is not None:
        ix.breaker.record(ticket, success=not ix.breaker.settings.is_failure(status))


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
        result = await ix.hub.call(tool, arguments, actor=ix.actor, timeout=ix.call_timeout)
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
        await ix.recorder.record(record)


def new_interception_id() -> str:
    """A fresh interception id (a UUIDv4, as the reference)."""
    return new_id()
