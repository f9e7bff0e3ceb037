"""Hand-built HTTP/2 bytes, for tests that talk to the gateway below any client library."""

from __future__ import annotations

from typing import Final

import hpack

__all__ = ["BAD_PATH_HEADERS", "H2_PREFACE", "h2_frames", "h2_request_packet"]

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


def h2_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The whole frames at the start of ``data``: (type, flags, stream id, payload)."""
    frames = []
    while len(data) >= 9:
        size = int.from_bytes(data[:3], "big")
        if len(data) < 9 + size:
            break
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        frames.append((data[3], data[4], stream_id, data[9 : 9 + size]))
        data = data[9 + size :]
    return frames
