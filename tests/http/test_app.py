"""The ASGI entry (bridge/http/app.py) called directly, with hand-made scopes.

No server: ``receive`` and ``send`` are recorded in one log, so a test can say in
which order the app read the request and answered it. The upstream is dead (nothing
listens on port 9): every test here is answered by the gateway itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from bridge import AuthConfig, Config, MemoryStore, ProviderConfig, ServerConfig, open_bridge
from bridge.http.app import ASGIApp

DEAD = "http://127.0.0.1:9/"  # nothing listens there
LIMIT = 1024  # server.max_body_bytes: its least


def _config(**server: Any) -> Config:
    return Config(
        server=ServerConfig(**server),
        auth=AuthConfig(mode="none"),
        providers=(
            ProviderConfig(name="anthropic", type="anthropic", base_url=DEAD, key="k"),
            ProviderConfig(name="openai", type="openai", base_url=DEAD + "v1/", key="k"),
        ),
    )


@pytest.fixture
async def app() -> AsyncIterator[ASGIApp]:
    async with open_bridge(_config(max_body_bytes=LIMIT), store=MemoryStore()) as bridge:
        yield bridge.asgi_app


@dataclass
class Exchange:
    """One ASGI exchange: what the client will send, and a log of both directions."""

    incoming: list[dict[str, Any]]
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](len(self.incoming))
        for message in self.incoming:
            self._send.send_nowait(message)

    async def receive(self) -> dict[str, Any]:
        message = await self._receive.receive()  # blocks once the client said everything
        self.log.append(("receive", message))
        return message

    async def send(self, message: dict[str, Any]) -> None:
        self.log.append(("send", dict(message)))
        await trio.lowlevel.checkpoint()

    def sent(self) -> list[dict[str, Any]]:
        return [message for way, message in self.log if way == "send"]

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the one response sent."""
        start, *body = self.sent()
        assert start["type"].endswith("response.start"), start
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, b"".join(m.get("body", b"") for m in body)


def _http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test"), *headers],
        "client": ("192.0.2.1", 50000),
        "server": ("gateway.test", 80),
        "extensions": {},
    }


async def _run(app: ASGIApp, scope: dict[str, Any], exchange: Exchange) -> None:
    with trio.fail_after(10):  # a hang fails the test rather than the suite
        await app(scope, exchange.receive, exchange.send)


async def test_a_missing_key_is_answered_before_the_body_is_read() -> None:
    config = Config(
        auth=AuthConfig(mode="keys", failure_rate=0.0),
        providers=(ProviderConfig(name="anthropic", type="anthropic", base_url=DEAD, key="k"),),
    )
    async with open_bridge(config, store=MemoryStore()) as bridge:
        body = b'{"model": "m"}'
        exchange = Exchange([{"type": "http.request", "body": body, "more_body": False}])
        scope = _http_scope("POST", "/anthropic/v1/messages", [(b"content-length", b"14")])
        await _run(bridge.asgi_app, scope, exchange)
    way, first = exchange.log[0]
    assert (way, first["type"], first["status"]) == ("send", "http.response.start", 401)
    # The body is never read for the request: at most drained, once answered, while
    # waiting for the client to go (bridge/http/app.py, _plain_error).
    answered = next(
        n
        for n, (way, m) in enumerate(exchange.log)
        if way == "send" and not m.get("more_body") and m["type"] == "http.response.body"
    )
    assert all(way == "send" for way, _ in exchange.log[: answered + 1])
    _, headers, answer = exchange.response()
    assert headers["connection"] == "close"  # so the connection cannot be reused
    assert json.loads(answer)["type"] == "error"  # Anthropic's error shape


async def test_a_declared_body_over_max_body_bytes_is_413_and_closes(app: ASGIApp) -> None:
    exchange = Exchange([{"type": "http.request", "body": b"x" * 2000, "more_body": False}])
    scope = _http_scope("POST", "/anthropic/v1/messages", [(b"content-length", b"2000")])
    await _run(app, scope, exchange)
    assert exchange.log[0][0] == "send"  # refused on the declared length, nothing read
    status, headers, body = exchange.response()
    assert (status, headers["connection"]) == (413, "close")
    assert "1024 byte limit" in json.loads(body)["error"]["message"]
    assert headers["content-length"] == str(len(body))


