"""Tests of bridge.recording: the stores, the recorder, usage reports and store URLs.

Every store rule is checked on each store: SQLite, PostgreSQL (a real server, see
tests/postgres.py) and memory. Rules: no sleeping in real time (virtual time with
``autojump_clock`` where the code waits, events and ``wait_all_tasks_blocked`` otherwise);
SQLite files live in ``tmp_path``; each PostgreSQL database is a schema of its own per test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge.protocol.usage import TOKEN_COUNTERS, TokenCounts
from bridge.recording import (
    CredentialKind,
    InterceptionEnded,
    InterceptionStarted,
    MemoryStore,
    ModelThought,
    Outcome,
    PassthroughCall,
    PromptUsage,
    Record,
    RecorderClosedError,
    SQLiteStore,
    Store,
    StoreError,
    TokenUsage,
    ToolUsage,
    UsageRow,
    open_recorder,
    open_store,
)
from bridge.recording.recorder import NOT_READY_AFTER
from bridge.recording.records import new_id
from bridge.recording.sql import SQLStore, iso_timestamp
from bridge.recording.store import mask_url

from ..conftest import rows
from ..postgres import SQLDatabase, new_sql_database

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def started(
    user: str = "alice",
    model: str = "claude-sonnet",
    *,
    at: dt.datetime = T0,
    **fields: Any,
) -> InterceptionStarted:
    values: dict[str, Any] = {
        "id": new_id(),
        "initiator_id": user,
        "provider": "anthropic",
        "provider_name": "anthropic",
        "model": model,
        "streaming": True,
        "client": "claude-code",
        "user_agent": "claude-cli/1.0",
        "credential_kind": CredentialKind.CENTRALIZED,
        "credential_hint": "sk-a...xyz",
        "started_at": at,
    }
    values.update(fields)
    return InterceptionStarted(**values)


def whole_interception(user: str = "alice", **fields: Any) -> list[Record]:
    """A start, one record of every kind, and a completed end."""
    start = started(user, **fields)
    return [
        start,
        TokenUsage(start.id, "msg_1", input=10, output=5, cache_read=3, cache_write=2),
        PromptUsage(start.id, "msg_1", prompt="hello"),
        ToolUsage(start.id, "msg_1", tool="read_file", tool_call_id="call_1", input={"p": 1}),
        ModelThought(start.id, content="thinking...", source="thinking"),
        InterceptionEnded(start.id, Outcome.COMPLETED),
    ]


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore | MemoryStore]:
    """Each store kind, so that all are held to the same rules."""
    kind = request.param
    made = MemoryStore() if kind == "memory" else new_sql_database(kind, request, tmp_path).open()
    yield made
    made.close()


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row as SQLite gives it: timestamps as ISO text, booleans as 0 or 1."""
    return {
        name: iso_timestamp(value)
        if isinstance(value, dt.datetime)
        else int(value)
        if isinstance(value, bool)
        else value
        for name, value in row.items()
    }


def outcomes(store: SQLStore | MemoryStore) -> dict[str, tuple[str | None, str | None]]:
    """Interception id -> (outcome, error), from any store."""
    return {row["id"]: (row["outcome"], row["error"]) for row in store.interceptions()}


def counts(store: SQLStore | MemoryStore) -> tuple[int, int, int, int, int]:
    return (
        len(store.interceptions()),
        len(store.token_usages()),
        len(store.prompts()),
        len(store.tool_usages()),
        len(store.model_thoughts()),
    )


