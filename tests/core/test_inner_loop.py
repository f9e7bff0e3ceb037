"""The inner agentic loop: injected MCP tools, run by the gateway, unseen by the client.

A real MCP server (mcp SDK, Streamable HTTP on loopback) named ``demo`` offers
``add``; the mock upstream's ``*_mcp_add`` scenarios call ``bmcp_demo_add`` first
and answer with the result second. Every dialect, blocking and streaming, goes
through the same loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx2
import pytest
import trio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from bridge.config import MCPConfig, MCPServerConfig
from bridge.dialects import DIALECTS
from bridge.mock.upstream import FIXTURES_DIR, load_scenarios
from tests.mcp_servers import RestartableServer, ServerState, build_server, serve_http

from ..conftest import UPSTREAM_STACKS, Gateway, note

pytestmark = pytest.mark.upstream_stacks(*UPSTREAM_STACKS)

SCENARIOS = load_scenarios(FIXTURES_DIR)
APIS = {
    "anthropic": ("anthropic_mcp_add", "/anthropic/v1/messages"),
    "chat": ("openai_chat_mcp_add", "/openai/v1/chat/completions"),
    "responses": ("openai_responses_mcp_add", "/openai/v1/responses"),
}


def request_of(name: str, *, stream: bool) -> dict[str, Any]:
    body = dict(SCENARIOS[name].request or {})
    body["stream"] = stream
    return body


async def start(start_gateway: Any, url: str, **mcp: Any) -> Gateway:
    servers = (MCPServerConfig("demo", url=url, allow="^add$"),)
    gateway: Gateway = await start_gateway(mcp=MCPConfig(servers=servers, **mcp))
    return gateway


@pytest.fixture
async def mcp_url(nursery: trio.Nursery) -> str:
    url: str = await nursery.start(partial(serve_http, build_server().streamable_http_app()))
    return url


async def post(gateway: Gateway, path: str, body: dict[str, Any], scenario: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as client:
        return await client.post(
            f"{gateway.url}{path}",
            json=body,
            headers={
                "authorization": "Bearer sk-test-user-key-0000001",
                "x-mock-scenario": scenario,
            },
        )


def client_text(api: str, response: httpx2.Response, *, stream: bool) -> str:
    """The answer text the client received, read the way each API delivers it."""
    if not stream:
        body = response.json()
        if api == "anthropic":
            return "".join(b["text"] for b in body["content"] if b["type"] == "text")
        if api == "chat":
            return str(body["choices"][0]["message"]["content"])
        return "".join(
            part["text"]
            for item in body["output"]
            if item["type"] == "message"
            for part in item["content"]
        )
    text = []
    for frame in response.text.split("\n\n"):
        data = "".join(line[6:] for line in frame.split("\n") if line.startswith("data: "))
        if not data or data == "[DONE]":
            continue
        event = json.loads(data)
        if api == "anthropic" and event["type"] == "content_block_delta":
            text.append(event["delta"].get("text", ""))
        elif api == "chat" and event.get("choices"):
            text.append(event["choices"][0]["delta"].get("content") or "")
        elif api == "responses" and event["type"] == "response.output_text.delta":
            text.append(event["delta"])
    return "".join(text)


def model_turn(api: str, name: str) -> Any:
    """The model's first answer (text and the injected call) as the next request must echo it:
    the first blocking body's message, less what the API does not take back."""
    body = SCENARIOS[name].upstream.blocking[0].body
    assert isinstance(body, dict)
    if api == "anthropic":
        return {"role": "assistant", "content": body["content"]}
    if api == "chat":
        message = body["choices"][0]["message"]
        return {k: v for k, v in message.items() if v is not None and k != "annotations"}
    return body["output"]


