"""The upstream HTTP client: one connection pool per provider, on httpcore2.

Why httpcore2 (the transport layer of httpx2) under a pool of our own, and not
``httpx2.AsyncClient``: measured at 16 concurrent 9 KB requests (benchmarks), the
client's pool spent about a tenth of the gateway's CPU probing *every* idle connection
with a ``poll()`` system call on every request and every response close, and its URL
merging and auth/redirect/cookie layers another tenth doing nothing a gateway needs.
This pool takes the most recently used idle connection (LIFO) and checks only that
one; connections, HTTP/1.1 and TLS are still httpcore2's own code.

Rules this module keeps:

* HTTP/1.1 only. httpx(2) never sends RST_STREAM when an HTTP/2 stream is closed
  early, so a cancelled interception would leave the provider generating (and
  billing). Over HTTP/1.1 closing a half-read response closes the connection.
* ``accept-encoding: identity`` (set by the provider's headers): bytes are relayed as
  they arrive, never inflated and re-deflated.
* No socket read timeout: a model may think for minutes before it answers. Stalls
  are bounded per request instead, by the provider's ``response_timeout`` (until the
  response headers) and ``stream_idle_timeout`` (between two chunks of the body),
  both :class:`UpstreamTimeout`. The idle deadline is one cancel scope per response
  (:meth:`UpstreamResponse.guard`) moved at each read, not a scope per chunk: the
  relay path is hot.
* At most ``MAX_CONNECTIONS`` requests in flight per provider; a request that waits
  longer than ``POOL_TIMEOUT`` for a slot fails as unavailable, like a refused connect.
* Every transport failure is translated, in :func:`_translate`, into
  :class:`~bridge.errors.UpstreamUnavailable`; ``Cancelled`` passes through.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Final

import httpcore2
import httpx2
import trio

from bridge.errors import BadRequest, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.protocol.headers import header_value

__all__ = ["UpstreamClient", "UpstreamResponse", "UpstreamTimeout"]

# Requests in flight per provider: enough for bursts of concurrent streams.
MAX_CONNECTIONS: Final = 1000
# Idle connections kept per origin for reuse; more are closed when they come back.
MAX_KEEPALIVE: Final = 200
KEEPALIVE_EXPIRY: Final = 30.0
WRITE_TIMEOUT: Final = 60.0
POOL_TIMEOUT: Final = 30.0
# How often idle connections are swept for ones the server closed or that expired.
PRUNE_INTERVAL: Final = 1.0
# The most of an error body we read before relaying it to the client.
MAX_ERROR_BODY: Final = 1024 * 1024
# Parsed request URLs kept; routes repeat a handful of URLs, so this rarely fills.
_URL_CACHE_SIZE: Final = 1024
# Methods whose empty body is still announced as ``content-length: 0`` (as httpx does).
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


@dataclass(slots=True)
class UpstreamResponse:
    """An open upstream response whose body has not been read yet."""

    status: int
    headers: list[tuple[str, str]]
    """Header pairs with lower-case names, in the order received."""
    _response: httpcore2.Response
    _release: Callable[[], None] = field(repr=False)
    """Gives the connection back to the pool (or drops it); called once, on close."""
    waited: float = 0.0
    """Seconds spent waiting for the upstream: time to headers, then for each chunk."""
    tee: Callable[[bytes], None] | None = None
    """Called with every chunk as it is read (the API dump)."""
    idle_timeout: float = math.inf
    """Seconds a read of the body may wait for the next chunk, within :meth:`guard`."""
    idle_setting: str = "stream_idle_timeout"
    """The setting named when :attr:`idle_timeout` expires."""
    _idle: trio.CancelScope | None = field(default=None, repr=False)

    @property
    def content_type(self) -> str:
        """The media type, lower-case, without parameters."""
        return self.header("content-type").split(";")[0].strip().lower()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded.

        Inside :meth:`guard`, each read moves the guard's deadline ``idle_timeout``
        ahead and lifts it once the chunk is in: only the upstream's silence counts,
        not the time the caller spends relaying a chunk.
        """
        idle = self._idle
        with _translate():
            body = aiter(self._response.aiter_stream())
            while True:
                start = time.perf_counter()
                if idle is not None:
                    idle.deadline = trio.current_time() + self.idle_timeout
                try:
                    chunk = await anext(body)
                except StopAsyncIteration:
                    self.waited += time.perf_counter() - start
                    return
                finally:
                    if idle is not None:
                        idle.deadline = math.inf
                self.waited += time.perf_counter() - start
                if self.tee is not None:
                    self.tee(chunk)
                yield chunk

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Bound every read of the body inside the block by :attr:`idle_timeout`.

        On expiry the read is cancelled (httpcore2 closes the connection, so the
        provider stops generating) and :class:`UpstreamTimeout` leaves the block.
        """
        with trio.CancelScope() as scope:
            self._idle = scope
            try:
                yield
            finally:
                self._idle = None
        if scope.cancelled_caught:
            raise UpstreamTimeout(
                f"upstream timed out: nothing received for {self.idle_timeout:g} s in the"
                f" middle of the response ({self.idle_setting}: raise it for models that"
                " pause longer)"
            )

    def header(self, name: str) -> str:
        """The first value of header ``name`` (any case), or ``""``."""
        return header_value(self.headers, name)

    async def aclose(self) -> None:
        """Close the response (and its connection, if the body was not read to the end).

        Idempotent. The connection goes back to the pool only if it is idle again.
        """
        release, self._release = self._release, _nothing
        try:
            await self._response.aclose()
        finally:
            release()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; past ``limit`` bytes, :class:`UpstreamProtocolError`."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                raise UpstreamProtocolError(f"upstream response body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class _Target:
    """A request URL parsed once: where to connect, and what goes on the request line."""

    url: httpcore2.URL
    origin: httpcore2.Origin
    host: bytes
    """The ``host`` header: the host, and the port unless it is the scheme's default."""


