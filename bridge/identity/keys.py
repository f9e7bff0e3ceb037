"""Gateway keys: their format, how they are hashed and verified, and what stores them.

The gateway issues every user a key of its own (``bridgectl keys create``). A client presents it
where clients put API keys (``x-api-key`` or ``Authorization: Bearer``).

Rules:

* A key is ``bk-`` + 8 visible characters + ``-`` + 43 secret characters, all URL-safe
  base64 (``bk-3fZx9Qp2-...``). The first 11 characters are its **prefix**: stored in clear,
  shown by ``bridgectl keys list``, and used to find the key's row. The 43 characters after the
  prefix carry 256 bits of entropy on their own, so knowing the prefix does not help a guess.
* A store keeps only the prefix and :func:`hash_key` of the whole key, never the key itself:
  :meth:`KeyStore.create_key` returns the key once and it cannot be recovered afterwards.
* Verification takes the same time whether or not a prefix exists: a store finds the row by
  prefix and then calls :func:`secret_matches`, which does exactly one
  :func:`hmac.compare_digest`, against a dummy hash when there is no row.
* A revoked key stays listed (with when it was revoked) but is never found again.

This module imports nothing from the rest of bridge, so the stores in
:mod:`bridge.recording` can build :class:`GatewayKey` values without an import cycle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

__all__ = [
    "KEY_LENGTH",
    "KEY_PREFIX",
    "KEY_TOUCH_INTERVAL",
    "PREFIX_LENGTH",
    "GatewayKey",
    "KeyStore",
    "check_new_key",
    "contains_gateway_key",
    "generate_key",
    "hash_key",
    "key_prefix",
    "looks_like_gateway_key",
    "resolve_key",
    "secret_matches",
]

KEY_TOUCH_INTERVAL: Final = 60.0
"""Seconds between two updates of a key's ``last_used_at`` by one gateway worker: a write
per request would cost every request a database round trip for a fact needed to the day."""

KEY_PREFIX: Final = "bk-"
"""Every gateway key starts with it, so a gateway key is told apart from a provider key."""

_VISIBLE_BYTES: Final = 6  # 8 URL-safe characters: 48 bits, to tell keys apart in a listing
_SECRET_BYTES: Final = 32  # 43 URL-safe characters: 256 bits, the part that is never shown

PREFIX_LENGTH: Final = len(KEY_PREFIX) + 8
"""Length of a key's visible prefix, e.g. ``bk-3fZx9Qp2``."""

KEY_LENGTH: Final = PREFIX_LENGTH + 1 + 43
"""Length of a whole key: the prefix, a ``-``, and the secret part."""

_SHAPE: Final = re.compile(rf"{re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{8}}-[A-Za-z0-9_-]{{43}}")

# Compared against when no row has the presented prefix, so that an unknown prefix costs the
# same hashing and comparing as a known one. Random per process: no key can hash to it.
_DUMMY_HASH: Final = hashlib.sha256(secrets.token_bytes(32)).hexdigest()


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """What a store knows about one gateway key: everything but the key and its hash."""

    id: str
    """A uuid4, as text: what ``bridgectl keys revoke`` takes."""
    user: str
    """The user the key identifies; recorded as the initiator of every request made with it."""
    prefix: str
    """The visible start of the key, e.g. ``bk-3fZx9Qp2``: enough to tell keys apart."""
    metadata: dict[str, str]
    """Free-form labels given at creation (``--meta team=payments``)."""
    created_at: _dt.datetime
    last_used_at: _dt.datetime | None
    """When the key last authenticated a request (``None``: never)."""
    revoked_at: _dt.datetime | None
    """When the key was revoked (``None``: it is active)."""


def generate_key() -> tuple[str, str]:
    """A new random key and its prefix, as ``(secret, prefix)``.

    Both parts come from :mod:`secrets`. The visible part only tells keys apart; the 256 bits
    of the secret part make the key unguessable even to someone who has read the listing.
    """
    visible = secrets.token_urlsafe(_VISIBLE_BYTES)
    hidden = secrets.token_urlsafe(_SECRET_BYTES)
    prefix = f"{KEY_PREFIX}{visible}"
    return f"{prefix}-{hidden}", prefix


