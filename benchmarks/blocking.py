"""Blocking requests: added latency at concurrency 1, and throughput with CPU per request.

Every number is a pair, through the gateway and directly against the mock, measured in the
same run: latency samples alternate gateway/direct request by request (order flipped every
iteration), throughput rounds alternate direct/gateway, so both sides see the same machine.
"Added" is the gateway's percentile minus the direct one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import trio

from benchmarks.client import DIRECT_AUTH, ROUTES, Connection, blocking_body
from benchmarks.procstat import CpuWindow
from benchmarks.results import Check, Outcome, bound_by, percentile

__all__ = ["added_latency", "throughput"]

TARGET_P50_MS = {9_000: 1.0, 150_000: 2.0}
TARGET_P99_MS = 3.0
TARGET_RPS = 1000.0


def _scenario_headers(scenario: str, direct: bool) -> tuple[tuple[bytes, bytes], ...]:
    own = ((b"x-mock-scenario", scenario.encode()),)
    return own + DIRECT_AUTH if direct else own


async def added_latency(
    gateway_port: int,
    mock_port: int,
    pids: Mapping[str, int],
    sizes: tuple[int, ...],
    samples: int,
) -> Outcome:
    """Concurrency-1 latency of each API and body size, gateway vs direct."""
    outcome = Outcome("latency")
    for api, (gateway_path, direct_path, scenario) in ROUTES.items():
        for size in sizes:
            body = blocking_body(api, size)
            gateway = await Connection.open(gateway_port)
            direct = await Connection.open(mock_port)
            sides = {
                "gateway": (gateway, gateway_path, _scenario_headers(scenario, False)),
                "direct": (direct, direct_path, _scenario_headers(scenario, True)),
            }
            times: dict[str, list[float]] = {"gateway": [], "direct": []}
            for _ in range(max(samples // 10, 10)):  # warm-up: connections, caches
                for connection, path, headers in sides.values():
                    await connection.post(path, body, headers)
            window = CpuWindow(pids)
            window.start()
            for i in range(samples):
                order = ("gateway", "direct") if i % 2 else ("direct", "gateway")
                for side in order:
                    connection, path, headers = sides[side]
                    start = time.perf_counter()
                    status = await connection.post(path, body, headers)
                    times[side].append((time.perf_counter() - start) * 1000)
                    if status != 200:
                        raise RuntimeError(f"{side} {api} {size} B: status {status}, not 200")
            window.stop()
            await gateway.aclose()
            await direct.aclose()
            stats = {
                side: {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}
                for side, values in times.items()
            }
            p50 = stats["gateway"]["p50"] - stats["direct"]["p50"]
            p99 = stats["gateway"]["p99"] - stats["direct"]["p99"]
            name = f"{api} {size // 1000} KB"
            outcome.raw[name] = {"ms": times, "stats": stats, "cpu_share": window.share}
            bound = bound_by(window.share or {})
            target_p50 = TARGET_P50_MS.get(size, 2.0)
            outcome.checks.append(
                Check(
                    f"added latency p50, {name}, c=1",
                    f"<= {target_p50} ms",
                    f"{p50:.2f} ms (gw {stats['gateway']['p50']:.2f} / "
                    f"direct {stats['direct']['p50']:.2f})",
                    p50 <= target_p50,
                    bound,
                )
            )
            outcome.checks.append(
                Check(
                    f"added latency p99, {name}, c=1",
                    f"<= {TARGET_P99_MS} ms",
                    f"{p99:.2f} ms (gw {stats['gateway']['p99']:.2f} / "
                    f"direct {stats['direct']['p99']:.2f})",
                    p99 <= TARGET_P99_MS,
                    bound,
                )
            )
    return outcome


async def _round(
    port: int,
    path: str,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
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


async def throughput(
    gateway_port: int,
    mock_port: int,
    pids: Mapping[str, int],
    levels: tuple[int, ...],
    seconds: float,
) -> Outcome:
    """Requests per second of 9 KB Anthropic requests at each concurrency, and CPU/request."""
    outcome = Outcome("throughput")
    gateway_path, direct_path, scenario = ROUTES["anthropic"]
    body = blocking_body("anthropic", 9_000)
    await _round(gateway_port, gateway_path, body, _scenario_headers(scenario, False), 4, 1.0)
    for concurrency in levels:
        row: dict[str, object] = {}
        for side, port, path in (
            ("direct", mock_port, direct_path),
            ("gateway", gateway_port, gateway_path),
        ):
            window = CpuWindow(pids)
            window.start()
            headers = _scenario_headers(scenario, side == "direct")
            ok, errors, latencies = await _round(port, path, body, headers, concurrency, seconds)
            window.stop()
            row[side] = {
                "rps": ok / seconds,
                "errors": errors,
                "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99),
                "cpu_share": window.share,
                "cpu_seconds": window.seconds,
            }
        outcome.raw[f"c={concurrency}"] = row
        gw = row["gateway"]
        assert isinstance(gw, dict)
        cpu = gw["cpu_seconds"]["gateway"] / max(gw["rps"] * seconds, 1) * 1e6
        direct = row["direct"]
        assert isinstance(direct, dict)
        outcome.checks.append(
            Check(
                f"throughput, 9 KB anthropic, c={concurrency}, 1 worker",
                ">= 1000 req/s, 0 errors",
                f"{gw['rps']:.0f} req/s, {gw['errors']} errors (direct {direct['rps']:.0f} req/s)",
                gw["rps"] >= TARGET_RPS and gw["errors"] == 0,
                bound_by(gw["cpu_share"]),
            )
        )
        outcome.checks.append(
            Check(
                f"gateway CPU per request, c={concurrency}",
                "(info)",
                f"{cpu:.0f} us ({gw['cpu_share']['gateway'] * 100:.0f} % of a core)",
                None,
            )
        )
    return outcome
