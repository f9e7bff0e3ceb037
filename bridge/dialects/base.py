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
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.errors import BadRequest
from bridge.sse import Event

__all__ = [
    "Dialect",
    "ParsedRequest",
    "TokenCounts",
    "ToolCall",
    "Turn",
    "TurnResult",
    "dumps",
    "int_field",
    "parse_json_object",
    "required_messages",
    "required_model",
    "swap_id",
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

    def upstream_body(self, request: ParsedRequest, body: bytes) -> bytes:
        """The body to send upstream: ``body`` itself unless the API needs an edit."""
        ...

    def new_turn(self, interception_id: str) -> Turn:
        """Fresh state for the next upstream response of this interception."""
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
