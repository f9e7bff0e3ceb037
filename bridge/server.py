"""The gateway process: hypercorn's Trio worker serving the bridge, with signals.

Shutdown, on SIGINT or SIGTERM:

1. stop accepting connections;
2. let in-flight interceptions finish for up to ``server.grace_period`` seconds,
   then cancel the rest (each still writes its ended record);
3. drain the recorder to the store; exit 0.

A second signal skips the grace period: everything is cancelled at once, and the
recorder is still drained.
"""

from __future__ import annotations

import logging
import signal

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from bridge.config import Config
from bridge.gateway import open_bridge

__all__ = ["serve"]

logger = logging.getLogger("bridge.server")


def hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn settings for the gateway: long streams are never cut by a timeout."""
    server = config.server
    hc = HypercornConfig()
    hc.bind = [
        f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    ]
    hc.backlog = server.backlog
    hc.graceful_timeout = server.grace_period
    hc.keep_alive_timeout = 75.0
    hc.read_timeout = None
    hc.h11_max_incomplete_size = 64 * 1024
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def serve(
    config: Config, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until a signal (or cancellation); report the bound URLs through ``task_status``."""
    async with open_bridge(config) as bridge:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, shutdown, nursery.cancel_scope)
            await hypercorn_serve(
                bridge.asgi_app,  # type: ignore[arg-type]
                hypercorn_config(config),
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()
        logger.info("stopped serving; draining %d queued records", bridge.recorder.stats.queued)


async def _on_signals(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not shutdown.is_set():
                logger.info(
                    "%s: draining in-flight requests (send it again to stop at once)",
                    signal.Signals(signum).name,
                )
                shutdown.set()
            else:
                logger.warning("second signal: cancelling in-flight requests now")
                scope.cancel()
                return
