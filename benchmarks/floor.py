"""The stack's floor: what hypercorn's Trio worker and httpx2 cost with nothing else.

A proxy with no features at all (read the body, POST it upstream with httpx2, answer with
the upstream's body) served by hypercorn's Trio worker, on the gateway's core, measured at
concurrency 16 with the same 9 KB Anthropic request as the throughput scenario. Whatever
this reaches, the gateway, built on the same server and client, cannot beat: it tells a
target the gateway misses because of its own code from one the chosen stack cannot meet.

Run as a module (``python -m benchmarks.floor --port P --upstream U``) it is the proxy;
:func:`floor` starts it pinned and measures it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from benchmarks.blocking import closed_loop
from benchmarks.client import DIRECT_AUTH, blocking_body
from benchmarks.processes import GATEWAY_CPU, free_port, served_process
from benchmarks.procstat import CpuWindow
from benchmarks.results import Check, Outcome, bound_by

__all__ = ["floor", "main"]

Message = MutableMapping[str, Any]
PATH = "/anthropic/v1/messages"
HEADERS = ((b"x-mock-scenario", b"anthropic_text"),)


def _proxy(upstream: int) -> Callable[..., Awaitable[None]]:
    import httpx2

    client = httpx2.AsyncClient(timeout=30)
    base = f"http://127.0.0.1:{upstream}"
    auth = [(name, value) for name, value in DIRECT_AUTH]

    async def app(
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"host", b"content-length")
        ]
        response = await client.post(
            base + scope["path"].removeprefix("/anthropic"),
            content=b"".join(parts),
            headers=headers + auth,
        )
        length = str(len(response.content)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
            }
        )
        await send({"type": "http.response.body", "body": response.content})

    return app


def main() -> None:
    """Serve the bare proxy on ``--port`` in front of the mock on ``--upstream``."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    trio.run(serve, _proxy(args.upstream), config)


def floor(mock_port: int, mock_pid: int, seconds: float, concurrency: int = 16) -> Outcome:
    """Requests/s and CPU/request of the bare proxy, pinned like the gateway."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.floor", "--port", str(port)]
    args += ["--upstream", str(mock_port)]
    outcome = Outcome("floor")
    body = blocking_body("anthropic", 9_000)
    with served_process(args, port, cpu=GATEWAY_CPU) as proxy:
        trio.run(closed_loop, port, PATH, body, HEADERS, concurrency, 1.0)  # warm-up
        window = CpuWindow({"gateway": proxy.pid, "mock": mock_pid, "load": os.getpid()})
        window.start()
        done, errors, _ = trio.run(closed_loop, port, PATH, body, HEADERS, concurrency, seconds)
        window.stop()
    assert window.seconds is not None
    assert window.share is not None
    rps = done / seconds
    cpu_us = window.seconds["gateway"] / max(done, 1) * 1e6
    outcome.raw = {"rps": rps, "cpu_us": cpu_us, "cpu_share": window.share}
    outcome.checks.append(
        Check(
            f"stack floor: bare hypercorn + httpx2 proxy, 9 KB, c={concurrency}",
            "(info: the most the stack allows)",
            f"{rps:.0f} req/s ({errors} errors), {cpu_us:.0f} us CPU/request"
            f" ({window.share['gateway'] * 100:.0f} % of a core)",
            None,
            bound_by(window.share),
        )
    )
    return outcome


if __name__ == "__main__":
    main()