class SpyStore:
    """A MemoryStore that remembers the size of each batch, and can fail or block."""

    def __init__(self, *, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.inner = MemoryStore()
        self.batch_sizes: list[int] = []
        self.failures_left = failures
        self.gate = gate
        self.closed = False

    def write_batch(self, records: Sequence[Record]) -> None:
        if self.gate is not None and not self.gate.wait(timeout=10):
            raise TimeoutError("the test never opened the gate")
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("disk full (test)")
        self.inner.write_batch(records)
        self.batch_sizes.append(len(records))

    def check(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


# -- the stores -------------------------------------------------------------------------


async def test_records_round_trip_through_the_recorder_into_sql(sql_database: SQLDatabase) -> None:
    store = sql_database.open()
    east = dt.timezone(dt.timedelta(hours=2))
    start = started(
        metadata={"team": "платформа", "n": 1},
        session_id="s1",
        at=dt.datetime(2025, 1, 2, 5, 4, 5, 123, tzinfo=east),
    )
    records: list[Record] = [
        start,
        TokenUsage(start.id, "msg_1", 10, 5, 3, 2, 1, 1, 7, 1, extra={"x": 4}, created_at=T0),
        PromptUsage(start.id, "msg_1", "hello"),
        ToolUsage(start.id, "msg_1", "read_file", "call_1", {"p": [1, 2]}, injected=True),
        ModelThought(start.id, "hmm", "thinking"),
        InterceptionEnded(start.id, Outcome.FAILED, error="upstream 529", ended_at=T0),
    ]
    async with open_recorder(store) as recorder:
        for record in records:
            await recorder.record(record)

    with sql_database.open() as reopened:
        (row,) = reopened.interceptions()
        assert plain(row) == {
            "id": start.id,
            "initiator_id": "alice",
            "provider": "anthropic",
            "provider_name": "anthropic",
            "model": "claude-sonnet",
            "streaming": 1,
            "client": "claude-code",
            "user_agent": "claude-cli/1.0",
            "credential_kind": "centralized",
            "credential_hint": "sk-a...xyz",
            "session_id": "s1",
            "correlating_tool_call_id": None,
            "metadata": '{"team":"платформа","n":1}',
            "started_at": "2025-01-02T03:04:05.000123+00:00",
            "ended_at": "2025-01-02T03:04:05.000000+00:00",
            "outcome": "failed",
            "error": "upstream 529",
        }
        (tokens,) = map(plain, reopened.token_usages(start.id))
        assert tokens["input"] == 10
        assert tokens["web_search_requests"] == 1
        assert json.loads(tokens["extra"]) == {"x": 4}
        assert tokens["created_at"] == "2025-01-02T03:04:05.000000+00:00"
        assert [p["prompt"] for p in reopened.prompts(start.id)] == ["hello"]
        (tool,) = reopened.tool_usages(start.id)
        assert (json.loads(tool["input"]), tool["injected"]) == ({"p": [1, 2]}, 1)
        assert [(t["content"], t["source"]) for t in reopened.model_thoughts()] == [
            ("hmm", "thinking")
        ]
        assert reopened.token_usages("another-interception") == []


def test_a_token_record_has_the_shared_counters_as_its_fields_in_order() -> None:
    """TokenUsage spells the counters out (they are its columns); they must be TokenCounts'."""
    names = tuple(f.name for f in dataclasses.fields(TokenUsage))
    assert names[2 : 2 + len(TOKEN_COUNTERS) + 1] == (*TOKEN_COUNTERS, "extra")
    counts = TokenCounts(1, 2, 3, 4, 5, 6, 7, 8, extra={"x": 9})
    assert TokenUsage.of("ix", "r", counts).counts == counts


async def test_records_round_trip_through_the_recorder_into_memory() -> None:
    store = MemoryStore()
    records = whole_interception()
    async with open_recorder(store) as recorder:
        for record in records:
            await recorder.record(record)
    start, tokens, prompt, tool, thought, end = records
    assert isinstance(start, InterceptionStarted)
    assert isinstance(end, InterceptionEnded)
    assert store.interceptions() == rows([start], [end])
    assert store.token_usages() == rows([tokens])
    assert store.prompts() == rows([prompt])
    assert store.tool_usages() == rows([tool])
    assert store.model_thoughts() == rows([thought])
    assert store.closed


def test_every_store_reads_back_the_same_rows(store: SQLStore | MemoryStore) -> None:
    """One reader API: the same methods, the same rows (up to the driver's value types)."""
    records = whole_interception()
    start, tokens, prompt, tool, thought, end = records
    assert isinstance(end, InterceptionEnded)
    call = passthrough_call()
    store.write_batch([*records, call])
    assert [plain(row) for row in store.interceptions()] == rows([start], [end])
    assert [plain(row) for row in store.token_usages(start.id)] == rows([tokens])
    assert [plain(row) for row in store.prompts(start.id)] == rows([prompt])
    assert [plain(row) for row in store.tool_usages(start.id)] == rows([tool])
    assert [plain(row) for row in store.model_thoughts(start.id)] == rows([thought])
    assert [plain(row) for row in store.passthrough_calls()] == rows([call])
    assert store.token_usages("another-interception") == []


def test_writing_a_batch_twice_records_it_once(store: SQLStore | MemoryStore) -> None:
    records = whole_interception()
    store.write_batch(records)
    store.write_batch(records)
    store.write_batch(records[1:3])
    assert counts(store) == (1, 1, 1, 1, 1)


def test_the_first_interception_end_wins(store: SQLStore | MemoryStore) -> None:
    first, second = started(), started()
    store.write_batch(
        [
            first,
            second,
            InterceptionEnded(first.id, Outcome.CLIENT_DISCONNECTED),
            InterceptionEnded(first.id, Outcome.COMPLETED),  # same batch: too late
        ]
    )
    store.write_batch([InterceptionEnded(second.id, Outcome.FAILED, error="boom")])
    store.write_batch([InterceptionEnded(second.id, Outcome.COMPLETED)])  # later batch
    assert outcomes(store) == {
        first.id: ("client_disconnected", None),
        second.id: ("failed", "boom"),
    }


def test_an_end_in_the_same_batch_as_its_start_is_applied(
    store: SQLStore | MemoryStore,
) -> None:
    start = started()
    # The end comes first in the batch; the store still applies the start first.
    store.write_batch([InterceptionEnded(start.id, Outcome.REJECTED), start])
    assert outcomes(store) == {start.id: ("rejected", None)}


def test_text_no_database_can_encode_is_still_recorded(store: SQLStore | MemoryStore) -> None:
    """A lone surrogate (what json.loads makes of a client's "\\ud800") cannot be written
    as UTF-8: the batch is written with U+FFFD in its place rather than refused forever."""
    start = started(user="mallory\ud800")
    store.write_batch([start, PromptUsage(start.id, "r", "half a pair: \udcff")])
    assert counts(store) == (1, 0, 1, 0, 0)
    assert [row.group["user"] for row in store.usage()] in (["mallory\ufffd"], ["mallory\ud800"])


def test_a_batch_with_a_non_record_writes_nothing(store: SQLStore | MemoryStore) -> None:
    with pytest.raises(TypeError, match=r"^cannot record a str: a record is one of "):
        store.write_batch([started(), "not a record"])  # type: ignore[list-item]
    assert counts(store) == (0, 0, 0, 0, 0)


def passthrough_call(**fields: Any) -> PassthroughCall:
    values: dict[str, Any] = {
        "initiator_id": "alice",
        "provider": "openai",
        "provider_name": "openai",
        "method": "DELETE",
        "path": "/openai/v1/responses/resp_1",
        "status": 405,
        "duration_ms": 3,
        "credential_kind": CredentialKind.CENTRALIZED,
        "credential_hint": "sk-o...654",
        "started_at": T0,
    }
    values.update(fields)
    return PassthroughCall(**values)


def passthrough_rows(store: SQLStore | MemoryStore) -> list[dict[str, Any]]:
    """Every passthrough call a store holds, as SQLite rows look, oldest first."""
    return [plain(row) for row in store.passthrough_calls()]


def test_passthrough_calls_are_recorded_once_with_every_field(
    store: SQLStore | MemoryStore,
) -> None:
    refused = passthrough_call()
    # A client that left before any answer has no status; a copilot call without a
    # token went upstream with no credential at all.
    gone = passthrough_call(
        initiator_id="bob",
        provider="copilot",
        provider_name="copilot-business",
        method="GET",
        path="/copilot-business/.well-known/oauth-protected-resource",
        status=None,
        duration_ms=1234,
        credential_kind=None,
        credential_hint="",
        started_at=T0 + dt.timedelta(seconds=1),
    )
    store.write_batch([refused, *whole_interception(), gone])
    store.write_batch([gone, refused])  # a replayed batch adds nothing
    assert passthrough_rows(store) == [
        {
            "id": refused.id,
            "initiator_id": "alice",
            "provider": "openai",
            "provider_name": "openai",
            "method": "DELETE",
            "path": "/openai/v1/responses/resp_1",
            "status": 405,
            "duration_ms": 3,
            "credential_kind": "centralized",
            "credential_hint": "sk-o...654",
            "started_at": "2025-01-02T03:04:05.000000+00:00",
        },
        {
            "id": gone.id,
            "initiator_id": "bob",
            "provider": "copilot",
            "provider_name": "copilot-business",
            "method": "GET",
            "path": "/copilot-business/.well-known/oauth-protected-resource",
            "status": None,
            "duration_ms": 1234,
            "credential_kind": None,
            "credential_hint": "",
            "started_at": "2025-01-02T03:04:06.000000+00:00",
        },
    ]
    # Passthrough calls are not interceptions: the usage report does not count them.
    assert counts(store) == (1, 1, 1, 1, 1)
    assert [row.interceptions for row in store.usage()] == [1]


async def test_passthrough_calls_go_through_the_recorder(store: SQLStore | MemoryStore) -> None:
    calls = [
        passthrough_call(
            path=f"/openai/v1/models/m{n}", status=200, started_at=T0 + dt.timedelta(seconds=n)
        )
        for n in range(3)
    ]
    async with open_recorder(store) as recorder:
        for call in calls:
            await recorder.record(call)
        await recorder.flush()
        assert [row["path"] for row in passthrough_rows(store)] == [
            "/openai/v1/models/m0",
            "/openai/v1/models/m1",
            "/openai/v1/models/m2",
        ]


def test_a_database_of_the_previous_release_gains_the_passthrough_table(
    sql_database: SQLDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 (gateway keys, no passthrough calls) with data in it: the next open
    applies migration 3 only, and keeps what was there."""
    current = sql_database.module.MIGRATIONS
    monkeypatch.setattr(sql_database.module, "MIGRATIONS", current[:2])
    with sql_database.open() as store:
        store.write_batch(whole_interception())
    monkeypatch.setattr(sql_database.module, "MIGRATIONS", current)
    with sql_database.open() as store:
        assert store.schema_version() == 3
        store.check()
        call = passthrough_call()
        store.write_batch([call])
        assert [row["id"] for row in store.passthrough_calls()] == [call.id]
        assert counts(store) == (1, 1, 1, 1, 1)
    assert [version for version, _ in sql_database.schema_rows()] == [1, 2, 3]


def test_migrations_are_applied_once_and_reopening_keeps_data_and_version(
    sql_database: SQLDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = whole_interception()
    released = len(sql_database.module.MIGRATIONS)
    with sql_database.open() as store:
        assert store.schema_version() == released
        store.write_batch(records)
    applied = sql_database.schema_rows()
    assert [version for version, _ in applied] == list(range(1, released + 1))

    with sql_database.open() as store:
        assert sql_database.schema_rows() == applied
        assert counts(store) == (1, 1, 1, 1, 1)

    # A new release adds one more migration: only that one runs on the next open.
    monkeypatch.setattr(
        sql_database.module,
        "MIGRATIONS",
        (
            *sql_database.module.MIGRATIONS,
            "CREATE TABLE bridge_later (x INTEGER); CREATE INDEX"
            " bridge_later_x ON bridge_later (x)",
        ),
    )
    with sql_database.open() as store:
        assert store.schema_version() == released + 1
        store.check()
        assert counts(store) == (1, 1, 1, 1, 1)
    assert sql_database.schema_rows()[:released] == applied
    assert [version for version, _ in sql_database.schema_rows()] == list(range(1, released + 2))


def test_a_database_with_a_newer_schema_is_refused(
    sql_database: SQLDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = sql_database.module.MIGRATIONS
    monkeypatch.setattr(
        sql_database.module, "MIGRATIONS", (*current, "CREATE TABLE bridge_x (x INTEGER)")
    )
    sql_database.open().close()
    monkeypatch.setattr(sql_database.module, "MIGRATIONS", current)
    with pytest.raises(
        StoreError,
        match=rf"has schema version {len(current) + 1}, newer than this bridge knows"
        rf" \({len(current)}\)",
    ):
        sql_database.open()


@pytest.mark.parametrize(
    ("kind", "attempts", "openers"), [("sqlite", 20, 6), ("postgresql", 10, 4)]
)
def test_stores_opened_at_once_on_a_new_database_migrate_it_once(
    kind: str, attempts: int, openers: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Several stores (each its own connection, as separate processes would have) open a
    new database at the same moment: each migration is applied exactly once."""
    for _ in range(attempts):
        database = new_sql_database(kind, request, tmp_path)
        barrier = threading.Barrier(openers)
        errors: list[BaseException] = []

        def open_and_write(
            database: SQLDatabase = database,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                with database.open() as store:
                    store.write_batch(whole_interception())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write) for _ in range(openers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        released = list(range(1, len(database.module.MIGRATIONS) + 1))
        assert [version for version, _ in database.schema_rows()] == released
        with database.open() as store:
            assert store.schema_version() == len(released)
            assert counts(store) == (openers,) * 5


def test_a_sqlite_store_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "bridge.db"
    with pytest.raises(StoreError, match=r"check that its directory exists and is writable$"):
        SQLiteStore(path)


def test_a_closed_store_is_not_ready(sql_database: SQLDatabase) -> None:
    store = sql_database.open()
    store.check()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match=r"is closed$"):
        store.check()


# -- the recorder -----------------------------------------------------------------------


async def test_many_records_are_written_in_fewer_batches() -> None:
    store = SpyStore()
    async with open_recorder(store, batch_size=100) as recorder:
        for _ in range(250):
            await recorder.record(ModelThought(new_id(), "x", "thinking"))
        await recorder.flush()
        assert store.batch_sizes == [100, 100, 50]
        assert (recorder.stats.batches, recorder.stats.written) == (3, 250)
        assert recorder.stats.queued == 0


async def test_exit_writes_everything_still_queued() -> None:
    store = SpyStore()
    async with open_recorder(store, batch_size=7) as recorder:
        for _ in range(100):
            await recorder.record(ModelThought(new_id(), "x", "thinking"))
        assert recorder.stats.written < 100
    assert len(store.inner.model_thoughts()) == 100
    assert store.closed


async def test_cancelling_the_enclosing_scope_still_drains(tmp_path: Path) -> None:
    records = [r for _ in range(40) for r in whole_interception()]
    with trio.CancelScope() as scope:
        async with open_recorder(SQLiteStore(tmp_path / "bridge.db")) as recorder:
            for record in records:
                await recorder.record(record)
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with SQLiteStore(tmp_path / "bridge.db") as store:
        assert counts(store) == (40, 40, 40, 40, 40)
        assert {outcome for outcome, _ in outcomes(store).values()} == {"completed"}


async def test_an_error_in_the_block_propagates_unwrapped_after_the_drain() -> None:
    store = MemoryStore()

    async def fail_while_recording() -> None:
        async with open_recorder(store) as recorder:
            await recorder.record(started())
            raise KeyError("oops")

    with pytest.raises(KeyError, match="oops"):  # not an ExceptionGroup
        await fail_while_recording()
    assert len(store.interceptions()) == 1


async def test_a_store_that_fails_twice_then_succeeds_loses_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = SpyStore(failures=2)
    records = whole_interception()
    async with open_recorder(store) as recorder:
        began = trio.current_time()
        for record in records:
            await recorder.record(record)
        await recorder.flush()
        # Backoff: 0.1 s after the first failure, 0.2 s after the second.
        assert trio.current_time() - began == pytest.approx(0.3)
        assert (recorder.stats.failures, recorder.stats.written) == (2, len(records))
        assert recorder.ready()
    assert store.inner.interceptions() == rows([records[0]], [records[-1]])
    assert store.batch_sizes == [len(records)]
    failures = [
        r for r in caplog.records if r.name == "bridge.recording" and r.levelname == "ERROR"
    ]
    assert len(failures) == 2
    assert "disk full (test)" in failures[0].getMessage()


class FailureWatch(logging.Handler):
    """Sets ``logged[n]`` when the recorder logs its n-th failed write (in the trio thread,
    after its counters are updated): a way to wait for the n-th failure without polling."""

    def __init__(self, *counts: int) -> None:
        super().__init__(level=logging.ERROR)
        self.seen = 0
        self.logged = {count: trio.Event() for count in counts}

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        if self.seen in self.logged:
            self.logged[self.seen].set()


async def test_ready_is_false_after_repeated_failures_until_a_write_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = SpyStore(failures=1_000)
    watch = FailureWatch(NOT_READY_AFTER - 1, NOT_READY_AFTER)
    logger = logging.getLogger("bridge.recording")
    logger.addHandler(watch)
    try:
        async with open_recorder(store) as recorder:
            assert recorder.ready()
            await recorder.record(started())
            await watch.logged[NOT_READY_AFTER - 1].wait()
            assert recorder.ready()
            await watch.logged[NOT_READY_AFTER].wait()
            assert not recorder.ready()
            store.failures_left = 0
            await recorder.flush()
            assert recorder.ready()
            assert len(store.inner.interceptions()) == 1
    finally:
        logger.removeHandler(watch)


async def test_a_full_queue_makes_record_wait_but_not_drop() -> None:
    gate = threading.Event()
    store = SpyStore(gate=gate)
    thoughts = [ModelThought(new_id(), str(n), "thinking") for n in range(20)]
    try:
        async with open_recorder(store, queue_size=1, batch_size=4) as recorder:
            async with trio.open_nursery() as nursery:

                async def produce() -> None:
                    for thought in thoughts:
                        await recorder.record(thought)

                nursery.start_soon(produce)
                # The writer is stuck in the store and the queue is full: the producer waits.
                await trio.testing.wait_all_tasks_blocked()
                assert recorder.stats.waits >= 1
                assert recorder.stats.written == 0
                gate.set()
            await recorder.flush()
            assert recorder.stats.written == 20
    finally:
        gate.set()
    assert store.inner.model_thoughts() == rows(thoughts)  # all of them, in order
    assert max(store.batch_sizes) <= 4


async def test_the_drain_gives_up_at_its_deadline_and_logs_the_count(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = SpyStore(failures=1_000)
    async with open_recorder(store, drain_timeout=2.0) as recorder:
        for _ in range(3):
            await recorder.record(ModelThought(new_id(), "x", "thinking"))
    assert store.closed
    assert store.inner.model_thoughts() == []
    assert "3 records were not written" in caplog.records[-1].getMessage()
    assert caplog.records[-1].levelname == "ERROR"


async def test_record_and_flush_after_exit_raise_a_clear_error() -> None:
    async with open_recorder(MemoryStore()) as recorder:
        await recorder.flush()  # nothing queued: returns at once
    with pytest.raises(RecorderClosedError, match=r"^the recorder is closed: its `async with"):
        await recorder.record(started())
    with pytest.raises(RecorderClosedError, match=r"^the recorder is closed"):
        await recorder.flush()
    assert not recorder.ready()


async def test_recording_a_non_record_raises_at_once() -> None:
    async with open_recorder(MemoryStore()) as recorder:
        with pytest.raises(TypeError, match=r"^Recorder.record\(\) takes a record \("):
            await recorder.record({"id": "x"})  # type: ignore[arg-type]
        assert recorder.stats.submitted == 0


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("queue_size", -1, r"^queue_size must be >= 0, got -1$"),
        ("batch_size", 0, r"^batch_size must be >= 1, got 0$"),
        ("drain_timeout", float("nan"), r"^drain_timeout must be a number of seconds >= 0"),
    ],
)
async def test_open_recorder_rejects_bad_limits(keyword: str, value: float, message: str) -> None:
    limits: dict[str, Any] = {keyword: value}
    with pytest.raises(ValueError, match=message):
        async with open_recorder(MemoryStore(), **limits):
            pass  # pragma: no cover


# -- usage reports ----------------------------------------------------------------------


def usage_fixture(store: SQLStore | MemoryStore) -> None:
    """alice: 2 interceptions on sonnet (one failed), 1 on opus (rejected);
    bob: 1 on sonnet (client went away), started a day later."""
    a1, a2 = started("alice", "sonnet"), started("alice", "sonnet")
    a3 = started("alice", "opus")
    b1 = started("bob", "sonnet", at=T0 + dt.timedelta(days=1), client="codex")
    store.write_batch(
        [
            a1,
            a2,
            a3,
            b1,
            TokenUsage(a1.id, "r1", input=100, output=10, cache_read=1, reasoning=4),
            TokenUsage(a1.id, "r2", input=200, output=20, cache_write=2),
            TokenUsage(a2.id, "r3", input=1, output=1),
            TokenUsage(b1.id, "r4", input=7, output=3),
            ToolUsage(a1.id, "r1", "t", "c1", {}),
            ToolUsage(a1.id, "r2", "t", "c2", {}),
            ToolUsage(b1.id, "r4", "t", "c3", "not json"),
            InterceptionEnded(a1.id, Outcome.COMPLETED),
            InterceptionEnded(a2.id, Outcome.FAILED),
            InterceptionEnded(a3.id, Outcome.REJECTED),
            InterceptionEnded(b1.id, Outcome.CLIENT_DISCONNECTED),
        ]
    )


def test_usage_by_user(store: SQLStore | MemoryStore) -> None:
    usage_fixture(store)
    assert store.usage() == [
        UsageRow({"user": "alice"}, 3, 2, 301, 31, 1, 2, 4, 2),
        UsageRow({"user": "bob"}, 1, 0, 7, 3, 0, 0, 0, 1),
    ]


def test_usage_by_user_and_model(store: SQLStore | MemoryStore) -> None:
    usage_fixture(store)
    assert store.usage(by=("user", "model")) == [
        UsageRow({"user": "alice", "model": "opus"}, 1, 1, 0, 0, 0, 0, 0, 0),
        UsageRow({"user": "alice", "model": "sonnet"}, 2, 1, 301, 31, 1, 2, 4, 2),
        UsageRow({"user": "bob", "model": "sonnet"}, 1, 0, 7, 3, 0, 0, 0, 1),
    ]
    rows = store.usage(by=("model", "client"))
    assert [list(row.group.items()) for row in rows] == [
        [("model", "opus"), ("client", "claude-code")],
        [("model", "sonnet"), ("client", "claude-code")],
        [("model", "sonnet"), ("client", "codex")],
    ]


def test_usage_since_counts_interceptions_started_from_then(
    store: SQLStore | MemoryStore,
) -> None:
    usage_fixture(store)
    assert store.usage(since=T0 + dt.timedelta(hours=1), by="provider") == [
        UsageRow({"provider": "anthropic"}, 1, 0, 7, 3, 0, 0, 0, 1)
    ]
    # The same moment in another time zone, and a naive UTC datetime, mean the same.
    east = dt.timezone(dt.timedelta(hours=5))
    assert store.usage(since=(T0 + dt.timedelta(days=1)).astimezone(east)) == [
        UsageRow({"user": "bob"}, 1, 0, 7, 3, 0, 0, 0, 1)
    ]
    assert store.usage(since=dt.datetime(2030, 1, 1)) == []


def test_usage_without_grouping_gives_the_totals(store: SQLStore | MemoryStore) -> None:
    assert store.usage(by=()) == []
    usage_fixture(store)
    assert store.usage(by=()) == [UsageRow({}, 4, 2, 308, 34, 1, 2, 4, 3)]


def test_usage_by_key_metadata_with_the_cache_split_and_web_searches(
    store: SQLStore | MemoryStore,
) -> None:
    """``meta:team`` groups by what the users' keys carry; the report shows the 5 m / 1 h
    cache-write split and web searches, which are recorded."""
    platform = started("alice", metadata={"team": "platform", "env": "ci"})
    payments = started("bob", metadata={"team": "payments"})
    nobody = started("carol")
    store.write_batch(
        [
            platform,
            payments,
            nobody,
            TokenUsage(
                platform.id,
                "r1",
                input=10,
                output=1,
                cache_write=30,
                cache_write_5m=10,
                cache_write_1h=20,
                web_search_requests=2,
            ),
            TokenUsage(payments.id, "r2", input=5, output=1, cache_write=4, cache_write_5m=4),
            TokenUsage(nobody.id, "r3", input=1, output=1),
        ]
    )
    rows = store.usage(by=("meta:team",))
    assert rows == [
        UsageRow({"meta:team": ""}, 1, 0, 1, 1, 0, 0, 0, 0),
        UsageRow({"meta:team": "payments"}, 1, 0, 5, 1, 0, 4, 0, 0, cache_write_5m=4),
        UsageRow(
            {"meta:team": "platform"},
            1,
            0,
            10,
            1,
            0,
            30,
            0,
            0,
            cache_write_5m=10,
            cache_write_1h=20,
            web_search_requests=2,
        ),
    ]
    assert [row.group for row in store.usage(by=("meta:env", "user"))] == [
        {"meta:env": "", "user": "bob"},
        {"meta:env": "", "user": "carol"},
        {"meta:env": "ci", "user": "alice"},
    ]


@pytest.mark.parametrize(
    ("by", "message"),
    [
        (
            ("user", "team"),
            r"^cannot group usage by 'team': the allowed values are user, model,"
            r" client, provider and meta:KEY \(a key's metadata, e.g. meta:team\)$",
        ),
        (("meta:te'am",), r"^cannot group usage by \"meta:te'am\""),
        (("user", "user"), r"^cannot group usage by 'user' twice \(got by=\['user', 'user'\]\)$"),
    ],
)
def test_usage_by_an_invalid_grouping_raises(
    store: SQLStore | MemoryStore, by: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.usage(by=by)


# -- store URLs -------------------------------------------------------------------------


def test_open_store_accepts_relative_and_absolute_sqlite_paths_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///relative.db")
    assert isinstance(relative, SQLiteStore)
    relative.close()
    assert (tmp_path / "relative.db").exists()

    absolute_path = tmp_path / "sub" / "absolute.db"
    absolute_path.parent.mkdir()
    absolute = open_store(f"sqlite:///{absolute_path}")  # "sqlite:///" + "/tmp/..."
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == str(absolute_path)
    absolute.close()
    assert absolute_path.exists()

    memory: Store = open_store("memory://")
    assert isinstance(memory, MemoryStore)


@pytest.mark.parametrize(
    "url",
    ["mysql://root:hunter2@db/bridge", "bridge.db", "sqlite://", "sqlite:///", "memory://x"],
)
def test_open_store_names_a_bad_url_and_the_accepted_forms(url: str) -> None:
    with pytest.raises(StoreError, match=r"sqlite:///") as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)
    assert mask_url(url) in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:p/w@ss@host:5432/db", "postgresql://u:***@host:5432/db"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        (
            "postgresql://host/db?user=u&password=pw&x=1",
            "postgresql://host/db?user=u&password=***&x=1",
        ),
        ("u:pw@host", "u:***@host"),
        ("sqlite:///bridge.db", "sqlite:///bridge.db"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked
