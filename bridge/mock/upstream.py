"""A deterministic fake LLM provider that replays scenario fixtures over loopback HTTP/1.1.

Tests, the demo and the benchmarks point the gateway's upstream at this server. It speaks
raw HTTP/1.1 through h11 on plain trio sockets (no framework), because it doubles as the
benchmark's upstream and must cost far less than the gateway it measures.

Rules and invariants:

* Scenarios are loaded and validated once (:func:`load_scenarios`); every response's wire
  bytes (header list, body, one chunk per SSE event) are encoded at load time, so serving a
  request is routing plus writes. Nothing is logged per request.
* Routes: Anthropic ``/v1/messages`` (+ ``count_tokens``, ``GET /v1/models``); OpenAI
  ``/v1/chat/completions`` and ``/v1/responses``, also without ``/v1`` (GitHub Copilot's
  upstream paths), and ``GET /models``.
* A scenario is chosen by the ``x-mock-scenario`` request header, else by a scenario of the
  route's API whose name equals the body's ``model``, else the API's default scenario. A
  scenario of another API is refused. The response index is the number of earlier tool
  results in the request (Anthropic messages carrying a ``tool_result`` block, Chat
  messages with role ``tool``, Responses ``function_call_output`` items), capped at the
  last response, so one scenario can answer every call of an agentic loop.
* Streams are sent one write per SSE event (chunked transfer encoding), with an optional
  pace between events. While a stream is being sent, a watcher task reads the socket: when
  the client closes the connection before the stream ends, the time is appended to
  :attr:`MockUpstream.disconnects` and sending stops. That is how tests observe that the
  gateway cut the upstream stream when its own client went away.
* Faults on demand: ``x-mock-fault: <fault>`` (one of :data:`FAULTS`) makes the mock
  misbehave on that request, after ``x-mock-fault-after: N`` SSE events (default: half of
  them; for a blocking answer, half of the body): reset the connection, stall before the
  headers or mid-body until the client gives up, send garbage, cut an event in half, or
  close early. A faulted connection is never reused. :attr:`MockUpstream.open_connections`
  and :attr:`MockUpstream.busy_connections` let tests check that nothing is left open.
* Mistakes in how a test uses the mock (an unknown scenario name, a scenario without
  streaming responses) are answered with a 400 in the route's error shape (Anthropic's or
  OpenAI's) whose message names the fix. 400 rather than 500 because SDK clients retry 5xx
  with back-off.
* The choice of an answer (:meth:`MockUpstream.route`) and the recording
  (:meth:`MockUpstream.record_request`, :meth:`MockUpstream.record_stream_end`) are
  separate from the h11 transport, so another HTTP stack can serve the same scenarios
  into the same recorded state (the tests' ``tests/foreign_upstream.py``).
* Anthropic requests without ``x-api-key`` and without ``authorization``, and OpenAI
  requests without ``authorization: Bearer <key>``, get 401, so tests can check that the
  gateway injects the provider key.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

import h11
import trio

from bridge.mock.answers import (
    _NOT_AUTHENTICATED,
    _OPENAI_NOT_AUTHENTICATED,
    _error_response,
    _ErrorShape,
    _json_response,
    _key_refusal,
    _openai_error_response,
    _tool_messages,
    _tool_outputs,
    _tool_result_turns,
)
from bridge.mock.scenario import (
    APIS,
    FAULTS,
    FIXTURES_DIR,
    GARBAGE,
    MAIN_HISTORY,
    MODELS_SCENARIO,
    OPENAI_MODELS_SCENARIO,
    RECEIVE_SIZE,
    Expect,
    ExpectedError,
    ExpectedThought,
    ExpectedToolCall,
    ExpectedUsage,
    FixtureError,
    ReceivedRequest,
    Scenario,
    ScenarioResponse,
    SseEvent,
    Upstream,
    _Fault,
    load_scenarios,
)

__all__ = [
    "APIS",
    "FAULTS",
    "FIXTURES_DIR",
    "MAIN_HISTORY",
    "Expect",
    "ExpectedError",
    "ExpectedThought",
    "ExpectedToolCall",
    "ExpectedUsage",
    "FixtureError",
    "MockUpstream",
    "ReceivedRequest",
    "Scenario",
    "ScenarioResponse",
    "SseEvent",
    "Upstream",
    "load_scenarios",
    "main",
]


class MockUpstream:
    """The fake provider: serve it with :meth:`serve`, then inspect what it saw.

    ``pace`` is the delay in seconds between SSE events (the ``x-mock-pace-ms`` request
    header overrides it per request). Use it with trio's ``autojump_clock`` in tests.

    Each API has its own default scenario. ``default_scenario`` (Anthropic) and any default
    passed explicitly must be loaded. The OpenAI defaults left as they are
    (``openai_chat_text``, ``openai_responses_text``) are checked only when a request needs
    them, so a scenario set written for one API still serves it.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Scenario] | None = None,
        *,
        pace: float = 0.0,
        default_scenario: str = "anthropic_text",
        default_chat_scenario: str | None = None,
        default_responses_scenario: str | None = None,
        history: int | None = None,
    ) -> None:
        if history is not None and history < 0:
            raise ValueError(f"history must be None (keep all) or >= 0, got {history!r}")
        if scenarios is None:
            scenarios = load_scenarios(FIXTURES_DIR)
        if not math.isfinite(pace) or pace < 0:
            raise ValueError(f"pace must be a finite number of seconds >= 0, got {pace!r}")
        for argument, value in (
            ("default_scenario", default_scenario),
            ("default_chat_scenario", default_chat_scenario),
            ("default_responses_scenario", default_responses_scenario),
        ):
            if value is not None and value not in scenarios:
                raise ValueError(
                    f"{argument} {value!r} is not among the loaded scenarios "
                    f"{sorted(scenarios)}; pass one of them"
                )
        self.scenarios: Mapping[str, Scenario] = scenarios
        self.pace = pace
        self.default_scenario = default_scenario
        self.default_chat_scenario = default_chat_scenario or "openai_chat_text"
        self.default_responses_scenario = default_responses_scenario or "openai_responses_text"
        self.history = history
        """How many of the latest requests and disconnects are kept (None: all, for tests).
        A long-running mock (benchmarks, ``bridgectl mock-upstream``) keeps a few only, or
        the bodies it was sent (150 KB each in the latency benchmark) pile up in memory."""
        self.requests: list[ReceivedRequest] = []
        self.disconnects: list[float] = []
        """``trio.current_time()`` of each client close while a stream was being sent."""
        self.completed_streams = 0
        self.open_connections = 0
        """Client connections accepted and not yet closed."""
        self.busy_connections = 0
        """Connections with a request received whose answer is not over (sent or cut)."""
        self.faults = 0
        """Requests answered with an ``x-mock-fault`` misbehaviour."""
        self._changed = trio.Event()

    # -- waiting, for tests

    def notify(self) -> None:
        """Wake the ``wait_*`` methods: call after changing the recorded state.

        Public so that another transport serving the same routes (the tests' foreign
        upstream) can keep this state on the trio thread.
        """
        self._changed.set()
        self._changed = trio.Event()

    async def wait_disconnect(self, count: int = 1) -> float:
        """Wait until ``count`` disconnects were seen in total; return the time of that one."""
        while len(self.disconnects) < count:
            await self._changed.wait()
        return self.disconnects[count - 1]

    async def wait_completed_streams(self, count: int = 1) -> None:
        """Wait until ``count`` streams were sent to the end in total.

        A client can hold the last byte of a stream before the mock's task has counted it,
        so tests wait here rather than read :attr:`completed_streams` right away.
        """
        while self.completed_streams < count:
            await self._changed.wait()

    async def wait_quiet(self) -> None:
        """Wait until no connection is in the middle of an answer (idle keep-alive
        connections may stay open: the gateway's pool owns them)."""
        while self.busy_connections:
            await self._changed.wait()

    async def wait_requests(self, count: int = 1) -> ReceivedRequest:
        """Wait until ``count`` requests were received in total; return that one."""
        while len(self.requests) < count:
            await self._changed.wait()
        return self.requests[count - 1]

    # -- recording, for any transport

    def record_request(self, request: ReceivedRequest) -> None:
        """Keep ``request`` for inspection (a complete request, before it is answered)."""
        self.requests.append(request)
        _trim(self.requests, self.history)
        self.notify()

    def record_stream_end(self, *, completed: bool) -> None:
        """Count a stream sent to the end, or note the time the client left it."""
        if completed:
            self.completed_streams += 1
        else:
            self.disconnects.append(trio.current_time())
            _trim(self.disconnects, self.history)
        self.notify()

    # -- serving

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; report the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound_port: int = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started(bound_port)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """Answer requests on one keep-alive connection until either side closes it."""
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        conn = h11.Connection(h11.SERVER)
        self.open_connections += 1
        try:
            async with stream:
                while await self._answer_next(conn, stream):
                    conn.start_next_cycle()
        finally:
            self.open_connections -= 1
            self.notify()

    async def _answer_next(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Read and answer one request; False when the connection cannot carry another."""
        try:
            request = await self._read_request(conn, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the client went away between requests
        except h11.RemoteProtocolError as exc:
            await _send_protocol_error(conn, stream, exc)
            return False
        if request is None:
            return False
        self.busy_connections += 1
        try:
            response, pace, fault = self.route(request)
            if fault is not None:
                self.faults += 1
                await _misbehave(conn, stream, response, pace, fault)
                return False
            if response.streamed:
                if not await self._send_stream(conn, stream, response, pace):
                    return False
            else:
                await stream.send_all(_blocking_bytes(conn, response))
            return conn.our_state is h11.DONE and conn.their_state is h11.DONE
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the client went away during a blocking answer
        finally:
            self.busy_connections -= 1
            self.notify()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> ReceivedRequest | None:
        """The next complete request, or None when the client closed the connection."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # h11 never ends a message it did not start
                request = ReceivedRequest(
                    method=head.method.decode("ascii"),
                    target=head.target.decode("ascii"),
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers],
                    body=bytes(body),
                    received_at=trio.current_time(),
                )
                self.record_request(request)
                return request
            else:  # ConnectionClosed, or PAUSED after a protocol switch we never accept
                return None

    def route(self, request: ReceivedRequest) -> tuple[ScenarioResponse, float, _Fault | None]:
        """Pick the response for ``request``, the pace of its stream and its fault, if any.

        Pure choice, no I/O: another transport can serve the same scenarios with it.

        Anthropic routes accept ``x-api-key`` or ``authorization``; OpenAI routes (with or
        without the ``/v1`` prefix, as GitHub Copilot's upstream has none) need
        ``authorization: Bearer ...`` and answer the mock's own errors in OpenAI's shape.
        """
        path = request.target.partition("?")[0]
        method = request.method
        handler: Callable[[ReceivedRequest], ScenarioResponse]
        error: _ErrorShape = _error_response
        if path == "/v1/messages" and method == "POST":
            handler = self._messages
        elif path == "/v1/messages/count_tokens" and method == "POST":
            handler = self._count_tokens
        elif path == "/v1/models" and method == "GET":
            handler = self._models
        elif path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
            handler, error = self._chat, _openai_error_response
        elif path in ("/v1/responses", "/responses") and method == "POST":
            handler, error = self._responses, _openai_error_response
        elif path == "/models" and method == "GET":
            handler, error = self._openai_models, _openai_error_response
        else:
            return (
                _error_response(
                    404, "not_found_error", f"{method} {path}: no such route in the mock"
                ),
                0.0,
                None,
            )
        if error is _openai_error_response:
            authorization = request.header("authorization") or ""
            if not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
                return _OPENAI_NOT_AUTHENTICATED, 0.0, None
        elif request.header("x-api-key") is None and request.header("authorization") is None:
            return _NOT_AUTHENTICATED, 0.0, None
        if (refusal := _key_refusal(request, error)) is not None:
            return refusal, 0.0, None
        pace = self.pace
        pace_ms = request.header("x-mock-pace-ms")
        if pace_ms is not None:
            try:
                pace = float(pace_ms) / 1000
            except ValueError:
                pace = -1.0
            if not math.isfinite(pace) or pace < 0:
                return (
                    error(
                        400,
                        "invalid_request_error",
                        f"x-mock-pace-ms: {pace_ms!r} must be a number of milliseconds >= 0",
                    ),
                    0.0,
                    None,
                )
        fault = _fault_of(request)
        if isinstance(fault, str):
            return error(400, "invalid_request_error", fault), 0.0, None
        response = handler(request)
        return response, pace, fault if response.status < 300 else None

    def _messages(self, request: ReceivedRequest) -> ScenarioResponse:
        return self._replay(
            request,
            "anthropic.messages",
            self.default_scenario,
            _tool_result_turns,
            _error_response,
        )

    def _chat(self, request: ReceivedRequest) -> ScenarioResponse:
        return self._replay(
            request,
            "openai.chat",
            self.default_chat_scenario,
            _tool_messages,
            _openai_error_response,
        )

    def _responses(self, request: ReceivedRequest) -> ScenarioResponse:
        return self._replay(
            request,
            "openai.responses",
            self.default_responses_scenario,
            _tool_outputs,
            _openai_error_response,
        )

    def _replay(
        self,
        request: ReceivedRequest,
        api: str,
        default: str,
        call_index: Callable[[dict[str, Any]], int],
        error: _ErrorShape,
    ) -> ScenarioResponse:
        """Answer a generation request from a scenario of ``api``.

        The scenario is the one named by ``x-mock-scenario``, else the one named like the
        body's ``model`` if it is an ``api`` scenario, else ``default``. A scenario of another
        API is refused: replaying Anthropic events on an OpenAI route would only hide a
        mistake in the test.
        """
        try:
            body = json.loads(request.body)
        except ValueError:
            return error(400, "invalid_request_error", "the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "invalid_request_error", "the body must be a JSON object")
        name = request.header("x-mock-scenario")
        if name is None:
            model = body.get("model")
            by_model = self.scenarios.get(model) if isinstance(model, str) else None
            name = by_model.name if by_model is not None and by_model.api == api else default
        scenario = self.scenarios.get(name)
        if scenario is None:
            return error(
                400,
                "invalid_request_error",
                f"x-mock-scenario: {name!r} names no loaded scenario; "
                f"known: {sorted(self.scenarios)}",
            )
        if scenario.api != api:
            return error(
                400,
                "invalid_request_error",
                f"mock scenario {scenario.name!r} is an {scenario.api} scenario, but "
                f"{request.target.partition('?')[0]} serves {api}; pick an {api} scenario",
            )
        streaming = body.get("stream") is True
        kind = "streaming" if streaming else "blocking"
        responses = scenario.upstream.streaming if streaming else scenario.upstream.blocking
        if not responses:
            return error(
                400,
                "invalid_request_error",
                f"mock scenario {scenario.name!r} has no upstream.{kind} responses; "
                f"add them to {scenario.path} or pick another scenario",
            )
        return responses[min(call_index(body), len(responses) - 1)]

    def _count_tokens(self, request: ReceivedRequest) -> ScenarioResponse:
        return _json_response({"input_tokens": len(request.body) // 4})

    def _models(self, request: ReceivedRequest) -> ScenarioResponse:
        scenario = self.scenarios.get(MODELS_SCENARIO)
        if scenario is None or scenario.upstream.get is None:
            return _error_response(
                400,
                "invalid_request_error",
                f"GET /v1/models needs a loaded scenario {MODELS_SCENARIO!r} with upstream.get",
            )
        return scenario.upstream.get

    def _openai_models(self, request: ReceivedRequest) -> ScenarioResponse:
        scenario = self.scenarios.get(OPENAI_MODELS_SCENARIO)
        if scenario is None or scenario.upstream.get is None:
            return _openai_error_response(
                400,
                "invalid_request_error",
                f"GET /models needs a loaded scenario {OPENAI_MODELS_SCENARIO!r} with upstream.get",
            )
        return scenario.upstream.get

    async def _send_stream(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        response: ScenarioResponse,
        pace: float,
    ) -> bool:
        """Send a chunked stream while watching for the client closing the connection.

        Returns False when the connection cannot carry another request. A close counts as a
        disconnect only if it came before the last byte of the stream was written. The
        watcher owns the receive side only for the duration of the stream; bytes a client
        sends meanwhile (pipelining) are buffered in h11 for the next cycle.
        """
        sent_all = False
        peer_closed = False

        async def watch_for_close(cancel_sending: trio.CancelScope) -> None:
            nonlocal peer_closed
            while True:
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    peer_closed = True
                    cancel_sending.cancel()
                    return
                conn.receive_data(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_for_close, nursery.cancel_scope)
            try:
                head = h11.Response(
                    status_code=response.status, headers=list(response.wire_headers)
                )
                await stream.send_all(conn.send(head))
                for i, chunk in enumerate(response.wire_chunks):
                    if i and pace:
                        await trio.sleep(pace)
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                sent_all = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                peer_closed = True
            nursery.cancel_scope.cancel()
        self.record_stream_end(completed=sent_all)
        return sent_all and not peer_closed


def _fault_of(request: ReceivedRequest) -> _Fault | str | None:
    """The fault ``request`` asks for, None, or a message naming the mistake in the headers."""
    kind = request.header("x-mock-fault")
    if kind is None:
        return None
    if kind not in FAULTS:
        return f"x-mock-fault: {kind!r} is not one of {sorted(FAULTS)}"
    after_text = request.header("x-mock-fault-after")
    if after_text is None:
        return _Fault(kind, None)
    if not after_text.isdigit():
        return f"x-mock-fault-after: {after_text!r} must be a number of events >= 0"
    return _Fault(kind, int(after_text))


async def _wait_for_close(stream: trio.SocketStream) -> None:
    """Read (and drop) whatever the client sends until it closes the connection."""
    try:
        while await stream.receive_some(RECEIVE_SIZE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _misbehave(
    conn: h11.Connection,
    stream: trio.SocketStream,
    response: ScenarioResponse,
    pace: float,
    fault: _Fault,
) -> None:
    """Answer with ``fault`` instead of ``response``; the caller then closes the connection.

    A stream's units are its events. A blocking body is cut in two halves: the fault
    comes after the first half (or before it, with ``x-mock-fault-after: 0``).
    """
    if fault.kind == "close-early":
        return  # closed before any byte of an answer
    if fault.kind == "stall-before-headers":
        await _wait_for_close(stream)
        return
    chunks = list(response.wire_chunks)
    cut = len(chunks) // 2 if fault.after is None else min(fault.after, len(chunks))
    if not response.streamed:
        body = b"".join(chunks)
        chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
        cut = min(cut, 1)  # never the whole body: the fault must cut it
    # "connection: close": the connection ends with this answer, whole or not, and says so.
    headers = [*response.wire_headers, (b"connection", b"close")]
    await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
    if fault.kind == "close-after-headers":
        return
    for i, chunk in enumerate(chunks[:cut]):
        if i and pace:
            await trio.sleep(pace)
        await stream.send_all(conn.send(h11.Data(data=chunk)))
    rest = chunks[cut:]
    if fault.kind == "reset-mid-stream":
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif fault.kind == "stall-between-events":
        await _wait_for_close(stream)
    elif fault.kind == "truncated-sse" and rest:
        # Half an event, then the connection closes: no blank line, no end of the body.
        await stream.send_all(conn.send(h11.Data(data=rest[0][: len(rest[0]) // 2])))
    elif fault.kind == "garbage-sse":
        if response.streamed:
            rest = [GARBAGE, *rest]
        else:  # the rest of the body, overwritten: same length, so still well framed
            size = sum(len(chunk) for chunk in rest)
            noise = b"\x00garbage{"
            rest = [(noise * (size // len(noise) + 1))[:size]]
        for chunk in rest:
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


def _trim(kept: list[Any], history: int | None) -> None:
    """Drop the oldest of ``kept`` beyond ``history`` (amortised: in batches)."""
    if history is not None and len(kept) > 2 * history:
        del kept[: len(kept) - history]


def _blocking_bytes(conn: h11.Connection, response: ScenarioResponse) -> bytes:
    """The whole response (head, body, end) as one buffer, so it goes out in one write."""
    head = h11.Response(status_code=response.status, headers=list(response.wire_headers))
    parts = [conn.send(head)]
    parts.extend(conn.send(h11.Data(data=chunk)) for chunk in response.wire_chunks)
    parts.append(conn.send(h11.EndOfMessage()))
    return b"".join(parts)


async def _send_protocol_error(
    conn: h11.Connection, stream: trio.SocketStream, exc: h11.RemoteProtocolError
) -> None:
    """Answer a malformed request with 400 (or h11's hint) when a response can still start."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response = _error_response(exc.error_status_hint, "invalid_request_error", str(exc))
    try:
        await stream.send_all(_blocking_bytes(conn, response))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return


def main(port: int, host: str = "127.0.0.1") -> None:
    """Run the mock upstream on ``host:port`` with the repository's fixtures until Ctrl-C."""

    async def run() -> None:
        upstream = MockUpstream(history=MAIN_HISTORY)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(upstream.serve, host, port)
            print(
                f"mock upstream: {len(upstream.scenarios)} scenarios on http://{host}:{bound}",
                flush=True,
            )

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return
