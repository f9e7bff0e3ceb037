"""Who is asking: the actor of a request, by the configured auth mode.

Modes:

* ``keys`` (the default): every request carries a gateway key issued by
  ``bridgectl keys create``. Where clients put API keys (``x-api-key`` or
  ``Authorization: Bearer``, which is what Claude Code, Codex and the SDKs send), it
  is stripped and the provider's own key is injected. A client that brings its own
  provider key (BYOK) sends the gateway key in ``X-Bridge-Key`` instead, and its
  provider key passes through. Missing, unknown or revoked: 401, nothing forwarded.
* ``header``: a trusted proxy in front of the gateway names the user in a header
  (``auth.header``, default ``X-Bridge-User``).
* ``none``: everyone is ``anonymous`` (local use).

Gateway identity headers never go upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.config import AuthConfig
from bridge.errors import Unauthorized
from bridge.headers import bearer_token, header_value

__all__ = [
    "ANONYMOUS",
    "BRIDGE_KEY_HEADER",
    "Actor",
    "Identity",
    "KeyLookup",
    "identify",
    "identity_headers",
]

BRIDGE_KEY_HEADER = "x-bridge-key"
"""Where a BYOK client puts its gateway key (its provider key is in the usual place)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a request is attributed to: an id and free-form metadata."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)


ANONYMOUS = Actor("anonymous")
"""The actor of auth mode ``none``."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The outcome of authentication."""

    actor: Actor
    central: bool = False
    """The client's API-key headers held the gateway key: use the provider's own key."""
    strip: tuple[str, ...] = ()
    """Headers carrying gateway identity, never sent upstream."""


class KeyLookup(Protocol):
    """Finds the actor of a gateway key (in constant time), or ``None``."""

    async def __call__(self, secret: str) -> Actor | None: ...


async def identify(
    config: AuthConfig, headers: Sequence[tuple[str, str]], lookup: KeyLookup | None
) -> Identity:
    """Authenticate a request; :class:`Unauthorized` if the mode's credential is missing."""
    if config.mode == "header":
        name = config.header.lower()
        user = header_value(headers, name).strip()
        if not user:
            raise Unauthorized(
                f"missing {config.header} header: this gateway expects a trusted proxy "
                "to name the user (auth.mode = header)"
            )
        return Identity(Actor(user), strip=(name,))
    if config.mode != "keys":
        return Identity(ANONYMOUS)
    byok_key = header_value(headers, BRIDGE_KEY_HEADER).strip()
    if byok_key:
        secret, central = byok_key, False
    else:
        secret = header_value(headers, "x-api-key").strip() or bearer_token(
            header_value(headers, "authorization")
        )
        central = True
    if not secret:
        raise Unauthorized(
            "missing gateway key: send it as x-api-key or 'Authorization: Bearer', or in "
            "X-Bridge-Key when you bring your own provider key (create one with "
            "`bridgectl keys create --user NAME`)"
        )
    actor = await lookup(secret) if lookup is not None else None
    if actor is None:
        raise Unauthorized("invalid gateway key: it is unknown or has been revoked")
    strip = (BRIDGE_KEY_HEADER, "x-api-key", "authorization") if central else (BRIDGE_KEY_HEADER,)
    return Identity(actor, central=central, strip=strip)


def identity_headers(config: AuthConfig) -> tuple[str, ...]:
    """Headers that carry gateway identity in this mode, whatever the request."""
    if config.mode == "header":
        return (config.header.lower(),)
    if config.mode == "keys":
        return (BRIDGE_KEY_HEADER,)
    return ()
