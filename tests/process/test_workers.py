"""Several gateway processes on one port: /metrics shows the totals of all of them; a
worker that dies is replaced, and no packet from a client ends one."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import (
    free_port,
    listens,
    mock_process,
    wait_for_output,
    wait_listening,
    worker_pids,
)
from tests.rawhttp import BAD_PATH_HEADERS, h2_request_packet


def total(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@contextmanager
def two_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``bridge serve --workers 2`` in front of the mock; yields the process and its URL.

    On leaving, SIGTERM must stop it with status 0.
    """
    port = free_port()
    with mock_process() as mock_port:
        env = {
            "BRIDGE_AUTH_MODE": "none",
            "BRIDGE_SERVER_PORT": str(port),
            "BRIDGE_RECORDING_DATABASE": f"sqlite:///{tmp_path / 'bridge.db'}",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{mock_port}/",
            "ANTHROPIC_API_KEY": "sk-ant-workers-test-0000000000",
            "PATH": "/usr/bin:/bin",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--workers", "2", "--log-level", "WARNING"],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            wait_listening(port, process)
            yield process, f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


@pytest.mark.slow
def test_two_workers_share_the_port_and_report_all_totals(tmp_path: Path) -> None:
    with two_workers(tmp_path) as (_, url):
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):  # a new connection each time: the kernel spreads them
            assert httpx2.post(f"{url}/anthropic/v1/messages", json=body).status_code == 200
        scrapes = [httpx2.get(f"{url}/metrics").text for _ in range(6)]
        assert {total(text, "interceptions_total") for text in scrapes} == {20.0}


@pytest.mark.slow
def test_http2_packets_with_a_non_ascii_path_end_no_worker(tmp_path: Path) -> None:
    """Once, one such packet made a worker exit; two ended `bridge serve --workers 2`."""
    with two_workers(tmp_path) as (process, url):
        workers = worker_pids(process.pid, 2)
        assert len(workers) == 2
        port = int(url.rsplit(":", 1)[1])
        for _ in range(10):  # new connections: the kernel spreads them over both workers
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(h2_request_packet(BAD_PATH_HEADERS))
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 505 "), reply[:200]
        for _ in range(6):
            assert httpx2.get(f"{url}/healthz").status_code == 200
        assert process.poll() is None
        assert worker_pids(process.pid, 2) == workers  # none died, none had to be replaced


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    """The supervisor logs the death and starts a new worker; the port keeps answering."""
    seen = bytearray()
    with two_workers(tmp_path) as (process, url):
        workers = worker_pids(process.pid, 2)
        assert len(workers) == 2
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while not all(listens(pid, port) for pid in workers):  # both fully started
            assert time.monotonic() < deadline, f"the workers {workers} never both listened"
            time.sleep(0.05)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        line = wait_for_output(process, f"pid {victim}", seen, timeout=60)
        assert "SIGKILL" in line
        assert "replaced" in line
        replacements = worker_pids(process.pid, 2)
        assert len(replacements) == 2
        assert victim not in replacements
        replacement = int(re.findall(r"pid (\d+)", line)[-1])
        assert replacement in replacements
        deadline = time.monotonic() + 60
        while not listens(replacement, port):  # it starts as the first ones did
            assert time.monotonic() < deadline, f"the new worker {replacement} never listened"
            time.sleep(0.05)
        for _ in range(6):
            assert httpx2.get(f"{url}/healthz").status_code == 200
