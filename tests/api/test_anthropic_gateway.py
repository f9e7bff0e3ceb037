"""Anthropic Messages through the gateway, driven by the official SDK over loopback.

Each scenario fixture is replayed blocking and streaming; the client-visible
result and the rows in SQLite are asserted.
"""

from __future__ import annotations

import json
import socket
import struct
from functools import partial
from typing import Any

import anthropic
import httpx2
import pytest
import trio

from bridge.mock.upstream import FIXTURES_DIR, load_scenarios
from tests.conftest import is_inner_loop

from ..conftest import (
    CENTRAL_KEY,
    OWN_UPSTREAM,
    REFUSED_BEFORE_UPSTREAM,
    UPSTREAM_STACKS,
    Gateway,
    assert_provider_headers_relayed,
)

pytestmark = pytest.mark.upstream_stacks(*UPSTREAM_STACKS)
SCENARIOS = load_scenarios(FIXTURES_DIR)
MESSAGE_SCENARIOS = [
    name
    for name, s in sorted(SCENARIOS.items())
    if s.api == "anthropic.messages"
    and s.request is not None
    and s.expect.error is None
    and not is_inner_loop(name)
]


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


async def call(gateway: Gateway, name: str, *, stream: bool) -> anthropic.types.Message:
    client = gateway.anthropic()
    body = dict(SCENARIOS[name].request or {})
    headers = {"x-mock-scenario": name}
    if stream:
        async with client.messages.stream(**body, extra_headers=headers) as events:
            return await events.get_final_message()
    return await client.messages.create(**body, extra_headers=headers)


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("name", MESSAGE_SCENARIOS)
async def test_scenario_is_relayed_and_recorded_exactly(
    gateway: Gateway, name: str, stream: bool
) -> None:
    scenario = SCENARIOS[name]
    message = await call(gateway, name, stream=stream)
    await gateway.flush()

    interception = only(gateway.store.interceptions())
    assert message.id == interception["id"]
    assert interception["outcome"] == "completed"
    assert interception["model"] == scenario.request["model"]  # type: ignore[index]
    assert interception["streaming"] == int(stream)
    assert interception["provider"] == interception["provider_name"] == "anthropic"

    expect = scenario.expect
    if expect.text is not None:
        text = "".join(b.text for b in message.content if b.type == "text")
        assert text == expect.text
    usage = only(gateway.store.token_usages(interception["id"]))
    assert expect.usage is not None
    for field in (
        "input",
        "output",
        "cache_read",
        "cache_write",
        "cache_write_5m",
        "cache_write_1h",
        "web_search_requests",
    ):
        assert usage[field] == getattr(expect.usage, field), field
    assert usage["provider_response_id"].startswith("msg_")

    tools = gateway.store.tool_usages(interception["id"])
    expected_tools = expect.tool_calls or ()
    assert [(t["tool"], t["tool_call_id"], json.loads(t["input"])) for t in tools] == [
        (c.name, c.id, c.input) for c in expected_tools
    ]
    assert all(t["injected"] == 0 for t in tools)
    thoughts = gateway.store.model_thoughts(interception["id"])
    assert [t["content"] for t in thoughts] == list(expect.thinking or ())
    assert all(t["source"] == "thinking" for t in thoughts)

    prompt = only(gateway.store.prompts(interception["id"]))
    assert prompt["provider_response_id"] == usage["provider_response_id"]


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
async def test_the_sdk_gets_the_providers_headers_and_the_gateways_framing(
    gateway: Gateway, stream: bool
) -> None:
    """Anthropic's captured header set (capitalised framing, rate limits, request-id) reaches
    the SDK once each, without the upstream's Content-Length, which no longer fits: the
    gateway rewrote the message id."""
    name = "anthropic_captured_headers"
    client = gateway.anthropic()
    body = dict(SCENARIOS[name].request or {})
    headers = {"x-mock-scenario": name}
    upstream = SCENARIOS[name].upstream
    sent = (upstream.streaming if stream else upstream.blocking)[0]
    if stream:
        async with client.messages.with_streaming_response.create(
            **body, stream=True, extra_headers=headers
        ) as response:
            content = await response.read()
    else:
        response = await client.messages.with_raw_response.create(**body, extra_headers=headers)
        content = response.http_response.content
        assert (await response.parse()).id != sent.body["id"]  # rewritten, so the length changed
    assert response.status_code == 200
    assert response.headers["request-id"] == dict(sent.headers)["request-id"]
    assert response.headers["anthropic-ratelimit-tokens-remaining"] == "96000"
    assert_provider_headers_relayed(response.headers.raw, sent.headers, body=content, stream=stream)


