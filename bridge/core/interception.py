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

The parts live next to this module: the plan, services and progress in
:mod:`bridge.core.state`; the loop in :mod:`bridge.core.loop`; one upstream call with
its resilience in :mod:`bridge.core.attempt`; injected tool calls in
:mod:`bridge.core.tools`; records in :mod:`bridge.core.accounting`; metrics, spans and
the ended log line in :mod:`bridge.core.observer`.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import trio

from bridge.core.accounting import started_record
from bridge.core.exchange import ResponseSink
from bridge.core.loop import run, stream_failure
from bridge.core.relay import Relay
from bridge.core.state import RECORD_DEADLINE, Interception, Progress, Services
from bridge.recording.records import InterceptionEnded, Outcome
from bridge.telemetry.tracing import (
    SPAN_INTERCEPT,
    SPAN_PROCESS_REQUEST,
    SPAN_RECORD_INTERCEPTION,
    SPAN_RECORD_INTERCEPTION_ENDED,
)

__all__ = ["RECORD_DEADLINE", "Interception", "Progress", "Services", "intercept"]

logger = logging.getLogger("bridge.interception")


async def intercept(ix: Interception, sink: ResponseSink, *, ping_interval: float) -> Outcome:
    """Run the interception to its end and record it; return its outcome.

    Cancellation: if the enclosing scope is cancelled (the gateway is shutting down)
    the client may have seen a prefix of the response, the upstream is closed, what
    was learnt is recorded with outcome ``failed``, and ``Cancelled`` propagates.
    """
    started = time.perf_counter()
    observer = ix.services.observer
    record = started_record(ix)
    ix.progress.client = record.client
    attributes = observer.attributes(ix)
    with observer.span(SPAN_INTERCEPT, attributes):
        with observer.span(SPAN_RECORD_INTERCEPTION, attributes):
            await ix.services.recorder.record(record)
        observer.started(ix)
        try:
            outcome = await _intercept(ix, sink, ping_interval=ping_interval)
        finally:
            observer.ended(ix, time.perf_counter() - started)
    return outcome


async def _intercept(ix: Interception, sink: ResponseSink, *, ping_interval: float) -> Outcome:
    progress = ix.progress
    relay = Relay(sink, write_timeout=ix.client_write_timeout)
    outcome: Outcome = Outcome.FAILED
    error: str | None = "cancelled: the gateway is shutting down"
    try:
        async with trio.open_nursery() as nursery:
            relay.on_stall = partial(_client_left, progress, nursery.cancel_scope)
            ping = ix.dialect.ping_frame() if ix.parsed.stream else None
            nursery.start_soon(
                _watch_client, progress, sink, relay, nursery.cancel_scope, ping, ping_interval
            )
            with ix.services.observer.span(SPAN_PROCESS_REQUEST):
                await run(ix, relay)
            nursery.cancel_scope.cancel()
        last = progress.turns[-1] if progress.turns else None
        if progress.failure is None and last is not None and last.error is not None:
            # The client left after the provider's error event, before the loop saw the
            # end of that stream: the answer it got is still that error.
            progress.failure = stream_failure(last.error)
        final: Outcome
        reason: str | None
        if progress.client_gone and not progress.answer_delivered(
            frames_delivered=relay.frames_delivered,
            complete=relay.complete,
            injected=ix.injected_names,
        ):
            final, reason = Outcome.CLIENT_DISCONNECTED, "the client disconnected"
        elif progress.rejected:
            final, reason = Outcome.REJECTED, progress.failure
        elif progress.failure is not None:
            final, reason = Outcome.FAILED, progress.failure
        else:
            final, reason = Outcome.COMPLETED, None
        if not progress.client_gone:
            final, reason = await _deliver(ix, relay, final, reason)
        outcome, error = final, reason
    finally:
        progress.outcome, progress.error = outcome, error
        with trio.move_on_after(RECORD_DEADLINE, shield=True):
            with ix.services.observer.span(SPAN_RECORD_INTERCEPTION_ENDED):
                await ix.services.recorder.record(InterceptionEnded(ix.id, outcome, error))
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


async def _watch_client(
    progress: Progress,
    sink: ResponseSink,
    relay: Relay,
    scope: trio.CancelScope,
    ping: bytes | None,
    interval: float,
) -> None:
    """Wait for the client to leave, keeping a silent stream alive with ``ping`` meanwhile
    (one task for both, per interception)."""
    await relay.keep_alive_while(sink.wait_disconnected, ping, interval)
    _client_left(progress, scope)


def _client_left(progress: Progress, scope: trio.CancelScope) -> None:
    """The client went away (or stopped reading): cancel everything the interception runs."""
    progress.client_gone = True
    scope.cancel()
