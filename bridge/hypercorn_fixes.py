"""A fix to hypercorn's Trio worker (0.18.0) that the gateway needs.

A client that closes its keep-alive connection while it is idle (between requests) left
the connection's task and socket behind for ``keep_alive_timeout`` (75 s): hypercorn's
``TCPServer`` reads the end of the stream and stops reading, but its task group still
waits for the idle-timeout task, which only ends when the timeout expires. Meanwhile the
socket sits in CLOSE-WAIT. A client that opens one connection per request (a CLI run, an
SDK without pooling) therefore pinned a descriptor and two tasks per request for 75 s: at
1,000 requests per second, 75,000 descriptors. Measured by ``tests/test_faults.py``.

The fix stops the idle-timeout task once the reader has seen the connection end, so the
task group, and with it the connection, closes at once. A request in progress is not
affected: hypercorn stops the idle task itself while it serves one.
"""

from __future__ import annotations

from typing import Any

from hypercorn.trio.tcp_server import TCPServer

__all__ = ["apply"]

_PATCHED = "_bridge_stops_idle_task_on_close"


def apply() -> None:
    """Install the fix; idempotent."""
    if getattr(TCPServer, _PATCHED, False):
        return
    read_data = TCPServer._read_data

    async def _read_data(self: Any) -> None:
        try:
            await read_data(self)
        finally:
            await self.idle_task.stop()

    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    setattr(TCPServer, _PATCHED, True)
