"""The scenario fixtures are self-consistent and accepted by the official Anthropic SDK.

Rules: a stream must accumulate to exactly the blocking body, ``expect`` must state the
body's true totals, and the SDK must produce the same final message from both forms when
driven against the mock upstream over loopback.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
import trio
from openai.lib.streaming.chat import ChatCompletionStreamState

from bridge.mock.upstream import (
    FIXTURES_DIR,
    ExpectedUsage,
    MockUpstream,
    Scenario,
    SseEvent,
    load_scenarios,
)
from bridge.protocol import sse
from bridge.protocol.usage import TOKEN_COUNTERS
from bridge.services.mcp import TOOL_ID_PREFIX

SCENARIOS = load_scenarios(FIXTURES_DIR)


def summed(usages: list[ExpectedUsage]) -> ExpectedUsage:
    """The gateway records one token record per upstream response; expect states their sum."""
    return ExpectedUsage(**{n: sum(getattr(u, n) for u in usages) for n in TOKEN_COUNTERS})


def is_client_call(name: str) -> bool:
    """Calls of gateway-injected MCP tools (``bmcp_...``) never reach the client."""
    return not name.startswith(TOOL_ID_PREFIX)


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
    assert len(upstream.blocking) == len(upstream.streaming)
    for blocking, streaming in zip(upstream.blocking, upstream.streaming, strict=True):
        assert blocking.body == accumulate(streaming.events or ())


@pytest.mark.parametrize("name", SUCCESSFUL)
def test_stream_has_the_documented_shape(name: str) -> None:
    for response in SCENARIOS[name].upstream.streaming:
        events = response.events or ()
        kinds = [event.event for event in events]
        assert kinds[0] == "message_start"
        assert kinds[-2:] == ["message_delta", "message_stop"]
        assert "ping" in kinds
        assert 1 <= events[0].data["message"]["usage"]["output_tokens"] <= 5
        assert events[0].data["message"]["stop_reason"] is None


@pytest.mark.parametrize("name", SUCCESSFUL)
def test_expect_states_the_true_totals(name: str) -> None:
    scenario = SCENARIOS[name]
    bodies = [response.body for response in scenario.upstream.blocking]
    streams = [accumulate(response.events or ()) for response in scenario.upstream.streaming]
    assert scenario.expect.usage == summed([usage_totals(b["usage"]) for b in bodies])
    assert scenario.expect.usage == summed([usage_totals(m["usage"]) for m in streams])
    body = bodies[-1]
    texts = [block["text"] for block in body["content"] if block["type"] == "text"]
    assert scenario.expect.text == "".join(texts)
    tool_uses = [
        block
        for block in body["content"]
        if block["type"] == "tool_use" and is_client_call(block["name"])
    ]
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


# --------------------------------------------------------------------------- OpenAI

CHAT = sorted(name for name, s in SCENARIOS.items() if s.api == "openai.chat" and s.request)
RESPONSES = sorted(
    name for name, s in SCENARIOS.items() if s.api == "openai.responses" and s.request
)
CHAT_SUCCESSFUL = [
    name
    for name in CHAT
    if SCENARIOS[name].upstream.blocking[0].status == 200 and SCENARIOS[name].expect.error is None
]
RESPONSES_SUCCESSFUL = [
    name
    for name in RESPONSES
    if SCENARIOS[name].upstream.blocking[0].status == 200 and SCENARIOS[name].expect.error is None
]
OPENAI_ERRORS_BEFORE_STREAM = sorted(
    name
    for name in CHAT + RESPONSES
    if all(r.status >= 400 for r in SCENARIOS[name].upstream.streaming)
)


def wire_data(name: str, index: int = 0) -> list[tuple[str | None, str]]:
    """The (event, data) pairs a client decodes from the mock's streaming wire bytes.

    Decoding the wire form (not the fixture's event list) also covers ``raw`` streams and
    drops SSE comments, as every client does.
    """
    decoder = sse.Decoder()
    for chunk in SCENARIOS[name].upstream.streaming[index].wire_chunks:
        decoder.receive_data(chunk)
    decoder.receive_data(b"")
    return [(event.event, event.data) for event in decoder.events()]


_CHUNK_HEADER = ("id", "created", "model", "service_tier", "system_fingerprint")


def accumulate_chat(data: list[str]) -> dict[str, Any]:
    """Build the ChatCompletion a chunk stream describes, strictly.

    Stricter than the SDK: every chunk shares the completion's id, model and fingerprint,
    tool call ids appear only on a call's first delta, nothing follows the usage chunk, and
    the stream ends with ``[DONE]``.
    """
    assert data[-1] == "[DONE]", "a chat stream ends with data: [DONE]"
    chunks = [json.loads(line) for line in data[:-1]]
    header = {key: chunks[0][key] for key in _CHUNK_HEADER}
    role: str | None = None
    content: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert {key: chunk[key] for key in _CHUNK_HEADER} == header
        assert usage is None, "a chunk after the usage chunk"
        for choice in chunk["choices"]:
            assert choice["index"] == 0
            assert finish is None, "a choice delta after finish_reason"
            delta = choice["delta"]
            assert set(delta) <= {"role", "content", "refusal", "tool_calls"}, delta
            if "role" in delta:
                assert role is None, "role in two deltas"
                role = delta["role"]
            if delta.get("content") is not None:
                content = (content or "") + delta["content"]
            assert delta.get("refusal") is None
            for call in delta.get("tool_calls", ()):
                index = call["index"]
                if index not in calls:
                    assert call["type"] == "function"
                    calls[index] = {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                else:
                    assert "id" not in call, "a tool call id after the call's first delta"
                calls[index]["function"]["arguments"] += call["function"].get("arguments", "")
            finish = choice["finish_reason"]
        usage = chunk["usage"]
    assert role == "assistant"
    assert finish is not None
    assert usage is not None
    message: dict[str, Any] = {"role": role, "content": content, "refusal": None, "annotations": []}
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return {
        "id": header["id"],
        "object": "chat.completion",
        "created": header["created"],
        "model": header["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "service_tier": header["service_tier"],
        "system_fingerprint": header["system_fingerprint"],
    }


def accumulate_response(
    events: list[tuple[str | None, Any]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Replay Responses stream events strictly; return the final response and the output.

    Every ``*.done`` event must equal what its deltas built, sequence numbers count up from
    0, and ``response.completed`` must carry exactly the accumulated output. The final
    response is the one of ``response.completed`` / ``response.failed``, None after ``error``.
    """
    snapshot: dict[str, Any] | None = None
    output: list[dict[str, Any]] = []
    for number, (name, data) in enumerate(events):
        kind = data["type"]
        assert name == kind, f"event name {name!r} != data.type {kind!r}"
        assert data["sequence_number"] == number
        if kind in ("response.created", "response.in_progress"):
            assert data["response"]["status"] == "in_progress"
            assert snapshot is None or snapshot == data["response"]
            snapshot = copy.deepcopy(data["response"])
            continue
        assert snapshot is not None, f"{kind} before response.created"
        if kind == "error":
            assert number == len(events) - 1
            return None, output
        if kind in ("response.completed", "response.failed"):
            assert number == len(events) - 1
            final: dict[str, Any] = data["response"]
            ignored = {"status", "output", "usage", "error"}
            assert {k: v for k, v in final.items() if k not in ignored} == {
                k: v for k, v in snapshot.items() if k not in ignored
            }
            if kind == "response.completed":
                assert final["status"] == "completed"
                assert final["output"] == output
            else:
                assert final["status"] == "failed"
                assert final["error"] is not None
            return final, output
        if kind == "response.output_item.added":
            assert data["output_index"] == len(output)
            output.append(copy.deepcopy(data["item"]))
            continue
        item = output[data["output_index"]]
        if "item_id" in data:
            assert data["item_id"] == item["id"]
        if kind == "response.output_item.done":
            done = data["item"]
            assert {k: v for k, v in item.items() if k != "status"} == {
                k: v for k, v in done.items() if k != "status"
            }
            output[data["output_index"]] = copy.deepcopy(done)
        elif kind == "response.content_part.added":
            assert data["content_index"] == len(item["content"])
            item["content"].append(copy.deepcopy(data["part"]))
        elif kind == "response.output_text.delta":
            item["content"][data["content_index"]]["text"] += data["delta"]
        elif kind == "response.output_text.done":
            assert item["content"][data["content_index"]]["text"] == data["text"]
        elif kind == "response.content_part.done":
            assert item["content"][data["content_index"]] == data["part"]
        elif kind == "response.function_call_arguments.delta":
            item["arguments"] += data["delta"]
        elif kind == "response.function_call_arguments.done":
            assert item["arguments"] == data["arguments"]
        elif kind == "response.custom_tool_call_input.delta":
            item["input"] += data["delta"]
        elif kind == "response.custom_tool_call_input.done":
            assert item["input"] == data["input"]
        elif kind == "response.reasoning_summary_part.added":
            assert data["summary_index"] == len(item["summary"])
            item["summary"].append(copy.deepcopy(data["part"]))
        elif kind == "response.reasoning_summary_text.delta":
            item["summary"][data["summary_index"]]["text"] += data["delta"]
        elif kind == "response.reasoning_summary_text.done":
            assert item["summary"][data["summary_index"]]["text"] == data["text"]
        elif kind == "response.reasoning_summary_part.done":
            assert item["summary"][data["summary_index"]] == data["part"]
        else:
            raise AssertionError(f"unknown event type {kind!r}")
    raise AssertionError("the stream ended without response.completed, response.failed or error")


def response_events(name: str) -> list[tuple[str | None, Any]]:
    """The stream's events with JSON data; a malformed data line fails here."""
    return [(event, json.loads(data)) for event, data in wire_data(name)]


def chat_totals(body: dict[str, Any]) -> ExpectedUsage:
    usage = body["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return ExpectedUsage(
        input=usage["prompt_tokens"] - cached,
        output=usage["completion_tokens"],
        cache_read=cached,
        reasoning=usage["completion_tokens_details"]["reasoning_tokens"],
    )


def responses_totals(body: dict[str, Any]) -> ExpectedUsage:
    usage = body["usage"]
    cached = usage["input_tokens_details"]["cached_tokens"]
    return ExpectedUsage(
        input=usage["input_tokens"] - cached,
        output=usage["output_tokens"],
        cache_read=cached,
        reasoning=usage["output_tokens_details"]["reasoning_tokens"],
    )


def response_text(output: list[dict[str, Any]]) -> str | None:
    """The answer: output_text of message items that are not commentary; None if none."""
    texts = [
        part["text"]
        for item in output
        if item["type"] == "message" and item.get("phase") != "commentary"
        for part in item["content"]
        if part["type"] == "output_text"
    ]
    return "".join(texts) if texts else None


def test_every_openai_scenario_the_brief_names_is_present() -> None:
    chat = {
        "text",
        "tool_call",
        "parallel_tools",
        "tool_call_nonzero_index",
        "cached",
        "reasoning",
        "error_400",
        "error_401",
        "error_429",
        "error_midstream",
        "keepalive_comments",
        "usage_in_last_choice_chunk",
    }
    responses = {
        "text",
        "tool_call",
        "parallel_tools",
        "custom_tool",
        "reasoning",
        "cached",
        "previous_response_id",
        "error_400",
        "error_401",
        "error_429",
        "error_event",
        "failed",
        "malformed_line",
    }
    chat |= {"mcp_add", "mcp_loop_forever", "captured_headers"}
    responses |= {"mcp_add", "mcp_loop_forever"}
    assert set(CHAT) == {f"openai_chat_{name}" for name in chat}
    assert set(RESPONSES) == {f"openai_responses_{name}" for name in responses}
    assert SCENARIOS["openai_models"].upstream.get is not None


@pytest.mark.parametrize("name", CHAT_SUCCESSFUL)
def test_chat_stream_accumulates_to_exactly_the_blocking_body(name: str) -> None:
    for index, response in enumerate(SCENARIOS[name].upstream.blocking):
        assert accumulate_chat([data for _, data in wire_data(name, index)]) == response.body


@pytest.mark.parametrize("name", CHAT_SUCCESSFUL)
def test_chat_stream_has_the_documented_shape(name: str) -> None:
    for index in range(len(SCENARIOS[name].upstream.streaming)):
        pairs = wire_data(name, index)
        assert all(event is None for event, _ in pairs), "chat streams have no event: lines"
        chunks = [json.loads(data) for _, data in pairs[:-1]]
        assert "role" in chunks[0]["choices"][0]["delta"]
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
        last = chunks[-1]
        assert last["usage"] is not None
        if name == "openai_chat_usage_in_last_choice_chunk":
            assert last["choices"][0]["finish_reason"] == "stop"
        else:
            assert last["choices"] == []
            assert chunks[-2]["choices"][0]["finish_reason"] is not None


def test_nonzero_index_and_parallel_scenarios_have_their_indexes() -> None:
    def indexes(name: str) -> list[int]:
        return [
            call["index"]
            for _, data in wire_data(name)[:-1]
            for choice in json.loads(data)["choices"]
            for call in choice["delta"].get("tool_calls", ())
            if "id" in call
        ]

    assert indexes("openai_chat_tool_call_nonzero_index") == [1]
    assert indexes("openai_chat_parallel_tools") == [0, 1]


def test_keepalive_scenario_has_comment_lines_between_chunks() -> None:
    raw = SCENARIOS["openai_chat_keepalive_comments"].upstream.streaming[0].raw or ()
    text = "".join(raw)
    assert text.startswith(": keep-alive\n\n")
    assert text.count(": keep-alive\n\n") >= 3
    assert text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("name", CHAT_SUCCESSFUL)
def test_chat_expect_states_the_true_totals(name: str) -> None:
    scenario = SCENARIOS[name]
    bodies = [response.body for response in scenario.upstream.blocking]
    assert scenario.expect.usage == summed([chat_totals(body) for body in bodies])
    message = bodies[-1]["choices"][0]["message"]
    assert scenario.expect.text == message["content"]
    calls = [
        (call["function"]["name"], call["id"], json.loads(call["function"]["arguments"]))
        for call in message.get("tool_calls", ())
        if is_client_call(call["function"]["name"])
    ]
    assert [(c.name, c.id, c.input) for c in scenario.expect.tool_calls or ()] == calls
    assert scenario.expect.thoughts is None


def test_chat_cached_and_reasoning_scenarios_count_what_they_are_named_for() -> None:
    cached = SCENARIOS["openai_chat_cached"].expect.usage
    reasoning = SCENARIOS["openai_chat_reasoning"]
    assert cached is not None
    assert cached.cache_read > 0
    assert reasoning.expect.usage is not None
    assert reasoning.expect.usage.reasoning > 0
    assert reasoning.request is not None
    assert reasoning.request["model"] == "o4-mini"


def test_chat_midstream_error_ends_the_stream_after_some_text() -> None:
    scenario = SCENARIOS["openai_chat_error_midstream"]
    chunks = [json.loads(data) for _, data in wire_data("openai_chat_error_midstream")]
    error = chunks[-1]
    assert set(error) == {"error"}
    assert error["error"]["type"] == "server_error"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks[:-1])
    assert text
    assert scenario.expect.text == text
    assert scenario.expect.usage == ExpectedUsage()
    assert scenario.expect.error is not None
    assert scenario.upstream.blocking[0].status == scenario.expect.error.status == 500


