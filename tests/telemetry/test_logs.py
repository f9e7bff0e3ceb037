"""Tests for bridge.telemetry.logs: one parseable line per record, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import ObservabilityConfig, mask_secret
from bridge.telemetry.logs import (
    NOISY_LOGGERS,
    configure_logging,
    interception_log,
    redact_text,
)

ANTHROPIC_KEY = "sk-ant-api03-" + "A1b2C3d4E5f6G7h8I9j0" * 3
OPENAI_KEY = "sk-proj-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt" * 2
GATEWAY_KEY = "bk-3fZx9Qp2-" + "q" * 20 + "R" * 23
GITHUB_USER_TOKEN = "ghu_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github_pat_11ABCDEFG0_" + "xY" * 20
OPAQUE_BEARER = "opaque.Bearer-Token_0123456789"
OPAQUE_SECRET = "hunter2-correct-horse-battery"

SHAPED_KEYS = [ANTHROPIC_KEY, OPENAI_KEY, GATEWAY_KEY, GITHUB_USER_TOKEN, GITHUB_PAT]
ALL_SECRETS = [*SHAPED_KEYS, OPAQUE_BEARER, OPAQUE_SECRET]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging: it changes the process-wide root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    isolated = logging.getLogger("bridge.test")
    isolated.handlers.clear()
    isolated.propagate = True
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


def capture(log_format: str = "logfmt", level: str = "DEBUG") -> io.StringIO:
    """Configure logging into a string; ``bridge.test`` then reaches only our handler.

    These tests log raw keys on purpose, to prove the handler masks them. Without the
    isolation, the suite-wide key watch in conftest and pytest's capture handlers (both on
    the root logger) would see the raw records too. Levels still come from the root logger.
    """
    stream = io.StringIO()
    configure_logging(ObservabilityConfig(log_format=log_format, log_level=level), stream=stream)
    [ours] = [h for h in logging.getLogger().handlers if type(h).__name__ == "_BridgeHandler"]
    isolated = logging.getLogger("bridge.test")
    isolated.handlers[:] = [ours]
    isolated.propagate = False
    return stream


_LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """A tiny logfmt parser: bare values as text, quoted values as JSON strings."""
    pairs = _LOGFMT_PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, f"not logfmt: {line!r}"
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("restore_logging")
def test_logfmt_line_parses_back_with_extra_fields() -> None:
    stream = capture("logfmt")
    logging.getLogger("bridge.test").info(
        "interception ended",
        extra={"model": "claude-sonnet-4", "note": 'has "quotes" = and spaces', "n": 3},
    )
    [line] = lines(stream)
    fields = parse_logfmt(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])
    assert fields["level"] == "info"
    assert fields["logger"] == "bridge.test"
    assert fields["msg"] == "interception ended"
    assert fields["model"] == "claude-sonnet-4"
    assert fields["note"] == 'has "quotes" = and spaces'
    assert fields["n"] == "3"


@pytest.mark.usefixtures("restore_logging")
def test_json_line_parses_back_with_extra_fields_in_order() -> None:
    stream = capture("json")
    logging.getLogger("bridge.test").warning(
        "slow client detected", extra={"provider": "openai", "streaming": True, "ms": 12.5}
    )
    [line] = lines(stream)
    record = json.loads(line)
    assert list(record) == ["time", "level", "logger", "msg", "provider", "streaming", "ms"]
    assert record["level"] == "warning"
    assert record["msg"] == "slow client detected"
    assert record["provider"] == "openai"
    assert record["streaming"] is True
    assert record["ms"] == 12.5


@pytest.mark.parametrize("log_format", ["logfmt", "json", "text"])
@pytest.mark.usefixtures("restore_logging")
def test_exception_is_one_escaped_field_on_one_line(log_format: str) -> None:
    stream = capture(log_format)
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        logging.getLogger("bridge.test").exception("stream processing failed")
    [line] = lines(stream)
    if log_format == "json":
        exc = json.loads(line)["exc"]
    elif log_format == "logfmt":
        exc = parse_logfmt(line)["exc"]
    else:
        exc = json.loads(line.split("exc=", 1)[1])
    assert exc.startswith("Traceback (most recent call last):")
    assert "ValueError: first line\nsecond line" in exc


@pytest.mark.usefixtures("restore_logging")
def test_text_format_is_one_readable_line() -> None:
    stream = capture("text")
    logging.getLogger("bridge.test").info("bridge listening", extra={"url": "http://[::1]:80"})
    [line] = lines(stream)
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} INFO    bridge\.test  bridge listening  url=http://\[::1\]:80",
        line,
    )


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_twice_does_not_duplicate_lines() -> None:
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    first = capture("json")
    second = capture("logfmt")
    logging.getLogger("bridge.plain").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    assert foreign in logging.getLogger().handlers
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_BridgeHandler"]
    assert len(ours) == 1


@pytest.mark.usefixtures("restore_logging")
def test_level_filters_records_and_noisy_loggers_are_quieted() -> None:
    stream = capture("logfmt", level="WARNING")
    logging.getLogger("bridge.plain").info("hidden")
    logging.getLogger("bridge.plain").warning("shown")
    for name in NOISY_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING
    assert [parse_logfmt(line)["msg"] for line in lines(stream)] == ["shown"]


@pytest.mark.usefixtures("restore_logging")
def test_interception_log_fields_are_accepted_by_logging() -> None:
    stream = capture("json")
    extra = interception_log(
        interception_id="01J0",
        user="alice",
        provider="anthropic",
        model="claude-sonnet-4",
        outcome="ok",
        duration_ms=1234.6,
        input_tokens=10,
        output_tokens=20,
        cache_read=3,
        cache_write=4,
        client="claude-code",
        streaming=True,
    )
    logging.getLogger("bridge.interception").info("interception ended", extra=extra)
    record = json.loads(stream.getvalue())
    assert {k: record[k] for k in extra} == {**extra, "duration_ms": 1235}
    assert "error" not in record  # a completed interception has no reason to give


def test_interception_log_of_a_failure_carries_its_reason() -> None:
    extra = interception_log(
        interception_id="01J0",
        user="alice",
        provider="anthropic",
        model="m",
        outcome="failed",
        duration_ms=1.0,
        error="the upstream is unreachable",
    )
    assert extra["error"] == "the upstream is unreachable"


# Each case: how the secret is logged. Every case must hide the raw secret.
REDACTION_CASES = {
    "message": lambda log, s: log.info(f"upstream said no to {s}"),
    "message %-args": lambda log, s: log.info("using key %s", s),
    "bearer in message": lambda log, s: log.info(f"Authorization: Bearer {s}"),
    "header repr in message": lambda log, s: log.info(f"headers {{'x-api-key': '{s}'}}"),
    "query string in message": lambda log, s: log.info(f"GET /v1/models?key={s}&x=1"),
    "free text extra": lambda log, s: log.info("m", extra={"detail": f"bad {s} given"}),
    "authorization extra": lambda log, s: log.info("m", extra={"authorization": f"Bearer {s}"}),
    "x-api-key extra": lambda log, s: log.info("m", extra={"x-api-key": s}),
    "api_key extra": lambda log, s: log.info("m", extra={"api_key": s}),
    "token extra": lambda log, s: log.info("m", extra={"token": s}),
    "password extra": lambda log, s: log.info("m", extra={"password": s}),
    "admin_key extra": lambda log, s: log.info("m", extra={"admin_key": s}),
    "x-bridge-key extra": lambda log, s: log.info("m", extra={"x-bridge-key": s}),
    "cookie extra": lambda log, s: log.info("m", extra={"cookie": f"session={s}"}),
    "suffix-named extra": lambda log, s: log.info("m", extra={"provider_key": s}),
    "header mapping extra": lambda log, s: log.info("m", extra={"headers": {"X-Api-Key": s}}),
    "header list extra": lambda log, s: log.info("m", extra={"headers": [("Cookie", s)]}),
    "object extra": lambda log, s: log.info("m", extra={"request": ValueError(s)}),
}


def _log_exception(log: logging.Logger, secret: str) -> None:
    try:
        raise RuntimeError(f"upstream rejected api_key={secret}")
    except RuntimeError:
        log.exception("failed")


REDACTION_CASES["exception text"] = _log_exception

# Cases where only a secret's shape can give it away.
FREE_TEXT_CASES = frozenset({"message", "message %-args", "free text extra", "object extra"})


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
@pytest.mark.parametrize(
    ("case", "secret"),
    [
        (case, secret)
        for case in sorted(REDACTION_CASES)
        for secret in ALL_SECRETS
        # An opaque value in free text has nothing that marks it as a secret.
        if secret in SHAPED_KEYS or case not in FREE_TEXT_CASES
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_redacting_filter_never_lets_a_secret_through(
    case: str, secret: str, log_format: str
) -> None:
    stream = capture(log_format)
    REDACTION_CASES[case](logging.getLogger("bridge.test"), secret)
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert secret not in output
    assert secret[4:-4] not in output
    if case not in ("cookie extra", "object extra"):  # those mask a longer value whole
        assert mask_secret(secret) in output


@pytest.mark.parametrize("log_format", ["logfmt", "json", "text"])
@pytest.mark.usefixtures("restore_logging")
def test_credentials_in_a_logged_url_are_masked(log_format: str) -> None:
    stream = capture(log_format)
    url = "http://user:pw-hunter2@mcp.local/mcp?region=eu&token=s3cr3t-value"
    logging.getLogger("bridge.test").warning("cannot reach %s", url, extra={"url": url})
    output = stream.getvalue()
    assert "s3cr3t-value" not in output
    assert "pw-hunter2" not in output
    assert "http://user:***@mcp.local/mcp?region=eu&token=" in output


@pytest.mark.usefixtures("restore_logging")
def test_bearer_scheme_stays_readable() -> None:
    stream = capture("json")
    logging.getLogger("bridge.test").info("m", extra={"authorization": f"Bearer {OPAQUE_BEARER}"})
    assert json.loads(stream.getvalue())["authorization"] == f"Bearer {mask_secret(OPAQUE_BEARER)}"


@pytest.mark.usefixtures("restore_logging")
def test_two_redacting_handlers_mask_once() -> None:
    first, second = capture("json"), io.StringIO()
    handler = logging.StreamHandler(second)
    handler.addFilter(logging.getLogger("bridge.test").handlers[0].filters[0])
    logging.getLogger("bridge.test").addHandler(handler)
    logging.getLogger("bridge.test").info(f"key {ANTHROPIC_KEY}")
    assert mask_secret(ANTHROPIC_KEY) in first.getvalue()
    assert second.getvalue() == f"key {mask_secret(ANTHROPIC_KEY)}\n"


@pytest.mark.parametrize(
    "text",
    [
        "interception ended",
        "risk-assessment-v2 and task-runner-12345",
        "monkey=banana",
        "model claude-3-5-sonnet-20241022 via gpt-4.1-mini",
        "credential_hint=sk-a...efgh",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


_KEY_BODY = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@given(
    prefix=st.sampled_from(["sk-ant-api03-", "sk-", "sk-proj-", "bk-", "ghu_", "github_pat_"]),
    body=_KEY_BODY.filter(lambda b: len(b) >= 12),
    before=st.text(alphabet=" \t\n,;:=({['\"", min_size=1, max_size=3),
    after=st.text(alphabet=" \t\n,;)}]'\".", min_size=1, max_size=3),
)
def test_a_shaped_key_in_any_surrounding_is_masked(
    prefix: str, body: str, before: str, after: str
) -> None:
    # A key glued to a word ("xsk-...") is not recognised: "task-1234567" must stay readable.
    key = prefix + body
    redacted = redact_text(f"x{before}{key}{after}y")
    assert key not in redacted
    assert mask_secret(key) in redacted
