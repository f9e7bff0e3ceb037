"""The recorder: takes records off the gateway's hot path and writes them in batches.

Rules:

* ``record()`` costs the caller a ``send_nowait`` into a bounded memory channel. Only
  when the channel is full does it wait (backpressure, counted in ``stats.waits``): a
  record is never dropped to keep the caller fast.
* One writer task takes the first queued record, then whatever else is queued (up to
  ``batch_size``) without waiting, and writes the batch in a worker thread, one write
  at a time. A failed write is logged and retried with capped exponential backoff: a
  batch is never given up while the process lives. FIFO order is kept.
* ``flush()`` sends a marker through the same channel, so "written" means written for
  everything submitted before it, whatever the interleaving of tasks.
* On exit of :func:`open_recorder`, normal or by cancellation, what is queued is written
  under a shielded cancel scope bounded by ``drain_timeout``, then the store is closed.
  Records still unwritten at the deadline are counted in an ERROR log line.

With a :class:`~bridge.recording.journal.Journal` (``open_recorder(store, journal=...)``),
the store's outages no longer hold records in memory:

* A batch the store refuses is appended to the journal instead of being retried in place
  (``stats.spilled``). Until the backoff expires, every batch goes straight to the journal;
  then the next batch (or, when idle, the replay) tries the store again.
* Once the store works and the journal holds records, the writer replays the journal
  before writing any newer batch, so the store receives records in the order they were
  submitted (``stats.replayed``). Replay is idempotent by record id.
* ``record()`` therefore waits only if the journal fails too; ``flush()`` returns once the
  records are in the store *or* the journal. The drain at exit writes to the store, or to
  the journal if the store fails or the journal still holds older records.

A :class:`~bridge.recording.deferred.DeferredStore` (the database was down at start-up) is
opened by the writer too, as one more store operation under the same backoff: while it is
not open, records spill to the journal, and the writer tries to open it even when idle,
so that the gateway becomes ready as soon as the database is back. Once open, the journal
is replayed as after any outage. Until then :meth:`Recorder.ready` says False.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, TypeAlias, get_args

import trio

from .deferred import DeferredStore
from .journal import Journal
from .records import Record
from .store import Store

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "BATCH_SIZE",
    "DRAIN_TIMEOUT",
    "NOT_READY_AFTER",
    "QUEUE_SIZE",
    "Recorder",
    "RecorderClosedError",
    "RecorderStats",
    "open_recorder",
]

logger = logging.getLogger("bridge.recording")

SECONDS: Final = 1.0

QUEUE_SIZE: Final = 10_000
"""Records the channel holds before ``record()`` has to wait for the writer."""
BATCH_SIZE: Final = 512
"""Most records written in one transaction."""
DRAIN_TIMEOUT: Final = 30 * SECONDS
"""How long the recorder's exit may spend writing what is still queued."""
BACKOFF_MIN: Final = 0.1 * SECONDS
"""Wait after a first failed write; it doubles with each failure in a row..."""
BACKOFF_MAX: Final = 5 * SECONDS
"""...up to this."""
NOT_READY_AFTER: Final = 3
LINGER: Final = 0.05 * SECONDS
"""How long the first record of a batch waits for others: one transaction (and one
thread hop) per request would cost the gateway more than the whole relay does.
A :meth:`Recorder.flush` cuts the wait short."""
"""Failed writes in a row after which :meth:`Recorder.ready` says False."""

_RECORD_TYPES: Final = frozenset(get_args(Record))


class RecorderClosedError(RuntimeError):
    """The recorder's :func:`open_recorder` block has exited: nothing more can be recorded."""


@dataclass(eq=False, slots=True)
class _Flush:
    """A marker in the channel: set ``done`` once everything queued before it is written."""

    done: trio.Event = field(default_factory=trio.Event)
    written: bool = False


_Item: TypeAlias = Record | _Flush


@dataclass(slots=True)
class RecorderStats:
    """Counters of a recorder, for metrics and tests. Only the recorder updates them."""

    submitted: int = 0
    """Records accepted by ``record()`` (including those still waiting for room)."""
    written: int = 0
    """Records written to the store."""
    batches: int = 0
    """Successful batch writes."""
    failures: int = 0
    """Failed batch writes (each retry that fails counts)."""
    waits: int = 0
    """``record()`` calls that found the channel full and had to wait."""
    spilled: int = 0
    """Records appended to the journal because the store failed."""
    replayed: int = 0
    """Records replayed from the journal into the store (also those an earlier process
    spilled)."""
    journal_pending: bool = False
    """The journal holds records not yet in the store (``/readyz``: spilling to journal)."""
    journal_records: int = 0
    """Records in the journal waiting to be replayed (the backlog of an outage)."""
    journal_bytes: int = 0
    """Bytes of the journal's segments waiting to be replayed."""

    @property
    def queued(self) -> int:
        """Records submitted but neither written to the store nor spilled to the journal."""
        return self.submitted - self.written - self.spilled


