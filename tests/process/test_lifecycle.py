"""The life of an interception: client disconnects, pings, auth, shutdown, embedding."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from bridge import AuthConfig, MemoryStore, Outcome, Request, open_bridge, serve
from bridge.core.relay import Relay
from bridge.dialects.anthropic import AnthropicMessages
from bridge.mock.upstream import MockUpstream

from ..conftest import Gateway, gateway_config

SLOW = {"x-mock-scenario": "anthropic_slow_stream", "x-api-key": "k"}
BODY = (
    b'{"model":"claude-sonnet-4-6","max_tokens":50,"stream":true,'
    b'"messages":[{"role":"user","content":"count"}]}'
)


async def test_client_disconnect_closes_upstream_and_records_what_was_known(
    gateway: Gateway,
) -> None:
    async with (
        httpx2.AsyncClient() as client,
        client.stream(
            "POST",
            f"{gateway.url}/anthropic/v1/messages",
            content=BODY,
            headers={**SLOW, "x-mock-pace-ms": "20"},
        ) as response,
    ):
        assert response.status_code == 200
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("event: content_block_delta")
            if seen == 3:
                break
    # Leaving the block closed the client connection mid-stream.
    with trio.fail_after(5):
        await gateway.mock.wait_disconnect()
    with trio.fail_after(5):
        await gateway.bridge.wait_idle()
    await gateway.flush()
    [row] = gateway.store.interceptions()
    assert row["outcome"] == "client_disconnected"
    [usage] = gateway.store.token_usages(row["id"])
    assert usage["input"] > 0  # message_start's usage was known when the client left


class _FakeSink:
    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.started = False

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.started = True

    async def send(self, data: bytes) -> None:
        self.frames.append((trio.current_time(), data))

    async def end(self, last: bytes = b"") -> None:
        if last:
            self.frames.append((trio.current_time(), last))

    async def wait_disconnected(self) -> None:
        await trio.sleep_forever()


async def test_silent_stream_gets_a_ping_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = _FakeSink()
    relay = Relay(sink)
    ping = AnthropicMessages().ping_frame()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.keep_alive_while, trio.sleep_forever, ping, 10.0)
        await trio.sleep(30)  # virtual time: not started yet, so no pings
        assert sink.frames == []
        await relay.send_frame(b"event: a\ndata: {}\n\n")
        await trio.sleep(5)
        await relay.send_frame(b"event: b\ndata: {}\n\n")  # resets the timer
        await trio.sleep(25)
        await relay.finish()
        await trio.sleep(30)  # no pings after the stream is complete
        nursery.cancel_scope.cancel()
    pings = [t for t, frame in sink.frames if frame == ping]
    assert pings == [45.0, 55.0]
    assert ping == b'event: ping\ndata: {"type": "ping"}\n\n'


async def test_header_auth_mode_attributes_and_strips_the_header(start_gateway: Any) -> None:
    gateway: Gateway = await start_gateway(auth=AuthConfig(mode="header", header="X-Bridge-User"))
    async with httpx2.AsyncClient() as client:
        body = BODY.replace(b'"stream":true,', b"")
        refused = await client.post(f"{gateway.url}/anthropic/v1/messages", content=body)
        accepted = await client.post(
            f"{gateway.url}/anthropic/v1/messages",
            content=body,
            headers={"x-bridge-user": "alice"},
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert accepted.status_code == 200
    assert len(gateway.mock.requests) == 1
    assert gateway.mock.requests[0].header("x-bridge-user") is None
    await gateway.flush()
    assert [r["initiator_id"] for r in gateway.store.interceptions()] == ["alice"]


async def test_embedded_bridge_serves_without_an_http_server(
    nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    store = MemoryStore()
    async with open_bridge(config, store=store) as bridge:
        response = await bridge.handle(
            Request("POST", "/anthropic/v1/messages", body=BODY.replace(b'"stream":true,', b""))
        )
        assert response.status == 200
        assert response.header("content-type") == "application/json"
        async with bridge.stream(Request("POST", "/anthropic/v1/messages", body=BODY)) as streamed:
            assert streamed.status == 200
            frames = [chunk async for chunk in streamed.aiter_bytes()]
        assert frames[-1].startswith(b"event: message_stop")
    outcomes = [row["outcome"] for row in store.interceptions()]
    assert outcomes == [Outcome.COMPLETED, Outcome.COMPLETED]
    assert [row["initiator_id"] for row in store.interceptions()] == ["anonymous", "anonymous"]


async def test_embedded_stream_left_early_is_a_client_disconnect(
    nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    store = MemoryStore()
    async with open_bridge(config, store=store) as bridge:
        request = Request(
            "POST",
            "/anthropic/v1/messages",
            headers=[("x-mock-scenario", "anthropic_slow_stream"), ("x-mock-pace-ms", "10")],
            body=BODY,
        )
        async with bridge.stream(request) as streamed:
            async for _ in streamed.aiter_bytes():
                break
        with trio.fail_after(5):
            await mock.wait_disconnect()
    [interception] = store.interceptions()
    assert interception["outcome"] == Outcome.CLIENT_DISCONNECTED


async def test_an_intercepted_stream_silent_between_events_gets_pings(
    nursery: trio.Nursery,
    mock: MockUpstream,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through the whole interception (its client watcher sends them): a ping after each
    ``ping_interval`` of upstream silence, none before the stream started, and the
    events themselves unchanged and in order."""
    config = gateway_config(tmp_path, mock.port, ping_interval=10.0)  # type: ignore[attr-defined]
    async with open_bridge(config, store=MemoryStore()) as bridge:
        request = Request(
            "POST",
            "/anthropic/v1/messages",
            headers=[("x-mock-scenario", "anthropic_slow_stream"), ("x-mock-pace-ms", "25000")],
            body=BODY,
        )
        frames: list[tuple[float, bytes]] = []
        async with bridge.stream(request) as streamed:
            async for chunk in streamed.aiter_bytes():
                if trio.current_time() >= 50:
                    break
                frames.append((trio.current_time(), chunk))
    # Upstream events at 0 and 25 s; between them, and after, a ping every 10 s of silence.
    # (The upstream sends pings of the same shape too, but only with its events.)
    ping = AnthropicMessages().ping_frame()
    pings = [at for at, frame in frames if frame == ping and at % 25]
    assert pings == [10.0, 20.0, 35.0, 45.0], [(at, frame[:20]) for at, frame in frames]
    events = [(at, frame) for at, frame in frames if at not in pings]
    assert [at for at, _ in events] == [0.0, 25.0]
    assert events[0][1].startswith(b"event: message_start")