async def test_request_bytes_headers_and_query_are_forwarded_unchanged(gateway: Gateway) -> None:
    body = (
        b'{ "model" : "claude-sonnet-4-6",  "max_tokens": 5,\n "messages": '
        b'[{"role":"user","content":"hi"}],"zzz_unknown": {"kept": true} }'
    )
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/anthropic/v1/messages?beta=true",
            content=body,
            headers={
                "content-type": "application/json",
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "context-management-2025-06-27",
                "user-agent": "claude-cli/2.0.1 (external, cli)",
                "x-claude-code-session-id": "sess-42",
                "connection": "keep-alive",
            },
        )
    assert response.status_code == 200
    received = gateway.mock.requests[-1]
    assert received.target == "/v1/messages?beta=true"
    assert received.body == body
    assert received.header("anthropic-version") == "2023-06-01"
    assert received.header("anthropic-beta") == "context-management-2025-06-27"
    assert received.header("user-agent") == "claude-cli/2.0.1 (external, cli)"
    # No client key was sent: the centralized key is injected.
    assert received.header("x-api-key") == CENTRAL_KEY
    assert received.header("authorization") is None
    await gateway.flush()
    interception = only(gateway.store.interceptions())
    assert interception["client"] == "Claude Code"
    assert interception["session_id"] == "sess-42"
    assert interception["credential_kind"] == "centralized"
    assert interception["credential_hint"] == "sk-a...6789"


async def test_client_key_is_byok_and_passes_through(gateway: Gateway) -> None:
    await gateway.anthropic(api_key="sk-ant-users-own-key-987654321").messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    received = gateway.mock.requests[-1]
    # SDK versions differ in the header they use for api_key; either way it passes through.
    presented = received.header("x-api-key") or received.header("authorization")
    assert presented in ("sk-ant-users-own-key-987654321", "Bearer sk-ant-users-own-key-987654321")
    await gateway.flush()
    interception = only(gateway.store.interceptions())
    assert interception["credential_kind"] == "byok"
    assert interception["credential_hint"] == "sk-a...4321"
    assert "987654321" not in json.dumps(interception)


async def test_bearer_token_is_byok_without_api_key(gateway: Gateway) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic", auth_token="oauth-token-abcdefghijkl", max_retries=0
    )
    await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    received = gateway.mock.requests[-1]
    assert received.header("authorization") == "Bearer oauth-token-abcdefghijkl"
    assert received.header("x-api-key") is None


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
async def test_upstream_400_is_a_real_http_error_with_its_headers(
    gateway: Gateway, stream: bool
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await call(gateway, "anthropic_error_400", stream=stream)
    error = caught.value
    assert error.status_code == 400
    assert error.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    upstream = SCENARIOS["anthropic_error_400"].upstream
    upstream_headers = (upstream.streaming if stream else upstream.blocking)[0].headers
    assert error.response.headers["request-id"] == dict(upstream_headers)["request-id"]
    await gateway.flush()
    interception = only(gateway.store.interceptions())
    assert interception["outcome"] == "failed"
    assert interception["error"] == "upstream returned HTTP 400"


async def test_overload_mid_stream_becomes_an_error_event_and_fails(gateway: Gateway) -> None:
    client = gateway.anthropic()
    body = dict(SCENARIOS["anthropic_overloaded_midstream"].request or {})
    texts: list[str] = []

    async def consume() -> None:
        async with client.messages.stream(
            **body, extra_headers={"x-mock-scenario": "anthropic_overloaded_midstream"}
        ) as events:
            async for text in events.text_stream:
                texts.append(text)

    with pytest.raises(anthropic.APIStatusError) as caught:
        await consume()
    assert "overloaded" in str(caught.value).lower()
    assert texts  # the text before the error reached the client
    await gateway.flush()
    interception = only(gateway.store.interceptions())
    assert interception["outcome"] == "failed"
    assert "Overloaded" in interception["error"] or "overloaded" in interception["error"]
    # The usage known when the stream broke is recorded.
    usage = only(gateway.store.token_usages(interception["id"]))
    assert usage["input"] > 0


async def test_overload_blocking_keeps_status_and_retry_after(gateway: Gateway) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        await call(gateway, "anthropic_overloaded_midstream", stream=False)
    assert caught.value.status_code == 529
    assert caught.value.response.headers["retry-after"] == "3"


async def test_models_list_and_count_tokens_pass_through(gateway: Gateway) -> None:
    client = gateway.anthropic()
    models = await client.models.list()
    assert [m.id for m in models.data]
    assert gateway.mock.requests[-1].target.startswith("/v1/models")
    count = await client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello there"}]
    )
    assert count.input_tokens > 0
    received = gateway.mock.requests[-1]
    assert received.target == "/v1/messages/count_tokens"
    assert received.header("x-forwarded-proto") == "http"
    assert received.header("x-forwarded-for") == "127.0.0.1"
    await gateway.flush()
    assert gateway.store.interceptions() == []  # a passthrough call is no interception


async def test_passthrough_gives_the_sdk_one_of_each_header_and_no_server(
    gateway: Gateway,
) -> None:
    """A passthrough answer keeps the provider's headers, but the framing, Date and Server
    of whatever HTTP stack the upstream runs are not relayed beside the gateway's."""
    response = await gateway.anthropic().models.with_raw_response.list()
    assert response.status_code == 200
    names = [name.decode("latin-1").lower() for name, _ in response.headers.raw]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    assert "server" not in names
    assert names.count("date") == 1
    assert response.headers["request-id"] == "req_011CTzyF6hJ8kL0zX2cV4bN6"
    assert "trailer" not in names


async def test_passthrough_injects_the_central_key_only_when_the_client_has_none(
    gateway: Gateway,
) -> None:
    async with httpx2.AsyncClient() as client:
        del client.headers["user-agent"]
        response = await client.get(f"{gateway.url}/anthropic/v1/models?limit=2")
    assert response.status_code == 200
    received = gateway.mock.requests[-1]
    assert received.target == "/v1/models?limit=2"
    assert received.header("x-api-key") == CENTRAL_KEY
    assert received.header("user-agent") == "bridge"


@REFUSED_BEFORE_UPSTREAM
@pytest.mark.parametrize(
    "path",
    [
        "/anthropic/v1/models/%2e%2e/%2e%2e/admin",
        "/anthropic/v1/models%2f..%2f..%2fadmin",
        "/anthropic/v1/models/..%2f..%2fadmin",
        "/anthropic/api/event_logging/%2E%2E/%2E%2E/v1/messages",
        "/anthropic/v1/models/%5c..%5cadmin",
        "/anthropic/v1/modelsX",
    ],
)
async def test_passthrough_cannot_escape_its_prefix(gateway: Gateway, path: str) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.get(httpx2.URL(f"{gateway.url}{path}"))
    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert gateway.mock.requests == []


@REFUSED_BEFORE_UPSTREAM
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object, got list"),
        (b'{"messages": []}', "model: a non-empty string is required"),
        (b'{"model": "m"}', "messages: a list of messages is required"),
        (b'{"model": 5, "messages": []}', "model: a non-empty string is required"),
        (b"\xff\xfe", "request body is not valid JSON"),
    ],
)
async def test_bad_bodies_get_400_in_anthropic_shape(
    gateway: Gateway, body: bytes, message: str
) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}/anthropic/v1/messages", content=body)
    assert response.status_code == 400
    document = response.json()
    assert document["type"] == "error"
    assert document["error"]["type"] == "invalid_request_error"
    assert document["error"]["message"].startswith(message)
    assert "Traceback" not in response.text
    assert gateway.mock.requests == []


