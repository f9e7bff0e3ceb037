"""The upstream HTTP client: one pooled httpx2 client per provider.

Why httpx2 and not httpx: mcp 2.x and the official SDKs already depend on it, and
under concurrency its pool held up better (stack-notes.md, section 4: p99 34 ms vs
126 ms at 32 concurrent requests).

Rules this module keeps:

* HTTP/1.1 only. httpx(2) never sends RST_STREAM when an HTTP/2 stream is closed
  early, so a cancelled interception would leave the provider generating (and
  billing). Over HTTP/1.1 closing a half-read response closes the connection.
* ``accept-encoding: identity``: bytes are relayed as they arrive, never inflated
  and re-deflated.
* No read timeout: a model may think for minutes between two events. Stalls are
  the interception's business (its deadline), not the socket's.
* Every transport failure is translated, in :func:`_translate`, into
  :class:`~bridge.errors.UpstreamUnavailable`; ``Cancelled`` passes through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpx2

from bridge.errors import BadRequest, UpstreamProtocolError, UpstreamUnavailable

__all__ = ["UpstreamClient", "UpstreamResponse"]

# Connections kept per provider: enough for bursts of concurrent streams.
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE = 200
# The most of an error body we read before relaying it to the client.
MAX_ERROR_BODY = 1024 * 1024


@dataclass(slots=True)
class UpstreamResponse:
    """An open upstream response whose body has not been read yet."""

    status: int
    headers: list[tuple[str, str]]
    _response: httpx2.Response
    waited: float = 0.0
    """Seconds spent waiting for the upstream: time to headers, then for each chunk."""
    tee: Callable[[bytes], None] | None = None
    """Called with every chunk as it is read (the API dump)."""

    @property
    def content_type(self) -> str:
        """The media type, lower-case, without parameters."""
        return self._response.headers.get("content-type", "").split(";")[0].strip().lower()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded."""
        with _translate():
            body = self._response.aiter_raw()
            while True:
                start = time.perf_counter()
                try:
                    chunk = await anext(body)
                except StopAsyncIteration:
                    self.waited += time.perf_counter() - start
                    return
                self.waited += time.perf_counter() - start
                if self.tee is not None:
                    self.tee(chunk)
                yield chunk

    def header(self, name: str) -> str:
        """The first value of header ``name`` (lower-case), or ``""``."""
        return next((v for k, v in self.headers if k == name), "")

    async def aclose(self) -> None:
        """Close the response (and its connection, if the body was not read to the end)."""
        await self._response.aclose()

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


class UpstreamClient:
    """A connection pool to one provider."""

    def __init__(self, *, connect_timeout: float = 10.0) -> None:
        self._client = httpx2.AsyncClient(
            http1=True,
            http2=False,
            trust_env=False,  # no proxy or credential from the environment leaks upstream
            follow_redirects=False,
            timeout=httpx2.Timeout(connect=connect_timeout, read=None, write=60.0, pool=30.0),
            limits=httpx2.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE,
                keepalive_expiry=30.0,
            ),
        )
        # The upstream sees the client's own header set, not httpx's defaults.
        for name in ("user-agent", "accept", "accept-encoding"):
            del self._client.headers[name]

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send a request; return the response once its headers are in, body unread.

        The caller must :meth:`UpstreamResponse.aclose` it (``async with`` does); closing
        a response whose body was not read to the end closes its connection, so a
        cancelled interception stops the provider generating.
        """
        request = self._client.build_request(
            method, url, headers=_encode_headers(headers), content=body
        )
        start = time.perf_counter()
        with _translate():
            response = await self._client.send(request, stream=True)
        headers_in = time.perf_counter() - start
        return UpstreamResponse(
            response.status_code, list(response.headers.items()), response, waited=headers_in
        )

    @asynccontextmanager
    async def open(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> AsyncIterator[UpstreamResponse]:
        """:meth:`send` as a context manager that closes the response on exit."""
        response = await self.send(method, url, headers, body)
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()


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
    """Map httpx2's transport errors to :class:`UpstreamUnavailable`."""
    try:
        yield
    except httpx2.TimeoutException as exc:
        raise UpstreamUnavailable(f"upstream timed out ({type(exc).__name__})") from exc
    except httpx2.TransportError as exc:
        detail = str(exc) or type(exc).__name__
        raise UpstreamUnavailable(f"upstream unreachable: {detail}") from exc
