"""What a recording store is, what a usage report is, and how a store is named by a URL.

Rules every store follows:

* A store is **synchronous**. The recorder calls it from a worker thread, one call at a
  time, never concurrently, so a store needs no locking for its writes.
* ``write_batch`` is **atomic** (one transaction) and **idempotent**: every record carries
  its own id, a row that exists already is left alone ("insert or ignore"), and the first
  :class:`~bridge.recording.records.InterceptionEnded` of an interception wins. So a
  retried batch or a replayed journal never duplicates anything.
* Within a batch, a store applies the starts first and the ends last, so a batch that
  holds a whole interception is recorded whole.
* Timestamps are UTC; a naive datetime is taken to be UTC already (see :func:`as_utc`).

A usage report groups interceptions by some of :data:`GROUP_BY` and sums what they used.
Both stores compute it with the same meaning, from the shared definitions here.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bridge.config import mask_url
from bridge.errors import StoreError
from bridge.protocol.usage import TOKEN_COUNTERS

from .records import Outcome, Record

__all__ = [
    "FAILED_OUTCOMES",
    "GROUP_BY",
    "GROUP_COLUMNS",
    "META_GROUP",
    "USAGE_COLUMNS",
    "Store",
    "StoreError",
    "UsageRow",
    "as_utc",
    "check_group_by",
    "mask_url",
    "meta_key",
    "open_store",
]


class Store(Protocol):
    """Where records end up. Synchronous; called from a worker thread, one call at a time
    (never concurrently)."""

    def write_batch(self, records: Sequence[Record]) -> None:
        """Write *records* in one transaction: all of them, or none (and raise)."""

    def check(self) -> None:
        """Raise :class:`StoreError` if the store is not usable (this backs ``/readyz``)."""

    def close(self) -> None:
        """Release the store's resources. Idempotent."""

    def usage(
        self, *, since: _dt.datetime | None = None, by: Sequence[str] = ("user",)
    ) -> list[UsageRow]:
        """Totals per group of :data:`GROUP_BY` names since ``since`` (all time if ``None``)."""


GROUP_BY: Final = ("user", "model", "client", "provider")
"""The names a usage report can be grouped by, besides ``meta:<key>`` (:data:`META_GROUP`)."""

META_GROUP: Final = re.compile(r"meta:([A-Za-z0-9_.-]{1,64})")
"""``meta:team`` groups by the ``team`` metadata the user's gateway key carries
(``bridgectl keys create --meta team=platform``); interceptions without it form the ``""``
group. The key's characters are limited so that it can be spelt into SQL safely."""

GROUP_COLUMNS: Final[dict[str, str]] = {
    "user": "initiator_id",
    "model": "model",
    "client": "client",
    "provider": "provider_name",
}
"""Each name of :data:`GROUP_BY` -> the InterceptionStarted field (and SQL column) behind it."""


def meta_key(name: str) -> str | None:
    """The metadata key of a ``meta:<key>`` grouping, or ``None`` for a column name."""
    match = META_GROUP.fullmatch(name)
    return match[1] if match else None


FAILED_OUTCOMES: Final = frozenset({Outcome.FAILED, Outcome.REJECTED})
"""Outcomes counted as failures in a usage report. A client that went away is not a failure."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One row of a usage report: one group of interceptions and what they used.

    ``failures`` counts interceptions that ended ``failed`` or ``rejected``;
    ``tool_calls`` counts tool-usage records; the token columns sum the token records.
    """

    group: dict[str, str]
    """The group's values, in the order asked for, e.g. ``{"user": "alice", "model": "..."}``."""
    interceptions: int
    failures: int
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int
    tool_calls: int
    cache_write_5m: int = 0
    """The part of ``cache_write`` cached for 5 minutes (Anthropic's default)."""
    cache_write_1h: int = 0
    """The part of ``cache_write`` cached for an hour (priced higher)."""
    web_search_requests: int = 0


USAGE_COLUMNS: Final[tuple[str, ...]] = ("interceptions", "failures", *TOKEN_COUNTERS, "tool_calls")
"""The figures of a :class:`UsageRow`, in report order (the token counters in column order)."""


def check_group_by(by: Sequence[str]) -> tuple[str, ...]:
    """Validate a usage report's grouping and return it as a tuple.

    A single string is one name (``by="user"`` means ``("user",)``), not a sequence of
    letters. An empty grouping is allowed: one row with the totals.
    """
    names = (by,) if isinstance(by, str) else tuple(by)
    for name in names:
        if name not in GROUP_BY and not META_GROUP.fullmatch(name):
            raise ValueError(
                f"cannot group usage by {name!r}: the allowed values are {', '.join(GROUP_BY)}"
                " and meta:KEY (a key's metadata, e.g. meta:team)"
            )
    for name in set(names):
        if names.count(name) > 1:
            raise ValueError(f"cannot group usage by {name!r} twice (got by={list(names)})")
    return names


def as_utc(moment: _dt.datetime) -> _dt.datetime:
    """*moment* in UTC. A naive datetime is taken to be UTC already.

    Naive datetimes are accepted rather than rejected because a store must never refuse a
    record: a refused batch would be retried forever and stall all recording.
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_dt.UTC)
    return moment.astimezone(_dt.UTC)


_ACCEPTED: Final = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db,"
    " postgresql://user:password@host:5432/bridge or memory://"
)


def open_store(url: str) -> Store:
    """Open the store a URL names (``recording.database`` in the configuration).

    * ``sqlite:///bridge.db``: SQLite, path relative to the working directory;
    * ``sqlite:////var/lib/bridge/bridge.db``: SQLite, absolute path;
    * ``memory://``: a :class:`~bridge.recording.memory.MemoryStore` (tests, demos);
    * ``postgresql://user:password@host:5432/bridge`` (or ``postgres://``): PostgreSQL,
      shared by every gateway process (libpq's URL, so ``?sslmode=require`` and the like
      work too).

    Error messages never show the URL's password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(
                f"invalid SQLite URL {mask_url(url)!r}: it must name a file, with three slashes"
                " for a relative path (sqlite:///bridge.db) or four for an absolute one"
                " (sqlite:////var/lib/bridge/bridge.db)"
            )
        from .sqlite import SQLiteStore  # imported here: sqlite.py imports this module

        return SQLiteStore(rest[1:])
    if sep and scheme == "memory" and rest in ("", "/"):
        from .memory import MemoryStore

        return MemoryStore()
    if sep and scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore  # imported here: psycopg loads libpq

        return PostgresStore(f"{scheme}://{rest}")  # libpq wants the scheme in lower case
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        raise StoreError(
            f"unsupported recording database URL {mask_url(url)!r}: bridge connects with"
            " psycopg itself, so drop the '+driver' part (postgresql://user:password@host/db)"
        )
    raise StoreError(f"unsupported recording database URL {mask_url(url)!r}: use {_ACCEPTED}")
