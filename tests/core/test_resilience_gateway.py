"""Upstream resilience over real HTTP: circuit breakers, retries, key failover.

Time is Trio's MockClock: the breaker's open timeout is crossed with
``mock_clock.jump`` and retry waits pass by autojump, so nothing sleeps.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx2
import pytest
import trio
import trio.testing

from bridge.config import BreakerConfig

from ..conftest import CENTRAL_KEY, Gateway

OVERLOADED = "anthropic_overloaded_midstream"  # blocking form: 529 with retry-after: 3


def body(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 16,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def send(
    gateway: Gateway, model: str, scenario: str = "anthropic_text", **headers: str
) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=None) as client:
        return await client.post(
            f"{gateway.url}/anthropic/v1/messages",
            json=body(model),
            headers={"x-mock-scenario": scenario, **headers},
        )


@pytest.fixture
async def breaker_gateway(start_gateway: Any) -> Gateway:
    breaker = BreakerConfig(failure_threshold=5, interval=10, timeout=30, max_requests=3)
    gateway: Gateway = await start_gateway(provider_changes={"circuit_breaker": breaker})
    return gateway


async def trip(gateway: Gateway, model: str) -> None:
    for _ in range(5):
        assert (await send(gateway, model, OVERLOADED)).status_code == 529


async def test_overload_storm_trips_only_that_model(
    breaker_gateway: Gateway, mock_clock: trio.testing.MockClock
) -> None:
    gateway = breaker_gateway
    await trip(gateway, "claude-storm")
    calls = len(gateway.mock.requests)
    rejected = await send(gateway, "claude-storm")
    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "30"
    assert rejected.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "circuit breaker is open"},
    }
    assert len(gateway.mock.requests) == calls  # the upstream was not called
    assert (await send(gateway, "claude-calm")).status_code == 200  # other models still work
    await gateway.flush()
    outcomes = [r["outcome"] for r in gateway.store.interceptions()]
    assert outcomes.count("rejected") == 1
    assert outcomes.count("failed") == 5


async def test_full_recovery_cycle(
    breaker_gateway: Gateway, mock_clock: trio.testing.MockClock
) -> None:
    gateway = breaker_gateway
    await trip(gateway, "claude-x")
    assert (await send(gateway, "claude-x")).status_code == 503
    mock_clock.jump(31)  # open -> half-open
    for _ in range(3):  # max_requests successes close it
        assert (await send(gateway, "claude-x")).status_code == 200
    await gateway.bridge.wait_idle()
    [(_, endpoint, model, state, trips, rejects)] = gateway.bridge.breakers.snapshot()
    assert (endpoint, model, state.value, trips, rejects) == (
        "/v1/messages",
        "claude-x",
        "closed",
        1,
        1,
    )


async def test_half_open_failure_reopens(
    breaker_gateway: Gateway, mock_clock: trio.testing.MockClock
) -> None:
    gateway = breaker_gateway
    await trip(gateway, "claude-y")
    mock_clock.jump(31)
    assert (await send(gateway, "claude-y", OVERLOADED)).status_code == 529
    assert (await send(gateway, "claude-y")).status_code == 503


async def test_half_open_admits_max_requests_of_concurrent_requests(
    breaker_gateway: Gateway, mock_clock: trio.testing.MockClock
) -> None:
    gateway = breaker_gateway
    await trip(gateway, "claude-z")
    mock_clock.jump(31)
    statuses: list[int] = []
    started = trio.Event()

    async def stream_one(client: httpx2.AsyncClient) -> None:
        async with client.stream(
            "POST",
            f"{gateway.url}/anthropic/v1/messages",
            json=body("claude-z", stream=True),
            headers={"x-mock-scenario": "anthropic_slow_stream", "x-mock-pace-ms": "1000"},
        ) as response:
            statuses.append(response.status_code)
            if len(statuses) == 5:
                started.set()
            await response.aread()

    async with httpx2.AsyncClient(timeout=None) as client, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(stream_one, client)
        await started.wait()  # 3 streams admitted and held open by the paced mock
        assert sorted(statuses) == [200, 200, 200, 503, 503]
        nursery.cancel_scope.cancel()


async def test_retries_honour_retry_after(
    start_gateway: Any, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # retry waits pass when nothing else is running
    gateway: Gateway = await start_gateway(provider_changes={"max_retries": 2})
    start = trio.current_time()
    response = await send(gateway, "claude-r", OVERLOADED)
    elapsed = trio.current_time() - start
    assert response.status_code == 529
    assert len(gateway.mock.requests) == 3  # the first call and two retries
    assert elapsed == pytest.approx(6, abs=0.5)  # twice the upstream's retry-after: 3


async def test_a_client_error_is_not_retried(start_gateway: Any) -> None:
    gateway: Gateway = await start_gateway(provider_changes={"max_retries": 2})
    # 400 is final: retrying cannot fix the request.
    assert (await send(gateway, "m", "anthropic_error_400")).status_code == 400
    assert len(gateway.mock.requests) == 1


async def key_gateway(start_gateway: Any) -> Gateway:
    gateway: Gateway = await start_gateway(
        provider_changes={"keys": ("sk-ant-second-key-2222222222",), "key_cooldown": 600.0}
    )
    return gateway


async def test_rate_limited_key_fails_over_to_the_next(start_gateway: Any) -> None:
    gateway = await key_gateway(start_gateway)
    response = await send(gateway, "m", **{"x-mock-key-status": f"{CENTRAL_KEY}=429"})
    assert response.status_code == 200
    first, second = gateway.mock.requests
    assert first.header("x-api-key") == CENTRAL_KEY
    assert second.header("x-api-key") == "sk-ant-second-key-2222222222"
    # The rate-limited key rests: the next request goes straight to the second key.
    await send(gateway, "m", **{"x-mock-key-status": f"{CENTRAL_KEY}=429"})
    assert gateway.mock.requests[-1].header("x-api-key") == "sk-ant-second-key-2222222222"
    assert len(gateway.mock.requests) == 3


async def test_revoked_key_is_taken_out_of_rotation(start_gateway: Any) -> None:
    gateway = await key_gateway(start_gateway)
    assert (
        await send(gateway, "m", **{"x-mock-key-status": f"{CENTRAL_KEY}=401"})
    ).status_code == 200
    for _ in range(3):
        await send(gateway, "m")
    keys = [r.header("x-api-key") for r in gateway.mock.requests[2:]]
    assert keys == ["sk-ant-second-key-2222222222"] * 3


async def test_exhausted_pool_answers_429_with_the_soonest_retry_after(start_gateway: Any) -> None:
    gateway = await key_gateway(start_gateway)
    both = f"{CENTRAL_KEY}=429,sk-ant-second-key-2222222222=429"
    first = await send(gateway, "m", **{"x-mock-key-status": both})
    assert first.status_code == 429  # both tried; the upstream's answer is relayed
    calls = len(gateway.mock.requests)
    second = await send(gateway, "m")
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(second.headers["retry-after"]) <= 30
    assert len(gateway.mock.requests) == calls  # no key left: the upstream is not called


async def test_byok_never_fails_over(start_gateway: Any) -> None:
    gateway = await key_gateway(start_gateway)
    response = await send(
        gateway,
        "m",
        **{
            "x-api-key": "sk-ant-users-own-key-000",
            "x-mock-key-status": "sk-ant-users-own-key-000=429",
        },
    )
    assert response.status_code == 429
    assert [r.header("x-api-key") for r in gateway.mock.requests] == ["sk-ant-users-own-key-000"]
    assert json.loads(response.content)["error"]["type"] == "rate_limit_error"


async def test_a_request_abandoned_while_half_open_does_not_wedge_the_breaker(
    start_gateway: Any, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A client leaving before the upstream answers returns its half-open ticket."""
    calls = 0
    stalled = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        nonlocal calls
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        calls += 1
        if calls <= 5:
            status, body = (
                b"529 Overloaded",
                b'{"type":"error","error":{"type":"overloaded_error","message":"x"}}',
            )
        elif calls == 6:
            stalled.set()
            await trio.sleep_forever()  # never answers: the client will give up
        else:
            status, body = (
                b"200 OK",
                json.dumps(
                    {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": "m",
                        "content": [],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 1, "output_tokens": 1},
                    }
                ).encode(),
            )
        await stream.send_all(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )

    listeners = await nursery.start(partial(trio.serve_tcp, upstream, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    breaker = BreakerConfig(failure_threshold=5, timeout=30, max_requests=1)
    gateway: Gateway = await start_gateway(
        upstream_url=f"http://127.0.0.1:{port}/", provider_changes={"circuit_breaker": breaker}
    )
    for _ in range(5):
        assert (await send(gateway, "claude-h")).status_code == 529
    mock_clock.jump(31)  # half-open: one request may go through

    async with trio.open_nursery() as inner:
        inner.start_soon(send, gateway, "claude-h")
        await stalled.wait()
        inner.cancel_scope.cancel()  # that client gives up before any answer
    await gateway.bridge.wait_idle()
    assert (await send(gateway, "claude-h")).status_code == 200  # not wedged half-open


STALL = {"x-mock-fault": "stall-before-headers"}


async def test_a_response_timeout_is_retried_then_answered_with_504(
    start_gateway: Any, mock_clock: trio.testing.MockClock
) -> None:
    """No response headers within response_timeout: the connection is closed and the call
    retried like a connection error; when the retries are spent, 504 in Anthropic's shape."""
    mock_clock.autojump_threshold = 0.05  # the stalls pass when nothing else is running
    gateway: Gateway = await start_gateway(
        provider_changes={"max_retries": 1, "response_timeout": 5.0}
    )
    start = trio.current_time()
    response = await send(gateway, "claude-t", **STALL)
    assert response.status_code == 504
    assert len(gateway.mock.requests) == 2  # the first call and one retry
    assert trio.current_time() - start >= 10  # each attempt waited its whole timeout
    error = response.json()["error"]
    assert "providers.anthropic.response_timeout" in error["message"]
    await gateway.flush()
    [row] = gateway.store.interceptions()
    assert row["outcome"] == "failed"


async def test_upstream_timeouts_count_against_the_breaker(
    start_gateway: Any, mock_clock: trio.testing.MockClock
) -> None:
    """A stream the upstream stops feeding (its 200 headers came) counts as a failure once
    stream_idle_timeout cuts it, like a response that never came: five of them open it."""
    mock_clock.autojump_threshold = 0.05
    breaker = BreakerConfig(failure_threshold=5, interval=0, timeout=30, max_requests=1)
    gateway: Gateway = await start_gateway(
        provider_changes={
            "circuit_breaker": breaker,
            "response_timeout": 3.0,
            "stream_idle_timeout": 3.0,
        }
    )
    headers = {
        "x-mock-scenario": "anthropic_text",
        "x-mock-fault": "stall-between-events",
        "x-mock-fault-after": "2",
    }
    async with httpx2.AsyncClient(timeout=None) as client:
        for _ in range(4):
            response = await client.post(
                f"{gateway.url}/anthropic/v1/messages",
                json=body("claude-i", stream=True),
                headers=headers,
            )
            assert response.status_code == 200  # the stream had started: an error event
            assert "providers.anthropic.stream_idle_timeout" in response.text
    assert (await send(gateway, "claude-i", **STALL)).status_code == 504  # the fifth
    calls = len(gateway.mock.requests)
    rejected = await send(gateway, "claude-i")
    assert rejected.status_code == 503  # open: five timeouts in a row
    assert len(gateway.mock.requests) == calls
