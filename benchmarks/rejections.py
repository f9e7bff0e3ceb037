"""How many requests per second the gateway answers while a circuit breaker is open.

The gateway runs as its own process with a breaker on its anthropic provider; five
529s from the mock open the breaker for one model, then a Trio client measures the
rate of 503 rejections (the upstream is not called for them). Usage::

    .venv/bin/python -m benchmarks.rejections --seconds 5 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import time

import httpx2
import trio

from benchmarks.processes import gateway_process, mock_process

BODY = {"model": "claude-open", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


async def _measure(port: int, concurrency: int, seconds: float) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/anthropic/v1/messages"
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(5):  # trip the breaker: five overloaded answers in a row
            await client.post(
                url, json=BODY, headers={"x-mock-scenario": "anthropic_overloaded_midstream"}
            )
        counts = {"rejected": 0, "other": 0}
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < deadline:
                response = await client.post(url, json=BODY)
                counts["rejected" if response.status_code == 503 else "other"] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return {"rejections_per_s": round(counts["rejected"] / seconds, 1), "other": counts["other"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    breaker = "[providers.anthropic.circuit_breaker]\ntimeout = 600.0\n"
    with mock_process() as mock, gateway_process(mock.port, extra_config=breaker) as gateway:
        result = trio.run(_measure, gateway.port, args.concurrency, args.seconds)
    print(json.dumps({"concurrency": args.concurrency, **result}))


if __name__ == "__main__":
    main()
