"""The wiring: what an :class:`~bridge.core.engine.Engine` needs, opened and closed in order.

The engine only serves requests; this module builds its surroundings (the store, the
recorder, one upstream pool per provider, the MCP tool hub) and tears them down in
reverse, so that the engine itself holds no opening or closing logic.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import trio

from bridge.config import Config
from bridge.core.engine import Engine
from bridge.recording.deferred import DeferredStore
from bridge.recording.journal import Journal
from bridge.recording.recorder import open_recorder
from bridge.recording.store import Store, StoreError, open_store
from bridge.services.mcp import open_tool_hub
from bridge.services.upstream import UpstreamClient
from bridge.telemetry.tracing import Tracer

__all__ = ["open_engine"]

logger = logging.getLogger("bridge.engine")


@asynccontextmanager
async def open_engine(
    config: Config, *, store: Store | None = None, tracer: Tracer | None = None
) -> AsyncIterator[Engine]:
    """Open the store, the recorder and the upstream pools; close them in reverse.

    If the database cannot be opened and ``recording.journal_dir`` is set, the gateway
    starts anyway: records go to the journal and the recorder's writer opens the store
    once the database is back (see :class:`~bridge.recording.deferred.DeferredStore`).
    Without a journal it fails at once, saying so.

    On exit, in-flight work is the caller's to have finished or cancelled; the
    recorder then drains every queued record to the store before this returns.
    """
    async with AsyncExitStack() as stack:
        recording = config.recording
        journal = Journal(recording.journal_dir) if recording.journal_dir else None
        if store is None:
            store = await _open_store(recording.database, journal)
        recorder = await stack.enter_async_context(
            open_recorder(
                store,
                queue_size=recording.queue_size,
                batch_size=recording.batch_size,
                journal=journal,
            )
        )
        # Housekeeping that lives as long as the engine: sweeping idle upstream
        # connections. Cancelled (callbacks run last in, first out) before it is awaited.
        housekeeping = await stack.enter_async_context(trio.open_nursery())
        stack.callback(housekeeping.cancel_scope.cancel)
        upstreams: dict[str, UpstreamClient] = {}
        for provider in config.providers:
            client = UpstreamClient(connect_timeout=provider.connect_timeout)
            stack.push_async_callback(client.aclose)
            housekeeping.start_soon(client.keep_tidy)
            upstreams[provider.name] = client
        hub = None
        if config.mcp.servers:
            hub = await stack.enter_async_context(open_tool_hub(config.mcp))
        yield Engine(config, recorder, store, upstreams, hub, tracer=tracer)


async def _open_store(database: str, journal: Journal | None) -> Store:
    """The store *database* names; with a journal, a deferred one if it cannot be opened."""
    try:
        return await trio.to_thread.run_sync(open_store, database)
    except StoreError as exc:
        if journal is None:
            raise StoreError(
                f"{exc}. To start anyway and ride out a database outage, set"
                " recording.journal_dir: records then wait on local disk until the database"
                " is back"
            ) from exc
        logger.error(
            "the recording database cannot be opened: %s; starting anyway, recording to the"
            " journal in %s until it can be",
            exc,
            journal.directory,
        )
        return DeferredStore(partial(open_store, database), exc)
