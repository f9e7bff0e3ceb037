"""The validators every configuration value passes, shared by the records and the loader.

Each turns loose input (TOML, an environment string, a value in code) into the
normalised value, or raises :class:`ConfigError` naming the key, the value and what is
allowed."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from bridge.config.masking import mask_url
from bridge.errors import ConfigError

ACTOR_REFERENCE: Final = re.compile(r"\$\{actor\.(?:(id)|metadata\.([^}]+))\}")
"""``${actor.id}`` or ``${actor.metadata.<key>}`` in an MCP header value (group 1 or 2 set)."""

# libpq takes both PostgreSQL schemes, and so does open_store.
_DATABASE_SCHEMES: Final = ("sqlite://", "memory://", "postgresql://", "postgres://")


def _show(value: object) -> str:
    """A value as a message shows it: strings quoted, booleans spelt as in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _fail(label: str, rule: str, shown: str) -> NoReturn:
    raise ConfigError(f"{label} must be {rule}, got {shown}")


def _hint(name: str, *tiers: Mapping[str, str], allowed: Sequence[str] = ()) -> str:
    """``; did you mean 'x'?`` for a near miss, else the list of what is allowed.

    Each tier maps a bare name to the name to suggest; tiers are tried in order, so that a
    key of the same section wins over an equally close key of another section. Comparing
    bare names (``prot`` with ``port``) keeps a long shared prefix from making every
    name look close.
    """
    for candidates in tiers:
        close = difflib.get_close_matches(name, list(candidates), n=1)
        if close:
            return f"; did you mean {candidates[close[0]]!r}?"
    if allowed:
        return "; expected one of " + ", ".join(repr(name) for name in allowed)
    return ""


# --- Validators, shared by the records and the loader ----------------------------------------
# Each check takes a label (where the value came from) and a raw value, and returns the
# normalised value or raises ConfigError. ``from_text`` reads an environment string into the
# field's type; text that does not parse is passed through so the check reports it.


@dataclass(frozen=True, slots=True)
class _Rule:
    check: Callable[[str, object], Any]
    from_text: Callable[[str], object] = str


