"""The connection layer against careless and hostile clients (issue 14, server findings).

Real sockets on loopback, HTTP spoken by hand (h11 and h2 as client-side parsers) so that
every byte the gateway sends, and the moment it closes, is visible. The timeouts here are
configured small (a fraction of a second) and waited for on the socket, under a generous
``trio.fail_after``: nothing sleeps for the server.
"""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h11
import pytest
import trio
from hypercorn.protocol.events import Request
from hypercorn.protocol.http_stream import HTTPStream
from hypothesis import given
from hypothesis import strategies as st

from bridge.process.hypercorn_fixes import valid_h2_request

from ..conftest import Gateway
from ..rawhttp import BAD_PATH_HEADERS, h2_frames, h2_request_packet

MESSAGE = json.dumps(
    {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()

ROUTES = {  # Quart's routes, a passthrough and a bridged route: (method, target, body, status)
    "health": ("GET", "/healthz", b"", 200),
    "metrics": ("GET", "/metrics", b"", 200),
    "unknown path": ("GET", "/nowhere", b"", 404),
    "passthrough": ("GET", "/anthropic/v1/models", b"", 200),
    "bridged": ("POST", "/anthropic/v1/messages", MESSAGE, 200),
}


async def connect(gateway: Gateway) -> trio.SocketStream:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def receive(stream: trio.SocketStream) -> bytes:
    """The next bytes from the gateway; ``b""`` once it has closed (FIN or reset)."""
    try:
        return await stream.receive_some()
    except trio.BrokenResourceError:
        return b""


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    data = b""
    with trio.fail_after(10):
        while chunk := await receive(stream):
            data += chunk
    return data


async def exchange(
    stream: trio.SocketStream, method: str, target: str, body: bytes = b"", *, close: bool = False
) -> int:
    """Send one HTTP/1.1 request, read its whole response; its status."""
    client = h11.Connection(h11.CLIENT)
    headers = [("host", "gateway")]
    if close:
        headers.append(("connection", "close"))
    if body:
        headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
    data = client.send(h11.Request(method=method, target=target, headers=headers))
    data += client.send(h11.Data(data=body)) if body else b""
    await stream.send_all(data + client.send(h11.EndOfMessage()))
    status = 0
    with trio.fail_after(10):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await receive(stream))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status


async def assert_closed_by_gateway(stream: trio.SocketStream) -> None:
    """The gateway closes the connection, sending nothing more."""
    assert await read_to_eof(stream) == b""


# --- Finding 1: an HTTP/2 packet with a non-ASCII pseudo-header -----------------------------


async def test_an_http2_preface_gets_505_and_the_gateway_serves_on(gateway: Gateway) -> None:
    """HTTP/2 is off by default: the preface is refused on its connection, nothing else."""
    for _ in range(3):
        stream = await connect(gateway)
        await stream.send_all(h2_request_packet(BAD_PATH_HEADERS))
        reply = await read_to_eof(stream)
        assert reply.startswith(b"HTTP/1.1 505 "), reply[:200]
    assert await exchange(await connect(gateway), "GET", "/healthz") == 200


async def test_with_http2_on_the_same_packet_gets_its_stream_reset(start_gateway: Any) -> None:
    gateway = await start_gateway(server_changes={"http2": True})
    stream = await connect(gateway)
    await stream.send_all(h2_request_packet(BAD_PATH_HEADERS))
    reset = (0x3, 0, 1, h2.errors.ErrorCodes.PROTOCOL_ERROR.to_bytes(4, "big"))  # RST_STREAM
    data = b""
    with trio.fail_after(10):
        while reset not in h2_frames(data):
            chunk = await receive(stream)
            assert chunk, f"the gateway closed the connection after {h2_frames(data)}"
            data += chunk
    assert await exchange(await connect(gateway), "GET", "/healthz") == 200


async def test_with_http2_on_a_non_ascii_path_resets_only_its_stream(start_gateway: Any) -> None:
    gateway = await start_gateway(server_changes={"http2": True})
    stream = await connect(gateway)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    client.initiate_connection()
    client.send_headers(1, BAD_PATH_HEADERS, end_stream=True)
    good = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x")]
    client.send_headers(3, [*good, (b":path", b"/healthz")], end_stream=True)
    await stream.send_all(client.data_to_send())
    resets: dict[int, int] = {}
    statuses: dict[int, bytes] = {}
    ended: set[int] = set()
    with trio.fail_after(10):
        while not (1 in resets and 3 in ended):
            data = await receive(stream)
            assert data, f"the gateway closed the connection; resets {resets}, ended {ended}"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.StreamReset):
                    resets[event.stream_id] = event.error_code
                elif isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            await stream.send_all(client.data_to_send())
    assert resets == {1: h2.errors.ErrorCodes.PROTOCOL_ERROR}
    assert statuses == {3: b"200"}
    assert await exchange(await connect(gateway), "GET", "/healthz") == 200


