"""Tests of the recording journal and of the recorder spilling to it while the store fails.

Rules: no sleeping in real time (``autojump_clock`` for the backoff); journals live in
``tmp_path``; the store is a MemoryStore behind a proxy that fails on demand.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from bridge.recording import (
    CredentialKind,
    InterceptionEnded,
    InterceptionStarted,
    Journal,
    MemoryStore,
    ModelThought,
    Outcome,
    PassthroughCall,
    PromptUsage,
    Record,
    TokenUsage,
    ToolUsage,
    UsageRow,
    open_recorder,
)
from bridge.recording.records import new_id

from ..conftest import rows

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


def every_kind() -> list[Record]:
    """One record of each type, with every field away from its default."""
    start = InterceptionStarted(
        id=new_id(),
        initiator_id="alice",
        provider="anthropic",
        provider_name="anthropic",
        model="claude-sonnet",
        streaming=True,
        client="claude-code",
        user_agent="claude-cli/1.0",
        credential_kind=CredentialKind.BYOK,
        credential_hint="sk-a...xyz",
        session_id="s1",
        correlating_tool_call_id="call_0",
        metadata={"team": "платформа", "n": [1, 2.5, None]},
        started_at=dt.datetime(2025, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    )
    return [
        start,
        TokenUsage(start.id, "msg_1", 10, 5, 3, 2, 1, 1, 7, 1, extra={"x": 4}, created_at=T0),
        PromptUsage(start.id, "msg_1", "hello\nworld", created_at=T0),
        ToolUsage(start.id, "msg_1", "read_file", "call_1", {"p": [1, {"q": "r"}]}, True, "u", "e"),
        ToolUsage(start.id, "msg_1", "raw", "call_2", "not json"),
        ModelThought(start.id, "hmm", "thinking", created_at=dt.datetime(2025, 1, 1)),  # naive
        InterceptionEnded(start.id, Outcome.CLIENT_DISCONNECTED, error="gone", ended_at=T0),
        PassthroughCall(
            "alice",
            "openai",
            "openai",
            "GET",
            "/openai/v1/models/gpt-5",
            200,
            12,
            CredentialKind.BYOK,
            "sk-c...456",
            started_at=T0,
        ),
        PassthroughCall("bob", "copilot", "copilot", "GET", "/copilot/mcp/", None, 0, None, ""),
    ]


def thoughts(count: int, start: int = 0) -> list[Record]:
    return [ModelThought(new_id(), str(n), "thinking") for n in range(start, start + count)]


def files(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def contents(records: Sequence[Record]) -> list[str]:
    return [r.content for r in records if isinstance(r, ModelThought)]


class FailingStore:
    """A MemoryStore that fails while ``down`` (or for its next ``failures`` writes), and
    counts every record it is handed, to check that nothing is written twice needlessly."""

    def __init__(self, *, failures: int = 0, down: bool = False) -> None:
        self.inner = MemoryStore()
        self.failures_left = failures
        self.down = down
        self.attempts = 0
        self.closed = False

    def write_batch(self, records: Sequence[Record]) -> None:
        self.attempts += 1
        if self.down or self.failures_left:
            self.failures_left = max(0, self.failures_left - 1)
            raise OSError("database unavailable (test)")
        self.inner.write_batch(records)

    def check(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def usage(
        self, *, since: dt.datetime | None = None, by: Sequence[str] = ("user",)
    ) -> list[UsageRow]:
        return self.inner.usage(since=since, by=by)


# -- the journal ------------------------------------------------------------------------


def test_every_record_type_round_trips_through_the_journal(tmp_path: Path) -> None:
    records = every_kind()
    journal = Journal(tmp_path)
    journal.append(records[:3])
    journal.append(records[3:])
    assert journal.pending()
    written: list[Record] = []
    assert journal.replay(written.extend, batch_size=100) == len(records)
    assert written == records
    assert [type(r) for r in written] == [type(r) for r in records]
    # Enums come back as enums, also where a field may be None (a StrEnum equals its text).
    kinds = [type(getattr(r, "credential_kind", None)) for r in written]
    assert kinds == [type(getattr(r, "credential_kind", None)) for r in records]
    assert not journal.pending()
    assert list(tmp_path.iterdir()) == []


def test_a_new_journal_finds_what_an_earlier_one_left(tmp_path: Path) -> None:
    records = every_kind()
    first = Journal(tmp_path)
    first.append(records)
    first.close()
    second = Journal(tmp_path)
    assert second.pending()
    second.append(thoughts(1))  # into a new segment, after the old one
    assert len(second.segments()) == 2
    written: list[Record] = []
    second.replay(written.extend, batch_size=3)
    assert written[: len(records)] == records
    assert contents(written[len(records) :]) == ["0"]


def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    records = thoughts(3)
    journal.append(records)
    journal.close()
    (segment,) = journal.segments()
    data = segment.read_bytes()
    segment.write_bytes(data[:-10])  # a crash cut the last line short
    written: list[Record] = []
    assert Journal(tmp_path).replay(written.extend, batch_size=10) == 2
    assert written == records[:2]
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "torn last line" in warning.getMessage()


def test_segments_roll_at_their_size_limit_without_splitting_a_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=400)
    batches = [thoughts(2, start=2 * n) for n in range(5)]  # about 200 bytes a batch
    for batch in batches:
        journal.append(batch)
    segments = journal.segments()
    assert len(segments) >= 3
    assert [p.name for p in segments] == sorted(p.name for p in tmp_path.iterdir())
    assert all(p.name.startswith("journal-") and p.name.endswith(".jsonl") for p in segments)
    assert all(len(p.read_bytes().splitlines()) % 2 == 0 for p in segments)
    written: list[Record] = []
    journal.replay(written.extend, batch_size=3)
    assert contents(written) == [str(n) for n in range(10)]


def test_replay_deletes_only_the_segments_it_wrote_and_a_failing_write_keeps_the_rest(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, segment_bytes=1)  # one segment per batch
    for n in range(3):
        journal.append(thoughts(2, start=2 * n))
    first, second, third = journal.segments()
    written: list[Record] = []

    def write(batch: Sequence[Record]) -> None:
        if contents(batch) == ["2", "3"]:
            raise OSError("database unavailable (test)")
        written.extend(batch)

    with pytest.raises(OSError, match="unavailable"):
        journal.replay(write, batch_size=2)
    assert contents(written) == ["0", "1"]
    assert not first.exists()
    assert second.exists()
    assert third.exists()
    assert journal.segments() == [second, third]

    written.clear()
    assert journal.replay(written.extend, batch_size=2) == 4
    assert contents(written) == ["2", "3", "4", "5"]
    assert not journal.pending()


def test_appends_after_a_replay_go_to_a_new_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(thoughts(1))
    (old,) = journal.segments()
    journal.replay(lambda batch: None, batch_size=10)
    journal.append(thoughts(1, start=1))
    (new,) = journal.segments()
    assert new.name > old.name
    assert not old.exists()


# -- the recorder with a journal --------------------------------------------------------
#
# The autojump clock jumps while the writer waits for a worker thread, so these tests wait
# for events (a replay logged, a flush), never for a duration.


class ReplayWatch(logging.Handler):
    """Sets ``done`` when the recorder logs a successful replay of the journal."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.done = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("replayed "):
            self.done.set()


