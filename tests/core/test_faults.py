"""The fault suite: the upstream, the clients, an MCP server and the database misbehave.

Loopback only; the mock upstream misbehaves on demand (``x-mock-fault``). After each
fault the suite checks the same things (:meth:`Rig.check`):

* no leak: the trio task count and this process's open file descriptors are back to
  where they were, and no upstream connection is left in the middle of an answer (idle
  keep-alive connections of the gateway's pool are allowed: each costs one task at the
  mock and one descriptor on each side, and is discounted);
* every interception has exactly one started and one ended record (counted as the store
  writes them), with the expected outcome;
* token totals recorded equal what the mock upstream actually sent;
* the gateway still serves a normal request.

Numbers (records written versus expected, RSS, replay rate) are printed: ``pytest -s``.
Nothing sleeps to synchronise: tests wait on events (the mock's counters, trio's
``wait_all_tasks_blocked`` for quiescence) under ``fail_after`` bounds.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
import trio.testing
from hypercorn.trio import serve as hypercorn_serve

from bridge import Bridge, Config, open_bridge
from bridge.config import MCPConfig, MCPServerConfig
from bridge.mock.upstream import FAULTS, FIXTURES_DIR, GARBAGE, MockUpstream, load_scenarios
from bridge.process.server import hypercorn_config
from bridge.recording.records import InterceptionEnded, InterceptionStarted, Record, TokenUsage
from bridge.recording.sqlite import SQLiteStore

from ..conftest import gateway_config, note

SCENARIOS = load_scenarios(FIXTURES_DIR)

# api -> (route, scenario)
APIS: dict[str, tuple[str, str]] = {
    "anthropic": ("/anthropic/v1/messages", "anthropic_text"),
    "chat": ("/openai/v1/chat/completions", "openai_chat_text"),
    "responses": ("/openai/v1/responses", "openai_responses_text"),
}


# --------------------------------------------------------------------------- the rig


class CountingStore:
    """A SQLite store that counts, per interception, the records it has written.

    The SQLite store keeps the first end of an interception and ignores later ones, so a
    second ended record would be invisible in the database: it is counted here.
    """

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.started: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.outcomes: dict[str, str] = {}
        self.errors: dict[str, str | None] = {}
        self.tokens: dict[str, tuple[int, int, int]] = {}
        self.user_agents: dict[str, str] = {}
        self.records = 0
        self.sequence: list[tuple[str, str]] = []
        """(record type, interception id) of every record written, in order."""
        self.writes: list[tuple[float, float, int]] = []
        """(start, end, records) of every successful batch write."""

    def write_batch(self, records: Sequence[Record]) -> None:
        started = time.perf_counter()
        self.inner.write_batch(records)
        self.writes.append((started, time.perf_counter(), len(records)))
        self.records += len(records)
        for record in records:
            self.sequence.append((type(record).__name__, _interception_of(record)))
            if isinstance(record, InterceptionStarted):
                self.started[record.id] += 1
                self.user_agents[record.id] = record.user_agent
            elif isinstance(record, InterceptionEnded):
                self.ended[record.interception_id] += 1
                self.outcomes[record.interception_id] = record.outcome.value
                self.errors[record.interception_id] = record.error
            elif isinstance(record, TokenUsage):
                before = self.tokens.get(record.interception_id, (0, 0, 0))
                self.tokens[record.interception_id] = (
                    before[0] + record.input,
                    before[1] + record.output,
                    before[2] + record.cache_read,
                )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _interception_of(record: Record) -> str:
    return record.id if isinstance(record, InterceptionStarted) else record.interception_id


def task_count() -> int:
    """Every trio task of this run, from the root down."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def task_names() -> Counter[str]:
    """Every trio task of this run by name (to tell which ones leaked)."""
    names: Counter[str] = Counter()

    def walk(task: trio.lowlevel.Task) -> None:
        names[task.name] += 1
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return names


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Rig:
    """A gateway (in this process, real HTTP) in front of the mock, with leak accounting."""

    bridge: Bridge
    url: str
    mock: MockUpstream
    store: CountingStore
    baseline: tuple[int, int] = (0, 0)
    expected: dict[str, str] = field(default_factory=dict)
    baseline_tasks: Counter[str] = field(default_factory=Counter)
    baseline_fds: set[str] = field(default_factory=set)
    baseline_ids: set[str] = field(default_factory=set)

    def new_fds(self) -> list[str]:
        """What the descriptors opened since the baseline point to."""
        targets = []
        for fd in set(os.listdir("/proc/self/fd")) - self.baseline_fds:
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        return targets

    def resources(self) -> tuple[int, int]:
        """(tasks, descriptors), not counting the pool's idle upstream connections."""
        idle = self.mock.open_connections
        return task_count() - idle, fd_count() - 2 * idle

    async def quiesce(self) -> None:
        """Wait until no request is in flight, the mock has finished every answer and the
        records are written."""
        with trio.move_on_after(10):
            await self.bridge.wait_idle()
            await self.mock.wait_quiet()
            await self.bridge.recorder.flush()
        assert not self.bridge._engine.inflight, "an interception never ended"
        assert not self.mock.busy_connections, "an upstream answer is still open"

    async def settle(self) -> tuple[int, int]:
        """:meth:`quiesce`, then wait until the task and fd counts are back to the baseline
        (or 5 s have passed: then they are returned as they are, a leak)."""
        await self.quiesce()
        now = self.resources()
        with trio.move_on_after(5):
            while now != self.baseline:
                await trio.testing.wait_all_tasks_blocked(0.01)
                now = self.resources()
        return now

    async def warm_up(self) -> None:
        """One normal request per API (pools, threads and caches exist), then the baseline."""
        for api in APIS:
            response = await post(self, api, stream=True)
            assert response.status_code == 200, response.text
        await self.quiesce()
        gc.collect()  # sockets an earlier test dropped close now, not during this one
        await trio.testing.wait_all_tasks_blocked(0.05)
        self.baseline = self.resources()
        self.baseline_tasks = task_names()
        self.baseline_fds = set(os.listdir("/proc/self/fd"))
        self.baseline_ids = set(self.store.started)

    async def check(self, label: str, *, interceptions: int) -> None:
        """No leak; exactly one ended record per interception; the gateway still serves."""
        tasks, fds = await self.settle()
        assert (tasks, fds) == self.baseline, (
            f"{label}: leaked {tasks - self.baseline[0]} task(s) and"
            f" {fds - self.baseline[1]} file descriptor(s):"
            f" {task_names() - self.baseline_tasks}"
            f" {self.new_fds()}"
            f" open at the mock: {self.mock.open_connections}"
        )
        store = self.store
        assert len(store.started) == interceptions, label
        assert set(store.ended) == set(store.started), f"{label}: an interception never ended"
        assert set(store.ended.values()) == {1}, f"{label}: an interception ended twice"
        rows = store.inner.interceptions()
        assert len(rows) == interceptions
        assert all(row["outcome"] is not None for row in rows)
        response = await post(self, "anthropic", stream=False)
        assert response.status_code == 200, f"{label}: the gateway no longer serves"
        await self.settle()