@pytest.mark.parametrize("name", OPENAI_ERRORS_BEFORE_STREAM)
def test_openai_errors_before_the_stream_have_openai_error_bodies(name: str) -> None:
    scenario = SCENARIOS[name]
    assert scenario.expect.error is not None
    for response in scenario.upstream.blocking + scenario.upstream.streaming:
        assert response.status == scenario.expect.error.status
        assert set(response.body) == {"error"}
        assert set(response.body["error"]) == {"message", "type", "param", "code"}
        assert response.body["error"]["type"] == scenario.expect.error.type
        if response.status == 429:
            headers = dict(response.headers)
            assert headers["retry-after"] == "7"
            assert {"x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} <= set(headers)


@pytest.mark.parametrize("name", RESPONSES_SUCCESSFUL)
def test_responses_stream_completes_with_exactly_the_blocking_body(name: str) -> None:
    for index, response in enumerate(SCENARIOS[name].upstream.blocking):
        events = [
            (event, json.loads(data))
            for event, data in wire_data(name, index)
            if not data.startswith("{not json")
        ]
        final, _ = accumulate_response(events)
        assert final == response.body


@pytest.mark.parametrize("name", RESPONSES_SUCCESSFUL)
def test_responses_expect_states_the_true_totals(name: str) -> None:
    scenario = SCENARIOS[name]
    bodies = [response.body for response in scenario.upstream.blocking]
    assert scenario.expect.usage == summed([responses_totals(body) for body in bodies])
    body = bodies[-1]
    assert scenario.expect.text == response_text(body["output"])
    calls = [
        (
            item["name"],
            item["call_id"],
            json.loads(item["arguments"]) if item["type"] == "function_call" else item["input"],
        )
        for item in body["output"]
        if item["type"] in ("function_call", "custom_tool_call") and is_client_call(item["name"])
    ]
    assert [(c.name, c.id, c.input) for c in scenario.expect.tool_calls or ()] == calls
    thoughts: list[tuple[str, str]] = []
    for item in body["output"]:
        if item["type"] == "reasoning":
            thoughts += [("reasoning_summary", s["text"]) for s in item["summary"]]
        elif item["type"] == "message" and item.get("phase") == "commentary":
            thoughts += [("commentary", part["text"]) for part in item["content"]]
    assert [(t.source, t.content) for t in scenario.expect.thoughts or ()] == thoughts


def test_responses_reasoning_scenario_has_summaries_commentary_and_an_answer() -> None:
    scenario = SCENARIOS["openai_responses_reasoning"]
    output = scenario.upstream.blocking[0].body["output"]
    assert [item["type"] for item in output] == ["reasoning", "message", "message"]
    assert len(output[0]["summary"]) == 2
    assert [item.get("phase") for item in output[1:]] == ["commentary", "final_answer"]
    assert scenario.expect.usage is not None
    assert scenario.expect.usage.reasoning > 0
    kinds = {event for event, _ in wire_data("openai_responses_reasoning")}
    assert "response.reasoning_summary_text.delta" in kinds


def test_responses_previous_response_id_scenario_sends_a_tool_output() -> None:
    request = SCENARIOS["openai_responses_previous_response_id"].request
    assert request is not None
    assert request["previous_response_id"].startswith("resp_")
    assert [item["type"] for item in request["input"]] == ["function_call_output"]
    assert len(SCENARIOS["openai_responses_previous_response_id"].upstream.streaming) == 1


def test_responses_malformed_line_scenario_has_exactly_one_bad_event() -> None:
    pairs = wire_data("openai_responses_malformed_line")
    bad = [data for _, data in pairs if data.startswith("{not json")]
    assert bad == ["{not json"]
    with pytest.raises(json.JSONDecodeError):
        response_events("openai_responses_malformed_line")


@pytest.mark.parametrize(
    ("name", "last_event"),
    [("openai_responses_error_event", "error"), ("openai_responses_failed", "response.failed")],
)
def test_responses_stream_errors_describe_what_arrived_before(name: str, last_event: str) -> None:
    scenario = SCENARIOS[name]
    events = response_events(name)
    assert events[-1][0] == last_event
    final, output = accumulate_response(events)
    assert scenario.expect.error is not None
    if final is None:
        assert events[-1][1]["code"] == scenario.expect.error.type
    else:
        assert final["error"]["code"] == scenario.expect.error.type
    assert scenario.expect.text == response_text(output)
    assert scenario.expect.usage == ExpectedUsage()
    assert scenario.upstream.blocking[0].status == scenario.expect.error.status


# -- the official openai SDK against the mock


def openai_client(base_url: str, scenario: Scenario) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="k",
        base_url=f"{base_url}/v1",
        max_retries=0,
        default_headers={"x-mock-scenario": scenario.name},
    )


