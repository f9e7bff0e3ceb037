"""The mock upstream over real loopback sockets, driven by httpx2, raw h11 and the SDK.

Rules: port 0 on 127.0.0.1 only; no real sleeping (paced streams run under
``autojump_clock``, and clients there get no timeouts, because the clock jumps whenever every
task waits, including on socket reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import h11
import httpx2
import openai
import pytest
import trio

from bridge.mock.upstream import (
    FIXTURES_DIR,
    FixtureError,
    MockUpstream,
    load_scenarios,
)

SCENARIOS = load_scenarios(FIXTURES_DIR)
KEY = {"x-api-key": "sk-ant-test"}


async def start(nursery: trio.Nursery, upstream: MockUpstream) -> str:
    port = await nursery.start(upstream.serve)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> tuple[MockUpstream, str]:
    mock = MockUpstream(SCENARIOS)
    return mock, await start(nursery, mock)


def body_for(name: str, **extra: Any) -> dict[str, Any]:
    request = SCENARIOS[name].request
    assert request is not None
    return {**request, **extra}


def parse_sse(data: bytes) -> list[tuple[str, Any]]:
    events = []
    for block in data.decode("utf-8").split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_blocking_answer_is_the_fixture_body_with_its_headers(
    upstream: tuple[MockUpstream, str],
) -> None:
    mock, url = upstream
    fixture = SCENARIOS["anthropic_tool_call"].upstream.blocking[0]
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/messages?beta=true",
            json=body_for("anthropic_tool_call"),
            headers={**KEY, "x-mock-scenario": "anthropic_tool_call"},
        )
    assert response.status_code == 200
    assert response.json() == fixture.body
    assert response.headers["request-id"] == dict(fixture.headers)["request-id"]
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    [received] = mock.requests
    assert received.method == "POST"
    assert received.target == "/v1/messages?beta=true"
    assert received.header("X-Mock-Scenario") == "anthropic_tool_call"
    assert received.json() == body_for("anthropic_tool_call")


async def test_stream_sends_each_fixture_event_chunked(upstream: tuple[MockUpstream, str]) -> None:
    mock, url = upstream
    fixture = SCENARIOS["anthropic_thinking"].upstream.streaming[0]
    assert fixture.events is not None
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/messages",
            json=body_for("anthropic_thinking", stream=True),
            headers={**KEY, "x-mock-scenario": "anthropic_thinking"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert parse_sse(response.content) == [(e.event, e.data) for e in fixture.events]
    await mock.wait_completed_streams(1)
    assert mock.disconnects == []


async def test_sdk_reads_blocking_and_streaming_answers(upstream: tuple[MockUpstream, str]) -> None:
    _, url = upstream
    async with anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=url) as client:
        message = await client.messages.create(**body_for("anthropic_text"))
        async with client.messages.stream(**body_for("anthropic_text")) as stream:
            text = "".join([chunk async for chunk in stream.text_stream])
    assert message.content[0].type == "text"
    assert message.content[0].text == SCENARIOS["anthropic_text"].expect.text
    assert text == SCENARIOS["anthropic_text"].expect.text


async def test_models_list_comes_from_the_models_fixture(
    upstream: tuple[MockUpstream, str],
) -> None:
    _, url = upstream
    body = SCENARIOS["anthropic_models"].upstream.get
    assert body is not None
    async with anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=url) as client:
        page = await client.models.list(limit=20)
    assert [model.id for model in page.data] == [model["id"] for model in body.body["data"]]


async def test_count_tokens_counts_a_quarter_of_the_body_bytes(
    upstream: tuple[MockUpstream, str],
) -> None:
    _, url = upstream
    payload = b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hi there"}]}'
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/messages/count_tokens", content=payload, headers=KEY)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": len(payload) // 4}


@pytest.mark.parametrize(
    ("headers", "model", "expected"),
    [
        ({"x-mock-scenario": "anthropic_haiku"}, "anthropic_cache", "anthropic_haiku"),
        ({}, "anthropic_cache", "anthropic_cache"),
        ({}, "claude-sonnet-4-6", "anthropic_thinking"),
    ],
)
async def test_scenario_is_chosen_by_header_then_model_then_default(
    nursery: trio.Nursery, headers: dict[str, str], model: str, expected: str
) -> None:
    url = await start(nursery, MockUpstream(SCENARIOS, default_scenario="anthropic_thinking"))
    request = body_for("anthropic_text", model=model)
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/messages", json=request, headers={**KEY, **headers})
    assert response.json() == SCENARIOS[expected].upstream.blocking[0].body


async def test_unknown_scenario_header_gets_a_400_naming_it(
    upstream: tuple[MockUpstream, str],
) -> None:
    _, url = upstream
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/messages",
            json=body_for("anthropic_text"),
            headers={**KEY, "x-mock-scenario": "no_such_scenario"},
        )
    assert response.status_code == 400
    assert "'no_such_scenario'" in response.json()["error"]["message"]


def write_fixture(directory: Path, stem: str, fields: dict[str, Any]) -> None:
    document: dict[str, Any] = {
        "name": stem,
        "api": "anthropic.messages",
        "request": None,
        "expect": {},
    }
    document.update(fields)
    (directory / f"{stem}.json").write_text(json.dumps(document))


def tool_result_turn(tool_use_id: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": "18C"}],
    }


async def test_response_index_is_the_number_of_tool_result_turns(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    answers = [{"status": 200, "body": {"call": i}} for i in range(2)]
    write_fixture(tmp_path, "loop", {"upstream": {"blocking": answers}})
    url = await start(nursery, MockUpstream(load_scenarios(tmp_path), default_scenario="loop"))
    first = {"role": "user", "content": "weather?"}
    conversations = [
        [first],
        [first, tool_result_turn("toolu_01"), {"role": "user", "content": "thanks"}],
        [first, tool_result_turn("toolu_01"), tool_result_turn("toolu_02")],
    ]
    calls = []
    async with httpx2.AsyncClient(base_url=url, headers=KEY) as client:
        for messages in conversations:
            response = await client.post("/v1/messages", json={"messages": messages})
            calls.append(response.json()["call"])
    assert calls == [0, 1, 1]


async def test_keep_alive_connection_serves_a_stream_then_a_blocking_answer(
    upstream: tuple[MockUpstream, str],
) -> None:
    mock, url = upstream
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    statuses: list[int] = []
    bodies: list[bytes] = []
    async with stream:
        for streaming in (True, False):
            payload = json.dumps(body_for("anthropic_haiku", stream=streaming)).encode()
            headers = [
                ("host", "127.0.0.1"),
                ("x-api-key", "k"),
                ("x-mock-scenario", "anthropic_haiku"),
                ("content-length", str(len(payload))),
            ]
            request = h11.Request(method="POST", target="/v1/messages", headers=headers)
            await stream.send_all(
                conn.send(request)
                + conn.send(h11.Data(data=payload))
                + conn.send(h11.EndOfMessage())
            )
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    statuses.append(event.status_code)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            bodies.append(body)
            conn.start_next_cycle()
    assert statuses == [200, 200]
    assert json.loads(bodies[1]) == SCENARIOS["anthropic_haiku"].upstream.blocking[0].body
    assert bodies[0].startswith(b"event: message_start\n")
    assert len(mock.requests) == 2


async def test_request_without_any_key_gets_401(upstream: tuple[MockUpstream, str]) -> None:
    mock, url = upstream
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/messages", json=body_for("anthropic_text"))
        with_bearer = await client.post(
            "/v1/messages",
            json=body_for("anthropic_text"),
            headers={"authorization": "Bearer sk-ant-oat-test"},
        )
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert with_bearer.status_code == 200
    assert len(mock.requests) == 2


async def test_unknown_path_gets_404_in_anthropic_shape(
    upstream: tuple[MockUpstream, str],
) -> None:
    _, url = upstream
    async with httpx2.AsyncClient(base_url=url, headers=KEY) as client:
        response = await client.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert "/v1/nope" in response.json()["error"]["message"]


async def test_client_closing_mid_stream_is_recorded_as_a_disconnect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pace = 1.0
    mock = MockUpstream(SCENARIOS, pace=pace)
    url = await start(nursery, mock)
    async with httpx2.AsyncClient(base_url=url, headers=KEY, timeout=None) as client:
        request = body_for("anthropic_slow_stream", stream=True)
        headers = {"x-mock-scenario": "anthropic_slow_stream"}
        async with client.stream("POST", "/v1/messages", json=request, headers=headers) as response:
            received = b""
            async for chunk in response.aiter_raw():
                received += chunk
                if received.count(b"\n\n") >= 10:
                    break
        closed_at = trio.current_time()
    disconnected_at = await mock.wait_disconnect()
    assert mock.completed_streams == 0
    assert mock.disconnects == [disconnected_at]
    # Seen while the mock waited between events, not at its next write: the watcher works.
    assert closed_at <= disconnected_at < closed_at + pace


async def test_pace_header_slows_the_stream_in_virtual_time(
    upstream: tuple[MockUpstream, str], autojump_clock: trio.testing.MockClock
) -> None:
    mock, url = upstream
    events = SCENARIOS["anthropic_text"].upstream.streaming[0].events or ()
    started = trio.current_time()
    async with httpx2.AsyncClient(base_url=url, headers=KEY, timeout=None) as client:
        response = await client.post(
            "/v1/messages",
            json=body_for("anthropic_text", stream=True),
            headers={"x-mock-pace-ms": "250"},
        )
    assert response.status_code == 200
    assert trio.current_time() - started == pytest.approx((len(events) - 1) * 0.25, abs=0.01)
    await mock.wait_completed_streams(1)


async def test_bad_pace_header_gets_a_400_naming_it(upstream: tuple[MockUpstream, str]) -> None:
    _, url = upstream
    async with httpx2.AsyncClient(base_url=url, headers=KEY) as client:
        response = await client.post(
            "/v1/messages", json=body_for("anthropic_text"), headers={"x-mock-pace-ms": "soon"}
        )
    assert response.status_code == 400
    assert "x-mock-pace-ms" in response.json()["error"]["message"]


async def test_midstream_error_event_ends_the_stream(upstream: tuple[MockUpstream, str]) -> None:
    mock, url = upstream
    async with httpx2.AsyncClient(base_url=url, headers=KEY) as client:
        response = await client.post(
            "/v1/messages",
            json=body_for("anthropic_overloaded_midstream", stream=True),
            headers={"x-mock-scenario": "anthropic_overloaded_midstream"},
        )
    events = parse_sse(response.content)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": SCENARIOS["anthropic_overloaded_midstream"].upstream.blocking[0].body["error"],
        },
    )
    await mock.wait_completed_streams(1)


async def test_raw_stream_bytes_are_sent_verbatim(nursery: trio.Nursery, tmp_path: Path) -> None:
    raw = ["event: message_start\ndata: {not json", "\n\nevent: ping\r\n"]
    write_fixture(tmp_path, "broken", {"upstream": {"streaming": [{"status": 200, "raw": raw}]}})
    url = await start(nursery, MockUpstream(load_scenarios(tmp_path), default_scenario="broken"))
    async with httpx2.AsyncClient(base_url=url, headers=KEY) as client:
        response = await client.post("/v1/messages", json={"stream": True})
    assert response.content == "".join(raw).encode()
    assert response.headers["content-type"] == "text/event-stream"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "other"}, r"field name: 'other' must equal the file stem 'bad'"),
        ({"api": "gemini"}, r"field api: 'gemini' is not one of"),
        ({"upstream": {"blocking": []}}, r"field upstream\.blocking: must be a non-empty list"),
        (
            {"upstream": {"blocking": [{"status": 200, "events": [{"data": {}}]}]}},
            r"field upstream\.blocking\[0\]\.events: only streaming responses have events",
        ),
        (
            {
                "upstream": {
                    "streaming": [
                        {"status": 200, "events": [{"event": "error", "data": {}}, {"data": {}}]}
                    ]
                }
            },
            r"field upstream\.streaming\[0\]\.events\[0\]: an error event ends the stream",
        ),
        ({"expect": {"usage": {"inputs": 1}}}, r"field expect\.usage: must be an object"),
        (
            {
                "upstream": {
                    "blocking": [{"status": 200, "headers": {"Content-Length": "3"}, "body": {}}]
                }
            },
            r"field upstream\.blocking\[0\]\.headers: Content-Length: '3' is not the body's length",
        ),
        (
            {
                "upstream": {
                    "blocking": [
                        {"status": 200, "headers": {"Transfer-Encoding": "chunked"}, "body": {}}
                    ]
                }
            },
            r"field upstream\.blocking\[0\]\.headers: Transfer-Encoding: only a stream may say",
        ),
        (
            {
                "upstream": {
                    "streaming": [
                        {"status": 200, "headers": {"content-length": "9"}, "events": [{"data": 1}]}
                    ]
                }
            },
            r"field upstream\.streaming\[0\]\.headers: content-length: a stream is sent chunked",
        ),
    ],
)
def test_loader_names_the_file_and_the_field(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    defaults: dict[str, Any] = {"upstream": {"blocking": [{"status": 200, "body": {}}]}}
    write_fixture(tmp_path, "bad", {**defaults, **fields})
    with pytest.raises(FixtureError, match=r"bad\.json: " + message):
        load_scenarios(tmp_path)


async def test_captured_header_names_are_sent_as_spelled(
    upstream: tuple[MockUpstream, str],
) -> None:
    """A captured set keeps its capitals on the wire, and its framing headers are the
    mock's own (one Content-Length, one Cache-Control), so the gateway sees them as sent.
    (h11 moves a stream's Transfer-Encoding to the end.)"""
    _, url = upstream
    name = "anthropic_captured_headers"
    upstream_answers = SCENARIOS[name].upstream
    async with httpx2.AsyncClient(base_url=url, headers=KEY) as client:
        for stream in (False, True):
            response = await client.post(
                "/v1/messages",
                json=body_for(name, stream=stream),
                headers={"x-mock-scenario": name},
            )
            assert response.status_code == 200
            fixture = (upstream_answers.streaming if stream else upstream_answers.blocking)[0]
            sent = [(k.decode(), v.decode()) for k, v in response.headers.raw]
            chunked = [v for k, v in sent if k.lower() == "transfer-encoding"]
            assert chunked == (["chunked"] if stream else [])
            assert [h for h in sent if h[0].lower() != "transfer-encoding"] == [
                h for h in fixture.headers if h[0].lower() != "transfer-encoding"
            ]


def test_unknown_default_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match=r"default_scenario 'nope' is not among"):
        MockUpstream(SCENARIOS, default_scenario="nope")


