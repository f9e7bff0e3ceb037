"""Blocking requests per second through the gateway and directly against the mock.

The mock upstream and the gateway each run in their own process; the load comes
from this process (a Trio client on httpx2), interleaving direct and gateway
rounds so both see the same machine. Usage::

    .venv/bin/python -m benchmarks.throughput --seconds 5 --concurrency 1 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx2
import trio

from benchmarks.processes import gateway_process, mock_process

BODY = json.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x" * 9000}],
    }
).encode()
HEADERS = {"content-type": "application/json", "x-api-key": "sk-ant-bench"}


async def _round(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=30) as client:
        deadline = trio.current_time() + seconds

        async def worker() -> None:
            nonlocal errors
            while trio.current_time() < deadline:
                start = time.perf_counter()
                response = await client.post(url, content=BODY, headers=HEADERS)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    latencies.sort()
    return {
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "errors": errors,
    }


async def _run(
    mock_port: int, gateway_port: int, levels: list[int], seconds: float
) -> list[dict[str, object]]:
    direct = f"http://127.0.0.1:{mock_port}/v1/messages"
    gateway = f"http://127.0.0.1:{gateway_port}/anthropic/v1/messages"
    await _round(gateway, 4, 1.0)  # warm-up: connections, caches
    rows: list[dict[str, object]] = []
    for concurrency in levels:
        for target, url in (("direct", direct), ("gateway", gateway)):
            rows.append(
                {
                    "target": target,
                    "concurrency": concurrency,
                    **await _round(url, concurrency, seconds),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    with mock_process() as mock_port, gateway_process(mock_port) as gateway_port:
        rows = trio.run(_run, mock_port, gateway_port, args.concurrency, args.seconds)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