def echoed_turn(api: str, request: dict[str, Any]) -> Any:
    """The assistant turn an inner-loop request carries, before the tool results."""
    if api == "responses":
        return [item for item in request["input"][1:] if item["type"] != "function_call_output"]
    return request["messages"][-2]


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("api", list(APIS))
async def test_injected_tool_round_trip(
    start_gateway: Any, mcp_url: str, api: str, stream: bool
) -> None:
    name, path = APIS[api]
    gateway = await start(start_gateway, mcp_url)
    response = await post(gateway, path, request_of(name, stream=stream), name)
    assert response.status_code == 200, response.text
    final = SCENARIOS[name].expect.text
    assert final is not None
    text = client_text(api, response, stream=stream)
    assert text.endswith(final)
    # The injected call never reaches the client. (A Response object echoes the request's
    # tool definitions, injected ones included, and Responses bytes are relayed unchanged.)
    assert api == "responses" or "bmcp_demo_add" not in response.text
    assert '"function_call"' not in response.text

    first, second = gateway.mock.requests
    sent_tools = first.json()["tools"]
    injected_names = [t.get("name") or t.get("function", {}).get("name") for t in sent_tools]
    assert injected_names == ["bmcp_demo_add"]
    assert "5" in second.body.decode()  # the tool's result went back to the model
    # ...after the model's own turn: its text as well as its call, blocking or streaming.
    assert echoed_turn(api, second.json()) == model_turn(api, name)

    await gateway.flush()
    [interception] = gateway.store.interceptions()
    assert interception["outcome"] == "completed"
    usages = gateway.store.token_usages(interception["id"])
    assert len(usages) == 2  # one token record per upstream response
    expect = SCENARIOS[name].expect.usage
    assert expect is not None
    for counter in ("input", "output", "cache_read", "reasoning"):
        assert sum(u[counter] for u in usages) == getattr(expect, counter), counter
    [tool] = gateway.store.tool_usages(interception["id"])
    assert tool["tool"] == "add"
    assert tool["injected"] == 1
    assert tool["server_url"] == mcp_url
    assert json.loads(tool["input"]) == {"a": 2, "b": 3}
    assert tool["invocation_error"] is None
    # Metrics name the server as configured, like mcp_tool_call_seconds does.
    invocations = [
        sample.labels["server"]
        for metric in gateway.bridge.metrics.registry.collect()
        if metric.name == "injected_tool_invocations"
        for sample in metric.samples
        if sample.name == "injected_tool_invocations_total"
    ]
    assert invocations == ["demo"]


async def test_anthropic_stream_is_one_coherent_message(start_gateway: Any, mcp_url: str) -> None:
    gateway = await start(start_gateway, mcp_url)
    name = "anthropic_mcp_add"
    response = await post(gateway, APIS["anthropic"][1], request_of(name, stream=True), name)
    events = [
        json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")
    ]
    kinds = [e["type"] for e in events if e["type"] != "ping"]
    assert kinds.count("message_start") == 1
    assert kinds.count("message_stop") == 1
    assert kinds[-1] == "message_stop"
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == list(range(len(starts)))  # blocks numbered on across upstream calls
    [delta] = [e for e in events if e["type"] == "message_delta"]
    expect = SCENARIOS["anthropic_mcp_add"].expect.usage
    assert expect is not None
    assert delta["usage"]["output_tokens"] == expect.output  # cumulative over both calls


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
async def test_iteration_cap_ends_with_a_provider_error(
    start_gateway: Any, mcp_url: str, stream: bool
) -> None:
    gateway = await start(start_gateway, mcp_url, max_iterations=3)
    name = "openai_chat_mcp_loop_forever"
    response = await post(gateway, APIS["chat"][1], request_of(name, stream=stream), name)
    assert len(gateway.mock.requests) == 3
    if stream:
        frames = [f for f in response.text.split("\n\n") if f]
        assert "cap of 3 iterations" in json.loads(frames[-2][6:])["error"]["message"]
        assert frames[-1] == "data: [DONE]"
    else:
        assert response.status_code == 500
        assert "cap of 3 iterations" in response.json()["error"]["message"]
    await gateway.flush()
    [interception] = gateway.store.interceptions()
    assert interception["outcome"] == "failed"
    assert len(gateway.store.tool_usages(interception["id"])) == 2


