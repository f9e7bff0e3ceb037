"""Who is asking: the actor of a request, by the configured auth mode.

Modes:

* ``none``: everyone is ``anonymous`` (local use).
* ``header``: a trusted proxy in front of the gateway names the user in a header
  (``auth.header``, default ``X-Bridge-User``); a request without it is refused
  with 401, and the header never goes upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge.config import AuthConfig
from bridge.errors import Unauthorized

__all__ = ["ANONYMOUS", "Actor", "authenticate", "identity_headers"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a request is attributed to: an id and free-form metadata."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)


ANONYMOUS = Actor("anonymous")
"""The actor of auth mode ``none``."""


def authenticate(config: AuthConfig, headers: Sequence[tuple[str, str]]) -> Actor:
    """The actor of a request; :class:`Unauthorized` if the mode demands what is missing."""
    if config.mode == "header":
        name = config.header.lower()
        user = next((value.strip() for key, value in headers if key == name), "")
        if not user:
            raise Unauthorized(
                f"missing {config.header} header: this gateway expects a trusted proxy "
                "to name the user (auth.mode = header)"
            )
        return Actor(user)
    return ANONYMOUS


def identity_headers(config: AuthConfig) -> tuple[str, ...]:
    """Headers that carry gateway identity and must never reach the upstream."""
    return (config.header.lower(),) if config.mode == "header" else ()