@REFUSED_BEFORE_UPSTREAM
async def test_unknown_routes_get_404(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        inside = await client.post(f"{gateway.url}/anthropic/v1/complete", content=b"{}")
        outside = await client.get(f"{gateway.url}/nowhere")
    assert inside.status_code == 404
    assert inside.json()["error"]["type"] == "not_found_error"
    assert outside.status_code == 404
    assert outside.json()["error"]["message"] == "route not supported: GET /nowhere"
    assert gateway.mock.requests == []


@REFUSED_BEFORE_UPSTREAM
@pytest.mark.parametrize(
    ("path", "meant", "base"),
    [
        ("/v1/messages", "/anthropic/v1/messages", "/anthropic"),
        ("/v1/chat/completions", "/openai/v1/chat/completions", "/openai/v1"),
        ("/v1/responses", "/openai/v1/responses", "/openai/v1"),
        ("/chat/completions", "/openai/v1/chat/completions", "/openai/v1"),
    ],
)
async def test_a_path_without_the_provider_prefix_says_what_was_meant(
    gateway: Gateway, path: str, meant: str, base: str
) -> None:
    """A client pointed at the gateway's root gets the base URL it should use."""
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}{path}", content=b"{}")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        f"route not supported: POST {path}; did you mean {meant}?"
        f" (the base URL is {gateway.url}{base})"
    )
    assert gateway.mock.requests == []


@REFUSED_BEFORE_UPSTREAM
async def test_oversized_body_gets_413_and_the_connection_closes(start_gateway: Any) -> None:
    gateway: Gateway = await start_gateway(server_changes={"max_body_bytes": 2048})
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}/anthropic/v1/messages", content=b"x" * 4096)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert response.json()["error"]["type"] == "request_too_large"
        # The next request on a fresh connection works.
        ok = await client.get(f"{gateway.url}/healthz")
        assert ok.status_code == 200
    assert gateway.mock.requests == []


@OWN_UPSTREAM
@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
async def test_unreachable_upstream_is_502_in_anthropic_shape(
    start_gateway: Any, stream: bool
) -> None:
    gateway: Gateway = await start_gateway(upstream_url="http://127.0.0.1:1/")
    with pytest.raises(anthropic.APIStatusError) as caught:
        await call(gateway, "anthropic_text", stream=stream)
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "upstream unreachable" in caught.value.body["error"]["message"]  # type: ignore[index]
    await gateway.flush()
    interception = only(gateway.store.interceptions())
    assert interception["outcome"] == "failed"


@REFUSED_BEFORE_UPSTREAM
async def test_health_and_readiness(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        health = await client.get(f"{gateway.url}/healthz")
        ready = await client.get(f"{gateway.url}/readyz")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


async def _resetting_upstream(stream: trio.SocketStream, *, events_before_reset: int = 2) -> None:
    """Answers one streaming request with a few events, then resets the connection."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_reset",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        },
    }
    events = [b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"]
    events += [b'event: ping\ndata: {"type": "ping"}\n\n'] * (events_before_reset - 1)
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    await stream.send_all(head + body)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()  # RST: the upstream dies mid-stream


@OWN_UPSTREAM
async def test_upstream_reset_mid_stream_is_an_error_event_and_fails(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    listeners = await nursery.start(
        partial(trio.serve_tcp, _resetting_upstream, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    gateway: Gateway = await start_gateway(upstream_url=f"http://127.0.0.1:{port}/")
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/anthropic/v1/messages",
            json={
                "model": "m",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert response.status_code == 200  # the stream had started
    frames = [f for f in response.text.split("\n\n") if f]
    assert frames[0].startswith("event: message_start")
    assert frames[-1].startswith("event: error")
    assert json.loads(frames[-1].split("data: ", 1)[1])["error"]["type"] == "api_error"
    await gateway.flush()
    [row] = gateway.store.interceptions()
    assert row["outcome"] == "failed"
    [usage] = gateway.store.token_usages(row["id"])
    assert usage["input"] == 11  # what was known when the upstream died


async def _error_then_silent_upstream(stream: trio.SocketStream) -> None:
    """Streams some text and an ``overloaded_error`` event, then does not end the body
    until the gateway hangs up: the end of an upstream stream may come after a client
    has read its last event and left (an HTTP/1.0 upstream closes a moment later)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    scenario = SCENARIOS["anthropic_overloaded_midstream"].upstream.streaming[0]
    assert scenario.wire_chunks[-1].startswith(b"event: error")
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in scenario.wire_chunks)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await stream.send_all(head + body)
    await _silent_upstream(stream)


