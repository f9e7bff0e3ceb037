"""Configuration: one TOML file (``bridge.toml``) plus ``BRIDGE_<SECTION>_<KEY>`` overrides.

Loose input goes in (TOML values, environment strings, plain mappings); frozen, validated
records come out. The rules:

1. **Strict.** Unknown sections, keys and ``BRIDGE_SERVER_*`` / ``BRIDGE_AUTH_*`` /
   ``BRIDGE_RECORDING_*`` / ``BRIDGE_MCP_*`` / ``BRIDGE_OBSERVABILITY_*`` variables are
   errors that suggest the nearest known name: a typo must never be silently ignored.
   Other ``BRIDGE_*`` variables (``BRIDGE_CONFIG``, ``BRIDGE_DUMP_DIR``...) belong to other
   modules and are ignored here.
2. **Precedence.** Environment beats file, file beats defaults, for ``BRIDGE_*`` and the
   SDKs' ``ANTHROPIC_API_KEY``-style variables alike; :attr:`Config.sources` records which
   won. An empty environment variable counts as unset (shells and compose files produce
   them by accident).
3. **One set of validators.** Each record validates and normalises its fields in
   ``__post_init__``, so a record built directly in code (embedding) is checked exactly like
   one loaded from a file. The loader runs the same validators first, only so that the
   message names where the value came from (``server.port in bridge.toml``,
   ``BRIDGE_SERVER_PORT``).
4. **Messages teach the fix.** A :class:`ConfigError` names the key, the value it got and
   what is allowed.
5. **Secrets never show.** Provider keys and the values of MCP server ``headers`` and
   ``env`` are masked with :func:`mask_secret`, and the credentials in a URL (a password,
   a ``?token=``...) are shown as ``***`` by :func:`mask_url`, in error messages, in
   ``repr`` and in :func:`render_config`.
6. **No hidden input.** Only :func:`load_config` reads a file, and the environment is always
   an explicit mapping; direct construction never reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import unquote, urlsplit

from bridge.errors import ConfigError

__all__ = [
    "ACTOR_REFERENCE",
    "AUTH_MODES",
    "BYTES",
    "DEFAULT_FAILURE_STATUSES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "PROVIDER_TYPES",
    "SECONDS",
    "AuthConfig",
    "BreakerConfig",
    "Config",
    "ConfigError",
    "MCPConfig",
    "MCPServerConfig",
    "MiB",
    "ObservabilityConfig",
    "ProviderConfig",
    "ProviderType",
    "RecordingConfig",
    "ServerConfig",
    "apply_flags",
    "config_from_mapping",
    "default_config_path",
    "load_config",
    "mask_secret",
    "mask_url",
    "mask_urls_in",
    "missing_key_warnings",
    "render_config",
]

# Unit constants, so that defaults read like ``30 * SECONDS`` and ``32 * MiB``.
SECONDS: Final = 1.0
BYTES: Final = 1
MiB: Final = 1024 * 1024 * BYTES

# The file looked for in the working directory when neither --config nor $BRIDGE_CONFIG is set.
DEFAULT_CONFIG_FILE: Final = "bridge.toml"

# Authentication modes and what they mean (the http layer implements them).
AUTH_MODES: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        "keys": "every request carries a gateway key issued by `bridgectl keys create`",
        "header": "a trusted fronting proxy names the actor in auth.header",
        "none": "every request is made by the actor 'anonymous'",
    }
)


@dataclass(frozen=True, slots=True)
class ProviderType:
    """What every provider of one type shares: where it lives and where its secrets come from.

    A provider *named like its type* (``[providers.anthropic]`` of type ``anthropic``) takes
    an empty ``key`` from ``key_env``, an empty ``base_url`` from ``base_url_env`` and an
    unset ``max_retries`` from ``max_retries_env``, as the official SDKs do; other providers
    of that type must be configured explicitly, so that one environment variable never
    silently feeds two upstreams.

    ``central_key`` says whether the gateway is expected to hold a key for the provider
    (``key``/``keys``): without one, requests made with a gateway key are refused and
    start-up warns. Copilot's users each bring their own token instead.

    ``key_header`` is the header the API takes a key in: ``authorization`` (as a bearer
    token), or an API-key header such as Anthropic's ``x-api-key``, which a client may
    then use too (ahead of a bearer token). ``route_suffix`` follows ``/<name>`` in the
    route prefix: OpenAI's base URL includes its version, so its routes sit under
    ``/<name>/v1`` (docs/behaviour.md §1.2) and the rest of the path joins the base URL
    unchanged. ``error_dialect`` is the dialect whose error shape the provider's non-bridged
    answers use. (What each type serves, its route table, is in
    ``bridge/dialects/providers.py``.)
    """

    name: str
    default_base_url: str
    key_env: str
    base_url_env: str
    max_retries_env: str
    central_key: bool = True
    key_header: str = "authorization"
    route_suffix: str = ""
    error_dialect: str = "openai.chat"


# Known provider types. A new type is a row here, a route table in providers.py and dialects.
PROVIDER_TYPES: Final[Mapping[str, ProviderType]] = types.MappingProxyType(
    {
        "anthropic": ProviderType(
            name="anthropic",
            default_base_url="https://api.anthropic.com/",
            key_env="ANTHROPIC_API_KEY",
            base_url_env="ANTHROPIC_BASE_URL",
            max_retries_env="ANTHROPIC_MAX_RETRIES",
            key_header="x-api-key",
            error_dialect="anthropic.messages",
        ),
        "openai": ProviderType(
            name="openai",
            default_base_url="https://api.openai.com/v1/",
            key_env="OPENAI_API_KEY",
            base_url_env="OPENAI_BASE_URL",
            max_retries_env="OPENAI_MAX_RETRIES",
            route_suffix="/v1",
        ),
        # Copilot has no central key: every user brings their own GitHub token.
        "copilot": ProviderType(
            name="copilot",
            default_base_url="https://api.individual.githubcopilot.com/",
            key_env="",
            base_url_env="COPILOT_BASE_URL",
            max_retries_env="COPILOT_MAX_RETRIES",
            central_key=False,
        ),
    }
)

DEFAULT_PROVIDERS: Final = ("anthropic", "openai", "copilot")
"""The providers a file gets besides its own, unless it says ``providers.defaults = false``."""


# --- Showing values without leaking secrets --------------------------------------------------


def mask_secret(secret: str) -> str:
    """Mask a key for display (docs/behaviour.md §2.4), as coder/aibridge does.

    Reveal 4 characters at each end from 20 characters on, 2 from 10, 1 from 5, else none;
    a secret too short to reveal anything becomes ``"..."`` and the empty string stays empty:
    ``"sk-ant-api03-abcdefgh"`` -> ``"sk-a...efgh"``.
    """
    if not secret:
        return ""
    length = len(secret)
    reveal = 4 if length >= 20 else 2 if length >= 10 else 1 if length >= 5 else 0
    if length <= 2 * reveal:
        return "..."
    return secret[:reveal] + "..." + secret[length - reveal :]


# "user:password@" at the start of a URL's authority. Greedy up to the last "@", so a
# password with an unencoded "/", "?" or "@" is masked whole (masking too much is harmless).
_USERINFO_PASSWORD: Final = re.compile(r"^([^:/?#@]*):.*@")
# One name=value pair of a query string or fragment.
_QUERY_PAIR: Final = re.compile(r"([^&;=#?]*)=([^&;#]*)")
# A query parameter whose name says it carries a credential: libpq's ?password=, and the
# token=, api_key=, access_token=, sig=, X-Amz-Signature=, code=... of MCP and signed URLs.
# A substring match, so that any spelling is caught (masking too much is harmless).
_SECRET_PARAMETER: Final = re.compile(
    r"token|key|secret|pass|pwd|auth|sig|code|credential|session|jwt|cookie", re.IGNORECASE
)
# A URL inside free text (a log line, an exception message): scheme://, then up to a space,
# a quote or a bracket that would end it in prose or in a repr, without the punctuation
# that ends a sentence or a parenthesis.
_URL_IN_TEXT: Final = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`).,;:]")


def mask_url(url: str) -> str:
    """*url* with its credentials replaced by ``***``, safe to show, log, record or export.

    The one function for every URL the gateway shows (the database, provider base URLs, MCP
    server URLs, in check-config, ``/readyz``, logs, metric labels and records). Masked are
    the password of ``user:password@`` (taken to end at the *last* ``@``, so a malformed URL
    may be over-masked but never leaks a password that contains ``@`` or ``/``) and the
    value of every query or fragment parameter whose name looks like a credential
    (``password``, ``token``, ``api_key``, ``access_token``, ``sig``, ``code``...).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    before, question, query = rest.partition("?")
    if not question:
        before, question, query = rest.partition("#")
    query = _QUERY_PAIR.sub(_mask_parameter, query)
    # The query first: a "@" inside a masked query value must not look like userinfo.
    rest = _USERINFO_PASSWORD.sub(r"\1:***@", before + question + query, count=1)
    return f"{scheme}{sep}{rest}"


