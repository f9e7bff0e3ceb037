"""Reading HTTP header lists: pairs of ``(name, value)``, in the order received.

Header names are case-insensitive (RFC 9110 section 5.1), and servers written
elsewhere capitalise them (Go's net/http, nginx, Python's ``http.server``). The
gateway lower-cases names once, where headers enter it (:func:`normalize`: the
upstream client's responses, :class:`bridge.core.exchange.Request`); the lookups
here still accept any case, so a list built by hand cannot slip past them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "bearer_token",
    "connection_tokens",
    "find_header",
    "header_value",
    "normalize",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, not the message (RFC 9110 section 7.6.1)."""


def normalize(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs with lower-case names, order and values kept."""
    return [(name.lower(), value) for name, value in headers]


def find_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (any case), or ``None`` when there is none.

    The one lookup: :func:`header_value` and the ``header`` methods of the response and
    request types (upstream client, embedding API, mock upstream) all come here.
    """
    name = name.lower()
    for key, value in headers:
        if key == name or key.lower() == name:
            return value
    return None


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str:
    """The first value of header ``name`` (any case), or ``""``: for headers where an
    empty value and no header mean the same."""
    return find_header(headers, name) or ""


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The hop-by-hop names of a message: the fixed set and those its ``Connection``
    header lists (RFC 9110 section 7.6.1: a sender names its own hop-by-hop fields there,
    and a proxy must drop them), all lower-case."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == "connection"
        for token in value.split(",")
    }
    named.discard("")
    return HOP_BY_HOP | named if named else HOP_BY_HOP


def bearer_token(value: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` value, or ``""``."""
    parts = value.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    return ""
