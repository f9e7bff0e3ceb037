"""The scenario fixtures are self-consistent and accepted by the official Anthropic SDK.

Rules: a stream must accumulate to exactly the blocking body, ``expect`` must state the
body's true totals, and the SDK must produce the same final message from both forms when
driven against the mock upstream over loopback.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import pytest
import trio

from bridge.mock_upstream import (
    FIXTURES_DIR,
    ExpectedUsage,
    MockUpstream,
    Scenario,
    SseEvent,
    load_scenarios,
)

SCENARIOS = load_scenarios(FIXTURES_DIR)
ANTHROPIC = sorted(name for name, s in SCENARIOS.items() if s.api == "anthropic.messages")
MESSAGE_SCENARIOS = [name for name in ANTHROPIC if SCENARIOS[name].request is not None]
SUCCESSFUL = [
    name
    for name in MESSAGE_SCENARIOS
    if all(r.status == 200 for r in SCENARIOS[name].upstream.blocking)
    and all(
        r.events and r.events[-1].event == "message_stop"
        for r in SCENARIOS[name].upstream.streaming
    )
]


def accumulate(events: tuple[SseEvent, ...]) -> dict[str, Any]:
    """Build the Message a stream describes, strictly, from raw JSON events.

    Stricter than the SDK: it keeps every usage field and fails on unknown event types.
    """
    message: dict[str, Any] | None = None
    json_parts: dict[int, str] = {}
    for event in events:
        data = event.data
        assert event.event == data["type"], f"event name {event.event!r} != data.type"
        kind = data["type"]
        if kind == "message_start":
            assert message is None, "two message_start events"
            message = copy.deepcopy(data["message"])
            continue
        assert message is not None, f"{kind} before message_start"
        if kind == "content_block_start":
            assert data["index"] == len(message["content"])
            message["content"].append(copy.deepcopy(data["content_block"]))
        elif kind == "content_block_delta":
            block = message["content"][data["index"]]
            delta = data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                json_parts[data["index"]] = (
                    json_parts.get(data["index"], "") + delta["partial_json"]
                )
            else:
                raise AssertionError(f"unknown delta type {delta['type']!r}")
        elif kind == "content_block_stop":
            index = data["index"]
            if index in json_parts:
                message["content"][index]["input"] = json.loads(json_parts.pop(index))
        elif kind == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
        elif kind not in ("ping", "message_stop", "error"):
            raise AssertionError(f"unknown event type {kind!r}")
    assert message is not None
    return message


def usage_totals(usage: dict[str, Any]) -> ExpectedUsage:
    creation = usage.get("cache_creation") or {}
    return ExpectedUsage(
        input=usage["input_tokens"],
        output=usage["output_tokens"],
        cache_read=usage.get("cache_read_input_tokens") or 0,
        cache_write=usage.get("cache_creation_input_tokens") or 0,
        cache_write_5m=creation.get("ephemeral_5m_input_tokens", 0),
        cache_write_1h=creation.get("ephemeral_1h_input_tokens", 0),
        web_search_requests=(usage.get("server_tool_use") or {}).get("web_search_requests", 0),
    )


def test_every_fixture_loads_with_its_file_name() -> None:
    assert set(ANTHROPIC) >= {
        "anthropic_text",
        "anthropic_thinking",
        "anthropic_tool_call",
        "anthropic_parallel_tools",
        "anthropic_cache",
        "anthropic_haiku",
        "anthropic_error_400",
        "anthropic_overloaded_midstream",
        "anthropic_models",
        "anthropic_slow_stream",
    }
    for name, scenario in SCENARIOS.items():
        assert scenario.path is not None
        assert scenario.path.stem == name


@pytest.mark.parametrize("name", SUCCESSFUL)
def test_stream_accumulates_to_exactly_the_blocking_body(name: str) -> None:
    upstream = SCENARIOS[name].upstream
    assert upstream.blocking[0].body == accumulate(upstream.streaming[0].events or ())


@pytest.mark.parametrize("name", SUCCESSFUL)
def test_stream_has_the_documented_shape(name: str) -> None:
    events = SCENARIOS[name].upstream.streaming[0].events or ()
    kinds = [event.event for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert "ping" in kinds
    assert 1 <= events[0].data["message"]["usage"]["output_tokens"] <= 5
    assert events[0].data["message"]["stop_reason"] is None


@pytest.mark.parametrize("name", SUCCESSFUL)
def test_expect_states_the_true_totals(name: str) -> None:
    scenario = SCENARIOS[name]
    body = scenario.upstream.blocking[0].body
    streamed = accumulate(scenario.upstream.streaming[0].events or ())
    assert scenario.expect.usage == usage_totals(body["usage"])
    assert scenario.expect.usage == usage_totals(streamed["usage"])
    texts = [block["text"] for block in body["content"] if block["type"] == "text"]
    assert scenario.expect.text == "".join(texts)
    tool_uses = [block for block in body["content"] if block["type"] == "tool_use"]
    expected_calls = scenario.expect.tool_calls or ()
    assert [(c.name, c.id, c.input) for c in expected_calls] == [
        (b["name"], b["id"], b["input"]) for b in tool_uses
    ]
    thoughts = [block["thinking"] for block in body["content"] if block["type"] == "thinking"]
    assert list(scenario.expect.thinking or ()) == thoughts


def test_cache_scenario_splits_cache_writes_by_ttl() -> None:
    usage = SCENARIOS["anthropic_cache"].expect.usage
    assert usage is not None
    assert usage.cache_read > 0
    assert usage.cache_write_5m > 0
    assert usage.cache_write_1h > 0
    assert usage.cache_write == usage.cache_write_5m + usage.cache_write_1h
    assert usage.web_search_requests == 1


def test_midstream_error_expect_describes_what_arrived_before_the_error() -> None:
    scenario = SCENARIOS["anthropic_overloaded_midstream"]
    events = scenario.upstream.streaming[0].events or ()
    assert events[-1].event == "error"
    assert events[-1].data["error"]["type"] == "overloaded_error"
    partial = accumulate(events)
    assert scenario.expect.text == partial["content"][0]["text"]
    assert scenario.expect.usage == usage_totals(partial["usage"])
    blocking = scenario.upstream.blocking[0]
    assert blocking.status == 529
    assert ("retry-after", "3") in blocking.headers


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    upstream = MockUpstream(SCENARIOS)
    port = await nursery.start(upstream.serve)
    return f"http://127.0.0.1:{port}"


def sdk_client(base_url: str, scenario: Scenario) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test",
        base_url=base_url,
        max_retries=0,
        default_headers={"x-mock-scenario": scenario.name},
    )


@pytest.mark.parametrize("name", SUCCESSFUL)
async def test_sdk_gives_the_same_message_streaming_and_blocking(base_url: str, name: str) -> None:
    scenario = SCENARIOS[name]
    assert scenario.request is not None
    async with sdk_client(base_url, scenario) as client:
        created = await client.messages.create(**scenario.request)
        async with client.messages.stream(**scenario.request) as stream:
            streamed = await stream.get_final_message()
    assert created.to_dict() == scenario.upstream.blocking[0].body
    assert streamed.to_dict() == created.to_dict()


@pytest.mark.parametrize(
    ("name", "error_class"),
    [
        ("anthropic_error_400", anthropic.BadRequestError),
        ("anthropic_overloaded_midstream", anthropic.APIStatusError),
    ],
)
async def test_sdk_raises_the_fixture_error_both_ways(
    base_url: str, name: str, error_class: type[anthropic.APIStatusError]
) -> None:
    scenario = SCENARIOS[name]
    assert scenario.request is not None
    assert scenario.expect.error is not None
    async with sdk_client(base_url, scenario) as client:
        with pytest.raises(error_class) as blocking:
            await client.messages.create(**scenario.request)
        assert blocking.value.status_code == scenario.expect.error.status
        with pytest.raises(error_class) as streaming:
            async with client.messages.stream(**scenario.request) as stream:
                await stream.get_final_message()
    for raised in (blocking.value, streaming.value):
        assert isinstance(raised.body, dict)
        body: dict[str, Any] = raised.body
        error = body.get("error", body)
        assert error["type"] == scenario.expect.error.type
