"""Start the mock upstream and the gateway as separate processes on loopback, pinned to cores.

Rules: every process is stopped when its ``with`` block ends, normally or not (terminate, then
kill after 30 s). The gateway gets its whole configuration from a TOML file written here
(``BRIDGE_CONFIG``): auth mode ``none`` so no keys are needed, one ``anthropic`` and one
``openai`` provider pointing at the mock, retries off, SQLite recording in a temporary
directory unless the caller names a database. Pinning (``os.sched_setaffinity``) happens right
after start, before the process has served anything, so every measurement sees it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GATEWAY_CPU",
    "LOAD_CPU",
    "Gateway",
    "Served",
    "free_port",
    "gateway_process",
    "mock_process",
    "pin",
    "served_process",
]

GATEWAY_CPU = 0
"""The core the gateway runs on."""
LOAD_CPU = 1
"""The core shared by the mock upstream and the load generator."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(pid: int, cpu: int | None) -> None:
    """Pin ``pid`` (0: this process) to ``cpu``; no-op when None or the core does not exist.

    On a 1-core machine pinning would only serialise everything on core 0, so it is skipped.
    """
    if cpu is None or cpu >= (os.cpu_count() or 1):
        return
    os.sched_setaffinity(pid, {cpu})


@dataclass(frozen=True, slots=True)
class Served:
    """A process listening on 127.0.0.1:``port``."""

    port: int
    pid: int


@dataclass(frozen=True, slots=True)
class Gateway:
    """A running ``bridgectl serve`` and the SQLite file it records into."""

    port: int
    pid: int
    database: Path


def _wait_listening(
    port: int, process: subprocess.Popen[bytes], timeout: float, log: Path | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if log is not None:
                stderr = log.read_text(errors="replace")[-4000:]
            else:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening: {stderr}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def served_process(
    args: list[str],
    port: int,
    *,
    cpu: int | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    start_timeout: float = 30.0,
) -> Iterator[Served]:
    """Run ``args`` until the block ends; yield once it accepts connections on ``port``.

    ``env`` replaces the environment (None: inherit it). Standard error goes to ``log`` when
    given (a chatty process can never block on a full pipe), else to a pipe read only when the
    process dies before listening.
    """
    with open(log, "wb") if log is not None else contextlib.nullcontext() as sink:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=sink if sink is not None else subprocess.PIPE,
        )
        try:
            pin(process.pid, cpu)
            _wait_listening(port, process, start_timeout, log)
            yield Served(port, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def mock_process(cpu: int | None = LOAD_CPU) -> Iterator[Served]:
    """The mock upstream with the benchmark scenarios (:mod:`benchmarks.scenarios`)."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.scenarios", "--port", str(port)]
    with served_process(args, port, cpu=cpu) as served:
        yield served


def gateway_config(port: int, upstream_port: int, database: str, extra: str = "") -> str:
    """The TOML the benchmark gateway runs with; ``extra`` is appended verbatim."""
    return (
        f"[server]\nport = {port}\nworkers = 1\n"
        "[auth]\nmode = 'none'\n"
        f"[recording]\ndatabase = '{database}'\n"
        "[observability]\nlog_level = 'WARNING'\n"
        "[providers.anthropic]\ntype = 'anthropic'\n"
        f"base_url = 'http://127.0.0.1:{upstream_port}/'\n"
        "key = 'sk-ant-bench-key-000000000000'\nmax_retries = 0\n"
        "[providers.openai]\ntype = 'openai'\n"
        f"base_url = 'http://127.0.0.1:{upstream_port}/v1/'\n"
        "key = 'sk-bench-key-000000000000'\nmax_retries = 0\n" + extra
    )


@contextmanager
def gateway_process(
    upstream_port: int,
    *,
    cpu: int | None = GATEWAY_CPU,
    extra_config: str = "",
    directory: Path | None = None,
) -> Iterator[Gateway]:
    """``bridgectl serve`` (one worker) in front of the mock, recording to SQLite.

    The database and config go to ``directory`` when given, so the caller can read the
    database after the gateway stopped; else to a temporary directory removed at the end.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as scratch:
        directory = directory or Path(scratch)
        database = Path(directory) / "bench.db"
        config = Path(directory) / "bridge.toml"
        config.write_text(
            gateway_config(port, upstream_port, f"sqlite:///{database}", extra_config)
        )
        env = {"BRIDGE_CONFIG": str(config)}
        for name in os.environ:  # the file must be the only source of configuration
            if name.startswith(("BRIDGE_", "ANTHROPIC_", "OPENAI_")) and name != "BRIDGE_CONFIG":
                env[name] = ""
        args = [sys.executable, "-m", "bridge", "serve"]
        with served_process(args, port, cpu=cpu, env={**os.environ, **env}) as served:
            yield Gateway(served.port, served.pid, database)
