"""The contract between the interception loop and a dialect.

Rules:

* A dialect is stateless; per-request state lives in the :class:`Turn` it creates
  for each upstream response.
* Nothing here awaits. The loop does the I/O and asks the dialect what the bytes
  mean, what to relay, and what to record.
* A turn accepts either a stream of SSE events or one whole body, and reports the
  same :class:`TurnResult` either way: blocking and streaming differ in transport,
  not in accounting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.errors import BadRequest
from bridge.sse import Event

__all__ = [
    "Dialect",
    "Exchange",
    "InjectedTool",
    "ParsedRequest",
    "TokenCounts",
    "ToolCall",
    "ToolOutcome",
    "Turn",
    "TurnResult",
    "add_usage",
    "dumps",
    "int_field",
    "outcome_text",
    "parse_json_object",
    "required_messages",
    "required_model",
    "swap_id",
    "tool_parameters",
]


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the loop needs to know about a client request body."""

    document: dict[str, Any]
    """The parsed body, key order preserved."""
    model: str
    stream: bool
    prompt: str | None
    """The user's last prompt, if the last message is the user's and has text."""
    correlating_tool_call_id: str | None
    """The tool call this request answers, linking it to an earlier interception."""
    session_hint: str | None = None
    """A session id carried in the body (e.g. Claude Code's ``metadata.user_id``)."""


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """The token counters of one upstream response (see :class:`~bridge.recording.TokenUsage`)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    web_search_requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call chosen by the model."""

    id: str
    name: str
    input: Any


class InjectedTool(Protocol):
    """A tool the gateway offers the model and runs itself (an MCP tool)."""

    @property
    def id(self) -> str:
        """The name the model sees: ``bmcp_<server>_<tool>``."""
        ...

    @property
    def description(self) -> str:
        """What the tool does, for the model."""
        ...

    @property
    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's arguments."""
        ...


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """An injected tool call and what came of it, to be given back to the model."""

    call: ToolCall
    content: tuple[dict[str, Any], ...] = ()
    """MCP content blocks (``{"type": "text", "text": ...}``, images, resources...)."""
    is_error: bool = False
    """The tool reported an error (MCP ``isError``)."""
    error: str | None = None
    """The call itself failed: unknown tool, transport error, timeout."""
    result_json: dict[str, Any] | None = None
    """The whole MCP ``CallToolResult`` as JSON, for APIs that take it verbatim."""


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What one upstream response amounted to, complete or cut short."""

    response_id: str
    usage: TokenCounts | None
    tool_calls: tuple[ToolCall, ...] = ()
    thoughts: tuple[tuple[str, str], ...] = ()
    """``(source, content)`` pairs: ``thinking``, ``reasoning_summary``, ``commentary``."""
    error: str | None = None
    """An error the upstream reported inside a successful response (an error event)."""
    complete: bool = False
    """Whether the response reached its terminal event (or was a whole body)."""
    message: Any = None
    """The model's whole answer as the API represents it (an Anthropic message, a chat
    message, a Response object), to be appended to the conversation by the loop."""


class Exchange(Protocol):
    """The state of one interception across its upstream calls (the inner loop).

    It knows which tool names are injected, so that its turns hold back from the
    client what belongs to injected calls (tool-call blocks, the ``tool_use`` stop,
    intermediate usage), and what the client has already seen (one message start,
    block numbering, cumulative usage).
    """

    def new_turn(self) -> Turn:
        """State for the next upstream response."""
        ...


class Turn(Protocol):
    """The state of one upstream response, fed as it arrives."""

    def feed_event(self, event: Event) -> bytes | None:
        """Take one upstream SSE event; return the frame to relay, or ``None`` to hold it back."""
        ...

    def feed_body(self, body: bytes) -> bytes:
        """Take a whole (blocking) response body; return the body to send to the client.

        Raises :class:`~bridge.errors.UpstreamProtocolError` if it cannot be read.
        """
        ...

    def result(self) -> TurnResult:
        """What was learnt so far; valid at any time, also after a cut."""
        ...


class Dialect(Protocol):
    """One provider API: how to read its requests, responses and errors."""

    name: str
    relay_raw: bool
    """Relay the upstream body exactly as read (chunk by chunk) instead of frame by frame.

    For APIs whose output must reach the client byte for byte (OpenAI Responses); the
    turn then only reads events for accounting and its frames are ignored.
    """

    def parse_request(self, body: bytes) -> ParsedRequest:
        """Validate and inspect a client body; :class:`~bridge.errors.BadRequest` if unusable."""
        ...

    def prepare(
        self, request: ParsedRequest, body: bytes, tools: Sequence[InjectedTool]
    ) -> tuple[dict[str, Any] | None, bytes]:
        """The first upstream body, and the document it encodes if it was edited.

        ``body`` itself when nothing needs editing (no injected tools, no API edit),
        so the client's bytes go upstream unchanged; otherwise a deterministic
        encoding of the edited document (same input, same bytes: prompt caches hold).
        """
        ...

    def wants_tools(self, request: ParsedRequest) -> bool:
        """Whether injected tools are offered for this request at all."""
        ...

    def append_results(
        self, document: dict[str, Any], result: TurnResult, outcomes: Sequence[ToolOutcome]
    ) -> None:
        """Continue the conversation in ``document``: the model's answer, then the results."""
        ...

    def open_exchange(self, interception_id: str, injected: frozenset[str]) -> Exchange:
        """Fresh state for one interception; ``injected`` are the injected tool names."""
        ...

    def error_body(self, status: int, message: str) -> bytes:
        """A gateway-made error response body in the provider's shape."""
        ...

    def upstream_error(self, status: int, content_type: str, body: bytes) -> tuple[str, bytes]:
        """An upstream error response as the client should get it: ``(content type, body)``."""
        ...

    def stream_error_frame(self, message: str) -> bytes:
        """An in-stream error event, for failures after the response has started."""
        ...

    def stream_end_frame(self) -> bytes | None:
        """A frame the gateway itself ends every stream with (``data: [DONE]``), if any."""
        ...

    def ping_frame(self) -> bytes | None:
        """A keep-alive frame for silent streams, or ``None`` if the API has none."""
        ...


