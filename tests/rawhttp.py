"""Hand-built HTTP/2 bytes, for tests that talk to the gateway below any client library."""

from __future__ import annotations

from typing import Final

import hpack

__all__ = ["BAD_PATH_HEADERS", "H2_PREFACE", "h2_request_packet"]

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

BAD_PATH_HEADERS: Final = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"x"),
    (b":path", b"/\xff"),  # not ASCII: no valid request target
]
"""A request whose ``:path`` once made hypercorn's worker exit (UnicodeDecodeError)."""


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big")
    return header + payload


def h2_request_packet(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The preface, an empty SETTINGS frame, and ``headers`` in one HEADERS frame on stream 1
    (END_STREAM and END_HEADERS): a whole request, as one write on a new connection."""
    settings = _frame(0x4, 0, 0, b"")
    block = hpack.Encoder().encode(headers)
    return H2_PREFACE + settings + _frame(0x1, 0x5, 1, block)
