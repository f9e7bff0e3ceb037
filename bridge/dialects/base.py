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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from bridge.errors import BadRequest
from bridge.protocol.sse import Event
from bridge.protocol.usage import TokenCounts

__all__ = [
    "MAX_NESTING",
    "Dialect",
    "InjectedTool",
    "InterceptionState",
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


class InterceptionState(Protocol):
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

    def open_exchange(self, interception_id: str, injected: frozenset[str]) -> InterceptionState:
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


MAX_NESTING: Final = 128
"""How deeply arrays and objects may nest in a client body.

No API request comes near it (tool schemas nest a dozen levels), and it stays far below
the depth at which Python's JSON decoder, and every later walk of the document (encoding
it again, the recorder), would run out of stack and fail with a 500.
"""

_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
_DECODER: Final = json.JSONDecoder()


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A client body as a JSON object; :class:`~bridge.errors.BadRequest` otherwise.

    Also refused, with a 400 and never a 500:

    * nesting deeper than :data:`MAX_NESTING`. Deeper than Python's recursion limit
      (about 1,000 levels) the decoder itself gives up; below that, the document is
      walked once, without recursion (a walk costs less than decoding, and less than a
      scan of the bytes for a body of long prompts).
    * a top-level key given twice. Decoders disagree on which of two ``model`` or
      ``stream`` values counts (the gateway would record the last while a provider
      might read the first), so such a body is refused rather than forwarded with a
      meaning the gateway cannot vouch for. Only the top level is read key by key;
      the values are decoded by the C decoder, so this costs nothing measurable.
    """
    too_deep = BadRequest(
        f"request body nests arrays or objects more than {MAX_NESTING} levels deep;"
        " no API request needs that many"
    )
    try:
        document = _top_level_object(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, UnicodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    if not isinstance(document, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(document).__name__}")
    if _nests_deeper(document, MAX_NESTING):
        raise too_deep
    return document


def _nests_deeper(document: Any, limit: int) -> bool:
    """Whether lists and dicts in ``document`` nest more than ``limit`` levels deep."""
    stack = [(document, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if type(node) is dict:
            node = node.values()
        elif type(node) is not list:
            continue
        if depth > limit:
            return True
        for child in node:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))
    return False


def _top_level_object(text: str) -> Any:
    """The JSON value of ``text``, its top-level object read pair by pair (duplicates
    are a :class:`~bridge.errors.BadRequest` naming the key); anything else as a whole."""
    index = _skip_whitespace(text, 0)
    if not text.startswith("{", index):
        return json.loads(text)
    document: dict[str, Any] = {}
    index = _skip_whitespace(text, index + 1)
    if text.startswith("}", index):
        return _after(text, document, index + 1)
    while True:
        if not text.startswith('"', index):
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, index
            )
        key, index = _DECODER.raw_decode(text, index)
        index = _skip_whitespace(text, index)
        if not text.startswith(":", index):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
        index = _skip_whitespace(text, index + 1)
        value, index = _DECODER.raw_decode(text, index)
        if key in document:
            raise BadRequest(
                f"request body has the key {key!r} more than once; send each top-level key once"
            )
        document[key] = value
        index = _skip_whitespace(text, index)
        if text.startswith("}", index):
            return _after(text, document, index + 1)
        if not text.startswith(",", index):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _skip_whitespace(text, index + 1)


def _after(text: str, document: dict[str, Any], end: int) -> dict[str, Any]:
    """``document``, once nothing but whitespace follows it at ``end``."""
    if _skip_whitespace(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return document


def _skip_whitespace(text: str, index: int) -> int:
    """The index of the first character at or after ``index`` that is not JSON whitespace."""
    match = _WHITESPACE.match(text, index)
    assert match is not None  # the pattern matches the empty string
    return match.end()


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
    """``{"type": "object", "properties": ..., "required": [...]}`` of a tool.

    As docs/behaviour.md §5.1 describes.
    """
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