def _mask_parameter(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value and _SECRET_PARAMETER.search(unquote(name)):
        return f"{name}=***"
    return match.group(0)


def mask_urls_in(text: str) -> str:
    """*text* with every URL in it passed through :func:`mask_url` (exception messages name
    the URL they failed on, query and userinfo included)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)


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


def _check_breaker(label: str, value: object) -> BreakerConfig | None:
    """``None`` (no breaker) or a :class:`BreakerConfig`; the loader builds it from a table."""
    if value is not None and not isinstance(value, BreakerConfig):
        _fail(label, "a BreakerConfig or None", _show(value))
    return value


def _check_regex(label: str, value: object) -> str:
    if not isinstance(value, str):
        _fail(label, "a regular expression string", _show(value))
    try:
        re.compile(value)
    except re.error as exc:
        _fail(label, f"a valid Python regular expression ({exc})", _show(value))
    return value


ACTOR_REFERENCE: Final = re.compile(r"\$\{actor\.(?:(id)|metadata\.([^}]+))\}")
"""``${actor.id}`` or ``${actor.metadata.<key>}`` in an MCP header value (group 1 or 2 set)."""

# libpq takes both PostgreSQL schemes, and so does open_store.
_DATABASE_SCHEMES: Final = ("sqlite://", "memory://", "postgresql://", "postgres://")
_HTTP_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 5.6.2 token
_PROVIDER_NAME: Final = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")

_SERVER_RULES: Final[Mapping[str, _Rule]] = {
    "host": _matching(r"[^\s/]+", "a host name or IP address"),
    "port": _integer(0, 65535),
    "max_body_bytes": _integer(1024),
    "grace_period": _seconds(0, inclusive=True),
    "backlog": _integer(1),
    "ping_interval": _seconds(0, inclusive=False),
    "workers": _integer(1, 64),
    "client_write_timeout": _seconds(0, inclusive=False),
    "keep_alive_timeout": _seconds(0, inclusive=False),
    "header_timeout": _seconds(0, inclusive=False),
    "http2": _boolean(),
    "body_timeout": _seconds(0, inclusive=False),
    "max_buffered_bytes": _integer(1024),
    "trusted_proxies": _Rule(_check_networks, _comma_list),
}
_AUTH_RULES: Final[Mapping[str, _Rule]] = {
    "mode": _choice(list(AUTH_MODES)),
    "header": _matching(_HTTP_TOKEN, "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"),
    "admin_key": _Rule(_check_secret),
    "failure_rate": _Rule(_per_second, _float_or_text),
    "failure_burst": _integer(1),
}
_RECORDING_RULES: Final[Mapping[str, _Rule]] = {
    "database": _Rule(_check_database),
    "queue_size": _integer(1),
    "batch_size": _integer(1),
    "journal_dir": _Rule(_check_secret),  # any path; "" turns the journal off
}
_PROVIDER_RULES: Final[Mapping[str, _Rule]] = {
    "type": _choice(list(PROVIDER_TYPES)),
    "base_url": _Rule(_check_base_url),
    "key": _Rule(_check_secret),
    "connect_timeout": _seconds(0, inclusive=False),
    "response_timeout": _seconds(0, inclusive=False),
    "stream_idle_timeout": _seconds(0, inclusive=False),
    "keys": _Rule(_check_secret_list),
    "max_retries": _integer(0, 10),
    "key_cooldown": _seconds(0, inclusive=False),
    "send_actor_headers": _boolean(),
    "passthrough_writes": _boolean(),
    "circuit_breaker": _Rule(_check_breaker),  # loaded from its own table, see _load_breaker
}
_BREAKER_RULES: Final[Mapping[str, _Rule]] = {
    "failure_threshold": _integer(1),
    "interval": _seconds(0, inclusive=True),
    "timeout": _seconds(0, inclusive=False),
    "max_requests": _integer(1),
    "failure_statuses": _Rule(_check_statuses),
}
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final = ("logfmt", "json", "text")
_OBSERVABILITY_RULES: Final[Mapping[str, _Rule]] = {
    "metrics_prefix": _matching(
        r"^([a-zA-Z_:][a-zA-Z0-9_:]*)?$", "a Prometheus name prefix such as 'bridge_' (or empty)"
    ),
    "log_format": _choice(list(LOG_FORMATS)),
    "log_level": _choice(list(LOG_LEVELS)),
    "dump_dir": _Rule(_check_secret),  # any path; "" turns the API dump off
    "metrics_auth": _boolean(),
    "metrics_key": _Rule(_check_secret),
}
_MCP_RULES: Final[Mapping[str, _Rule]] = {
    "max_iterations": _integer(1),
    "call_timeout": _seconds(0, inclusive=False),
}
_MCP_SERVER_RULES: Final[Mapping[str, _Rule]] = {
    "url": _Rule(_check_mcp_url),
    "headers": _Rule(_check_secret_table),
    "command": _Rule(_check_text),
    "args": _Rule(_check_text_list),
    "env": _Rule(_check_secret_table),
    "allow": _Rule(_check_regex),
    "deny": _Rule(_check_regex),
}


def _check_fields(record: object, prefix: str, rules: Mapping[str, _Rule]) -> None:
    """Validate and normalise a frozen record's fields in place (``__post_init__``)."""
    for name, rule in rules.items():
        object.__setattr__(record, name, rule.check(f"{prefix}.{name}", getattr(record, name)))


def _check_provider_name(name: object, where: str = "") -> str:
    if not isinstance(name, str) or not _PROVIDER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid provider name {_show(name)}{where}: use lower-case letters, digits and"
            " single hyphens, e.g. 'anthropic' or 'copilot-business'"
        )
    return name


