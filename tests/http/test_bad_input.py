"""Hostile and broken input on every route: never a 500, never a traceback, nothing upstream.

Hypothesis drives the engine through the embedding API (the same code the HTTP layer
calls), which keeps hundreds of examples fast; a few cases go over real HTTP.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import httpx2
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.procstat import rss_bytes
from bridge import Config, MemoryStore, ProviderConfig, Request, open_bridge
from bridge.config import AuthConfig

from ..conftest import Gateway
from ..processes import gateway_process

BRIDGED = [
    "/anthropic/v1/messages",
    "/openai/v1/chat/completions",
    "/openai/v1/responses",
    "/copilot/chat/completions",
    "/copilot/responses",
]
PATHS = [
    *BRIDGED,
    "/anthropic/v1/models",
    "/openai/v1/models/x",
    "/anthropic/v1/../../etc/passwd",
    "/anthropic/v1/models/%2e%2e/%2e%2e/x",
    "/nowhere",
    "/",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "model": json_values,
            "messages": json_values,
            "input": json_values,
            "stream": json_values,
        },
        optional={"background": json_values, "tools": json_values, "tool_choice": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)


def nested(depth: int, opener: str, leaf: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + leaf + closer * depth).encode()


# What the JSON decoder itself can trip on: nesting (around Python's recursion limit and
# far past it), duplicate keys, strings holding JSON (Claude Code's metadata.user_id),
# encodings, numbers out of float range, stray bytes after the document.
parser_hazards = st.one_of(
    st.builds(
        nested,
        st.integers(min_value=100, max_value=5000),
        st.sampled_from(["[", '{"a":']),
        st.sampled_from(["", "1", '"x"', "[", "}"]),
    ),
    st.builds(
        lambda key, a, b: (
            f'{{"{key}": {json.dumps(a)}, "messages": [], "{key}": {json.dumps(b)}}}'.encode()
        ),
        st.sampled_from(["model", "stream", "messages", "input", "x"]),
        json_values,
        json_values,
    ),
    st.builds(
        lambda depth: json.dumps(
            {"model": "m", "messages": [], "metadata": {"user_id": "[" * depth + "]" * depth}}
        ).encode(),
        st.integers(min_value=500, max_value=20000),
    ),
    st.builds(
        lambda value, encoding: json.dumps({"model": value, "messages": []}).encode(encoding),
        st.text(max_size=10),
        st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-16-le"]),
    ),
    st.builds(
        lambda digits, tail: (
            b'{"model": "m", "messages": [], "max_tokens": 1' + b"0" * digits + b"}" + tail
        ),
        st.integers(min_value=0, max_value=5000),
        st.binary(max_size=5),
    ),
)
bodies = st.one_of(bodies, parser_hazards)

header_names = st.sampled_from(
    ["authorization", "x-api-key", "x-bridge-key", "content-type", "user-agent", "x-anything"]
)
headers = st.lists(st.tuples(header_names, st.text(max_size=40)), max_size=4)


def config(mode: str) -> Config:
    dead = "http://127.0.0.1:9/"  # nothing listens there: a forwarded request would be a 502
    return Config(
        auth=AuthConfig(mode=mode),
        providers=(
            ProviderConfig(
                name="anthropic", type="anthropic", base_url=dead, key="k", max_retries=0
            ),
            ProviderConfig(
                name="openai", type="openai", base_url=dead + "v1/", key="k", max_retries=0
            ),
            ProviderConfig(name="copilot", type="copilot", base_url=dead, max_retries=0),
        ),
    )


@pytest.mark.parametrize("mode", ["keys", "none"])
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    path=st.sampled_from(PATHS),
    body=bodies,
    header_list=headers,
)
def test_bad_input_gets_a_clear_4xx_or_a_502_never_a_500(
    mode: str, method: str, path: str, body: bytes, header_list: list[tuple[str, str]]
) -> None:
    async def run() -> tuple[int, bytes]:
        async with open_bridge(config(mode), store=MemoryStore()) as bridge:
            with trio.fail_after(10):
                response = await bridge.handle(
                    Request(method, path, headers=header_list, body=body, client_address="1.2.3.4")
                )
            return response.status, response.body

    status, response_body = trio.run(run)
    assert status != 500, response_body
    assert b"Traceback" not in response_body
    if status >= 400:
        document = json.loads(response_body)  # always JSON in a provider's shape
        assert "error" in document
    if mode == "keys":
        assert status in (401, 404, 405), (status, response_body)  # no key: nothing goes further


async def test_header_injection_is_refused_by_the_server(gateway: Gateway) -> None:
    async with await trio.open_tcp_stream(
        "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])
    ) as stream:
        await stream.send_all(
            b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\n"
            b"x-evil: a\rinjected: b\r\ncontent-length: 2\r\n\r\n{}"
        )
        answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    assert gateway.mock.requests == []


async def test_key_in_the_query_string_is_not_a_credential(start_gateway: Any) -> None:
    gateway: Gateway = await start_gateway(auth=AuthConfig(mode="keys"))
    secret, _ = gateway.store.create_key("mallory", {})
    port = int(gateway.url.rsplit(":", 1)[1])
    # A raw request: an HTTP client library would log the URL, key included.
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        body = b'{"model": "m", "messages": []}'
        await stream.send_all(
            f"POST /anthropic/v1/messages?key={secret}&api_key={secret} HTTP/1.1\r\n"
            f"host: x\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401")
    assert gateway.mock.requests == []


async def test_an_endless_chunked_body_is_cut_at_the_limit(start_gateway: Any) -> None:
    """A body without a length that never ends: 413 once past the limit, the connection
    closes, and the gateway stopped reading (and buffering) right there."""
    gateway: Gateway = await start_gateway(server_changes={"max_body_bytes": 4096})
    port = int(gateway.url.rsplit(":", 1)[1])
    chunk = b"x" * 1024
    sent = 0
    answer = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )

        async def read_to_the_end() -> None:
            nonlocal answer
            while data := await stream.receive_some(65536):
                answer += data

        with trio.fail_after(10):  # a bound on the test, not a timing assertion
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_to_the_end)
                while not answer:
                    try:
                        await stream.send_all(b"400\r\n" + chunk + b"\r\n")
                    except trio.BrokenResourceError:
                        break
                    sent += len(chunk)
                    await trio.testing.wait_all_tasks_blocked()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent <= 4096 + 2 * len(chunk)  # answered as soon as the limit was passed
    assert gateway.mock.requests == []


class _Errors(logging.Handler):
    """Collects records at ERROR and above, and any record carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(BRIDGED), body=bodies)
