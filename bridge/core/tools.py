"""The injected tool calls of one turn: run concurrently, each recorded.

A tool never fails the interception: whatever goes wrong becomes the tool's result,
which the model sees in the next iteration.
"""

from __future__ import annotations

import time

import trio

from bridge.core.state import RECORD_DEADLINE, Interception
from bridge.dialects.base import ToolCall, ToolOutcome, outcome_text
from bridge.recording.records import ToolUsage

__all__ = ["run_tools"]


async def run_tools(ix: Interception, response_id: str, calls: list[ToolCall]) -> list[ToolOutcome]:
    """Run the injected calls of one turn concurrently; record each; never raise for a tool."""
    outcomes: list[ToolOutcome | None] = [None] * len(calls)

    async def run(index: int, call: ToolCall) -> None:
        outcomes[index] = await _run_tool(ix, response_id, call)

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(run, index, call)
    return [outcome for outcome in outcomes if outcome is not None]


async def _run_tool(ix: Interception, response_id: str, call: ToolCall) -> ToolOutcome:
    hub, observer = ix.services.hub, ix.services.observer
    assert hub is not None
    tool = hub.get(call.name)
    arguments = call.input if isinstance(call.input, dict) else None
    if tool is None:
        outcome = ToolOutcome(call, error=f"tool {call.name} is not available")
        server_url = None
    else:
        started = time.perf_counter()
        with observer.tool_span(tool, arguments):
            result = await hub.call(tool, arguments, actor=ix.actor, timeout=ix.call_timeout)
        seconds = time.perf_counter() - started
        ix.progress.waited += seconds
        observer.tool_called(ix, tool, result, seconds)
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
        await ix.services.recorder.record(
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
