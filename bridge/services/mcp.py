"""The MCP tool hub: the tools of the configured MCP servers, and calling them.

Administrators configure MCP servers (``[mcp.servers.<name>]``); the gateway offers their
tools to the model and, when the model calls one, calls the server itself. This module
owns the sessions to those servers; the inner agentic loop that uses it lives elsewhere.

Rules and invariants:

1. **Structured concurrency.** Every session is one task in the hub's own nursery
   (:func:`open_tool_hub`): it connects, initializes, lists the tools and then waits for
   ``notifications/tools/list_changed`` or a keep-alive ping. Leaving the context manager
   closes every session; no task outlives the hub.
2. **Servers never stop the gateway.** A server that is down at start-up, or whose session
   drops, is retried with capped exponential backoff; its tools are absent meanwhile. Start-up
   waits at most ``startup_wait`` seconds for the servers before the hub is handed out.
   A server that *loses* a live session (a restarted HTTP server answers 404 to the old
   ``Mcp-Session-Id``; a stdio server's process exits) gets a new session at once, keeping
   its tools meanwhile, and calls wait for it: a restart is not the model's business.
3. **Calls belong to the caller.** :meth:`ToolHub.call` runs in the caller's task, so the
   caller's cancel scope owns it: cancelling it makes the SDK send ``notifications/cancelled``
   to the server. Every other problem (timeout, transport, JSON-RPC error, server down)
   becomes :attr:`ToolResult.error`; ``call`` never raises for them. A call is sent again
   (once) only when the server refused it unrun, as a session it no longer knows.
4. **Ids are stable.** A tool's id is ``bmcp_<server>_<name>``; lists are sorted by id so
   that the prompt prefix, and with it the provider's prompt cache, stays the same.
5. **Per-actor sessions.** A server whose header values reference the actor
   (``${actor.id}``, ``${actor.metadata.<key>}``) gets one session per resolved header set,
   opened on first use by that actor and closed after :data:`IDLE_TIMEOUT` unused. Other
   servers share one session.
6. **Headers are secrets.** Logs and :meth:`ToolHub.status` name servers and errors,
   never a header value.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import httpx2
import mcp_types
import trio
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from bridge.config import ACTOR_REFERENCE, MCPConfig, MCPServerConfig, mask_url, mask_urls_in
from bridge.identity.auth import Actor

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "STARTUP_WAIT",
    "TOOL_ID_PREFIX",
    "Tool",
    "ToolHub",
    "ToolResult",
    "open_tool_hub",
]

logger = logging.getLogger("bridge.mcp")

TOOL_ID_PREFIX: Final = "bmcp_"
"""Short, because providers limit tool names to 64 characters (docs/behaviour.md §5.1)."""

BACKOFF_INITIAL: Final = 0.5  # seconds before the first reconnect; doubles per failure
BACKOFF_MAX: Final = 30.0  # the cap of the reconnect delay
STARTUP_WAIT: Final = 2.0  # open_tool_hub waits at most this long for servers to connect
IDLE_TIMEOUT: Final = 5 * 60.0  # a per-actor session unused this long is closed
KEEPALIVE_INTERVAL: Final = 30.0  # an idle session is pinged this often, to notice drops

_CLIENT_INFO: Final = mcp_types.Implementation(name="bridge", version="0.1.0")
_HTTP_TIMEOUT: Final = httpx2.Timeout(30.0, read=300.0)  # reads wait on long-lived SSE streams

# What a session task is asked to do; the channel holds one pending wish (they coalesce).
_REFRESH: Final = "refresh"  # the server said its tool list changed
_CHECK: Final = "check"  # something failed: ping now, reconnect if the session is dead


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool of one MCP server, as offered to the model under :attr:`id`."""

    id: str  # TOOL_ID_PREFIX + server + "_" + name
    name: str  # the original tool name, used when calling the server
    server: str
    server_url: str  # the URL with its credentials masked, or "stdio:<command>"
    description: str
    input_schema: dict[str, Any]  # the tool's inputSchema as JSON (properties, required...)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call.

    ``is_error`` is the server's own verdict (the tool ran and failed: the model should see
    that); ``error`` is an invocation error (the tool could not be called at all).
    """

    content: tuple[dict[str, Any], ...]  # MCP content blocks as JSON dicts
    structured: Any | None
    is_error: bool
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The result as an MCP ``CallToolResult`` JSON object.

        An invocation error becomes an ``isError`` result whose only content is the error
        text, so that a caller that only forwards JSON still tells the model what happened.
        """
        if self.error is not None:
            return {"content": [{"type": "text", "text": self.error}], "isError": True}
        result: dict[str, Any] = {"content": list(self.content)}
        if self.structured is not None:
            result["structuredContent"] = self.structured
        result["isError"] = self.is_error
        return result


