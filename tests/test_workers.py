"""Several gateway processes on one port: /metrics shows the totals of all of them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import free_port, mock_process, wait_listening


def total(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_two_workers_share_the_port_and_report_all_totals(tmp_path: Path) -> None:
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
        url = f"http://127.0.0.1:{port}"
        try:
            wait_listening(port, process)
            body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(20):  # a new connection each time: the kernel spreads them
                assert httpx2.post(f"{url}/anthropic/v1/messages", json=body).status_code == 200
            scrapes = [httpx2.get(f"{url}/metrics").text for _ in range(6)]
            assert {total(text, "interceptions_total") for text in scrapes} == {20.0}
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
