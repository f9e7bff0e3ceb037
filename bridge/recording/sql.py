"""What the SQL stores share: the schema, the rows records become, the statements, and the
readers, usage report and gateway-key methods built on them.

SQLite (:mod:`.sqlite`) and PostgreSQL (:mod:`.postgres`) keep the same tables, columns,
indexes and migrations, written once here as :data:`SCHEMA`. A :class:`SQLDialect` says what
differs: the column types (PostgreSQL gets ``TIMESTAMPTZ``, ``BOOLEAN``, ``JSON`` and
``BIGINT`` where SQLite has text and integers), how a timestamp and a flag are passed,
the parameter marker, the collation that sorts text by code point, and the order rows were
inserted in. A store subclasses :class:`SQLStore` and supplies only the connection work:
run a statement, run a query, write rows in one transaction, migrate.

Rules:

* Every write is idempotent: ``INSERT ... ON CONFLICT DO NOTHING`` on the record id, and an
  end is ``UPDATE ... WHERE ended_at IS NULL`` (the first end wins). One transaction per
  batch, one ``executemany`` per record type, starts first and ends last.
* A store never refuses a record for its text (a refused batch would be retried forever):
  a batch the database cannot encode (a lone surrogate from a client's JSON, or a NUL,
  which PostgreSQL text cannot hold) is written again with those characters replaced by
  U+FFFD. The replacement happens only after such a failure, so it costs nothing otherwise.
* Migration scripts are append only; script ``n`` brings the schema to version ``n``, and
  ``schema_migrations`` lists the versions applied. Statements are separated by ``;`` and
  contain none of their own.
"""

from __future__ import annotations

import abc
import datetime as _dt
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, Self

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
from .store import (
    FAILED_OUTCOMES,
    GROUP_COLUMNS,
    USAGE_COLUMNS,
    StoreError,
    UsageRow,
    as_utc,
    check_group_by,
    meta_key,
)

__all__ = [
    "END_COLUMNS",
    "SCHEMA",
    "SQLDialect",
    "SQLStore",
    "WriteGroups",
    "iso_timestamp",
    "json_text",
    "stored_row",
]

SCHEMA: Final[tuple[str, ...]] = (
    # 1: the initial schema.
    """
    CREATE TABLE bridge_interceptions (
        id TEXT PRIMARY KEY,
        initiator_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_name TEXT NOT NULL,
        model TEXT NOT NULL,
        streaming {flag} NOT NULL,
        client TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        credential_kind TEXT NOT NULL,
        credential_hint TEXT NOT NULL,
        session_id TEXT,
        correlating_tool_call_id TEXT,
        metadata {json} NOT NULL,
        started_at {ts} NOT NULL,
        ended_at {ts},
        outcome TEXT,
        error TEXT
    );
    CREATE INDEX bridge_interceptions_initiator_id ON bridge_interceptions (initiator_id);
    CREATE INDEX bridge_interceptions_started_at ON bridge_interceptions (started_at);
    CREATE TABLE bridge_token_usages (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        provider_response_id TEXT NOT NULL,
        input {int} NOT NULL,
        output {int} NOT NULL,
        cache_read {int} NOT NULL,
        cache_write {int} NOT NULL,
        cache_write_5m {int} NOT NULL,
        cache_write_1h {int} NOT NULL,
        reasoning {int} NOT NULL,
        web_search_requests {int} NOT NULL,
        extra {json} NOT NULL,
        created_at {ts} NOT NULL
    );
    CREATE INDEX bridge_token_usages_interception_id ON bridge_token_usages (interception_id);
    CREATE TABLE bridge_prompts (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        provider_response_id TEXT NOT NULL,
        prompt TEXT NOT NULL,
        created_at {ts} NOT NULL
    );
    CREATE INDEX bridge_prompts_interception_id ON bridge_prompts (interception_id);
    CREATE TABLE bridge_tool_usages (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        provider_response_id TEXT NOT NULL,
        tool TEXT NOT NULL,
        tool_call_id TEXT NOT NULL,
        input {json} NOT NULL,
        injected {flag} NOT NULL,
        server_url TEXT,
        invocation_error TEXT,
        created_at {ts} NOT NULL
    );
    CREATE INDEX bridge_tool_usages_interception_id ON bridge_tool_usages (interception_id);
    CREATE TABLE bridge_model_thoughts (
        id TEXT PRIMARY KEY,
        interception_id TEXT NOT NULL,
        content TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at {ts} NOT NULL
    );
    CREATE INDEX bridge_model_thoughts_interception_id ON bridge_model_thoughts (interception_id);
    """,
    # 2: gateway keys (bridge.identity.keys). UNIQUE on prefix is also the index find_key
    # looks up by.
    """
    CREATE TABLE bridge_gateway_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        prefix TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        metadata {json} NOT NULL,
        created_at {ts} NOT NULL,
        last_used_at {ts},
        revoked_at {ts}
    );
    """,
    # 3: passthrough calls (records.PassthroughCall), looked up by user and by time.
    """
    CREATE TABLE bridge_passthrough_calls (
        id TEXT PRIMARY KEY,
        initiator_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_name TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status {int},
        duration_ms {int} NOT NULL,
        credential_kind TEXT,
        credential_hint TEXT NOT NULL,
        started_at {ts} NOT NULL
    );
    CREATE INDEX bridge_passthrough_calls_initiator_id ON bridge_passthrough_calls (initiator_id);
    CREATE INDEX bridge_passthrough_calls_started_at ON bridge_passthrough_calls (started_at);
    """,
)
"""The migration scripts, with the dialect's column types as ``{flag}``, ``{json}``, ``{ts}``
and ``{int}``: rendered by :meth:`SQLDialect.migrations`. Append only, never edit a released one."""