def dumps(document: Any) -> bytes:
    """Compact, deterministic JSON (key order kept): identical input, identical bytes."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A client body as a JSON object; :class:`~bridge.errors.BadRequest` otherwise."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(document).__name__}")
    return document


def required_model(document: dict[str, Any]) -> str:
    """The request's ``model``; :class:`~bridge.errors.BadRequest` unless a non-empty string."""
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: a non-empty string is required")
    return model


def required_messages(document: dict[str, Any]) -> list[Any]:
    """The request's ``messages``; :class:`~bridge.errors.BadRequest` unless a list."""
    messages = document.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: a list of messages is required")
    return messages


def swap_id(raw: bytes, old: str, new: str) -> bytes:
    """Replace the first occurrence of the JSON string ``old`` in ``raw`` by ``new``.

    Rewriting an id this way leaves every other byte of the upstream's output as it
    was, and costs no re-encoding. Ids are opaque tokens (``msg_...``, ``chatcmpl-...``)
    that appear before any content in their object, so the first occurrence is the id.
    """
    if not old:
        return raw
    return raw.replace(json.dumps(old).encode(), json.dumps(new).encode(), 1)


def int_field(mapping: Any, key: str) -> int:
    """``mapping[key]`` if it is an integer (not a bool), else 0: usage fields may be null."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def add_usage(total: Any, more: Any) -> Any:
    """Add two usage objects field by field (nested objects too); for cumulative usage."""
    if isinstance(total, dict) and isinstance(more, dict):
        out = dict(total)
        for key, value in more.items():
            out[key] = add_usage(out[key], value) if key in out else value
        return out
    if isinstance(total, int) and isinstance(more, int) and not isinstance(total, bool):
        return total + more
    return more if more is not None else total


def tool_parameters(tool: InjectedTool) -> dict[str, Any]:
    """``{"type": "object", "properties": ..., "required": [...]}`` of a tool (reference 3.3)."""
    schema = tool.input_schema
    parameters: dict[str, Any] = {"type": "object", "properties": schema.get("properties") or {}}
    if schema.get("required"):
        parameters["required"] = list(schema["required"])
    return parameters


def outcome_text(outcome: ToolOutcome) -> str:
    """The text of a tool outcome: its text blocks joined, or what went wrong."""
    if outcome.error is not None:
        return f"Error calling tool: {outcome.error}"
    texts = [b.get("text", "") for b in outcome.content if b.get("type") == "text"]
    return "\n".join(str(t) for t in texts) if texts else json.dumps(list(outcome.content))