def _check_mcp_server_name(name: object, where: str = "") -> str:
    """MCP server names follow the provider rule: they become part of every tool id."""
    if not isinstance(name, str) or not _PROVIDER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid MCP server name {_show(name)}{where}: use lower-case letters, digits and"
            " single hyphens, e.g. 'deepwiki' or 'github-tools'"
        )
    return name


# How each field is shown by repr and render_config: secrets masked.
_MASKS: Final[Mapping[str, Callable[[str], str]]] = {
    "key": mask_secret,
    "admin_key": mask_secret,
    "metrics_key": mask_secret,
    "keys": mask_secret,  # each item of the list
    "database": mask_url,
    "base_url": mask_url,
    "url": mask_url,
    "headers": mask_secret,  # each value of the table
    "env": mask_secret,  # each value of the table
}


def _masked(name: str, value: object) -> object:
    mask = _MASKS.get(name)
    if mask is not None and isinstance(value, Mapping):
        return {key: mask(item) for key, item in value.items()}
    if mask is not None and isinstance(value, tuple):
        return tuple(mask(item) for item in value)
    return mask(value) if mask is not None and isinstance(value, str) else value


def _masked_repr(self: Any) -> str:
    shown = ", ".join(
        f"{f.name}={_masked(f.name, getattr(self, f.name))!r}" for f in dataclasses.fields(self)
    )
    return f"{type(self).__name__}({shown})"