# --------------------------------------------------------------------------- OpenAI routes

BEARER = {"authorization": "Bearer sk-test"}


def write_openai_fixture(directory: Path, stem: str, api: str, answers: int) -> None:
    blocking = [{"status": 200, "body": {"call": i}} for i in range(answers)]
    write_fixture(directory, stem, {"api": api, "upstream": {"blocking": blocking}})


@pytest.mark.parametrize("prefix", ["/v1", ""])
@pytest.mark.parametrize(
    ("route", "name"),
    [("/chat/completions", "openai_chat_tool_call"), ("/responses", "openai_responses_reasoning")],
)
async def test_openai_routes_answer_with_and_without_the_v1_prefix(
    upstream: tuple[MockUpstream, str], prefix: str, route: str, name: str
) -> None:
    mock, url = upstream
    fixture = SCENARIOS[name].upstream.blocking[0]
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post(
            f"{prefix}{route}?api-version=1", json=body_for(name), headers={"x-mock-scenario": name}
        )
    assert response.status_code == 200
    assert response.json() == fixture.body
    assert response.headers["x-request-id"] == dict(fixture.headers)["x-request-id"]
    assert mock.requests[0].target == f"{prefix}{route}?api-version=1"


async def test_chat_stream_is_data_lines_ending_with_done(
    upstream: tuple[MockUpstream, str],
) -> None:
    mock, url = upstream
    fixture = SCENARIOS["openai_chat_text"].upstream.streaming[0]
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post(
            "/chat/completions", json=body_for("openai_chat_text", stream=True)
        )
    assert response.headers["content-type"] == "text/event-stream"
    blocks = response.content.decode().split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks[:-1])
    assert [json.loads(block[6:]) for block in blocks[:-2]] == [
        event.data for event in (fixture.events or ())[:-1]
    ]
    await mock.wait_completed_streams(1)


