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

Failed authentications are rate limited per client address (:class:`FailureLimiter`):
an address that has used up ``auth.failure_burst`` failures, refilled at
``auth.failure_rate`` per second, gets 429 before its key is even looked at, so
guessing keys costs the gateway no lookups and gains nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.config import AuthConfig
from bridge.errors import Unauthorized
from bridge.protocol.headers import bearer_token, header_value

__all__ = [
    "ANONYMOUS",
    "BRIDGE_KEY_HEADER",
    "Actor",
    "FailureLimiter",
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
                "to name the user (auth.mode = header)",
                missing=True,
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
            "`bridgectl keys create --user NAME`)",
            missing=True,
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


class FailureLimiter:
    """A token bucket of authentication failures per client address.

    Each failure takes a token; tokens come back at ``rate`` per second up to ``burst``.
    While an address has no token left, :meth:`retry_after` says how long until it has
    one. Memory is bounded: at most ``max_addresses`` buckets are kept, the least recently
    failed forgotten first (a forgotten address starts again with a full bucket, which
    only costs the gateway ``burst`` more lookups for it), and a bucket that has refilled
    is dropped as soon as it is looked at. ``rate`` 0 turns the limit off.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float],
        max_addresses: int = 65_536,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """address -> (tokens, when they were counted)."""

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, address: str, now: float) -> float:
        tokens, stamp = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - stamp) * self.rate)

    def retry_after(self, address: str) -> float:
        """0 if ``address`` may fail once more now, else the seconds until it may."""
        if not self.rate or address not in self._buckets:
            return 0.0
        tokens = self._tokens(address, self._clock())
        if tokens >= self.burst:
            del self._buckets[address]
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, address: str) -> None:
        """Count one failed authentication of ``address``."""
        if not self.rate:
            return
        now = self._clock()
        self._buckets[address] = (self._tokens(address, now) - 1, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
