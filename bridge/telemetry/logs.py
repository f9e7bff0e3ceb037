"""Structured logging: one line per record, in logfmt, JSON or a human format, with secrets masked.

The gateway logs through the standard library (``logging.getLogger("bridge.<module>")``) and
passes structured fields with ``extra=``. :func:`configure_logging` installs the one handler
that turns records into lines. The rules:

1. **One line per record.** Every record becomes exactly one line: ``time`` (RFC 3339, UTC,
   milliseconds), ``level`` (lower case), ``logger``, ``msg``, then every ``extra=`` field in
   the order given. A traceback is one escaped ``exc`` field, never a multi-line block, so a
   log shipper never splits a record.
2. **Secrets never show.** :class:`RedactingFilter` sits on the handler, so it covers every
   logger, ours and third-party. It masks (with :func:`bridge.config.mask_secret`,
   docs/behaviour.md §2.4) the values of secret-bearing field names, and anything in any text
   (message, string fields, traceback) that looks like a provider key, a gateway key, a GitHub
   token, a ``Bearer``/``Basic`` credential or a ``name=value`` pair with a secret-bearing name,
   and the credentials of every URL in it (:func:`bridge.config.mask_url`).
   Masking errs on the side of masking: a false positive costs a readable value, a false
   negative leaks a key.
3. **Idempotent configuration.** Calling :func:`configure_logging` again replaces the handler
   it installed before; handlers installed by someone else (a test harness, an embedding
   program) are left alone.
4. **Quiet dependencies.** HTTP client, access-log and MCP loggers are raised to ``WARNING``:
   per-request chatter from them would drown the one ``interception ended`` line per request.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Final, TextIO

from bridge.config import ObservabilityConfig, mask_secret, mask_urls_in

__all__ = [
    "NOISY_LOGGERS",
    "SECRET_FIELD_NAMES",
    "JsonFormatter",
    "LogfmtFormatter",
    "RedactingFilter",
    "TextFormatter",
    "configure_logging",
    "interception_log",
    "redact_text",
]

NOISY_LOGGERS: Final = ("httpx2", "httpcore2", "hypercorn.access", "mcp")
"""Third-party loggers raised to WARNING by :func:`configure_logging`."""

SECRET_FIELD_NAMES: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "x_api_key",
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "admin_key",
        "x_bridge_key",
        "x_auth_token",
        "x_amz_security_token",
        "cookie",
        "set_cookie",
    }
)
"""Field names (lower case, ``-`` read as ``_``) whose values are always masked whole.

Names ending in ``_key``, ``_token``, ``_secret`` or ``_password`` are masked too
(``provider_key``, ``session_token``); see :func:`_is_secret_name`.
"""

_SECRET_SUFFIXES: Final = ("_key", "_token", "_secret", "_password")

# Attributes every LogRecord has, so that anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "_bridge_redacted"}
)

# Characters that make a logfmt value need quotes.
_NEEDS_QUOTES: Final = re.compile(r'[\s="\\]|[\x00-\x1f\x7f]')

# Secret-bearing names as they appear in text: "x-api-key: ...", "token=...", '"password": "..."'.
_TEXT_NAMES: Final = (
    r"(?:proxy[-_])?authorization|x[-_]api[-_]key|api[-_]?key|x[-_]bridge[-_]key|admin[-_]key"
    r"|x[-_]auth[-_]token|x[-_]amz[-_]security[-_]token|(?:access|refresh|id)[-_]token"
    r"|client[-_]secret|set[-_]cookie|cookie|password|passwd|secret|token|key"
)
_VALUE: Final = r"[^\s\"',;&}\]]+"
_SECRET_IN_TEXT: Final = re.compile(
    # A credential with its scheme: the scheme stays readable, the credential is masked.
    rf"(?P<scheme>\b(?:Bearer|Basic)\s+)(?P<credential>{_VALUE})"
    # name=value / name: value / "name": "value", with an optional scheme before the value.
    rf"|(?P<name>(?<![A-Za-z0-9_-])(?:{_TEXT_NAMES})[\"']?\s*[=:]\s*[\"']?"
    rf"(?:(?:Bearer|Basic)\s+)?)(?P<value>{_VALUE})"
    # Keys recognisable by their shape alone.
    r"|(?P<key>(?<![A-Za-z0-9_-])(?:"
    r"sk-ant-[A-Za-z0-9_-]{6,}"  # Anthropic
    r"|sk-[A-Za-z0-9_-]{6,}"  # OpenAI (sk-..., sk-proj-...)
    r"|bk-[A-Za-z0-9_-]{6,}"  # gateway keys (bridge.identity.keys)
    r"|gh[opsur]_[A-Za-z0-9]{6,}"  # GitHub OAuth / app / user-to-server tokens (Copilot)
    r"|github_pat_[A-Za-z0-9_]{6,}"  # GitHub fine-grained personal access tokens
    r"))",
    re.IGNORECASE,
)


def _is_secret_name(name: str) -> bool:
    normal = name.lower().replace("-", "_")
    return normal in SECRET_FIELD_NAMES or normal.endswith(_SECRET_SUFFIXES)


def _mask_match(match: re.Match[str]) -> str:
    if match.group("credential") is not None:
        return match.group("scheme") + mask_secret(match.group("credential"))
    if match.group("value") is not None:
        return match.group("name") + mask_secret(match.group("value"))
    return mask_secret(match.group("key"))


def redact_text(text: str) -> str:
    """``text`` with everything that looks like a secret masked with :func:`mask_secret`.

    One pass of one regular expression, so a value is masked once: a masked value contains
    ``...`` and is too short to look like a key again.
    """
    return _SECRET_IN_TEXT.sub(_mask_match, mask_urls_in(text))


def _mask_value(value: object) -> object:
    """The whole value of a secret-bearing field, masked (``Bearer`` stays readable)."""
    if isinstance(value, str):
        scheme, space, credential = value.partition(" ")
        if space and scheme.lower() in ("bearer", "basic"):
            return f"{scheme} {mask_secret(credential.strip())}"
        return mask_secret(value)
    if value is None or isinstance(value, bool):
        return value
    return mask_secret(str(value))


def _redact_field(name: str, value: object) -> object:
    """A field value with its secrets masked, keeping structure that JSON can show."""
    if _is_secret_name(name):
        if isinstance(value, Mapping):
            return {str(k): _mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_mask_value(item) for item in value]
        return _mask_value(value)
    return _redact_value(value)


def _redact_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # A header list [(name, value), ...] masks by name, like a mapping does.
        if all(isinstance(item, tuple) and len(item) == 2 for item in value):
            return [[str(k), _redact_field(str(k), v)] for k, v in value]
        return [_redact_value(item) for item in value]
    # Anything else is shown by str(), which may reveal what it holds: redact that text.
    return redact_text(str(value))


class RedactingFilter(logging.Filter):
    """Mask secrets in a record's message, extra fields, traceback and stack, in place.

    Attached to the handler (not to a logger), so that it also sees records propagated from
    loggers it was never attached to. It never drops a record. The record is marked once
    redacted, so that a second handler with this filter does not mask masked values again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_bridge_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:
            # A bad format string: keep what was given, so the mistake can still be seen.
            message = f"{record.msg!s} args={record.args!r}"
        record.msg = redact_text(message)
        record.args = None
        for name in _extra_names(record):
            setattr(record, name, _redact_field(name, getattr(record, name)))
        if record.exc_info and not record.exc_text:
            record.exc_text = _FALLBACK_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        setattr(record, "_bridge_redacted", True)  # noqa: B010 (LogRecord declares no such field)
        return True