async def test_a_chunked_body_growing_over_max_body_bytes_is_413(app: ASGIApp) -> None:
    exchange = Exchange(
        [
            {"type": "http.request", "body": b"x" * 600, "more_body": True},
            {"type": "http.request", "body": b"x" * 600, "more_body": True},
            {"type": "http.request", "body": b"x" * 600, "more_body": False},
        ]
    )
    scope = _http_scope("POST", "/anthropic/v1/messages", [(b"transfer-encoding", b"chunked")])
    await _run(app, scope, exchange)
    status, headers, _ = exchange.response()
    assert (status, headers["connection"]) == (413, "close")
    first_send = next(n for n, (way, _) in enumerate(exchange.log) if way == "send")
    assert first_send == 2  # refused at the chunk that crossed the limit, not after all


async def test_a_client_leaving_while_sending_the_body_gets_no_response(app: ASGIApp) -> None:
    exchange = Exchange(
        [
            {"type": "http.request", "body": b"{", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    scope = _http_scope("POST", "/anthropic/v1/messages", [(b"content-length", b"8")])
    await _run(app, scope, exchange)
    assert [m["type"] for way, m in exchange.log] == ["http.request", "http.disconnect"]
    assert exchange.sent() == []


def _websocket_scope(path: str, extensions: dict[str, Any]) -> dict[str, Any]:
    scope = _http_scope("GET", path, [(b"upgrade", b"websocket")])
    scope.update(type="websocket", scheme="ws", subprotocols=[], extensions=extensions)
    del scope["method"]
    return scope


async def test_a_websocket_on_a_provider_route_gets_426(app: ASGIApp) -> None:
    exchange = Exchange([{"type": "websocket.connect"}])
    scope = _websocket_scope("/openai/v1/responses", {"websocket.http.response": {}})
    await _run(app, scope, exchange)
    assert [m["type"] for m in exchange.sent()] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    status, headers, body = exchange.response()
    assert status == 426
    assert headers["content-length"] == str(len(body))
    assert "use HTTP (SSE) streaming" in json.loads(body)["error"]["message"]  # OpenAI shape


async def test_a_websocket_without_the_response_extension_is_closed(app: ASGIApp) -> None:
    exchange = Exchange([{"type": "websocket.connect"}])
    await _run(app, _websocket_scope("/openai/v1/responses", {}), exchange)
    assert exchange.sent() == [{"type": "websocket.close", "code": 1003}]


async def _control(app: ASGIApp, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    exchange = Exchange([{"type": "http.request", "body": b"", "more_body": False}])
    await _run(app, _http_scope(method, path, []), exchange)
    status, headers, body = exchange.response()
    return status, headers, json.loads(body)


async def test_healthz_and_readyz_are_served_by_the_control_app(app: ASGIApp) -> None:
    status, headers, body = await _control(app, "GET", "/healthz")
    assert (status, headers["content-type"], body) == (200, "application/json", {"status": "ok"})
    status, _, body = await _control(app, "GET", "/readyz")
    assert status in (200, 503)
    assert body["ready"] is (status == 200)
    assert set(body) == {"ready", "status", "checks"}  # metrics_auth is off: checks shown


async def test_an_unknown_path_is_404_saying_what_was_meant(app: ASGIApp) -> None:
    status, _, body = await _control(app, "POST", "/v1/messages")
    assert status == 404
    assert body["error"]["message"] == (
        "route not supported: POST /v1/messages; did you mean /anthropic/v1/messages?"
        " (the base URL is http://gateway.test/anthropic)"
    )
    status, _, body = await _control(app, "GET", "/nothing/here")
    assert status == 404
    assert body["error"]["message"] == "route not supported: GET /nothing/here"


async def test_an_unknown_provider_path_is_404_from_the_engine(app: ASGIApp) -> None:
    """A path under a provider's prefix that it does not serve is the engine's, not
    Quart's: the provider's error shape."""
    exchange = Exchange([{"type": "http.request", "body": b"", "more_body": False}])
    await _run(app, _http_scope("GET", "/anthropic/v1/nothing", []), exchange)
    status, _, body = exchange.response()
    assert status == 404
    assert json.loads(body)["type"] == "error"
