"""The shared store: records in a PostgreSQL database, for several gateway processes at once.

The schema, the rows, the readers, the usage report and the key methods are those of the
SQLite store (:mod:`.sql`), with PostgreSQL's types: ``TIMESTAMPTZ``, ``BOOLEAN``, ``JSON``
(the exact text, as SQLite keeps it) and ``BIGINT``. This module connects and migrates.

Rules:

* One connection per store (psycopg 3, autocommit, one explicit transaction per batch),
  behind the lock of :class:`~bridge.recording.sql.SQLStore`. A batch is one
  ``executemany`` per record type, which psycopg sends pipelined: one round trip, not one
  per row.
* Several processes (hypercorn workers, gateways on other machines) share the database:
  writes are idempotent by record id, and migrations run inside a transaction holding
  ``pg_advisory_xact_lock``, the version read again once the lock is held, so processes
  starting at once apply each migration exactly once. DDL is transactional here, so a
  failed migration leaves nothing half done.
* The server may go away (a restart, a failover, an idle connection cut): a call whose
  connection turns out broken reconnects and is tried once more, which is safe because
  writes are idempotent. If that fails too the call raises :class:`StoreError` and the
  recorder retries or journals the batch.
* Errors name the database by its masked URL and never show the password, not even
  where libpq quotes what it was given.
* Unless the URL says otherwise, connecting gives up after ``connect_timeout`` seconds and
  a write to an unresponsive server fails after ``tcp_user_timeout``, so a dead network
  turns into an error the recorder handles instead of a write that never returns.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.string import TextLoader

from .sql import SQLDialect, SQLStore, WriteGroups
from .store import StoreError, as_utc, mask_url

__all__ = ["CONNECT_DEFAULTS", "MIGRATIONS", "PostgresStore"]

_T = TypeVar("_T")
_Connection = psycopg.Connection[tuple[Any, ...]]


def _timestamp(moment: _dt.datetime) -> _dt.datetime:
    return as_utc(moment)


DIALECT: Final = SQLDialect(
    types={"flag": "BOOLEAN", "json": "JSON", "ts": "TIMESTAMPTZ", "int": "BIGINT"},
    timestamp=_timestamp,
    flag=bool,
    marker="%s",
    collation='"C"',
    insertion_order="{time}, id",
    json_text="({column} ->> '{key}')",
)

MIGRATIONS: Final[tuple[str, ...]] = DIALECT.migrations()
"""Migration scripts; script ``n`` (from 1) brings the schema to version ``n``. Append only
(in :data:`bridge.recording.sql.SCHEMA`), never edit a released one."""

MIGRATION_LOCK: Final = 0x6272_6964_6765  # "bridge": the advisory lock key of migrations

CONNECT_DEFAULTS: Final[dict[str, str]] = {
    "connect_timeout": "10",
    "tcp_user_timeout": "30000",  # milliseconds unacknowledged before the connection fails
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "application_name": "bridge",
}
"""Connection parameters used unless the URL sets them (``?connect_timeout=3``)."""


def _passwords_in(url: str) -> tuple[str, ...]:
    """The password of *url*, raw and decoded, found without libpq (which may refuse the
    URL, quoting it): what an error must never show."""
    try:
        raw = urlsplit(url).password
    except ValueError:
        return ()
    return () if not raw else (raw, unquote(raw))


class PostgresStore(SQLStore):
    """Records in the PostgreSQL database *url* names (migrated if needed).

    Raises :class:`StoreError` if the server cannot be reached, refuses the login, or
    holds a schema newer than this version of bridge knows.
    """

    dialect = DIALECT
    encoding_errors = (UnicodeEncodeError, psycopg.DataError)

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        """The URL with its password masked: the raw URL is kept only to connect."""
        super().__init__(f"the PostgreSQL database {self.url!r}")
        self._raw_url = url
        self._secrets: tuple[str, ...] = (url, *_passwords_in(url))
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(
                f"invalid PostgreSQL URL {self.url!r}: {self._scrub(str(exc))};"
                " write it as postgresql://user:password@host:5432/database"
            ) from None
        if given.get("password"):
            self._secrets += (str(given["password"]),)
        self._params = {
            name: value for name, value in CONNECT_DEFAULTS.items() if name not in given
        }
        self._conn: _Connection | None = None
        try:
            self._attempt(self._migrate)
        except BaseException:
            self._close()
            raise

    def _scrub(self, text: str) -> str:
        """*text* without the URL or its password (libpq quotes what it was given)."""
        for secret in self._secrets:
            text = text.replace(secret, self.url if secret == self._raw_url else "***")
        return text

    # -- the connection -------------------------------------------------------------------

    def _connect(self) -> _Connection:
        conn: _Connection | None = None
        try:
            conn = psycopg.connect(make_conninfo(self._raw_url, **self._params), autocommit=True)
            # JSON columns come back as their text, as from SQLite; timestamps in UTC.
            conn.adapters.register_loader("json", TextLoader)
            conn.execute("SET TIME ZONE 'UTC'")
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            raise StoreError(
                f"cannot connect to {self._label}: {self._scrub(str(exc)).strip()};"
                " check that the server is running and that recording.database names it"
                " with the right user, password and database"
            ) from None
        return conn

    def _attempt(self, work: Callable[[_Connection], _T]) -> _T:
        """Run *work* on the connection, connecting first if needed. If the connection
        turns out broken (the server restarted), connect again and run it once more."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            conn = self._conn
            try:
                return work(conn)
            except self.encoding_errors:
                raise  # SQLStore.write_batch cleans the text and writes again
            except psycopg.Error as exc:
                if conn.broken:
                    self._close()
                    if attempt == 1:
                        continue
                raise StoreError(f"{self._label}: {self._scrub(str(exc)).strip()}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- the connection work of SQLStore --------------------------------------------------

    def _migrations(self) -> Sequence[str]:
        return MIGRATIONS

    @staticmethod
    def _version_on(conn: _Connection) -> int:
        row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0) if row is not None else 0

    def _migrate(self, conn: _Connection) -> None:
        migrations = self._migrations()
        if self._version_on(conn) == len(migrations):
            return  # the usual case: no lock needed
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(self._versions_table())
            # Read again under the lock: another process may have migrated meanwhile.
            self._apply_migrations(self._version_on(conn), migrations, conn.execute)

    def _version(self) -> int:
        return self._attempt(self._version_on)

    def _write(self, groups: WriteGroups) -> None:
        def write(conn: _Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                for sql, rows in groups:
                    cursor.executemany(sql, rows)

        self._attempt(write)

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        return self._attempt(lambda conn: conn.execute(sql, params).rowcount)

    def _query(self, sql: str, params: Sequence[Any]) -> tuple[list[str], list[Sequence[Any]]]:
        def query(conn: _Connection) -> tuple[list[str], list[Sequence[Any]]]:
            cursor = conn.execute(sql, params)
            names = [column.name for column in cursor.description or ()]
            return names, list(cursor.fetchall())

        return self._attempt(query)
