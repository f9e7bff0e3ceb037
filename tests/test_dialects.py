"""One conformance suite for every dialect, over every captured fixture.

Whatever the chunking of the upstream bytes, a streamed turn must report the same
usage, tool calls and thoughts as the same turn read from the blocking body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.dialects import DIALECTS
from bridge.dialects.base import TurnResult
from bridge.mock_upstream import FIXTURES_DIR, Scenario, load_scenarios
from bridge.sse import Decoder, Event
from tests.conftest import is_inner_loop

SCENARIOS = load_scenarios(FIXTURES_DIR)
CONSISTENT = [
    name
    for name, s in sorted(SCENARIOS.items())
    if s.request is not None
    and not is_inner_loop(name)
    and s.expect.error is None
    and s.upstream.blocking
    and s.upstream.streaming
    and s.upstream.blocking[0].status == 200
]


def stream_bytes(scenario: Scenario) -> bytes:
    return b"".join(scenario.upstream.streaming[0].wire_chunks)


def streamed(scenario: Scenario, chunks: list[bytes]) -> tuple[TurnResult, list[bytes]]:
    turn = DIALECTS[scenario.api].open_exchange("ix-1", frozenset()).new_turn()
    decoder = Decoder()
    frames: list[bytes] = []
    for chunk in [*chunks, b""]:
        decoder.receive_data(chunk)
        while isinstance(event := decoder.next_event(), Event):
            frame = turn.feed_event(event)
            if frame is not None:
                frames.append(frame)
    return turn.result(), frames


def blocking(scenario: Scenario) -> TurnResult:
    turn = DIALECTS[scenario.api].open_exchange("ix-1", frozenset()).new_turn()
    turn.feed_body(json.dumps(scenario.upstream.blocking[0].body).encode())
    return turn.result()


def comparable(result: TurnResult) -> dict[str, Any]:
    return {
        "response_id": result.response_id,
        "usage": result.usage,
        "tool_calls": result.tool_calls,
        "thoughts": result.thoughts,
        "complete": result.complete,
    }


@pytest.mark.parametrize("name", CONSISTENT)
def test_streamed_turn_reports_what_the_blocking_body_does(name: str) -> None:
    scenario = SCENARIOS[name]
    result, _ = streamed(scenario, [stream_bytes(scenario)])
    assert comparable(result) == comparable(blocking(scenario))
    expect = scenario.expect
    assert expect.usage is not None
    assert result.usage is not None
    for field in ("input", "output", "cache_read", "cache_write", "reasoning"):
        assert getattr(result.usage, field) == getattr(expect.usage, field), field
    assert [(c.name, c.id, c.input) for c in result.tool_calls] == [
        (c.name, c.id, c.input) for c in expect.tool_calls or ()
    ]


@pytest.mark.parametrize("name", CONSISTENT)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_chunking_gives_the_same_turn_and_frames(name: str, data: st.DataObject) -> None:
    scenario = SCENARIOS[name]
    whole = stream_bytes(scenario)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(whole) - 1)), max_size=30)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert streamed(scenario, chunks) == streamed(scenario, [whole])


@pytest.mark.parametrize("name", [n for n in CONSISTENT if SCENARIOS[n].api != "openai.responses"])
def test_relayed_frames_carry_the_interception_id_instead_of_the_upstream_id(name: str) -> None:
    scenario = SCENARIOS[name]
    result, frames = streamed(scenario, [stream_bytes(scenario)])
    upstream_id = result.response_id.encode()
    assert upstream_id
    assert not any(upstream_id in frame for frame in frames)
    assert any(b'"ix-1"' in frame for frame in frames)
