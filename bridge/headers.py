"""Reading HTTP header lists (pairs with lower-case names, in the order received)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["bearer_token", "header_value"]


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str:
    """The first value of header ``name`` (lower-case), or ``""``."""
    for key, value in headers:
        if key == name:
            return value
    return ""


def bearer_token(value: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` value, or ``""``."""
    parts = value.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    return ""