async def test_responses_stream_has_event_lines(upstream: tuple[MockUpstream, str]) -> None:
    _, url = upstream
    fixture = SCENARIOS["openai_responses_tool_call"].upstream.streaming[0]
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post(
            "/v1/responses",
            json=body_for("openai_responses_tool_call", stream=True),
            headers={"x-mock-scenario": "openai_responses_tool_call"},
        )
    assert parse_sse(response.content) == [(e.event, e.data) for e in fixture.events or ()]


async def test_raw_keepalive_stream_is_sent_verbatim(upstream: tuple[MockUpstream, str]) -> None:
    _, url = upstream
    name = "openai_chat_keepalive_comments"
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=body_for(name, stream=True),
            headers={"x-mock-scenario": name},
        )
    assert response.content == "".join(SCENARIOS[name].upstream.streaming[0].raw or ()).encode()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/chat/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/responses"),
        ("GET", "/models"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "sk-test"}, {"authorization": "Basic abc"}, {"authorization": "Bearer"}],
)
async def test_openai_routes_need_a_bearer_key(
    upstream: tuple[MockUpstream, str], method: str, path: str, headers: dict[str, str]
) -> None:
    _, url = upstream
    async with httpx2.AsyncClient(base_url=url) as client:
        response = await client.request(method, path, json={"model": "gpt-4.1"}, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Bearer" in error["message"]


async def test_openai_sdk_reaches_the_copilot_paths_and_the_model_list(
    upstream: tuple[MockUpstream, str],
) -> None:
    mock, url = upstream
    models = SCENARIOS["openai_models"].upstream.get
    assert models is not None
    async with openai.AsyncOpenAI(api_key="k", base_url=url, max_retries=0) as client:
        completion = await client.chat.completions.create(**body_for("openai_chat_text"))
        response = await client.responses.create(**body_for("openai_responses_text"))
        page = await client.models.list()
    assert completion.choices[0].message.content == SCENARIOS["openai_chat_text"].expect.text
    assert response.output_text == SCENARIOS["openai_responses_text"].expect.text
    assert [model.id for model in page.data] == [model["id"] for model in models.body["data"]]
    assert [r.target.partition("?")[0] for r in mock.requests] == [
        "/chat/completions",
        "/responses",
        "/models",
    ]


@pytest.mark.parametrize(
    ("path", "headers", "model", "expected"),
    [
        (
            "/v1/chat/completions",
            {"x-mock-scenario": "openai_chat_cached"},
            "o4-mini",
            "openai_chat_cached",
        ),
        ("/v1/chat/completions", {}, "openai_chat_reasoning", "openai_chat_reasoning"),
        ("/v1/chat/completions", {}, "gpt-4.1", "openai_chat_text"),
        ("/v1/chat/completions", {}, "openai_responses_text", "openai_chat_text"),
        ("/v1/responses", {}, "openai_responses_cached", "openai_responses_cached"),
        ("/v1/responses", {}, "gpt-4.1", "openai_responses_text"),
    ],
)
async def test_openai_scenario_is_chosen_by_header_then_model_then_the_api_default(
    upstream: tuple[MockUpstream, str],
    path: str,
    headers: dict[str, str],
    model: str,
    expected: str,
) -> None:
    _, url = upstream
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post(path, json={"model": model}, headers=headers)
    assert response.json() == SCENARIOS[expected].upstream.blocking[0].body


async def test_scenario_of_another_api_is_refused_in_the_routes_error_shape(
    upstream: tuple[MockUpstream, str],
) -> None:
    _, url = upstream
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        on_chat = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4.1"},
            headers={"x-mock-scenario": "anthropic_text"},
        )
        on_messages = await client.post(
            "/v1/messages",
            json={"model": "claude-sonnet-4-6"},
            headers={"x-mock-scenario": "openai_chat_text"},
        )
    assert on_chat.status_code == on_messages.status_code == 400
    assert (
        "'anthropic_text' is an anthropic.messages scenario" in on_chat.json()["error"]["message"]
    )
    assert on_chat.json()["error"]["type"] == "invalid_request_error"
    assert on_messages.json()["type"] == "error"
    assert "pick an anthropic.messages scenario" in on_messages.json()["error"]["message"]


async def test_chat_response_index_is_the_number_of_tool_messages(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    write_openai_fixture(tmp_path, "chat_loop", "openai.chat", answers=2)
    mock = MockUpstream(load_scenarios(tmp_path), default_scenario="chat_loop")
    url = await start(nursery, mock)
    first = {"role": "user", "content": "weather?"}
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]}
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    conversations = [[first], [first, call, tool], [first, call, tool, call, tool]]
    calls = []
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        for messages in conversations:
            response = await client.post(
                "/v1/chat/completions",
                json={"messages": messages},
                headers={"x-mock-scenario": "chat_loop"},
            )
            calls.append(response.json()["call"])
    assert calls == [0, 1, 1]


async def test_responses_index_is_the_number_of_tool_output_items(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    write_openai_fixture(tmp_path, "openai_responses_text", "openai.responses", answers=3)
    write_fixture(
        tmp_path, "anthropic_text", {"upstream": {"blocking": [{"status": 200, "body": {}}]}}
    )
    url = await start(nursery, MockUpstream(load_scenarios(tmp_path)))
    output = {"type": "function_call_output", "call_id": "call_1", "output": "18C"}
    custom = {"type": "custom_tool_call_output", "call_id": "call_2", "output": "5050"}
    inputs: list[Any] = ["weather?", [output], [output, {"role": "user", "content": "hi"}, custom]]
    calls = []
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        for value in inputs:
            response = await client.post("/responses", json={"input": value})
            calls.append(response.json()["call"])
    assert calls == [0, 1, 2]


async def test_previous_response_id_follow_up_gets_the_only_response(
    upstream: tuple[MockUpstream, str],
) -> None:
    _, url = upstream
    name = "openai_responses_previous_response_id"
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post(
            "/v1/responses", json=body_for(name), headers={"x-mock-scenario": name}
        )
    assert response.json() == SCENARIOS[name].upstream.blocking[0].body


async def test_missing_openai_default_gets_a_400_naming_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    write_fixture(tmp_path, "only", {"upstream": {"blocking": [{"status": 200, "body": {}}]}})
    url = await start(nursery, MockUpstream(load_scenarios(tmp_path), default_scenario="only"))
    async with httpx2.AsyncClient(base_url=url, headers=BEARER) as client:
        response = await client.post("/v1/chat/completions", json={"model": "gpt-4.1"})
        models = await client.get("/models")
    assert response.status_code == 400
    assert "'openai_chat_text' names no loaded scenario" in response.json()["error"]["message"]
    assert models.status_code == 400
    assert "'openai_models'" in models.json()["error"]["message"]


@pytest.mark.parametrize("argument", ["default_chat_scenario", "default_responses_scenario"])
def test_unknown_explicit_openai_default_is_refused(argument: str) -> None:
    arguments: dict[str, Any] = {argument: "nope"}
    with pytest.raises(ValueError, match=rf"{argument} 'nope' is not among"):
        MockUpstream(SCENARIOS, **arguments)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        (
            {"thoughts": [{"source": "dream", "content": "x"}]},
            r"field expect\.thoughts\[0\]: must be \{source: one of",
        ),
        ({"usage": {"reasoning": -1}}, r"field expect\.usage\.reasoning: -1 must be"),
        (
            {"tool_calls": [{"name": "t", "id": "c", "input": 3}]},
            r"field expect\.tool_calls\[0\]: must be \{name, id, input: object or string\}",
        ),
    ],
)
def test_loader_checks_the_openai_expect_fields(
    tmp_path: Path, expect: dict[str, Any], message: str
) -> None:
    write_fixture(
        tmp_path, "bad", {"upstream": {"blocking": [{"status": 200, "body": {}}]}, "expect": expect}
    )
    with pytest.raises(FixtureError, match=r"bad\.json: " + message):
        load_scenarios(tmp_path)


