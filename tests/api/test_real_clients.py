"""The real Claude Code and Codex CLIs against the gateway (opt-in: ``make e2e``).

Skipped unless ``BRIDGE_REAL_CLIENTS=1`` and the ``claude`` and ``codex`` commands are on
PATH (``make e2e`` installs them from npm). Each CLI runs with its documented
configuration and a gateway key of its own user; ``bridgectl usage`` must then attribute
its traffic to that user and client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.processes import gateway_process, mock_process

pytestmark = pytest.mark.skipif(
    os.environ.get("BRIDGE_REAL_CLIENTS") != "1"
    or not (shutil.which("claude") and shutil.which("codex")),
    reason="set BRIDGE_REAL_CLIENTS=1 with claude and codex installed (make e2e)",
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    directory = tmp_path_factory.mktemp("real-clients")
    config = directory / "bridge.toml"
    with mock_process() as mock_port:
        config.write_text(
            f"[auth]\nmode = 'keys'\n[recording]\ndatabase = 'sqlite:///{directory}/bridge.db'\n"
            f"[providers.anthropic]\nbase_url = 'http://127.0.0.1:{mock_port}/'\n"
            "key = 'sk-ant-central-e2e-0000000000'\nmax_retries = 0\n"
            f"[providers.openai]\nbase_url = 'http://127.0.0.1:{mock_port}/v1/'\n"
            "key = 'sk-openai-central-e2e-00000000'\nmax_retries = 0\n"
        )
        os.environ["BRIDGE_CONFIG"] = str(config)
        try:
            with gateway_process(mock_port, database=f"sqlite:///{directory}/bridge.db") as port:
                yield port, config
        finally:
            del os.environ["BRIDGE_CONFIG"]


def bridge(*args: str, config: Path) -> str:
    command = [sys.executable, "-m", "bridge", *args, "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def usage(config: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(
        bridge("usage", "--by", "user", "--by", "client", "--format", "json", config=config)
    )
    return rows


def test_claude_code_with_its_documented_environment(
    gateway: tuple[int, Path], tmp_path: Path
) -> None:
    port, config = gateway
    key = bridge("keys", "create", "--user", "cc-user", config=config).strip()
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}/anthropic",
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    result = subprocess.run(
        ["claude", "-p", "Say hello"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert {"user": "cc-user", "client": "Claude Code"}.items() <= usage(config)[0].items()


def test_codex_with_a_custom_provider(gateway: tuple[int, Path], tmp_path: Path) -> None:
    port, config = gateway
    key = bridge("keys", "create", "--user", "codex-user", config=config).strip()
    (tmp_path / "config.toml").write_text(
        'model = "gpt-5"\nmodel_provider = "bridge"\n[model_providers.bridge]\nname = "bridge"\n'
        f'base_url = "http://127.0.0.1:{port}/openai/v1"\nenv_key = "BRIDGE_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {**os.environ, "CODEX_HOME": str(tmp_path), "BRIDGE_KEY": key}
    result = subprocess.run(
        ["codex", "exec", "--skip-git-repo-check", "Say hello"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    rows = [r for r in usage(config) if r["user"] == "codex-user"]
    assert rows[0]["client"] == "Codex"