async def _stream_in_background(
    url: str, received: list[bytes], first: trio.Event, done: trio.Event
) -> None:
    try:
        async with (
            httpx2.AsyncClient() as client,
            client.stream(
                "POST",
                f"{url}/anthropic/v1/messages",
                content=BODY,
                headers={**SLOW, "x-mock-pace-ms": "5"},
            ) as response,
        ):
            async for chunk in response.aiter_bytes():
                received.append(chunk)
                first.set()
    except httpx2.RemoteProtocolError:
        received.append(b"<cut>")  # a stream cancelled at shutdown ends without its last chunk
    done.set()


@pytest.mark.parametrize("grace", [30.0, 0.0], ids=["drained", "cancelled"])
async def test_sigterm_drains_in_flight_streams_then_exits(
    mock: MockUpstream, tmp_path: Path, grace: float
) -> None:
    config = gateway_config(tmp_path, mock.port, grace_period=grace)  # type: ignore[attr-defined]
    received: list[bytes] = []
    first, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, config))
        nursery.start_soon(_stream_in_background, binds[0], received, first, done)
        await first.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        with trio.fail_after(10):
            await done.wait()
    # serve() returned: the recorder was drained into the database.
    from bridge.recording.sqlite import SQLiteStore

    with SQLiteStore(tmp_path / "bridge.db") as store:
        [row] = store.interceptions()
    body = b"".join(received)
    if grace:
        assert body.rstrip().endswith(b'data: {"type":"message_stop"}')
        assert row["outcome"] == "completed"
    else:
        assert b"message_stop" not in body
        assert body.endswith(b"<cut>")
        assert row["outcome"] == "failed"
        assert row["error"] == "cancelled: the gateway is shutting down"