def _failure(message: str) -> ToolResult:
    return ToolResult(content=(), structured=None, is_error=True, error=message)


def _describe(exc: BaseException) -> str:
    """A one-line description of an error, looking through single-member exception groups.

    The SDK runs on task groups, so a refused connection arrives wrapped in groups; the
    log line should name the refused connection.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = mask_urls_in(str(exc))  # an HTTP error names the URL, query and userinfo included
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _server_url(server: MCPServerConfig) -> str:
    """The server as shown in ``/readyz``, spans and records: its URL with credentials
    masked, or ``stdio:<name>`` for a local process (its name as configured: the
    interpreter path a command starts with says nothing about which server it is;
    ``bridgectl check-config`` shows the command)."""
    return mask_url(server.url) if server.url else f"stdio:{server.name}"


def _resolve_headers(server: MCPServerConfig, actor: Actor | None) -> dict[str, str] | None:
    """The server's headers with actor references filled in; ``None`` if one cannot be.

    A reference to a missing actor or metadata key leaves the server unavailable to that
    actor: sending ``Bearer `` with nothing after it would only earn a 401 per call.
    """
    resolved = {}
    for name, template in server.headers.items():
        missing = False

        def fill(match: Any) -> str:
            nonlocal missing
            if actor is None:
                missing = True
                return ""
            if match.group(1):
                return actor.id
            value = actor.metadata.get(match.group(2))
            if value is None:
                missing = True
                return ""
            return str(value)

        resolved[name] = ACTOR_REFERENCE.sub(fill, template)
        if missing:
            return None
    return resolved


_SessionKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(eq=False, slots=True)
class _Session:
    """One session to one server with one header set, and what it learnt (mutable state)."""

    server: MCPServerConfig
    headers: dict[str, str]
    per_actor: bool
    wake_send: trio.MemorySendChannel[str]
    wake_receive: trio.MemoryReceiveChannel[str]
    client: ClientSession | None = None
    tools: tuple[Tool, ...] = ()
    last_error: str | None = None
    last_used: float = 0.0
    in_flight: int = 0
    settled: trio.Event = field(default_factory=trio.Event)  # the first attempt has ended
    connects: int = 0  # how many times the session connected
    renewing: bool = False  # the server lost the session; a new one is being opened at once
    refused: set[object] = field(default_factory=set)
    """The calls (their :data:`_CALL` tokens) the server refused as an unknown session."""

    def wake(self, wish: str) -> None:
        with contextlib.suppress(trio.WouldBlock):  # a wish is already pending; it will do
            self.wake_send.send_nowait(wish)


class ToolHub:
    """The tools of every configured MCP server; build it with :func:`open_tool_hub`."""

    def __init__(
        self,
        config: MCPConfig,
        nursery: trio.Nursery,
        *,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        idle_timeout: float = IDLE_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self._config = config
        self._nursery = nursery
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._idle_timeout = idle_timeout
        self._keepalive_interval = keepalive_interval
        self._sessions: dict[_SessionKey, _Session] = {}
        self._changed = trio.Event()
        self._filters = {
            server.name: _tool_filter(server.allow, server.deny) for server in config.servers
        }

    # --- Listing ---

    def tools(self, actor: Actor | None = None) -> tuple[Tool, ...]:
        """Every tool available now (to ``actor``), sorted by id.

        For a server whose headers reference the actor, the first call for an actor opens
        its session in the background and lists none of its tools yet; :meth:`tools_for`
        waits for them instead.
        """
        found: list[Tool] = []
        for server in self._config.servers:
            session = self._session(server, actor)
            if session is not None:
                found.extend(session.tools)
        return tuple(sorted(found, key=lambda tool: tool.id))

    async def tools_for(
        self, actor: Actor | None, *, wait: float = STARTUP_WAIT
    ) -> tuple[Tool, ...]:
        """:meth:`tools`, after waiting up to ``wait`` seconds for the actor's sessions.

        A session that has already connected or failed once does not wait again.
        """
        sessions = [self._session(server, actor) for server in self._config.servers]
        with trio.move_on_after(wait):
            for session in sessions:
                if session is not None:
                    await session.settled.wait()
        return self.tools(actor)

    def get(self, tool_id: str) -> Tool | None:
        """The tool with this id in any open session, or ``None``."""
        for session in self._sessions.values():
            for tool in session.tools:
                if tool.id == tool_id:
                    return tool
        return None

    def status(self) -> dict[str, dict[str, object]]:
        """Per server: whether a session is connected, its tool count, its last error."""
        report: dict[str, dict[str, object]] = {}
        for server in self._config.servers:
            sessions = [s for s in self._sessions.values() if s.server.name == server.name]
            connected = [s for s in sessions if s.client is not None]
            errors = [s.last_error for s in sessions if s.last_error is not None]
            report[server.name] = {
                "url": _server_url(server),
                "per_actor": server.references_actor,
                "connected": bool(connected),
                "sessions": len(sessions),
                "tools": max((len(s.tools) for s in connected), default=0),
                "last_error": errors[-1] if errors else None,
            }
        return report

    async def wait_changed(self) -> None:
        """Wait until a session connects, drops or relists its tools (tests, readiness)."""
        await self._changed.wait()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- Calling ---

    async def call(
        self,
        tool: Tool,
        arguments: dict[str, Any] | None,
        *,
        actor: Actor | None = None,
        timeout: float,  # noqa: ASYNC109 (the inner loop gives each call its own budget)
    ) -> ToolResult:
        """Call ``tool`` with ``arguments`` in the caller's task, within ``timeout`` seconds.

        Never raises for tool, server or transport problems; cancellation propagates (and
        the SDK tells the server with ``notifications/cancelled``).
        """
        server = next((s for s in self._config.servers if s.name == tool.server), None)
        if server is None:
            return _failure(f"unknown MCP server {tool.server!r} for tool {tool.id!r}")
        session = self._session(server, actor)
        if session is None:
            return _failure(
                f"MCP server {server.name!r} needs actor details that this request lacks"
                " (its headers reference the actor)"
            )
        session.in_flight += 1
        session.last_used = trio.current_time()
        try:
            with trio.move_on_after(timeout):
                return await self._call(session, tool, arguments)
            return _failure(f"tool call timed out after {timeout:g} s")
        finally:
            session.in_flight -= 1
            session.last_used = trio.current_time()

    async def _call(
        self, session: _Session, tool: Tool, arguments: dict[str, Any] | None
    ) -> ToolResult:
        """Call on the current session; once more on a new one if the server refused the call
        as a session it does not know.

        Such a server (restarted, so its sessions are gone) did not run the call: the MCP
        spec has it answer 404 to an unknown ``Mcp-Session-Id``. Calling again on a fresh
        session is safe, and the model never sees the restart. A call whose server died
        while running it is not repeated: it may have had effects.
        """
        server = session.server
        retry = True
        while True:
            client = await self._client(session)
            if client is None:
                reason = f": {session.last_error}" if session.last_error else ""
                return _failure(f"MCP server {server.name!r} is not connected{reason}")
            token = object()
            reset = _CALL.set(token)
            try:
                result = await client.call_tool(tool.name, arguments)
            except Exception as exc:
                refused = token in session.refused
                if retry and refused:
                    retry = False
                    logger.info(
                        "MCP tool %r of server %r: the server refused the call as an unknown"
                        " session; calling it again on a new one",
                        tool.name,
                        server.name,
                    )
                    continue
                session.wake(_CHECK)
                # A refusal can reach the caller as "connection closed": the lost
                # session's transport is closed as soon as the refusal is seen.
                error = _REFUSED if refused else _describe(exc)
                logger.warning("MCP tool %r of server %r failed: %s", tool.name, server.name, error)
                return _failure(f"calling tool {tool.name!r}: {error}")
            finally:
                _CALL.reset(reset)
                session.refused.discard(token)
            return _to_result(result)

    async def _client(self, session: _Session) -> ClientSession | None:
        """The session's client; while a lost session is being renewed, the new one's."""
        while session.client is None and session.renewing:
            await self.wait_changed()
        return session.client

    # --- Sessions ---

    def _session(self, server: MCPServerConfig, actor: Actor | None) -> _Session | None:
        """The session for ``server`` as seen by ``actor``, started if it is new."""
        headers = _resolve_headers(server, actor)
        if headers is None:
            return None
        key: _SessionKey = (server.name, tuple(sorted(headers.items())))
        session = self._sessions.get(key)
        if session is None:
            wake_send, wake_receive = trio.open_memory_channel[str](1)
            session = _Session(
                server,
                headers,
                server.references_actor,
                wake_send,
                wake_receive,
                last_used=trio.current_time(),
            )
            self._sessions[key] = session
            self._nursery.start_soon(self._run_session, key, session)
        if session.per_actor:
            session.last_used = trio.current_time()
        return session

    async def _run_session(self, key: _SessionKey, session: _Session) -> None:
        """Keep ``session`` connected until the hub closes (or, per actor, it idles out)."""
        name = session.server.name
        delay = self._backoff_initial
        renewed = -math.inf
        try:
            while True:
                connects = session.connects
                try:
                    if not await self._serve(session):
                        return  # idled out
                except Exception as exc:
                    if not (session.renewing and session.connects != connects):
                        session.last_error = _describe(exc)  # not a lost session's teardown
                finally:
                    was_connected = session.connects != connects
                    session.client = None
                    # A lost session is opened again at once, keeping its tools; but not
                    # twice within the first backoff delay, or a server that forgets every
                    # session would keep the hub reconnecting in a tight loop.
                    now = trio.current_time()
                    renew = (
                        session.renewing
                        and was_connected
                        and now - renewed >= self._backoff_initial
                    )
                    if not renew:
                        session.renewing = False
                        session.tools = ()
                    session.settled.set()
                    self._notify_changed()
                if renew:
                    renewed = now
                    logger.warning(
                        "MCP server %r lost its session: %s; opening a new one",
                        name,
                        session.last_error,
                    )
                    continue
                if was_connected:
                    delay = self._backoff_initial
                if session.per_actor and self._idle(session):
                    return
                logger.warning(
                    "MCP server %r at %s unavailable (%s); retrying in %g s",
                    name,
                    _server_url(session.server),
                    session.last_error,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
        finally:
            if self._sessions.get(key) is session:
                del self._sessions[key]

    def _idle(self, session: _Session) -> bool:
        unused = trio.current_time() - session.last_used
        return session.in_flight == 0 and unused >= self._idle_timeout

    async def _serve(self, session: _Session) -> bool:
        """Connect, list the tools, then serve refreshes and keep-alives until idle or dead.

        Returns whether the server lost the session (:meth:`_run_session` then opens a new
        one at once), ``False`` when an idle per-actor session closes.
        """
        server = session.server
        transport_errors: list[str] = []
        connected: ClientSession | None = None
        lost: list[str] = []

        async def on_message(message: IncomingMessage) -> None:
            if isinstance(message, Exception):
                transport_errors.append(_describe(message))
                session.wake(_CHECK)
            elif isinstance(message, mcp_types.ToolListChangedNotification):
                session.wake(_REFRESH)

        def on_lost(reason: str, *, call: object | None = None) -> None:
            """The server no longer has this session: no new call may use it. ``call``:
            the token of a call it refused, unrun."""
            if call is not None:
                session.refused.add(call)
            if connected is None:
                return  # still connecting: that attempt fails on its own
            if lost:
                return
            lost.append(reason)
            session.client = None
            session.renewing = True
            session.last_error = reason
            session.wake(_CHECK)
            self._notify_changed()

        async with (
            _open_transport(server, session.headers, on_lost) as (read, write),
            ClientSession(
                _EndWatch(read, partial(on_lost, _ENDED[bool(server.url)])),
                write,
                message_handler=on_message,
                client_info=_CLIENT_INFO,
            ) as client,
        ):
            with trio.move_on_after(self._config.call_timeout) as connecting:
                await client.initialize()
                session.tools = await self._list_tools(server, client)
            if connecting.cancelled_caught:
                cause = transport_errors[-1] if transport_errors else "no answer"
                raise TimeoutError(
                    f"connecting timed out after {self._config.call_timeout:g} s ({cause})"
                )
            connected = session.client = client
            session.connects += 1
            session.renewing = False
            session.last_error = None
            session.settled.set()
            self._notify_changed()
            logger.info("MCP server %r connected: %d tools", server.name, len(session.tools))
            try:
                await self._keep(session, client, lost)
            except Exception:
                if lost:
                    return True  # a ping or relisting failed for that reason
                raise
            finally:
                connected = None  # closing the transport below is no loss
            return bool(lost)

    async def _keep(self, session: _Session, client: ClientSession, lost: list[str]) -> None:
        """Serve refreshes and keep-alives until the session idles out or is ``lost``."""
        server = session.server
        while not lost:
            deadline = trio.current_time() + self._keepalive_interval
            if session.per_actor:
                deadline = min(deadline, session.last_used + self._idle_timeout)
            wish = _CHECK
            with trio.move_on_at(deadline):
                wish = await session.wake_receive.receive()
            if lost:
                return
            if session.per_actor and self._idle(session):
                logger.info("MCP server %r: closing an idle per-actor session", server.name)
                return
            with trio.fail_after(self._config.call_timeout):
                if wish == _REFRESH:
                    session.tools = await self._list_tools(server, client)
                    self._notify_changed()
                    logger.info(
                        "MCP server %r tools changed: %d tools", server.name, len(session.tools)
                    )
                else:
                    await client.send_ping()

    async def _list_tools(self, server: MCPServerConfig, client: ClientSession) -> tuple[Tool, ...]:
        """Every page of ``tools/list``, filtered by allow/deny, as :class:`Tool` records."""
        keep = self._filters[server.name]
        tools: list[Tool] = []
        cursor: str | None = None
        while True:
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await client.list_tools(params=params)
            for listed in page.tools:
                if keep(listed.name):
                    tools.append(_to_tool(server, listed))
            cursor = page.next_cursor
            if not cursor:
                return tuple(tools)


def _tool_filter(allow: str, deny: str) -> Callable[[str], bool]:
    """``allow``/``deny`` as a predicate on the original tool name: search, deny wins."""
    allowed = re.compile(allow) if allow else None
    denied = re.compile(deny) if deny else None

    def keep(name: str) -> bool:
        if denied is not None and denied.search(name):
            return False
        return allowed is None or allowed.search(name) is not None

    return keep


def _to_tool(server: MCPServerConfig, listed: mcp_types.Tool) -> Tool:
    schema = listed.model_dump(mode="json", by_alias=True, exclude_none=True).get("inputSchema")
    return Tool(
        id=f"{TOOL_ID_PREFIX}{server.name}_{listed.name}",
        name=listed.name,
        server=server.name,
        server_url=_server_url(server),
        description=listed.description or "",
        input_schema=schema if isinstance(schema, dict) else {"type": "object"},
    )


def _to_result(result: Any) -> ToolResult:
    content = tuple(
        block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content
    )
    return ToolResult(
        content=content, structured=result.structured_content, is_error=bool(result.is_error)
    )


_OnLost = Callable[..., None]
"""``on_lost(reason, call=None)``: the server no longer has the session."""

_REFUSED: Final = "the server refused the call on a new session too, as a session it does not know"

_CALL: Final = contextvars.ContextVar[object | None]("_CALL", default=None)
"""The token of the tool call a request belongs to.

