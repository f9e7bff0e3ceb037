"""The embedding API: :func:`open_bridge` and the :class:`Bridge` it yields.

A Trio program gets the whole interception machinery (routing, recording,
upstream pools) without running an HTTP server::

    async with open_bridge(config) as bridge:
        response = await bridge.handle(Request("POST", "/anthropic/v1/messages", body=...))

or mounts :attr:`Bridge.asgi_app` in any ASGI server.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from bridge.config import Config
from bridge.core.engine import Engine
from bridge.core.exchange import Request
from bridge.core.wiring import open_engine
from bridge.errors import UpstreamUnavailable
from bridge.protocol.headers import find_header
from bridge.recording.recorder import Recorder
from bridge.recording.store import Store
from bridge.services.breaker import Breakers
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import Tracer

if TYPE_CHECKING:
    from bridge.http.app import ASGIApp

__all__ = ["Bridge", "Response", "StreamedResponse", "open_bridge"]


@dataclass(slots=True)
class Response:
    """A complete response, as :meth:`Bridge.handle` returns it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return find_header(self.headers, name)


@dataclass(slots=True)
class StreamedResponse:
    """A response whose body is still arriving (see :meth:`Bridge.stream`)."""

    status: int
    headers: list[tuple[str, str]]
    _chunks: trio.MemoryReceiveChannel[bytes] = field(repr=False)

    _ended: trio.Event = field(default_factory=trio.Event, repr=False)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, one piece per relayed frame, until it ends.

        Raises :class:`~bridge.errors.UpstreamUnavailable` after the last piece if the
        body was cut short (its upstream failed mid-way), as a server would close the
        connection: a cut body must never pass for a whole one.
        """
        async for chunk in self._chunks:
            yield chunk
        if not self._ended.is_set():
            raise UpstreamUnavailable("the response body was cut short: the upstream failed")


class _BufferSink:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.ended = False

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.status, self.headers = status, list(headers)

    async def send(self, data: bytes) -> None:
        self.parts.append(data)

    async def end(self, last: bytes = b"") -> None:
        if last:
            self.parts.append(last)
        self.ended = True

    async def wait_disconnected(self) -> None:
        await trio.sleep(math.inf)


class _ChannelSink:
    def __init__(self) -> None:
        self.started = trio.Event()
        self.gone = trio.Event()
        self.ended = trio.Event()
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](0)

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.status, self.headers = status, list(headers)
        self.started.set()

    async def send(self, data: bytes) -> None:
        await self.send_channel.send(data)

    async def end(self, last: bytes = b"") -> None:
        if last:
            await self.send_channel.send(last)
        self.ended.set()
        await self.send_channel.aclose()

    async def wait_disconnected(self) -> None:
        await self.gone.wait()


class Bridge:
    """A running bridge: an engine plus its ASGI face."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._asgi_app: ASGIApp | None = None

    @property
    def config(self) -> Config:
        """The configuration this bridge runs with."""
        return self._engine.config

    @property
    def recorder(self) -> Recorder:
        """The recorder; ``await bridge.recorder.flush()`` waits for pending writes."""
        return self._engine.recorder

    @property
    def store(self) -> Store:
        """The store records are written to."""
        return self._engine.store

    @property
    def inflight(self) -> int:
        """Requests being served right now."""
        return self._engine.inflight

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics of this bridge."""
        return self._engine.metrics

    @property
    def breakers(self) -> Breakers:
        """The circuit breakers created so far; ``snapshot()`` lists their states."""
        return self._engine.breakers

    @property
    def auth_failures(self) -> Mapping[str, int]:
        """Refused credentials so far, per client address."""
        return self._engine.auth_failures

    async def wait_idle(self) -> None:
        """Return once no request is being served; their records are all queued."""
        await self._engine.wait_idle()

    @property
    def asgi_app(self) -> ASGIApp:
        """The gateway as an ASGI application, to mount in any ASGI server."""
        if self._asgi_app is None:
            # Imported here: Quart loads only for a program that serves HTTP, not for one
            # that embeds the gateway through handle() and stream().
            from bridge.http.app import make_asgi_app

            self._asgi_app = make_asgi_app(self._engine)
        return self._asgi_app

    async def handle(self, request: Request) -> Response:
        """Serve ``request`` and return the whole response once it is complete.

        Raises :class:`~bridge.errors.UpstreamUnavailable` if the body was cut short
        (its upstream failed after the response started).
        """
        sink = _BufferSink()
        await self._engine.handle(request, sink)
        if sink.status and not sink.ended:
            raise UpstreamUnavailable("the response body was cut short: the upstream failed")
        return Response(sink.status, sink.headers, b"".join(sink.parts))

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[StreamedResponse]:
        """Serve ``request``, yielding the response as soon as it starts.

        Leaving the block before the body ends counts as the client going away:
        the interception is cancelled, the upstream closed, and the outcome
        recorded as ``client_disconnected``.
        """
        sink = _ChannelSink()
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                try:
                    await self._engine.handle(request, sink)
                finally:
                    sink.started.set()
                    sink.send_channel.close()

            nursery.start_soon(serve)
            await sink.started.wait()
            try:
                yield StreamedResponse(sink.status, sink.headers, sink.receive_channel, sink.ended)
            finally:
                sink.gone.set()
                sink.receive_channel.close()


@asynccontextmanager
async def open_bridge(
    config: Config | None = None, *, store: Store | None = None, tracer: Tracer | None = None
) -> AsyncIterator[Bridge]:
    """Run a bridge for the duration of the block.

    ``config`` defaults to the built-in defaults (no file, no environment);
    ``store`` replaces the store named by ``recording.database``, e.g. a
    :class:`~bridge.recording.MemoryStore` in tests; ``tracer`` the tracer of the
    global OpenTelemetry provider. On exit every queued record is
    written before this returns.
    """
    async with open_engine(config or Config(), store=store, tracer=tracer) as engine:
        yield Bridge(engine)