class _StuckSink(_FakeSink):
    """A client that stopped reading: writes block once its buffers are full."""

    def __init__(self, writes_before_stuck: int) -> None:
        super().__init__()
        self.left = writes_before_stuck

    async def send(self, data: bytes) -> None:
        if self.left == 0:
            await trio.sleep_forever()
        self.left -= 1
        await super().send(data)


async def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = _StuckSink(writes_before_stuck=2)
    relay = Relay(sink, write_timeout=60.0)
    stalled: list[float] = []
    with trio.CancelScope() as scope:

        def gone() -> None:
            stalled.append(trio.current_time())
            scope.cancel()

        relay.on_stall = gone
        for n in range(10):
            await relay.send_frame(b"event: e\ndata: %d\n\n" % n)
    assert relay.stalled
    assert stalled == [60.0]  # given up exactly at the timeout, not before
    assert len(sink.frames) == 2


async def test_sigterm_during_200_streams_lets_them_all_finish_and_records_each(
    mock: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    streams = 200
    started = 0
    all_started = trio.Event()
    finished: list[bytes] = []

    async def stream(url: str, client: httpx2.AsyncClient) -> None:
        nonlocal started
        async with client.stream(
            "POST",
            f"{url}/anthropic/v1/messages",
            content=BODY,
            headers={"x-mock-scenario": "anthropic_text", "x-mock-pace-ms": "50", "x-api-key": "k"},
        ) as response:
            body = b""
            async for chunk in response.aiter_bytes():
                if not body:
                    started += 1
                    if started == streams:
                        all_started.set()
                body += chunk
        finished.append(body)

    limits = httpx2.Limits(max_connections=streams, max_keepalive_connections=0)
    async with (
        httpx2.AsyncClient(limits=limits, timeout=None) as client,
        trio.open_nursery() as nursery,
    ):
        binds = await nursery.start(partial(serve, config))
        async with trio.open_nursery() as clients:
            for _ in range(streams):
                clients.start_soon(stream, binds[0], client)
            with trio.fail_after(30):
                await all_started.wait()
            os.kill(os.getpid(), signal.SIGTERM)  # all 200 are mid-stream
    assert len(finished) == streams
    assert all(body.rstrip().endswith(b'data: {"type":"message_stop"}') for body in finished)
    from bridge.recording.sqlite import SQLiteStore

    with SQLiteStore(tmp_path / "bridge.db") as store:
        rows = store.interceptions()
    assert len(rows) == streams
    assert {row["outcome"] for row in rows} == {"completed"}


async def test_a_second_signal_cancels_in_flight_streams_at_once_and_still_records(
    mock: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    streams = 20
    started = 0
    all_started = trio.Event()
    cut = 0

    async def stream(url: str, client: httpx2.AsyncClient) -> None:
        nonlocal started, cut
        try:
            async with client.stream(
                "POST",
                f"{url}/anthropic/v1/messages",
                content=BODY,
                headers={**SLOW, "x-mock-pace-ms": "50"},  # 200 events: about 10 s each
            ) as response:
                async for _ in response.aiter_bytes():
                    if started < streams:
                        started += 1
                        if started == streams:
                            all_started.set()
        except httpx2.RemoteProtocolError:
            cut += 1

    limits = httpx2.Limits(max_connections=streams, max_keepalive_connections=0)
    async with (
        httpx2.AsyncClient(limits=limits, timeout=None) as client,
        trio.open_nursery() as nursery,
    ):
        draining = trio.Event()
        binds = await nursery.start(partial(serve, config, draining=draining))  # grace: 30 s
        async with trio.open_nursery() as clients:
            for _ in range(streams):
                clients.start_soon(stream, binds[0], client)
            with trio.fail_after(30):
                await all_started.wait()
                os.kill(os.getpid(), signal.SIGTERM)  # drain...
                await draining.wait()  # (trio merges a signal repeated before it is read)
            os.kill(os.getpid(), signal.SIGTERM)  # ...no: stop at once
    assert cut == streams  # nobody waited for the 10 s streams to end
    from bridge.recording.sqlite import SQLiteStore

    with SQLiteStore(tmp_path / "bridge.db") as store:
        rows = store.interceptions()
    assert len(rows) == streams  # every one still has its ended record
    assert {(r["outcome"], r["error"]) for r in rows} == {
        ("failed", "cancelled: the gateway is shutting down")
    }