class UpstreamClient:
    """A connection pool to one provider (see the module's rules).

    Each request takes the most recently used idle connection to its origin whose
    keep-alive has not run out and whose socket the server has not closed, else opens
    a new one. When the response is closed, its connection goes back to the pool if
    it was read to the end (so it is idle again), and is closed otherwise.
    """

    def __init__(
        self, *, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # None: the system's and certifi's CAs, made on the first https request.
        self._ssl = ssl_context
        self._timeouts = {
            "connect": connect_timeout,
            "read": None,
            "write": WRITE_TIMEOUT,
            "pool": POOL_TIMEOUT,
        }
        self._slots = trio.Semaphore(MAX_CONNECTIONS)
        # Idle connections per origin (scheme, host, port), most recently used last.
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore2.AsyncHTTPConnection]] = {}
        self._surplus: list[httpcore2.AsyncHTTPConnection] = []
        self._targets: dict[str, _Target] = {}
        self._closed = False

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        response_timeout: float = math.inf,
        idle_timeout: float = math.inf,
        settings: str = "",
    ) -> UpstreamResponse:
        """Send a request; return the response once its headers are in, body unread.

        The caller must :meth:`UpstreamResponse.aclose` it (``async with`` does); closing
        a response whose body was not read to the end closes its connection, so a
        cancelled interception stops the provider generating.

        ``response_timeout``: seconds from getting a slot in the pool until the headers
        are in (connecting and sending included), else the connection is closed and
        :class:`UpstreamTimeout` raised. ``idle_timeout`` is the response's
        :attr:`~UpstreamResponse.idle_timeout`. ``settings`` prefixes the names of the
        settings timeout messages point to (``"providers.anthropic."``).
        """
        if self._closed:
            raise UpstreamUnavailable("the upstream client is closed (the gateway is stopping)")
        target = self._target(url)
        wire = _encode_headers(headers)
        wire.insert(0, (b"host", target.host))
        if body or method in _BODY_METHODS:
            wire.append((b"content-length", str(len(body)).encode()))
        request = httpcore2.Request(
            method,
            target.url,
            headers=wire,
            content=body,
            extensions={"timeout": self._timeouts},
        )
        start = time.perf_counter()
        with trio.move_on_after(POOL_TIMEOUT) as waiting:
            await self._slots.acquire()
        if waiting.cancelled_caught:
            raise UpstreamUnavailable(
                f"upstream pool exhausted: {MAX_CONNECTIONS} requests already in flight"
                f" for {POOL_TIMEOUT:.0f} s"
            )
        connection: httpcore2.AsyncHTTPConnection | None = None
        try:
            with trio.move_on_after(response_timeout) as deadline:
                connection = await self._connection(target.origin)
                with _translate():
                    response = await connection.handle_async_request(request)
            if deadline.cancelled_caught:
                if connection is not None:
                    await connection.aclose()
                raise UpstreamTimeout(
                    f"upstream timed out: no response headers within {response_timeout:g} s"
                    f" ({settings}response_timeout: raise it for requests that take longer)"
                )
        except BaseException:
            self._slots.release()
            raise
        headers_in = time.perf_counter() - start
        assert connection is not None  # the headers are in, so it connected
        held = connection
        return UpstreamResponse(
            response.status,
            # Names are case-insensitive (RFC 9110); Go, nginx and http.server capitalise
            # them. Lower-cased here, once, every lookup after this compares exactly.
            [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers],
            response,
            lambda: self._give_back(target.origin, held),
            waited=headers_in,
            idle_timeout=idle_timeout,
            idle_setting=f"{settings}stream_idle_timeout",
        )

    @asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        response_timeout: float = math.inf,
        idle_timeout: float = math.inf,
        settings: str = "",
    ) -> AsyncIterator[UpstreamResponse]:
        """:meth:`send` as a context manager that closes the response on exit."""
        response = await self.send(
            method,
            url,
            headers,
            body,
            response_timeout=response_timeout,
            idle_timeout=idle_timeout,
            settings=settings,
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection; later requests fail as unavailable."""
        self._closed = True
        idle, self._idle = self._idle, {}
        await self._close_surplus()
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()

    # -- the pool -------------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _parse_target(url)
            if len(self._targets) >= _URL_CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def _connection(self, origin: httpcore2.Origin) -> httpcore2.AsyncHTTPConnection:
        await self._close_surplus()
        idle = self._idle.get(_key(origin))
        while idle:
            connection = idle.pop()
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        if origin.scheme == b"https" and self._ssl is None:
            self._ssl = httpx2.create_ssl_context(trust_env=False)
        return httpcore2.AsyncHTTPConnection(
            origin,
            ssl_context=self._ssl,
            keepalive_expiry=KEEPALIVE_EXPIRY,
            http1=True,
            http2=False,
        )

    def _give_back(
        self, origin: httpcore2.Origin, connection: httpcore2.AsyncHTTPConnection
    ) -> None:
        """A response was closed: free its slot, and keep its connection if it is idle.

        A connection that is not idle was closed by httpcore2 already (a half-read
        body). Idle connections past ``MAX_KEEPALIVE`` are closed by the next request
        (this runs in ``finally`` blocks, where it must not wait).
        """
        self._slots.release()
        if not connection.is_idle() or connection.is_closed():
            return
        idle = self._idle.setdefault(_key(origin), [])
        if self._closed or len(idle) >= MAX_KEEPALIVE:
            self._surplus.append(connection)
        else:
            idle.append(connection)

    async def prune(self) -> None:
        """Close the idle connections the server has closed or whose keep-alive ran out.

        Requests check only the connection they take; this sweeps the rest (see
        :meth:`keep_tidy`), so a dead connection does not hold a socket for long.
        """
        await self._close_surplus()
        dead: list[httpcore2.AsyncHTTPConnection] = []
        for idle in self._idle.values():
            alive = [c for c in idle if c.is_idle() and not c.has_expired()]
            if len(alive) < len(idle):
                dead.extend(c for c in idle if c not in alive)
                idle[:] = alive
        for connection in dead:
            await connection.aclose()

    async def keep_tidy(self, interval: float = PRUNE_INTERVAL) -> None:
        """:meth:`prune` every ``interval`` seconds, until cancelled."""
        while True:
            await trio.sleep(interval)
            await self.prune()

    async def _close_surplus(self) -> None:
        while self._surplus:
            await self._surplus.pop().aclose()


def _key(origin: httpcore2.Origin) -> tuple[bytes, bytes, int]:
    return origin.scheme, origin.host, origin.port


def _parse_target(url: str) -> _Target:
    """Parse *url* the way httpx2 does (percent-encoding what HTTP cannot carry)."""
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        raise BadRequest(f"cannot build the upstream URL: {exc}") from None
    scheme = parsed.raw_scheme
    if scheme not in (b"http", b"https"):
        raise UpstreamUnavailable(f"unsupported upstream URL scheme in {parsed.scheme}://...")
    default_port = 443 if scheme == b"https" else 80
    port = parsed.port or default_port
    host = parsed.raw_host if port == default_port else b"%b:%d" % (parsed.raw_host, port)
    request_url = httpcore2.URL(
        scheme=scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
    )
    return _Target(request_url, httpcore2.Origin(scheme, parsed.raw_host, port), host)


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as bytes, the way they arrived (HTTP carries latin-1, not only ASCII)."""
    try:
        return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    except UnicodeEncodeError as exc:
        raise BadRequest(
            f"a request header holds a character HTTP cannot carry ({exc.object[exc.start]!r});"
            " header values must be latin-1 text"
        ) from None


@contextmanager
def _translate() -> Iterator[None]:
    """Map httpcore2's transport errors to :class:`UpstreamUnavailable`."""
    try:
        yield
    except httpcore2.TimeoutException as exc:
        raise UpstreamUnavailable(f"upstream timed out ({type(exc).__name__})") from exc
    except (
        httpcore2.NetworkError,
        httpcore2.ProtocolError,
        httpcore2.UnsupportedProtocol,
        httpcore2.ProxyError,
    ) as exc:
        raise UpstreamUnavailable(f"upstream unreachable: {_detail(exc)}") from exc


def _detail(exc: BaseException) -> str:
    """What went wrong, from the first exception in the chain that says something.

    httpcore2 often raises an empty ``ConnectError`` from the real cause (a refused
    connection, a certificate that does not verify), which is what the user needs.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return f"{type(seen).__name__}: {seen}" if seen is not exc else str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