The SDK sends each request from a task that carries the context of the caller (for
tracing), so the transport's response hook can tell which call a refusal answers, and
only that call is sent again: not one that was cut off while it ran on a server that
died (it may have had effects), nor a ping.
"""

# Why a session whose transport ended is lost, by transport (``bool(server.url)``).
_ENDED: Final = {False: "the server process exited", True: "the connection ended"}


class _EndWatch:
    """A transport's read stream that calls ``on_end`` when it ends: the server is gone
    (a stdio process exited), which nothing else reports before the next keep-alive."""

    def __init__(self, stream: Any, on_end: Callable[[], None]) -> None:
        self._stream = stream
        self._on_end = on_end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # e.g. the SDK's ``last_context``

    async def receive(self) -> Any:
        return await self._stream.receive()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> _EndWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._on_end()
            raise

    async def __aenter__(self) -> _EndWatch:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        result: bool | None = await self._stream.__aexit__(*exc_info)
        return result


def _open_transport(
    server: MCPServerConfig, headers: Mapping[str, str], on_lost: _OnLost
) -> AbstractAsyncContextManager[Any]:
    if server.url:
        return _http_transport(server.url, headers, on_lost)
    return stdio_client(
        StdioServerParameters(
            command=server.command, args=list(server.args), env=dict(server.env) or None
        )
    )


@asynccontextmanager
async def _http_transport(
    url: str, headers: Mapping[str, str], on_lost: _OnLost
) -> AsyncIterator[Any]:
    """The Streamable HTTP transport; a 404 to a request that carries the session id means
    the server no longer knows the session (MCP spec, session management): ``on_lost``."""

    async def check(response: httpx2.Response) -> None:
        request = response.request
        if response.status_code == 404 and request.headers.get("mcp-session-id"):
            on_lost("HTTP 404 to the session id, the server no longer knows it", call=_CALL.get())

    async with (
        httpx2.AsyncClient(
            headers=dict(headers), timeout=_HTTP_TIMEOUT, event_hooks={"response": [check]}
        ) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


@asynccontextmanager
async def open_tool_hub(
    config: MCPConfig,
    *,
    startup_wait: float = STARTUP_WAIT,
    backoff_initial: float = BACKOFF_INITIAL,
    backoff_max: float = BACKOFF_MAX,
    idle_timeout: float = IDLE_TIMEOUT,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
) -> AsyncIterator[ToolHub]:
    """A :class:`ToolHub` whose shared sessions are connecting; closed on exit.

    Waits up to ``startup_wait`` seconds for every shared session to connect or fail once,
    so that tools of healthy servers are there for the first request without a slow server
    holding up start-up. The keyword arguments exist for tests.
    """
    async with trio.open_nursery() as nursery:
        hub = ToolHub(
            config,
            nursery,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            idle_timeout=idle_timeout,
            keepalive_interval=keepalive_interval,
        )
        shared = [hub._session(s, None) for s in config.servers if not s.references_actor]
        with trio.move_on_after(startup_wait):
            for session in shared:
                if session is not None:
                    await session.settled.wait()
        try:
            yield hub
        finally:
            nursery.cancel_scope.cancel()
