"""Fixes to hypercorn's Trio worker (0.18.0) that the gateway needs.

1. **Idle close.** A client that closes its keep-alive connection while it is idle
   (between requests) left the connection's task and socket behind for
   ``keep_alive_timeout`` (75 s): hypercorn's ``TCPServer`` reads the end of the stream
   and stops reading, but its task group still waits for the idle-timeout task, which
   only ends when the timeout expires. Meanwhile the socket sits in CLOSE-WAIT. A client
   opening one connection per request (a CLI run, an SDK without pooling) pinned a
   descriptor and two tasks per request for 75 s: at 1,000 requests per second, 75,000
   descriptors. The fix stops the idle-timeout task once the reader has seen the end.
2. **Write timeout.** Hypercorn writes to the socket under a shielded cancel scope (so a
   cancellation never leaves half a frame), which also means a client that stops reading
   blocks the write for ever: no timeout of the application (the relay's
   ``server.client_write_timeout``) can interrupt it, and the interception, its upstream
   stream and its task stay pinned. With :data:`WRITE_TIMEOUT_ATTRIBUTE` set on the
   hypercorn config, a write still blocked after that many seconds is abandoned and the
   connection closed (part of the data may have gone out, so it cannot carry more); the
   application then sees ``http.disconnect``.
3. **Connections released after a response.** The end of a response reaches the
   connection from the application's task: "idle now, start the keep-alive timer", or
   "close" (the client sent ``Connection: close``). Quart, and the passthrough routes,
   cancel that task's scope as soon as hypercorn reports the stream closed, which it does
   just before: the timer's start and the close were cancelled, and the connection stayed
   open, with no timer, until the client left. Both are now done shielded (they are
   quick: a task start, a ``shutdown`` and a ``close``).
4. **Header timeout.** The keep-alive timer ran from the end of one response until a
   whole request head had arrived, so a client sending a head a byte at a time held its
   connection for as long as it liked. Now the first byte of a request switches the
   timer to :data:`HEADER_TIMEOUT_ATTRIBUTE` seconds, counted from that byte, and later
   bytes do not restart it. A new connection gets the same time for its first request,
   from its opening: a client opens one to send a request.
5. **One connection's error stays on it.** Hypercorn's ``TCPServer`` lets any exception
   but ``OSError`` out of a connection's task into the server's nursery, which ends the
   worker: one packet could stop the gateway. Such an error is now logged and only its
   connection closed.
6. **HTTP/2 only when asked.** Hypercorn switches any cleartext connection to HTTP/2 on
   the prior-knowledge preface or an ``Upgrade: h2c`` request. Unless
   :data:`HTTP2_ATTRIBUTE` is true, the upgrade header is ignored and the preface
   answered ``505 HTTP Version Not Supported``; the connection is then closed.
7. **Requests refused before the application** (:func:`refusal`): a version other than
   HTTP/1.x (505), and ``Content-Length`` together with ``Transfer-Encoding`` (400, RFC
   9112 section 6.3: a proxy in front may frame the body the other way, a request
   smuggling vector). The connection is closed after the answer.
8. **HTTP/2 pseudo-headers.** hypercorn decodes ``:method`` and ``:path`` as ASCII
   unchecked; a non-ASCII byte raised ``UnicodeDecodeError`` out of the connection (and,
   before fix 5, out of the worker). A request whose ``:method`` is not a token or whose
   ``:path`` is not visible ASCII (:func:`valid_h2_request`) is refused with
   ``RST_STREAM(PROTOCOL_ERROR)``: that stream only, the connection serves on.

9. **A response the application leaves unfinished.** When the application returns (or
   fails) after starting a response but before its last body message, hypercorn's h11
   protocol neither ends the body nor closes the connection: the client waits for the
   rest for ever. The gateway leaves a body unfinished on purpose when its upstream
   dies mid-way (a passthrough relays bytes it cannot complete or correct), so the
   client must see it cut: the connection is closed.

1 and 2 were found by ``tests/core/test_faults.py`` (its descriptor and task counts, and the
slow reader with a small receive buffer); 3 to 8 by a red team
(``tests/http/test_connections.py``, ``tests/process/test_workers.py``); 9 against a
hand-written upstream (``tests/core/test_wire_upstream.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, Final

import h2.errors
import h2.events
import h11
import trio
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

__all__ = [
    "HEADER_TIMEOUT_ATTRIBUTE",
    "HTTP2_ATTRIBUTE",
    "WRITE_TIMEOUT_ATTRIBUTE",
    "apply",
    "refusal",
    "valid_h2_request",
]

logger = logging.getLogger("bridge.server")

WRITE_TIMEOUT_ATTRIBUTE: Final = "bridge_write_timeout"
"""Name of the hypercorn ``Config`` attribute holding the write timeout in seconds."""

HEADER_TIMEOUT_ATTRIBUTE: Final = "bridge_header_timeout"
"""Name of the hypercorn ``Config`` attribute: seconds a request head may take to arrive."""

HTTP2_ATTRIBUTE: Final = "bridge_http2"
"""Name of the hypercorn ``Config`` attribute: whether cleartext HTTP/2 is served."""

_TIMER: Final = "_bridge_timer"
"""The connection attribute holding its running keep-alive timer's cancel scope."""

_PATCHED: Final = "_bridge_fixes_applied"
_HEAD_STARTED: Final = "_bridge_head_started"  # a TCPServer's timer counts a request head

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")  # visible ASCII, as h11 requires of HTTP/1.1


