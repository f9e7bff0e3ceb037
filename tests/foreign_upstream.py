"""The mock's scenarios served by another HTTP stack: the standard library's ``http.server``.

:class:`~bridge.mock.upstream.MockUpstream` writes HTTP with h11: lower-case header names,
chunked streams, keep-alive. Providers and the proxies in front of them write otherwise:
Go's net/http, nginx and ``http.server`` send ``Content-Length``, ``Date`` and ``Server``
with capitals, an HTTP/1.0 answer ends its body by closing the connection, and an HTTP/1.1
chunked body may end with trailer fields. A gateway tested against the mock alone can break
on each of these (it did: a capitalised upstream ``Content-Length`` was relayed next to the
gateway's own, and every blocking answer became a 500).

:class:`ForeignUpstream` answers through ``http.server.BaseHTTPRequestHandler`` (its request
parser, its status line, its own ``Server`` and ``Date`` headers), in one of :data:`STYLES`:

* ``stdlib-close-delimited``: HTTP/1.0 responses, ``Connection: close`` on each. A blocking
  body has a ``Content-Length``; a stream has none and ends when the connection closes.
* ``chunked-trailers``: HTTP/1.1 keep-alive, every body chunked (a blocking one in two
  chunks), announced by ``Trailer:`` and ended by trailer fields after the last chunk.

Scenario header names are sent canonicalised as Go's net/http writes them
(``request-id`` -> ``Request-Id``); the framing and connection headers of a scenario are
replaced by the style's own.

What to answer is the mock's choice: each request is routed by the same
:meth:`MockUpstream.route` and recorded into the same :class:`MockUpstream` (requests,
completed streams, disconnects, open and busy connections), so a test reads
``mock.requests`` whichever stack served it. Faults (``x-mock-fault``) are the h11 mock's
alone; asked of this server they get a 400 that says so.

Threads: each connection is a trio task running the stdlib handler in a worker thread;
the handler calls back into trio (``trio.from_thread``) to route, record and pace (on
trio's clock, so ``autojump_clock`` works). Cancelling the task shuts the socket down,
which ends the handler's blocking read or write: nothing outlives the nursery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any, Final

import trio

from bridge.mock.upstream import MockUpstream, ReceivedRequest

__all__ = ["CHUNKED_TRAILERS", "CLOSE_DELIMITED", "STYLES", "ForeignUpstream"]

CLOSE_DELIMITED: Final = "stdlib-close-delimited"
CHUNKED_TRAILERS: Final = "chunked-trailers"
STYLES: Final = (CLOSE_DELIMITED, CHUNKED_TRAILERS)
"""The ways :class:`ForeignUpstream` frames its answers (see the module docstring)."""

TRAILER_NAMES: Final = "Server-Timing, X-Body-Sha256"
"""The ``Trailer:`` announcement of the chunked style; both fields follow the last chunk."""

# Scenario headers the style writes itself: framing, connection, and the two that
# http.server's send_response always adds.
_OWN: Final = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "trailer", "date", "server"}
)


def canonical(name: str) -> str:
    """A header name as Go's ``http.CanonicalHeaderKey`` writes it: ``Request-Id``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class ForeignUpstream:
    """Serves ``mock``'s scenarios in ``style`` (one of :data:`STYLES`) and records into it."""

    def __init__(self, mock: MockUpstream, style: str) -> None:
        if style not in STYLES:
            raise ValueError(f"style {style!r} is not one of {STYLES}")
        self.mock = mock
        self.style = style
        # One thread per open connection, however many the gateway's pool opens.
        self._threads = trio.CapacityLimiter(math.inf)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; report the bound port."""
        with trio.socket.socket() as listener:
            await listener.bind((host, port))
            listener.listen()
            task_status.started(listener.getsockname()[1])
            async with trio.open_nursery() as nursery:
                while True:
                    connection, address = await listener.accept()
                    nursery.start_soon(self._serve_connection, connection, address)

    async def _serve_connection(self, connection: trio.socket.SocketType, address: Any) -> None:
        """Hand one connection to the stdlib handler, in a thread, until it ends."""
        sock = socket.socket(fileno=connection.detach())
        sock.setblocking(True)
        self.mock.open_connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_shut_down_when_cancelled, sock)
                await trio.to_thread.run_sync(
                    _Handler,  # type: ignore[arg-type]  # socketserver takes any server object
                    sock,
                    address,
                    self,
                    limiter=self._threads,
                )
                nursery.cancel_scope.cancel()
        finally:
            sock.close()
            self.mock.open_connections -= 1
            self.mock.notify()

    # -- called from handler threads, run on the trio thread

    def _receive(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], tuple[bytes, ...], bool, float]:
        """Record a complete request and choose its answer: status, headers, body parts
        (one per SSE event for a stream), streamed, pace."""
        request = ReceivedRequest(method, target, headers, body, trio.current_time())
        self.mock.record_request(request)
        self.mock.busy_connections += 1
        if request.header("x-mock-fault") is not None:
            message = (
                "x-mock-fault: faults are served by the h11 mock only; mark the test "
                "@pytest.mark.upstream_stacks('h11-mock')"
            )
            error = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": message},
            }
            return (
                400,
                [("content-type", "application/json")],
                (json.dumps(error).encode(),),
                False,
                0,
            )
        response, pace, _ = self.mock.route(request)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.wire_headers]
        return response.status, headers, response.wire_chunks, response.streamed, pace

    def _answered(self, *, streamed: bool, completed: bool) -> None:
        self.mock.busy_connections -= 1
        if streamed:
            self.mock.record_stream_end(completed=completed)
        else:
            self.mock.notify()


async def _shut_down_when_cancelled(sock: socket.socket) -> None:
    """On cancellation (or once the handler is done), end the handler's blocking I/O."""
    try:
        await trio.sleep_forever()
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One connection, answered the way ``http.server`` answers (see :data:`STYLES`)."""

    server: ForeignUpstream  # type: ignore[assignment]  # any object will do for socketserver

    def setup(self) -> None:
        self.protocol_version = "HTTP/1.0" if self.server.style == CLOSE_DELIMITED else "HTTP/1.1"
        super().setup()

    def finish(self) -> None:
        """Then half-close, as ``socketserver`` does when a handler is done with a request:
        this ends a close-delimited body."""
        super().finish()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stdlib would print a line per request to stderr."""

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _answer(self) -> None:
        body = self._read_body()
        headers = [(name.lower(), value) for name, value in self.headers.items()]
        status, response_headers, parts, streamed, pace = trio.from_thread.run_sync(
            self.server._receive, self.command, self.path, headers, body
        )
        completed = False
        try:
            completed = self._send(status, response_headers, parts, streamed=streamed, pace=pace)
        finally:
            if not completed:
                self.close_connection = True
            trio.from_thread.run_sync(
                lambda: self.server._answered(streamed=streamed, completed=completed)
            )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self,
        status: int,
        headers: list[tuple[str, str]],
        parts: tuple[bytes, ...],
        *,
        streamed: bool,
        pace: float,
    ) -> bool:
        """Write the answer; False when the client went away before its end."""
        self.send_response(status)  # the status line, Server and Date
        for name, value in headers:
            if name.lower() not in _OWN:
                self.send_header(canonical(name), value)
        if self.server.style == CLOSE_DELIMITED:
            if not streamed:
                self.send_header("Content-Length", str(sum(len(p) for p in parts)))
            self.send_header("Connection", "close")
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", TRAILER_NAMES)
            if not streamed:  # two chunks, cut anywhere (even inside a UTF-8 character)
                middle = len(parts[0]) // 2
                parts = tuple(p for p in (parts[0][:middle], parts[0][middle:]) if p)
        try:
            self.end_headers()
            digest = hashlib.sha256()
            for i, part in enumerate(parts):
                if i and pace:
                    trio.from_thread.run(trio.sleep, pace)
                digest.update(part)
                if self.server.style == CLOSE_DELIMITED:
                    self.wfile.write(part)
                else:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            if self.server.style == CHUNKED_TRAILERS:
                self.wfile.write(
                    b"0\r\nServer-Timing: total;dur=7\r\nX-Body-Sha256: %b\r\n\r\n"
                    % digest.hexdigest().encode("ascii")
                )
        except OSError:  # BrokenPipeError, ConnectionResetError: the client left
            return False
        return True
