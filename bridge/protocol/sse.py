"""Server-Sent Events without I/O: a decoder for upstream streams, an encoder for ours.

The gateway relays each upstream event as soon as its last byte arrives, usually as the
exact bytes it received (`Event.raw`). It parses an event only as far as accounting and the
loop need. This module does that parsing and nothing else: no sockets, no async, no clock.
It is shaped like h11. `Decoder.receive_data(bytes)` only buffers (`b""` means the upstream
closed). `Decoder.next_event()` returns an `Event`, `NEED_DATA` or `END_OF_STREAM`.

Rules (WHATWG HTML, "event stream interpretation"), with the places where we differ:

1. Lines end with CRLF, LF or CR and nothing else. U+2028, U+2029 and U+0085 do not end a
   line: JSON strings may carry them unescaped, so `str.splitlines` and httpx's
   `aiter_lines` are wrong here. A CR that is the last buffered byte may be the first half of
   a CRLF, so its line waits for the next byte or for the end of the stream.
2. One UTF-8 BOM is skipped at the very start of the stream, and nowhere else.
3. `name: value` loses one space after the colon. A line without a colon is a name with an
   empty value. A line starting with ":" is a comment. Unknown names are ignored, as are an
   `id` containing NUL and a `retry` that is not all ASCII digits.
4. A blank line dispatches the event, unless the event has no `data` line. So comment-only
   keep-alives (": ping\\n\\n") produce nothing, and a block without data is dropped whole.
5. Values are decoded as UTF-8 with errors="replace": bad upstream bytes never raise.
6. Tolerance: at the end of the stream, a pending event that has data is dispatched even
   without its final blank line, and its last line even without a terminator. The spec drops
   it, but some servers omit the final blank line. `frame()` completes its raw bytes.
7. Difference: `Event.id` and `Event.retry` are the fields of this event only, `None` when
   absent. A browser's `lastEventId` persists across events; a caller that needs it keeps
   the last `id` that was not `None`.
8. Buffering is bounded: the bytes of an unfinished event (everything since the last blank
   line) may not exceed `max_event_size`, or `next_event` raises `SSEProtocolError`.
   This is a defence against a broken or hostile upstream, like h11's
   `max_incomplete_event_size`.

Invariant (tested with Hypothesis): any bytes, cut into chunks anywhere, give the same events
as the same bytes in one chunk, or `SSEProtocolError`. Never another exception.

Cost: linear in the bytes received, however small the chunks. The search for a line
terminator resumes where the previous one stopped. Each line is handled with `bytes`
methods, never a Python loop over its bytes.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "END_OF_STREAM",
    "NEED_DATA",
    "Decoder",
    "Event",
    "SSEProtocolError",
    "encode",
    "encode_comment",
    "frame",
]

# The default bound on one unfinished event: far above any real LLM stream event, low enough
# that a stream which never sends a blank line cannot take the process's memory.
_MAX_EVENT_SIZE: Final = 16 * 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"
_LF: Final = ord("\n")
_COLON: Final = ord(":")
_SPACE: Final = ord(" ")


class _Sentinel(enum.Enum):
    """The two non-event results of `Decoder.next_event`."""

    NEED_DATA = "NEED_DATA"
    END_OF_STREAM = "END_OF_STREAM"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


NEED_DATA: Final = _Sentinel.NEED_DATA
"""`next_event` needs more bytes: call `receive_data` (with `b""` if the upstream closed)."""

END_OF_STREAM: Final = _Sentinel.END_OF_STREAM
"""The stream has ended and every event in it was returned. Returned again on every call."""


class SSEProtocolError(Exception):
    """The upstream sent a stream that cannot be decoded safely (for now: an oversized event).

    The decoder is then broken: further `next_event` calls raise the same error. The gateway
    answers the client as for any upstream failure.
    """


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event.

    `raw` holds the exact bytes received for it: from its first line (comments included) up
    to and including its blank line. It does not hold the skipped blocks before it. An event
    dispatched at end of stream has no blank line in `raw`: relay `frame(raw)`.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    raw: bytes = b""


@final
class Decoder:
    """An incremental decoder for one event stream. Feed bytes, take events.

    The buffer holds the bytes from the start of the pending event. `_line_start` is the next
    line to read, and `_search_from` is where the terminator search resumes: there is no
    terminator between them. There is no LF between `_search_from` and `_no_lf_before`.
    """

    __slots__ = (
        "_buffer",
        "_data",
        "_eof",
        "_error",
        "_event_start",
        "_event_type",
        "_id",
        "_line_start",
        "_max_event_size",
        "_no_lf_before",
        "_retry",
        "_search_from",
        "_started",
    )

    def __init__(self, *, max_event_size: int = _MAX_EVENT_SIZE) -> None:
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be >= 1 (bytes), got {max_event_size!r}")
        self._max_event_size = max_event_size
        self._buffer = bytearray()
        self._event_start = 0
        self._line_start = 0
        self._search_from = 0
        self._no_lf_before = 0
        self._started = False  # past the place where a BOM may be
        self._eof = False
        self._error: str | None = None
        self._data: list[bytes] = []
        self._event_type: bytes | None = None
        self._id: bytes | None = None
        self._retry: int | None = None

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the upstream. `b""` means the stream ended (like h11).

        This only buffers: call `next_event` until it returns `NEED_DATA` or `END_OF_STREAM`.
        """
        if data:
            if self._eof:
                raise RuntimeError(
                    f"receive_data() got {len(data)} more bytes after receive_data(b'') "
                    "ended the stream; use a new Decoder for a new stream"
                )
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """The next complete event, or `NEED_DATA`, or `END_OF_STREAM` once all is read.

        Raises `SSEProtocolError` when an unfinished event outgrows `max_event_size`.
        """
        if self._error is not None:
            raise SSEProtocolError(self._error)
        buffer = self._buffer
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer) and not self._eof:
                return self._need_data()  # maybe a BOM, maybe not: wait and see
            if buffer.startswith(_BOM):
                del buffer[: len(_BOM)]
            self._started = True
        while True:
            # Find the first CR or LF at or after _search_from with two C-level scans. The LF
            # scan resumes at _no_lf_before; the CR scan stops at the LF, so a stream using
            # only one kind of terminator is never rescanned.
            start = self._search_from
            size = len(buffer)
            lf = buffer.find(b"\n", start if start > self._no_lf_before else self._no_lf_before)
            self._no_lf_before = size if lf < 0 else lf
            end = buffer.find(b"\r", start, size if lf < 0 else lf)
            if end < 0:
                if lf < 0:  # no terminator yet
                    self._search_from = size
                    if not self._eof:
                        return self._need_data()
                    if self._line_start < size:  # a last line without a terminator
                        self._read_field(self._line_start, size)
                    return self._end_of_stream()
                end, next_line = lf, lf + 1
            elif end + 1 < size:
                next_line = end + 2 if buffer[end + 1] == _LF else end + 1
            elif self._eof:
                next_line = end + 1
            else:  # a CR as the last byte: is it CRLF? Ask again when more bytes arrive.
                self._search_from = end
                return self._need_data()
            start = self._line_start
            self._line_start = self._search_from = next_line
            if start != end:
                self._read_field(start, end)
                continue
            event = self._dispatch(next_line)
            if event is not None:
                return event

    def events(self) -> list[Event]:
        """Every event complete so far (it stops at `NEED_DATA` or `END_OF_STREAM`)."""
        events = []
        while isinstance(event := self.next_event(), Event):
            events.append(event)
        return events

    def _read_field(self, start: int, end: int) -> None:
        """Apply the line `buffer[start:end]` (not blank, no terminator) to the pending event."""
        buffer = self._buffer
        if buffer[start] == _COLON:
            return  # a comment
        colon = buffer.find(b":", start, end)
        if colon < 0:
            name = bytes(buffer[start:end])
            value = b""
        else:
            name = bytes(buffer[start:colon])
            colon += 1
            if colon < end and buffer[colon] == _SPACE:
                colon += 1
            value = bytes(buffer[colon:end])
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event_type = value
        elif name == b"id":
            if b"\0" not in value:
                self._id = value
        elif name == b"retry" and value.isdigit():  # bytes.isdigit() is ASCII only
            # More digits than int() accepts (sys.get_int_max_str_digits): ignored, like any
            # other retry the decoder cannot use.
            with contextlib.suppress(ValueError):
                self._retry = int(value)

    def _dispatch(self, end: int) -> Event | None:
        """End the pending event at `buffer[end]`: an `Event` if it had data, else `None`."""
        start = self._event_start
        self._event_start = end
        data, event_type, event_id = self._data, self._event_type, self._id
        retry = self._retry
        self._data = []
        self._event_type = self._id = None
        self._retry = None
        if not data:
            return None
        return Event(
            b"\n".join(data).decode("utf-8", "replace"),
            None if event_type is None else event_type.decode("utf-8", "replace"),
            None if event_id is None else event_id.decode("utf-8", "replace"),
            retry,
            bytes(self._buffer[start:end]),
        )

    def _need_data(self) -> _Sentinel:
        """Drop what is already dispatched, check the bound, and ask for more bytes."""
        start = self._event_start
        if start:
            del self._buffer[:start]
            self._event_start = 0
            self._line_start -= start
            self._search_from -= start
            self._no_lf_before -= start
        if len(self._buffer) > self._max_event_size:
            self._error = (
                f"an upstream SSE event grew past max_event_size={self._max_event_size} bytes "
                f"without ending ({len(self._buffer)} bytes since the last blank line); "
                "the upstream stream is broken or hostile, or max_event_size is too small"
            )
            raise SSEProtocolError(self._error)
        return NEED_DATA

    def _end_of_stream(self) -> Event | _Sentinel:
        """Dispatch what is pending (tolerance rule 6) and release the buffer."""
        event = self._dispatch(len(self._buffer))
        self._buffer.clear()
        self._event_start = self._line_start = self._search_from = self._no_lf_before = 0
        return END_OF_STREAM if event is None else event