async def run_rig(
    config: Config,
    mock: MockUpstream,
    *,
    busy_timeout: float = 5.0,
    task_status: trio.TaskStatus[Rig],
) -> None:
    """Serve ``config`` like ``bridgectl serve`` does, over a counting store."""
    path = config.recording.database.removeprefix("sqlite:///")
    store = CountingStore(SQLiteStore(path, busy_timeout=busy_timeout))
    async with (
        open_bridge(config, store=store) as bridge,
        trio.open_nursery() as nursery,
    ):
        binds = await nursery.start(
            partial(hypercorn_serve, bridge.asgi_app, hypercorn_config(config))  # type: ignore[arg-type]
        )
        task_status.started(Rig(bridge, binds[0], mock, store))


@pytest.fixture
async def rig(nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path) -> Rig:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    started: Rig = await nursery.start(partial(run_rig, config, mock))
    await started.warm_up()
    return started


def request_body(api: str, *, stream: bool) -> dict[str, Any]:
    body = dict(SCENARIOS[APIS[api][1]].request or {})
    body["stream"] = stream
    return body


async def post(
    rig: Rig,
    api: str,
    *,
    stream: bool,
    headers: dict[str, str] | None = None,
    client: httpx2.AsyncClient | None = None,
    prefix: str = "",
) -> httpx2.Response:
    """One request, read to its end (a streamed body too); ``prefix`` is put before the
    route's provider name (``/{prefix}anthropic/v1/messages``)."""
    route, scenario = APIS[api]
    route = "/" + prefix + route.lstrip("/")
    sent = {"x-mock-scenario": scenario, "authorization": "Bearer sk-x", **(headers or {})}
    async with httpx2.AsyncClient(timeout=30) as own:
        return await (client or own).post(
            f"{rig.url}{route}", json=request_body(api, stream=stream), headers=sent
        )


# --------------------------------------------------------------------------- usage oracle