@pytest.mark.parametrize("name", CHAT_SUCCESSFUL)
async def test_openai_sdk_gives_the_same_completion_streaming_and_blocking(
    base_url: str, name: str
) -> None:
    scenario = SCENARIOS[name]
    assert scenario.request is not None
    body = scenario.upstream.blocking[0].body
    async with openai_client(base_url, scenario) as client:
        created = await client.chat.completions.create(**scenario.request)
        stream = await client.chat.completions.create(
            **scenario.request, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert created.to_dict() == body
    # The SDK parsed every chunk without losing a field.
    assert accumulate_chat([chunk.to_json() for chunk in chunks] + ["[DONE]"]) == body
    if name == "openai_chat_tool_call_nonzero_index":
        # The SDK's own accumulator indexes its tool call list by the delta's index, so a
        # first call at index 1 raises IndexError there. A gateway must not do the same.
        return
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    streamed = state.get_final_completion()
    assert streamed.id == created.id
    assert streamed.usage is not None
    assert streamed.usage.to_dict() == body["usage"]
    choice, expected = streamed.choices[0], created.choices[0]
    assert choice.finish_reason == expected.finish_reason
    assert choice.message.content == expected.message.content
    calls = [
        (call.id, call.function.name, call.function.arguments)
        for call in choice.message.tool_calls or ()
        if call.type == "function"
    ]
    assert calls == [
        (call.id, call.function.name, call.function.arguments)
        for call in expected.message.tool_calls or ()
        if call.type == "function"
    ]


@pytest.mark.parametrize("name", [n for n in RESPONSES_SUCCESSFUL if "malformed" not in n])
async def test_openai_sdk_gives_the_same_response_streaming_and_blocking(
    base_url: str, name: str
) -> None:
    scenario = SCENARIOS[name]
    assert scenario.request is not None
    body = scenario.upstream.blocking[0].body
    async with openai_client(base_url, scenario) as client:
        created = await client.responses.create(**scenario.request)
        stream = await client.responses.create(**scenario.request, stream=True)
        events = [event async for event in stream]
        async with client.responses.stream(**scenario.request) as helper:
            final = await helper.get_final_response()
    assert created.to_dict() == body
    assert events[-1].type == "response.completed"
    assert events[-1].response.to_dict() == body
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.id == created.id
    assert final.output_text == created.output_text


async def drain(stream: AsyncIterator[object]) -> None:
    async for _ in stream:
        pass


async def test_openai_sdk_fails_on_the_malformed_line(base_url: str) -> None:
    scenario = SCENARIOS["openai_responses_malformed_line"]
    assert scenario.request is not None
    async with openai_client(base_url, scenario) as client:
        created = await client.responses.create(**scenario.request)
        stream = await client.responses.create(**scenario.request, stream=True)
        with pytest.raises(json.JSONDecodeError):
            await drain(stream)
    assert created.output_text == scenario.expect.text


@pytest.mark.parametrize(
    ("name", "error_class"),
    [
        ("openai_chat_error_400", openai.BadRequestError),
        ("openai_chat_error_401", openai.AuthenticationError),
        ("openai_chat_error_429", openai.RateLimitError),
        ("openai_responses_error_400", openai.BadRequestError),
        ("openai_responses_error_401", openai.AuthenticationError),
        ("openai_responses_error_429", openai.RateLimitError),
    ],
)
async def test_openai_sdk_raises_the_error_before_the_stream_both_ways(
    base_url: str, name: str, error_class: type[openai.APIStatusError]
) -> None:
    scenario = SCENARIOS[name]
    assert scenario.request is not None
    assert scenario.expect.error is not None
    raised: list[openai.APIStatusError] = []
    async with openai_client(base_url, scenario) as client:
        create = (
            client.chat.completions.create
            if scenario.api == "openai.chat"
            else client.responses.create
        )
        for stream in (False, True):
            with pytest.raises(error_class) as caught:
                await create(**scenario.request, stream=stream)
            raised.append(caught.value)
    for error in raised:
        assert error.status_code == scenario.expect.error.status
        assert error.type == scenario.expect.error.type
        if error.status_code == 429:
            assert error.response.headers["retry-after"] == "7"


async def test_openai_sdk_raises_the_chat_midstream_error(base_url: str) -> None:
    scenario = SCENARIOS["openai_chat_error_midstream"]
    assert scenario.request is not None
    text = ""
    async with openai_client(base_url, scenario) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(**scenario.request)
        stream = await client.chat.completions.create(
            **scenario.request, stream=True, stream_options={"include_usage": True}
        )

        async def read_text() -> None:
            nonlocal text
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""

        with pytest.raises(openai.APIError, match="The server had an error") as caught:
            await read_text()
    assert not isinstance(caught.value, openai.APIStatusError)
    assert text == scenario.expect.text


@pytest.mark.parametrize(
    ("name", "last_type"),
    [("openai_responses_error_event", "error"), ("openai_responses_failed", "response.failed")],
)
async def test_openai_sdk_sees_the_responses_stream_error(
    base_url: str, name: str, last_type: str
) -> None:
    scenario = SCENARIOS[name]
    assert scenario.request is not None
    async with openai_client(base_url, scenario) as client:
        with pytest.raises(openai.InternalServerError):
            await client.responses.create(**scenario.request)
        stream = await client.responses.create(**scenario.request, stream=True)
        events = [event async for event in stream]
    last = events[-1]
    assert last.type == last_type
    if last.type == "error":
        assert last.code == "server_error"
    elif last.type == "response.failed":
        assert last.response.status == "failed"
        assert last.response.error is not None
        assert last.response.error.code == "server_error"


# -- injected MCP tool scenarios: the follow-up call (one tool result) gets response 1


async def test_sdks_get_the_final_answer_after_the_injected_tool_result(base_url: str) -> None:
    anthropic_scenario = SCENARIOS["anthropic_mcp_add"]
    assert anthropic_scenario.request is not None
    call = anthropic_scenario.upstream.blocking[0].body
    tool_use = call["content"][-1]
    request = copy.deepcopy(anthropic_scenario.request)
    request["messages"] += [
        {"role": "assistant", "content": call["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "5"}],
        },
    ]
    async with sdk_client(base_url, anthropic_scenario) as client:
        created = await client.messages.create(**request)
        async with client.messages.stream(**request) as stream:
            streamed = await stream.get_final_message()
    assert created.to_dict() == anthropic_scenario.upstream.blocking[1].body
    assert streamed.to_dict() == created.to_dict()

    chat = SCENARIOS["openai_chat_mcp_add"]
    assert chat.request is not None
    message = chat.upstream.blocking[0].body["choices"][0]["message"]
    chat_request = copy.deepcopy(chat.request)
    chat_request["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "5"},
    ]
    responses = SCENARIOS["openai_responses_mcp_add"]
    assert responses.request is not None
    item = responses.upstream.blocking[0].body["output"][0]
    responses_request = copy.deepcopy(responses.request)
    responses_request["input"] = [
        {"role": "user", "content": responses.request["input"]},
        item,
        {"type": "function_call_output", "call_id": item["call_id"], "output": "5"},
    ]
    async with openai_client(base_url, chat) as client:
        completion = await client.chat.completions.create(**chat_request)
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                **chat_request, stream=True, stream_options={"include_usage": True}
            )
        ]
    assert completion.to_dict() == chat.upstream.blocking[1].body
    assert accumulate_chat([c.to_json() for c in chunks] + ["[DONE]"]) == completion.to_dict()
    async with openai_client(base_url, responses) as client:
        created_response = await client.responses.create(**responses_request)
        async with client.responses.stream(**responses_request) as helper:
            final = await helper.get_final_response()
    assert created_response.to_dict() == responses.upstream.blocking[1].body
    assert final.id == created_response.id
    assert final.output_text == "2 + 3 = 5."
