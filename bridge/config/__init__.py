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

from bridge.config.loading import (
    apply_flags,
    config_from_mapping,
    default_config_path,
    load_config,
    missing_key_warnings,
)
from bridge.config.masking import mask_secret, mask_url, mask_urls_in
from bridge.config.render import render_config
from bridge.config.rules import ACTOR_REFERENCE
from bridge.config.schema import (
    AUTH_MODES,
    BYTES,
    DEFAULT_FAILURE_STATUSES,
    LOG_FORMATS,
    LOG_LEVELS,
    PROVIDER_TYPES,
    SECONDS,
    AuthConfig,
    BreakerConfig,
    Config,
    MCPConfig,
    MCPServerConfig,
    MiB,
    ObservabilityConfig,
    ProviderConfig,
    ProviderType,
    RecordingConfig,
    ServerConfig,
)
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