def failing_server() -> MCPServer:
    server: MCPServer = MCPServer("failing", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Refuses to add."""
        raise ToolError("adding is switched off")

    return server


async def test_tool_error_goes_back_to_the_model(start_gateway: Any, nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_http, failing_server().streamable_http_app()))
    gateway = await start(start_gateway, url)
    name = "anthropic_mcp_add"
    response = await post(gateway, APIS["anthropic"][1], request_of(name, stream=False), name)
    assert response.status_code == 200
    second = gateway.mock.requests[1].json()
    [result] = second["messages"][-1]["content"]
    assert result["type"] == "tool_result"
    assert result["is_error"] is True
    assert "adding is switched off" in json.dumps(result)
    await gateway.flush()
    [tool] = gateway.store.tool_usages()
    assert "adding is switched off" in tool["invocation_error"]


def slow_server(state: ServerState) -> MCPServer:
    server: MCPServer = MCPServer("slow", log_level="WARNING")

    @server.tool()
    async def add(a: int, b: int) -> int:
        """Takes its time."""
        state.slow_started.set()
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            state.cancelled_at = trio.current_time()
            state.slow_cancelled.set()
            raise
        return a + b

    return server


async def test_client_disconnect_cancels_the_tool_call_on_the_mcp_server(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    state = ServerState()
    url = await nursery.start(partial(serve_http, slow_server(state).streamable_http_app()))
    gateway = await start(start_gateway, url)
    async with (
        httpx2.AsyncClient(timeout=30) as client,
        client.stream(
            "POST",
            f"{gateway.url}{APIS['anthropic'][1]}",
            json=request_of("anthropic_mcp_add", stream=True),
            headers={"x-mock-scenario": "anthropic_mcp_add"},
        ) as response,
    ):
        chunks = response.aiter_bytes()
        await chunks.__anext__()  # the stream has started; the connection stays open
        with trio.fail_after(10):
            await state.slow_started.wait()
        cut = trio.current_time()
        await chunks.aclose()
    with trio.fail_after(10):
        await state.slow_cancelled.wait()
    note(f"client disconnect -> MCP server cancelled: {(state.cancelled_at - cut) * 1000:.1f} ms")
    await gateway.flush()
    [interception] = gateway.store.interceptions()
    assert interception["outcome"] == "client_disconnected"


async def add_through_the_gateway(gateway: Gateway) -> httpx2.Response:
    """One blocking chat interception whose model calls ``bmcp_demo_add`` once."""
    name = "openai_chat_mcp_add"
    response = await post(gateway, APIS["chat"][1], request_of(name, stream=False), name)
    assert response.status_code == 200, response.text
    return response


async def test_a_restarted_mcp_server_gets_a_new_session_and_the_call_goes_through(
    start_gateway: Any, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The MCP server restarts between two calls (a new process forgets every session, and
    answers the old session id with 404): the gateway opens a new session and calls again,
    so the model gets the tool's result, not the restart."""
    server = RestartableServer(nursery, lambda: build_server().streamable_http_app())
    url = await server.start()
    gateway = await start(start_gateway, url)
    await add_through_the_gateway(gateway)
    await server.stop()
    assert await server.start() == url
    with caplog.at_level(logging.WARNING, logger="bridge.mcp"):
        response = await add_through_the_gateway(gateway)
    assert response.json()["choices"][0]["message"]["content"] == "2 + 3 = 5."
    answer = gateway.mock.requests[-1]
    [result] = [m for m in answer.json()["messages"] if m["role"] == "tool"]
    assert json.loads(result["content"]) == {
        "content": [{"type": "text", "text": "5"}],
        "structuredContent": {"result": 5},
        "isError": False,
    }
    assert "opening a new one" in caplog.text
    await gateway.flush()
    for interception in gateway.store.interceptions():
        assert interception["outcome"] == "completed"
        [tool] = gateway.store.tool_usages(interception["id"])
        assert tool["invocation_error"] is None


ASGI = Callable[[Any, Any, Any], Awaitable[None]]


def forgetting_sessions(app: ASGI, refused: list[int]) -> ASGI:
    """``app`` behind a load balancer without sticky sessions: every ``tools/call`` lands
    on a replica that does not know the session and is refused with 404, as the SDK refuses
    an unknown ``Mcp-Session-Id``. ``refused`` gets the id of each refused call."""

    async def serve(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ())
        if scope["type"] != "http" or scope["method"] != "POST" or b"mcp-session-id" not in headers:
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        if request.get("method") == "tools/call":
            refused.append(request["id"])
            error = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "Session not found"},
            }
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(error).encode()})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return serve