# --- Records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The listening socket and the limits of the HTTP server (``[server]``)."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free port (tests, embedding)
    max_body_bytes: int = 32 * MiB  # larger request bodies get a 413
    grace_period: float = 30 * SECONDS  # on shutdown, in-flight requests get this long
    backlog: int = 1024
    ping_interval: float = 10 * SECONDS  # keep-alive ping on a silent Anthropic stream
    workers: int = 1  # Trio processes sharing the port (one per core)
    client_write_timeout: float = 60 * SECONDS  # a client not reading this long is dropped
    keep_alive_timeout: float = 75 * SECONDS  # an idle connection is closed after this long
    header_timeout: float = 10 * SECONDS  # a request's head must arrive within this
    http2: bool = False  # HTTP/2 over cleartext (prior knowledge, h2c upgrade); else 1.1 only
    body_timeout: float = 60 * SECONDS  # a request body still arriving after this gets a 408
    max_buffered_bytes: int = 256 * MiB  # request bodies held at once; past it: 503
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For is kept and extended

    def __post_init__(self) -> None:
        _check_fields(self, "server", _SERVER_RULES)
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ConfigError(
                f"server.max_buffered_bytes ({self.max_buffered_bytes}) is below"
                f" server.max_body_bytes ({self.max_body_bytes}), so a body of the allowed"
                " size could never be taken: raise max_buffered_bytes or lower max_body_bytes"
            )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who is asking (``[auth]``); ``mode`` is one of :data:`AUTH_MODES`."""

    mode: str = "keys"
    header: str = "X-Bridge-User"  # names the actor in mode "header"
    admin_key: str = ""  # guards GET /api/v1/usage; empty: the endpoint is off
    failure_rate: float = 10.0  # failed authentications per second and client address; 0: off
    failure_burst: int = 20  # failures an address may make at once before 429s

    def __post_init__(self) -> None:
        _check_fields(self, "auth", _AUTH_RULES)


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    """Where and how usage is recorded (``[recording]``).

    ``database`` is a URL: ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
    ``memory://`` or ``postgresql://user:password@host:5432/db`` (``postgres://`` too, as
    libpq takes both). Configuration checks the scheme; the store layer opens the database.
    """

    database: str = "sqlite:///bridge.db"
    queue_size: int = 10_000  # records waiting for the writer; bounds memory under load
    batch_size: int = 512  # records per database transaction
    journal_dir: str = ""  # records spill here while the database is down; "" = off

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        _check_fields(self, "recording", _RECORDING_RULES)


DEFAULT_FAILURE_STATUSES: Final = (503, 504, 529)
"""Statuses that count against the breaker by default: overload, not rate limits (design 4)."""


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A provider's circuit breaker (``[providers.<name>.circuit_breaker]``); opt-in.

    The table's presence enables the breaker, with these defaults for the keys it omits
    (coder/aibridge's, docs/behaviour.md §8.3). 429 is not a failure by default:
    rate limits are answered by retrying and by key failover, not by refusing everyone.
    """

    failure_threshold: int = 5  # consecutive failures that open the breaker
    interval: float = 10 * SECONDS  # the closed state forgets its counts this often; 0 = never
    timeout: float = 30 * SECONDS  # open -> half-open after this long
    max_requests: int = 3  # requests admitted while half-open
    failure_statuses: tuple[int, ...] = DEFAULT_FAILURE_STATUSES

    def __post_init__(self) -> None:
        _check_fields(self, "circuit_breaker", _BREAKER_RULES)

    def is_failure(self, status: int | None) -> bool:
        """Whether an attempt's outcome counts against the upstream.

        ``None`` means no status at all (connection failure or timeout): always a
        failure, because an upstream that cannot be reached is the clearest overload.
        """
        return status is None or status in self.failure_statuses


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream (``[providers.<name>]``); its name is also its route prefix.

    An empty ``base_url`` means the type's default, for a provider named like its type
    only: any other (``local-llm``, ``copilot-business``) must say where it lives, never
    silently reach the public API. Direct construction never reads the environment:
    ``ANTHROPIC_API_KEY`` and friends are applied by the loader only.
    ``key`` and ``keys`` are the centralized keys, used round-robin (:attr:`all_keys`);
    requests that bring their own key (BYOK) never use them.
    """

    name: str
    type: str
    base_url: str = ""
    key: str = ""
    connect_timeout: float = 10 * SECONDS
    # Until the upstream's response headers arrive: a blocking request that thinks for
    # minutes answers only at the end, so this is generous.
    response_timeout: float = 600 * SECONDS
    # The longest silence between two chunks of an upstream body (streamed or not).
    stream_idle_timeout: float = 300 * SECONDS
    keys: tuple[str, ...] = ()  # more centralized keys besides ``key``
    max_retries: int = 2  # retries of one upstream call (docs/behaviour.md §8.1); 0 disables
    key_cooldown: float = 60 * SECONDS  # a key rejected with 401/403 rests this long
    circuit_breaker: BreakerConfig | None = None  # None: no breaker
    send_actor_headers: bool = False  # X-AI-Bridge-Actor-ID/-Metadata-* on bridged requests
    # Passthrough writes (DELETE a stored response, create a conversation...) under the
    # provider's own key: the objects are shared by every user, so off. BYOK may always.
    passthrough_writes: bool = False

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        _check_provider_name(self.name)
        prefix = f"providers.{self.name}"
        if self.type in PROVIDER_TYPES and self.base_url == "":
            if self.name != self.type:
                _require_base_url(f"{prefix}.base_url", self.type)
            object.__setattr__(self, "base_url", PROVIDER_TYPES[self.type].default_base_url)
        _check_fields(self, prefix, _PROVIDER_RULES)

    @property
    def key_settings(self) -> str:
        """Where this provider's central key is set, as an operator would look for it."""
        provider_type = PROVIDER_TYPES[self.type]
        setting = f"providers.{self.name}.key"
        if self.name == provider_type.name and provider_type.key_env:
            return f"{setting} or {provider_type.key_env}"
        return setting

    @property
    def route_prefix(self) -> str:
        """The path the gateway serves this provider under, e.g. ``/anthropic`` or
        ``/openai/v1`` (see :class:`ProviderType`'s ``route_suffix``)."""
        return f"/{self.name}{PROVIDER_TYPES[self.type].route_suffix}"

    @property
    def all_keys(self) -> tuple[str, ...]:
        """The centralized key pool: ``key`` then ``keys``, empties and repeats dropped.

        A repeated key would otherwise take two turns of the round robin and rest twice.
        """
        return tuple(dict.fromkeys(secret for secret in (self.key, *self.keys) if secret))


