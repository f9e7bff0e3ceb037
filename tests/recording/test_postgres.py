"""What only the PostgreSQL store has to show: URLs and masked errors, several gateways on one
database, a server restart under the store and under the recorder, the CLI and the gateway
on PostgreSQL. The rules every store shares are tested in test_recording and test_keys.

The server is the session's (see tests/postgres.py); the restart tests start one of their
own, so that stopping it disturbs no other test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from bridge import open_bridge
from bridge.config import Config, RecordingConfig
from bridge.mock.upstream import MockUpstream
from bridge.process.cli import main
from bridge.recording import (
    InterceptionEnded,
    Outcome,
    PromptUsage,
    Record,
    StoreError,
    TokenUsage,
    open_recorder,
    open_store,
)
from bridge.recording import recorder as recorder_module
from bridge.recording.deferred import DeferredStore
from bridge.recording.journal import Journal
from bridge.recording.postgres import PostgresStore
from bridge.recording.sqlite import SQLiteStore

from ..conftest import gateway_config, note, run_gateway
from ..core.test_faults import ReplayWatch
from ..postgres import Cluster, free_port, start_test_cluster
from ..recording.test_recording import counts, outcomes, started, usage_fixture, whole_interception

PASSWORD = "s3cr3t-Pa55word"


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of the test's own, which the test may stop and start."""
    cluster = start_test_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


# -- URLs and errors --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "POSTGRESQL"])
def test_open_store_opens_postgresql_urls(postgres_url: str, scheme: str) -> None:
    url = scheme + postgres_url.removeprefix("postgresql")
    with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        store.check()
        assert store.schema_version() >= 2