async def test_a_server_that_keeps_forgetting_the_session_is_called_twice_then_reported(
    start_gateway: Any, nursery: trio.Nursery
) -> None:
    """The retry on a new session happens once: a server that refuses that one as well
    gives the model a tool error, and the interception completes."""
    refused: list[int] = []
    app = forgetting_sessions(build_server().streamable_http_app(), refused)
    url = await nursery.start(partial(serve_http, app))
    gateway = await start(start_gateway, url)
    await add_through_the_gateway(gateway)
    assert len(refused) == 2
    [result] = [m for m in gateway.mock.requests[-1].json()["messages"] if m["role"] == "tool"]
    assert json.loads(result["content"])["error"] is True
    assert "a session it does not know" in json.loads(result["content"])["message"]
    await gateway.flush()
    [interception] = gateway.store.interceptions()
    assert interception["outcome"] == "completed"
    [tool] = gateway.store.tool_usages(interception["id"])
    assert "a session it does not know" in tool["invocation_error"]


async def test_identical_requests_give_identical_upstream_bodies(
    start_gateway: Any, mcp_url: str
) -> None:
    gateway = await start(start_gateway, mcp_url)
    body = request_of("openai_responses_mcp_add", stream=False)
    for _ in range(10):
        await post(gateway, APIS["responses"][1], body, "openai_responses_mcp_add")
    firsts = {r.body for r in gateway.mock.requests[::2]}
    assert len(firsts) == 1


@dataclass(frozen=True)
class _Tool:
    id: str = "bmcp_demo_add"
    description: str = "Add two integers."
    input_schema: dict[str, Any] = field(
        default_factory=lambda: {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        }
    )


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"type": "auto"}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"type": "any"}, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "tool", "name": "x"},
            {"type": "tool", "name": "x", "disable_parallel_tool_use": True},
        ),
        ({"type": "none"}, {"type": "none"}),
    ],
)
def test_anthropic_tool_choice_matrix(choice: Any, expected: Any) -> None:
    dialect = DIALECTS["anthropic.messages"]
    document: dict[str, Any] = {"model": "m", "messages": [], "tools": [{"name": "client_tool"}]}
    if choice is not None:
        document["tool_choice"] = choice
    body = json.dumps(document).encode()
    parsed = dialect.parse_request(body)
    edited, _ = dialect.prepare(parsed, body, [_Tool()])
    assert edited is not None
    assert [t["name"] for t in edited["tools"]] == ["bmcp_demo_add", "client_tool"]
    assert edited["tool_choice"] == expected
    assert dialect.prepare(parsed, body, []) == (None, body)  # nothing to inject: untouched


@pytest.mark.parametrize("dialect_name", ["openai.chat", "openai.responses"])
@pytest.mark.parametrize("parallel", [None, True, False])
def test_openai_parallel_tool_calls_are_off_only_when_tools_are_injected(
    dialect_name: str, parallel: bool | None
) -> None:
    dialect = DIALECTS[dialect_name]
    document: dict[str, Any] = {"model": "m", "messages": [], "input": "hi"}
    if parallel is not None:
        document["parallel_tool_calls"] = parallel
    body = json.dumps(document).encode()
    parsed = dialect.parse_request(body)
    edited, _ = dialect.prepare(parsed, body, [_Tool()])
    assert edited is not None
    assert edited["parallel_tool_calls"] is False
    untouched, sent = dialect.prepare(parsed, body, [])
    assert untouched is None
    assert sent == body
