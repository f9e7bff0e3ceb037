"""The journal: an append-only file of records, where the recorder spills while the store fails.

Rules:

* The journal is a directory of segment files ``journal-<counter>.jsonl``; the counter only
  grows, so the segments' order is the records' order. One process uses a directory.
* :meth:`Journal.append` writes one batch as JSON lines (one record per line, with its type
  name; datetimes in ISO 8601, enums by value), then flushes and fsyncs: once it returns,
  the batch survives a crash. A segment is rolled once it reaches ``segment_bytes``.
* A segment is appended to only by the :class:`Journal` that created it, and never again
  after a failed append: a line torn by a crash or a failed write is always the last line
  of its segment, where :meth:`Journal.replay` skips it with a warning.
* :meth:`Journal.replay` hands the records back, oldest first, in batches, to a write
  function (a store's ``write_batch``), and deletes a segment only once all its records
  were written. Stores are idempotent by record id, so a replay cut short by a crash or a
  failing store only writes some records twice, harmlessly.
* Synchronous, and one call at a time (like a store): the recorder calls it from a worker
  thread with the same limiter as the store.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final, get_args

from bridge.errors import JournalError

from . import records as _records
from .records import Record

__all__ = ["SEGMENT_BYTES", "Journal", "JournalError", "decode_record", "encode_record"]

logger = logging.getLogger("bridge.recording")

SEGMENT_BYTES: Final = 16 * 1024 * 1024
"""Size after which appends go to a new segment (a batch is never split across two)."""

_SEGMENT_NAME: Final = re.compile(r"^journal-(\d+)\.jsonl$")

_RECORD_TYPES: Final[dict[str, type[Record]]] = {kind.__name__: kind for kind in get_args(Record)}

# One encoder for every line: what JSON cannot encode inside a free-form field (metadata,
# a tool's input) is written as its str, as the SQLite store does: a journal that refused a
# record would lose it.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _field_kinds(kind: type[Record]) -> dict[str, Any]:
    # The records' module namespace, not their __module__: the package re-exports them
    # under another module name.
    hints = typing.get_type_hints(kind, globalns=vars(_records))
    return {f.name: _without_none(hints[f.name]) for f in dataclasses.fields(kind)}


def _without_none(hint: Any) -> Any:
    """``X`` for ``X | None``, so that an optional datetime or enum is decoded as one."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return hint


# Record type -> field name -> the field's resolved type, to decode what JSON flattened.
_FIELDS: Final = {kind: _field_kinds(kind) for kind in _RECORD_TYPES.values()}


def encode_record(record: Record) -> str:
    """One journal line (without its newline) for *record*."""
    kind = type(record)
    if kind not in _FIELDS:
        raise TypeError(
            f"cannot journal a {kind.__name__}: a record is one of {', '.join(_RECORD_TYPES)}"
        )
    values: dict[str, Any] = {}
    for name in _FIELDS[kind]:
        value = getattr(record, name)
        if isinstance(value, _dt.datetime):
            value = value.isoformat()
        elif isinstance(value, enum.Enum):
            value = value.value
        values[name] = value
    return _ENCODER.encode({"type": kind.__name__, "fields": values})


def decode_record(line: str) -> Record:
    """The record of one journal line. Raises ValueError for a line that is not one."""
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
        raise ValueError(f"not a journal line (no 'type' and 'fields'): {line[:80]!r}")
    kind = _RECORD_TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise ValueError(
            f"unknown record type {data.get('type')!r}: a record is one of"
            f" {', '.join(_RECORD_TYPES)}"
        )
    values: dict[str, Any] = {}
    for name, value in data["fields"].items():
        field_kind = _FIELDS[kind].get(name)
        if value is None:
            pass
        elif field_kind is _dt.datetime:
            value = _dt.datetime.fromisoformat(value)
        elif isinstance(field_kind, type) and issubclass(field_kind, enum.Enum):
            value = field_kind(value)
        values[name] = value
    try:
        return kind(**values)
    except TypeError as exc:  # a missing or unknown field
        raise ValueError(f"a {kind.__name__} line with the wrong fields: {exc}") from None