async def test_an_error_in_one_connection_closes_only_that_connection(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception out of hypercorn's handling of a connection: logged, that one closed."""
    handle = HTTPStream.handle

    async def failing(self: HTTPStream, event: Any) -> None:
        if isinstance(event, Request) and event.raw_path == b"/boom":
            raise RuntimeError("a bug in the HTTP layer")
        await handle(self, event)

    monkeypatch.setattr(HTTPStream, "handle", failing)
    stream = await connect(gateway)
    await stream.send_all(b"GET /boom HTTP/1.1\r\nhost: gateway\r\n\r\n")
    assert await read_to_eof(stream) == b""
    assert await exchange(await connect(gateway), "GET", "/healthz") == 200
    errors = [r for r in caplog.records if r.name == "bridge.server" and r.exc_info]
    assert [str(r.exc_info[1].exceptions[0]) for r in errors if r.exc_info] == [
        "a bug in the HTTP layer"
    ]


ascii_or_not = st.one_of(
    st.binary(max_size=30), st.text(st.characters(max_codepoint=0x7F), max_size=30).map(str.encode)
)


@given(method=ascii_or_not, path=ascii_or_not)
def test_an_accepted_http2_request_is_one_hypercorn_can_decode(method: bytes, path: bytes) -> None:
    """What valid_h2_request lets through, hypercorn's ASCII decoding of it cannot fail on."""
    if valid_h2_request([(b":method", method), (b":path", path), (b":scheme", b"http")]):
        assert method.decode("ascii").isprintable()
        assert path.decode("ascii").isprintable()
        assert b" " not in path


def test_valid_h2_request_examples() -> None:
    assert valid_h2_request([(b":method", b"POST"), (b":path", b"/anthropic/v1/messages?a=1")])
    assert not valid_h2_request(BAD_PATH_HEADERS)
    assert not valid_h2_request([(b":method", b"G\xc3\x89T"), (b":path", b"/")])
    assert not valid_h2_request([(b":method", b"CONNECT")])  # no :path: nothing to serve


# --- Finding 2: connections that are never released ------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    start_gateway: Any, route: str
) -> None:
    gateway = await start_gateway(server_changes={"keep_alive_timeout": 0.2})
    stream = await connect(gateway)
    method, target, body, status = ROUTES[route]
    assert await exchange(stream, method, target, body) == status
    await assert_closed_by_gateway(stream)


@pytest.mark.parametrize("route", ROUTES)
async def test_connection_close_from_the_client_is_honoured(start_gateway: Any, route: str) -> None:
    gateway = await start_gateway(server_changes={"keep_alive_timeout": 60})
    stream = await connect(gateway)
    method, target, body, status = ROUTES[route]
    assert await exchange(stream, method, target, body, close=True) == status
    await assert_closed_by_gateway(stream)


@pytest.mark.parametrize("after_a_request", [False, True])
async def test_a_trickled_request_head_is_cut_at_the_header_timeout(
    start_gateway: Any, after_a_request: bool
) -> None:
    """One byte every 20 ms would take about 5 s; the head must be whole within 0.3 s."""
    gateway = await start_gateway(server_changes={"header_timeout": 0.3, "keep_alive_timeout": 60})
    stream = await connect(gateway)
    if after_a_request:
        assert await exchange(stream, "GET", "/healthz") == 200
    head = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-pad: " + b"a" * 200 + b"\r\n\r\n"
    sent = 0
    reply = None
    with trio.fail_after(20):
        while reply is None and sent < len(head):
            try:
                await stream.send_all(head[sent : sent + 1])
            except trio.BrokenResourceError:
                break
            sent += 1
            with trio.move_on_after(0.02):
                reply = await receive(stream)
        if reply is None:
            reply = await receive(stream)
    assert reply == b"", f"the gateway answered a head trickled over {sent} bytes: {reply[:80]!r}"
    assert sent < len(head)


async def test_a_new_connection_sending_nothing_is_closed_after_the_header_timeout(
    start_gateway: Any,
) -> None:
    gateway = await start_gateway(server_changes={"header_timeout": 0.2, "keep_alive_timeout": 60})
    await assert_closed_by_gateway(await connect(gateway))


# --- Finding 3: Content-Length together with Transfer-Encoding --------------------------------


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [("POST", "/anthropic/v1/messages", MESSAGE), ("GET", "/healthz", b"{}")],
)
async def test_content_length_with_transfer_encoding_gets_400_and_close(
    gateway: Gateway, method: str, target: str, body: bytes
) -> None:
    """RFC 9112 6.3: the framing is ambiguous (a smuggling vector behind a proxy)."""
    stream = await connect(gateway)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    await stream.send_all(
        f"{method} {target} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"content-length: {len(chunked)}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        + chunked
    )
    reply = await read_to_eof(stream)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"\r\nconnection: close\r\n" in reply.lower()