def test_loader_reads_thoughts_reasoning_and_string_tool_inputs() -> None:
    reasoning = SCENARIOS["openai_responses_reasoning"].expect
    assert reasoning.thoughts is not None
    assert [t.source for t in reasoning.thoughts] == [
        "reasoning_summary",
        "reasoning_summary",
        "commentary",
    ]
    assert reasoning.usage is not None
    assert reasoning.usage.reasoning == 448
    [call] = SCENARIOS["openai_responses_custom_tool"].expect.tool_calls or ()
    assert call.input == "print(sum(range(1, 101)))"


async def test_a_long_running_mock_keeps_only_its_latest_requests(nursery: trio.Nursery) -> None:
    mock = MockUpstream(SCENARIOS, history=3)
    url = await start(nursery, mock)
    async with httpx2.AsyncClient(base_url=url) as client:
        for n in range(10):
            body = body_for("anthropic_text", max_tokens=n + 1)
            response = await client.post("/v1/messages", json=body, headers=KEY)
            assert response.status_code == 200
            assert mock.requests[-1].json()["max_tokens"] == n + 1
            assert len(mock.requests) <= 2 * 3
    assert [r.json()["max_tokens"] for r in mock.requests][-3:] == [8, 9, 10]
    with pytest.raises(ValueError, match="history"):
        MockUpstream(SCENARIOS, history=-1)