def _require_base_url(label: str, type_name: str) -> NoReturn:
    raise ConfigError(
        f"{label} is required: only the provider named {type_name!r} defaults to"
        f" {PROVIDER_TYPES[type_name].default_base_url}; set the URL of this one's API,"
        ' e.g. base_url = "http://127.0.0.1:11434/v1/"'
    )


@dataclass(frozen=True, slots=True)
class MCPServerConfig:
    """One MCP server whose tools are offered to the model (``[mcp.servers.<name>]``).

    Exactly one transport: ``url`` (Streamable HTTP, with optional ``headers``) or
    ``command`` (stdio, with ``args`` and ``env``). Header values may reference the actor
    (:data:`ACTOR_REFERENCE`); such a server gets one session per distinct resolved header
    set. ``allow`` and ``deny`` are regexes searched (``re.search``) in the original tool
    name: deny wins, an empty allow admits every tool.
    """

    name: str
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    allow: str = ""
    deny: str = ""

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        _check_mcp_server_name(self.name)
        prefix = f"mcp.servers.{self.name}"
        _check_fields(self, prefix, _MCP_SERVER_RULES)
        if bool(self.url) == bool(self.command):
            got = "both" if self.url else "neither"
            raise ConfigError(
                f"{prefix} needs exactly one of url (Streamable HTTP) or command (stdio), got {got}"
            )
        if self.url and self.env:
            raise ConfigError(f"{prefix}.env is for stdio servers; use headers with url")
        if self.command and self.headers:
            raise ConfigError(f"{prefix}.headers is for url servers; use env with command")

    @property
    def references_actor(self) -> bool:
        """Whether header values name the actor, so that sessions are per actor."""
        return any(ACTOR_REFERENCE.search(value) for value in self.headers.values())


