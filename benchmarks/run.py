"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--peers]``.

Order: one gateway in front of a mock process for latency, throughput, streaming, memory and
the soak; then a gateway in front of an in-process mock for the disconnect storm; then a fresh
gateway for the recording count. The gateway is pinned to core 0, this process (the load
generator) and the mock to core 1. Results go to ``benchmarks/results/<date-time>/``.

``--peers`` (``make bench-peers``) adds a LiteLLM proxy (:mod:`benchmarks.peers`) in front of
the same mock, also on core 0, as a third side of latency, throughput and streaming, and
leaves out the gateway-only scenarios so the run stays under 10 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from benchmarks import blocking, disconnect, recording, streaming
from benchmarks.floor import floor
from benchmarks.peers import PEER_NAME, litellm_process
from benchmarks.processes import LOAD_CPU, gateway_process, mock_process, pin
from benchmarks.procstat import machine
from benchmarks.report import write
from benchmarks.results import Outcome
from benchmarks.targets import Sides

__all__ = ["Plan", "main"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of everything a run does."""

    latency_samples: int
    throughput_seconds: float
    throughput_levels: tuple[int, ...]
    ttfe_samples: int
    stream_levels: tuple[int, ...]
    memory_streams: int
    soak_seconds: float
    storm_streams: int
    recorded: int


FULL = Plan(1000, 5.0, (1, 16, 64), 200, (50, 150, 300), 300, 300.0, 1000, 10_000)
QUICK = Plan(200, 2.0, (16, 64), 40, (50, 300), 200, 15.0, 300, 2_000)


def _main_gateway(plan: Plan, *, peers: bool) -> list[Outcome]:
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(mock_process())
        gateway = stack.enter_context(gateway_process(mock.port))
        peer = stack.enter_context(litellm_process(mock.port)) if peers else None
        pids = {"gateway": gateway.pid, "mock": mock.pid, "load": os.getpid()}
        if peer is not None:
            pids["peer"] = peer.pid
        sides = Sides.of(gateway.port, mock.port, None if peer is None else peer.port, PEER_NAME)

        async def measure() -> list[Outcome]:
            # Memory first: later scenarios raise the heap's high-water mark, which
            # would hide the memory that open streams take. A run with the peer measures
            # only what it compares side by side.
            outcomes: list[Outcome] = []
            if not peers:
                outcomes.append(
                    await streaming.open_stream_memory(
                        gateway.port, gateway.pid, plan.memory_streams
                    )
                )
            outcomes += [
                await blocking.added_latency(sides, pids, (9_000, 150_000), plan.latency_samples),
                await blocking.throughput(
                    sides, pids, plan.throughput_levels, plan.throughput_seconds
                ),
                await streaming.time_to_first_event(sides, pids, plan.ttfe_samples),
                await streaming.concurrent_streams(sides, pids, plan.stream_levels),
            ]
            if not peers:
                outcomes.append(await streaming.soak(gateway.port, gateway.pid, plan.soak_seconds))
            return outcomes

        outcomes = trio.run(measure)
        # The same server and client with nothing else, in front of the same mock: what
        # the stack allows, next to what the gateway reached.
        outcomes.append(floor(mock.port, mock.pid, plan.throughput_seconds))
        return outcomes


def _storm(plan: Plan) -> Outcome:
    async def measure() -> Outcome:
        mock = disconnect.CutWatchingMock()
        async with trio.open_nursery() as nursery:
            mock_port: int = await nursery.start(mock.serve, "127.0.0.1", 0)
            with tempfile.TemporaryDirectory(prefix="bridge-bench-storm-") as directory:
                with gateway_process(mock_port, directory=Path(directory)) as gateway:
                    outcome = await disconnect.storm(
                        mock, gateway.port, gateway.pid, plan.storm_streams, 10
                    )
                outcome.checks.append(
                    disconnect.check_records(gateway.database, plan.storm_streams + 1)
                )
            nursery.cancel_scope.cancel()
        return outcome

    return trio.run(measure)


def _recording(plan: Plan) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="bridge-bench-rec-") as directory:
        with mock_process() as mock, gateway_process(mock.port, directory=Path(directory)) as gw:
            errors = trio.run(recording.send_requests, gw.port, plan.recorded, 16)
        outcome = recording.check_database(gw.database, plan.recorded, errors)
    outcome.checks.append(recording.store_throughput(plan.recorded))
    outcome.checks.append(recording.postgres_throughput(plan.recorded))
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shorter run (under 2 minutes)")
    parser.add_argument(
        "--peers",
        action="store_true",
        help=f"side by side with {PEER_NAME} (make bench-peers installs it): latency, "
        "throughput and streaming only; memory, soak, storm and recording are left out",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    pin(0, LOAD_CPU)
    outcomes = _main_gateway(plan, peers=args.peers)
    if not args.peers:
        outcomes += [_storm(plan), _recording(plan)]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    directory = Path(args.out) / stamp
    mode = "quick" if args.quick else "full"
    peer = PEER_NAME if args.peers else ""
    if peer:
        mode += f", side by side with {peer}"
    report = write(directory, outcomes, machine(), mode, peer)
    print(report)
    print(f"written to {directory}")


if __name__ == "__main__":
    main()