def test_no_body_gives_a_500_or_logs_an_error_on_a_bridged_route(path: str, body: bytes) -> None:
    """The request parser's failure modes: whatever the body, a 4xx (or the dead
    upstream's 502), and nothing at ERROR level or with a traceback in the log."""

    async def run() -> tuple[int, bytes]:
        async with open_bridge(config("none"), store=MemoryStore()) as bridge:
            with trio.fail_after(10):
                response = await bridge.handle(Request("POST", path, body=body))
            return response.status, response.body

    errors = _Errors()
    logging.getLogger().addHandler(errors)
    try:
        status, response_body = trio.run(run)
    finally:
        logging.getLogger().removeHandler(errors)
    assert 400 <= status < 500 or status in (501, 502), (status, response_body[:300])
    assert json.loads(response_body)["error"]
    assert [r.getMessage() for r in errors.records] == []


# -- the intake: what the gateway does before it has read a body ---------------------------

BIG = 31 * 1024 * 1024


async def raw_exchange(
    port: int, head: bytes, *, body_size: int = 0, body: bytes = b""
) -> tuple[bytes, int]:
    """Send ``head`` then ``body`` (or ``body_size`` bytes of filler) while reading the answer
    to its end; return the answer and how many body bytes the gateway let the client send."""
    answer = b""
    sent = 0
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head)

        async def send_body() -> None:
            nonlocal sent
            chunk = b"x" * 65536
            try:
                if body:
                    await stream.send_all(body)
                    sent += len(body)
                while sent < body_size:
                    piece = chunk[: body_size - sent]
                    await stream.send_all(piece)
                    sent += len(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with trio.fail_after(120):  # a bound on the test, not a timing assertion
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_body)
                try:
                    while data := await stream.receive_some(65536):
                        answer += data
                except trio.BrokenResourceError:
                    pass  # reset after the answer: the gateway closed with unread bytes
                nursery.cancel_scope.cancel()
    return answer, sent


def head_of(path: str, length: int, *extra: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: x", f"content-length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_request_without_a_key_gets_401_before_its_body_is_read(
    start_gateway: Any,
) -> None:
    """Without a valid key the gateway answers from the headers and closes: it neither
    reads nor buffers the announced 31 MiB, so the client cannot finish sending it."""
    gateway: Gateway = await start_gateway(auth=AuthConfig(mode="keys"))
    port = int(gateway.url.rsplit(":", 1)[1])
    results: list[tuple[bytes, int]] = []

    async def one(path: str, *extra: str) -> None:
        results.append(await raw_exchange(port, head_of(path, BIG, *extra), body_size=BIG))

    async with trio.open_nursery() as nursery:
        for path in ["/anthropic/v1/messages", "/openai/v1/chat/completions"]:
            nursery.start_soon(one, path)
            nursery.start_soon(one, path, "x-api-key: bk-abcdefgh-" + "a" * 43)
    for answer, sent in results:
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"connection: close" in answer.lower()
        assert b"authentication_error" in answer
        assert sent < BIG // 2, sent  # the gateway stopped reading
    assert gateway.mock.requests == []


async def test_an_early_answer_closes_even_with_the_body_read_ahead(
    start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a key is looked up, hypercorn reads ahead into its queue for the request until
    the queue is full. Answering then must still end the exchange and close the
    connection (a disconnect queued behind a full queue used to wait for ever)."""
    gateway: Gateway = await start_gateway(auth=AuthConfig(mode="keys"))
    looked_up = threading.Event()

    def slow_find_key(secret: str) -> None:
        looked_up.wait(timeout=10)

    monkeypatch.setattr(gateway.store, "find_key", slow_find_key)
    port = int(gateway.url.rsplit(":", 1)[1])
    size = 16 * 1024 * 1024
    head = head_of("/anthropic/v1/messages", size, "x-api-key: bk-abcdefgh-" + "a" * 43)
    async with trio.open_nursery() as nursery:
        answer: list[tuple[bytes, int]] = []

        async def exchange() -> None:
            answer.append(await raw_exchange(port, head, body_size=size))

        nursery.start_soon(exchange)
        await trio.testing.wait_all_tasks_blocked()  # the client is stuck, the queue full
        looked_up.set()
    [(received, sent)] = answer
    assert received.startswith(b"HTTP/1.1 401"), received[:200]
    assert sent < size


async def test_a_body_slower_than_body_timeout_gets_408(
    start_gateway: Any, autojump_clock: trio.testing.MockClock
) -> None:
    gateway: Gateway = await start_gateway(server_changes={"body_timeout": 5.0})
    port = int(gateway.url.rsplit(":", 1)[1])
    answer, _ = await raw_exchange(
        port, head_of("/anthropic/v1/messages", 1000), body=b'{"model": "m", "mess'
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"body_timeout" in answer
    assert gateway.mock.requests == []


async def test_bodies_past_max_buffered_bytes_get_503_with_retry_after(
    start_gateway: Any,
) -> None:
    """One connection holds 40 KiB of a 64 KiB budget while sending slowly; a second
    announcing 40 KiB more is refused at once instead of growing the process."""
    gateway: Gateway = await start_gateway(
        server_changes={"max_body_bytes": 40 * 1024, "max_buffered_bytes": 64 * 1024}
    )
    port = int(gateway.url.rsplit(":", 1)[1])
    size = 40 * 1024
    async with await trio.open_tcp_stream("127.0.0.1", port) as holder:
        await holder.send_all(head_of("/anthropic/v1/messages", size) + b'{"model": ')
        await trio.testing.wait_all_tasks_blocked()  # the gateway is reading it
        answer, _ = await raw_exchange(
            port, head_of("/anthropic/v1/messages", size), body_size=size
        )
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"retry-after: " in answer.lower()
    assert b"max_buffered_bytes" in answer
    assert gateway.mock.requests == []


DEEP = [b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000]


@pytest.mark.parametrize("path", BRIDGED)
@pytest.mark.parametrize("shape", ["top", "inside"])
async def test_deeply_nested_json_gets_400_naming_the_limit_not_a_500(
    gateway: Gateway, path: str, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    body = deep if shape == "top" else b'{"model": "m", "messages": [], "input": ' + deep + b"}"
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}{path}", content=body)
    assert response.status_code == 400, response.text
    assert "128" in response.json()["error"]["message"]
    assert "nest" in response.json()["error"]["message"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert gateway.mock.requests == []


async def test_a_deep_json_string_in_claude_code_metadata_is_no_500(gateway: Gateway) -> None:
    user_id = "[" * 5000 + "]" * 5000
    body = {"model": "m", "max_tokens": 1, "messages": [], "metadata": {"user_id": user_id}}
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}/anthropic/v1/messages", json=body)
    assert response.status_code != 500, response.text


@pytest.mark.parametrize("path", BRIDGED)
@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "HEAD", "PATCH"])
async def test_bridged_routes_take_only_post(gateway: Gateway, path: str, method: str) -> None:
    body = json.dumps({"model": "m", "messages": [], "input": "hi"}).encode()
    async with httpx2.AsyncClient() as client:
        response = await client.request(method, f"{gateway.url}{path}", content=body)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    if method != "HEAD":
        assert "POST" in response.json()["error"]["message"]
    assert gateway.mock.requests == []


@pytest.mark.parametrize("key", ["model", "stream", "messages"])
async def test_duplicate_top_level_keys_are_refused_naming_the_key(
    gateway: Gateway, key: str
) -> None:
    body = (
        b'{"model": "claude-haiku-4-5", "max_tokens": 5, "stream": false,'
        b' "messages": [{"role": "user", "content": "hi"}], '
        + f'"{key}": '.encode()
        + json.dumps({"model": "claude-opus-4-1", "stream": True, "messages": []}[key]).encode()
        + b"}"
    )
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}/anthropic/v1/messages", content=body)
    assert response.status_code == 400, response.text
    assert f"'{key}'" in response.json()["error"]["message"]
    assert "more than once" in response.json()["error"]["message"]
    assert gateway.mock.requests == []


async def test_duplicate_keys_below_the_top_level_are_the_upstreams_business(
    gateway: Gateway,
) -> None:
    body = (
        b'{"model": "claude-haiku-4-5", "max_tokens": 5, "metadata": {"a": 1, "a": 2},'
        b' "messages": [{"role": "user", "content": "hi", "content": "hi"}]}'
    )
    async with httpx2.AsyncClient() as client:
        response = await client.post(f"{gateway.url}/anthropic/v1/messages", content=body)
    assert response.status_code == 200, response.text
    assert gateway.mock.requests[-1].body == body  # the client's bytes, unchanged


async def test_unauthenticated_large_bodies_do_not_grow_the_gateway_process() -> None:
    """The red team's case against ``bridge serve``: 8 connections without a key, each
    announcing and sending 31 MiB. The gateway answers 401 from the headers, so its
    resident memory barely moves (before the fix it grew by about 250 MB and kept 190)."""
    connections = 8
    with gateway_process(9) as gateway:  # nothing is forwarded: no upstream needed
        before = rss_bytes(gateway.pid)
        results: list[tuple[bytes, int]] = []

        async def one() -> None:
            head = head_of("/anthropic/v1/messages", BIG)
            results.append(await raw_exchange(gateway.port, head, body_size=BIG))

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
        after = rss_bytes(gateway.pid)
    assert [answer[:12] for answer, _ in results] == [b"HTTP/1.1 401"] * connections
    growth = after - before
    logging.getLogger("tests").info("RSS before %d MiB, after %d MiB", before >> 20, after >> 20)
    assert growth < 20 * 1024 * 1024, (before >> 20, after >> 20, [s for _, s in results])