def usage_sent(api: str, chunks: Sequence[bytes]) -> tuple[int, int, int] | None:
    """(input, output, cache read) as the provider reported them in ``chunks``, the SSE
    events the mock actually sent; None if no usage was among them.

    Written independently of the dialects, from the providers' documented event shapes.
    """
    usage: dict[str, Any] | None = None
    for line in b"".join(chunks).split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        kind = event.get("type")
        if api == "anthropic" and kind == "message_start":
            usage = dict(event["message"]["usage"])
        elif api == "anthropic" and kind == "message_delta" and usage is not None:
            usage.update(event["usage"])
        elif api == "chat" and isinstance(event.get("usage"), dict):
            usage = event["usage"]
        elif api == "responses" and kind == "response.completed":
            usage = event["response"]["usage"]
    if usage is None:
        return None
    if api == "anthropic":
        return usage["input_tokens"], usage["output_tokens"], usage["cache_read_input_tokens"]
    if api == "chat":
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return usage["prompt_tokens"] - cached, usage["completion_tokens"], cached
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens", 0)
    return usage["input_tokens"] - cached, usage["output_tokens"], cached


def chunks_sent(api: str, *, stream: bool, fault: str, after: int) -> list[bytes]:
    """The whole events (or body) the mock sends before ``fault`` cuts its answer."""
    scenario = SCENARIOS[APIS[api][1]].upstream
    response = (scenario.streaming if stream else scenario.blocking)[0]
    chunks = list(response.wire_chunks)
    if fault in ("close-early", "stall-before-headers", "close-after-headers"):
        return []
    if not stream:
        return []  # a blocking body is cut in half (or garbled): no whole JSON was sent
    if (api, fault, stream) == RAW_GARBAGE:
        return chunks  # garbage in the middle, then every event
    return chunks[:after]  # the events before the fault (garbage stops the reading)


# --------------------------------------------------------------------------- upstream faults

CUT_AFTER = 3
"""Events the mock sends before a mid-stream fault."""


async def stall_then_leave(rig: Rig, api: str, *, stream: bool, fault: str) -> None:
    """A request the upstream stalls; the client gives up once the stall is certain: when
    the mock has the request, or (a stalled stream) once the events before it arrived."""
    route, scenario = APIS[api]
    requests = len(rig.mock.requests)
    reached = trio.Event()
    headers = {
        "x-mock-scenario": scenario,
        "x-mock-fault": fault,
        "x-mock-fault-after": str(CUT_AFTER),
    }

    async def request(client: httpx2.AsyncClient) -> None:
        body = request_body(api, stream=stream)
        async with client.stream("POST", f"{rig.url}{route}", json=body, headers=headers) as r:
            seen = b""
            async for chunk in r.aiter_bytes():
                seen += chunk
                if seen.count(b"\n\n") >= CUT_AFTER:
                    reached.set()

    with trio.fail_after(10):
        async with httpx2.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
            nursery.start_soon(request, client)
            if stream and fault == "stall-between-events":
                await reached.wait()
            else:
                await rig.mock.wait_requests(requests + 1)
            nursery.cancel_scope.cancel()


# fault -> (client status when streaming, when blocking, outcome); None: the client left.
FAULT_ENDS: dict[str, tuple[int | None, int | None, str]] = {
    "reset-mid-stream": (200, 502, "failed"),
    "stall-before-headers": (None, None, "client_disconnected"),
    "stall-between-events": (None, None, "client_disconnected"),
    "garbage-sse": (200, 502, "failed"),
    "truncated-sse": (200, 502, "failed"),
    "close-early": (502, 502, "failed"),
    "close-after-headers": (502, 502, "failed"),  # before the first event: a real status
}


RAW_GARBAGE = ("responses", "garbage-sse", True)
"""Responses streams are relayed raw, malformed lines included, and only read for
accounting (see fixtures/openai/openai_responses_malformed_line.json): garbage in one is
passed on and the stream completes."""

RAW_GARBAGE_BODY = ("responses", "garbage-sse", False)
"""A blocking Responses body is the upstream's bytes too: garbage in it is relayed with the
upstream's 200, and the interception is recorded failed (the body is not JSON)."""


