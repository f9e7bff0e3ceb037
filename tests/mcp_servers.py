"""Real MCP servers for the tool hub tests, built with the mcp SDK.

:func:`build_server` is an ``MCPServer`` with the tools ``add``, ``echo``, ``fail``,
``slow``, ``whoami`` and ``grow``; :func:`build_paging_server` is a low-level server whose
``tools/list`` pages three tools at a time. Both are served over Streamable HTTP by
:func:`serve_http` (hypercorn's trio worker, in the test's own ``trio.run``), and the first
also over stdio: ``python -m tests.mcp_servers stdio`` (with one more tool, ``pid``, the
server process's id). ``stdio-hanging PORT`` serves :func:`build_hanging_server`, whose
``add`` hangs after telling the test its pid. :class:`RestartableServer` serves an app over
HTTP that a test stops and starts again on the same port, as a restarted server process.

A :class:`ServerState` records what the server saw (a cancelled ``slow`` call, request
headers) so that a test in the same process can await it instead of sleeping.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mcp_types
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

__all__ = [
    "RestartableServer",
    "ServerState",
    "build_hanging_server",
    "build_paging_server",
    "build_server",
    "serve_http",
]


@dataclass
class ServerState:
    """What a test server saw; create it inside ``trio.run`` (it holds trio events)."""

    slow_started: trio.Event = field(default_factory=trio.Event)
    slow_cancelled: trio.Event = field(default_factory=trio.Event)
    cancelled_at: float = 0.0
    headers: list[dict[str, str]] = field(default_factory=list)


def build_server(state: ServerState | None = None) -> MCPServer:
    """The general test server; ``state`` is optional (stdio runs have none)."""
    server: MCPServer = MCPServer("bridge-test", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def fail() -> str:
        """Always fails: the SDK turns the exception into an isError result."""
        raise ToolError("this tool always fails")

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, recording in the state whether the sleep was cancelled."""
        if state is not None:
            state.slow_started.set()
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            if state is not None:
                state.cancelled_at = trio.current_time()
                state.slow_cancelled.set()
            raise
        return "done"

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The Authorization header the request carried (tests of per-actor headers)."""
        headers = dict(ctx.headers or {})
        if state is not None:
            state.headers.append(headers)
        return headers.get("authorization", "")

    @server.tool()
    async def grow(name: str, ctx: Context) -> str:
        """Add a tool called ``name`` and tell the client its tool list changed."""
        server.add_tool(lambda: name, name=name, description=f"added at run time: {name}")
        await ctx.session.send_tool_list_changed()
        return name

    return server


def build_paging_server(count: int = 7, page: int = 3) -> Server[Any]:
    """A low-level server listing ``count`` tools ``t0``, ``t1``... ``page`` at a time."""

    async def list_tools(
        ctx: Any, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = min(start + page, count)
        tools = [
            mcp_types.Tool(name=f"t{i}", description=f"tool {i}", input_schema={"type": "object"})
            for i in range(start, end)
        ]
        return mcp_types.ListToolsResult(tools=tools, next_cursor=str(end) if end < count else None)

    return Server("bridge-paging", on_list_tools=list_tools)


async def serve_http(
    app: Any, *, port: int = 0, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve an ASGI app on loopback; reports the MCP endpoint URL."""
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve, app, config)
        task_status.started(urls[0] + "/mcp")


class RestartableServer:
    """An ASGI app served over loopback HTTP that the test stops and starts again.

    Each start serves a fresh app from ``build`` on the same port: a new session store, as
    when a server process is restarted. Stopping waits until the server has closed its
    listener and connections.
    """

    def __init__(self, nursery: trio.Nursery, build: Callable[[], Any]) -> None:
        self._nursery = nursery
        self._build = build
        self._port = 0
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def start(self) -> str:
        """Serve a fresh app; return its MCP endpoint URL (the same one on every start)."""
        self._scope, self._stopped = trio.CancelScope(), trio.Event()
        url: str = await self._nursery.start(self._serve)
        self._port = int(url.rsplit(":", 1)[1].split("/")[0])
        return url

    async def stop(self) -> None:
        self._scope.cancel()
        await self._stopped.wait()

    async def _serve(self, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                await serve_http(self._build(), port=self._port, task_status=task_status)
        finally:
            self._stopped.set()


def build_hanging_server(notify_port: int) -> MCPServer:
    """A server whose ``add`` never returns: it sends its process id to
    ``127.0.0.1:notify_port`` and hangs, so that a test can kill it mid-call."""
    server: MCPServer = MCPServer("bridge-hanging", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers (never, in fact)."""
        with socket.create_connection(("127.0.0.1", notify_port)) as notify:
            notify.sendall(b"%d\n" % os.getpid())
            notify.recv(1)  # blocks until the test closes it, or the process dies
        return a + b

    return server


def main() -> None:
    if sys.argv[1:] == ["stdio"]:
        server = build_server()
        server.add_tool(os.getpid, name="pid", description="The server process's id.")
        server.run("stdio")
    elif sys.argv[1:2] == ["stdio-hanging"] and len(sys.argv) == 3:
        build_hanging_server(int(sys.argv[2])).run("stdio")
    else:
        sys.exit("usage: python -m tests.mcp_servers stdio | stdio-hanging NOTIFY_PORT")


if __name__ == "__main__":
    main()
