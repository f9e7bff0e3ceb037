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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import h11
import trio

from bridge.protocol.headers import find_header
from bridge.protocol.usage import TOKEN_COUNTERS, TokenCounts

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

FIXTURES_DIR: Final[Path] = Path(__file__).resolve().parents[2] / "fixtures"
"""The repository's ``fixtures/`` directory, the default scenario source."""

APIS: Final[frozenset[str]] = frozenset({"anthropic.messages", "openai.chat", "openai.responses"})
"""The values a fixture's ``api`` field may take."""

MODELS_SCENARIO: Final[str] = "anthropic_models"
"""The scenario whose ``upstream.get`` answers ``GET /v1/models``."""

OPENAI_MODELS_SCENARIO: Final[str] = "openai_models"
"""The scenario whose ``upstream.get`` answers ``GET /models`` (OpenAI's list shape)."""

THOUGHT_SOURCES: Final[frozenset[str]] = frozenset({"reasoning_summary", "commentary"})
"""The values ``expect.thoughts[].source`` may take."""

FAULTS: Final[frozenset[str]] = frozenset(
    {
        "reset-mid-stream",
        "stall-before-headers",
        "stall-between-events",
        "garbage-sse",
        "truncated-sse",
        "close-early",
        "close-after-headers",
    }
)
"""The values of the ``x-mock-fault`` request header (see the module docstring)."""

GARBAGE: Final[bytes] = (
    b'data: {"type": "content_block_delta", "index": 0, "delta": {garbage\xff\xfe\n\n'
    b"this is not server-sent events at all\x00\x01\n\n"
    b"event: \xc3\x28\ndata: [1, 2,\n\n"
)
"""What ``garbage-sse`` sends in the middle of a stream: broken JSON, broken UTF-8, noise."""

MAIN_HISTORY: Final[int] = 100
"""Requests a long-running mock (``bridgectl mock-upstream``) keeps for inspection."""

RECEIVE_SIZE: Final[int] = 65536
"""Bytes asked of the socket per read."""

_USAGE_KEYS: Final[tuple[str, ...]] = TOKEN_COUNTERS
"""The keys of ``expect.usage`` (``extra`` is not one: fixtures state the named counters)."""
_TOP_KEYS: Final[frozenset[str]] = frozenset(
    {"name", "description", "api", "request", "upstream", "expect"}
)
_EXPECT_KEYS: Final[frozenset[str]] = frozenset(
    {"usage", "text", "tool_calls", "thinking", "thoughts", "error"}
)
_RESPONSE_KEYS: Final[frozenset[str]] = frozenset({"status", "headers", "body", "events", "raw"})


class FixtureError(ValueError):
    """A fixture file breaks the format described in ``fixtures/README.md``."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: ``event: <event>`` (omitted when None) and one ``data:`` line.

    ``data`` is JSON (sent compact) or a string sent verbatim, such as OpenAI's ``[DONE]``.
    """

    event: str | None
    data: Any