def last_frame(text: str) -> str:
    frames = [f for f in text.split("\n\n") if f.strip() and f.strip() != "data: [DONE]"]
    return frames[-1]


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "blocking"])
@pytest.mark.parametrize("api", list(APIS))
async def test_upstream_faults_end_cleanly_and_record_what_was_sent(
    rig: Rig, api: str, stream: bool
) -> None:
    assert set(FAULT_ENDS) == FAULTS  # every fault the mock can make
    interceptions = len(APIS)  # the warm-up's
    for fault, (stream_status, blocking_status, outcome) in FAULT_ENDS.items():
        before = set(rig.store.started)
        if (api, fault, stream) == RAW_GARBAGE:
            stream_status, outcome = 200, "completed"
        if (api, fault, stream) == RAW_GARBAGE_BODY:
            blocking_status = 200
        if fault.startswith("stall"):
            await stall_then_leave(rig, api, stream=stream, fault=fault)
        else:
            headers = {"x-mock-fault": fault, "x-mock-fault-after": str(CUT_AFTER)}
            response = await post(rig, api, stream=stream, headers=headers)
            assert response.status_code == (stream_status if stream else blocking_status), fault
            if (api, fault, stream) == RAW_GARBAGE:
                assert GARBAGE.decode(errors="replace") in response.text  # relayed as sent
            elif (api, fault, stream) == RAW_GARBAGE_BODY:
                assert "garbage" in response.text  # relayed as sent
            elif response.status_code == 200:  # the stream had started: an error event ends it
                assert "error" in last_frame(response.text), (fault, response.text[-300:])
            else:
                assert "error" in response.json(), fault
        await rig.settle()
        new = set(rig.store.started) - before
        assert len(new) == 1, (new, [rig.store.outcomes.get(i) for i in new], len(before))
        [ix] = new
        sent = usage_sent(api, chunks_sent(api, stream=stream, fault=fault, after=CUT_AFTER))
        note(
            f"{api:9} {'stream' if stream else 'block':6} {fault:21}"
            f" outcome={rig.store.outcomes[ix]:19} tokens recorded={rig.store.tokens.get(ix)}"
            f" sent={sent} error={rig.store.errors[ix]!r}"
        )
        assert rig.store.outcomes[ix] == outcome, (fault, rig.store.errors[ix])
        assert rig.store.tokens.get(ix) == sent, fault
        interceptions += 1
        await rig.check(fault, interceptions=interceptions)
        interceptions += 1  # check() made a normal request


STALL_TIMEOUT = 0.3
"""The response and idle timeouts of the ``stalling-*`` providers (seconds)."""

TIMEOUT_ENDS: dict[tuple[str, bool], tuple[int, str]] = {
    # (fault, streaming) -> (client status, the setting the error names)
    ("stall-before-headers", True): (504, "response_timeout"),
    ("stall-before-headers", False): (504, "response_timeout"),
    ("stall-between-events", True): (200, "stream_idle_timeout"),  # an error event ends it
    ("stall-between-events", False): (504, "stream_idle_timeout"),  # half a body, then silence
}


@pytest.fixture
async def stall_rig(nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path) -> Rig:
    """The rig, plus copies of its providers named ``stalling-<name>`` whose response and
    idle timeouts are :data:`STALL_TIMEOUT`: only the requests sent to them time out so
    soon, the warm-up and the checks' requests keep the generous defaults."""
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    stalling = tuple(
        replace(
            provider,
            name=f"stalling-{provider.name}",
            response_timeout=STALL_TIMEOUT,
            stream_idle_timeout=STALL_TIMEOUT,
        )
        for provider in config.providers
        if provider.name in ("anthropic", "openai")
    )
    config = replace(config, providers=(*config.providers, *stalling))
    started: Rig = await nursery.start(partial(run_rig, config, mock))
    await started.warm_up()
    return started


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "blocking"])
@pytest.mark.parametrize("api", list(APIS))
async def test_upstream_stalls_time_out_with_504_or_an_error_event(
    stall_rig: Rig, api: str, stream: bool
) -> None:
    """An upstream that stalls before its headers or between two events is given up on
    after the provider's timeout: the client gets a 504 (or, once the stream started,
    the dialect's error event), the record is ``failed`` naming the setting, what the
    upstream sent is recorded, the upstream connection is closed, nothing leaks."""
    rig = stall_rig
    assert {fault for fault, _ in TIMEOUT_ENDS} == {f for f in FAULTS if f.startswith("stall")}
    interceptions = len(APIS)
    for (fault, streaming), (status, setting) in TIMEOUT_ENDS.items():
        if streaming != stream:
            continue
        before = set(rig.store.started)
        headers = {"x-mock-fault": fault, "x-mock-fault-after": str(CUT_AFTER)}
        with trio.fail_after(10):
            response = await post(rig, api, stream=stream, headers=headers, prefix="stalling-")
        assert response.status_code == status, (fault, response.text[-300:])
        provider = "stalling-anthropic" if api == "anthropic" else "stalling-openai"
        named = f"providers.{provider}.{setting}"
        if status == 200:
            assert "error" in last_frame(response.text), response.text[-300:]
            assert named in last_frame(response.text)
        else:
            assert "error" in response.json(), response.text
            assert named in response.text
        await rig.settle()
        [ix] = set(rig.store.started) - before
        error = rig.store.errors[ix]
        sent = usage_sent(api, chunks_sent(api, stream=stream, fault=fault, after=CUT_AFTER))
        note(
            f"{api:9} {'stream' if stream else 'block':6} {fault:21}"
            f" outcome={rig.store.outcomes[ix]} tokens recorded={rig.store.tokens.get(ix)}"
            f" sent={sent} error={error!r}"
        )
        assert rig.store.outcomes[ix] == "failed"
        assert error is not None
        assert named in error
        assert "timed out" in error
        assert rig.store.tokens.get(ix) == sent, fault
        interceptions += 1  # check() also asserts the stalled upstream connection is closed
        await rig.check(f"{fault} timed out", interceptions=interceptions)
        interceptions += 1  # check() made a normal request