def refusal(request: h11.Request) -> int | None:
    """The status answering ``request`` before any application sees it, or ``None``."""
    if not request.http_version.startswith(b"1."):
        return 505
    names = {name for name, _ in request.headers}  # h11 gives them lower-cased
    if b"content-length" in names and b"transfer-encoding" in names:
        return 400
    return None


def valid_h2_request(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an HTTP/2 request's ``:method`` is a token and its ``:path`` visible ASCII."""
    pseudo = {name: value for name, value in headers if name in (b":method", b":path")}
    method, path = pseudo.get(b":method", b""), pseudo.get(b":path", b"")
    return _TOKEN.fullmatch(method) is not None and _TARGET.fullmatch(path) is not None


def apply() -> None:
    """Install the fixes; idempotent."""
    if getattr(TCPServer, _PATCHED, False):
        return
    _patch_tcp_server()
    _patch_h11()
    _patch_h2()
    setattr(TCPServer, _PATCHED, True)


def _patch_tcp_server() -> None:
    run = TCPServer.run
    protocol_send = TCPServer.protocol_send

    async def _run(self: Any) -> None:
        try:
            peer = self.stream.socket.getpeername()
        except (AttributeError, OSError):
            peer = None
        try:
            await run(self)
        except* Exception:  # fix 5; cancellation (a BaseException) goes on
            logger.exception("error on the connection from %s; closed it, serving on", peer)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _read_data(self: Any) -> None:  # fixes 1 and 4
        try:
            while True:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if data and self._bridge_idle and not getattr(self, _HEAD_STARTED, False):
                    setattr(self, _HEAD_STARTED, True)  # the first byte of a request
                    # The keep-alive timer now bounds the head. If it is not running yet
                    # (its start is pending: the client answered at once), it will read
                    # _HEAD_STARTED and take the header timeout itself.
                    timer = getattr(self, _TIMER, None)
                    timeout = getattr(self.config, HEADER_TIMEOUT_ATTRIBUTE, None)
                    if timer is not None and timeout is not None:
                        timer.deadline = trio.current_time() + timeout
                await self.protocol.handle(RawData(bytes(data)))
                if not data:
                    break
            await self.protocol.handle(Closed())
        finally:
            await self.idle_task.stop()

    async def _idle_timeout(self: Any) -> None:
        timeout = self.config.keep_alive_timeout
        if getattr(self, _HEAD_STARTED, False):
            timeout = getattr(self.config, HEADER_TIMEOUT_ATTRIBUTE, timeout)
        with trio.move_on_after(timeout) as timer:
            # Kept on the connection so that the first byte of a request only moves this
            # deadline: restarting the task instead cost every request a task start.
            setattr(self, _TIMER, timer)
            try:
                await self.context.terminated.wait()
            finally:
                if getattr(self, _TIMER, None) is timer:
                    setattr(self, _TIMER, None)
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _protocol_send(self: Any, event: Any) -> None:
        if isinstance(event, Updated):  # fixes 3 and 4
            self._bridge_idle = event.idle
            setattr(self, _HEAD_STARTED, False)
            with trio.CancelScope(shield=True):
                await protocol_send(self, event)
        elif isinstance(event, Closed):  # fix 3
            with trio.CancelScope(shield=True):
                await self._close()
            await self.protocol.handle(Closed())
        else:
            await _send_raw(self, event)

    async def _send_raw(self: Any, event: Any) -> None:  # fix 2
        timeout = getattr(self.config, WRITE_TIMEOUT_ATTRIBUTE, None)
        if timeout is None or not isinstance(event, RawData):
            await protocol_send(self, event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True) as scope:
                    scope.relative_deadline = timeout
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
        if scope.cancelled_caught:  # the client stopped reading
            await self._close()
            await self.protocol.handle(Closed())

    # Accepted: hypercorn starts the timer, for a first request head (fix 4).
    TCPServer._bridge_idle = True  # type: ignore[attr-defined]
    setattr(TCPServer, _HEAD_STARTED, True)
    TCPServer.run = _run  # type: ignore[method-assign]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    TCPServer._idle_timeout = _idle_timeout  # type: ignore[method-assign]
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]


def _patch_h11() -> None:
    check_protocol = H11Protocol._check_protocol
    create_stream = H11Protocol._create_stream
    maybe_recycle = H11Protocol._maybe_recycle

    async def _maybe_recycle(self: Any) -> None:  # fix 9
        unfinished = self.connection.our_state is h11.SEND_BODY
        await maybe_recycle(self)
        if unfinished:  # the application ended in the middle of the body
            await self.send(Closed())

    async def _check_protocol(self: Any, event: h11.Request) -> None:  # fix 6
        if getattr(self.config, HTTP2_ATTRIBUTE, True):
            await check_protocol(self, event)

    async def _create_stream(self: Any, request: h11.Request) -> None:  # fixes 6 and 7
        status = refusal(request)
        if status is None:
            await create_stream(self, request)
            return
        await self._send_error_response(status)
        await self.send(Closed())

    H11Protocol._maybe_recycle = _maybe_recycle  # type: ignore[method-assign]
    H11Protocol._check_protocol = _check_protocol  # type: ignore[method-assign]
    H11Protocol._create_stream = _create_stream  # type: ignore[method-assign]


def _patch_h2() -> None:
    handle_events = H2Protocol._handle_events

    async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:  # fix 8
        refused: set[int] = set()
        kept: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and not valid_h2_request(event.headers):
                self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                refused.add(event.stream_id)
            elif getattr(event, "stream_id", None) not in refused:
                kept.append(event)
        await handle_events(self, kept)  # it sends the reset with its other frames

    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