_VERSIONS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations"
    " (version INTEGER PRIMARY KEY, applied_at {ts} NOT NULL)"
)


def iso_timestamp(moment: _dt.datetime) -> str:
    """*moment* as ISO-8601 UTC text of fixed width, so that text order is time order."""
    return as_utc(moment).isoformat(timespec="microseconds")


# One encoder for every value: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def json_text(value: Any) -> str:
    """*value* as JSON text. Never raises: a store must not refuse a record (a refused
    batch would be retried forever), so what JSON cannot encode is stored as its repr."""
    try:
        return _ENCODER.encode(value)
    except ValueError:  # a circular structure
        return _ENCODER.encode(repr(value))


@dataclass(frozen=True, slots=True)
class SQLDialect:
    """What one database spells differently; everything else in this module is shared."""

    types: Mapping[str, str]
    """Column type of each role in :data:`SCHEMA`: ``flag``, ``json``, ``ts``, ``int``."""
    timestamp: Callable[[_dt.datetime], Any]
    """A datetime as the database takes it."""
    flag: Callable[[bool], Any]
    """A boolean as the database takes it."""
    marker: str
    """The parameter marker (``?`` or ``%s``)."""
    collation: str
    """The collation that orders text by code point, as the memory store's ``sorted`` does."""
    insertion_order: str
    """``ORDER BY`` of the readers, ``{time}`` standing for the table's time column:
    oldest first, then in insertion order."""
    json_text: str
    """The text value of key ``{key}`` of the JSON object in column ``{column}``, as SQL
    (``{key}`` is checked to be a plain name first)."""

    def migrations(self) -> tuple[str, ...]:
        """:data:`SCHEMA` with this dialect's column types."""
        return tuple(script.format_map(self.types) for script in SCHEMA)

    def sql(self, text: str) -> str:
        """*text* (written with ``?`` markers) with this dialect's parameter marker."""
        return text if self.marker == "?" else text.replace("?", self.marker)


