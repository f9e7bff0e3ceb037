"""The foreign upstream writes HTTP the way it claims to, and records into the mock.

Read off a raw socket, so that no client library tidies up what is on the wire.
"""

from __future__ import annotations

import json

import pytest
import trio

from bridge.mock.upstream import FIXTURES_DIR, MockUpstream, load_scenarios

from ..foreign_upstream import CHUNKED_TRAILERS, CLOSE_DELIMITED, ForeignUpstream

SCENARIOS = load_scenarios(FIXTURES_DIR)
NAME = "anthropic_captured_headers"


async def exchange(port: int, *, stream: bool) -> tuple[list[str], bytes]:
    """One request on a new connection; the response head's lines and what followed it,
    read until the connection closes or a chunked body has ended."""
    body = json.dumps({**(SCENARIOS[NAME].request or {}), "stream": stream}).encode()
    connection = await trio.open_tcp_stream("127.0.0.1", port)
    async with connection:
        await connection.send_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: upstream\r\nx-api-key: k\r\n"
            b"x-mock-scenario: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (NAME.encode(), len(body), body)
        )
        data = b""
        with trio.fail_after(10):
            while chunk := await connection.receive_some(65536):
                data += chunk
                if b"\r\n0\r\n" in data and data.endswith(b"\r\n\r\n"):
                    break
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), rest


def dechunk(body: bytes) -> tuple[bytes, list[str]]:
    """The payload of a chunked body and its trailer lines."""
    payload = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            trailers = body.decode("latin-1").split("\r\n")
            return payload, [line for line in trailers if line]
        payload += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("style", [CLOSE_DELIMITED, CHUNKED_TRAILERS])
async def test_answers_are_framed_as_the_style_says(
    nursery: trio.Nursery, style: str, stream: bool
) -> None:
    mock = MockUpstream(SCENARIOS)
    port = await nursery.start(ForeignUpstream(mock, style).serve)
    lines, rest = await exchange(port, stream=stream)
    fixture = (SCENARIOS[NAME].upstream.streaming if stream else SCENARIOS[NAME].upstream.blocking)[
        0
    ]
    expected = b"".join(fixture.wire_chunks)
    names = [line.split(":", 1)[0] for line in lines[1:]]
    assert names[:2] == ["Server", "Date"]  # http.server's own, capitalised
    assert "Request-Id" in names  # canonicalised like Go's net/http
    assert names.count("Date") == 1  # the scenario's Date gave way to the server's
    if style == CLOSE_DELIMITED:
        assert lines[0] == "HTTP/1.0 200 OK"
        assert "Connection: close" in lines
        assert "Transfer-Encoding" not in names
        assert rest == expected  # ended by the close
        length = [line for line in lines if line.startswith("Content-Length: ")]
        assert length == ([] if stream else [f"Content-Length: {len(expected)}"])
    else:
        assert lines[0] == "HTTP/1.1 200 OK"
        assert "Transfer-Encoding: chunked" in lines
        assert "Trailer: Server-Timing, X-Body-Sha256" in lines
        assert "Content-Length" not in names
        payload, trailers = dechunk(rest)
        assert payload == expected
        assert [t.split(":")[0] for t in trailers] == ["Server-Timing", "X-Body-Sha256"]
    [received] = mock.requests
    assert received.target == "/v1/messages"
    assert received.header("x-mock-scenario") == NAME
    if stream:
        await mock.wait_completed_streams(1)
    await mock.wait_quiet()


async def test_faults_are_refused_with_the_reason(nursery: trio.Nursery) -> None:
    mock = MockUpstream(SCENARIOS)
    port = await nursery.start(ForeignUpstream(mock, CLOSE_DELIMITED).serve)
    connection = await trio.open_tcp_stream("127.0.0.1", port)
    async with connection:
        await connection.send_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: u\r\nx-api-key: k\r\n"
            b"x-mock-fault: close-early\r\nContent-Length: 2\r\n\r\n{}"
        )
        data = b""
        with trio.fail_after(10):
            while chunk := await connection.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.0 400 ")
    assert b"faults are served by the h11 mock only" in data
