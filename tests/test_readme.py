"""README.md's commands run as written, from a fresh checkout, without activating the venv."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bridge.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def shell_lines() -> list[str]:
    lines = []
    for block in SHELL_BLOCKS:
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if command and not command.startswith(("export ", "claude", "codex")):
                lines.append(command)
    return lines


def test_the_readme_has_shell_commands() -> None:
    assert any(line.startswith(".venv/bin/bridgectl") for line in shell_lines())


@pytest.mark.parametrize("line", shell_lines())
def test_no_command_is_iproute2s_bridge(line: str) -> None:
    """``bridge`` is iproute2's command on most Linux machines: ours is ``bridgectl``."""
    assert shlex.split(line)[0] != "bridge"


VENV_LINES = [line for line in shell_lines() if line.startswith(".venv/bin/")]


def test_venv_programs_are_installed() -> None:
    """Each ``.venv/bin/...`` program of the README exists and runs (one start each)."""
    if not (ROOT / ".venv").is_dir():
        pytest.skip("no .venv in this checkout: `make test` creates it")
    for program in sorted({shlex.split(line)[0] for line in VENV_LINES}):
        assert (ROOT / program).is_file(), f"{program} is not installed by `make install`"
        result = subprocess.run(
            [str(ROOT / program), "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("line", [line for line in VENV_LINES if "bridgectl" in line])
def test_bridgectl_lines_parse(line: str) -> None:
    """Each ``bridgectl`` line of the README is a command line the parser accepts."""
    words = [
        w if w != "<id>" else "00000000-0000-0000-0000-000000000000" for w in shlex.split(line)
    ]
    args = _parser().parse_args(words[1:])
    assert args.command is not None
