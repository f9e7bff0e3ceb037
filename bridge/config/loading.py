"""Loading: the TOML file and the environment into a :class:`~bridge.config.schema.Config`,
with where each value came from; command-line flags; warnings for missing keys."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bridge.config.rules import _boolean, _hint, _Rule, _show
from bridge.config.schema import (
    _AUTH_RULES,
    _BREAKER_RULES,
    _MCP_RULES,
    _MCP_SERVER_RULES,
    _OBSERVABILITY_RULES,
    _PROVIDER_RULES,
    _RECORDING_RULES,
    _SERVER_RULES,
    DEFAULT_CONFIG_FILE,
    DEFAULT_PROVIDERS,
    PROVIDER_TYPES,
    AuthConfig,
    BreakerConfig,
    Config,
    MCPConfig,
    MCPServerConfig,
    ObservabilityConfig,
    ProviderConfig,
    RecordingConfig,
    ServerConfig,
    _check_mcp_server_name,
    _check_provider_name,
    _require_base_url,
)
from bridge.errors import ConfigError

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
