"""The records a benchmark returns: one :class:`Check` per row of the report, plus raw data.

Rules: a check's ``passed`` is None when the scenario has no target (information only), and
``bound`` names what limited the measurement when it was not the gateway ("load+mock" when
the core shared by the load generator and the mock was >= 90 % busy), so a failed target can
be told apart from a saturated harness.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTENDED", "SATURATED", "Check", "Outcome", "bound_by", "percentile"]

SATURATED = 0.9
"""CPU share (of one core) from which a process counts as saturated."""
CONTENDED = 0.25
"""Share of a pinned core taken by processes outside the benchmark from which a row is flagged."""


@dataclass(frozen=True, slots=True)
class Check:
    """One report row: ``measured`` against ``target``."""

    scenario: str
    target: str
    measured: str
    passed: bool | None
    bound: str = ""


@dataclass(slots=True)
class Outcome:
    """Everything one benchmark produced: report rows and raw data for JSON and plots."""

    name: str
    checks: list[Check] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0.5: median); NaN when empty."""
    if not values:
        return float("nan")
    if fraction == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def bound_by(share: dict[str, float], server: str = "gateway") -> str:
    """What saturated or disturbed a window: "" (nothing, ``server`` measured), or names.

    ``server`` is the process under test: the gateway, or the peer gateway in its rows.
    With per-core readings (``core0``, ``core1``: see :class:`~benchmarks.procstat.CpuWindow`)
    it also names load from outside the benchmark that took :data:`CONTENDED` or more of the
    server's core (core 0) or the harness's (core 1), since that moves every number.
    """
    names = []
    if share.get(server, 0.0) >= SATURATED:
        names.append(server)
    if share.get("load", 0.0) + share.get("mock", 0.0) >= SATURATED:
        names.append("load+mock")
    ours = {
        "core0": share.get("gateway", 0.0) + share.get("peer", 0.0),
        "core1": share.get("load", 0.0) + share.get("mock", 0.0),
    }
    others = [
        f"{core} {(share[core] - used) * 100:.0f} %"
        for core, used in ours.items()
        if core in share and share[core] - used >= CONTENDED
    ]
    if others:
        names.append("other load on " + ", ".join(others))
    return "; ".join(names)
