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

__all__ = ["SATURATED", "Check", "Outcome", "bound_by", "percentile"]

SATURATED = 0.9
"""CPU share (of one core) from which a process counts as saturated."""


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
    """What saturated during a window: "" (nothing, ``server`` measured), or names.

    ``server`` is the process under test: the gateway, or the peer gateway in its rows.
    """
    names = []
    if share.get(server, 0.0) >= SATURATED:
        names.append(server)
    if share.get("load", 0.0) + share.get("mock", 0.0) >= SATURATED:
        names.append("load+mock")
    return ",".join(names)
