"""Unit tests for the parts of an interception that stand alone: its progress's verdict
on what the client got, and the observer's metrics. Gateway-level behaviour (disconnects,
outcomes, metrics over HTTP) is tested in test_lifecycle.py, test_faults.py and
test_observability.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from bridge.core.interception import Interception, Progress
from bridge.core.observer import Observer
from bridge.dialects.base import ToolCall, TurnResult
from bridge.services.mcp import Tool, ToolFailure, ToolResult
from bridge.telemetry.metrics import InterceptionMetrics, Metrics

INJECTED = frozenset({"bmcp_docs_search"})


def turn(
    *, error: str | None = None, complete: bool = True, calls: tuple[str, ...] = ()
) -> TurnResult:
    return TurnResult(
        "msg_1",
        None,
        tool_calls=tuple(ToolCall(f"call_{i}", name, {}) for i, name in enumerate(calls)),
        error=error,
        complete=complete,
    )


@pytest.mark.parametrize(
    ("turns", "held_back", "frames_delivered", "complete", "delivered"),
    [
        pytest.param([turn()], False, False, True, False, id="a-frame-cut-short"),
        pytest.param([], False, True, True, True, id="the-end-frame-went-out"),
        pytest.param([], False, True, False, False, id="no-upstream-turn-yet"),
        pytest.param([turn()], False, True, False, True, id="the-last-turn-completed"),
        pytest.param([turn(complete=False)], False, True, False, False, id="the-turn-was-cut"),
        pytest.param([turn(error="overloaded")], False, True, False, True, id="an-error-event"),
        pytest.param([turn()], True, True, False, False, id="frames-were-held-back"),
        pytest.param(
            [turn(calls=("bmcp_docs_search",))], False, True, False, False, id="an-injected-call"
        ),
        pytest.param([turn(calls=("bash",))], False, True, False, True, id="a-client-tool-call"),
        pytest.param(
            [turn(calls=("bmcp_docs_search",)), turn()], False, True, False, True, id="last-counts"
        ),
    ],
)
def test_whether_the_client_got_the_whole_answer_before_it_left(
    turns: list[TurnResult],
    held_back: bool,
    frames_delivered: bool,
    complete: bool,
    delivered: bool,
) -> None:
    progress = Progress(turns=turns, held_back=held_back)
    verdict = progress.answer_delivered(
        frames_delivered=frames_delivered, complete=complete, injected=INJECTED
    )
    assert verdict is delivered


def interception(client: str = "Unknown") -> Interception:
    """The few fields the observer reads; a whole plan needs a running gateway."""
    fake = SimpleNamespace(
        route=SimpleNamespace(provider=SimpleNamespace(name="anthropic"), suffix="/v1/messages"),
        parsed=SimpleNamespace(model="claude-x"),
        actor=SimpleNamespace(id="alice"),
        progress=Progress(client=client),
    )
    return cast(Interception, fake)


TOOL = Tool("bmcp_docs_search", "search", "docs", "http://docs", "", {})


def failed(kind: ToolFailure, message: str) -> ToolResult:
    return ToolResult(content=(), structured=None, is_error=True, error=message, failure=kind)


def test_tool_calls_are_counted_by_their_kind_of_failure_not_its_wording() -> None:
    metrics = Metrics()
    observer = Observer(metrics)
    ix = interception()
    observer.tool_called(ix, TOOL, failed(ToolFailure.CALL_FAILED, "calling: read timed out"), 1)
    observer.tool_called(ix, TOOL, failed(ToolFailure.TIMEOUT, "tool call took too long"), 2)
    observer.tool_called(ix, TOOL, ToolResult((), None, is_error=False), 4)

    def seconds(outcome: str) -> float | None:
        labels = {"server": "docs", "name": "search", "outcome": outcome}
        return metrics.registry.get_sample_value("mcp_tool_call_seconds_sum", labels)

    assert (seconds("error"), seconds("timeout"), seconds("ok")) == (1, 2, 4)


def test_an_observer_without_metrics_counts_nothing_and_needs_no_checks() -> None:
    observer = Observer()
    assert type(observer.metrics) is InterceptionMetrics  # the null metrics
    ix = interception()
    observer.started(ix)
    observer.upstream_answered(ix, 401, 0.5, keyed=True)
    observer.breaker_rejected(ix)
    observer.tool_called(ix, TOOL, failed(ToolFailure.TIMEOUT, "slow"), 1)
    observer.turn_recorded(ix, [])
