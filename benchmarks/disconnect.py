"""Disconnect storm: streams cut at random moments; how fast the gateway closes upstream.

The mock upstream runs in this process (on the load core), so the client's cut and the mock's
observation of the upstream close are timed on the same trio clock. Each stream carries an
``x-bench-cut: <n>`` header; :class:`_CutWatchingMock` notes, per stream, when its sending
stopped because the peer (the gateway) closed. After the storm the gateway must hold no more
file descriptors than before, and once stopped its database must hold exactly one ended
interception per stream.
"""

from __future__ import annotations

import random
from pathlib import Path

import h11
import trio

from benchmarks.client import Connection, stream_body
from benchmarks.procstat import fd_count
from benchmarks.results import Check, Outcome, percentile
from benchmarks.scenarios import bench_scenarios
from bridge.mock.upstream import MockUpstream, ScenarioResponse
from bridge.recording.sqlite import SQLiteStore

__all__ = ["CutWatchingMock", "check_records", "storm"]


class CutWatchingMock(MockUpstream):
    """The mock, noting when each tagged stream stopped because its client left.

    It hooks ``_send_stream`` because the mock's public ``disconnects`` list does not say
    which stream a disconnect belongs to, and the storm runs many streams at once.
    """

    def __init__(self) -> None:
        super().__init__(bench_scenarios())
        self.closed: dict[str, float] = {}
        self.seen: dict[str, trio.Event] = {}

    async def _send_stream(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        response: ScenarioResponse,
        pace: float,
    ) -> bool:
        cut = self.requests[-1].header("x-bench-cut")  # no checkpoint since it was appended
        whole = await super()._send_stream(conn, stream, response, pace)
        if cut is not None and not whole:
            self.closed[cut] = trio.current_time()
            self.seen.setdefault(cut, trio.Event()).set()
        return whole


async def _cut_one(port: int, mock: CutWatchingMock, tag: str, events: int) -> float:
    connection = await Connection.open(port)
    headers = (
        (b"x-mock-scenario", b"anthropic_slow_stream"),
        (b"x-mock-pace-ms", b"10"),
        (b"x-bench-cut", tag.encode()),
    )
    seen = mock.seen.setdefault(tag, trio.Event())
    await connection.stream("/anthropic/v1/messages", stream_body(), headers, stop_after=events)
    cut = trio.current_time()
    await connection.aclose()
    with trio.move_on_after(5):
        await seen.wait()
        return (mock.closed[tag] - cut) * 1000
    return float("inf")


async def storm(
    mock: CutWatchingMock, gateway_port: int, gateway_pid: int, count: int, concurrency: int
) -> Outcome:
    """Cut ``count`` streams, ``concurrency`` at a time, each after 1-60 events."""
    outcome = Outcome("disconnect")
    await _cut_one(gateway_port, mock, "warm-up", 3)
    await trio.sleep(0.5)
    fds_before = fd_count(gateway_pid)
    rng = random.Random(7)
    cuts = [rng.randint(1, 60) for _ in range(count)]
    delays: list[float] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int) -> None:
        async with limiter:
            delays.append(await _cut_one(gateway_port, mock, str(index), cuts[index]))

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)
    fds_after = fd_count(gateway_pid)
    with trio.move_on_after(5):
        while fds_after > fds_before:
            await trio.sleep(0.1)
            fds_after = fd_count(gateway_pid)
    median, worst = percentile(delays, 0.5), max(delays)
    outcome.raw = {"ms": delays, "fds_before": fds_before, "fds_after": fds_after}
    outcome.checks += [
        Check(
            f"upstream closed after cut, median ({count} streams)",
            "<= 10 ms",
            f"{median:.2f} ms",
            median <= 10,
        ),
        Check("upstream closed after cut, max", "<= 100 ms", f"{worst:.2f} ms", worst <= 100),
        Check(
            "leaked gateway fds after the storm",
            "0",
            f"{fds_after - fds_before} ({fds_before} -> {fds_after})",
            fds_after <= fds_before,
        ),
    ]
    return outcome


def check_records(database: Path, expected: int) -> Check:
    """One ended interception record per stream (read after the gateway stopped)."""
    with SQLiteStore(database) as store:
        rows = store.interceptions()
    ended = sum(1 for row in rows if row["ended_at"] is not None)
    return Check(
        "ended interception records after the storm",
        f"{expected} (one per stream)",
        f"{len(rows)} interceptions, {ended} ended",
        len(rows) == expected == ended,
    )
