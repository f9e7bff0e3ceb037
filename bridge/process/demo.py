"""``make demo``: the whole product in a minute, no provider key needed.

Starts the mock upstream, a small MCP server of our own and the gateway on
loopback (SQLite in a temporary directory), sends a few requests with the official
``anthropic`` SDK as two users (blocking, streaming, a client tool call, thinking,
an injected MCP tool round trip, an upstream error), then prints the usage per user
and model read back from the database, and stops everything.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import anthropic
import httpx2
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from mcp.server.mcpserver import MCPServer

from bridge.config import (
    AuthConfig,
    Config,
    MCPConfig,
    MCPServerConfig,
    ProviderConfig,
    RecordingConfig,
    ServerConfig,
)
from bridge.mock.upstream import MockUpstream
from bridge.process.server import serve
from bridge.recording.reports import format_usage
from bridge.recording.store import open_store

__all__ = ["main"]

_HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello to the demo."}]


async def _requests(base_url: str) -> None:
    for user in ("alice", "bob"):
        client = anthropic.AsyncAnthropic(
            base_url=base_url,
            api_key="demo-key-not-secret",
            default_headers={"X-Bridge-User": user},
            max_retries=0,
        )
        message = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=256, messages=_HELLO
        )
        print(f"[{user}] blocking   -> {message.content[0].text!r}")  # type: ignore[union-attr]
        async with client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=256,
            messages=_HELLO,
            extra_headers={"x-mock-scenario": "anthropic_thinking"},
        ) as stream:
            final = await stream.get_final_message()
        blocks, output = len(final.content), final.usage.output_tokens
        print(f"[{user}] streaming  -> {blocks} blocks, {output} output tokens")
        tool = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=256,
            messages=[{"role": "user", "content": "What's the weather in Paris?"}],
            extra_headers={"x-mock-scenario": "anthropic_tool_call"},
        )
        calls = [b.name for b in tool.content if b.type == "tool_use"]
        print(f"[{user}] tool call  -> {calls}")
    client = anthropic.AsyncAnthropic(
        base_url=base_url, api_key="demo", default_headers={"X-Bridge-User": "bob"}, max_retries=0
    )
    answer = await client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=256,
        messages=[{"role": "user", "content": "What is 2 + 3? Use the tool."}],
        extra_headers={"x-mock-scenario": "anthropic_mcp_add"},
    )
    text = "".join(b.text for b in answer.content if b.type == "text")
    print(f"[bob]   MCP tool   -> {text!r} (the gateway ran bmcp_demo_add itself)")
    try:
        await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=_HELLO,
            extra_headers={"x-mock-scenario": "anthropic_error_400"},
        )
    except anthropic.BadRequestError as exc:
        error = exc.body.get("error", {}) if isinstance(exc.body, dict) else {}
        detail = error.get("message", exc.message) if isinstance(error, dict) else exc.message
        print(f"[bob]   bad request -> HTTP {exc.status_code}: {detail}")


def _mcp_server() -> MCPServer:
    """The demo's own MCP server: one tool, ``add``."""
    server: MCPServer = MCPServer("bridge-demo", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


async def _serve_mcp(*, task_status: trio.TaskStatus[str]) -> None:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        app = _mcp_server().streamable_http_app()
        urls = await nursery.start(partial(hypercorn_serve, app, config))  # type: ignore[arg-type]
        task_status.started(urls[0] + "/mcp")


# The metric families the demo prints from its own scrape of /metrics.
_SHOWN_METRICS = (
    "interceptions_total",
    "tokens_total",
    "prompts_total",
    "injected_tool_invocations_total",
    "non_injected_tool_selections_total",
    "mcp_tool_call_seconds_count",
    "gateway_added_seconds_sum",
    "gateway_added_seconds_count",
)


async def _show_metrics(gateway: str) -> None:
    async with httpx2.AsyncClient() as client:
        text = (await client.get(f"{gateway}/metrics")).text
    print("\nfrom GET /metrics (excerpt):\n")
    for line in text.splitlines():
        if line.startswith(_SHOWN_METRICS):
            print("  " + line)


async def _demo(directory: Path) -> None:
    database = f"sqlite:///{directory / 'bridge.db'}"
    async with trio.open_nursery() as nursery:
        mock = MockUpstream()
        mock_port = await nursery.start(partial(mock.serve, "127.0.0.1", 0))
        mcp_url = await nursery.start(_serve_mcp)
        config = Config(
            server=ServerConfig(host="127.0.0.1", port=0, grace_period=1.0),
            auth=AuthConfig(mode="header", header="X-Bridge-User"),
            recording=RecordingConfig(database=database),
            providers=(
                ProviderConfig(
                    name="anthropic",
                    type="anthropic",
                    base_url=f"http://127.0.0.1:{mock_port}/",
                    key="sk-ant-demo-centralized-key",
                ),
            ),
            mcp=MCPConfig(servers=(MCPServerConfig("demo", url=mcp_url),)),
        )
        serving = trio.CancelScope()

        async def run_gateway(task_status: trio.TaskStatus[list[str]]) -> None:
            with serving:
                await serve(config, task_status=task_status)

        binds = await nursery.start(run_gateway)
        gateway = binds[0]
        print(f"mock upstream on http://127.0.0.1:{mock_port}, MCP server on {mcp_url}")
        print(f"gateway on {gateway}\n")
        await _requests(f"{gateway}/anthropic")
        await _show_metrics(gateway)
        serving.cancel()
        nursery.cancel_scope.cancel()
    store = open_store(database)
    try:
        rows = store.usage(by=("user", "model"))
    finally:
        store.close()
    print("\nusage per user and model (from the database):\n")
    print(format_usage(rows, ("user", "model"), "table"))


def main() -> None:
    """Run the demo in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="bridge-demo-") as directory:
        trio.run(_demo, Path(directory))


if __name__ == "__main__":
    main()
