"""Scenario files: their schema, loading and checking (see fixtures/README.md).

Each file holds a client request, the provider's answers (blocking and streaming) and the
totals a correct gateway records; the loader refuses unknown keys and names the field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bridge.protocol.headers import find_header
from bridge.protocol.usage import TOKEN_COUNTERS, TokenCounts

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


# --- encoding: what the loader stores is what the mock sends


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
