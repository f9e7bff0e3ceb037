"""The embedded store: records in one SQLite file, with versioned migrations.

Rules:

* One connection per store, opened with ``check_same_thread=False``: writes come from
  trio worker threads, serialized by the recorder; a lock also serializes the readers
  (``usage``, the test readers) and ``check``, which may run on other threads.
* WAL journal, ``synchronous=NORMAL`` and a busy timeout: readers (``bridge usage``) never
  block the gateway's writes, a commit costs no fsync, and a second process waits for
  the write lock instead of failing at once.
* The schema is versioned: ``schema_migrations`` lists the applied versions, and
  :data:`MIGRATIONS` is the ordered list of scripts. Missing migrations are applied
  inside ``BEGIN IMMEDIATE`` and the version is read again once the lock is held, so two
  processes starting at once apply each migration exactly once.
* Writes are idempotent: ``INSERT OR IGNORE`` on the record id, and an end is an
  ``UPDATE ... WHERE ended_at IS NULL`` (the first end wins). One transaction per batch,
  one ``executemany`` per record type.
* Timestamps are ISO-8601 UTC text of fixed width (microseconds, ``+00:00``), so text
  order is time order. JSON values (metadata, extra counters, tool input) are text.
* Gateway keys (:mod:`bridge.keys`) live in ``bridge_gateway_keys``: the prefix and the hash,
  never the key. Their methods take the same lock and connection as the records.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from bridge.keys import (
    GatewayKey,
    check_new_key,
    generate_key,
    hash_key,
    key_prefix,
    secret_matches,
)

from .records import (
    InterceptionEnded,
    InterceptionStarted,
    ModelThought,
    PromptUsage,
    Record,
    TokenUsage,
    ToolUsage,
    utcnow,
)
from .store import (
    FAILED_OUTCOMES,
    GROUP_COLUMNS,
    StoreError,
    UsageRow,
    as_utc,
    check_group_by,
)

__all__ = ["BUSY_TIMEOUT", "MIGRATIONS", "SQLiteStore"]

_CREATE_ATTEMPTS: Final = 3  # new keys tried when a random prefix is taken (48 bits: rare)

BUSY_TIMEOUT: Final = 5.0
"""Seconds a connection waits for another process's write lock before failing."""

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the initial schema.
    """
    CREATE TABLE bridge_interceptions (
        id TEXT PRIMARY KEY,
        initiator_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_name TEXT NOT NULL,
        model TEXT NOT NULL,
        streaming INTEGER NOT NULL,
        client TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        credential_kind TEXT NOT NULL,
        credential_hint TEXT NOT NULL,
        session_id TEXT,
        correlating_tool_call_id TEXT,
        metadata TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        outcome TEXT,
        error TEXT
    );
    CREATE INDEX bridge_interceptions_initiator_id ON bridge_interceptions (initiator_id);
    CREATE INDEX bridge_interceptions_started_at ON bridge_interceptions (started_at);
    CREATE TABLE bridge_token_usages (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        provider_response_id TEXT NOT NULL,
        input INTEGER NOT NULL,
        output INTEGER NOT NULL,
        cache_read INTEGER NOT NULL,
        cache_write INTEGER NOT NULL,
        cache_write_5m INTEGER NOT NULL,
        cache_write_1h INTEGER NOT NULL,
        reasoning INTEGER NOT NULL,
        web_search_requests INTEGER NOT NULL,
        extra TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX bridge_token_usages_interception_id ON bridge_token_usages (interception_id);
    CREATE TABLE bridge_prompts (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        provider_response_id TEXT NOT NULL,
        prompt TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX bridge_prompts_interception_id ON bridge_prompts (interception_id);
    CREATE TABLE bridge_tool_usages (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        provider_response_id TEXT NOT NULL,
        tool TEXT NOT NULL,
        tool_call_id TEXT NOT NULL,
        input TEXT NOT NULL,
        injected INTEGER NOT NULL,
        server_url TEXT,
        invocation_error TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX bridge_tool_usages_interception_id ON bridge_tool_usages (interception_id);
    CREATE TABLE bridge_model_thoughts (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        content TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX bridge_model_thoughts_interception_id ON bridge_model_thoughts (interception_id);
    """,
    # 2: gateway keys (bridge.keys). UNIQUE on prefix is also the index find_key looks up by.
    """
    CREATE TABLE bridge_gateway_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        prefix TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    );
    """,
)
"""Migration scripts; script ``n`` (from 1) brings the schema to version ``n``. Append only,
never edit a released one. Statements are separated by ``;`` and contain none of their own
(``executescript`` would commit the migration transaction half-way)."""