@dataclass(frozen=True, slots=True)
class ScenarioResponse:
    """One canned upstream response and its precomputed wire form.

    Exactly one of ``body`` (a JSON body, sent with content-length), ``events`` (an SSE
    stream) and ``raw`` (exact text, for malformed streams; several strings are several
    writes) is set.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    """As the fixture spells the names (providers' own are lower-case; a captured set may
    have ``Content-Length``): compare them case-insensitively. Sent as spelled."""
    body: Any = None
    events: tuple[SseEvent, ...] | None = None
    raw: tuple[str, ...] | None = None
    streamed: bool = field(default=False, compare=False)
    """True when sent chunked, one write per element of ``wire_chunks``."""
    wire_headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False, compare=False)
    wire_chunks: tuple[bytes, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Upstream:
    """The responses of one scenario: element i answers the i-th call of an interception."""

    blocking: tuple[ScenarioResponse, ...] = ()
    streaming: tuple[ScenarioResponse, ...] = ()
    get: ScenarioResponse | None = None


ExpectedUsage = TokenCounts
"""The true token totals of a scenario, as the gateway must record them."""


@dataclass(frozen=True, slots=True)
class ExpectedToolCall:
    """A client tool call the model makes in a scenario.

    ``id`` is the id the client answers with (Anthropic ``tool_use.id``, Chat Completions
    ``tool_calls[].id``, Responses ``call_id``). ``input`` is the parsed JSON arguments, or the
    free-form string of a Responses ``custom_tool_call``.
    """

    name: str
    id: str
    input: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class ExpectedError:
    """The provider error a scenario ends with."""

    status: int
    type: str


@dataclass(frozen=True, slots=True)
class ExpectedThought:
    """Model output that is not the answer: a reasoning summary or a commentary message."""

    source: str
    """One of :data:`THOUGHT_SOURCES`."""
    content: str


@dataclass(frozen=True, slots=True)
class Expect:
    """What a correct gateway observes; None where the field does not apply."""

    usage: ExpectedUsage | None = None
    text: str | None = None
    tool_calls: tuple[ExpectedToolCall, ...] | None = None
    thinking: tuple[str, ...] | None = None
    thoughts: tuple[ExpectedThought, ...] | None = None
    error: ExpectedError | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """One fixture file: a client request, the upstream's answers and the expected totals."""

    name: str
    api: str
    request: dict[str, Any] | None
    upstream: Upstream
    expect: Expect
    description: str = ""
    path: Path | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the mock received it, for tests to inspect."""

    method: str
    target: str
    """Path plus query string, e.g. ``/v1/messages?beta=true``."""
    headers: list[tuple[str, str]]
    """Header names are lower-case, in arrival order."""
    body: bytes
    received_at: float
    """``trio.current_time()`` when the request was complete."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return find_header(self.headers, name)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class _Fault:
    """A misbehaviour asked for by ``x-mock-fault``: which, and after how many events."""

    kind: str
    after: int | None


# --------------------------------------------------------------------------- loading


def load_scenarios(directory: Path) -> dict[str, Scenario]:
    """Load and validate every ``*.json`` fixture below ``directory``, keyed by name.

    Raises :class:`FixtureError` naming the file and the field at the first violation, and
    on two files with the same name, because selection by name would be ambiguous.
    """
    if not directory.is_dir():
        raise FixtureError(f"{directory}: not a directory; pass the fixtures/ directory")
    scenarios: dict[str, Scenario] = {}
    for path in sorted(directory.rglob("*.json")):
        scenario = load_scenario(path)
        other = scenarios.get(scenario.name)
        if other is not None:
            raise FixtureError(
                f"{path}: scenario name {scenario.name!r} is already used by {other.path}; "
                "names must be unique across the tree"
            )
        scenarios[scenario.name] = scenario
    return scenarios