def test_a_driver_suffix_is_refused_with_the_fix() -> None:
    with pytest.raises(StoreError, match=r"drop the '\+driver' part") as caught:
        open_store(f"postgresql+psycopg://bridge:{PASSWORD}@127.0.0.1/bridge")
    assert PASSWORD not in str(caught.value)
    assert "postgresql+psycopg://bridge:***@127.0.0.1/bridge" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bridge:{pw}@127.0.0.1:{port}/bridge",
        "postgresql://bridge:{pw}@127.0.0.1:{port}/bridge?sslmode=bogus",
        "postgresql://bridge@127.0.0.1:{port}/bridge?password={pw}",
        "postgresql://bridge:{pw}@127.0.0.1:{port}/bridge?connect_timeout=2&no_such_option=1",
        "postgresql://bridge:{pw}@127.0.0.1:notaport/bridge",
        "postgresql://bridge:{pw}/@127.0.0.1:{port}/bridge",
    ],
)
def test_a_server_that_cannot_be_reached_says_so_without_the_password(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_store(url.format(pw=PASSWORD, port=free_port()))
    message = str(caught.value)
    assert PASSWORD not in message
    assert "***" in message
    assert message.startswith(("cannot connect to the PostgreSQL database", "invalid PostgreSQL"))


# -- a server that goes away ------------------------------------------------------------


def test_the_store_survives_a_server_restart(own_cluster: Cluster) -> None:
    with PostgresStore(own_cluster.url()) as store:
        first = whole_interception("alice")
        store.write_batch(first)

        own_cluster.stop()
        with pytest.raises(StoreError, match=r"^cannot connect to the PostgreSQL database"):
            store.write_batch(whole_interception("bob"))
        with pytest.raises(StoreError):
            store.check()

        own_cluster.start(port=own_cluster.port)
        # The connection the store held died with the server: the store connects again.
        second = whole_interception("carol")
        store.write_batch(second)
        store.check()
        store.write_batch(first)  # a retried batch is still recorded once
        assert counts(store) == (2, 2, 2, 2, 2)
        assert sorted(row["initiator_id"] for row in store.interceptions()) == ["alice", "carol"]


class SignallingStore(PostgresStore):
    """A PostgresStore that tells the test when a write has failed."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.failed = threading.Event()

    def write_batch(self, records: Sequence[Record]) -> None:
        try:
            super().write_batch(records)
        except StoreError:
            self.failed.set()
            raise


async def test_the_recorder_writes_what_came_while_the_server_was_down(
    own_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real time (the store works in threads), so retries come quickly: every 0.1 s at most.
    monkeypatch.setattr(recorder_module, "BACKOFF_MAX", recorder_module.BACKOFF_MIN)
    store = SignallingStore(own_cluster.url())
    before, during = whole_interception("alice"), whole_interception("bob")
    async with open_recorder(store) as recorder:
        for record in before:
            await recorder.record(record)
        await recorder.flush()
        await trio.to_thread.run_sync(own_cluster.stop)
        for record in during:
            await recorder.record(record)
        await trio.to_thread.run_sync(store.failed.wait, 30)
        await trio.to_thread.run_sync(partial(own_cluster.start, port=own_cluster.port))
        with trio.fail_after(30):
            await recorder.flush()
        assert recorder.stats.failures >= 1
        assert recorder.stats.written == len(before) + len(during)
    with PostgresStore(own_cluster.url()) as reader:
        assert counts(reader) == (2, 2, 2, 2, 2)
        assert set(outcomes(reader).values()) == {("completed", None)}


# -- several gateways on one database ---------------------------------------------------


async def test_two_gateways_record_into_one_database_without_duplicates(postgres_url: str) -> None:
    """Two recorders, each with its own store and connection, as two gateway processes
    have: each writes its own interceptions, and both write a shared batch (a journal
    replayed by both, say) whose end differs: one row each, the first end kept."""
    shared = started("shared")
    mine = {name: [whole_interception(name) for _ in range(40)] for name in ("one", "two")}

    async def gateway(name: str, end: Outcome) -> None:
        async with open_recorder(PostgresStore(postgres_url), batch_size=16) as recorder:
            for interception in mine[name]:
                for record in interception:
                    await recorder.record(record)
                await recorder.record(shared)
                await recorder.record(TokenUsage(shared.id, "r", input=1, id="shared-usage"))
            await recorder.record(InterceptionEnded(shared.id, end))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway, "one", Outcome.COMPLETED)
        nursery.start_soon(gateway, "two", Outcome.FAILED)

    with PostgresStore(postgres_url) as store:
        assert counts(store) == (81, 81, 80, 80, 80)
        assert outcomes(store)[shared.id] in (("completed", None), ("failed", None))
        rows = {row.group["user"]: row for row in store.usage()}
        assert (rows["one"].interceptions, rows["two"].interceptions) == (40, 40)
        assert rows["shared"].input == 1
        assert sum(row.input for row in rows.values()) == 80 * 10 + 1


def test_the_same_batch_written_by_two_stores_at_once_is_recorded_once(postgres_url: str) -> None:
    batch = [record for _ in range(50) for record in whole_interception()]
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def write(store: PostgresStore) -> None:
        barrier.wait()
        try:
            store.write_batch(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    with PostgresStore(postgres_url) as store:
        assert counts(store) == (50, 50, 50, 50, 50)


# -- text PostgreSQL cannot hold ----------------------------------------------------------


def test_text_with_nul_and_lone_surrogates_is_recorded_with_replacements(
    postgres_url: str,
) -> None:
    start = started(metadata={"note": "a\x00b"}, session_id="s\ud800")
    with PostgresStore(postgres_url) as store:
        store.write_batch([start, PromptUsage(start.id, "r", "nul\x00 and \udcff")])
        (row,) = store.interceptions()
        assert json.loads(row["metadata"]) == {"note": "a\x00b"}  # JSON escapes it: kept
        assert row["session_id"] == "s\ufffd"
        assert [p["prompt"] for p in store.prompts()] == ["nul\ufffd and \ufffd"]


# -- the CLI and the gateway on PostgreSQL ----------------------------------------------


def test_bridge_usage_reports_the_same_from_postgresql_as_from_sqlite(
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqlite_path = tmp_path / "usage.db"
    with SQLiteStore(sqlite_path) as lite, PostgresStore(postgres_url) as pg:
        usage_fixture(lite)
        usage_fixture(pg)
    monkeypatch.chdir(tmp_path)
    reports = {}
    for url in (f"sqlite:///{sqlite_path}", postgres_url):
        monkeypatch.setenv("BRIDGE_RECORDING_DATABASE", url)
        assert main(["usage", "--by", "user", "--by", "model", "--format", "json"]) == 0
        reports[url] = json.loads(capsys.readouterr().out)
    from_sqlite, from_postgres = reports.values()
    assert from_postgres == from_sqlite
    assert [(row["user"], row["model"], row["interceptions"]) for row in from_postgres] == [
        ("alice", "opus", 1),
        ("alice", "sonnet", 2),
        ("bob", "sonnet", 1),
    ]


async def test_a_gateway_records_into_postgresql(
    nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path, postgres_url: str
) -> None:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    config = dataclasses.replace(config, recording=RecordingConfig(database=postgres_url))
    bridge, url = await nursery.start(partial(run_gateway, config))
    import anthropic

    client = anthropic.AsyncAnthropic(
        base_url=f"{url}/anthropic", api_key="sk-ant-client-byok-key-abcdef", max_retries=0
    )
    message = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    with trio.fail_after(10):
        await bridge.wait_idle()
        await bridge.recorder.flush()
    assert isinstance(bridge.store, PostgresStore)
    (interception,) = bridge.store.interceptions()
    assert interception["id"] == message.id
    assert interception["outcome"] == "completed"
    assert interception["streaming"] is False
    (usage,) = bridge.store.token_usages(message.id)
    assert usage["output"] == message.usage.output_tokens


# -- a gateway started while PostgreSQL is down -----------------------------------------


@contextmanager
def watching_replays() -> Iterator[ReplayWatch]:
    watch = ReplayWatch()
    logger = logging.getLogger("bridge.recording")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


async def send_messages(client: httpx2.AsyncClient, url: str, count: int) -> list[str]:
    """*count* Anthropic requests, half of them streamed; the ids the gateway answered with
    (an interception's id is its message's id)."""
    ids: list[str] = []

    async def one(n: int) -> None:
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 5,
            "stream": n % 2 == 0,
            "messages": [{"role": "user", "content": f"hi {n}"}],
        }
        response = await client.post(f"{url}/anthropic/v1/messages", json=body)
        assert response.status_code == 200, response.text
        if n % 2:
            ids.append(response.json()["id"])
        else:
            start = next(line for line in response.text.splitlines() if '"message_start"' in line)
            ids.append(json.loads(start.removeprefix("data: "))["message"]["id"])

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, n)
    return ids


def journaled_config(tmp_path: Path, upstream_port: int, database: str) -> Config:
    config = gateway_config(tmp_path, upstream_port)
    recording = RecordingConfig(database=database, journal_dir=str(tmp_path / "journal"))
    return dataclasses.replace(config, recording=recording)


def assert_recorded_once(url: str, ids: Sequence[str]) -> None:
    """Every interception of *ids* is in the database exactly once, whole and ended."""
    with PostgresStore(url) as reader:
        rows = reader.interceptions()
        assert sorted(row["id"] for row in rows) == sorted(ids)
        assert all(row["ended_at"] is not None for row in rows)
        assert {row["outcome"] for row in rows} == {"completed"}
        assert sorted(u["interception_id"] for u in reader.token_usages()) == sorted(ids)


async def test_a_gateway_starts_while_postgresql_is_down_and_records_everything_once(
    nursery: trio.Nursery,
    mock: MockUpstream,
    tmp_path: Path,
    own_cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recorder_module, "BACKOFF_MAX", recorder_module.BACKOFF_MIN)
    await trio.to_thread.run_sync(own_cluster.stop)
    config = journaled_config(tmp_path, mock.port, own_cluster.url())  # type: ignore[attr-defined]
    with trio.fail_after(60), watching_replays() as watch:
        bridge, url = await nursery.start(partial(run_gateway, config))
        assert isinstance(bridge.store, DeferredStore)
        async with httpx2.AsyncClient(timeout=30) as client:
            ids = await send_messages(client, url, 20)
            await bridge.wait_idle()
            await bridge.recorder.flush()  # in the journal: the store is not open
            stats = bridge.recorder.stats
            assert stats.written == 0
            assert stats.spilled == stats.submitted == stats.journal_records > 0
            response = await client.get(f"{url}/readyz")
            assert response.status_code == 503
            check = response.json()["checks"]["recorder"]
            assert check["ok"] is False
            assert check["detail"] == "spilling to the journal"
            assert check["journal_records"] == stats.journal_records
            assert check["journal_bytes"] == stats.journal_bytes > 0
            usage = await client.get(f"{url}/api/v1/usage")
            assert usage.status_code != 200  # no report from a database not open

            await trio.to_thread.run_sync(partial(own_cluster.start, port=own_cluster.port))
            while bridge.recorder.stats.journal_pending:  # the writer opens it by itself
                await watch.replayed.wait()
            assert bridge.recorder.ready()
            assert (await client.get(f"{url}/readyz")).status_code == 200
            more = await send_messages(client, url, 4)  # straight to the store now
            await bridge.wait_idle()
            await bridge.recorder.flush()
    assert stats.replayed == stats.spilled
    assert stats.written == stats.submitted - stats.spilled
    assert_recorded_once(own_cluster.url(), ids + more)


async def test_without_a_journal_a_gateway_refuses_to_start_and_says_how_to(
    tmp_path: Path, mock: MockUpstream
) -> None:
    url = f"postgresql://bridge:{PASSWORD}@127.0.0.1:{free_port()}/bridge"
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    config = dataclasses.replace(config, recording=RecordingConfig(database=url))
    with pytest.raises(StoreError, match=r"set recording\.journal_dir") as caught:
        async with open_bridge(config):
            pass  # pragma: no cover - it does not open
    assert str(caught.value).startswith("cannot connect to the PostgreSQL database")
    assert PASSWORD not in str(caught.value)


async def test_postgresql_stopped_during_load_spills_then_replays_without_loss_or_duplicates(
    nursery: trio.Nursery,
    mock: MockUpstream,
    tmp_path: Path,
    own_cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fault suite's "database down during load", on PostgreSQL: the server stops while
    requests are under way and starts again later. Prints the replay rate."""
    monkeypatch.setattr(recorder_module, "BACKOFF_MAX", recorder_module.BACKOFF_MIN)
    replays: list[tuple[int, float]] = []
    real_replay = Journal.replay

    def timed_replay(journal: Journal, *args: Any, **kwargs: Any) -> int:
        started_at = time.perf_counter()
        replayed = real_replay(journal, *args, **kwargs)
        if replayed:
            replays.append((replayed, time.perf_counter() - started_at))
        return replayed

    monkeypatch.setattr(Journal, "replay", timed_replay)
    config = journaled_config(tmp_path, mock.port, own_cluster.url())  # type: ignore[attr-defined]
    ids: list[str] = []
    with trio.fail_after(60), watching_replays() as watch:
        bridge, url = await nursery.start(partial(run_gateway, config))
        async with httpx2.AsyncClient(timeout=30) as client:
            ids += await send_messages(client, url, 30)

            async def stop_under_load() -> None:
                await trio.to_thread.run_sync(own_cluster.stop)

            async def load() -> None:
                ids.extend(await send_messages(client, url, 120))

            async with trio.open_nursery() as both:
                both.start_soon(load)
                both.start_soon(stop_under_load)
            ids += await send_messages(client, url, 20)  # the server is down by now, surely
            await bridge.wait_idle()
            await bridge.recorder.flush()  # in the store or the journal
            stats = bridge.recorder.stats
            assert stats.spilled > 0
            assert stats.journal_pending
            await trio.to_thread.run_sync(partial(own_cluster.start, port=own_cluster.port))
            while bridge.recorder.stats.journal_pending:
                await watch.replayed.wait()
            ids += await send_messages(client, url, 10)
            await bridge.wait_idle()
            await bridge.recorder.flush()
    assert stats.replayed == stats.spilled
    assert stats.written + stats.spilled == stats.submitted
    assert_recorded_once(own_cluster.url(), ids)
    replayed, seconds = sum(n for n, _ in replays), sum(s for _, s in replays)
    note(
        f"PostgreSQL stopped during load: {len(ids)} requests, {stats.submitted} records,"
        f" {stats.written} written directly, {stats.spilled} spilled ({stats.failures} failed"
        f" attempts), {replayed} replayed in {seconds * 1000:.1f} ms:"
        f" {replayed / seconds:,.0f} records/s"
    )