def _int_or_text(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return text


def _float_or_text(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def _integer(low: int, high: int | None = None) -> _Rule:
    rule = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def check(label: str, value: object) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            _fail(label, rule, _show(value))
        return value

    return _Rule(check, _int_or_text)


def _seconds(low: float, *, inclusive: bool) -> _Rule:
    rule = f"a number of seconds {'>=' if inclusive else '>'} {low:g}"

    def check(label: str, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < low
            or (value == low and not inclusive)
        ):
            _fail(label, rule, _show(value))
        return float(value)

    return _Rule(check, _float_or_text)


def _boolean() -> _Rule:
    def check(label: str, value: object) -> bool:
        if not isinstance(value, bool):
            _fail(label, "true or false", _show(value))
        return value

    def from_text(text: str) -> object:
        return {"true": True, "false": False, "1": True, "0": False}.get(text.lower(), text)

    return _Rule(check, from_text)


def _choice(choices: Sequence[str]) -> _Rule:
    quoted = [repr(choice) for choice in choices]
    rule = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]

    def check(label: str, value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            _fail(label, rule, _show(value))
        return value

    return _Rule(check)


def _matching(pattern: str, rule: str) -> _Rule:
    compiled = re.compile(pattern)

    def check(label: str, value: object) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            _fail(label, rule, _show(value))
        return value

    return _Rule(check)


def _check_database(label: str, value: object) -> str:
    shown = _show(mask_url(value) if isinstance(value, str) else value)
    if not isinstance(value, str) or not value.startswith(_DATABASE_SCHEMES):
        _fail(
            label, "a URL starting with sqlite://, memory://, postgresql:// or postgres://", shown
        )
    if value.startswith("sqlite://") and len(value) <= len("sqlite:///"):
        _fail(label, "sqlite:///relative/path or sqlite:////absolute/path", shown)
    return value


def _check_base_url(label: str, value: object) -> str:
    """An http(s) URL with a host; a trailing slash is added so paths join below it."""
    if isinstance(value, str) and _is_base_url(value):
        return value if value.endswith("/") else value + "/"
    shown = _show(mask_url(value) if isinstance(value, str) else value)
    _fail(label, "an http:// or https:// URL with a host and no query or fragment", shown)


def _is_base_url(url: str) -> bool:
    if any(char.isspace() for char in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
    )


def _per_second(label: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        _fail(label, "a number of events per second >= 0 (0 turns the limit off)", _show(value))
    return float(value)


def _check_networks(label: str, value: object) -> tuple[str, ...]:
    """IP addresses or CIDR networks (``10.0.0.0/8``, ``::1``), normalised to networks."""
    rule = "a list of IP addresses or CIDR networks, e.g. ['10.0.0.0/8', '127.0.0.1']"
    if isinstance(value, str) or not isinstance(value, Sequence):
        _fail(label, rule, _show(value))
    networks = []
    for item in value:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except (AttributeError, TypeError, ValueError):
            _fail(label, rule, _show(item))
    return tuple(networks)


def _comma_list(text: str) -> object:
    return [item for item in text.split(",") if item.strip()]


def _check_secret(label: str, value: object) -> str:
    if not isinstance(value, str):
        # The value is not shown: it may be a secret typed without its quotes.
        raise ConfigError(f"{label} must be a string, got a value of type {type(value).__name__}")
    return value


def _check_mcp_url(label: str, value: object) -> str:
    """An http(s) URL with a host, kept exactly (an MCP endpoint is a path, not a base)."""
    if not isinstance(value, str):
        _fail(label, "a string", f"a value of type {type(value).__name__}")
    if value == "" or _is_endpoint_url(value):
        return value
    _fail(label, "an http:// or https:// URL with a host", _show(mask_url(value)))


def _is_endpoint_url(url: str) -> bool:
    if any(char.isspace() for char in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def _check_text(label: str, value: object) -> str:
    if not isinstance(value, str):
        _fail(label, "a string", _show(value))
    return value


def _check_text_list(label: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        _fail(label, "a list of strings", _show(value))
    for item in value:
        if not isinstance(item, str):
            _fail(label, "a list of strings", _show(list(value)))
    return tuple(value)


def _check_secret_table(label: str, value: object) -> Mapping[str, str]:
    """A table of string values that may be secrets: a bad value is named, never shown.

    References to the actor (:data:`ACTOR_REFERENCE`) are the only ``${...}`` allowed, so
    that a typo such as ``${actor.metdata.token}`` fails here and not on every request.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{label} must be a table of strings, got {_show(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ConfigError(
                f"{label} must be a table of strings, got a value of type"
                f" {type(item).__name__} for {key!r}"
            )
        for reference in re.findall(r"\$\{[^}]*\}", item):
            if not ACTOR_REFERENCE.fullmatch(reference):
                raise ConfigError(
                    f"{label}.{key} may only reference ${{actor.id}} or"
                    f" ${{actor.metadata.<key>}}, got {reference!r}"
                )
    return types.MappingProxyType(dict(value))


def _check_secret_list(label: str, value: object) -> tuple[str, ...]:
    """A list of secrets: a bad item is named by its position, never shown."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(
            f"{label} must be a list of strings, got a value of type {type(value).__name__}"
        )
    for position, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(
                f"{label} must be a list of strings, got a value of type"
                f" {type(item).__name__} at position {position}"
            )
    return tuple(value)


def _check_statuses(label: str, value: object) -> tuple[int, ...]:
    """Error statuses only: a breaker counting 200 as a failure would open on success."""
    rule = "a list of HTTP error statuses from 400 to 599"
    if isinstance(value, str) or not isinstance(value, Sequence):
        _fail(label, rule, _show(value))
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 400 <= item <= 599:
            _fail(label, rule, _show(list(value)))
    return tuple(value)


def _check_regex(label: str, value: object) -> str:
    if not isinstance(value, str):
        _fail(label, "a regular expression string", _show(value))
    try:
        re.compile(value)
    except re.error as exc:
        _fail(label, f"a valid Python regular expression ({exc})", _show(value))
    return value
