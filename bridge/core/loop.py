"""The agentic loop: call upstream, relay, run injected tools, call again.

:func:`run` drives :func:`_loop` and turns every failure into what the client sees: an
HTTP error in the provider's shape before the response started, an in-stream error
event after. The loop itself is written once for every API; the dialect's exchange
decides what the client sees of each turn; one upstream call is
:func:`~bridge.core.attempt.call_upstream`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bridge.core.attempt import call_upstream
from bridge.core.relay import Relay
from bridge.core.state import Interception
from bridge.core.tools import run_tools
from bridge.dialects.base import dumps
from bridge.errors import BridgeError, CircuitOpen, KeysExhausted, UpstreamError

__all__ = ["run", "stream_failure"]

logger = logging.getLogger("bridge.interception")

_JSON = ("content-type", "application/json")


async def run(ix: Interception, relay: Relay) -> None:
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
    """Tell the client of a failure: an error response, or an error event once streaming."""
    ix.progress.failure = message
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
    progress = ix.progress
    for iteration in range(1, ix.max_iterations + 1):
        progress.held_back = buffer_raw
        step = await call_upstream(ix, relay, body, exchange.new_turn(), buffer=buffer_raw)
        if step is None:
            return  # an upstream HTTP error was relayed
        result, client_body, buffered = step
        pending = [call for call in result.tool_calls if call.name in injected]
        if result.error is not None:
            if client_body is None:
                progress.failure = stream_failure(result.error)
            else:  # a blocking body the dialect relays as received, though unreadable
                progress.failure = result.error
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
            progress.held_back = False
            break
        if iteration == ix.max_iterations:
            message = (
                f"the model kept calling gateway tools: the inner loop stopped at its cap of "
                f"{ix.max_iterations} iterations (mcp.max_iterations)"
            )
            await _fail(ix, relay, 500, message)
            return
        assert document is not None  # tools were injected, so the body was edited
        outcomes = await run_tools(ix, result.response_id, pending)
        ix.dialect.append_results(document, result, outcomes)
        body = dumps(document)
    await relay.finish(ix.dialect.stream_end_frame())


def stream_failure(error: str) -> str:
    """The recorded failure of a stream that ended with the provider's error event."""
    return f"upstream error in stream: {error}"
