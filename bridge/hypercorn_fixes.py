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

3. **A response the application leaves unfinished.** When the application returns (or
   fails) after starting a response but before its last body message, hypercorn's h11
   protocol neither ends the body nor closes the connection: the client waits for the
   rest for ever. The gateway leaves a body unfinished on purpose when its upstream
   dies mid-way (a passthrough relays bytes it cannot complete or correct), so the
   client must see it cut: the fix closes the connection.

The first two found by ``tests/test_faults.py`` (its descriptor and task counts, and the
slow reader with a small receive buffer), the third by ``tests/test_wire_upstream.py``.
"""

from __future__ import annotations

from typing import Any, Final

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["WRITE_TIMEOUT_ATTRIBUTE", "apply"]

WRITE_TIMEOUT_ATTRIBUTE: Final = "bridge_write_timeout"
"""Name of the hypercorn ``Config`` attribute holding the write timeout in seconds."""

_PATCHED: Final = "_bridge_fixes_applied"


def apply() -> None:
    """Install the fixes; idempotent."""
    if getattr(TCPServer, _PATCHED, False):
        return
    read_data = TCPServer._read_data
    protocol_send = TCPServer.protocol_send

    async def _read_data(self: Any) -> None:
        try:
            await read_data(self)
        finally:
            await self.idle_task.stop()

    async def _protocol_send(self: Any, event: Any) -> None:
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

    maybe_recycle = H11Protocol._maybe_recycle

    async def _maybe_recycle(self: Any) -> None:
        unfinished = self.connection.our_state is h11.SEND_BODY
        await maybe_recycle(self)
        if unfinished:  # the application ended in the middle of the body
            await self.send(Closed())

    H11Protocol._maybe_recycle = _maybe_recycle  # type: ignore[method-assign]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]
    setattr(TCPServer, _PATCHED, True)
