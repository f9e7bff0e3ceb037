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
from bridge.mock.upstream import FIXTURES_DIR, Scenario, load_scenarios
from bridge.protocol.sse import Decoder, Event
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


def echoed(scenario: Scenario, result: TurnResult) -> Any:
    """What the inner loop sends back upstream for this turn (before any tool result)."""
    document: dict[str, Any] = {"messages": [], "input": []}
    DIALECTS[scenario.api].append_results(document, result, [])
    return document


ECHOED = [
    name
    for name, s in sorted(SCENARIOS.items())
    if s.request is not None
    and s.expect.error is None
    and s.upstream.blocking
    and s.upstream.streaming
    and s.upstream.blocking[0].status == 200
]


@pytest.mark.parametrize("name", ECHOED)
def test_the_model_turn_goes_back_the_same_streamed_or_blocking(name: str) -> None:
    """The inner loop echoes the model's whole turn (text, thinking, reasoning, calls), however
    it arrived: a blocking answer must lose nothing a stream keeps."""
    scenario = SCENARIOS[name]
    result, _ = streamed(scenario, [stream_bytes(scenario)])
    assert echoed(scenario, result) == echoed(scenario, blocking(scenario))


# A DeepSeek-style turn in thinking mode: text, ``reasoning_content`` (which DeepSeek wants
# back in a tool-call loop) and a call carrying a server's extra field (Gemini's
# ``extra_content``), with the response-only fields of OpenAI's own API.
_CALL = {"id": "call_0", "type": "function", "function": {"name": "bmcp_demo_add", "arguments": ""}}
_EXTRA = {"google": {"thought_signature": "c2ln"}}
_REASONING_BODY = {
    "id": "ds-1",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Adding them.",
                "reasoning_content": "The user wants 2 + 3.",
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        **_CALL,
                        "function": {"name": "bmcp_demo_add", "arguments": '{"a":2,"b":3}'},
                        "extra_content": _EXTRA,
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
}
_REASONING_DELTAS: list[dict[str, Any]] = [
    {"role": "assistant", "content": None, "reasoning_content": "The user"},
    {"reasoning_content": " wants 2 + 3."},
    {"content": "Adding"},
    {"content": " them."},
    {"tool_calls": [{"index": 0, **_CALL, "extra_content": _EXTRA}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":2,'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"b":3}'}}]},
]


def test_chat_echo_keeps_reasoning_content_and_extra_call_fields() -> None:
    dialect = DIALECTS["openai.chat"]
    exchange = dialect.open_exchange("ix-1", frozenset({"bmcp_demo_add"}))
    whole = exchange.new_turn()
    whole.feed_body(json.dumps(_REASONING_BODY).encode())
    chunks = [
        {"id": "ds-1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        for delta in _REASONING_DELTAS
    ]
    chunks.append({"id": "ds-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "x"}]})
    stream = exchange.new_turn()
    for chunk in chunks:
        stream.feed_event(Event(data=json.dumps(chunk)))
    stream.feed_event(Event(data="[DONE]"))
    echoes = []
    for turn in (whole, stream):
        document: dict[str, Any] = {"messages": []}
        dialect.append_results(document, turn.result(), [])
        echoes.append(document["messages"])
    message = _REASONING_BODY["choices"][0]["message"]  # type: ignore[index]
    expected = {k: v for k, v in message.items() if k not in ("refusal", "annotations")}
    assert echoes == [[expected], [expected]]
