"""The client side of one interception: lazy start, one write per frame, pings.

The response starts lazily. Until the first frame, the interception can still
answer with a real HTTP error status; after it, errors must travel in-stream. The
relay tracks which of the two worlds it is in (:attr:`Relay.started`).

Writes are serialised by a lock because two tasks write: the loop (frames) and the
keep-alive task (pings after ``ping_interval`` of silence). Each frame is one
``send`` call, so a ping can only ever fall between two frames.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import trio

from bridge.core.exchange import ResponseSink

__all__ = ["SSE_HEADERS", "Relay"]

SSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)
"""Headers of every streamed response: no caching, no proxy buffering."""


class Relay:
    """Writes one response to a :class:`ResponseSink`."""

    def __init__(self, sink: ResponseSink, *, write_timeout: float = math.inf) -> None:
        self._sink = sink
        self._write_timeout = write_timeout
        self.on_stall: Callable[[], None] | None = None
        """Called when a write to the client has not finished within ``write_timeout``:
        the client stopped reading. The interception treats it as the client leaving."""
        self.stalled = False
        self._lock = trio.Lock()
        self._stream_headers: list[tuple[str, str]] = list(SSE_HEADERS)
        self._last_write = trio.current_time()
        self.started = False
        """Whether the status line has been sent (errors must now go in-stream)."""
        self.complete = False
        """Whether the whole body has been sent; only the end of the body may follow."""
        self.ended = False
        self.status: int | None = None
        """The status sent to the client, once started."""
        self._pending: tuple[int, list[tuple[str, str]], bytes] | None = None
        self._sending = False  # a frame is being handed to the sink

    def set_stream_headers(self, headers: Sequence[tuple[str, str]]) -> None:
        """Add upstream headers (request id, rate limits) to a stream not yet started.

        The stream's own headers win: an upstream ``content-type`` or ``cache-control``
        is dropped rather than sent twice.
        """
        own = {name for name, _ in SSE_HEADERS}
        self._stream_headers = [*SSE_HEADERS, *((k, v) for k, v in headers if k not in own)]

    async def send_frame(self, frame: bytes) -> None:
        """Send one SSE frame, starting the 200 stream first if needed."""
        self._sending = True
        async with self._lock:
            if not self.started:
                await self._start(200, self._stream_headers)
            await self._write(frame)
            self._last_write = trio.current_time()
        self._sending = False

    @property
    def frames_delivered(self) -> bool:
        """Whether this is a started stream that handed every frame it was given to the
        client's connection: no write was cut short (cancelled, or abandoned on a client
        that stopped reading).

        Not true of a response committed with :meth:`respond`: it goes out at :meth:`close`.
        The interception uses it to tell a client that left after the whole answer from
        one that left before.
        """
        return self.started and self._pending is None and not self._sending and not self.stalled

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send held-back frames, in order (nothing if there are none)."""
        for frame in frames:
            await self.send_frame(frame)

    async def respond(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """Commit to a whole response; only possible before the stream has started.

        Nothing is written until :meth:`close`, so that the interception queues its
        records before the client can see any of the response (with a content
        length, the last body byte already completes it for the client).
        """
        async with self._lock:
            if self.started:
                raise RuntimeError("respond() after the response started; send an error frame")
            self.started = self.complete = True
            self.status = status
            self._pending = (status, [*headers, ("content-length", str(len(body)))], body)

    async def finish(self, end_frame: bytes | None = None) -> None:
        """Complete a started stream with ``end_frame`` (if any): no frame follows, pings stop."""
        async with self._lock:
            if self.started and not self.complete and end_frame is not None:
                await self._sink.send(end_frame)
                self._last_write = trio.current_time()
            self.complete = True

    async def close(self) -> None:
        """Send what :meth:`respond` committed to, or end a stream's body (once)."""
        async with self._lock:
            if not self.started or self.ended:
                return
            self.complete = self.ended = True
            last = b""
            if self._pending is not None:
                status, headers, last = self._pending
                await self._sink.start(status, headers)
            await self._write(last, end=True)

    async def keep_alive_while(
        self, waiting: Callable[[], Awaitable[None]], ping: bytes | None, interval: float
    ) -> None:
        """Run ``waiting()`` to its end; meanwhile send ``ping`` (if any) whenever the
        stream has been silent for ``interval`` seconds.

        Pings only flow once the stream has started: before that, silence costs nothing,
        and an error can still be a real status; none follow the complete response. The
        interception's client watcher waits for the client this way, so one task does
        both. ``waiting`` is cancelled at each ping time and called again, so it must lose
        nothing when cancelled (ASGI ``receive`` is a channel: it does not).
        """
        if ping is None:
            await waiting()
            return
        while True:
            with trio.move_on_at(self._next_ping_at(interval)):
                await waiting()
                return
            await self._ping_if_due(ping, interval)

    def _next_ping_at(self, interval: float) -> float:
        return math.inf if self.complete else self._last_write + interval

    async def _ping_if_due(self, ping: bytes, interval: float) -> None:
        if self.complete:
            return
        if not self.started:
            self._last_write = trio.current_time()
        elif trio.current_time() - self._last_write >= interval:
            async with self._lock:
                if self.complete:
                    return
                await self._write(ping)
                self._last_write = trio.current_time()

    async def _write(self, data: bytes, *, end: bool = False) -> None:
        """One write to the client (with ``end``: the last, which ends the body),
        bounded by ``write_timeout``.

        A client that stops reading makes writes block once the socket buffers are
        full, which bounds the memory it can pin; past the timeout it is given up on
        (``on_stall``) and the data is dropped, since nobody is reading it.
        """
        with trio.move_on_after(self._write_timeout):
            await (self._sink.end(data) if end else self._sink.send(data))
            return
        self.stalled = True
        if self.on_stall is not None:
            self.on_stall()

    async def _start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.started = True
        self.status = status
        await self._sink.start(status, headers)