@dataclass(frozen=True, slots=True)
class MCPConfig:
    """MCP tool injection (``[mcp]``): the servers and the limits of the inner loop."""

    max_iterations: int = 16  # model round trips per request while it calls injected tools
    call_timeout: float = 30 * SECONDS  # per tool call; also bounds connecting to a server
    servers: tuple[MCPServerConfig, ...] = ()

    def __post_init__(self) -> None:
        _check_fields(self, "mcp", _MCP_RULES)
        object.__setattr__(self, "servers", tuple(self.servers))
        seen: set[str] = set()
        for server in self.servers:
            if not isinstance(server, MCPServerConfig):
                raise ConfigError(f"mcp.servers must hold MCPServerConfig, got {server!r}")
            if server.name in seen:
                raise ConfigError(
                    f"duplicate MCP server name {server.name!r}: each server needs its own"
                    " name, which prefixes its tool ids"
                )
            seen.add(server.name)


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """Metrics, logs and the API dump (``[observability]``)."""

    metrics_prefix: str = ""  # prepended to every metric name, e.g. "bridge_"
    log_format: str = "logfmt"  # logfmt, json, or text for people at a terminal
    log_level: str = "INFO"
    dump_dir: str = ""  # write every upstream request and response below it; "" = off
    # /metrics and the details of /readyz need "Authorization: Bearer <key>": the key is
    # metrics_key if set (a scraper then never holds the admin key), else auth.admin_key.
    metrics_auth: bool = False
    metrics_key: str = ""

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        _check_fields(self, "observability", _OBSERVABILITY_RULES)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. Build it with :func:`load_config`, or directly in code.

    ``providers`` defaults to none here; the loader's default providers
    (:data:`DEFAULT_PROVIDERS`) apply only to configuration files. ``sources`` says where
    each value that is not a default came from, by dotted key (``server.port`` ->
    ``BRIDGE_SERVER_PORT``); the loader fills it and :func:`render_config` shows it.
    """

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    providers: tuple[ProviderConfig, ...] = ()
    mcp: MCPConfig = field(default_factory=MCPConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple(self.providers))
        if self.observability.metrics_auth and not self.metrics_key:
            raise ConfigError(
                "observability.metrics_auth = true needs a key for the scrapers: set"
                " observability.metrics_key or auth.admin_key"
            )
        seen: set[str] = set()
        for provider in self.providers:
            if not isinstance(provider, ProviderConfig):
                raise ConfigError(f"providers must hold ProviderConfig, got {provider!r}")
            if provider.name in seen:
                raise ConfigError(
                    f"duplicate provider name {provider.name!r}: each provider needs its own"
                    f" name, which is also its route prefix {provider.route_prefix!r}"
                )
            seen.add(provider.name)

    @property
    def metrics_key(self) -> str:
        """The bearer key of ``/metrics`` and ``/readyz`` details when
        ``observability.metrics_auth`` is on: ``metrics_key``, else ``auth.admin_key``."""
        return self.observability.metrics_key or self.auth.admin_key

    def provider(self, name: str) -> ProviderConfig:
        """The provider called ``name``.

        Raises :class:`ConfigError` (not ``KeyError``) with a "did you mean" hint, because
        the name usually comes from a person: a CLI flag or an embedding program's code.
        """
        for provider in self.providers:
            if provider.name == name:
                return provider
        names = [provider.name for provider in self.providers]
        hint = _hint(name, {n: n for n in names}) if names else "; no providers are configured"
        raise ConfigError(f"unknown provider {name!r}{hint}")


# --- Loading ---------------------------------------------------------------------------------

_SECTIONS: Final[Mapping[str, tuple[type[Any], Mapping[str, _Rule]]]] = {
    "server": (ServerConfig, _SERVER_RULES),
    "auth": (AuthConfig, _AUTH_RULES),
    "recording": (RecordingConfig, _RECORDING_RULES),
    "mcp": (MCPConfig, _MCP_RULES),  # plus [mcp.servers.<name>], loaded separately
    "observability": (ObservabilityConfig, _OBSERVABILITY_RULES),
}
_ENV_VARS: Final[Mapping[str, tuple[str, str]]] = {
    f"BRIDGE_{section.upper()}_{key.upper()}": (section, key)
    for section, (_, rules) in _SECTIONS.items()
    for key in rules
}


def default_config_path(environ: Mapping[str, str]) -> Path | None:
    """``$BRIDGE_CONFIG`` if set, else ``./bridge.toml`` if it exists, else ``None``.

    A path named by ``$BRIDGE_CONFIG`` is returned even if missing, so that loading it
    fails loudly instead of silently falling back to the defaults.
    """
    named = environ.get("BRIDGE_CONFIG", "")
    if named:
        return Path(named)
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read the configuration file (if any) and apply the environment overrides.

    ``path`` defaults to :func:`default_config_path`; ``environ`` to ``os.environ``. With
    no file at all, the result is the defaults plus the environment.
    """
    if environ is None:
        environ = os.environ
    if path is None:
        path = default_config_path(environ)
    if path is None:
        return config_from_mapping({}, environ)
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    return config_from_mapping(data, environ, source=source)


def config_from_mapping(
    data: Mapping[str, Any], environ: Mapping[str, str], *, source: str | None = None
) -> Config:
    """Build a :class:`Config` from parsed TOML (or any mapping) and an environment.

    ``source`` names the file in error messages and in :attr:`Config.sources`.
    """
    where = f" in {source}" if source else ""
    read = _Reader(where, source or "the file")
    _reject_unknown_sections(data, where)
    overrides = _environment_overrides(environ)
    records: dict[str, Any] = {}
    for section, (record_type, rules) in _SECTIONS.items():
        table = dict(_table(data.get(section, {}), section, where))
        extra = {}
        if section == "mcp":
            extra["servers"] = _load_mcp_servers(table.pop("servers", {}), read)
        values = read(table, section, rules)
        for (var_section, key), (var, text) in overrides.items():
            if var_section == section:
                values[key] = read.variable(var, text, f"{section}.{key}", rules[key])
        records[section] = record_type(**values, **extra)
    providers = _load_providers(data.get("providers"), environ, read)
    return Config(**records, providers=providers, sources=read.sources)


@dataclass(frozen=True, slots=True)
class _Reader:
    """Validates tables and variables for the loader, noting where each value came from."""

    where: str  # " in bridge.toml", for messages
    origin: str  # "bridge.toml", for Config.sources
    sources: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, table: Mapping[str, Any], prefix: str, rules: Mapping[str, _Rule]
    ) -> dict[str, Any]:
        """The file's ``table`` at ``prefix``, each value checked by its rule."""
        _reject_unknown_keys(table, prefix, rules, self.where)
        values = {}
        for key, value in table.items():
            values[key] = rules[key].check(f"{prefix}.{key}{self.where}", value)
            self.sources[f"{prefix}.{key}"] = self.origin
        return values

    def variable(self, var: str, text: str, dotted: str, rule: _Rule) -> Any:
        """Environment variable ``var`` as the value of setting ``dotted``."""
        value = rule.check(var, rule.from_text(text))
        self.sources[dotted] = var
        return value


