"""The gateway process: hypercorn's Trio worker serving the bridge, with signals.

Shutdown, on SIGINT or SIGTERM:

1. stop accepting connections;
2. let in-flight interceptions finish for up to ``server.grace_period`` seconds,
   then cancel the rest (each still writes its ended record);
3. drain the recorder to the store; exit 0.

A second signal skips the grace period: everything is cancelled at once, and the
recorder is still drained.

With ``server.workers`` > 1, :func:`run_workers` starts that many processes, each a
Trio program serving the same port (``SO_REUSEPORT``: the kernel spreads connections),
and points prometheus-client at a shared directory so ``/metrics`` on any worker
shows the totals of all (docs/behaviour.md §10.2). The parent stays a supervisor: a
worker that dies is logged and replaced.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client.multiprocess import mark_process_dead

from bridge.config import Config, ConfigError
from bridge.embed import open_bridge
from bridge.process import hypercorn_fixes
from bridge.telemetry.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

__all__ = ["ListenError", "hypercorn_config", "listen", "run_workers", "serve"]

logger = logging.getLogger("bridge.server")


def hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn settings for the gateway: long streams are never cut by a timeout, idle
    connections and slow request heads are."""
    hypercorn_fixes.apply()  # see there: what hypercorn's Trio worker gets wrong
    server = config.server
    hc = HypercornConfig()
    hc.bind = [
        f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    ]
    hc.backlog = server.backlog
    hc.graceful_timeout = server.grace_period
    hc.keep_alive_timeout = server.keep_alive_timeout
    # A client not reading this long is dropped, even inside hypercorn's shielded writes.
    setattr(hc, hypercorn_fixes.WRITE_TIMEOUT_ATTRIBUTE, server.client_write_timeout)
    setattr(hc, hypercorn_fixes.HEADER_TIMEOUT_ATTRIBUTE, server.header_timeout)
    # HTTP/2 is more code facing every client; off unless asked (bridge/process/hypercorn_fixes.py).
    setattr(hc, hypercorn_fixes.HTTP2_ATTRIBUTE, server.http2)
    hc.alpn_protocols = ["h2", "http/1.1"] if server.http2 else ["http/1.1"]
    hc.read_timeout = None
    hc.h11_max_incomplete_size = 64 * 1024
    hc.accesslog = None
    hc.include_server_header = False  # no software banner; the Date header stays
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.workers = server.workers  # > 1: the socket is bound with SO_REUSEPORT
    return hc


