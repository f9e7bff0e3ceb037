"""Embedding bridge in a Trio program: interceptions without an HTTP server.

Run it with ``.venv/bin/python examples/embed.py``. It starts the bundled mock
upstream, sends one blocking and one streaming Anthropic request through
``open_bridge``, and prints what was recorded (in memory).
"""

from __future__ import annotations

import json

import trio

from bridge import Actor, Config, MemoryStore, ProviderConfig, Request, open_bridge
from bridge.mock.upstream import MockUpstream

BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello from an embedded bridge"}],
}


async def main() -> None:
    async with trio.open_nursery() as nursery:
        mock = MockUpstream()
        port = await nursery.start(mock.serve)
        config = Config(
            providers=(
                ProviderConfig(
                    name="anthropic",
                    type="anthropic",
                    base_url=f"http://127.0.0.1:{port}/",
                    key="sk-ant-example-not-a-real-key",
                ),
            )
        )
        store = MemoryStore()
        async with open_bridge(config, store=store) as bridge:
            alice = Actor("alice", {"team": "platform"})
            response = await bridge.handle(
                Request(
                    "POST", "/anthropic/v1/messages", body=json.dumps(BODY).encode(), actor=alice
                )
            )
            print("blocking:", response.status, json.loads(response.body)["content"][0]["text"])

            streaming = json.dumps({**BODY, "stream": True}).encode()
            request = Request("POST", "/anthropic/v1/messages", body=streaming, actor=alice)
            async with bridge.stream(request) as streamed:
                frames = [frame async for frame in streamed.aiter_bytes()]
            print("streaming:", streamed.status, f"{len(frames)} SSE frames")
        nursery.cancel_scope.cancel()

    for interception in store.interceptions():
        who = f"{interception['initiator_id']} {interception['model']}"
        print(f"{who} streaming={bool(interception['streaming'])} -> {interception['outcome']}")
    for usage in store.token_usages():
        print(f"  tokens: input={usage['input']} output={usage['output']}")


if __name__ == "__main__":
    trio.run(main)