def load_scenario(path: Path) -> Scenario:
    """Load and validate one fixture file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{path}: not valid JSON: {exc}") from exc
    return _parse_scenario(document, path)


def _fail(path: Path, where: str, problem: str) -> FixtureError:
    return FixtureError(f"{path}: field {where}: {problem}")


def _parse_scenario(document: Any, path: Path) -> Scenario:
    if not isinstance(document, dict):
        raise _fail(path, "<top>", f"must be a JSON object, got {type(document).__name__}")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise _fail(path, "<top>", f"unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "api", "upstream", "expect"):
        if key not in document:
            raise _fail(path, key, "is required")
    name = document["name"]
    if name != path.stem:
        raise _fail(path, "name", f"{name!r} must equal the file stem {path.stem!r}")
    api = document["api"]
    if api not in APIS:
        raise _fail(path, "api", f"{api!r} is not one of {sorted(APIS)}")
    description = document.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", "must be a string")
    request = document.get("request")
    if request is not None and not isinstance(request, dict):
        raise _fail(path, "request", "must be a JSON object (the client's body) or null")
    return Scenario(
        name=name,
        api=api,
        request=request,
        upstream=_parse_upstream(document["upstream"], path),
        expect=_parse_expect(document["expect"], path),
        description=description,
        path=path,
    )


def _parse_upstream(value: Any, path: Path) -> Upstream:
    if not isinstance(value, dict) or not value:
        raise _fail(path, "upstream", "must be an object with 'blocking', 'streaming' or 'get'")
    unknown = set(value) - {"blocking", "streaming", "get"}
    if unknown:
        raise _fail(path, "upstream", f"unknown keys {sorted(unknown)}")
    lists: dict[str, tuple[ScenarioResponse, ...]] = {}
    for kind in ("blocking", "streaming"):
        items = value.get(kind, [])
        if not isinstance(items, list) or (kind in value and not items):
            raise _fail(path, f"upstream.{kind}", "must be a non-empty list of responses")
        lists[kind] = tuple(
            _parse_response(item, path, f"upstream.{kind}[{i}]", streaming=kind == "streaming")
            for i, item in enumerate(items)
        )
    get = None
    if "get" in value:
        get = _parse_response(value["get"], path, "upstream.get", streaming=False)
    return Upstream(blocking=lists["blocking"], streaming=lists["streaming"], get=get)


def _parse_response(value: Any, path: Path, where: str, *, streaming: bool) -> ScenarioResponse:
    if not isinstance(value, dict):
        raise _fail(path, where, "must be an object with 'status' and 'body', 'events' or 'raw'")
    unknown = set(value) - _RESPONSE_KEYS
    if unknown:
        raise _fail(
            path, where, f"unknown keys {sorted(unknown)}; allowed: {sorted(_RESPONSE_KEYS)}"
        )
    status = value.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise _fail(path, f"{where}.status", f"{status!r} must be an HTTP status from 200 to 599")
    raw_headers = value.get("headers", {})
    if not isinstance(raw_headers, dict) or not all(
        isinstance(v, str) for v in raw_headers.values()
    ):
        raise _fail(path, f"{where}.headers", "must be an object of string values")
    headers = tuple(raw_headers.items())
    present = [key for key in ("body", "events", "raw") if key in value]
    if len(present) != 1:
        raise _fail(path, where, f"needs exactly one of 'body', 'events', 'raw', got {present}")
    if "events" in value and not streaming:
        raise _fail(path, f"{where}.events", "only streaming responses have events; use 'body'")
    if "body" in value and streaming and status < 300:
        raise _fail(
            path, f"{where}.body", "a 2xx streaming response needs 'events' or 'raw', not 'body'"
        )
    events = None
    if "events" in value:
        events = _parse_events(value["events"], path, f"{where}.events")
    raw = None
    if "raw" in value:
        raw_value = value["raw"]
        raw = (raw_value,) if isinstance(raw_value, str) else raw_value
        if not isinstance(raw, list | tuple) or not all(isinstance(r, str) for r in raw):
            raise _fail(path, f"{where}.raw", "must be a string or a list of strings")
        raw = tuple(raw)
    response = _encode(
        ScenarioResponse(
            status=status, headers=headers, body=value.get("body"), events=events, raw=raw
        ),
        streaming=streaming,
    )
    _check_framing(response, path, f"{where}.headers")
    return response


def _check_framing(response: ScenarioResponse, path: Path, where: str) -> None:
    """Refuse framing headers that contradict how the mock frames ``response``.

    A fixture may state ``Content-Length`` or ``Transfer-Encoding`` as a provider sends
    them (captured header sets do), but then they must be true of the bytes it sends.
    """
    for name, value in response.headers:
        if name.lower() == "content-length":
            if response.streamed:
                raise _fail(path, where, f"{name}: a stream is sent chunked, without a length")
            length = str(len(response.wire_chunks[0]))
            if value != length:
                raise _fail(path, where, f"{name}: {value!r} is not the body's length {length}")
        elif name.lower() == "transfer-encoding" and (
            not response.streamed or value.lower() != "chunked"
        ):
            raise _fail(path, where, f"{name}: only a stream may say 'chunked', and only that")


def _parse_events(value: Any, path: Path, where: str) -> tuple[SseEvent, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, where, "must be a non-empty list of {event, data} objects")
    events: list[SseEvent] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or "data" not in item or set(item) - {"event", "data"}:
            raise _fail(path, here, "must be an object with 'data' and optionally 'event'")
        name = item.get("event")
        if name is not None and (not isinstance(name, str) or "\n" in name or "\r" in name):
            raise _fail(path, f"{here}.event", f"{name!r} must be a one-line string")
        data = item["data"]
        if isinstance(data, str) and ("\n" in data or "\r" in data):
            raise _fail(path, f"{here}.data", "a string data must be one line; use 'raw' instead")
        if name == "error" and i != len(value) - 1:
            raise _fail(path, here, "an error event ends the stream, so it must be the last one")
        events.append(SseEvent(event=name, data=data))
    return tuple(events)


def _parse_expect(value: Any, path: Path) -> Expect:
    if not isinstance(value, dict):
        raise _fail(path, "expect", "must be an object")
    unknown = set(value) - _EXPECT_KEYS
    if unknown:
        raise _fail(
            path, "expect", f"unknown keys {sorted(unknown)}; allowed: {sorted(_EXPECT_KEYS)}"
        )
    usage = None
    if "usage" in value:
        raw_usage = value["usage"]
        if not isinstance(raw_usage, dict) or set(raw_usage) - set(_USAGE_KEYS):
            raise _fail(path, "expect.usage", f"must be an object with keys from {_USAGE_KEYS}")
        for key, count in raw_usage.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise _fail(path, f"expect.usage.{key}", f"{count!r} must be an integer >= 0")
        usage = ExpectedUsage(**raw_usage)
    text = value.get("text")
    if text is not None and not isinstance(text, str):
        raise _fail(path, "expect.text", "must be a string")
    tool_calls = None
    if "tool_calls" in value:
        raw_calls = value["tool_calls"]
        if not isinstance(raw_calls, list):
            raise _fail(path, "expect.tool_calls", "must be a list")
        calls = []
        for i, call in enumerate(raw_calls):
            if (
                not isinstance(call, dict)
                or set(call) != {"name", "id", "input"}
                or not isinstance(call["input"], dict | str)
            ):
                raise _fail(
                    path, f"expect.tool_calls[{i}]", "must be {name, id, input: object or string}"
                )
            calls.append(ExpectedToolCall(name=call["name"], id=call["id"], input=call["input"]))
        tool_calls = tuple(calls)
    thinking = None
    if "thinking" in value:
        raw_thinking = value["thinking"]
        if not isinstance(raw_thinking, list) or not all(isinstance(t, str) for t in raw_thinking):
            raise _fail(path, "expect.thinking", "must be a list of strings")
        thinking = tuple(raw_thinking)
    thoughts = None
    if "thoughts" in value:
        raw_thoughts = value["thoughts"]
        if not isinstance(raw_thoughts, list):
            raise _fail(path, "expect.thoughts", "must be a list of {source, content}")
        parsed = []
        for i, thought in enumerate(raw_thoughts):
            if (
                not isinstance(thought, dict)
                or set(thought) != {"source", "content"}
                or thought["source"] not in THOUGHT_SOURCES
                or not isinstance(thought["content"], str)
            ):
                raise _fail(
                    path,
                    f"expect.thoughts[{i}]",
                    f"must be {{source: one of {sorted(THOUGHT_SOURCES)}, content: string}}",
                )
            parsed.append(ExpectedThought(source=thought["source"], content=thought["content"]))
        thoughts = tuple(parsed)
    error = None
    if "error" in value:
        raw_error = value["error"]
        if (
            not isinstance(raw_error, dict)
            or set(raw_error) != {"status", "type"}
            or not isinstance(raw_error["status"], int)
            or not isinstance(raw_error["type"], str)
        ):
            raise _fail(path, "expect.error", "must be {status: int, type: str}")
        error = ExpectedError(status=raw_error["status"], type=raw_error["type"])
    return Expect(
        usage=usage,
        text=text,
        tool_calls=tool_calls,
        thinking=thinking,
        thoughts=thoughts,
        error=error,
    )


# --------------------------------------------------------------------------- wire encoding


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _encode_event(event: SseEvent) -> bytes:
    data = event.data.encode("utf-8") if isinstance(event.data, str) else _compact(event.data)
    if event.event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.event.encode("utf-8") + b"\ndata: " + data + b"\n\n"


def _encode(response: ScenarioResponse, *, streaming: bool) -> ScenarioResponse:
    """Return ``response`` with its wire headers and chunks filled in."""
    names = {name.lower() for name, _ in response.headers}
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    streamed = response.events is not None or (response.raw is not None and streaming)
    if response.events is not None:
        chunks = tuple(_encode_event(event) for event in response.events)
    elif response.raw is not None:
        chunks = tuple(r.encode("utf-8") for r in response.raw)
    else:
        chunks = (_compact(response.body),)
    if "content-type" not in names:
        content_type = b"text/event-stream" if streamed else b"application/json"
        headers.append((b"content-type", content_type))
    if streamed:
        if "cache-control" not in names:
            headers.append((b"cache-control", b"no-cache"))
    else:
        chunks = (b"".join(chunks),)
        if "content-length" not in names:  # else stated by the fixture, and checked
            headers.append((b"content-length", str(len(chunks[0])).encode("ascii")))
    return ScenarioResponse(
        status=response.status,
        headers=response.headers,
        body=response.body,
        events=response.events,
        raw=response.raw,
        streamed=streamed,
        wire_headers=tuple(headers),
        wire_chunks=chunks,
    )


def _error_response(status: int, error_type: str, message: str) -> ScenarioResponse:
    """A response in Anthropic's error shape, for answers the mock makes up itself."""
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_mock",
    }
    return _encode(
        ScenarioResponse(status=status, headers=(("request-id", "req_mock"),), body=body),
        streaming=False,
    )


