"""Usage reports: the period they cover and how they are rendered.

Shared by ``bridgectl usage`` and ``GET /api/v1/usage``, so both read the same
``--since`` values and report the same columns.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Sequence

from bridge.config import ConfigError
from bridge.recording.store import USAGE_COLUMNS, UsageRow

__all__ = ["COLUMNS", "MAX_SINCE_DAYS", "format_usage", "parse_since", "usage_records"]

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The longest duration back: a century covers any real report, and stays far from the
# datetime range (a larger one overflowed into a 500 in the usage API).
MAX_SINCE_DAYS = 36500


def parse_since(text: str, *, now: dt.datetime | None = None, name: str = "--since") -> dt.datetime:
    """``24h``/``7d``-style durations back from now (at most :data:`MAX_SINCE_DAYS`), or
    an ISO date or datetime (UTC). ``name`` is the option or parameter errors name."""
    now = now or dt.datetime.now(dt.UTC)
    if match := _DURATION.match(text.strip()):
        # Compared as text first: a number of 4,300 digits or more cannot even be an int.
        digits = match[1].lstrip("0") or "0"
        seconds = int(digits) * _UNITS[match[2]] if len(digits) <= 12 else None
        if seconds is None or seconds > MAX_SINCE_DAYS * 86400:
            raise ConfigError(
                f"{name} must be a duration from 0s to {MAX_SINCE_DAYS}d (100 years),"
                f" or a date like 2026-11-01, got {text[:40]!r}"
            )
        return now - dt.timedelta(seconds=seconds)
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{name} must be a duration like 24h or 7d, or a date like 2026-11-01,"
            f" got {text[:40]!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


COLUMNS = USAGE_COLUMNS
"""The figures of a report row, after its group's columns."""


def usage_records(rows: Sequence[UsageRow], by: Sequence[str]) -> list[dict[str, object]]:
    """One flat record per row: the group's columns, then the figures."""
    return [
        {**{key: row.group.get(key, "") for key in by}, **{c: getattr(row, c) for c in COLUMNS}}
        for row in rows
    ]


def format_usage(rows: Sequence[UsageRow], by: Sequence[str], fmt: str) -> str:
    """Render a usage report as an aligned table, JSON or CSV."""
    records = usage_records(rows, by)
    header = [*by, *COLUMNS]
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue().rstrip("\n")
    cells = [header, *[[str(r[h]) for h in header] for r in records]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < len(by) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    if not records:
        lines.append("(no interceptions recorded in this period)")
    return "\n".join(lines)