async def serve(
    config: Config,
    *,
    draining: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until a signal (or cancellation); report the bound URLs through ``task_status``.

    ``draining``, if given, is set when the first signal starts the graceful drain.
    """
    hc = hypercorn_config(config)
    sockets = listen(hc, config)
    async with open_bridge(config) as bridge:
        tune_gc()
        shutdown = draining if draining is not None else trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, shutdown, nursery.cancel_scope)
            await worker_serve(
                wrap_app(bridge.asgi_app, hc.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
                hc,
                sockets=sockets,
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()
        logger.info("stopped serving; draining %d queued records", bridge.recorder.stats.queued)


class ListenError(ConfigError):
    """The gateway cannot listen where it is told to (the port is taken, the address is
    not this machine's, the port needs privileges): a start-up error, one line."""


def listen(hc: HypercornConfig, config: Config) -> Sockets:
    """Bind and listen on the configured address, before anything else starts.

    Hypercorn would bind inside its serving nurseries, where a taken port surfaces as an
    exception group several levels deep; here it is a :class:`ListenError` naming the
    address and the settings that choose it.
    """
    try:
        sockets = hc.create_sockets()
    except OSError as exc:
        where = f"{config.server.host}:{config.server.port}"
        reason = exc.strerror or str(exc)
        raise ListenError(
            f"cannot listen on {where}: {reason}; choose another address with --host and"
            " --port (server.host, server.port)"
        ) from None
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(hc.backlog)
    return sockets


GC_THRESHOLD: Final = (50_000, 20, 100)
"""Collector thresholds while serving. Python's default (700, 10, 10) runs a young
collection every few requests (each allocates hundreds of objects); at 50,000 one runs
every hundred or so, and the full collections that walk the whole heap are rare."""


def tune_gc() -> None:
    """Keep the garbage collector off the hot path: a collection pauses every request.

    Everything alive once the gateway has started (modules, config, pools, compiled
    regexes) lives until exit: ``gc.freeze()`` moves it out of the collector's sight, so
    no collection walks it again. The thresholds then make collections rarer; reference
    counting still frees almost everything a request allocates at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


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


def _worker_main(worker: Callable[[Config], None], config: Config) -> None:
    # Its own process group: a terminal's Ctrl-C reaches the parent only, which passes
    # it on once (twice would mean "stop at once" to the worker).
    os.setpgrp()
    worker(config)


RESPAWN_LIMIT: Final = 5
"""Workers that may die within :data:`RESPAWN_WINDOW` seconds before the supervisor gives up:
a worker that dies as soon as it starts would otherwise be restarted in a tight loop."""

RESPAWN_WINDOW: Final = 60.0


def run_workers(config: Config, worker: Callable[[Config], None]) -> int:
    """Run ``worker(config)`` in ``server.workers`` processes, replacing any that dies.

    SIGINT/SIGTERM are passed on to the workers (each drains as :func:`serve` does).
    A worker that dies on its own (a crash, a signal of its own: the OOM killer) is
    logged and replaced, so that the port keeps its processes; one that exits with status
    0 (it was stopped) or 2 (its configuration or database stopped its start, and would
    stop the next one's too) is not. Status 2, or more than :data:`RESPAWN_LIMIT` deaths
    in :data:`RESPAWN_WINDOW` seconds, stops them all. The exit status is the first
    non-zero one that stopped the workers, else that of the last generation, else 0 (a
    worker ended by the stopping signal itself, as one still starting is, counts as 0).
    """
    directory = Path(tempfile.mkdtemp(prefix="bridge-metrics-"))
    prepare_multiprocess_dir(directory)
    os.environ[MULTIPROC_ENV] = str(directory)
    context = multiprocessing.get_context("spawn")

    def start(n: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker_main, args=(worker, config), name=f"bridge-worker-{n}"
        )
        process.start()
        return process

    processes = [start(n) for n in range(config.server.workers)]
    stopping: int | None = None  # the signal that stops the workers, once sent
    failure = 0
    deaths: list[float] = []

    def stop(signum: int, _: object = None) -> None:
        nonlocal stopping
        stopping = signum
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running := [p for p in processes if p.exitcode is None]:
            # The sentinels wake the loop at once; the timeout is the safety net, for a
            # sentinel that never fires (its pipe's write end held by a process the dead
            # worker left behind): exitcode then asks the kernel (waitpid) every second.
            multiprocessing.connection.wait([p.sentinel for p in running], timeout=1.0)
            for n, process in enumerate(processes):
                if process in running and process.exitcode is not None:
                    mark_process_dead(process.pid, str(directory))  # type: ignore[no-untyped-call]
                    if stopping is not None or process.exitcode == 0:
                        continue
                    deaths = [t for t in deaths if time.monotonic() - t < RESPAWN_WINDOW]
                    deaths.append(time.monotonic())
                    if process.exitcode == 2 or len(deaths) > RESPAWN_LIMIT:
                        failure = process.exitcode
                        if process.exitcode != 2:  # 2: the worker has said why, in one line
                            logger.error(
                                "%s (pid %s) %s, the %dth worker to die in %g s; stopping",
                                process.name,
                                process.pid,
                                _exit_reason(process.exitcode),
                                len(deaths),
                                RESPAWN_WINDOW,
                            )
                        stop(signal.SIGTERM)
                        continue
                    processes[n] = start(n)
                    logger.warning(
                        "%s (pid %s) %s; replaced it with pid %s",
                        process.name,
                        process.pid,
                        _exit_reason(process.exitcode),
                        processes[n].pid,
                    )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(directory, ignore_errors=True)
    # A worker still starting when asked to stop has no handler yet: the signal ends it.
    stopped = -stopping if stopping is not None else None
    statuses = [p.exitcode or 0 for p in processes]
    return failure or next((status for status in statuses if status not in (0, stopped)), 0)


def _exit_reason(status: int) -> str:
    """How a process with exit code ``status`` (negative: the signal) ended, in words."""
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"
