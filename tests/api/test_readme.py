"""README.md's commands run as written, from a fresh checkout, without activating the venv."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.process.cli import _parser

from ..processes import mock_process

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)
_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")


def commands() -> list[list[str]]:
    """Each command of the README's shell blocks as words: continuations joined, comments,
    leading ``VAR=value`` assignments and anything after a shell operator left out."""
    found = []
    for block in SHELL_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and _ASSIGNMENT.match(words[0]):
                words.pop(0)
            for index, word in enumerate(words):
                if word in ("&", "&&", "|", ";", ">/dev/null") or word.startswith("$("):
                    words = words[:index]
                    break
            if words and words[0] not in ("export", "claude", "codex", "until"):
                found.append(words)
    return found


def test_the_readme_has_shell_commands() -> None:
    assert any(words[0] == ".venv/bin/bridgectl" for words in commands())


@pytest.mark.parametrize("words", commands(), ids=" ".join)
def test_no_command_is_iproute2s_bridge(words: list[str]) -> None:
    """``bridge`` is iproute2's command on most Linux machines: ours is ``bridgectl``."""
    assert words[0] != "bridge"


VENV_PROGRAMS = sorted({words[0] for words in commands() if words[0].startswith(".venv/bin/")})


@pytest.mark.parametrize("program", VENV_PROGRAMS)
def test_venv_programs_are_installed(program: str) -> None:
    """Each ``.venv/bin/...`` program of the README exists and runs."""
    if not (ROOT / ".venv").is_dir():
        pytest.skip("no .venv in this checkout: `make test` creates it")
    assert (ROOT / program).is_file(), f"{program} is not installed by `make install`"
    result = subprocess.run(
        [str(ROOT / program), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


BRIDGECTL = [words for words in commands() if words[0] == ".venv/bin/bridgectl"]


@pytest.mark.parametrize("words", BRIDGECTL, ids=" ".join)
def test_bridgectl_lines_parse(words: list[str]) -> None:
    """Each ``bridgectl`` line of the README is a command line the parser accepts."""
    args = _parser().parse_args(words[1:])
    assert args.command is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_try_it_locally_reaches_a_recorded_request(tmp_path: Path) -> None:
    """The "Try it locally" block, run as written in a fresh directory, records both
    requests for its user. Only the two ports are swapped for free ones."""
    if not (ROOT / ".venv").is_dir():
        pytest.skip("no .venv in this checkout: `make test` creates it")
    section = README.split("## Try it locally", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    mock, gateway = _free_port(), _free_port()
    script = block.replace("9090", str(mock)).replace("8080", str(gateway))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "ANTHROPIC_", "OPENAI_"))
    }
    environment["BRIDGE_SERVER_PORT"] = str(gateway)
    result = subprocess.run(
        ["bash", "-c", "set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"type":"message"' in result.stdout  # curl's answer
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("you ")]
    assert [(row[1], row[2]) for row in rows] == [("claude-sonnet-4-6", "1"), ("gpt-5", "1")]


def test_the_embedding_snippet_runs(tmp_path: Path) -> None:
    """The README's embedding example is a complete script: run against the mock upstream
    (its one provider URL swapped), it answers blocking and streaming."""
    section = README.split("## Embedding", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert snippet.count("https://api.anthropic.com/") == 1
    with mock_process() as port:
        script = snippet.replace("https://api.anthropic.com/", f"http://127.0.0.1:{port}/")
        (tmp_path / "embed.py").write_text(script)
        result = subprocess.run(
            [sys.executable, "embed.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("200 The capital of France is Paris.")
    assert "event: message_stop" in result.stdout