@OWN_UPSTREAM
async def test_a_client_that_left_after_the_error_event_got_a_failed_answer(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    """The record says what the client got: the provider's error, not a disconnect."""
    listeners = await nursery.start(
        partial(trio.serve_tcp, _error_then_silent_upstream, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    gateway: Gateway = await start_gateway(upstream_url=f"http://127.0.0.1:{port}/")
    body = {**(SCENARIOS["anthropic_overloaded_midstream"].request or {}), "stream": True}
    received = b""
    with trio.fail_after(10):
        async with (
            httpx2.AsyncClient() as client,
            client.stream("POST", f"{gateway.url}/anthropic/v1/messages", json=body) as response,
        ):
            async for chunk in response.aiter_bytes():
                received += chunk
                if b"event: error" in received and received.endswith(b"\n\n"):
                    break  # the client has the error event and hangs up, as SDKs do
        await gateway.flush()
    [row] = gateway.store.interceptions()
    assert row["outcome"] == "failed", row["error"]
    assert "overloaded" in row["error"].lower()


async def _dated_upstream(stream: trio.SocketStream) -> None:
    """Answers one blocking request the way real providers do: with date and server."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    body = json.dumps(
        {
            "id": "msg_dated",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }
    ).encode()
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"date: Mon, 01 Jan 2024 00:00:00 GMT\r\nserver: cloudflare\r\nrequest-id: req_d\r\n\r\n"
    ) % len(body)
    await stream.send_all(head + body)
    await stream.aclose()


@OWN_UPSTREAM
async def test_the_client_gets_one_date_and_no_server_software(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    listeners = await nursery.start(partial(trio.serve_tcp, _dated_upstream, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    gateway: Gateway = await start_gateway(upstream_url=f"http://127.0.0.1:{port}/")
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/anthropic/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200
    names = [name.lower() for name, _ in response.headers.raw]
    assert names.count(b"date") == 1  # the gateway's own: a response has one Date
    assert response.headers["date"] != "Mon, 01 Jan 2024 00:00:00 GMT"
    assert b"server" not in names
    assert response.headers["request-id"] == "req_d"


async def _silent_upstream(stream: trio.SocketStream) -> None:
    """Reads the request, then never answers (until the gateway hangs up)."""
    while await stream.receive_some(65536):
        pass


@OWN_UPSTREAM
async def test_a_stalled_passthrough_upstream_is_a_504_naming_the_setting(
    start_gateway: Any, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    listeners = await nursery.start(partial(trio.serve_tcp, _silent_upstream, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    gateway: Gateway = await start_gateway(
        upstream_url=f"http://127.0.0.1:{port}/", provider_changes={"response_timeout": 5.0}
    )
    with trio.fail_after(60):  # virtual seconds: without the timeout this would hang
        async with httpx2.AsyncClient(timeout=None) as client:
            response = await client.get(
                f"{gateway.url}/anthropic/v1/models",
                headers={"x-api-key": "sk-ant-client-byok-1"},
            )
    assert response.status_code == 504
    assert "providers.anthropic.response_timeout" in response.json()["error"]["message"]


async def test_an_official_sdk_is_recorded_as_the_client(gateway: Gateway) -> None:
    """The SDKs name themselves in User-Agent (AsyncAnthropic/Python ...): a program using
    one is recorded as anthropic-python, not Unknown."""
    await gateway.anthropic().messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    await gateway.flush()
    assert only(gateway.store.interceptions())["client"] == "anthropic-python"