_FALLBACK_FORMATTER: Final = logging.Formatter()


def _extra_names(record: logging.LogRecord) -> list[str]:
    return [name for name in vars(record) if name not in _STANDARD_ATTRIBUTES]


def _timestamp(record: logging.LogRecord) -> str:
    moment = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _FieldFormatter(logging.Formatter):
    """Shared part of the line formatters: the record as an ordered mapping of fields."""

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _extra_names(record):
            fields[name] = getattr(record, name)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = record.stack_info
        return fields


def _logfmt_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _logfmt(fields: Mapping[str, object]) -> str:
    return " ".join(f"{name}={_logfmt_value(value)}" for name, value in fields.items())


class LogfmtFormatter(_FieldFormatter):
    """``time=... level=info logger=bridge.x msg="..." key=value ...`` on one line.

    A value with spaces, ``=``, quotes, backslashes or control characters is written as a
    JSON string (so ``\\n`` and ``\\"`` escapes); mappings and lists as compact JSON.
    """

    def format(self, record: logging.LogRecord) -> str:
        return _logfmt(self.fields(record))


class JsonFormatter(_FieldFormatter):
    """One JSON object per line, fields in the same order as :class:`LogfmtFormatter`.

    Values JSON cannot represent are written with ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)


class TextFormatter(_FieldFormatter):
    """For a person at a terminal: ``12:00:00.123 INFO  bridge.x  message  key=value``.

    Still one line per record, so that ``grep`` works the same in every format.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        clock = str(fields.pop("time"))[11:23]
        level = str(fields.pop("level")).upper()
        logger = fields.pop("logger")
        message = json.dumps(fields.pop("msg"), ensure_ascii=False)[1:-1]
        rest = _logfmt(fields)
        return f"{clock} {level:<7} {logger}  {message}" + (f"  {rest}" if rest else "")


_FORMATTERS: Final[Mapping[str, type[_FieldFormatter]]] = {
    "logfmt": LogfmtFormatter,
    "json": JsonFormatter,
    "text": TextFormatter,
}


class _BridgeHandler(logging.StreamHandler[TextIO]):
    """Our handler's own type, so that :func:`configure_logging` finds and replaces it."""


def configure_logging(config: ObservabilityConfig, *, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (default: standard error) as one redacted line.

    Sets the root logger's level to ``config.log_level`` and replaces the handler installed by
    an earlier call; other handlers on the root logger stay. The level and format were
    validated by :class:`ObservabilityConfig`.
    """
    formatter_type = _FORMATTERS.get(config.log_format)
    if formatter_type is None:
        raise ValueError(
            f"log_format {config.log_format!r} is not one of {sorted(_FORMATTERS)};"
            " build the ObservabilityConfig with one of those"
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _BridgeHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _BridgeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter_type())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(config.log_level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def interception_log(
    *,
    interception_id: str,
    user: str,
    provider: str,
    model: str,
    outcome: str,
    duration_ms: float,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    client: str = "",
    streaming: bool = False,
    error: str | None = None,
) -> dict[str, object]:
    """The ``extra=`` fields of the one ``interception ended`` line each interception logs.

    Use as ``logger.info("interception ended", extra=interception_log(...))``. None of the
    names collide with a :class:`logging.LogRecord` attribute (``logging`` would raise).
    ``duration_ms`` is rounded to whole milliseconds. ``error`` is the reason of an outcome
    other than ``completed`` (upstream unreachable, the iteration cap, the breaker open),
    left out when there is none.
    """
    fields: dict[str, object] = {
        "interception_id": interception_id,
        "user": user,
        "provider": provider,
        "model": model,
        "outcome": outcome,
        "duration_ms": round(duration_ms),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read": cache_read,
        "cache_write": cache_write,
        "client": client,
        "streaming": streaming,
    }
    if error is not None:
        fields["error"] = error
    return fields
