"""Tests for bridge/services/mcp.py against real MCP servers (tests/mcp_servers.py).

HTTP servers run under hypercorn's trio worker in the test's nursery on loopback port 0;
the stdio server is a child process. Waiting is on events (the servers' ServerState, the
hub's wait_changed) under short fail_after guards; backoff and idle times are made short
through open_tool_hub's keyword arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

import pytest
import trio

from bridge.config import MCPConfig, MCPServerConfig
from bridge.identity.auth import Actor
from bridge.services.mcp import Tool, ToolFailure, ToolHub, ToolResult, open_tool_hub
from tests.conftest import note
from tests.mcp_servers import ServerState, build_paging_server, build_server, serve_http

FAST = {"backoff_initial": 0.05, "backoff_max": 0.2}
TOOL_NAMES = ["add", "echo", "fail", "grow", "slow", "whoami"]


@dataclass
class HttpServer:
    url: str
    state: ServerState


@pytest.fixture
async def server(nursery: trio.Nursery) -> HttpServer:
    state = ServerState()
    url = await nursery.start(partial(serve_http, build_server(state).streamable_http_app()))
    return HttpServer(url, state)


@pytest.fixture
async def paging_url(nursery: trio.Nursery) -> str:
    url: str = await nursery.start(partial(serve_http, build_paging_server().streamable_http_app()))
    return url


def hub_config(*servers: MCPServerConfig) -> MCPConfig:
    return MCPConfig(call_timeout=10, servers=servers)


async def wait_until(hub: ToolHub, condition: Callable[[], bool], seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await hub.wait_changed()


def tool(hub: ToolHub, tool_id: str) -> Tool:
    found = hub.get(tool_id)
    assert found is not None, f"{tool_id} not listed; have {[t.id for t in hub.tools()]}"
    return found


@pytest.fixture
async def hub(server: HttpServer) -> AsyncIterator[ToolHub]:
    async with open_tool_hub(hub_config(MCPServerConfig("test", url=server.url)), **FAST) as hub:
        yield hub


# --- Listing ---------------------------------------------------------------------------------


async def test_tools_of_every_server_are_listed_with_prefixed_ids_sorted(
    server: HttpServer, paging_url: str
) -> None:
    config = hub_config(
        MCPServerConfig("zeta", url=server.url), MCPServerConfig("alpha", url=paging_url)
    )
    async with open_tool_hub(config, **FAST) as hub:
        ids = [t.id for t in hub.tools()]
        # The paging server lists 7 tools 3 at a time: all pages were followed.
        assert ids == [f"bmcp_alpha_t{i}" for i in range(7)] + [
            f"bmcp_zeta_{name}" for name in TOOL_NAMES
        ]
        add = tool(hub, "bmcp_zeta_add")
        assert (add.name, add.server, add.server_url) == ("add", "zeta", server.url)
        assert add.description == "Add two integers."
        assert add.input_schema["required"] == ["a", "b"]
        assert set(add.input_schema["properties"]) == {"a", "b"}
        assert hub.get("bmcp_zeta_nope") is None
        assert hub.status()["zeta"]["connected"] is True
        assert hub.status()["alpha"]["tools"] == 7


@pytest.mark.parametrize(
    ("allow", "deny", "expected"),
    [
        ("", "", ["t0", "t1", "t2", "t3", "t4", "t5", "t6"]),
        ("1", "", ["t1"]),  # search, not match: "1" is found inside "t1"
        ("^t[0-2]$", "", ["t0", "t1", "t2"]),
        ("", "[3-6]", ["t0", "t1", "t2"]),
        ("t", "[0-5]", ["t6"]),
        ("^t1$", "t1", []),  # deny wins over allow
        ("nothing", "", []),
    ],
)
async def test_allow_and_deny_search_the_original_name_and_deny_wins(
    paging_url: str, allow: str, deny: str, expected: list[str]
) -> None:
    config = hub_config(MCPServerConfig("p", url=paging_url, allow=allow, deny=deny))
    async with open_tool_hub(config, **FAST) as hub:
        assert [t.name for t in hub.tools()] == expected


async def test_tools_list_changed_refreshes_the_list(hub: ToolHub) -> None:
    result = await hub.call(tool(hub, "bmcp_test_grow"), {"name": "fresh"}, timeout=10)
    assert result.error is None
    await wait_until(hub, lambda: hub.get("bmcp_test_fresh") is not None)
    assert [t.name for t in hub.tools()] == sorted([*TOOL_NAMES, "fresh"])


# --- Calling ---------------------------------------------------------------------------------


async def test_a_call_returns_the_content_as_json(hub: ToolHub) -> None:
    result = await hub.call(tool(hub, "bmcp_test_add"), {"a": 2, "b": 3}, timeout=10)
    assert result == ToolResult(
        content=({"type": "text", "text": "5"},), structured={"result": 5}, is_error=False
    )
    assert result.as_json() == {
        "content": [{"type": "text", "text": "5"}],
        "structuredContent": {"result": 5},
        "isError": False,
    }


async def test_a_failing_tool_is_an_is_error_result_not_an_invocation_error(
    hub: ToolHub,
) -> None:
    result = await hub.call(tool(hub, "bmcp_test_fail"), {}, timeout=10)
    assert result.is_error is True
    assert result.error is None
    assert result.content == (
        {"type": "text", "text": "Error executing tool fail: this tool always fails"},
    )


async def test_a_timeout_becomes_an_error_result(hub: ToolHub, server: HttpServer) -> None:
    result = await hub.call(tool(hub, "bmcp_test_slow"), {"seconds": 30}, timeout=0.2)
    assert result.error == "tool call timed out after 0.2 s"
    assert result.as_json() == {
        "content": [{"type": "text", "text": "tool call timed out after 0.2 s"}],
        "isError": True,
    }
    with trio.fail_after(5):  # the server was told to stop
        await server.state.slow_cancelled.wait()


async def test_an_invocation_error_says_its_kind_by_type(hub: ToolHub) -> None:
    """Metrics tell a timeout from other invocation errors by this field, not by wording."""
    slow = await hub.call(tool(hub, "bmcp_test_slow"), {"seconds": 30}, timeout=0.05)
    assert slow.failure is ToolFailure.TIMEOUT
    elsewhere = dataclasses.replace(tool(hub, "bmcp_test_add"), server="gone")
    unknown = await hub.call(elsewhere, {"a": 1, "b": 2}, timeout=10)
    assert unknown.failure is ToolFailure.UNKNOWN_SERVER
    added = await hub.call(tool(hub, "bmcp_test_add"), {"a": 1, "b": 2}, timeout=10)
    assert added.failure is None


async def test_cancelling_the_caller_cancels_the_call_on_the_server(
    hub: ToolHub, server: HttpServer
) -> None:
    slow = tool(hub, "bmcp_test_slow")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                await hub.call(slow, {"seconds": 30}, timeout=60)
                raise AssertionError("the call should have been cancelled")

            nursery.start_soon(call)
            await server.state.slow_started.wait()
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel()
        await server.state.slow_cancelled.wait()
    delay = server.state.cancelled_at - cancelled_at
    note(f"cancel to server-side cancellation: {delay * 1000:.1f} ms")
    assert delay < 2
    # The session survives the cancellation.
    result = await hub.call(tool(hub, "bmcp_test_add"), {"a": 1, "b": 1}, timeout=10)
    assert result.structured == {"result": 2}


async def test_a_call_to_a_server_that_is_not_connected_is_an_error_result() -> None:
    config = hub_config(MCPServerConfig("gone", url=f"http://127.0.0.1:{free_port()}/mcp"))
    async with open_tool_hub(config, startup_wait=0.5, **FAST) as hub:
        ghost = Tool("bmcp_gone_x", "x", "gone", "", "", {})
        result = await hub.call(ghost, {}, timeout=1)
        assert result.error is not None
        assert result.error.startswith("MCP server 'gone' is not connected: ConnectError")
        unknown = await hub.call(Tool("bmcp_y_x", "x", "y", "", "", {}), {}, timeout=1)
        assert unknown.error == "unknown MCP server 'y' for tool 'bmcp_y_x'"


# --- Servers coming and going ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_server_down_at_start_is_retried_and_its_tools_appear(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    secret = "Bearer very-secret-token-0123456789"
    config = hub_config(
        MCPServerConfig("late", url=f"http://127.0.0.1:{port}/mcp", headers={"X-Key": secret})
    )
    with caplog.at_level(logging.WARNING, logger="bridge.mcp"):
        started = trio.current_time()
        async with open_tool_hub(config, startup_wait=1, **FAST) as hub:
            assert trio.current_time() - started < 2  # start-up is not held up
            assert hub.tools() == ()
            assert hub.status()["late"]["connected"] is False
            await nursery.start(
                partial(serve_http, build_server().streamable_http_app(), port=port)
            )
            await wait_until(hub, lambda: len(hub.tools()) == len(TOOL_NAMES))
    assert "'late' at http://127.0.0.1:" in caplog.text
    assert "unavailable (ConnectError" in caplog.text
    assert "very-secret" not in caplog.text


async def test_open_tool_hub_does_not_wait_long_for_a_silent_server(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as listener:  # accepts connections, never answers
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = hub_config(MCPServerConfig("mute", url=f"http://127.0.0.1:{port}/mcp"))
        started = trio.current_time()
        async with open_tool_hub(config, startup_wait=0.3, **FAST) as hub:
            assert trio.current_time() - started < 1
            assert hub.tools() == ()


async def test_stdio_servers_are_spawned_and_called() -> None:
    server = MCPServerConfig(
        "local", command=sys.executable, args=("-m", "tests.mcp_servers", "stdio")
    )
    async with open_tool_hub(hub_config(server), startup_wait=10, **FAST) as hub:
        await wait_until(hub, lambda: bool(hub.tools()))
        echo = tool(hub, "bmcp_local_echo")
        assert echo.server_url == "stdio:local"  # the configured name, not the interpreter
        result = await hub.call(echo, {"text": "over stdio"}, timeout=10)
        assert result.content == ({"type": "text", "text": "over stdio"},)


async def test_a_stdio_server_that_died_is_started_again_for_the_next_call() -> None:
    """The server process dies between two calls: the hub notices at once (its stdout ends,
    no keep-alive needed) and the next call waits for the new process instead of failing."""
    server = MCPServerConfig(
        "local", command=sys.executable, args=("-m", "tests.mcp_servers", "stdio")
    )
    async with open_tool_hub(hub_config(server), startup_wait=10, **FAST) as hub:
        await wait_until(hub, lambda: bool(hub.tools()))
        pid = tool(hub, "bmcp_local_pid")
        first = await hub.call(pid, {}, timeout=10)
        os.kill(int(first.content[0]["text"]), signal.SIGKILL)
        with trio.fail_after(10):
            await hub.wait_changed()  # the hub saw the process go
        second = await hub.call(pid, {}, timeout=10)
        assert second.error is None, second.error
        assert second.content[0]["text"] != first.content[0]["text"]
        assert hub.status()["local"]["connected"] is True


# --- Per-actor headers -----------------------------------------------------------------------


async def test_per_actor_headers_reach_the_server_in_their_own_sessions(server: HttpServer) -> None:
    config = hub_config(
        MCPServerConfig(
            "gh", url=server.url, headers={"Authorization": "Bearer ${actor.metadata.token}"}
        )
    )
    alice = Actor("alice", {"token": "alice-token"})
    bob = Actor("bob", {"token": "bob-token"})
    async with open_tool_hub(config, idle_timeout=0.5, **FAST) as hub:
        assert hub.tools() == ()  # no actor: the headers cannot be resolved
        assert hub.tools(Actor("carol")) == ()  # no token in the metadata
        assert [t.name for t in await hub.tools_for(alice, wait=10)] == TOOL_NAMES
        await hub.tools_for(bob, wait=10)
        whoami = tool(hub, "bmcp_gh_whoami")
        for actor in (alice, bob, alice):
            result = await hub.call(whoami, {}, actor=actor, timeout=10)
            assert result.content == ({"type": "text", "text": f"Bearer {actor.id}-token"},)
        assert hub.status()["gh"]["sessions"] == 2
        refused = await hub.call(whoami, {}, actor=None, timeout=10)
        assert refused.error is not None
        assert "needs actor details" in refused.error
        # Unused sessions are closed after the idle time.
        await wait_until(hub, lambda: hub.status()["gh"]["sessions"] == 0)