# --------------------------------------------------------------------------- the database


class ReplayWatch(logging.Handler):
    """Wakes waiters each time the recorder logs a successful replay of the journal."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.replayed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("replayed "):
            self.replayed.set()
            self.replayed = trio.Event()


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus exposition."""
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
connection.execute("ROLLBACK")
"""


def _spawn_locker(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


async def lock_database(path: Path) -> subprocess.Popen[bytes]:
    """A process holding SQLite's write lock on ``path`` until :func:`unlock_database`.

    Another process, not a connection of this one: SQLite keeps the descriptor of a
    connection closed while another connection of the same process holds a lock on the
    file, which would look like a leak."""
    locker = _spawn_locker(path)
    assert locker.stdout is not None
    line = await trio.to_thread.run_sync(locker.stdout.readline)
    assert line == b"locked\n", line
    return locker


async def unlock_database(locker: subprocess.Popen[bytes]) -> None:
    assert locker.stdin is not None
    assert locker.stdout is not None
    locker.stdin.close()
    assert await trio.to_thread.run_sync(locker.wait) == 0
    locker.stdout.close()


@pytest.mark.slow
async def test_database_down_during_load_spills_to_the_journal_and_replays_in_order(
    nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    recording = replace(config.recording, journal_dir=str(tmp_path / "journal"))
    config = replace(config, recording=recording)
    rig: Rig = await nursery.start(partial(run_rig, config, mock, busy_timeout=0.05))
    await rig.warm_up()
    requests, locked_at, released_at = 200, 40, 120
    done = 0
    milestones = {locked_at: trio.Event(), released_at: trio.Event()}
    proceed = {locked_at: trio.Event(), released_at: trio.Event()}

    async def one(client: httpx2.AsyncClient, n: int) -> None:
        nonlocal done
        response = await post(rig, "anthropic", stream=n % 2 == 0, client=client)
        assert response.status_code == 200
        done += 1
        if done in milestones:
            milestones[done].set()
            await proceed[done].wait()  # the load pauses while the test looks

    watch = ReplayWatch()
    logger = logging.getLogger("bridge.recording")
    logger.addHandler(watch)
    locker: subprocess.Popen[bytes] | None = None
    try:
        limits = httpx2.Limits(max_connections=20)
        with trio.fail_after(30):
            async with (
                httpx2.AsyncClient(timeout=30, limits=limits) as client,
                trio.open_nursery() as load,
            ):
                for n in range(requests):
                    load.start_soon(one, client, n)
                await milestones[locked_at].wait()
                # Another process holds the write lock: every write of the gateway fails
                # with "database is locked" after its 50 ms busy timeout.
                locker = await lock_database(tmp_path / "bridge.db")
                proceed[locked_at].set()
                await milestones[released_at].wait()
                await rig.bridge.recorder.flush()  # written to the journal, the store refusing
                stats = rig.bridge.recorder.stats
                assert stats.spilled > 0
                assert stats.journal_records > 0
                async with httpx2.AsyncClient() as probe:
                    ready = (await probe.get(f"{rig.url}/readyz")).json()["checks"]["recorder"]
                    scraped = (await probe.get(f"{rig.url}/metrics")).text
                note(f"during the outage: /readyz recorder check {ready}")
                # Requests still in flight keep spilling: the later look sees no less.
                assert ready["journal_pending"] is True
                assert 0 < ready["journal_records"] <= stats.journal_records
                assert 0 < ready["journal_bytes"] <= stats.journal_bytes
                backlog = metric(scraped, "recorder_journal_backlog_records")
                assert ready["journal_records"] <= backlog <= stats.journal_records
                backlog_bytes = metric(scraped, "recorder_journal_backlog_bytes")
                assert ready["journal_bytes"] <= backlog_bytes <= stats.journal_bytes
                await unlock_database(locker)  # the database is back
                released = time.perf_counter()
                proceed[released_at].set()
            while rig.bridge.recorder.stats.journal_pending:
                await watch.replayed.wait()
    finally:
        logger.removeHandler(watch)
        if locker is not None and locker.poll() is None:
            locker.kill()
            locker.wait()
    stats = rig.bridge.recorder.stats
    # The replay: the first successful writes after the release, up to the replayed count.
    replay_writes, count = [], 0
    for write in (w for w in rig.store.writes if w[0] >= released):
        if count >= stats.replayed:
            break
        replay_writes.append(write)
        count += write[2]
    seconds = replay_writes[-1][1] - replay_writes[0][0]
    note(
        f"database down during load: {requests} requests, {stats.spilled} records spilled"
        f" ({stats.failures} failed writes), {stats.replayed} replayed in"
        f" {seconds * 1000:.1f} ms: {stats.replayed / seconds:,.0f} records/s"
    )
    assert stats.replayed == stats.spilled
    await rig.check("database down", interceptions=len(APIS) + requests)
    # In order and once: each interception's started record precedes its other records.
    seen: dict[str, int] = {}
    for position, (kind, ix) in enumerate(rig.store.sequence):
        if kind == "InterceptionStarted":
            assert ix not in seen, "an interception was started twice"
            seen[ix] = position
        else:
            assert ix in seen, f"a {kind} reached the database before its interception"
    rows = rig.store.inner.interceptions()
    ended = [row for row in rows if row["ended_at"] is not None]
    note(f"database down: ended records {len(ended)} of {len(rows)} expected")
    assert len(ended) == len(rows) == len(APIS) + requests + 1


# --------------------------------------------------------------------------- clients

SLOW_STREAM = SCENARIOS["anthropic_slow_stream"]


def raw_request(scenario: str, body: dict[str, Any], **headers: str) -> tuple[bytes, bytes]:
    """The head and body of an Anthropic streaming request, as a raw client sends them."""
    data = json.dumps({**body, "stream": True}).encode()
    lines = [
        b"POST /anthropic/v1/messages HTTP/1.1",
        b"host: gateway",
        b"content-type: application/json",
        b"content-length: %d" % len(data),
        b"connection: close",  # a whole answer ends with the connection
        b"x-mock-scenario: " + scenario.encode(),
        *(f"{k}: {v}".encode() for k, v in headers.items()),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n", data


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def received_whole_event(received: bytes, name: bytes) -> bool:
    """Whether ``received`` (a raw HTTP response) holds the whole SSE event ``name``."""
    at = received.find(b"event: " + name + b"\n")
    return at >= 0 and received.find(b"\n\n", at) >= 0


def drain_now(stream: trio.SocketStream) -> bytes:
    """What is already in the socket, read without waiting (no other task runs meanwhile)."""
    received = b""
    with contextlib.suppress(BlockingIOError, ConnectionError):
        while data := os.read(stream.socket.fileno(), 65536):
            received += data
    return received


@pytest.mark.slow
async def test_a_thousand_clients_leaving_at_random_moments_leak_nothing(rig: Rig) -> None:
    """1,000 streams, each read for a random number of bytes (seeded) before the client
    closes (a quarter with a reset): every interception ends once, nothing leaks, and
    each is recorded by what its client got: ``completed`` if the whole final event
    reached it (even if it left before the end of the body)."""
    clients, concurrent = 1000, 50
    rng = random.Random(20251206)
    text = SCENARIOS["anthropic_text"]
    whole = len(b"".join(text.upstream.streaming[0].wire_chunks))
    plans = [(rng.randint(1, whole + 1000), rng.random() < 0.25) for _ in range(clients)]
    port = port_of(rig.url)
    limiter = trio.CapacityLimiter(concurrent)
    got_end: dict[str, bool] = {}  # user agent -> whether that client got message_stop

    async def leave_early(n: int, read: int, reset: bool) -> None:
        agent = f"storm/{n}"
        headers = {"x-mock-pace-ms": "1", "user-agent": agent}
        head, body = raw_request("anthropic_text", text.request or {}, **headers)
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(head + body)
            got = b""
            while len(got) < read:
                data = await stream.receive_some(65536)
                if not data:
                    break
                got += data
            # Everything the gateway wrote before the close below counts as received:
            # nothing runs between this read and the close (one thread, no await).
            got += drain_now(stream)
            got_end[agent] = received_whole_event(got, b"message_stop")
            if reset:
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            await stream.aclose()

    before = rss_mib()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n, (read, reset) in enumerate(plans):
                nursery.start_soon(leave_early, n, read, reset)
        await rig.settle()
    after = rss_mib()
    storm = [ix for ix in rig.store.started if ix not in rig.baseline_ids]
    outcomes = Counter(rig.store.outcomes[ix] for ix in storm)
    read_all = sum(got_end.values())
    mismatched = Counter(
        (got_end[rig.store.user_agents[ix]], rig.store.outcomes[ix])
        for ix in storm
        if got_end[rig.store.user_agents[ix]] != (rig.store.outcomes[ix] == "completed")
    )
    note(
        f"disconnect storm: {clients} clients, {len(storm)} interceptions,"
        f" {sum(rig.store.ended[ix] for ix in storm)} ended records (expected {clients});"
        f" outcomes {dict(outcomes)}; {read_all} got message_stop;"
        f" outcome unlike what the client got (got it, outcome): {dict(mismatched)};"
        f" upstream streams cut {len(rig.mock.disconnects)};"
        f" RSS {before:.1f} MiB before, {after:.1f} MiB after ({after - before:+.1f})"
    )
    assert len(storm) == clients
    assert set(outcomes) <= {"completed", "client_disconnected"}
    # A client that got message_stop had the whole answer: completed, even if it left
    # before the end of the body. The converse cannot be exact: a frame the gateway writes
    # after the client closed but before it hears of the close is taken by the kernel, so
    # the gateway counts it delivered (the count is printed).
    assert (True, "client_disconnected") not in mismatched
    final = usage_sent("anthropic", text.upstream.streaming[0].wire_chunks)
    started = usage_sent("anthropic", text.upstream.streaming[0].wire_chunks[:1])
    for ix in storm:
        expected = final if rig.store.outcomes[ix] == "completed" else started
        assert rig.store.tokens[ix] in (expected, final), rig.store.outcomes[ix]
    await rig.check("disconnect storm", interceptions=len(APIS) + clients)


async def test_a_client_leaving_right_after_the_final_event_is_recorded_completed(
    nursery: trio.Nursery, start_gateway: Any
) -> None:
    """The upstream sends a whole Anthropic stream, message_stop included, but holds back
    the end of its body; the client hangs up as soon as it has message_stop, while the
    gateway still waits for that end. The client had the whole answer: ``completed``."""
    wire = b"".join(SCENARIOS["anthropic_text"].upstream.streaming[0].wire_chunks)
    released = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            + b"%x\r\n%b\r\n"
            % (len(wire), wire)
        )
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):  # until the gateway hangs up
                pass
        released.set()

    listeners = await nursery.start(partial(trio.serve_tcp, upstream, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    gateway = await start_gateway(upstream_url=f"http://127.0.0.1:{port}/")
    head, body = raw_request("anthropic_text", SCENARIOS["anthropic_text"].request or {})
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(gateway.url))
        await stream.send_all(head + body)
        got = b""
        while not received_whole_event(got, b"message_stop"):
            got += await stream.receive_some(65536)
        await stream.aclose()
        await released.wait()  # the gateway heard the client leave and closed the upstream
        await gateway.bridge.wait_idle()
        await gateway.flush()
    [row] = gateway.store.interceptions()
    assert row["outcome"] == "completed"


def big_scenario(directory: Path, events: int) -> MockUpstream:
    """A mock whose ``anthropic_big`` stream has ``events`` text deltas of 1 KiB each."""
    start = SLOW_STREAM.upstream.streaming[0].events
    assert start is not None
    delta = {"type": "text_delta", "text": "x" * 1024}
    document = {
        "name": "anthropic_big",
        "api": "anthropic.messages",
        "request": SLOW_STREAM.request,
        "upstream": {
            "streaming": [
                {
                    "status": 200,
                    "events": [{"event": e.event, "data": e.data} for e in start[:2]]
                    + [
                        {
                            "event": "content_block_delta",
                            "data": {"type": "content_block_delta", "index": 0, "delta": delta},
                        }
                    ]
                    * events
                    + [{"event": e.event, "data": e.data} for e in start[-3:]],
                }
            ]
        },
        "expect": {},
    }
    (directory / "big").mkdir()
    (directory / "big" / "anthropic_big.json").write_text(json.dumps(document))
    return MockUpstream({**SCENARIOS, **load_scenarios(directory / "big")})


async def test_a_client_that_stops_reading_is_dropped_and_pins_no_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A real socket with a small receive buffer that never reads, in front of an 8 MiB
    stream: the gateway's writes block (it buffers no more than the sockets hold), the
    client is dropped after server.client_write_timeout and recorded as gone, and the
    upstream stream is cut: it was never read to its end."""
    mock = big_scenario(tmp_path, events=8 * 1024)
    mock.port = await nursery.start(mock.serve)  # type: ignore[attr-defined]
    config = gateway_config(tmp_path, mock.port, client_write_timeout=0.5)  # type: ignore[attr-defined]
    rig: Rig = await nursery.start(partial(run_rig, config, mock))
    await rig.warm_up()
    head, body = raw_request("anthropic_big", SLOW_STREAM.request or {})
    before = rss_mib()
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port_of(rig.url)))
    stream = trio.SocketStream(sock)
    try:
        with trio.fail_after(20):
            await stream.send_all(head + body)  # and never read
            await mock.wait_requests(len(mock.requests) + 1)
            await mock.wait_disconnect()  # the gateway gave up and closed the upstream
            during = rss_mib()
            await rig.quiesce()
    finally:
        await stream.aclose()  # (on failure, frees a gateway stuck writing to it)
    [ix] = [ix for ix in rig.store.started if ix not in rig.baseline_ids]
    note(
        f"slow reader: outcome {rig.store.outcomes[ix]}; the 8 MiB upstream stream was"
        f" cut before its end; RSS {before:.1f} MiB before,"
        f" {during:.1f} MiB while stalled ({during - before:+.1f})"
    )
    assert rig.store.outcomes[ix] == "client_disconnected"
    assert mock.completed_streams == len(APIS)  # the big stream never went out whole
    assert during - before < 4  # far less than the 8 MiB the upstream wanted to send
    await rig.check("slow reader", interceptions=len(APIS) + 1)