@pytest.fixture
def replayed() -> Iterator[trio.Event]:
    watch = ReplayWatch()
    logger = logging.getLogger("bridge.recording")
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)
    try:
        yield watch.done
    finally:
        logger.removeHandler(watch)
        logger.setLevel(logging.NOTSET)


async def test_a_store_outage_loses_nothing_and_keeps_the_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, replayed: trio.Event
) -> None:
    store = FailingStore(failures=3)
    records = thoughts(40)
    async with open_recorder(store, journal=Journal(tmp_path), batch_size=4) as recorder:
        for record in records[:20]:
            await recorder.record(record)
        await recorder.flush()
        assert recorder.stats.spilled > 0
        assert recorder.stats.journal_pending
        for record in records[20:]:
            await recorder.record(record)
        await replayed.wait()  # after the backoff, the idle writer replays
        await recorder.flush()
        assert not recorder.stats.journal_pending
        assert recorder.ready()
        stats = recorder.stats
        assert stats.replayed == stats.spilled
        assert stats.written + stats.spilled == len(records)
        assert stats.queued == 0
    assert store.inner.model_thoughts() == rows(records)  # all, in order, once each
    assert files(tmp_path) == []


async def test_a_new_batch_after_recovery_waits_for_the_replay(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = FailingStore(down=True)
    async with open_recorder(store, journal=Journal(tmp_path), batch_size=2) as recorder:
        for record in thoughts(6):
            await recorder.record(record)
        await recorder.flush()
        assert recorder.stats.spilled == 6
        store.down = False
        await trio.sleep(10)
        await recorder.record(thoughts(1, start=6)[0])
        await recorder.flush()
        assert [row["content"] for row in store.inner.model_thoughts()] == [
            str(n) for n in range(7)
        ]


async def test_shutdown_during_an_outage_leaves_everything_in_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = FailingStore(down=True)
    records = thoughts(25)
    async with open_recorder(down, journal=Journal(tmp_path), batch_size=4) as recorder:
        for record in records:
            await recorder.record(record)
    assert down.closed
    assert down.inner.model_thoughts() == []
    assert recorder.stats.spilled == len(records)
    assert not [r for r in caplog.records if "were not written" in r.getMessage()]

    # The next process: the store is back; the new recorder replays before anything else.
    store = FailingStore()
    journal = Journal(tmp_path)
    assert journal.pending()
    async with open_recorder(store, journal=journal) as recorder:
        await recorder.record(thoughts(1, start=25)[0])
        await recorder.flush()
        assert recorder.stats.replayed == len(records)
    assert [row["content"] for row in store.inner.model_thoughts()] == [str(n) for n in range(26)]
    assert not journal.pending()


async def test_a_pending_journal_is_replayed_at_start_without_new_records(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, replayed: trio.Event
) -> None:
    records = every_kind()
    Journal(tmp_path).append(records)
    store = FailingStore(failures=1)
    async with open_recorder(store, journal=Journal(tmp_path)) as recorder:
        await replayed.wait()  # one failed replay, then the backoff, then a good one
        assert recorder.stats.replayed == len(records)
        assert recorder.stats.failures == 1
    (end,) = (r for r in records if isinstance(r, InterceptionEnded))
    assert store.inner.interceptions() == rows([records[0]], [end])
    assert store.inner.passthrough_calls() == rows(
        [r for r in records if isinstance(r, PassthroughCall)]
    )


async def test_record_never_waits_while_the_store_is_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = FailingStore(down=True)
    records = thoughts(200)
    async with open_recorder(
        store, journal=Journal(tmp_path), queue_size=2, batch_size=2
    ) as recorder:
        for start in range(0, len(records), 2):
            # Without a journal the writer would retry the first batch forever: the
            # second flush would never return and record() would wait for room.
            for record in records[start : start + 2]:
                await recorder.record(record)
            await recorder.flush()
        assert recorder.stats.waits == 0
        assert recorder.stats.failures >= 1
        assert recorder.stats.journal_pending
        store.down = False
    assert recorder.stats.waits == 0
    assert recorder.stats.spilled + recorder.stats.written == len(records)
    # What the drain could not replay is still journaled; a later replay completes it.
    Journal(tmp_path).replay(store.inner.write_batch, batch_size=50)
    assert store.inner.model_thoughts() == rows(records)


async def test_the_outage_is_logged_once_not_per_spilled_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailingStore(down=True)
    async with open_recorder(store, journal=Journal(tmp_path), batch_size=1) as recorder:
        for record in thoughts(30):
            await recorder.record(record)
        await recorder.flush()
    spilling = [r for r in caplog.records if "spilling records to the journal" in r.getMessage()]
    assert len(spilling) == 1
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert 1 <= len(failures) < 30
    assert store.attempts < 30  # batches during the backoff skipped the store
