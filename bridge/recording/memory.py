"""A store that keeps records in memory: for tests, demos and embedding without a database.

It follows the store rules of :mod:`bridge.recording.store` exactly as the SQLite store
does (idempotent by id, first end wins, same usage report), so a test written against it
says something true about the real store. Its readers are the SQL stores' too (same
methods, same rows, valued as SQLite gives them back), so one test reads any store. A lock
makes it safe to read from any thread while the recorder writes from a worker thread.

It keeps gateway keys (:mod:`bridge.identity.keys`) as the SQLite store does: the prefix and
the hash,
never the key, and the same answers from the same calls.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

from bridge.identity.keys import (
    GatewayKey,
    KeyStore,
    check_new_key,
    generate_key,
    hash_key,
    key_prefix,
    secret_matches,
)
from bridge.protocol.usage import TOKEN_COUNTERS

from .records import (
    InterceptionEnded,
    InterceptionStarted,
    ModelThought,
    PassthroughCall,
    PromptUsage,
    Record,
    TokenUsage,
    ToolUsage,
    utcnow,
)
from .sql import END_COLUMNS, stored_row
from .sqlite import DIALECT as SQLITE
from .store import (
    FAILED_OUTCOMES,
    GROUP_COLUMNS,
    USAGE_COLUMNS,
    UsageRow,
    as_utc,
    check_group_by,
    meta_key,
)

__all__ = ["MemoryStore"]

_Kept = TypeVar(
    "_Kept", InterceptionStarted, TokenUsage, PromptUsage, ToolUsage, ModelThought, PassthroughCall
)

_TIME_FIELDS: Final[dict[type[Record], str]] = {
    InterceptionStarted: "started_at",
    PassthroughCall: "started_at",
}
_NOT_ENDED: Final = dict.fromkeys(END_COLUMNS)

_KINDS: Final = (
    InterceptionStarted,
    TokenUsage,
    PromptUsage,
    ToolUsage,
    ModelThought,
    PassthroughCall,
)


class MemoryStore(KeyStore):
    """Records kept in lists, in the order they were first written.

    It implements identity's :class:`~bridge.identity.keys.KeyStore` by name, so that
    mypy checks it against that protocol.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per record type, id -> record; a dict keeps insertion order and makes writes
        # idempotent by id.
        self._records: dict[type[Record], dict[str, Record]] = {kind: {} for kind in _KINDS}
        self._ended: dict[str, InterceptionEnded] = {}
        # Gateway keys: id -> (key, hash of its secret), and prefix -> id.
        self._keys: dict[str, tuple[GatewayKey, str]] = {}
        self._key_ids: dict[str, str] = {}
        self.closed = False

    # -- the Store protocol ---------------------------------------------------------------

    def write_batch(self, records: Sequence[Record]) -> None:
        """Keep *records*: all of them, or none if one is not a record (TypeError)."""
        for record in records:
            if type(record) not in self._records and not isinstance(record, InterceptionEnded):
                raise TypeError(
                    f"cannot record a {type(record).__name__}: a record is one of"
                    f" {', '.join(kind.__name__ for kind in (*_KINDS, InterceptionEnded))}"
                )
        with self._lock:
            for record in records:
                if isinstance(record, InterceptionEnded):
                    self._ended.setdefault(record.interception_id, record)  # first end wins
                else:
                    self._records[type(record)].setdefault(record.id, record)

    def check(self) -> None:
        """Always usable."""

    def close(self) -> None:
        """Mark the store closed; the records stay readable."""
        self.closed = True

    # -- reading --------------------------------------------------------------------------

    def _all(self, kind: type[_Kept], interception_id: str | None = None) -> list[_Kept]:
        with self._lock:
            kept: list[_Kept] = list(self._records[kind].values())  # type: ignore[arg-type]
        if interception_id is None:
            return kept
        return [
            record for record in kept if getattr(record, "interception_id", None) == interception_id
        ]

    # The readers of SQLStore, with the same rows: dicts of the table's columns, valued as
    # the SQLite store gives them back (timestamps as ISO text, flags as 0/1, JSON as text),
    # oldest first, so that one test reads any store.

    def _rows(self, kind: type[_Kept], interception_id: str | None) -> list[dict[str, Any]]:
        kept = self._all(kind, interception_id)
        kept.sort(key=lambda record: as_utc(getattr(record, _TIME_FIELDS.get(kind, "created_at"))))
        return [stored_row(record, SQLITE) for record in kept]

    def interceptions(self) -> list[dict[str, Any]]:
        """Every interception row, with its end's columns (``None`` until it ended)."""
        with self._lock:
            ended = dict(self._ended)
        return [
            row | (stored_row(ended[row["id"]], SQLITE) if row["id"] in ended else _NOT_ENDED)
            for row in self._rows(InterceptionStarted, None)
        ]

    def token_usages(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Token-usage rows of one interception or of all."""
        return self._rows(TokenUsage, interception_id)

    def prompts(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Prompt rows of one interception or of all."""
        return self._rows(PromptUsage, interception_id)

    def tool_usages(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Tool-usage rows of one interception or of all."""
        return self._rows(ToolUsage, interception_id)

    def model_thoughts(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Model-thought rows of one interception or of all."""
        return self._rows(ModelThought, interception_id)

    def passthrough_calls(self) -> list[dict[str, Any]]:
        """Every passthrough call row."""
        return self._rows(PassthroughCall, None)

    def usage(
        self, *, since: _dt.datetime | None = None, by: Sequence[str] = ("user",)
    ) -> list[UsageRow]:
        """The usage report of :meth:`bridge.recording.sqlite.SQLiteStore.usage`, computed
        over the records in memory."""
        names = check_group_by(by)
        start = None if since is None else as_utc(since)
        picked = [
            i
            for i in self._all(InterceptionStarted)
            if start is None or as_utc(i.started_at) >= start
        ]
        group_of = {i.id: tuple(_group_value(i, name) for name in names) for i in picked}
        with self._lock:
            ended = dict(self._ended)
        totals: dict[tuple[str, ...], dict[str, int]] = {}
        for interception in picked:
            total = totals.setdefault(group_of[interception.id], dict.fromkeys(USAGE_COLUMNS, 0))
            total["interceptions"] += 1
            end = ended.get(interception.id)
            total["failures"] += end is not None and end.outcome in FAILED_OUTCOMES
        for usage in self._all(TokenUsage):
            if usage.interception_id in group_of:
                total = totals[group_of[usage.interception_id]]
                for name in TOKEN_COUNTERS:
                    total[name] += getattr(usage, name)
        for tool in self._all(ToolUsage):
            if tool.interception_id in group_of:
                totals[group_of[tool.interception_id]]["tool_calls"] += 1
        return [
            UsageRow(dict(zip(names, group, strict=True)), **total)
            for group, total in sorted(totals.items())
        ]

    # -- gateway keys (bridge.identity.keys.KeyStore) ----------------------------------------------

    def create_key(self, user: str, metadata: Mapping[str, str]) -> tuple[str, GatewayKey]:
        """Create a key for *user*, as :meth:`bridge.recording.sqlite.SQLiteStore.create_key`."""
        kept = check_new_key(user, metadata)
        with self._lock:
            while True:  # a taken prefix (48 random bits) is drawn again
                secret, prefix = generate_key()
                if prefix not in self._key_ids:
                    break
            key = GatewayKey(str(uuid.uuid4()), user, prefix, kept, utcnow(), None, None)
            self._keys[key.id] = (key, hash_key(secret))
            self._key_ids[prefix] = key.id
        return secret, _copy(key)

    def list_keys(self) -> list[GatewayKey]:
        """Every key, revoked ones included, oldest first."""
        with self._lock:
            return [_copy(key) for key, _ in self._keys.values()]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke *key_id*; ``False`` if there is no such key or it was revoked already."""
        with self._lock:
            kept = self._keys.get(key_id)
            if kept is None or kept[0].revoked_at is not None:
                return False
            self._keys[key_id] = (dataclasses.replace(kept[0], revoked_at=utcnow()), kept[1])
            return True

    def find_key(self, secret: str) -> GatewayKey | None:
        """The active key whose secret is *secret*: by prefix, then one constant-time
        comparison of hashes, made even when the prefix is unknown."""
        prefix = key_prefix(secret)
        with self._lock:
            key_id = None if prefix is None else self._key_ids.get(prefix)
            kept = None if key_id is None else self._keys[key_id]
        if not secret_matches(secret, None if kept is None else kept[1]):
            return None
        assert kept is not None  # secret_matches is never true without a stored hash
        return None if kept[0].revoked_at is not None else _copy(kept[0])

    def touch_key(self, key_id: str, when: _dt.datetime) -> None:
        """Set the key's ``last_used_at`` to *when*, unless it is later already."""
        moment = as_utc(when)
        with self._lock:
            kept = self._keys.get(key_id)
            if kept is None:
                return
            last = kept[0].last_used_at
            if last is None or last < moment:
                self._keys[key_id] = (dataclasses.replace(kept[0], last_used_at=moment), kept[1])


def _copy(key: GatewayKey) -> GatewayKey:
    """*key* with a metadata dict of its own, so a caller cannot change what is stored
    (the SQLite store returns fresh values too)."""
    return dataclasses.replace(key, metadata=dict(key.metadata))


def _group_value(interception: InterceptionStarted, name: str) -> str:
    """The value of one grouping (see :func:`~bridge.recording.store.check_group_by`)."""
    key = meta_key(name)
    if key is None:
        return str(getattr(interception, GROUP_COLUMNS[name]))
    return str(interception.metadata.get(key, ""))
