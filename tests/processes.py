"""Start the mock upstream and the gateway as separate processes, for tests that need them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["free_port", "gateway_process", "mock_process", "wait_listening"]


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


@contextmanager
def _process(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[int]:
    process = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(port, process)
        yield port
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
def gateway_process(upstream_port: int, *, database: str | None = None) -> Iterator[int]:
    """``bridgectl serve`` in front of the mock; yields the port.

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
        with _process(args, port, env):
            yield port