def _table(value: object, label: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{label}{where} must be a table, got {_show(value)}")
    return value


def _reject_unknown_sections(data: Mapping[str, Any], where: str) -> None:
    sections = {name: name for name in [*_SECTIONS, "providers"]}
    for name, value in data.items():
        if name in sections:
            continue
        kind = "section" if isinstance(value, Mapping) else "key"
        hint = _hint(name, sections, _section_keys(None), allowed=list(sections))
        raise ConfigError(f"unknown {kind} {name!r}{where}{hint}")


def _section_keys(section: str | None, *, exclude: str | None = None) -> dict[str, str]:
    """Bare key -> dotted key, for one section or (``None``) all of them but ``exclude``."""
    names = [section] if section is not None else [s for s in _SECTIONS if s != exclude]
    return {key: f"{name}.{key}" for name in names for key in _SECTIONS[name][1]}


def _reject_unknown_keys(
    table: Mapping[str, Any], prefix: str, allowed: Mapping[str, _Rule], where: str
) -> None:
    own = {name: f"{prefix}.{name}" for name in allowed}
    others = (
        {}
        if prefix.startswith(("providers.", "mcp.servers."))
        else _section_keys(None, exclude=prefix)
    )
    for key in table:
        if key not in allowed:
            hint = _hint(key, own, others, allowed=list(own.values()))
            raise ConfigError(f"unknown key '{prefix}.{key}'{where}{hint}")


def _environment_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """(section, key) -> (variable, text) for every non-empty ``BRIDGE_<SECTION>_<KEY>``."""
    overrides: dict[tuple[str, str], tuple[str, str]] = {}
    for var in sorted(environ):
        if var in _ENV_VARS:
            if environ[var]:
                overrides[_ENV_VARS[var]] = (var, environ[var])
            continue
        for section in _SECTIONS:
            prefix = f"BRIDGE_{section.upper()}_"
            if var.upper().startswith(prefix):
                key = var[len(prefix) :].lower()
                own = {k: _env_var(d) for k, d in _section_keys(section).items()}
                others = {k: _env_var(d) for k, d in _section_keys(None, exclude=section).items()}
                hint = _hint(key, own, others, allowed=list(own.values()))
                raise ConfigError(f"unknown environment variable {var!r}{hint}")
    return overrides


def _env_var(dotted_key: str) -> str:
    """``server.port`` -> ``BRIDGE_SERVER_PORT``."""
    return "BRIDGE_" + dotted_key.replace(".", "_").upper()


# Keys of [providers] itself; every other key there is a provider's table.
_PROVIDERS_RULES: Final[Mapping[str, _Rule]] = {"defaults": _boolean()}


def _load_providers(
    raw: object, environ: Mapping[str, str], read: _Reader
) -> tuple[ProviderConfig, ...]:
    """The default providers then the file's (one named like a default replaces it), or
    only the file's with ``providers.defaults = false``."""
    table = dict(_table({} if raw is None else raw, "providers", read.where))
    settings = {name: table.pop(name) for name in list(table) if name in _PROVIDERS_RULES}
    for name, entry in table.items():
        hint = _hint(name, {key: f"providers.{key}" for key in _PROVIDERS_RULES})
        if not isinstance(entry, Mapping) and hint:  # a misspelt setting, not a provider
            raise ConfigError(f"unknown key 'providers.{name}'{read.where}{hint}")
    settings = read(settings, "providers", _PROVIDERS_RULES)
    entries: dict[str, object] = {}
    if settings.get("defaults", True):
        entries.update((name, {}) for name in DEFAULT_PROVIDERS)
    entries.update(table)
    return tuple(_load_provider(name, entry, environ, read) for name, entry in entries.items())


def _load_provider(
    name: str, entry: object, environ: Mapping[str, str], read: _Reader
) -> ProviderConfig:
    _check_provider_name(name, read.where)
    prefix = f"providers.{name}"
    table = dict(_table(entry, prefix, read.where))
    if table.get("base_url") == "":  # explicitly empty: the same as absent
        del table["base_url"]
    breaker = table.pop("circuit_breaker", None)
    values = read(table, prefix, _PROVIDER_RULES)
    if breaker is not None:
        values["circuit_breaker"] = _load_breaker(breaker, f"{prefix}.circuit_breaker", read)
    values.setdefault("type", name if name in PROVIDER_TYPES else None)
    if values["type"] is None:
        raise ConfigError(
            f"{prefix}{read.where} needs a type, because {name!r} is not a provider type;"
            f" add type = {next(iter(PROVIDER_TYPES))!r}"
        )
    provider_type = PROVIDER_TYPES[values["type"]]
    if name == provider_type.name:
        # The SDKs' variables feed the provider named like them, and beat the file as
        # every environment variable does.
        for key, var in (
            ("base_url", provider_type.base_url_env),
            ("key", provider_type.key_env),
            ("max_retries", provider_type.max_retries_env),
        ):
            if var and environ.get(var, ""):
                values[key] = read.variable(
                    var, environ[var], f"{prefix}.{key}", _PROVIDER_RULES[key]
                )
    elif "base_url" not in values:
        _require_base_url(f"{prefix}.base_url{read.where}", provider_type.name)
    return ProviderConfig(name=name, **values)


def _load_breaker(raw: object, prefix: str, read: _Reader) -> BreakerConfig:
    return BreakerConfig(**read(_table(raw, prefix, read.where), prefix, _BREAKER_RULES))


def _load_mcp_servers(raw: object, read: _Reader) -> tuple[MCPServerConfig, ...]:
    servers = []
    for name, entry in _table(raw, "mcp.servers", read.where).items():
        _check_mcp_server_name(name, read.where)
        prefix = f"mcp.servers.{name}"
        values = read(_table(entry, prefix, read.where), prefix, _MCP_SERVER_RULES)
        servers.append(MCPServerConfig(name=name, **values))
    return tuple(servers)


def apply_flags(config: Config, flags: Mapping[str, tuple[str, object]]) -> Config:
    """``config`` with command-line flags applied: ``{"server.port": ("--port", 9000)}``.

    Each value is checked by its setting's rule but named as the user typed it: a bad
    ``--port`` is reported as ``--port``, not as a ``server.port`` nobody wrote.
    """
    sources = dict(config.sources)
    changes: dict[str, dict[str, Any]] = {}
    for dotted, (flag, value) in flags.items():
        section, key = dotted.split(".")
        changes.setdefault(section, {})[key] = _SECTIONS[section][1][key].check(flag, value)
        sources[dotted] = flag
    records = {
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in changes.items()
    }
    return dataclasses.replace(config, **records, sources=sources)


def missing_key_warnings(config: Config) -> list[str]:
    """One line per provider with no central key although its users bring none.

    Such a provider answers every request made with a gateway key with a 401; shown at
    start-up and by ``bridgectl check-config`` so that it is not first met by a user.
    """
    return [
        f"providers.{provider.name} has no key: requests made with a gateway key will be"
        f" refused (401) until {provider.key_settings} is set; requests that bring their"
        " own provider key still work"
        + ("" if provider.name == provider.type else _PLACEHOLDER_HINT)
        for provider in config.providers
        if PROVIDER_TYPES[provider.type].central_key and not provider.all_keys
    ]


# A local server (Ollama, llama.cpp) often takes no key, but the gateway cannot tell.
_PLACEHOLDER_HINT: Final = " (an upstream that takes no key: set any placeholder, e.g. 'none')"


# --- Rendering -------------------------------------------------------------------------------


def render_config(config: Config) -> str:
    """The effective configuration as TOML, secrets masked (for ``bridgectl check-config``).

    Each value not at its default says where it came from in a trailing comment
    (``# from ANTHROPIC_BASE_URL``, ``# from bridge.toml``, ``# from --port``). The output
    parses back with ``tomllib``; loaded again it gives the same configuration, except
    that masked secrets stay masked.
    """
    sources = config.sources
    lines = ["# Effective bridge configuration; secrets are masked."]
    for section in _SECTIONS:
        if section != "mcp":
            lines += [
                "",
                f"[{section}]",
                *_render_fields(getattr(config, section), section, sources),
            ]
    # Every provider is listed below, so the defaults are "on" exactly when all are there.
    names = {provider.name for provider in config.providers}
    defaults = _toml_value(names.issuperset(DEFAULT_PROVIDERS))
    lines += [
        "",
        "[providers]",
        f"defaults = {defaults}{_comment(sources.get('providers.defaults'))}",
    ]
    for provider in config.providers:
        prefix = f"providers.{provider.name}"
        fields = _render_fields(provider, prefix, sources, skip={"name", "circuit_breaker"})
        lines += ["", f"[{prefix}]", *fields]
        if provider.circuit_breaker is not None:
            breaker = _render_fields(provider.circuit_breaker, f"{prefix}.circuit_breaker", sources)
            lines += ["", f"[{prefix}.circuit_breaker]", *breaker]
    lines += ["", "[mcp]", *_render_fields(config.mcp, "mcp", sources, skip={"servers"})]
    for server in config.mcp.servers:
        unused = {"command", "args", "env"} if server.url else {"url", "headers"}
        prefix = f"mcp.servers.{server.name}"
        fields = _render_fields(server, prefix, sources, skip={"name", *unused})
        lines += ["", f"[{prefix}]", *fields]
    return "\n".join(lines) + "\n"


def _render_fields(
    record: Any,
    prefix: str,
    sources: Mapping[str, str],
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    lines = []
    for f in dataclasses.fields(record):
        if f.name in skip:
            continue
        value = getattr(record, f.name)
        shown = _masked(f.name, value)
        source = sources.get(f"{prefix}.{f.name}")
        lines.append(f"{f.name} = {_toml_value(shown)}{_comment(source, masked=shown != value)}")
    return lines


def _comment(source: str | None, *, masked: bool = False) -> str:
    """``  # masked, from BRIDGE_SERVER_PORT``; nothing for an unmasked default."""
    notes = (["masked"] if masked else []) + ([f"from {source}"] if source else [])
    return "  # " + ", ".join(notes) if notes else ""


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{_toml_string(key)} = {_toml_value(item)}" for key, item in value.items())
        return "{ " + ", ".join(pairs) + " }" if value else "{}"
    raise TypeError(f"cannot render {value!r} as TOML")  # a bug: records hold no other types


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
