"""Write a run's results: ``results.json`` (raw), ``report.md`` (the table) and PNG plots.

Plots need matplotlib (installed by ``make bench``); without it the plots are skipped and the
report says so, because the numbers matter more than the pictures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.results import Check, Outcome

__all__ = ["table", "write"]


def _verdict(check: Check) -> str:
    if check.passed is None:
        # A row with a real target but no verdict: the run could not judge it.
        verdict = "info" if check.target.startswith("(") else "n/a"
    else:
        verdict = "PASS" if check.passed else "FAIL"
    return f"{verdict} (bound: {check.bound})" if check.bound else verdict


def table(checks: Sequence[Check]) -> str:
    """The Markdown table of every check."""
    lines = ["| scenario | target | measured | result |", "|---|---|---|---|"]
    lines += [f"| {c.scenario} | {c.target} | {c.measured} | {_verdict(c)} |" for c in checks]
    return "\n".join(lines)


def _sides(measured: Mapping[str, Any]) -> list[str]:
    """The sides present in one measurement, in plotting order."""
    return [side for side in ("direct", "gateway", "peer") if side in measured]


def _label(side: str, peer: str) -> str:
    return peer if side == "peer" and peer else side


def _plots(directory: Path, raw: Mapping[str, Any], peer: str) -> list[str]:
    """PNG plots of latency, throughput and gaps; ``peer`` names the peer side, if any."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if "latency" in raw:
        figure, axes = plt.subplots(figsize=(11 if peer else 9, 5))
        data, labels = [], []
        for name, measured in raw["latency"].items():
            for side in _sides(measured["ms"]):
                data.append(measured["ms"][side])
                labels.append(f"{name}\n{_label(side, peer)}")
        axes.boxplot(data, showfliers=False)
        axes.set_xticks(range(1, len(labels) + 1), labels, rotation=60, fontsize=7)
        axes.set_ylabel("latency, ms (c=1)" + (", log scale" if peer else ""))
        if peer:
            axes.set_yscale("log")  # the peer is an order of magnitude slower
        axes.set_title(
            "Latency: gateway" + (f" and {peer}" if peer else "") + " vs direct to the mock"
        )
        figure.tight_layout()
        figure.savefig(directory / "latency.png")
        written.append("latency.png")
    if "throughput" in raw:
        figure, axes = plt.subplots()
        levels = [int(k.split("=")[1]) for k in raw["throughput"]]
        for side in _sides(next(iter(raw["throughput"].values()))):
            rps = [v[side]["rps"] for v in raw["throughput"].values()]
            axes.plot(levels, rps, "o-", label=_label(side, peer))
        axes.set_xlabel("concurrency")
        axes.set_ylabel("req/s")
        axes.set_title("Throughput vs concurrency (9 KB, 1 worker)")
        axes.legend()
        figure.savefig(directory / "throughput.png")
        written.append("throughput.png")
    if "streams" in raw:
        figure, axes = plt.subplots()
        counts = [int(k) for k in raw["streams"]]
        for side in _sides(next(iter(raw["streams"].values()))):
            for stat in ("gap_p50_ms", "gap_p99_ms"):
                values = [v[side][stat] for v in raw["streams"].values()]
                axes.plot(counts, values, "o-", label=f"{_label(side, peer)} {stat[4:7]}")
        axes.set_xlabel("concurrent streams (50 events/s each)")
        axes.set_ylabel("inter-event gap, ms")
        axes.set_title("Inter-event gap vs concurrent streams")
        axes.legend()
        figure.savefig(directory / "streams.png")
        written.append("streams.png")
    plt.close("all")
    return written


def write(
    directory: Path,
    outcomes: Sequence[Outcome],
    machine: Mapping[str, str],
    mode: str,
    peer: str = "",
) -> str:
    """Write the run into ``directory``; return the report's Markdown.

    ``peer`` names the peer gateway of a ``--peers`` run (its side is ``peer`` in raw data).
    """
    directory.mkdir(parents=True, exist_ok=True)
    raw = {outcome.name: outcome.raw for outcome in outcomes}
    checks = [check for outcome in outcomes for check in outcome.checks]
    document = {
        "mode": mode,
        "machine": machine,
        "peer": peer,
        "checks": [
            {
                "scenario": c.scenario,
                "target": c.target,
                "measured": c.measured,
                "passed": c.passed,
                "bound": c.bound,
            }
            for c in checks
        ],
        "raw": raw,
    }
    (directory / "results.json").write_text(json.dumps(document, indent=1, default=str))
    plots = _plots(directory, raw, peer)
    described = ", ".join(f"{key} {value}" for key, value in machine.items())
    report = (
        f"# bridge benchmarks ({mode})\n\nMachine: {described}.\n"
        "Gateway pinned to core 0; mock upstream and load generator on core 1. "
        + (f"{peer} (stateless, one worker) also pinned to core 0. " if peer else "")
        + '"bound: load+mock" marks rows where core 1 was >= 90 % busy, so the harness, '
        'not the gateway, limited the number; "other load on coreK N %" marks rows where '
        "processes outside the benchmark took that much of a pinned core (a shared machine), "
        "so the row says more about the machine than about the gateway.\n\n"
        + table(checks)
        + "\n\n"
        + ("\n".join(f"![{p}]({p})" for p in plots) if plots else "(no plots: matplotlib missing)")
        + "\n"
    )
    (directory / "report.md").write_text(report)
    return report