def _fsync_directory(directory: Path) -> None:
    """Make a segment's creation or removal durable (POSIX only; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class Journal:
    """Segments of records in *directory* (created if missing), oldest first."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes}")
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            found = [
                (int(match[1]), path)
                for path in self.directory.iterdir()
                if (match := _SEGMENT_NAME.match(path.name))
            ]
        except OSError as exc:
            raise JournalError(
                f"cannot use {str(self.directory)!r} as the recording journal: {exc};"
                " check that the directory can be created and is writable"
            ) from exc
        # The segments on disk, oldest first. Kept here, so that pending() is free.
        self._segments: list[Path] = [path for _, path in sorted(found)]
        # Records and bytes in each segment, for backlog(); counted once for the segments
        # an earlier process left, then kept up to date by append() and replay().
        self._sizes: dict[Path, tuple[int, int]] = {}
        for path in self._segments:
            data = path.read_bytes()
            self._sizes[path] = (data.count(b"\n"), len(data))
        self._counter = max((number for number, _ in found), default=0)
        # The segment appends go to: always one this journal created, never one left by
        # an earlier process (its last line may be torn).
        self._current: IO[bytes] | None = None
        self._current_size = 0

    def pending(self) -> bool:
        """Whether records are waiting to be replayed."""
        return bool(self._segments)

    def backlog(self) -> tuple[int, int]:
        """(records, bytes) waiting to be replayed, for metrics and ``/readyz``."""
        return (
            sum(records for records, _ in self._sizes.values()),
            sum(size for _, size in self._sizes.values()),
        )

    def segments(self) -> list[Path]:
        """The segment files, oldest first."""
        return list(self._segments)

    def append(self, records: Sequence[Record]) -> None:
        """Write *records* at the end of the journal, durably (flushed and fsynced)."""
        if not records:
            return
        data = "".join(encode_record(record) + "\n" for record in records).encode()
        if self._current is not None and self._current_size + len(data) > self._segment_bytes:
            self._seal()
        try:
            if self._current is None:
                self._open_segment()
                assert self._current is not None
            self._current.write(data)
            self._current.flush()
            os.fsync(self._current.fileno())
        except BaseException:
            # What was written may end in a torn line: append no more to this segment.
            self._seal()
            raise
        self._current_size += len(data)
        records_before, bytes_before = self._sizes.get(self._segments[-1], (0, 0))
        self._sizes[self._segments[-1]] = (records_before + len(records), bytes_before + len(data))

    def replay(self, write: Callable[[Sequence[Record]], None], batch_size: int) -> int:
        """Hand every journaled record to *write*, oldest first, in batches of at most
        *batch_size*; delete each segment once all its records were written. Returns how
        many records were written. If *write* raises, the exception propagates and the
        segment being replayed stays (its first batches will be written again, harmlessly).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._seal()  # appends made from now on go to a new segment
        replayed = 0
        while self._segments:
            segment = self._segments[0]
            records = self._read(segment)
            for start in range(0, len(records), batch_size):
                write(records[start : start + batch_size])
                replayed += len(records[start : start + batch_size])
            segment.unlink(missing_ok=True)
            _fsync_directory(self.directory)
            del self._segments[0]
            self._sizes.pop(segment, None)
        return replayed

    def close(self) -> None:
        """Close the segment being appended to. Idempotent; appending reopens one."""
        self._seal()

    def _open_segment(self) -> None:
        self._counter += 1
        path = self.directory / f"journal-{self._counter:012d}.jsonl"
        self._current = path.open("xb")
        self._current_size = 0
        self._segments.append(path)
        _fsync_directory(self.directory)

    def _seal(self) -> None:
        if self._current is not None:
            current, self._current = self._current, None
            current.close()

    def _read(self, segment: Path) -> list[Record]:
        """The records of *segment*, skipping (and logging) the lines that do not decode."""
        lines = segment.read_bytes().split(b"\n")
        torn_tail = lines.pop()  # after the last newline: b"" unless a write was cut short
        records: list[Record] = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(decode_record(line.decode()))
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
                logger.error(
                    "skipping line %d of journal segment %s: %s; the record on it is lost",
                    number,
                    segment,
                    exc,
                )
        if torn_tail:
            logger.warning(
                "skipping the torn last line of journal segment %s (%d bytes, no newline):"
                " a crash or a failed write cut it short, its batch was never acknowledged",
                segment,
                len(torn_tail),
            )
        return records