async def test_a_client_sending_its_body_byte_by_byte_is_served_and_leaks_nothing(
    rig: Rig,
) -> None:
    head, body = raw_request("anthropic_text", SCENARIOS["anthropic_text"].request or {})
    port = port_of(rig.url)
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head)
        for byte in body:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.001)  # the fault itself: a slow sender, not synchronisation
        answer = b""
        while b"message_stop" not in answer:
            answer += await stream.receive_some(65536)
        await stream.aclose()
        # And one that gives up halfway through its body: no interception, nothing left.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head + body[: len(body) // 2])
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 200")
    await rig.check("slow body", interceptions=len(APIS) + 1)


# --------------------------------------------------------------------------- MCP


@pytest.mark.slow
async def test_an_mcp_server_killed_mid_call_ends_the_interception_cleanly(
    nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path
) -> None:
    """The stdio MCP server behind an injected tool is killed (SIGKILL) while the gateway
    waits for its answer: the call fails, the failure goes back to the model and is
    recorded on the tool usage, the interception completes, and nothing leaks (the hub
    starts a new server process in place of the dead one)."""
    pids: list[int] = []
    calling = trio.Event()

    async def notified(stream: trio.SocketStream) -> None:
        pids.append(int((await stream.receive_some(64)).strip()))
        calling.set()
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(64):  # until the server process dies
                pass

    listeners = await nursery.start(partial(trio.serve_tcp, notified, 0, host="127.0.0.1"))
    notify_port = listeners[0].socket.getsockname()[1]
    server = MCPServerConfig(
        "demo",
        command=sys.executable,
        args=("-m", "tests.mcp_servers", "stdio-hanging", str(notify_port)),
        allow="^add$",
    )
    config = replace(
        gateway_config(tmp_path, mock.port),  # type: ignore[attr-defined]
        mcp=MCPConfig(servers=(server,), call_timeout=20),
    )
    rig: Rig = await nursery.start(partial(run_rig, config, mock))
    hub = rig.bridge._engine.hub
    assert hub is not None
    with trio.fail_after(20):
        while not hub.status()["demo"]["tools"]:
            await hub.wait_changed()
    await rig.warm_up()
    body = dict(SCENARIOS["anthropic_mcp_add"].request or {}, stream=True)
    result: list[httpx2.Response] = []

    async def ask() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:
            result.append(
                await client.post(
                    f"{rig.url}/anthropic/v1/messages",
                    json=body,
                    headers={"x-mock-scenario": "anthropic_mcp_add"},
                )
            )

    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            inner.start_soon(ask)
            await calling.wait()
            os.kill(pids[0], signal.SIGKILL)
        while not hub.status()["demo"]["tools"]:  # the hub starts a new server
            await hub.wait_changed()
    [response] = result
    assert response.status_code == 200
    await rig.quiesce()
    [ix] = [ix for ix in rig.store.started if ix not in rig.baseline_ids]
    [tool] = rig.store.inner.tool_usages(ix)
    note(
        f"MCP server killed mid-call: outcome {rig.store.outcomes[ix]},"
        f" tool error {tool['invocation_error']!r}"
    )
    assert rig.store.outcomes[ix] == "completed"  # the model was told the tool failed
    assert tool["tool"] == "add"
    assert tool["invocation_error"]
    await rig.check("MCP server killed", interceptions=len(APIS) + 1)
