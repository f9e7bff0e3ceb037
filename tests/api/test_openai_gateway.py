"""OpenAI Chat Completions, Responses and Copilot through the gateway.

Driven by the official ``openai`` SDK over loopback against the mock upstream's
fixtures; the client-visible result and the recorded rows are asserted.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest

from bridge.mock.upstream import FIXTURES_DIR, load_scenarios
from tests.conftest import is_inner_loop

from ..conftest import (
    OPENAI_KEY,
    OWN_UPSTREAM,
    REFUSED_BEFORE_UPSTREAM,
    UPSTREAM_STACKS,
    Gateway,
    assert_provider_headers_relayed,
)

pytestmark = pytest.mark.upstream_stacks(*UPSTREAM_STACKS)

SCENARIOS = load_scenarios(FIXTURES_DIR)


def named(api: str, *, errors: bool = False) -> list[str]:
    return [
        name
        for name, s in sorted(SCENARIOS.items())
        if s.api == api
        and s.request is not None
        and (s.expect.error is not None) == errors
        and not is_inner_loop(name)
    ]


CHAT = named("openai.chat")
RESPONSES = named("openai.responses")
USAGE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


def request_of(name: str) -> dict[str, Any]:
    body = dict(SCENARIOS[name].request or {})
    body.pop("stream", None)
    return body


async def assert_recorded(gateway: Gateway, name: str, *, streaming: bool) -> dict[str, Any]:
    await gateway.flush()
    expect = SCENARIOS[name].expect
    interception = only(gateway.store.interceptions())
    assert interception["outcome"] == "completed", interception["error"]
    assert interception["streaming"] == int(streaming)
    assert expect.usage is not None
    usage = only(gateway.store.token_usages(interception["id"]))
    for field in USAGE_FIELDS:
        assert usage[field] == getattr(expect.usage, field), field
    tools = gateway.store.tool_usages(interception["id"])
    assert [(t["tool"], t["tool_call_id"], json.loads(t["input"])) for t in tools] == [
        (c.name, c.id, c.input) for c in expect.tool_calls or ()
    ]
    thoughts = gateway.store.model_thoughts(interception["id"])
    assert [(t["source"], t["content"]) for t in thoughts] == [
        (t.source, t.content) for t in expect.thoughts or ()
    ]
    return interception


@pytest.mark.parametrize("name", CHAT)
async def test_chat_blocking(gateway: Gateway, name: str) -> None:
    completion = await gateway.openai().chat.completions.create(
        **request_of(name), extra_headers={"x-mock-scenario": name}
    )
    interception = await assert_recorded(gateway, name, streaming=False)
    assert completion.id == interception["id"]
    expect = SCENARIOS[name].expect
    if expect.text is not None:
        assert completion.choices[0].message.content == expect.text
    sent = gateway.mock.requests[-1].json()
    assert "stream_options" not in sent or not sent.get("stream")


@pytest.mark.parametrize("name", CHAT)
async def test_chat_streaming(gateway: Gateway, name: str) -> None:
    stream = await gateway.openai().chat.completions.create(
        **request_of(name), stream=True, extra_headers={"x-mock-scenario": name}
    )
    chunks = [chunk async for chunk in stream]
    interception = await assert_recorded(gateway, name, streaming=True)
    assert {c.id for c in chunks} == {interception["id"]}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expect = SCENARIOS[name].expect
    if expect.text is not None:
        assert text == expect.text
    assert chunks[-1].usage is not None  # include_usage was forced upstream
    assert gateway.mock.requests[-1].json()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
async def test_the_sdk_gets_the_providers_headers_and_the_gateways_framing(
    gateway: Gateway, stream: bool
) -> None:
    """OpenAI's captured header set (x-request-id, rate limits, Cloudflare's cookie and
    framing) reaches the SDK once each, without the upstream's Content-Length, which no
    longer fits: the gateway rewrote the completion id."""
    name = "openai_chat_captured_headers"
    completions = gateway.openai().chat.completions
    headers = {"x-mock-scenario": name}
    upstream = SCENARIOS[name].upstream
    sent = (upstream.streaming if stream else upstream.blocking)[0]
    if stream:
        async with completions.with_streaming_response.create(
            **request_of(name), stream=True, extra_headers=headers
        ) as response:
            content = await response.read()
    else:
        response = await completions.with_raw_response.create(
            **request_of(name), extra_headers=headers
        )
        content = response.http_response.content
        assert response.parse().id != sent.body["id"]  # rewritten, so the length changed
    assert response.status_code == 200
    assert response.headers["x-request-id"] == dict(sent.headers)["x-request-id"]
    assert response.headers["x-ratelimit-remaining-tokens"] == "3999068"
    assert_provider_headers_relayed(response.headers.raw, sent.headers, body=content, stream=stream)


async def test_chat_stream_ends_with_one_done_of_the_gateway(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/chat/completions",
            json={**request_of("openai_chat_text"), "stream": True},
            headers={"x-mock-scenario": "openai_chat_text"},
        )
    assert response.text.endswith("data: [DONE]\n\n")
    assert response.text.count("[DONE]") == 1


async def test_chat_request_edit_is_deterministic(gateway: Gateway) -> None:
    body = {**request_of("openai_chat_text"), "stream": True, "zz": [1, {"b": 2, "a": 1}]}
    async with httpx2.AsyncClient() as client:
        for _ in range(10):
            await client.post(f"{gateway.url}/openai/v1/chat/completions", json=body)
    assert len({r.body for r in gateway.mock.requests}) == 1
    assert list(gateway.mock.requests[0].json()) == [*body, "stream_options"]


async def test_chat_error_mid_stream_is_an_error_chunk_then_done(gateway: Gateway) -> None:
    name = "openai_chat_error_midstream"
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/chat/completions",
            json={**request_of(name), "stream": True},
            headers={"x-mock-scenario": name},
        )
    frames = [f for f in response.text.split("\n\n") if f]
    assert json.loads(frames[-2].removeprefix("data: "))["error"]["message"]
    assert frames[-1] == "data: [DONE]"
    await gateway.flush()
    assert only(gateway.store.interceptions())["outcome"] == "failed"


@pytest.mark.parametrize(
    "name", named("openai.chat", errors=True) + named("openai.responses", errors=True)
)
async def test_errors_before_the_stream_keep_status_headers_and_body(
    gateway: Gateway, name: str
) -> None:
    scenario = SCENARIOS[name]
    route = "chat/completions" if scenario.api == "openai.chat" else "responses"
    upstream = scenario.upstream.streaming[0]
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/{route}",
            json={**request_of(name), "stream": True},
            headers={"x-mock-scenario": name},
        )
    if upstream.status < 400:  # an error inside a 200 stream
        assert response.status_code == 200
    else:
        assert response.status_code == upstream.status
        assert response.json() == upstream.body
        for key, value in upstream.headers:
            if key != "content-type":
                assert response.headers[key] == value
    await gateway.flush()
    assert only(gateway.store.interceptions())["outcome"] == "failed"


@pytest.mark.parametrize("name", RESPONSES)
async def test_responses_blocking(gateway: Gateway, name: str) -> None:
    response = await gateway.openai().responses.create(
        **request_of(name), extra_headers={"x-mock-scenario": name}
    )
    await assert_recorded(gateway, name, streaming=False)
    assert response.id == SCENARIOS[name].upstream.blocking[0].body["id"]  # not rewritten
    if SCENARIOS[name].expect.text is not None:
        # output_text joins every message, commentary included; the answer comes last.
        assert response.output_text.endswith(SCENARIOS[name].expect.text)


@pytest.mark.parametrize("name", RESPONSES)
async def test_responses_streaming_is_relayed_byte_for_byte(gateway: Gateway, name: str) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/responses",
            json={**request_of(name), "stream": True},
            headers={"x-mock-scenario": name, "authorization": "Bearer sk-user-key-1234567890"},
        )
    assert response.status_code == 200
    assert response.content == b"".join(SCENARIOS[name].upstream.streaming[0].wire_chunks)
    await assert_recorded(gateway, name, streaming=True)


async def test_responses_stream_through_the_sdk(gateway: Gateway) -> None:
    name = "openai_responses_reasoning"
    stream = await gateway.openai().responses.create(
        **request_of(name), stream=True, extra_headers={"x-mock-scenario": name}
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    await assert_recorded(gateway, name, streaming=True)


@pytest.mark.parametrize("name", ["openai_responses_failed", "openai_responses_error_event"])
async def test_responses_in_stream_failures_are_relayed_and_fail(
    gateway: Gateway, name: str
) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/responses",
            json={**request_of(name), "stream": True},
            headers={"x-mock-scenario": name},
        )
    assert response.content == b"".join(SCENARIOS[name].upstream.streaming[0].wire_chunks)
    await gateway.flush()
    assert only(gateway.store.interceptions())["outcome"] == "failed"


@REFUSED_BEFORE_UPSTREAM
async def test_responses_background_is_501_without_calling_upstream(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.openai().responses.create(model="gpt-5", input="hi", background=True)
    assert caught.value.status_code == 501
    assert gateway.mock.requests == []


@REFUSED_BEFORE_UPSTREAM
async def test_responses_websocket_upgrade_gets_426(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.get(
            f"{gateway.url}/openai/v1/responses",
            headers={
                "connection": "Upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
    assert response.status_code == 426
    assert gateway.mock.requests == []


async def test_openai_key_policy_byok_and_centralized(gateway: Gateway) -> None:
    await gateway.openai(api_key="sk-users-own-openai-key-55555").chat.completions.create(
        **request_of("openai_chat_text")
    )
    assert (
        gateway.mock.requests[-1].header("authorization") == "Bearer sk-users-own-openai-key-55555"
    )
    async with httpx2.AsyncClient() as client:
        await client.post(
            f"{gateway.url}/openai/v1/chat/completions",
            json=request_of("openai_chat_text"),
            headers={"x-api-key": "must-not-leak-0000000"},
        )
    received = gateway.mock.requests[-1]
    assert received.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert received.header("x-api-key") is None
    await gateway.flush()
    kinds = [r["credential_kind"] for r in gateway.store.interceptions()]
    assert sorted(kinds) == ["byok", "centralized"]


async def test_copilot_needs_the_users_token_and_forwards_editor_headers(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        refused = await client.post(
            f"{gateway.url}/copilot/chat/completions", json=request_of("openai_chat_text")
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert gateway.mock.requests == []
    client = gateway.openai(provider="copilot", api_key="ghu_copilot_user_token_42")
    await client.chat.completions.create(
        **request_of("openai_chat_text"),
        extra_headers={"Editor-Version": "vscode/1.99.0", "Copilot-Integration-Id": "vscode-chat"},
    )
    await client.responses.create(**request_of("openai_responses_text"))
    chat, responses = gateway.mock.requests
    assert chat.target == "/chat/completions"
    assert responses.target == "/responses"
    assert chat.header("authorization") == "Bearer ghu_copilot_user_token_42"
    assert chat.header("editor-version") == "vscode/1.99.0"
    assert chat.header("copilot-integration-id") == "vscode-chat"
    await gateway.flush()
    assert {r["provider"] for r in gateway.store.interceptions()} == {"copilot"}


async def test_openai_passthrough_injects_the_key_and_keeps_the_path(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        models = await client.get(f"{gateway.url}/openai/v1/models")
        stored = await client.get(f"{gateway.url}/openai/v1/responses/resp_123/input_items?limit=5")
    assert models.status_code == 200
    first, second = gateway.mock.requests
    assert first.target == "/v1/models"
    assert first.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert second.target == "/v1/responses/resp_123/input_items?limit=5"
    assert stored.status_code == 404  # the mock has no stored responses; relayed as is


@OWN_UPSTREAM
@pytest.mark.parametrize("route", ["chat/completions", "responses"])
async def test_unreachable_upstream_is_502_in_openai_shape(start_gateway: Any, route: str) -> None:
    gateway: Gateway = await start_gateway(upstream_url="http://127.0.0.1:1/")
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/{route}",
            json={"model": "gpt-5", "input": "hi", "messages": [], "stream": True},
        )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert error["message"].startswith("upstream unreachable")