def _check_one_line(field: str, value: str, forbidden: str = "\r\n") -> None:
    """Refuse a value that would end its line early and so inject fields into the stream."""
    for char in forbidden:
        if char in value:
            raise ValueError(
                f"SSE {field} {value!r} contains {char!r}, which an event stream cannot "
                f"carry in that field; remove it (or escape it, e.g. with json.dumps)"
            )


def encode(event: Event) -> bytes:
    """The canonical bytes of `event`, which decode back to it. `event.raw` is ignored.

    Fields come as `event`, `id`, `retry`, then one `data:` line per line of `data`, then a
    blank line. Raises `ValueError` for values the format cannot carry: a CR or LF in
    `event` or `id`, a CR in `data`, a NUL in `id`, a negative `retry`, and (as
    `UnicodeEncodeError`) a lone surrogate anywhere.
    """
    parts = []
    if event.event is not None:
        _check_one_line("event name", event.event)
        parts.append(f"event: {event.event}\n")
    if event.id is not None:
        _check_one_line("id", event.id, "\r\n\0")
        parts.append(f"id: {event.id}\n")
    if event.retry is not None:
        if event.retry < 0:
            raise ValueError(f"SSE retry must be a number of milliseconds >= 0, got {event.retry}")
        parts.append(f"retry: {event.retry}\n")
    _check_one_line("data", event.data, "\r")
    parts.append("data: " + event.data.replace("\n", "\ndata: ") + "\n\n")
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """A comment block, `": text\\n\\n"`: a keep-alive that clients ignore."""
    _check_one_line("comment", text)
    return f": {text}\n\n".encode()


def frame(raw: bytes) -> bytes:
    """`raw` ending in a blank line: as is if it does, else with the missing terminators.

    This is for relaying an event that was dispatched at end of stream without its blank
    line. A raw event that already ends in one is returned unchanged, and so is `b""`.

    One caution for relays: an event whose raw bytes start with a UTF-8 BOM (an upstream that
    sent a BOM after its first blank line) would lose it if it started the relayed stream,
    because a client skips a BOM there. Relay `encode(event)` for such an event instead.
    """
    if raw.endswith(b"\r\n"):
        body, terminator = raw[:-2], raw[-2:]
    elif raw.endswith((b"\n", b"\r")):
        body, terminator = raw[:-1], raw[-1:]
    elif raw:
        return raw + b"\n\n"
    else:
        return raw
    if not body or body.endswith((b"\n", b"\r")):
        return raw
    return raw + terminator
