"""Unit tests of :class:`bridge.core.relay.Relay` against a sink that records its calls.

The relay's promises (bridge/core/relay.py): the status line goes out with the first
frame, a committed whole response only at ``close()``, pings only after ``interval`` of
silence on a started, incomplete stream, and a write that outlasts ``write_timeout``
gives the client up (``on_stall``, ``stalled``). Time is trio's autojump clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from bridge.core.relay import SSE_HEADERS, Relay

PING = b": ping\n\n"


class RecordingSink:
    """A :class:`~bridge.core.exchange.ResponseSink` that records every call in order.

    With ``block_sends`` set, ``send`` and ``end`` wait forever (a client that stopped
    reading); ``disconnected`` ends :meth:`wait_disconnected`.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.block_sends = False
        self.disconnected = trio.Event()

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.calls.append(("start", (status, list(headers))))

    async def send(self, data: bytes) -> None:
        if self.block_sends:
            await trio.sleep_forever()
        self.calls.append(("send", data))

    async def end(self, last: bytes = b"") -> None:
        if self.block_sends:
            await trio.sleep_forever()
        self.calls.append(("end", last))

    async def wait_disconnected(self) -> None:
        await self.disconnected.wait()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def sent(self) -> list[object]:
        return [data for kind, data in self.calls if kind == "send"]


async def test_nothing_is_written_before_the_first_frame() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    assert (relay.started, relay.status, sink.calls) == (False, None, [])
    await relay.close()  # not started: nothing to end
    assert sink.calls == []
    assert not relay.frames_delivered


async def test_first_frame_starts_a_200_event_stream() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.send_frame(b"data: 1\n\n")
    await relay.send_frames([b"data: 2\n\n", b"data: 3\n\n"])
    assert sink.calls == [
        ("start", (200, list(SSE_HEADERS))),
        ("send", b"data: 1\n\n"),
        ("send", b"data: 2\n\n"),
        ("send", b"data: 3\n\n"),
    ]
    assert (relay.started, relay.status, relay.complete) == (True, 200, False)
    assert relay.frames_delivered


async def test_respond_is_written_only_at_close_with_a_content_length() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.respond(429, [("content-type", "application/json")], b'{"x":1}')
    assert sink.calls == []  # committed, not written
    assert (relay.started, relay.complete, relay.status) == (True, True, 429)
    assert not relay.frames_delivered  # a committed response is not a delivered stream
    await relay.close()
    assert sink.calls == [
        ("start", (429, [("content-type", "application/json"), ("content-length", "7")])),
        ("end", b'{"x":1}'),
    ]
    await relay.close()  # once only
    assert len(sink.calls) == 2


async def test_respond_after_the_stream_started_is_refused() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.send_frame(b"data: 1\n\n")
    with pytest.raises(RuntimeError, match="error frame"):
        await relay.respond(500, [], b"late")
    assert sink.kinds() == ["start", "send"]


async def test_stream_headers_keep_their_own_content_type_and_cache_control() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    relay.set_stream_headers(
        [
            ("content-type", "application/json"),
            ("cache-control", "max-age=3600"),
            ("request-id", "req_1"),
            ("anthropic-ratelimit-requests-remaining", "9"),
        ]
    )
    await relay.send_frame(b"data: 1\n\n")
    _, (status, headers) = sink.calls[0]  # type: ignore[misc]
    assert status == 200
    assert headers == [
        *SSE_HEADERS,
        ("request-id", "req_1"),
        ("anthropic-ratelimit-requests-remaining", "9"),
    ]


async def test_finish_sends_the_end_frame_then_close_ends_the_body() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.send_frame(b"data: 1\n\n")
    await relay.finish(b"data: [DONE]\n\n")
    assert relay.complete
    assert not relay.ended
    await relay.finish(b"data: [DONE]\n\n")  # complete: no second end frame
    await relay.close()
    assert sink.calls[1:] == [("send", b"data: 1\n\n"), ("send", b"data: [DONE]\n\n"), ("end", b"")]
    assert relay.ended
    assert relay.frames_delivered