def _ts(moment: _dt.datetime) -> str:
    return as_utc(moment).isoformat(timespec="microseconds")


# One encoder for every value: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _json(value: Any) -> str:
    """*value* as JSON text. Never raises: a store must not refuse a record (a refused
    batch would be retried forever), so what JSON cannot encode is stored as its repr."""
    try:
        return _ENCODER.encode(value)
    except ValueError:  # a circular structure
        return _ENCODER.encode(repr(value))


_INSERTS: Final[dict[type[Record], str]] = {
    InterceptionStarted: "INSERT OR IGNORE INTO bridge_interceptions (id, initiator_id, provider,"
    " provider_name, model, streaming, client, user_agent, credential_kind, credential_hint,"
    " session_id, correlating_tool_call_id, metadata, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    TokenUsage: "INSERT OR IGNORE INTO bridge_token_usages (id, interception_id,"
    " provider_response_id, input, output, cache_read, cache_write, cache_write_5m,"
    " cache_write_1h, reasoning, web_search_requests, extra, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    PromptUsage: "INSERT OR IGNORE INTO bridge_prompts (id, interception_id,"
    " provider_response_id, prompt, created_at) VALUES (?, ?, ?, ?, ?)",
    ToolUsage: "INSERT OR IGNORE INTO bridge_tool_usages (id, interception_id,"
    " provider_response_id, tool, tool_call_id, input, injected, server_url, invocation_error,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ModelThought: "INSERT OR IGNORE INTO bridge_model_thoughts (id, interception_id, content,"
    " source, created_at) VALUES (?, ?, ?, ?, ?)",
    # First end wins; an end whose start is unknown changes nothing.
    InterceptionEnded: "UPDATE bridge_interceptions SET ended_at = ?, outcome = ?, error = ?"
    " WHERE id = ? AND ended_at IS NULL",
}
# Starts first and ends last, so that a batch holding a whole interception records it whole.
_WRITE_ORDER: Final = tuple(_INSERTS)


def _row(record: Record) -> tuple[Any, ...]:
    """The SQL parameters of *record*, in the column order of :data:`_INSERTS`."""
    match record:
        case InterceptionStarted():
            return (
                record.id,
                record.initiator_id,
                record.provider,
                record.provider_name,
                record.model,
                int(record.streaming),
                record.client,
                record.user_agent,
                str(record.credential_kind),
                record.credential_hint,
                record.session_id,
                record.correlating_tool_call_id,
                _json(record.metadata),
                _ts(record.started_at),
            )
        case TokenUsage():
            return (
                record.id,
                record.interception_id,
                record.provider_response_id,
                record.input,
                record.output,
                record.cache_read,
                record.cache_write,
                record.cache_write_5m,
                record.cache_write_1h,
                record.reasoning,
                record.web_search_requests,
                _json(record.extra),
                _ts(record.created_at),
            )
        case PromptUsage():
            return (
                record.id,
                record.interception_id,
                record.provider_response_id,
                record.prompt,
                _ts(record.created_at),
            )
        case ToolUsage():
            return (
                record.id,
                record.interception_id,
                record.provider_response_id,
                record.tool,
                record.tool_call_id,
                _json(record.input),
                int(record.injected),
                record.server_url,
                record.invocation_error,
                _ts(record.created_at),
            )
        case ModelThought():
            return (
                record.id,
                record.interception_id,
                record.content,
                record.source,
                _ts(record.created_at),
            )
        case InterceptionEnded():
            return (
                _ts(record.ended_at),
                str(record.outcome),
                record.error,
                record.interception_id,
            )
    raise TypeError(
        f"cannot record a {type(record).__name__}: a record is one of"
        f" {', '.join(t.__name__ for t in _WRITE_ORDER)}"
    )


class SQLiteStore:
    """Records in the SQLite file at *path* (created, and migrated, if needed).

    Raises :class:`StoreError` if the file cannot be opened (a missing directory, no
    permission) or holds a schema newer than this version of bridge knows.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the SQLite database {self.path!r}: {exc};"
                " check that its directory exists and is writable"
            ) from exc
        self._closed = False
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._use_wal(busy_timeout)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(
                    f"cannot prepare the SQLite database {self.path!r}: {exc}"
                ) from exc
            raise

    def _use_wal(self, busy_timeout: float) -> None:
        """Switch the file to WAL (a persistent setting; a no-op once done).

        The switch needs an exclusive lock and SQLite reports a conflict at once, without
        waiting for the busy timeout, so when several processes create the file together
        it is retried here, briefly, until the busy timeout is spent.
        """
        deadline = time.monotonic() + busy_timeout
        delay = 0.001
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                return

    # -- schema ---------------------------------------------------------------------------

    def _version(self) -> int:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if exists is None:
            return 0
        (version,) = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(version or 0)

    def _migrate(self) -> None:
        if self._version() == len(MIGRATIONS):
            return  # the usual case: no write lock needed
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            # Read again under the lock: another process may have migrated meanwhile.
            current = self._version()
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"the SQLite database {self.path!r} has schema version {current}, newer"
                    f" than this bridge knows ({len(MIGRATIONS)}): upgrade bridge"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, _ts(utcnow())),
                )
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        """The highest migration applied to the database."""
        with self._lock:
            self._ensure_open()
            return self._version()

    # -- the Store protocol ---------------------------------------------------------------

    def write_batch(self, records: Sequence[Record]) -> None:
        """Write *records* in one transaction (see the module rules)."""
        rows: dict[type[Record], list[tuple[Any, ...]]] = {kind: [] for kind in _WRITE_ORDER}
        for record in records:
            row = _row(record)  # raises TypeError for anything but a record
            rows[type(record)].append(row)
        with self._lock:
            self._ensure_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for kind in _WRITE_ORDER:
                    if rows[kind]:
                        self._conn.executemany(_INSERTS[kind], rows[kind])
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def check(self) -> None:
        """Raise :class:`StoreError` unless the database answers at the expected version."""
        with self._lock:
            self._ensure_open()
            try:
                version = self._version()
            except sqlite3.Error as exc:
                raise StoreError(f"the SQLite database {self.path!r} is not usable: {exc}") from exc
        if version != len(MIGRATIONS):
            raise StoreError(
                f"the SQLite database {self.path!r} is at schema version {version},"
                f" expected {len(MIGRATIONS)}"
            )

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_open(self) -> None:
        if self._closed:
            raise StoreError(f"the SQLite store {self.path!r} is closed")

    # -- reading --------------------------------------------------------------------------

    def usage(
        self, *, since: _dt.datetime | None = None, by: Sequence[str] = ("user",)
    ) -> list[UsageRow]:
        """A usage report: interceptions started at or after *since*, grouped by *by*
        (names from :data:`~bridge.recording.store.GROUP_BY`), sorted by group."""
        names = check_group_by(by)
        columns = ", ".join(f"i.{GROUP_COLUMNS[name]}" for name in names)
        failed = sorted(str(outcome) for outcome in FAILED_OUTCOMES)
        sql = f"""
            WITH picked AS (SELECT * FROM bridge_interceptions WHERE started_at >= ?),
            tokens AS (
                SELECT t.interception_id, SUM(t.input) AS input, SUM(t.output) AS output,
                    SUM(t.cache_read) AS cache_read, SUM(t.cache_write) AS cache_write,
                    SUM(t.reasoning) AS reasoning
                FROM bridge_token_usages AS t JOIN picked AS p ON p.id = t.interception_id
                GROUP BY t.interception_id
            ),
            tools AS (
                SELECT u.interception_id, COUNT(*) AS calls
                FROM bridge_tool_usages AS u JOIN picked AS p ON p.id = u.interception_id
                GROUP BY u.interception_id
            )
            SELECT {columns + "," if names else ""}
                COUNT(*),
                COALESCE(SUM(i.outcome IN ({", ".join("?" for _ in failed)})), 0),
                COALESCE(SUM(tokens.input), 0), COALESCE(SUM(tokens.output), 0),
                COALESCE(SUM(tokens.cache_read), 0), COALESCE(SUM(tokens.cache_write), 0),
                COALESCE(SUM(tokens.reasoning), 0), COALESCE(SUM(tools.calls), 0)
            FROM picked AS i
            LEFT JOIN tokens ON tokens.interception_id = i.id
            LEFT JOIN tools ON tools.interception_id = i.id
            {f"GROUP BY {columns} ORDER BY {columns}" if names else ""}
        """
        params = ("" if since is None else _ts(since), *failed)  # every timestamp >= ""
        with self._lock:
            self._ensure_open()
            result = self._conn.execute(sql, params).fetchall()
        width = len(names)
        return [
            UsageRow(dict(zip(names, row[:width], strict=True)), *row[width:])
            for row in result
            if row[width] > 0  # without a grouping, an empty table still gives one row
        ]

    def _select(self, table: str, interception_id: str | None) -> list[dict[str, Any]]:
        """The rows of *table* (a constant of ours, never user input) in insertion order."""
        sql = f"SELECT * FROM {table}"
        params: tuple[str, ...] = ()
        if interception_id is not None:
            sql += " WHERE interception_id = ?"
            params = (interception_id,)
        with self._lock:
            self._ensure_open()
            cursor = self._conn.execute(sql + " ORDER BY rowid", params)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]

    def interceptions(self) -> list[dict[str, Any]]:
        """Every interception row, as stored (JSON as text, booleans as 0/1), oldest first."""
        return self._select("bridge_interceptions", None)

    def token_usages(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Token-usage rows, as stored, of one interception or of all."""
        return self._select("bridge_token_usages", interception_id)

    def prompts(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Prompt rows, as stored, of one interception or of all."""
        return self._select("bridge_prompts", interception_id)

    def tool_usages(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Tool-usage rows, as stored, of one interception or of all."""
        return self._select("bridge_tool_usages", interception_id)

    def model_thoughts(self, interception_id: str | None = None) -> list[dict[str, Any]]:
        """Model-thought rows, as stored, of one interception or of all."""
        return self._select("bridge_model_thoughts", interception_id)

    # -- gateway keys (bridge.keys.KeyStore) ----------------------------------------------

    def create_key(self, user: str, metadata: Mapping[str, str]) -> tuple[str, GatewayKey]:
        """Create a key for *user*; only its prefix and hash are stored. Returns
        ``(secret, key)``: the one time the secret exists outside the client."""
        kept = check_new_key(user, metadata)
        created_at = utcnow()
        with self._lock:
            self._ensure_open()
            for _ in range(_CREATE_ATTEMPTS):
                secret, prefix = generate_key()
                key = GatewayKey(str(uuid.uuid4()), user, prefix, kept, created_at, None, None)
                try:
                    self._conn.execute(
                        "INSERT INTO bridge_gateway_keys (id, user_id, prefix, key_hash,"
                        " metadata, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (key.id, user, prefix, hash_key(secret), _json(kept), _ts(created_at)),
                    )
                except sqlite3.IntegrityError:
                    continue  # the random prefix (or id) is taken: draw another key
                return secret, key
        raise StoreError(
            f"could not create a gateway key in {self.path!r}: {_CREATE_ATTEMPTS} random"
            " prefixes in a row were taken, which points at a broken random source"
        )

    def list_keys(self) -> list[GatewayKey]:
        """Every key, revoked ones included, oldest first."""
        with self._lock:
            self._ensure_open()
            rows = self._conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM bridge_gateway_keys ORDER BY created_at, rowid"
            ).fetchall()
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke *key_id*; ``False`` if there is no such key or it was revoked already
        (the first revocation time is kept)."""
        with self._lock:
            self._ensure_open()
            cursor = self._conn.execute(
                "UPDATE bridge_gateway_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_ts(utcnow()), key_id),
            )
        return cursor.rowcount == 1

    def find_key(self, secret: str) -> GatewayKey | None:
        """The active key whose secret is *secret*: found by prefix (an indexed lookup),
        then confirmed by one constant-time comparison of hashes, made even when no row
        has that prefix (see :func:`bridge.keys.secret_matches`)."""
        prefix = key_prefix(secret)
        row = None
        if prefix is not None:
            with self._lock:
                self._ensure_open()
                row = self._conn.execute(
                    f"SELECT {_KEY_COLUMNS}, key_hash FROM bridge_gateway_keys WHERE prefix = ?",
                    (prefix,),
                ).fetchone()
        if not secret_matches(secret, None if row is None else row[-1]):
            return None
        assert row is not None  # secret_matches is never true without a stored hash
        key = _key(row[:-1])
        return None if key.revoked_at is not None else key

    def touch_key(self, key_id: str, when: _dt.datetime) -> None:
        """Set the key's ``last_used_at`` to *when*, unless it is later already."""
        moment = _ts(when)
        with self._lock:
            self._ensure_open()
            self._conn.execute(
                "UPDATE bridge_gateway_keys SET last_used_at = ?"
                " WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                (moment, key_id, moment),
            )


_KEY_COLUMNS: Final = "id, user_id, prefix, metadata, created_at, last_used_at, revoked_at"


def _moment(text: str | None) -> _dt.datetime | None:
    return None if text is None else _dt.datetime.fromisoformat(text)


def _key(row: Sequence[Any]) -> GatewayKey:
    """A :class:`GatewayKey` from a row of :data:`_KEY_COLUMNS` (never the hash)."""
    key_id, user, prefix, metadata, created_at, last_used_at, revoked_at = row
    return GatewayKey(
        id=key_id,
        user=user,
        prefix=prefix,
        metadata=json.loads(metadata),
        created_at=_dt.datetime.fromisoformat(created_at),
        last_used_at=_moment(last_used_at),
        revoked_at=_moment(revoked_at),
    )
