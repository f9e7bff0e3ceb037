"""Time from a client disconnect to the upstream seeing its connection closed.

The gateway runs as its own process (``bridge serve``); the mock upstream runs in
this process, so the client's close and the upstream's observation of the close
are timed on the same clock. Usage::

    .venv/bin/python -m benchmarks.disconnect --tries 100
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

import trio

from benchmarks.processes import free_port, gateway_process
from bridge.mock_upstream import MockUpstream

BODY = json.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "count slowly"}],
    }
).encode()


async def _one(port: int, mock: MockUpstream, index: int, events_before_cut: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = (
        f"POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n"
        "x-mock-scenario: anthropic_slow_stream\r\nx-mock-pace-ms: 10\r\n\r\n"
    ).encode() + BODY
    await stream.send_all(request)
    received = b""
    while received.count(b"\n\n") < events_before_cut:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise RuntimeError("the gateway closed the stream early")
        received += chunk
    cut = trio.current_time()
    await stream.aclose()
    with trio.fail_after(5):
        seen = await mock.wait_disconnect(index)
    return (seen - cut) * 1000


async def _measure(tries: int, upstream_port: int, gateway_port: int) -> list[float]:
    mock = MockUpstream()
    results: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, "127.0.0.1", upstream_port)
        rng = random.Random(7)
        for index in range(1, tries + 1):
            results.append(await _one(gateway_port, mock, index, rng.randint(2, 40)))
        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=100)
    args = parser.parse_args()
    upstream_port = free_port()
    with gateway_process(upstream_port) as gateway_port:
        results = trio.run(_measure, args.tries, upstream_port, gateway_port)
    results.sort()
    print(
        json.dumps(
            {
                "tries": len(results),
                "median_ms": round(statistics.median(results), 2),
                "p90_ms": round(results[int(len(results) * 0.9) - 1], 2),
                "max_ms": round(results[-1], 2),
                "min_ms": round(results[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