_INSERTS: Final[dict[type[Record], str]] = {
    InterceptionStarted: "INSERT INTO bridge_interceptions (id, initiator_id, provider,"
    " provider_name, model, streaming, client, user_agent, credential_kind, credential_hint,"
    " session_id, correlating_tool_call_id, metadata, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    TokenUsage: "INSERT INTO bridge_token_usages (id, interception_id,"
    " provider_response_id, input, output, cache_read, cache_write, cache_write_5m,"
    " cache_write_1h, reasoning, web_search_requests, extra, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    PromptUsage: "INSERT INTO bridge_prompts (id, interception_id,"
    " provider_response_id, prompt, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    ToolUsage: "INSERT INTO bridge_tool_usages (id, interception_id,"
    " provider_response_id, tool, tool_call_id, input, injected, server_url, invocation_error,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    ModelThought: "INSERT INTO bridge_model_thoughts (id, interception_id, content,"
    " source, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    PassthroughCall: "INSERT INTO bridge_passthrough_calls (id, initiator_id, provider,"
    " provider_name, method, path, status, duration_ms, credential_kind, credential_hint,"
    " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    # First end wins; an end whose start is unknown changes nothing.
    InterceptionEnded: "UPDATE bridge_interceptions SET ended_at = ?, outcome = ?, error = ?"
    " WHERE id = ? AND ended_at IS NULL",
}
# Starts first and ends last, so that a batch holding a whole interception records it whole.
_WRITE_ORDER: Final = tuple(_INSERTS)

_COLUMNS: Final[dict[type[Record], tuple[str, ...]]] = {
    kind: tuple(name.strip() for name in sql.split("(", 1)[1].split(")", 1)[0].split(","))
    for kind, sql in _INSERTS.items()
    if kind is not InterceptionEnded
}
"""The columns each record kind fills, read from its statement in :data:`_INSERTS`."""

END_COLUMNS: Final = ("ended_at", "outcome", "error")
"""The columns of an interception's row that its :class:`InterceptionEnded` fills."""


def stored_row(record: Record, dialect: SQLDialect) -> dict[str, Any]:
    """The row *record* becomes, as column -> value (the values as :func:`_row` writes
    them); for an :class:`InterceptionEnded`, the columns it sets on its interception."""
    if isinstance(record, InterceptionEnded):
        return dict(zip(END_COLUMNS, _row(record, dialect)[:3], strict=True))
    return dict(zip(_COLUMNS[type(record)], _row(record, dialect), strict=True))


def _row(record: Record, dialect: SQLDialect) -> tuple[Any, ...]:
    """The SQL parameters of *record*, in the column order of :data:`_INSERTS`."""
    ts = dialect.timestamp
    match record:
        case InterceptionStarted():
            return (
                record.id,
                record.initiator_id,
                record.provider,
                record.provider_name,
                record.model,
                dialect.flag(record.streaming),
                record.client,
                record.user_agent,
                str(record.credential_kind),
                record.credential_hint,
                record.session_id,
                record.correlating_tool_call_id,
                json_text(record.metadata),
                ts(record.started_at),
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
                json_text(record.extra),
                ts(record.created_at),
            )
        case PromptUsage():
            return (
                record.id,
                record.interception_id,
                record.provider_response_id,
                record.prompt,
                ts(record.created_at),
            )
        case ToolUsage():
            return (
                record.id,
                record.interception_id,
                record.provider_response_id,
                record.tool,
                record.tool_call_id,
                json_text(record.input),
                dialect.flag(record.injected),
                record.server_url,
                record.invocation_error,
                ts(record.created_at),
            )
        case ModelThought():
            return (
                record.id,
                record.interception_id,
                record.content,
                record.source,
                ts(record.created_at),
            )
        case PassthroughCall():
            return (
                record.id,
                record.initiator_id,
                record.provider,
                record.provider_name,
                record.method,
                record.path,
                record.status,
                record.duration_ms,
                None if record.credential_kind is None else str(record.credential_kind),
                record.credential_hint,
                ts(record.started_at),
            )
        case InterceptionEnded():
            return (
                ts(record.ended_at),
                str(record.outcome),
                record.error,
                record.interception_id,
            )
    raise TypeError(
        f"cannot record a {type(record).__name__}: a record is one of"
        f" {', '.join(t.__name__ for t in _WRITE_ORDER)}"
    )


# What no database text can hold: NUL (PostgreSQL) and surrogates, which UTF-8 cannot
# encode (a str holds one only when it came alone, from a JSON "\ud800" escape, say).
_UNSTORABLE: Final = re.compile(r"[\x00\ud800-\udfff]")


def _clean(value: Any) -> Any:
    """*value* with every character no database text can hold made U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", value) if isinstance(value, str) else value


WriteGroups = list[tuple[str, list[tuple[Any, ...]]]]
"""Statements of one transaction, each with the rows it is run for (``executemany``)."""

_CREATE_ATTEMPTS: Final = 3  # new keys tried when a random prefix is taken (48 bits: rare)
_KEY_COLUMNS: Final = "id, user_id, prefix, metadata, created_at, last_used_at, revoked_at"
_TIME_COLUMNS: Final = {  # the others: created_at
    "bridge_interceptions": "started_at",
    "bridge_passthrough_calls": "started_at",
}


class SQLStore(abc.ABC, KeyStore):
    """The store rules (see :mod:`bridge.recording.store`) over a SQL database; a subclass
    says how to reach it.

    A lock serializes every call, so a subclass's connection is used by one thread at a
    time: the recorder writes from a worker thread while ``/readyz``, the gateway's key
    lookups and the test readers may come from others.
    """

    dialect: ClassVar[SQLDialect]
    encoding_errors: ClassVar[tuple[type[Exception], ...]] = (UnicodeEncodeError,)
    """What the driver raises for text the database cannot hold: the batch is cleaned and
    written again (see the module rules)."""
    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """What the driver raises when the database is not usable: ``check`` says so."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._lock = threading.Lock()
        self._closed = False
        self._statements = {kind: self.dialect.sql(sql) for kind, sql in _INSERTS.items()}

    # -- what a subclass supplies ---------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement, committed on its own; return the rows it changed."""
        ...

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[Any]) -> tuple[list[str], list[Sequence[Any]]]:
        """Run one query; return its column names and rows."""
        ...

    @abc.abstractmethod
    def _write(self, groups: WriteGroups) -> None:
        """Run every statement of *groups* for each of its rows, in one transaction."""
        ...

    @abc.abstractmethod
    def _version(self) -> int:
        """The highest migration applied (0 if none)."""
        ...

    @abc.abstractmethod
    def _close(self) -> None:
        """Close the connection."""
        ...

    @abc.abstractmethod
    def _migrations(self) -> Sequence[str]:
        """The migration scripts (the module's ``MIGRATIONS``, read when called: tests
        stand in a longer list for a later release)."""
        ...

    # -- schema ---------------------------------------------------------------------------

    def _apply_migrations(
        self, current: int, migrations: Sequence[str], execute: Callable[[str, Sequence[Any]], Any]
    ) -> None:
        """Bring the schema from version *current* to the last of *migrations*, with
        *execute*; the caller holds the database's migration lock inside a transaction.
        Raises :class:`StoreError` for a schema newer than *migrations*."""
        if current > len(migrations):
            raise StoreError(
                f"{self._label} has schema version {current}, newer than this bridge knows"
                f" ({len(migrations)}): upgrade bridge"
            )
        for version in range(current + 1, len(migrations) + 1):
            for statement in migrations[version - 1].split(";"):
                if statement.strip():
                    execute(statement, ())
            execute(
                self.dialect.sql(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"
                ),
                (version, self.dialect.timestamp(utcnow())),
            )

    @classmethod
    def _versions_table(cls) -> str:
        return _VERSIONS_TABLE.format_map(cls.dialect.types)

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
            row = _row(record, self.dialect)  # raises TypeError for anything but a record
            rows[type(record)].append(row)
        groups = [(self._statements[kind], rows[kind]) for kind in _WRITE_ORDER if rows[kind]]
        with self._lock:
            self._ensure_open()
            try:
                self._write(groups)
            except self.encoding_errors:
                cleaned = [(sql, [tuple(map(_clean, row)) for row in kept]) for sql, kept in groups]
                try:
                    self._write(cleaned)
                except self.encoding_errors as exc:
                    raise StoreError(f"{self._label} refused a batch: {exc}") from exc

    def check(self) -> None:
        """Raise :class:`StoreError` unless the database answers at the expected version."""
        expected = len(self._migrations())
        with self._lock:
            self._ensure_open()
            try:
                version = self._version()
            except self.driver_errors as exc:
                raise StoreError(f"{self._label} is not usable: {exc}") from exc
        if version != expected:
            raise StoreError(f"{self._label} is at schema version {version}, expected {expected}")

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    def __enter__(self) -> Self:
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
            raise StoreError(f"{self._label} is closed")

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[Sequence[Any]]]:
        with self._lock:
            self._ensure_open()
            try:
                return self._query(self.dialect.sql(sql), params)
            except self.encoding_errors as exc:
                raise StoreError(f"{self._label} cannot hold a value asked for: {exc}") from exc

    def _run(self, sql: str, params: Sequence[Any]) -> int:
        with self._lock:
            self._ensure_open()
            try:
                return self._execute(self.dialect.sql(sql), params)
            except self.encoding_errors as exc:
                raise StoreError(f"{self._label} cannot hold a value given: {exc}") from exc

    # -- reading --------------------------------------------------------------------------

    def usage(
        self, *, since: _dt.datetime | None = None, by: Sequence[str] = ("user",)
    ) -> list[UsageRow]:
        """A usage report: interceptions started at or after *since*, grouped by *by*
        (names from :data:`~bridge.recording.store.GROUP_BY`), sorted by group."""
        names = check_group_by(by)
        groups = [self._group_expression(name) for name in names]
        columns = ", ".join(groups)
        order = ", ".join(f"{group} COLLATE {self.dialect.collation}" for group in groups)
        failed = sorted(str(outcome) for outcome in FAILED_OUTCOMES)
        # CASTs: PostgreSQL sums BIGINTs into NUMERIC, and has no SUM of a boolean.
        where = "" if since is None else "WHERE started_at >= ?"
        sql = f"""
            WITH picked AS (SELECT * FROM bridge_interceptions {where}),
            tokens AS (
                SELECT t.interception_id, {", ".join(f"SUM(t.{c}) AS {c}" for c in TOKEN_COUNTERS)}
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
                CAST(COALESCE(SUM(CASE WHEN i.outcome IN ({", ".join("?" for _ in failed)})
                    THEN 1 ELSE 0 END), 0) AS BIGINT),
                {"".join(f"CAST(COALESCE(SUM(tokens.{c}), 0) AS BIGINT), " for c in TOKEN_COUNTERS)}
                CAST(COALESCE(SUM(tools.calls), 0) AS BIGINT)
            FROM picked AS i
            LEFT JOIN tokens ON tokens.interception_id = i.id
            LEFT JOIN tools ON tools.interception_id = i.id
            {f"GROUP BY {columns} ORDER BY {order}" if names else ""}
        """
        params = (*(() if since is None else (self.dialect.timestamp(since),)), *failed)
        _, result = self._fetch(sql, params)
        width = len(names)
        return [
            UsageRow(
                dict(zip(names, row[:width], strict=True)),
                **dict(zip(USAGE_COLUMNS, row[width:], strict=True)),
            )
            for row in result
            if row[width] > 0  # without a grouping, an empty table still gives one row
        ]

    def _group_expression(self, name: str) -> str:
        """The SQL of one grouping: a column of the interception, or a metadata value."""
        key = meta_key(name)
        if key is None:
            return f"i.{GROUP_COLUMNS[name]}"
        value = self.dialect.json_text.format(column="i.metadata", key=key)
        return f"COALESCE({value}, '')"

    def _select(self, table: str, interception_id: str | None) -> list[dict[str, Any]]:
        """The rows of *table* (a constant of ours, never user input), oldest first."""
        sql = f"SELECT * FROM {table}"
        params: tuple[str, ...] = ()
        if interception_id is not None:
            sql += " WHERE interception_id = ?"
            params = (interception_id,)
        time = _TIME_COLUMNS.get(table, "created_at")
        names, rows = self._fetch(
            f"{sql} ORDER BY {self.dialect.insertion_order.format(time=time)}", params
        )
        return [dict(zip(names, row, strict=True)) for row in rows]

    def interceptions(self) -> list[dict[str, Any]]:
        """Every interception row, as the driver gives it (JSON as text; SQLite has
        booleans as 0/1 and timestamps as ISO text), oldest first."""
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

    def passthrough_calls(self) -> list[dict[str, Any]]:
        """Every passthrough call row, as stored, oldest first."""
        return self._select("bridge_passthrough_calls", None)

    # -- gateway keys (bridge.identity.keys.KeyStore) ----------------------------------------------

    def create_key(self, user: str, metadata: Mapping[str, str]) -> tuple[str, GatewayKey]:
        """Create a key for *user*; only its prefix and hash are stored. Returns
        ``(secret, key)``: the one time the secret exists outside the client."""
        kept = check_new_key(user, metadata)
        created_at = utcnow()
        for _ in range(_CREATE_ATTEMPTS):
            secret, prefix = generate_key()
            key = GatewayKey(str(uuid.uuid4()), user, prefix, kept, created_at, None, None)
            inserted = self._run(
                "INSERT INTO bridge_gateway_keys (id, user_id, prefix, key_hash, metadata,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    key.id,
                    user,
                    prefix,
                    hash_key(secret),
                    json_text(kept),
                    self.dialect.timestamp(created_at),
                ),
            )
            if inserted:
                return secret, key
            # else the random prefix (or id) is taken: draw another key
        raise StoreError(
            f"could not create a gateway key in {self._label}: {_CREATE_ATTEMPTS} random"
            " prefixes in a row were taken, which points at a broken random source"
        )

    def list_keys(self) -> list[GatewayKey]:
        """Every key, revoked ones included, oldest first."""
        order = self.dialect.insertion_order.format(time="created_at")
        _, rows = self._fetch(f"SELECT {_KEY_COLUMNS} FROM bridge_gateway_keys ORDER BY {order}")
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke *key_id*; ``False`` if there is no such key or it was revoked already
        (the first revocation time is kept)."""
        changed = self._run(
            "UPDATE bridge_gateway_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (self.dialect.timestamp(utcnow()), key_id),
        )
        return changed == 1

    def find_key(self, secret: str) -> GatewayKey | None:
        """The active key whose secret is *secret*: found by prefix (an indexed lookup),
        then confirmed by one constant-time comparison of hashes, made even when no row
        has that prefix (see :func:`bridge.identity.keys.secret_matches`)."""
        prefix = key_prefix(secret)
        row = None
        if prefix is not None:
            _, rows = self._fetch(
                f"SELECT {_KEY_COLUMNS}, key_hash FROM bridge_gateway_keys WHERE prefix = ?",
                (prefix,),
            )
            row = rows[0] if rows else None
        if not secret_matches(secret, None if row is None else row[-1]):
            return None
        assert row is not None  # secret_matches is never true without a stored hash
        key = _key(row[:-1])
        return None if key.revoked_at is not None else key

    def touch_key(self, key_id: str, when: _dt.datetime) -> None:
        """Set the key's ``last_used_at`` to *when*, unless it is later already."""
        moment = self.dialect.timestamp(when)
        self._run(
            "UPDATE bridge_gateway_keys SET last_used_at = ?"
            " WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            (moment, key_id, moment),
        )


def _moment(value: str | _dt.datetime | None) -> _dt.datetime | None:
    """A stored timestamp (ISO text from SQLite, a datetime from PostgreSQL) in UTC."""
    if value is None:
        return None
    return as_utc(_dt.datetime.fromisoformat(value) if isinstance(value, str) else value)


def _key(row: Sequence[Any]) -> GatewayKey:
    """A :class:`GatewayKey` from a row of :data:`_KEY_COLUMNS` (never the hash)."""
    key_id, user, prefix, metadata, created_at, last_used_at, revoked_at = row
    created = _moment(created_at)
    assert created is not None  # NOT NULL in the schema
    return GatewayKey(
        id=key_id,
        user=user,
        prefix=prefix,
        metadata=json.loads(metadata),
        created_at=created,
        last_used_at=_moment(last_used_at),
        revoked_at=_moment(revoked_at),
    )
