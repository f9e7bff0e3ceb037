"""The command line: check-config, usage reports, and the embedding example."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import ConfigError
from bridge.process.cli import main
from bridge.recording.records import (
    CredentialKind,
    InterceptionEnded,
    InterceptionStarted,
    Outcome,
    TokenUsage,
)
from bridge.recording.reports import format_usage, parse_since
from bridge.recording.sqlite import SQLiteStore

from ..postgres import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_prints_the_effective_config_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-very-secret-key-000111")
    monkeypatch.setenv("BRIDGE_SERVER_PORT", "9001")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "port = 9001" in out
    assert "very-secret" not in out
    assert "sk-a...0111" in out


def test_check_config_masks_the_credentials_of_an_mcp_server_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[mcp.servers.tools]\nurl = "https://user:pw-hunter2@mcp.example/mcp?token=s3cr3t-value"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert 'url = "https://user:***@mcp.example/mcp?token=***"  # masked' in out
    assert "s3cr3t-value" not in out
    assert "pw-hunter2" not in out


def test_invalid_config_exits_2_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text("[recording]\ndatabse = 'x'\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bridge: unknown key 'recording.databse'")
    assert "did you mean 'recording.database'?" in err
    assert "Traceback" not in err


def _record(
    store: SQLiteStore,
    user: str,
    model: str,
    tokens: int,
    outcome: Outcome,
    metadata: dict[str, str] | None = None,
) -> None:
    start = InterceptionStarted(
        id=f"{user}-{model}-{tokens}",
        initiator_id=user,
        provider="anthropic",
        provider_name="anthropic",
        model=model,
        streaming=False,
        client="Claude Code",
        user_agent="claude-cli/2",
        credential_kind=CredentialKind.CENTRALIZED,
        credential_hint="sk-a...0000",
        metadata=metadata or {},
    )
    store.write_batch(
        [
            start,
            TokenUsage(start.id, "msg_1", input=tokens, output=tokens // 2, cache_read=7),
            InterceptionEnded(start.id, outcome),
        ]
    )


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_usage_report_in_every_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    database = tmp_path / "usage.db"
    with SQLiteStore(database) as store:
        _record(store, "alice", "claude-sonnet-4-6", 100, Outcome.COMPLETED)
        _record(store, "alice", "claude-sonnet-4-6", 300, Outcome.FAILED)
        _record(store, "bob", "gpt-5", 50, Outcome.COMPLETED)
    monkeypatch.setenv("BRIDGE_RECORDING_DATABASE", f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    assert main(["usage", "--by", "user", "--by", "model", "--since", "7d", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert rows[0] == {
            "user": "alice",
            "model": "claude-sonnet-4-6",
            "interceptions": 2,
            "failures": 1,
            "input": 400,
            "output": 200,
            "cache_read": 14,
            "cache_write": 0,
            "cache_write_5m": 0,
            "cache_write_1h": 0,
            "reasoning": 0,
            "web_search_requests": 0,
            "tool_calls": 0,
        }
        assert rows[1]["user"] == "bob"
    elif fmt == "csv":
        lines = out.splitlines()
        assert lines[0].startswith("user,model,interceptions,failures,input,output")
        assert lines[1] == "alice,claude-sonnet-4-6,2,1,400,200,14,0,0,0,0,0,0"
    else:
        assert out.splitlines()[1].split() == [
            "alice",
            "claude-sonnet-4-6",
            "2",
            "1",
            "400",
            "200",
            "14",
            *["0"] * 6,
        ]


def test_usage_by_key_metadata_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "usage.db"
    with SQLiteStore(database) as store:
        _record(store, "alice", "m", 100, Outcome.COMPLETED, metadata={"team": "platform"})
        _record(store, "bob", "m", 50, Outcome.COMPLETED)
    monkeypatch.setenv("BRIDGE_RECORDING_DATABASE", f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    assert main(["usage", "--by", "meta:team", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["meta:team"], row["input"]) for row in rows] == [("", 50), ("platform", 100)]
    with pytest.raises(SystemExit) as exit_:
        main(["usage", "--by", "team"])
    assert exit_.value.code == 2
    assert "meta:KEY" in capsys.readouterr().err


def test_usage_table_says_when_nothing_was_recorded() -> None:
    assert "(no interceptions recorded in this period)" in format_usage([], ("user",), "table")


def test_since_accepts_durations_and_dates() -> None:
    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
    assert parse_since("24h", now=now) == now - dt.timedelta(hours=24)
    assert parse_since("7d", now=now) == now - dt.timedelta(days=7)
    assert parse_since("2026-11-01", now=now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("text", ["99999999999d", "99999999999w", "9" * 5000 + "s", "36501d"])
def test_since_too_far_back_is_refused_with_the_valid_range(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--since must be a duration from 0s to 36500d"):
        parse_since(text)
    assert parse_since("36500d") < dt.datetime.now(dt.UTC)


def test_usage_since_too_far_back_exits_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["usage", "--since", "99999999999d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bridge: --since must be a duration from 0s to 36500d")
    assert "Traceback" not in err


def test_embedding_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "blocking: 200" in result.stdout
    assert "streaming: 200" in result.stdout
    assert result.stdout.count("-> completed") == 2


# -- a database password never shows --------------------------------------------------------

DB_PASSWORD = "Db-pa55word-never-shown"


class _NoKeys:
    """A store that cannot keep gateway keys (every store of bridge can: a plug-in's may not)."""

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bridge:{pw}@127.0.0.1:{port}/bridge",
        "postgres://bridge@127.0.0.1:{port}/bridge?connect_timeout=2&password={pw}",
    ],
)
def test_no_command_shows_the_database_password(
    url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Every command that names the database (to report it unreachable, unable to keep
    keys, or in the effective configuration) names it masked, on stdout, stderr and in logs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_RECORDING_DATABASE", url.format(pw=DB_PASSWORD, port=free_port()))
    commands = [
        ["check-config"],
        ["usage"],
        ["keys", "list"],
        ["keys", "create", "--user", "alice"],
        ["keys", "revoke", "key-id"],
    ]
    shown = []
    for command in commands:
        main(command)
        shown.append(capsys.readouterr())
    monkeypatch.setattr("bridge.process.cli.open_store", lambda _url: _NoKeys())
    assert main(["keys", "list"]) == 2
    no_keys = capsys.readouterr()
    assert "cannot keep gateway keys" in no_keys.err
    assert "***" in no_keys.err
    shown.append(no_keys)
    assert "***" in shown[0].out  # check-config shows the URL, masked
    assert all("***" in output.err for output in shown[1:])  # each says which database
    everything = "".join(o.out + o.err for o in shown) + caplog.text
    assert DB_PASSWORD not in everything


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_serve_without_its_database_nor_a_journal_exits_2_saying_what_to_do(
    tmp_path: Path, workers: str
) -> None:
    url = f"postgresql://bridge:{DB_PASSWORD}@127.0.0.1:{free_port()}/bridge"
    environ = {**os.environ, "BRIDGE_RECORDING_DATABASE": url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--port", "0", "--workers", workers],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    # Logged warnings about the configuration (no provider key) may come first.
    error = "".join(line for line in done.stderr.splitlines(True) if not line.startswith("time="))
    assert error.startswith("bridge: cannot connect to the PostgreSQL database")
    assert "set recording.journal_dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert DB_PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (["--workers", "1"], "Address already in use"),
        (["--workers", "2"], "Address already in use"),
        (["--host", "192.0.2.1", "--workers", "1"], "Cannot assign requested address"),
    ],
    ids=["port taken", "port taken, two workers", "not this machine's address"],
)
def test_an_address_that_cannot_be_listened_on_is_one_line_and_exit_2(
    tmp_path: Path, where: list[str], reason: str
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "serve", "--port", str(port), *where],
            cwd=tmp_path,
            env={
                **os.environ,
                "BRIDGE_AUTH_MODE": "none",
                "ANTHROPIC_API_KEY": "sk-ant-test-key-0123456789",
                "OPENAI_API_KEY": "sk-test-key-0123456789",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("bridge: cannot listen on ")
    assert reason in line
    assert "--port" in line


def test_check_config_warns_about_a_provider_without_a_key_and_shows_the_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text("[providers.local-llm]\ntype = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n")
    assert main(["check-config", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    for name in ("anthropic", "openai", "copilot", "local-llm"):
        assert f"[providers.{name}]" in captured.out
    warnings = captured.err.splitlines()
    assert len(warnings) == 3  # anthropic, openai, local-llm; not copilot
    assert any("ANTHROPIC_API_KEY" in line for line in warnings)
    assert all(line.startswith("bridge: warning: providers.") for line in warnings)


def _serve_without_serving(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make `bridgectl serve` stop after start-up: the configs it would serve are kept."""
    served: list[object] = []
    monkeypatch.setattr("bridge.process.cli.serve_worker", served.append)
    monkeypatch.setattr("bridge.process.cli.configure_logging", lambda _config: None)
    return served


def test_serve_warns_about_a_provider_without_a_key(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-central-key-0123456789")
    served = _serve_without_serving(monkeypatch)
    with caplog.at_level("WARNING"):
        assert main(["serve"]) == 0
    assert len(served) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1
    assert "providers.anthropic.key" in warned[0]
    assert "ANTHROPIC_API_KEY" in warned[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "80000"], "bridge: --port must be an integer from 0 to 65535, got 80000\n"),
        (["--workers", "0"], "bridge: --workers must be an integer from 1 to 64, got 0\n"),
        (["--host", "a b"], "bridge: --host must be a host name or IP address, got 'a b'\n"),
        (
            ["--log-level", "loud"],
            "bridge: --log-level must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR', got 'LOUD'\n",
        ),
    ],
)
def test_an_invalid_flag_is_named_as_typed(
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    served = _serve_without_serving(monkeypatch)
    assert main(["serve", *flags]) == 2
    assert capsys.readouterr().err.endswith(message)
    assert served == []
