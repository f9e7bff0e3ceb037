"""A minimal HTTP/1.1 load client on trio sockets and h11, and the request bodies it sends.

Why not httpx2: the load generator shares a core with the mock upstream, and every
microsecond it spends is a microsecond the measurement cannot see past. A keep-alive h11
connection costs a fraction of a full client. The same client talks to the gateway and to the
mock, so both sides of a comparison pay the same client cost.

Rules: one :class:`Connection` per concurrent request stream (no sharing across tasks);
:meth:`Connection.stream` timestamps every ``data:`` line as it arrives with
``time.perf_counter``, so gaps and time to first event are measured at the client.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Final

import h11
import trio

__all__ = [
    "Connection",
    "StreamTrace",
    "anthropic_body",
    "blocking_body",
    "stream_body",
]

DIRECT_AUTH: Final = (
    (b"x-api-key", b"sk-ant-bench-key-000000000000"),
    (b"authorization", b"Bearer sk-bench-key-000000000000"),
)
"""The mock refuses keyless requests; the gateway adds its own key, the direct client these."""

_DELTA = re.compile(rb'"text":" ?(\d+)"')


def blocking_body(api: str, size: int) -> bytes:
    """A non-streaming request of ``api`` padded to about ``size`` bytes."""
    pad = "x" * max(size - 200, 1)
    if api == "anthropic":
        document: dict[str, object] = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": pad}],
        }
    elif api == "chat":
        document = {"model": "gpt-5", "messages": [{"role": "user", "content": pad}]}
    elif api == "responses":
        document = {"model": "gpt-5", "input": pad}
    else:
        raise ValueError(f"api {api!r} is not one of 'anthropic', 'chat', 'responses'")
    return json.dumps(document).encode()


def anthropic_body(size: int) -> bytes:
    """A blocking Anthropic request of about ``size`` bytes."""
    return blocking_body("anthropic", size)


def stream_body() -> bytes:
    """A small streaming Anthropic request."""
    return json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 4096,
            "stream": True,
            "messages": [{"role": "user", "content": "count"}],
        }
    ).encode()


@dataclass(slots=True)
class StreamTrace:
    """What one client saw of one SSE stream (mutable: filled while it arrives)."""

    started: float
    arrivals: list[float] = field(default_factory=list)
    """``perf_counter`` of each ``data:`` line."""
    deltas: list[int] = field(default_factory=list)
    """The numbers of the ``"text":"<n>"`` deltas, in arrival order."""
    complete: bool = False


async def _connect(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return stream


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:``port``.

    A server may end keep-alive after a complete answer (``connection: close``; hypercorn
    does after 1,000 requests on one connection): :meth:`post` then connects again before the
    next request, so a long latency series is not cut short by the server's own limit.
    """

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self._stream = stream
        self._port = port
        self._conn = h11.Connection(h11.CLIENT)
        self._closing = False

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(await _connect(port), port)

    async def _reconnect(self) -> None:
        await self._stream.aclose()
        self._stream = await _connect(self._port)
        self._conn = h11.Connection(h11.CLIENT)
        self._closing = False

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _send(self, path: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        request = h11.Request(
            method="POST",
            target=path,
            headers=[
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        )
        conn = self._conn
        await self._stream.send_all(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )

    async def _next(self) -> object:
        conn = self._conn
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self._stream.receive_some(65536))
                continue
            return event

    async def post(
        self, path: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> int:
        """Send one request, read the whole answer; return its status."""
        if self._closing:
            await self._reconnect()
        await self._send(path, body, headers)
        status = 0
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise RuntimeError(f"POST {path}: the server closed the connection mid-answer")
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        elif self._conn.their_state is h11.MUST_CLOSE:
            self._closing = True  # a complete answer, then the server ends keep-alive
        else:
            raise RuntimeError(f"POST {path}: the connection cannot be reused (status {status})")
        return status

    async def stream(
        self,
        path: str,
        body: bytes,
        headers: tuple[tuple[bytes, bytes], ...],
        *,
        stop_after: int | None = None,
    ) -> StreamTrace:
        """Send a streaming request and record each event's arrival.

        With ``stop_after``, return as soon as that many events arrived (the connection is
        then unusable: close it); else read to the end of the stream.
        """
        trace = StreamTrace(started=time.perf_counter())
        await self._send(path, body, headers)
        pending = b""
        while True:
            event = await self._next()
            if isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"POST {path}: status {event.status_code}, expected 200")
            if isinstance(event, h11.Data):
                now = time.perf_counter()
                pending += event.data
                *frames, pending = pending.split(b"\n\n")
                for frame in frames:
                    if b"data:" not in frame:
                        continue  # a comment or keep-alive ping line
                    trace.arrivals.append(now)
                    if frame.count(b"data:") != 1:
                        trace.arrivals.append(now)  # two events in one frame: merged
                        trace.deltas.append(-1)
                    match = _DELTA.search(frame)
                    if match:
                        trace.deltas.append(int(match.group(1)))
                if stop_after is not None and len(trace.arrivals) >= stop_after:
                    return trace
            elif isinstance(event, h11.EndOfMessage):
                trace.complete = True
                self._conn.start_next_cycle()
                return trace
            elif isinstance(event, h11.ConnectionClosed):
                return trace
