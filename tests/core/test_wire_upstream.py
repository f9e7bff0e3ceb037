"""The gateway against upstream bytes it did not write: hand-made HTTP/1.1 answers.

The mock upstream is h11, written in this repository: it agrees with our habits. The
answers here are written byte by byte the way other servers write them (Go's net/http,
nginx, Python's ``http.server``: capitalised header names, ``Connection`` tokens, bodies
cut short), to catch what only a stranger's server shows. Each test names the defect of
issue 13 it keeps fixed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
import trio

from bridge.config import AuthConfig
from bridge.core.exchange import Request
from bridge.errors import UpstreamUnavailable
from bridge.recording.records import Outcome

from ..conftest import CENTRAL_KEY, Gateway
from ..wire import WireServer, serve


def go_style(
    status: str, body: bytes, *extra: str, content_type: str = "application/json"
) -> bytes:
    """An answer the way Go's net/http writes it: capitalised names, a Date and a length."""
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        "Date: Tue, 08 Dec 2026 00:00:00 GMT",
        "Server: upstream/1.0",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


ANTHROPIC_BODY = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "Paris."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 14, "output_tokens": 3},
}

CHAT_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-5",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi.", "refusal": None},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


async def wire_gateway(start_gateway: Any, nursery: trio.Nursery, upstream: WireServer) -> Gateway:
    port = await serve(nursery, upstream)
    gateway: Gateway = await start_gateway(upstream_url=f"http://127.0.0.1:{port}/")
    return gateway


def names(headers: httpx2.Headers) -> list[str]:
    return [name.lower() for name, _ in headers.multi_items()]


# -- Defect 1: header names compared case-sensitively ------------------------------------


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
async def test_capitalised_upstream_headers_on_a_blocking_anthropic_answer(
    start_gateway: Any, nursery: trio.Nursery, close: bool
) -> None:
    connection = "Connection: close, X-Hop" if close else "Connection: keep-alive, X-Hop"
    answer = go_style(
        "200 OK",
        json.dumps(ANTHROPIC_BODY).encode(),
        connection,
        "X-Hop: only for this hop",
        "Keep-Alive: timeout=5",
        "Request-Id: req_011CTzqNHs5XqjP4bjPTiQHa",
        "Anthropic-Ratelimit-Requests-Remaining: 49",
        "Strict-Transport-Security: max-age=31536000; includeSubDomains; preload",
        'Alt-Svc: h3=":443"; ma=86400',
        "Set-Cookie: __cf_bm=abc; path=/; domain=.api.anthropic.com; HttpOnly; Secure",
        'Report-To: {"endpoints":[{"url":"https://a.nel.cloudflare.com/report/v4"}]}',
        'NEL: {"success_fraction":0,"report_to":"cf-nel","max_age":604800}',
        "CF-Ray: 8f0a2b3c4d5e6f70-AMS",
    )
    gateway = await wire_gateway(
        start_gateway, nursery, WireServer(answer, close_after_answer=close)
    )
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/anthropic/v1/messages",
            json={"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []},
        )
    assert response.status_code == 200, response.text
    seen = names(response.headers)
    assert len(seen) == len(set(seen)), f"a header appears twice: {seen}"
    assert response.headers["request-id"] == "req_011CTzqNHs5XqjP4bjPTiQHa"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert not {"server", "x-hop", "keep-alive"} & set(seen)
    # The provider origin's policies are not the gateway's to hand out.
    assert not {"strict-transport-security", "alt-svc", "set-cookie", "report-to", "nel"} & set(
        seen
    )
    assert response.headers["cf-ray"] == "8f0a2b3c4d5e6f70-AMS"  # informational: kept
    assert int(response.headers["content-length"]) == len(response.content)
    # The gateway rewrites the id, so the upstream's length would have been wrong.
    assert response.json()["content"][0]["text"] == "Paris."
    # And the official SDK parses it.
    sdk = gateway.anthropic()
    message = await sdk.messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"


async def test_capitalised_upstream_headers_on_a_blocking_chat_answer(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    answer = go_style(
        "200 OK",
        json.dumps(CHAT_BODY).encode(),
        "X-Request-Id: req_abc",
        "Openai-Processing-Ms: 321",
        "Cache-Control: no-store",
    )
    gateway = await wire_gateway(start_gateway, nursery, WireServer(answer))
    completion = await gateway.openai().chat.completions.with_raw_response.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.http_response.status_code == 200
    seen = names(completion.http_response.headers)
    assert len(seen) == len(set(seen)), f"a header appears twice: {seen}"
    assert completion.headers["x-request-id"] == "req_abc"
    assert completion.parse().choices[0].message.content == "Hi."


async def test_capitalised_upstream_headers_on_a_stream(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    events = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-5",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi."},'
        b'"finish_reason":null}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-5",'
        b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Date: Tue, 08 Dec 2026 00:00:00 GMT\r\nServer: nginx\r\nConnection: close\r\n"
        b"X-Request-Id: req_stream\r\n\r\n" + events
    )
    gateway = await wire_gateway(
        start_gateway, nursery, WireServer(answer, close_after_answer=True)
    )
    async with (
        httpx2.AsyncClient() as client,
        client.stream(
            "POST",
            f"{gateway.url}/openai/v1/chat/completions",
            json={"model": "gpt-5", "stream": True, "messages": []},
        ) as response,
    ):
        body = await response.aread()
    assert response.status_code == 200
    seen = names(response.headers)
    assert len(seen) == len(set(seen)), f"a header appears twice: {seen}"
    assert not {"server", "connection"} & set(seen)
    assert response.headers["x-request-id"] == "req_stream"
    assert b"[DONE]" in body