async def test_finish_before_the_stream_started_writes_nothing() -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.finish(b"data: [DONE]\n\n")
    await relay.close()
    assert sink.calls == []
    assert not relay.started


async def test_pings_only_after_an_interval_of_silence_on_a_started_stream(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Time moves only when the test jumps the clock; each jump then lets the relay's
    keep-alive task run to its next wait."""
    sink = RecordingSink()
    relay = Relay(sink)
    done = trio.Event()
    pings_at: list[float] = []
    start = trio.current_time()

    async def waiting() -> None:
        await done.wait()

    async def advance(seconds: float) -> None:
        mock_clock.jump(seconds)
        await trio.testing.wait_all_tasks_blocked()

    async def script() -> None:
        await advance(25)  # not started: silence costs nothing, no ping
        assert sink.calls == []
        await relay.send_frame(b"data: 1\n\n")
        await advance(9)  # less than the interval since the frame: still no ping
        assert sink.sent() == [b"data: 1\n\n"]
        await advance(1)  # 10 s after the frame: one ping
        await advance(1)
        assert sink.sent() == [b"data: 1\n\n", PING]
        await relay.send_frame(b"data: 2\n\n")  # a frame resets the silence
        await advance(9.5)
        assert sink.sent()[-1] == b"data: 2\n\n"
        await relay.finish()
        await advance(100)  # complete: no ping follows
        done.set()

    original = sink.send

    async def timed_send(data: bytes) -> None:
        if data == PING:
            pings_at.append(trio.current_time() - start)
        await original(data)

    sink.send = timed_send  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        await relay.keep_alive_while(waiting, PING, interval=10)
    assert sink.sent() == [b"data: 1\n\n", PING, b"data: 2\n\n"]
    assert pings_at == [pytest.approx(35)]


async def test_keep_alive_without_a_ping_just_waits(autojump_clock: trio.testing.MockClock) -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.send_frame(b"data: 1\n\n")
    with trio.move_on_after(1000):
        await relay.keep_alive_while(trio.sleep_forever, None, interval=1)
    assert sink.sent() == [b"data: 1\n\n"]


async def test_keep_alive_returns_when_waiting_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = RecordingSink()
    relay = Relay(sink)
    await relay.send_frame(b"data: 1\n\n")
    calls = 0

    async def waiting() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            await trio.sleep_forever()  # cancelled at each ping time, called again

    await relay.keep_alive_while(waiting, PING, interval=5)
    assert calls == 3
    assert sink.sent() == [b"data: 1\n\n", PING, PING]


async def test_a_write_past_the_timeout_stalls_the_relay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = RecordingSink()
    relay = Relay(sink, write_timeout=30)
    stalls: list[float] = []
    relay.on_stall = lambda: stalls.append(trio.current_time())
    start = trio.current_time()
    await relay.send_frame(b"data: 1\n\n")
    assert not relay.stalled
    assert relay.frames_delivered
    sink.block_sends = True
    await relay.send_frame(b"data: 2\n\n")  # returns: given up after write_timeout
    assert relay.stalled
    assert stalls == [pytest.approx(start + 30)]
    assert not relay.frames_delivered  # a frame was dropped
    assert sink.sent() == [b"data: 1\n\n"]


async def test_a_stalled_close_gives_up_too(autojump_clock: trio.testing.MockClock) -> None:
    sink = RecordingSink()
    relay = Relay(sink, write_timeout=5)
    await relay.respond(200, [], b"body")
    sink.block_sends = True
    with trio.fail_after(60):
        await relay.close()
    assert relay.stalled
    assert relay.ended
    assert sink.kinds() == ["start"]


async def test_a_write_cut_short_is_not_delivered(autojump_clock: trio.testing.MockClock) -> None:
    sink = RecordingSink()
    relay = Relay(sink)  # no write timeout: the write waits until cancelled
    await relay.send_frame(b"data: 1\n\n")
    sink.block_sends = True
    with trio.move_on_after(3):
        await relay.send_frame(b"data: 2\n\n")
    assert not relay.stalled
    assert not relay.frames_delivered
