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

from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.sse import Event

__all__ = ["Dialect", "ParsedRequest", "TokenCounts", "ToolCall", "Turn", "TurnResult"]


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

    def parse_request(self, body: bytes) -> ParsedRequest:
        """Validate and inspect a client body; :class:`~bridge.errors.BadRequest` if unusable."""
        ...

    def new_turn(self, interception_id: str) -> Turn:
        """Fresh state for the next upstream response of this interception."""
        ...

    def error_body(self, status: int, message: str) -> bytes:
        """A gateway-made error response body in the provider's shape."""
        ...

    def upstream_error_body(self, status: int, body: bytes) -> bytes:
        """An upstream error body as the client should get it: kept if well-formed."""
        ...

    def stream_error_frame(self, message: str) -> bytes:
        """An in-stream error event, for failures after the response has started."""
        ...

    def ping_frame(self) -> bytes | None:
        """A keep-alive frame for silent streams, or ``None`` if the API has none."""
        ...