# -- Defect 4: passthrough hangs when the upstream dies mid-body -------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_passthrough_upstream_dying_mid_body_cuts_the_client_at_once(
    start_gateway: Any, nursery: trio.Nursery, reset: bool
) -> None:
    promised = b'{"data": [' + b'{"id": "m"},' * 50
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    upstream = WireServer(cut + promised, close_after_answer=True)
    gateway = await wire_gateway(start_gateway, nursery, upstream)
    if reset:
        original = upstream.handle

        async def handle_with_reset(stream: trio.SocketStream) -> None:
            import socket
            import struct

            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await original(stream)

        upstream.handle = handle_with_reset  # type: ignore[method-assign]
    started = trio.current_time()
    with trio.fail_after(10):  # a hang detector; the delay itself is measured below
        async with httpx2.AsyncClient() as client:
            with pytest.raises(httpx2.RemoteProtocolError):
                await client.get(f"{gateway.url}/anthropic/v1/models")
        await gateway.bridge.wait_idle()
    assert trio.current_time() - started < 10
    assert gateway.bridge.inflight == 0
    # Embedded, a cut body raises rather than passing for a whole one.
    with trio.fail_after(10), pytest.raises(UpstreamUnavailable, match="cut short"):
        await gateway.bridge.handle(Request("GET", "/anthropic/v1/models"))


# -- Defect 6: a malformed Responses body is relayed as received ---------------------------


async def test_malformed_blocking_responses_body_is_relayed_unchanged(
    start_gateway: Any, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    raw = b"<html>upstream proxy hiccup</html>"
    answer = go_style("200 OK", raw, "X-Request-Id: req_html", content_type="text/html")
    gateway = await wire_gateway(start_gateway, nursery, WireServer(answer))
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/openai/v1/responses", json={"model": "gpt-5", "input": "hi"}
        )
    assert response.status_code == 200
    assert response.content == raw
    assert response.headers["content-type"] == "text/html"
    assert response.headers["x-request-id"] == "req_html"
    await gateway.flush()
    (row,) = gateway.store.interceptions()
    assert row["outcome"] == Outcome.FAILED.value
    assert "not JSON" in (row["error"] or "")
    (ended,) = [r for r in caplog.records if r.getMessage() == "interception ended"]
    assert "not JSON" in ended.error  # type: ignore[attr-defined]


# -- Defect 3: one 401 must not take a one-key provider down --------------------------------


async def test_a_401_with_one_key_leaves_the_next_request_forwarded(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    refused = go_style(
        "401 Unauthorized",
        b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}',
    )
    ok = go_style("200 OK", json.dumps(ANTHROPIC_BODY).encode())
    upstream = WireServer(refused, ok)
    port = await serve(nursery, upstream)
    gateway: Gateway = await start_gateway(
        upstream_url=f"http://127.0.0.1:{port}/", auth=AuthConfig(mode="header")
    )
    async with httpx2.AsyncClient() as client:
        url = f"{gateway.url}/anthropic/v1/messages"
        body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}
        first = await client.post(url, json=body, headers={"x-bridge-user": "mallory"})
        assert first.status_code == 401
        assert first.json()["error"]["message"] == "invalid x-api-key"  # the upstream's own
        second = await client.post(url, json=body, headers={"x-bridge-user": "alice"})
        assert second.status_code == 200, second.text
        assert len(upstream.requests) == 2
        assert b"x-api-key: " + CENTRAL_KEY.encode() in upstream.requests[1]
        # Loud, counted and visible: the operator learns which key was refused.
        ready = (await client.get(f"{gateway.url}/readyz")).json()
        keys = ready["checks"]["keys"]["providers"]["anthropic"]
        assert keys["rejected_401"] == 1
        assert keys["keys"][0]["state"] == "ok"  # the upstream took it again
        metrics = (await client.get(f"{gateway.url}/metrics")).text
    assert 'provider_key_refusals_total{provider="anthropic",status="401"} 1.0' in metrics


# -- Defect 2: the record says what the client got -----------------------------------------


async def test_blocking_answer_that_cannot_be_delivered_is_recorded_failed(
    start_gateway: Any, nursery: trio.Nursery, mock: Any
) -> None:
    gateway: Gateway = await start_gateway()

    class BrokenSink:
        """A client connection whose response cannot be written (as h11 refusing it)."""

        async def start(self, status: int, headers: Any) -> None:
            raise RuntimeError("the connection refused the response head")

        async def send(self, data: bytes) -> None:
            raise AssertionError("nothing is sent after a failed start")

        async def end(self, last: bytes = b"") -> None:
            raise AssertionError("nothing is sent after a failed start")

        async def wait_disconnected(self) -> None:
            await trio.sleep_forever()

    body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}
    request = Request(
        "POST",
        "/anthropic/v1/messages",
        headers=[("X-Mock-Scenario", "anthropic_text"), ("Content-Type", "application/json")],
        body=json.dumps(body).encode(),
    )
    await gateway.bridge._engine.handle(request, BrokenSink())
    await gateway.flush()
    (row,) = gateway.store.interceptions()
    assert row["outcome"] == Outcome.FAILED.value
    assert "deliver" in (row["error"] or "")
