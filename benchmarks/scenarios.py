"""The mock scenarios the benchmarks need beyond ``fixtures/``, and a mock that serves them.

``anthropic_bench_64`` is ``anthropic_slow_stream`` cut to exactly 64 SSE events (the issue's
"64 events per stream"): message_start, content_block_start, 59 numbered text deltas,
content_block_stop, message_delta, message_stop. Its text deltas are "1".."59", so a client can
check that no event was lost, merged or reordered. Run as a module, this serves the fixtures plus
that scenario, like ``bridge mock-upstream``::

    .venv/bin/python -m benchmarks.scenarios --port 9090
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any, Final

import trio

from bridge.mock.upstream import (
    FIXTURES_DIR,
    MAIN_HISTORY,
    MockUpstream,
    Scenario,
    load_scenario,
    load_scenarios,
)

__all__ = ["STREAM_64", "STREAM_64_DELTAS", "bench_scenarios", "main"]

STREAM_64: Final = "anthropic_bench_64"
STREAM_64_DELTAS: Final = 59
"""Numbered text deltas in :data:`STREAM_64` (64 events minus 5 framing events)."""


def _stream_64_document() -> dict[str, Any]:
    source = FIXTURES_DIR / "anthropic" / "anthropic_slow_stream.json"
    document: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    events = document["upstream"]["streaming"][0]["events"]
    head = [e for e in events[:3] if e["event"] in ("message_start", "content_block_start")]
    deltas = [e for e in events if e["event"] == "content_block_delta"][:STREAM_64_DELTAS]
    tail = [e for e in events if e["event"] in ("content_block_stop", "message_delta")]
    tail.append({"event": "message_stop", "data": {"type": "message_stop"}})
    chosen = copy.deepcopy(head + deltas + tail[-3:])
    if len(chosen) != 64:
        raise RuntimeError(f"{source}: built {len(chosen)} events, not 64; the fixture changed")
    document["name"] = STREAM_64
    document["description"] = "anthropic_slow_stream cut to 64 events, for the benchmarks"
    document["upstream"]["streaming"] = [{**document["upstream"]["streaming"][0], "events": chosen}]
    document["expect"]["text"] = " ".join(str(n) for n in range(1, STREAM_64_DELTAS + 1))
    return document


def bench_scenarios() -> dict[str, Scenario]:
    """The repository's fixtures plus :data:`STREAM_64`, validated by the mock's own loader."""
    scenarios = load_scenarios(FIXTURES_DIR)
    with tempfile.TemporaryDirectory(prefix="bridge-bench-fixtures-") as directory:
        path = Path(directory) / f"{STREAM_64}.json"
        path.write_text(json.dumps(_stream_64_document()), encoding="utf-8")
        scenarios[STREAM_64] = load_scenario(path)
    return scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def serve() -> None:
        await MockUpstream(bench_scenarios(), history=MAIN_HISTORY).serve("127.0.0.1", args.port)

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        return


if __name__ == "__main__":
    main()