# Statuses the mock can answer for a key named in ``x-mock-key-status``, with their error types.
_KEY_ERRORS: Final = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def _key_refusal(request: ReceivedRequest, error: _ErrorShape) -> ScenarioResponse | None:
    """The error ``x-mock-key-status: <key>=<status>,...`` asks for the key presented, if any.

    Lets key-failover tests make one centralized key rate limited or revoked while the
    others work; a 429 carries ``retry-after: 30``.
    """
    rules = request.header("x-mock-key-status")
    if not rules:
        return None
    presented = request.header("x-api-key") or (request.header("authorization") or "")[7:]
    for rule in rules.split(","):
        key, _, status = rule.strip().rpartition("=")
        if key == presented and status.isdigit() and int(status) in _KEY_ERRORS:
            code = int(status)
            refusal = error(code, _KEY_ERRORS[code], f"key refused with {code} by the mock")
            if code == 429:
                headers = (*refusal.headers, ("retry-after", "30"))
                return _encode(replace(refusal, headers=headers, wire_headers=()), streaming=False)
            return refusal
    return None


def _openai_error_response(
    status: int, error_type: str, message: str, code: str | None = None
) -> ScenarioResponse:
    """A response in OpenAI's error shape, for answers the mock makes up on OpenAI routes."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return _encode(
        ScenarioResponse(status=status, headers=(("x-request-id", "req_mock"),), body=body),
        streaming=False,
    )


def _json_response(body: Any) -> ScenarioResponse:
    return _encode(
        ScenarioResponse(status=200, headers=(("request-id", "req_mock"),), body=body),
        streaming=False,
    )


_NOT_AUTHENTICATED: Final = _error_response(
    401, "authentication_error", "x-api-key header is required"
)
_OPENAI_NOT_AUTHENTICATED: Final = _openai_error_response(
    401,
    "invalid_request_error",
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
)

_ErrorShape = Callable[[int, str, str], ScenarioResponse]
"""Makes the mock's own error answers in the shape of the route's provider."""


# --------------------------------------------------------------------------- routing


def _tool_result_turns(body: dict[str, Any]) -> int:
    """How many request messages carry a ``tool_result`` block: the agentic-loop call index."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    turns = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(block, dict) and block.get("type") == "tool_result" for block in content
        ):
            turns += 1
    return turns


def _tool_messages(body: dict[str, Any]) -> int:
    """How many Chat Completions messages have role ``tool``: the agentic-loop call index."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")


def _tool_outputs(body: dict[str, Any]) -> int:
    """How many Responses input items are tool outputs: the agentic-loop call index.

    ``input`` may be a plain string (no items). A follow-up that relies on
    ``previous_response_id`` carries only the new outputs, so its index can exceed the
    scenario's list; the ``min(k, len - 1)`` cap then answers with the last response.
    """
    items = body.get("input")
    if not isinstance(items, list):
        return 0
    return sum(
        1
        for item in items
        if isinstance(item, dict)
        and item.get("type") in ("function_call_output", "custom_tool_call_output")
    )


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