def hash_key(secret: str) -> str:
    """The SHA-256 of *secret*, in hex: what a store keeps instead of the key.

    A fast unsalted hash is enough here, unlike for passwords: slow KDFs and salts exist to
    stop guessing *low-entropy* secrets from their hashes, and a gateway key has 256 random
    bits, so no amount of guessing speed finds one, and no two keys share a hash. A slow KDF
    would instead cost every request its running time and give attackers a way to load the
    gateway with bogus keys.
    """
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_gateway_key(value: str) -> bool:
    """Whether *value* has the shape of a gateway key: a cheap check before any lookup."""
    return _SHAPE.fullmatch(value) is not None


def contains_gateway_key(value: str) -> bool:
    """Whether a gateway key appears anywhere in *value* (a header value, e.g. ``Bearer bk-...``).

    Such a value must never leave the gateway, wherever the client put it.
    """
    return KEY_PREFIX in value and _SHAPE.search(value) is not None


def key_prefix(value: str) -> str | None:
    """The prefix to look *value* up by, or ``None`` if it is not shaped like a gateway key."""
    return value[:PREFIX_LENGTH] if looks_like_gateway_key(value) else None


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Whether *secret* hashes to *stored_hash*, compared in constant time.

    Pass ``None`` when no row was found: the comparison is still made, against a dummy hash,
    so the time taken does not tell whether a prefix exists. Exactly one
    :func:`hmac.compare_digest` per call.
    """
    expected = _DUMMY_HASH if stored_hash is None else stored_hash
    same = hmac.compare_digest(hash_key(secret), expected)
    return same and stored_hash is not None


def resolve_key(keys: Sequence[GatewayKey], reference: str) -> GatewayKey:
    """The key *reference* names: its id, its prefix (``bk-3fZx9Qp2``, as listings and logs
    show it), the start of either if only one key has it, or the whole key.

    Raises :class:`LookupError` saying what matched: nothing, or several keys (named by
    prefix and user, so the caller can pick). The id wins over everything else.
    """
    text = reference.strip()
    if (prefix := key_prefix(text)) is not None:
        text = prefix  # the whole key: its prefix is what a store knows
    for exact in ([k for k in keys if k.id == text], [k for k in keys if k.prefix == text]):
        if len(exact) == 1:
            return exact[0]
    matches = [k for k in keys if text and (k.id.startswith(text) or k.prefix.startswith(text))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(
            f"no gateway key has id or prefix {reference!r}; `bridgectl keys list` shows them"
        )
    named = ", ".join(f"{k.prefix} ({k.user})" for k in matches[:5])
    raise LookupError(f"{reference!r} matches {len(matches)} keys: {named}; give more of it")


def check_new_key(user: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """Validate what a new key is created with; return the metadata as a plain dict.

    Raises :class:`ValueError` naming the bad value: the user must be a non-empty name
    without surrounding spaces, and metadata keys and values must be strings.
    """
    if not isinstance(user, str) or not user or user != user.strip():
        raise ValueError(
            f"invalid user {user!r} for a gateway key: give a non-empty name without"
            " surrounding spaces, e.g. --user alice"
        )
    kept: dict[str, str] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ValueError(
                f"invalid metadata {name!r}={value!r} for a gateway key:"
                " keys must be non-empty strings and values strings, e.g. team=payments"
            )
        kept[name] = value
    return kept


@runtime_checkable
class KeyStore(Protocol):
    """Where gateway keys are kept; :class:`~bridge.recording.sqlite.SQLiteStore` and
    :class:`~bridge.recording.memory.MemoryStore` implement it.

    Synchronous and thread-safe: the gateway calls it from worker threads.
    """

    def create_key(self, user: str, metadata: Mapping[str, str]) -> tuple[str, GatewayKey]:
        """Create a key for *user*; return ``(secret, key)``. The secret is never stored,
        so this is the only time it can be shown. :class:`ValueError` for a bad user or
        metadata (see :func:`check_new_key`)."""

    def list_keys(self) -> list[GatewayKey]:
        """Every key, revoked ones included, oldest first."""

    def revoke_key(self, key_id: str) -> bool:
        """Revoke the key *key_id*. ``True`` if this call revoked it; ``False`` if there is
        no such key or it was revoked already (its first revocation time is kept)."""

    def find_key(self, secret: str) -> GatewayKey | None:
        """The active key whose secret is *secret*, or ``None`` (unknown, malformed or
        revoked). Constant time in the sense of :func:`secret_matches`."""

    def touch_key(self, key_id: str, when: _dt.datetime) -> None:
        """Record that the key was used at *when*. Never moves ``last_used_at`` back, so
        gateways sharing a database may report uses in any order."""

    def close(self) -> None:
        """Release the store's resources. Idempotent."""
