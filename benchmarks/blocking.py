"""Blocking requests: added latency at concurrency 1, and throughput with CPU per request.

Every number is a pair, through the gateway and directly against the mock (a triple with the
peer gateway of ``--peers``), measured in the same run: latency samples alternate between the
sides request by request (the side that goes first rotates every iteration), throughput rounds
run direct, gateway, peer per level, so all sides see the same machine. "Added" is a side's
percentile minus the direct one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import trio

from benchmarks.client import Connection, blocking_body
from benchmarks.procstat import CpuWindow
from benchmarks.results import Check, Outcome, bound_by, percentile
from benchmarks.targets import SCENARIOS, Headers, Sides
from benchmarks.versus import added_versus_peer, throughput_versus_peer

__all__ = ["added_latency", "closed_loop", "throughput"]

TARGET_P50_MS = {9_000: 1.0, 150_000: 2.0}
TARGET_P99_MS = 3.0
TARGET_RPS = 1000.0


def _scenario(api: str) -> Headers:
    return ((b"x-mock-scenario", SCENARIOS[api].encode()),)


async def added_latency(
    sides: Sides, pids: Mapping[str, int], sizes: tuple[int, ...], samples: int
) -> Outcome:
    """Concurrency-1 latency of each API and body size, gateway (and peer) vs direct."""
    outcome = Outcome("latency")
    targets = list(sides)
    for api in SCENARIOS:
        for size in sizes:
            body = blocking_body(api, size)
            connections = {t.name: await Connection.open(t.port) for t in targets}
            times: dict[str, list[float]] = {t.name: [] for t in targets}
            for _ in range(max(samples // 10, 10)):  # warm-up: connections, caches
                for t in targets:
                    await connections[t.name].post(t.paths[api], body, t.headers(_scenario(api)))
            window = CpuWindow(pids)
            window.start()
            for i in range(samples):
                turn = i % len(targets)  # each side goes first as often as the others
                for t in targets[turn:] + targets[:turn]:
                    start = time.perf_counter()
                    status = await connections[t.name].post(
                        t.paths[api], body, t.headers(_scenario(api))
                    )
                    times[t.name].append((time.perf_counter() - start) * 1000)
                    if status != 200:
                        raise RuntimeError(f"{t.name} {api} {size} B: status {status}, not 200")
            window.stop()
            for connection in connections.values():
                await connection.aclose()
            stats = {
                side: {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}
                for side, values in times.items()
            }
            name = f"{api} {size // 1000} KB"
            outcome.raw[name] = {"ms": times, "stats": stats, "cpu_share": window.share}
            share = window.share or {}
            for stat, target_ms in (("p50", TARGET_P50_MS.get(size, 2.0)), ("p99", TARGET_P99_MS)):
                added = stats["gateway"][stat] - stats["direct"][stat]
                outcome.checks.append(
                    Check(
                        f"added latency {stat}, {name}, c=1",
                        f"<= {target_ms} ms",
                        f"{added:.2f} ms (gw {stats['gateway'][stat]:.2f} / "
                        f"direct {stats['direct'][stat]:.2f})",
                        added <= target_ms,
                        bound_by(share),
                    )
                )
                if sides.peer is not None:
                    outcome.checks.append(
                        added_versus_peer(
                            f"added latency {stat}, {name}, c=1",
                            added,
                            stats["peer"][stat] - stats["direct"][stat],
                            sides.peer_label,
                            bound_by(share, "peer"),
                        )
                    )
    return outcome


async def closed_loop(
    port: int,
    path: str,
    body: bytes,
    headers: Headers,
    concurrency: int,
    seconds: float,
) -> tuple[int, int, list[float]]:
    """Closed-loop load for ``seconds``: (answered 200, errors, latencies in ms)."""
    ok = errors = 0
    latencies: list[float] = []
    connections = [await Connection.open(port) for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    async def worker(connection: Connection) -> None:
        nonlocal ok, errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                status = await connection.post(path, body, headers)
            except (RuntimeError, trio.BrokenResourceError):
                errors += 1
                return
            latencies.append((time.perf_counter() - start) * 1000)
            if status == 200:
                ok += 1
            else:
                errors += 1

    async with trio.open_nursery() as nursery:
        for connection in connections:
            nursery.start_soon(worker, connection)
    for connection in connections:
        await connection.aclose()
    return ok, errors, latencies


@dataclass(frozen=True, slots=True)
class _Round:
    """One side's closed-loop round at one concurrency."""

    rps: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_share: dict[str, float]
    cpu_seconds: dict[str, float]
    cpu_us_per_request: float
    """CPU time of the side's own server per answered request (direct: the mock's)."""


async def throughput(
    sides: Sides, pids: Mapping[str, int], levels: tuple[int, ...], seconds: float
) -> Outcome:
    """Requests per second of 9 KB Anthropic requests at each concurrency, and CPU/request.

    Per level the rounds run direct, gateway, then peer, one after the other.
    """
    outcome = Outcome("throughput")
    body = blocking_body("anthropic", 9_000)
    own = _scenario("anthropic")
    for proxy in sides.proxies:  # warm-up
        await closed_loop(proxy.port, proxy.paths["anthropic"], body, proxy.headers(own), 4, 1.0)
    for concurrency in levels:
        row: dict[str, _Round] = {}
        for t in sides:
            window = CpuWindow(pids)
            window.start()
            ok, errors, latencies = await closed_loop(
                t.port, t.paths["anthropic"], body, t.headers(own), concurrency, seconds
            )
            window.stop()
            share, cpu = window.share or {}, window.seconds or {}
            server = "mock" if t.name == "direct" else t.name
            row[t.name] = _Round(
                ok / seconds,
                errors,
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
                share,
                cpu,
                cpu.get(server, 0.0) / max(ok, 1) * 1e6,
            )
        outcome.raw[f"c={concurrency}"] = {side: asdict(r) for side, r in row.items()}
        outcome.checks += _throughput_checks(sides, row, concurrency)
    return outcome


def _throughput_checks(sides: Sides, row: Mapping[str, _Round], concurrency: int) -> list[Check]:
    gw = row["gateway"]
    checks = [
        Check(
            f"throughput, 9 KB anthropic, c={concurrency}, 1 worker",
            ">= 1000 req/s, 0 errors",
            f"{gw.rps:.0f} req/s, {gw.errors} errors (direct {row['direct'].rps:.0f} req/s)",
            gw.rps >= TARGET_RPS and gw.errors == 0,
            bound_by(gw.cpu_share),
        ),
        Check(
            f"gateway CPU per request, c={concurrency}",
            "(info)",
            f"{gw.cpu_us_per_request:.0f} us "
            f"({gw.cpu_share.get('gateway', 0.0) * 100:.0f} % of a core)",
            None,
        ),
    ]
    if sides.peer is None:
        return checks
    peer = row["peer"]
    return [
        *checks,
        Check(
            f"{sides.peer_label} CPU per request, c={concurrency}",
            "(info)",
            f"{peer.cpu_us_per_request:.0f} us "
            f"({peer.cpu_share.get('peer', 0.0) * 100:.0f} % of a core)",
            None,
        ),
        throughput_versus_peer(
            f"throughput, 9 KB anthropic, c={concurrency}",
            gw.rps,
            gw.errors,
            peer.rps,
            peer.errors,
            sides.peer_label,
            bound_by(peer.cpu_share, "peer"),
        ),
    ]
