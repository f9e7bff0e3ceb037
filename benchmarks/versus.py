"""Report rows that compare bridge with the peer gateway (issue 8, item 3).

Targets: bridge's added latency at most a third of the peer's (:data:`LATENCY_SHARE`), and its
throughput at least three times the peer's (:data:`THROUGHPUT_FACTOR`). Both sides' numbers come
from the same run and the same mock, so a noisy machine moves both; the ratio is what counts.
"""

from __future__ import annotations

from typing import Final

from benchmarks.results import Check

__all__ = ["LATENCY_SHARE", "THROUGHPUT_FACTOR", "added_versus_peer", "throughput_versus_peer"]

LATENCY_SHARE: Final = 1 / 3
THROUGHPUT_FACTOR: Final = 3.0


def added_versus_peer(
    what: str, bridge_ms: float, peer_ms: float, peer: str, bound: str = ""
) -> Check:
    """bridge's added milliseconds against the peer's, for the same scenario and statistic.

    "Added" is a difference of two noisy percentiles and can come out at or below zero. A
    peer that added nothing leaves no ratio to judge (no verdict); a bridge that added
    nothing while the peer did passes.
    """
    both = f"bridge {bridge_ms:+.2f} ms / {peer} {peer_ms:+.2f} ms"
    if peer_ms <= 0:
        measured, passed = f"no ratio: {peer} added nothing measurable ({both})", None
    elif bridge_ms <= 0:
        measured, passed = f"0 of it: bridge added nothing measurable ({both})", True
    else:
        share = bridge_ms / peer_ms
        measured, passed = f"{share:.2f} of it ({both})", share <= LATENCY_SHARE
    return Check(f"{what}: bridge vs {peer}", "<= 1/3 of the peer's", measured, passed, bound)


def throughput_versus_peer(
    what: str,
    bridge_rps: float,
    bridge_errors: int,
    peer_rps: float,
    peer_errors: int,
    peer: str,
    bound: str = "",
) -> Check:
    """bridge's requests per second against the peer's; bridge must also answer every request."""
    both = (
        f"bridge {bridge_rps:.0f} req/s, {bridge_errors} errors / "
        f"{peer} {peer_rps:.0f} req/s, {peer_errors} errors"
    )
    factor = bridge_rps / peer_rps if peer_rps > 0 else float("inf")
    return Check(
        f"{what}: bridge vs {peer}",
        ">= 3x the peer's, 0 errors",
        f"{factor:.1f}x ({both})" if peer_rps > 0 else f"{peer} answered nothing ({both})",
        factor >= THROUGHPUT_FACTOR and bridge_errors == 0,
        bound,
    )
