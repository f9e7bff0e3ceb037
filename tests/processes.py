"""Start the mock upstream and the gateway as separate processes, for tests that need them."""

from __future__ import annotations

import os
import select
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
    "Running",
    "free_port",
    "gateway_process",
    "listens",
    "mock_process",
    "wait_for_output",
    "wait_listening",
    "worker_pids",
]


@dataclass(frozen=True, slots=True)
class Running:
    """A process listening on 127.0.0.1:``port``."""

    port: int
    pid: int


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def worker_pids(parent: int, count: int | None = None, timeout: float = 30.0) -> set[int]:
    """The pids of the worker processes ``bridgectl serve --workers N`` (pid ``parent``) runs;
    with ``count``, once that many are running (waiting up to ``timeout`` seconds).

    A worker is a child running multiprocessing's ``spawn_main``. The parent's other child,
    the resource tracker, is started at the same time as the first worker, and right after
    the fork either one still shows the parent's command line: only a child that shows
    ``spawn_main`` is known to be a worker.
    """
    deadline = time.monotonic() + timeout
    while True:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        pids = set()
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:  # it has just exited
                continue
            if b"spawn_main" in command:
                pids.add(child)
        if count is None or len(pids) == count or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except FileNotFoundError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_for_output(
    process: subprocess.Popen[bytes], text: str, seen: bytearray, timeout: float = 20.0
) -> str:
    """Read ``process.stderr`` until a line contains ``text``; that line.

    ``seen`` keeps what was read (across calls), for the assertion message.
    """
    assert process.stderr is not None
    descriptor = process.stderr.fileno()
    deadline = time.monotonic() + timeout
    start = len(seen)
    while True:
        lines = seen[start:].decode(errors="replace").splitlines()
        found = [line for line in lines if text in line]
        if found:
            return found[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
            raise AssertionError(f"no line with {text!r} in {timeout} s; stderr: {bytes(seen)!r}")
        chunk = os.read(descriptor, 65536)
        if not chunk:
            raise AssertionError(f"stderr ended with no line with {text!r}: {bytes(seen)!r}")
        seen += chunk


@contextmanager
def _process(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[Running]:
    process = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(port, process)
        yield Running(port, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def mock_process() -> Iterator[int]:
    """``bridgectl mock-upstream`` on a free port; yields the port."""
    port = free_port()
    with _process([sys.executable, "-m", "bridge", "mock-upstream", "--port", str(port)], port):
        yield port


@contextmanager
def gateway_process(upstream_port: int, *, database: str | None = None) -> Iterator[Running]:
    """``bridgectl serve`` (default configuration: auth mode ``keys``) in front of the mock.

    SQLite in a temporary directory unless ``database`` names a store.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as directory:
        env = {
            "BRIDGE_SERVER_PORT": str(port),
            "BRIDGE_RECORDING_DATABASE": database or f"sqlite:///{Path(directory) / 'bench.db'}",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{upstream_port}/",
            "ANTHROPIC_API_KEY": "sk-ant-bench-key-000000000000",
        }
        args = [sys.executable, "-m", "bridge", "serve", "--log-level", "WARNING"]
        with _process(args, port, env) as running:
            yield running
