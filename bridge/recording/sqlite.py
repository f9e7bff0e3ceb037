"""The embedded store: records in one SQLite file, with versioned migrations.

The schema, the rows, the readers, the usage report and the key methods are shared with
the PostgreSQL store (:mod:`.sql`); this module connects to the file and migrates it.

Rules:

* One connection per store, opened with ``check_same_thread=False``: writes come from
  trio worker threads, serialized by the recorder; a lock also serializes the readers
  (``usage``, the test readers) and ``check``, which may run on other threads.
* WAL journal, ``synchronous=NORMAL`` and a busy timeout: readers (``bridgectl usage``) never
  block the gateway's writes, a commit costs no fsync, and a second process waits for
  the write lock instead of failing at once.
* The schema is versioned: ``schema_migrations`` lists the applied versions, and
  :data:`MIGRATIONS` is the ordered list of scripts. Missing migrations are applied
  inside ``BEGIN IMMEDIATE`` and the version is read again once the lock is held, so two
  processes starting at once apply each migration exactly once.
* Writes are idempotent (see :mod:`.sql`). One transaction per batch, one ``executemany``
  per record type.
* Timestamps are ISO-8601 UTC text of fixed width (microseconds, ``+00:00``), so text
  order is time order. JSON values (metadata, extra counters, tool input) are text,
  booleans 0 or 1.
* Gateway keys (:mod:`bridge.identity.keys`) live in ``bridge_gateway_keys``: the prefix and
  the hash,
  never the key. Their methods take the same lock and connection as the records.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .sql import SQLDialect, SQLStore, WriteGroups, iso_timestamp
from .store import StoreError

__all__ = ["BUSY_TIMEOUT", "MIGRATIONS", "SQLiteStore"]

BUSY_TIMEOUT: Final = 5.0
"""Seconds a connection waits for another process's write lock before failing."""

DIALECT: Final = SQLDialect(
    types={"flag": "INTEGER", "json": "TEXT", "ts": "TEXT", "int": "INTEGER"},
    timestamp=iso_timestamp,
    flag=int,
    marker="?",
    collation="BINARY",
    insertion_order="{time}, rowid",
    json_text="json_extract({column}, '$.\"{key}\"')",
)

MIGRATIONS: Final[tuple[str, ...]] = DIALECT.migrations()
"""Migration scripts; script ``n`` (from 1) brings the schema to version ``n``. Append only
(in :data:`bridge.recording.sql.SCHEMA`), never edit a released one."""


class SQLiteStore(SQLStore):
    """Records in the SQLite file at *path* (created, and migrated, if needed).

    Raises :class:`StoreError` if the file cannot be opened (a missing directory, no
    permission) or holds a schema newer than this version of bridge knows.
    """

    dialect = DIALECT
    driver_errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = str(path)
        super().__init__(f"the SQLite database {self.path!r}")
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the SQLite database {self.path!r}: {exc};"
                " check that its directory exists and is writable"
            ) from exc
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

    # -- the connection work of SQLStore --------------------------------------------------

    def _version(self) -> int:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if exists is None:
            return 0
        (version,) = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(version or 0)

    def _migrate(self) -> None:
        migrations = self._migrations()
        if self._version() == len(migrations):
            return  # the usual case: no write lock needed
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(self._versions_table())
            # Read again under the lock: another process may have migrated meanwhile.
            self._apply_migrations(self._version(), migrations, self._conn.execute)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _write(self, groups: WriteGroups) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in groups:
                self._conn.executemany(sql, rows)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        return self._conn.execute(sql, params).rowcount

    def _query(self, sql: str, params: Sequence[Any]) -> tuple[list[str], list[Sequence[Any]]]:
        cursor = self._conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return names, cursor.fetchall()

    def _close(self) -> None:
        self._conn.close()

    def _migrations(self) -> Sequence[str]:
        return MIGRATIONS
