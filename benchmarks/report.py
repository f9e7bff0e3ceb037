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
    verdict = "info" if check.passed is None else "PASS" if check.passed else "FAIL"
    return f"{verdict} (bound: {check.bound})" if check.bound else verdict


def table(checks: Sequence[Check]) -> str:
    """The Markdown table of every check."""
    lines = ["| scenario | target | measured | result |", "|---|---|---|---|"]
    lines += [f"| {c.scenario} | {c.target} | {c.measured} | {_verdict(c)} |" for c in checks]
    return "\n".join(lines)


def _plots(directory: Path, raw: Mapping[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if "latency" in raw:
        figure, axes = plt.subplots(figsize=(9, 5))
        names = list(raw["latency"])
        data, labels = [], []
        for name in names:
            for side in ("direct", "gateway"):
                data.append(raw["latency"][name]["ms"][side])
                labels.append(f"{name}\n{side}")
        axes.boxplot(data, showfliers=False)
        axes.set_xticks(range(1, len(labels) + 1), labels, rotation=60, fontsize=7)
        axes.set_ylabel("latency, ms (c=1)")
        axes.set_title("Latency: gateway vs direct to the mock")
        figure.tight_layout()
        figure.savefig(directory / "latency.png")
        written.append("latency.png")
    if "throughput" in raw:
        figure, axes = plt.subplots()
        levels = [int(k.split("=")[1]) for k in raw["throughput"]]
        for side in ("direct", "gateway"):
            axes.plot(
                levels, [v[side]["rps"] for v in raw["throughput"].values()], "o-", label=side
            )
        axes.set_xlabel("concurrency")
        axes.set_ylabel("req/s")
        axes.set_title("Throughput vs concurrency (9 KB, 1 worker)")
        axes.legend()
        figure.savefig(directory / "throughput.png")
        written.append("throughput.png")
    if "streams" in raw:
        figure, axes = plt.subplots()
        counts = [int(k) for k in raw["streams"]]
        for side in ("direct", "gateway"):
            for stat in ("gap_p50_ms", "gap_p99_ms"):
                values = [v[side][stat] for v in raw["streams"].values()]
                axes.plot(counts, values, "o-", label=f"{side} {stat[4:7]}")
        axes.set_xlabel("concurrent streams (50 events/s each)")
        axes.set_ylabel("inter-event gap, ms")
        axes.set_title("Inter-event gap vs concurrent streams")
        axes.legend()
        figure.savefig(directory / "streams.png")
        written.append("streams.png")
    plt.close("all")
    return written


def write(
    directory: Path, outcomes: Sequence[Outcome], machine: Mapping[str, str], mode: str
) -> str:
    """Write the run into ``directory``; return the report's Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {outcome.name: outcome.raw for outcome in outcomes}
    checks = [check for outcome in outcomes for check in outcome.checks]
    document = {
        "mode": mode,
        "machine": machine,
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
    plots = _plots(directory, raw)
    described = ", ".join(f"{key} {value}" for key, value in machine.items())
    report = (
        f"# bridge benchmarks ({mode})\n\nMachine: {described}.\n"
        "Gateway pinned to core 0; mock upstream and load generator on core 1. "
        '"bound: load+mock" marks rows where core 1 was >= 90 % busy, so the harness, '
        "not the gateway, limited the number.\n\n"
        + table(checks)
        + "\n\n"
        + ("\n".join(f"![{p}]({p})" for p in plots) if plots else "(no plots: matplotlib missing)")
        + "\n"
    )
    (directory / "report.md").write_text(report)
    return report
