"""The configuration's records: the provider types, the sections and their rules.

Each record validates its fields in ``__post_init__`` (see :mod:`bridge.config.rules`), so
a record built in code is checked exactly like one loaded from a file."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from bridge.config.masking import mask_secret, mask_url
from bridge.config.rules import (
    ACTOR_REFERENCE,
    _boolean,
    _check_base_url,
    _check_database,
    _check_mcp_url,
    _check_networks,
    _check_regex,
    _check_secret,
    _check_secret_list,
    _check_secret_table,
    _check_statuses,
    _check_text,
    _check_text_list,
    _choice,
    _comma_list,
    _fail,
    _float_or_text,
    _hint,
    _integer,
    _matching,
    _per_second,
    _Rule,
    _seconds,
    _show,
)
from bridge.errors import ConfigError

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


def _check_breaker(label: str, value: object) -> BreakerConfig | None:
    """``None`` (no breaker) or a :class:`BreakerConfig`; the loader builds it from a table."""
    if value is not None and not isinstance(value, BreakerConfig):
        _fail(label, "a BreakerConfig or None", _show(value))
    return value


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
