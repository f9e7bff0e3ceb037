"""Rendering for ``bridgectl check-config``: the effective configuration as TOML, secrets
masked, each value's source as a comment."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bridge.config.loading import _SECTIONS
from bridge.config.schema import DEFAULT_PROVIDERS, Config, _masked

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