class Recorder:
    """Accepts records for writing; made by :func:`open_recorder`, valid inside its block."""

    def __init__(
        self,
        store: Store,
        send: trio.MemorySendChannel[_Item],
        receive: trio.MemoryReceiveChannel[_Item],
        batch_size: int,
        linger: float = LINGER,
        journal: Journal | None = None,
    ) -> None:
        self.stats = RecorderStats()
        self._journal = journal
        if journal is not None:
            self._note_journal(journal)
        # With a journal: when the store may be tried again, and the wait after the next
        # failure (the backoff lives here, across batches, since batches no longer wait).
        self._retry_at = -float("inf")
        self._delay = BACKOFF_MIN
        self._linger = linger
        self._store = store
        self._deferred = store if isinstance(store, DeferredStore) else None
        self._send = send
        self._receive = receive
        self._batch_size = batch_size
        # The batch being written: kept here, not in the writer's frame, so that the
        # drain finds it when the writer was cancelled between two attempts.
        self._batch: list[Record] = []
        self._flushes: list[_Flush] = []
        self._failures_in_a_row = 0
        self._closed = False
        self._limiter = trio.CapacityLimiter(1)

    async def record(self, record: Record) -> None:
        """Queue *record* for writing.

        Returns at once unless the channel is full; then it waits for room (the gateway
        slows down rather than losing records). If cancelled while waiting, the record
        was not queued. Raises :class:`RecorderClosedError` once the recorder has closed,
        and TypeError for anything that is not a record.
        """
        if type(record) not in _RECORD_TYPES:
            names = ", ".join(sorted(kind.__name__ for kind in _RECORD_TYPES))
            raise TypeError(
                f"Recorder.record() takes a record ({names}), not a {type(record).__name__}"
            )
        self._check_open()
        self.stats.submitted += 1  # before the send, so that written <= submitted always
        try:
            try:
                self._send.send_nowait(record)
            except trio.WouldBlock:
                self.stats.waits += 1
                await self._send.send(record)
        except BaseException as exc:
            self.stats.submitted -= 1
            if isinstance(exc, trio.ClosedResourceError):
                raise self._closed_error() from None
            raise

    async def flush(self) -> None:
        """Wait until every record submitted before this call is written.

        While the store fails this waits (the writes are being retried), unless the
        recorder has a journal: then "written" means in the store or in the journal.
        Raises :class:`RecorderClosedError` if the recorder closes before they are written.
        """
        self._check_open()
        marker = _Flush()
        try:
            await self._send.send(marker)
        except trio.ClosedResourceError:
            raise self._closed_error() from None
        await marker.done.wait()
        if not marker.written:
            raise RecorderClosedError(
                "the recorder closed before the records queued ahead of flush() were written"
                " (the drain timed out; their count is in the 'bridge.recording' error log)"
            )

    def ready(self) -> bool:
        """False after :data:`NOT_READY_AFTER` failed writes in a row, until a write
        succeeds: the gateway is up but its records are piling up in memory (or, with a
        journal, on disk: ``stats.journal_pending`` tells which). False too while the store
        could not be opened yet (see :class:`~bridge.recording.deferred.DeferredStore`)."""
        return not self._closed and self._failures_in_a_row < NOT_READY_AFTER and self._store_open()

    def _store_open(self) -> bool:
        return self._deferred is None or self._deferred.store is not None

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    @staticmethod
    def _closed_error() -> RecorderClosedError:
        return RecorderClosedError(
            "the recorder is closed: its `async with open_recorder(...)` block has exited;"
            " record only from tasks that end before that block does"
        )

    # -- the writer -----------------------------------------------------------------------

    async def _write_forever(self) -> None:
        """The writer task: batch whatever is queued and write it, until cancelled."""
        while True:
            if not self._batch and not self._flushes:
                item = await self._next_item()
                if item is None:
                    continue
                self._take(item)
            self._fill()
            await self._gather()
            await self._write_with_retry()

    async def _next_item(self) -> _Item | None:
        """Wait for the next record or flush. While the journal holds records or the store
        is not open yet, replay (opening the store first) whenever the backoff allows, even
        with nothing new to write (None: try again)."""
        if self._journal is None or self._idle():
            return await self._receive.receive()
        if trio.current_time() >= self._retry_at:
            await self._replay()
        if self._idle():
            return await self._receive.receive()
        with trio.move_on_at(self._retry_at):
            return await self._receive.receive()
        return None

    def _idle(self) -> bool:
        """Nothing to do but wait for records: no journal to replay, no store to open."""
        return not (self._journal is not None and self._journal.pending()) and self._store_open()

    async def _gather(self) -> None:
        """Wait up to the linger time for more records, unless a flush is waiting."""
        with trio.move_on_after(self._linger):
            while len(self._batch) < self._batch_size and not self._flushes:
                try:
                    self._take(await self._receive.receive())
                except trio.EndOfChannel:
                    return

    def _take(self, item: _Item) -> None:
        if isinstance(item, _Flush):
            self._flushes.append(item)
        else:
            self._batch.append(item)

    def _fill(self) -> None:
        """Add what is queued to the batch, without waiting, up to the batch size."""
        while len(self._batch) < self._batch_size:
            try:
                item = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._take(item)

    async def _write_with_retry(self, *, draining: bool = False) -> None:
        """Write the batch, retrying with backoff until it is written (or cancelled, in
        which case the batch stays for the drain), then release the flushes behind it."""
        if self._journal is not None:
            await self._write_or_spill(self._journal, draining=draining)
            return
        delay = BACKOFF_MIN
        while self._batch:
            try:
                await trio.to_thread.run_sync(
                    self._store.write_batch, self._batch, limiter=self._limiter
                )
            except Exception as exc:
                self.stats.failures += 1
                self._failures_in_a_row += 1
                logger.error(
                    "writing %d records failed (%d failure(s) in a row): %s; retrying in %.1f s",
                    len(self._batch),
                    self._failures_in_a_row,
                    exc,
                    delay,
                    # The traceback once per outage, not every few seconds.
                    exc_info=self._failures_in_a_row == 1,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            else:
                if self._failures_in_a_row:
                    logger.warning(
                        "writing records works again after %d failure(s)", self._failures_in_a_row
                    )
                self._failures_in_a_row = 0
                self.stats.written += len(self._batch)
                self.stats.batches += 1
                self._batch = []
        self._release_flushes()

    def _release_flushes(self) -> None:
        for marker in self._flushes:
            marker.written = True
            marker.done.set()
        self._flushes = []

    async def _write_or_spill(self, journal: Journal, *, draining: bool) -> None:
        """Write the batch to the store if it may be tried (backoff expired) and, first,
        replay the journal; else, or if that fails, append the batch to the journal. Only
        when the journal fails too does this wait and try again."""
        journal_delay = BACKOFF_MIN
        while self._batch:
            # While draining, older records still in the journal keep the batch out of the
            # store: a replay could outlast the drain timeout, the next start replays. So
            # does a store never opened: connecting could take as long.
            if trio.current_time() >= self._retry_at and not (draining and not self._idle()):
                if journal.pending():
                    await self._replay()
                if not journal.pending() and await self._try_store():
                    break
            try:
                await trio.to_thread.run_sync(journal.append, self._batch, limiter=self._limiter)
            except Exception as exc:
                logger.error(
                    "appending %d records to the journal in %s failed too: %s;"
                    " keeping them in memory and retrying in %.1f s",
                    len(self._batch),
                    journal.directory,
                    exc,
                    journal_delay,
                    exc_info=journal_delay == BACKOFF_MIN,
                )
                await trio.sleep(journal_delay)
                journal_delay = min(journal_delay * 2, BACKOFF_MAX)
                continue
            if not self.stats.journal_pending:
                logger.warning(
                    "the store is failing: spilling records to the journal in %s until it is back",
                    journal.directory,
                )
            self._note_journal(journal)
            self.stats.spilled += len(self._batch)
            self._batch = []
        self._release_flushes()

    async def _try_store(self) -> bool:
        """Write the batch to the store once; on failure, start or extend the backoff."""
        try:
            await trio.to_thread.run_sync(
                self._store.write_batch, self._batch, limiter=self._limiter
            )
        except Exception as exc:
            self._store_failed(exc, len(self._batch))
            return False
        self._store_works()
        self.stats.written += len(self._batch)
        self.stats.batches += 1
        self._batch = []
        return True

    async def _replay(self) -> None:
        """Replay the journal into the store, opening the store first if it is deferred and
        not open yet; on failure, start or extend the backoff."""
        assert self._journal is not None
        journal = self._journal
        before = len(journal.segments())
        deferred = self._deferred
        opening = not self._store_open()

        def replay() -> int:
            if deferred is not None:
                deferred.open()
            return journal.replay(self._store.write_batch, self._batch_size)

        try:
            replayed = await trio.to_thread.run_sync(replay, limiter=self._limiter)
        except Exception as exc:
            self._store_failed(exc, None, opening=opening and not self._store_open())
        else:
            if opening:
                logger.warning("the recording store is open: recording to it from now on")
            self._store_works()
            self.stats.replayed += replayed
            if before:
                logger.info(
                    "replayed %d records (%d journal segment(s)) from %s into the store",
                    replayed,
                    before,
                    journal.directory,
                )
        self._note_journal(journal)

    def _note_journal(self, journal: Journal) -> None:
        """Copy the journal's backlog into the stats (after every append and replay)."""
        self.stats.journal_pending = journal.pending()
        self.stats.journal_records, self.stats.journal_bytes = journal.backlog()

    def _store_failed(self, exc: Exception, count: int | None, *, opening: bool = False) -> None:
        self.stats.failures += 1
        self._failures_in_a_row += 1
        if opening:
            what = "opening the store"
        else:
            what = "replaying the journal" if count is None else f"writing {count} records"
        logger.error(
            "%s failed (%d failure(s) in a row): %s; trying the store again in %.1f s",
            what,
            self._failures_in_a_row,
            exc,
            self._delay,
            exc_info=self._failures_in_a_row == 1,
        )
        self._retry_at = trio.current_time() + self._delay
        self._delay = min(self._delay * 2, BACKOFF_MAX)

    def _store_works(self) -> None:
        if self._failures_in_a_row:
            logger.warning(
                "writing records works again after %d failure(s)", self._failures_in_a_row
            )
        self._failures_in_a_row = 0
        self._retry_at = -float("inf")
        self._delay = BACKOFF_MIN

    async def _drain(self) -> None:
        """Write everything still queued. Run by open_recorder's exit, shielded."""
        self._send.close()  # a task still waiting in record() gets RecorderClosedError
        while True:
            self._fill()
            if not self._batch and not self._flushes:
                return
            await self._write_with_retry(draining=True)

    def _unwritten(self) -> int:
        """After the drain: how many records are left unwritten (the batch it was retrying
        plus anything still queued). Releases waiting flushes, which then raise."""
        while True:
            try:
                item = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._take(item)
        for marker in self._flushes:
            marker.done.set()  # not written: flush() raises
        self._flushes = []
        return len(self._batch)


@asynccontextmanager
async def open_recorder(
    store: Store,
    *,
    queue_size: int = QUEUE_SIZE,
    batch_size: int = BATCH_SIZE,
    drain_timeout: float = DRAIN_TIMEOUT,
    linger: float = LINGER,
    journal: Journal | None = None,
) -> AsyncIterator[Recorder]:
    """Run a recorder writing to *store* for the duration of the block.

    The block owns the writer task. On exit, even when the enclosing scope is
    cancelled, what is queued is written within *drain_timeout* seconds (shielded from
    the cancellation), then *store* is closed. Records still unwritten at that deadline
    are lost, and counted in an ERROR log line of the ``bridge.recording`` logger.

    With a *journal*, batches the store refuses are appended to it and replayed once the
    store is back (see the module docstring); the drain falls back to it as well, and a
    journal left with records is replayed by the next recorder that opens it. The journal
    is closed on exit, after the store.
    """
    if queue_size < 0:
        raise ValueError(f"queue_size must be >= 0, got {queue_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not drain_timeout >= 0:  # written so that NaN fails too
        raise ValueError(f"drain_timeout must be a number of seconds >= 0, got {drain_timeout}")
    send, receive = trio.open_memory_channel[_Item](queue_size)
    if not linger >= 0:
        raise ValueError(f"linger must be a number of seconds >= 0, got {linger}")
    recorder = Recorder(store, send, receive, batch_size, linger, journal)
    try:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(recorder._write_forever)
                try:
                    yield recorder
                finally:
                    recorder._closed = True
                    nursery.cancel_scope.cancel(reason="the recorder is closing")
        except BaseExceptionGroup as group:
            # The writer never raises, so a group holds the block's own exception: give
            # it back unwrapped, as the block raised it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        with trio.move_on_after(drain_timeout, shield=True):
            await recorder._drain()
        unwritten = recorder._unwritten()
        if unwritten:
            logger.error(
                "%d records were not written: the store did not accept them within the"
                " drain timeout (%.1f s)",
                unwritten,
                drain_timeout,
            )
        store.close()
        if journal is not None:
            journal.close()
