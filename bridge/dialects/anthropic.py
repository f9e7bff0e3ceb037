"""The Anthropic Messages dialect (``POST /v1/messages``).

Streams are accumulated into a message the way the official SDK does it, so the
same summary code reads a blocking body and a finished (or cut) stream. Frames are
relayed as the exact upstream bytes, except ``message_start``, whose message id is
rewritten to the interception id (that is the id clients see, as in the reference).

Token accounting is exact: ``message_delta.usage`` is cumulative, so its values
replace those of ``message_start`` rather than being added to them (the reference
adds them, counting the first output tokens twice).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from bridge.dialects.base import (
    InjectedTool,
    ParsedRequest,
    TokenCounts,
    ToolCall,
    ToolOutcome,
    TurnResult,
    add_usage,
    dumps,
    int_field,
    outcome_text,
    parse_json_object,
    required_messages,
    required_model,
    swap_id,
    tool_parameters,
)
from bridge.errors import UpstreamProtocolError
from bridge.protocol.sse import Event, encode, frame

__all__ = ["AnthropicMessages", "error_type"]

# Anthropic's error types by HTTP status (its public "Errors" reference).
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",  # the gateway's own 503s: an open circuit breaker
    504: "timeout_error",
    529: "overloaded_error",
}

_PING: Final = encode(Event(event="ping", data='{"type": "ping"}'))


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (``api_error`` for the rest)."""
    return _ERROR_TYPES.get(status, "api_error")


def _error_document(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicMessages:
    """Anthropic's Messages API."""

    name = "anthropic.messages"
    relay_raw = False

    def parse_request(self, body: bytes) -> ParsedRequest:
        """Check the fields the gateway relies on; everything else is the upstream's to judge."""
        document = parse_json_object(body)
        model = required_model(document)
        messages = required_messages(document)
        return ParsedRequest(
            document=document,
            model=model,
            stream=document.get("stream") is True,
            prompt=_last_user_prompt(messages),
            correlating_tool_call_id=_correlating_tool_call_id(messages),
            session_hint=_session_from_metadata(document.get("metadata")),
        )

    def wants_tools(self, request: ParsedRequest) -> bool:
        """Not for streaming requests of small, fast models (Claude Code's haiku calls)."""
        return not (request.stream and "haiku" in request.model)

    def prepare(
        self, request: ParsedRequest, body: bytes, tools: Sequence[InjectedTool]
    ) -> tuple[dict[str, Any] | None, bytes]:
        """The client's bytes unless tools are injected (Claude Code's fields stay as sent).

        Injected tools go *before* the client's, so the client's ``cache_control``
        breakpoints keep covering the same prefix, and parallel tool use is disabled
        so that each inner-loop turn has one call to answer (docs/behaviour.md §5.1).
        """
        if not tools:
            return None, body
        document = dict(request.document)
        injected = [
            {
                "name": tool.id,
                "description": tool.description,
                "input_schema": tool_parameters(tool),
            }
            for tool in tools
        ]
        document["tools"] = [*injected, *(document.get("tools") or [])]
        choice = document.get("tool_choice")
        if choice is None or (isinstance(choice, dict) and choice.get("type") in ("", None)):
            document["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
        elif isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool"):
            document["tool_choice"] = {**choice, "disable_parallel_tool_use": True}
        return document, dumps(document)

    def append_results(
        self, document: dict[str, Any], result: TurnResult, outcomes: Sequence[ToolOutcome]
    ) -> None:
        """The assistant message, then one user message with every ``tool_result``."""
        message = result.message if isinstance(result.message, dict) else {}
        content = [_block_param(b) for b in message.get("content") or () if isinstance(b, dict)]
        results = [
            {
                "type": "tool_result",
                "tool_use_id": outcome.call.id,
                "content": [{"type": "text", "text": outcome_text(outcome)}],
                **({"is_error": True} if outcome.is_error or outcome.error else {}),
            }
            for outcome in outcomes
        ]
        document["messages"] = [
            *document.get("messages", []),
            {"role": "assistant", "content": content},
            {"role": "user", "content": results},
        ]

    def open_exchange(self, interception_id: str, injected: frozenset[str]) -> _Exchange:
        """State shared by the upstream messages of one interception."""
        return _Exchange(interception_id, injected)

    def error_body(self, status: int, message: str) -> bytes:
        """``{"type": "error", "error": {"type": ..., "message": ...}}``."""
        return dumps(_error_document(error_type(status), message))

    def upstream_error(self, status: int, content_type: str, body: bytes) -> tuple[str, bytes]:
        """Keep an upstream error already in Anthropic's shape; wrap anything else."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            document = None
        if (
            isinstance(document, dict)
            and document.get("type") == "error"
            and isinstance(document.get("error"), dict)
        ):
            return "application/json", body
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")
        return "application/json", self.error_body(status, message)

    def stream_error_frame(self, message: str) -> bytes:
        """An ``event: error`` frame, as Anthropic sends mid-stream."""
        data = json.dumps(_error_document("api_error", message), ensure_ascii=False)
        return encode(Event(event="error", data=data))

    def stream_end_frame(self) -> None:
        """Anthropic streams end with their own ``message_stop``: nothing to add."""
        return

    def ping_frame(self) -> bytes:
        """Anthropic's keep-alive event."""
        return _PING


class _Exchange:
    """What the client has seen so far across the upstream messages of one interception.

    The client sees one message: the first ``message_start`` only, content blocks
    numbered on from those already sent, no injected ``tool_use`` block, no stop of
    a message that ends in an injected call, and usage that adds up every message.
    """

    def __init__(self, interception_id: str, injected: frozenset[str]) -> None:
        self.interception_id = interception_id
        self.injected = injected
        self.turns = 0
        self.blocks_sent = 0
        self.usage: dict[str, Any] = {}
        """The summed usage of the messages before the current one."""

    def new_turn(self) -> _Turn:
        self.turns += 1
        return _Turn(self)

    def add_usage(self, usage: Any) -> None:
        """Count a finished message's usage in what later messages report."""
        if isinstance(usage, dict):
            self.usage = add_usage(self.usage, usage)


class _Turn:
    """One upstream message, accumulated from its stream or read whole."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._interception_id = exchange.interception_id
        self._first = exchange.turns == 1
        self._index_map: dict[int, int] = {}
        self._hidden: set[int] = set()
        self._response_id = ""
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._parts: dict[int, list[str]] = {}
        self._closed: set[int] = set()
        self._error: str | None = None
        self._complete = False

    def feed_event(self, event: Event) -> bytes | None:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise UpstreamProtocolError(
                f"upstream sent a {event.event or 'message'} event whose data is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise UpstreamProtocolError("upstream sent an event whose data is not a JSON object")
        kind = data.get("type", event.event)
        try:
            if kind == "message_start":
                return self._on_message_start(data, event.raw)
            if kind == "content_block_start":
                index = data["index"]
                block = self._blocks[index] = data["content_block"]
                self._parts[index] = []
                if block.get("type") == "tool_use" and block.get("name") in self._exchange.injected:
                    self._hidden.add(index)
                    return None
                self._index_map[index] = self._exchange.blocks_sent
                self._exchange.blocks_sent += 1
                return self._renumbered(data, event.raw)
            if kind == "content_block_delta":
                self._on_delta(data["index"], data["delta"])
                return None if data["index"] in self._hidden else self._renumbered(data, event.raw)
            if kind == "content_block_stop":
                self._close_block(data["index"])
                return None if data["index"] in self._hidden else self._renumbered(data, event.raw)
            if kind == "message_delta":
                self._message.update(data.get("delta") or {})
                usage = self._message.setdefault("usage", {})
                for key, value in (data.get("usage") or {}).items():
                    if value is not None:
                        usage[key] = value
                return self._on_message_delta(data, event.raw)
            if kind == "message_stop":
                self._complete = True
                self._exchange.add_usage(self._message.get("usage"))
                return None if self._hidden else frame(event.raw)
            if kind == "error":
                error = data.get("error")
                message = error.get("message") if isinstance(error, dict) else None
                self._error = str(message or event.data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"upstream sent a malformed {kind} event (missing or wrong {exc})"
            ) from None
        return frame(event.raw)

    def _on_message_start(self, data: dict[str, Any], raw: bytes) -> bytes | None:
        message = data["message"]
        self._response_id = str(message.get("id", ""))
        self._message = message
        if not self._first:
            return None  # the client already has its message_start
        return swap_id(frame(raw), self._response_id, self._interception_id)

    def _renumbered(self, data: dict[str, Any], raw: bytes) -> bytes:
        """The frame with the client's block index (re-encoded only when it differs)."""
        index = self._index_map.get(data["index"], data["index"])
        if index == data["index"]:
            return frame(raw)
        data["index"] = index
        return _event(data)

    def _on_message_delta(self, data: dict[str, Any], raw: bytes) -> bytes | None:
        """Held back if the message ends in an injected call; otherwise usage adds up."""
        if self._hidden:
            return None
        earlier = self._exchange.usage
        if not earlier or not isinstance(data.get("usage"), dict):
            return frame(raw)
        data["usage"] = add_usage(earlier, data["usage"])
        return _event(data)

    def _on_delta(self, index: int, delta: dict[str, Any]) -> None:
        kind = delta["type"]
        if kind == "text_delta":
            self._parts[index].append(delta["text"])
        elif kind == "thinking_delta":
            self._parts[index].append(delta["thinking"])
        elif kind == "input_json_delta":
            self._parts[index].append(delta["partial_json"])
        elif kind == "signature_delta":
            self._blocks[index]["signature"] = delta["signature"]
        elif kind == "citations_delta":
            self._blocks[index].setdefault("citations", []).append(delta["citation"])

    def _close_block(self, index: int) -> None:
        block = self._blocks[index]
        joined = "".join(self._parts.pop(index, ()))
        kind = block.get("type")
        if kind in ("text", "thinking"):
            block[kind] = block.get(kind, "") + joined
        elif kind in ("tool_use", "server_tool_use") and joined:
            try:
                block["input"] = json.loads(joined)
            except ValueError:
                block["input"] = joined
        self._closed.add(index)

    def feed_body(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamProtocolError("upstream sent a response body that is not JSON") from None
        if not isinstance(document, dict):
            raise UpstreamProtocolError("upstream sent a response body that is not a JSON object")
        self._response_id = str(document.get("id", ""))
        self._message = document
        self._blocks = dict(
            enumerate(b for b in document.get("content") or () if isinstance(b, dict))
        )
        self._closed = set(self._blocks)
        self._complete = True
        earlier = self._exchange.usage
        self._exchange.add_usage(document.get("usage"))
        if earlier and isinstance(document.get("usage"), dict):
            return dumps(
                {
                    **document,
                    "id": self._interception_id,
                    "usage": add_usage(earlier, document["usage"]),
                }
            )
        return swap_id(body, self._response_id, self._interception_id)

    def result(self) -> TurnResult:
        blocks = [self._blocks[i] for i in sorted(self._closed)]
        usage = self._message.get("usage")
        return TurnResult(
            response_id=self._response_id,
            usage=_counts(usage) if isinstance(usage, dict) else None,
            tool_calls=tuple(
                ToolCall(str(b.get("id", "")), str(b.get("name", "")), b.get("input"))
                for b in blocks
                if b.get("type") == "tool_use"
            ),
            thoughts=tuple(
                ("thinking", b["thinking"])
                for b in blocks
                if b.get("type") == "thinking" and b.get("thinking")
            ),
            error=self._error,
            complete=self._complete and self._error is None,
            message={**self._message, "content": blocks},
        )


def _event(data: dict[str, Any]) -> bytes:
    """An event re-encoded from its data, the event name being its ``type``."""
    return encode(Event(event=str(data["type"]), data=json.dumps(data, ensure_ascii=False)))


# Fields of response content blocks that requests do not accept.
_RESPONSE_ONLY_FIELDS = frozenset({"citations"})


def _block_param(block: dict[str, Any]) -> dict[str, Any]:
    """A response content block as a request block (``None`` fields dropped)."""
    return {
        k: v
        for k, v in block.items()
        if v is not None and not (k in _RESPONSE_ONLY_FIELDS and not v)
    }


def _counts(usage: dict[str, Any]) -> TokenCounts:
    creation = usage.get("cache_creation")
    server_tools = usage.get("server_tool_use")
    extra = {
        key: value
        for key, value in (server_tools.items() if isinstance(server_tools, dict) else ())
        if key != "web_search_requests" and isinstance(value, int) and value
    }
    return TokenCounts(
        input=int_field(usage, "input_tokens"),
        output=int_field(usage, "output_tokens"),
        cache_read=int_field(usage, "cache_read_input_tokens"),
        cache_write=int_field(usage, "cache_creation_input_tokens"),
        cache_write_5m=int_field(creation, "ephemeral_5m_input_tokens"),
        cache_write_1h=int_field(creation, "ephemeral_1h_input_tokens"),
        web_search_requests=int_field(server_tools, "web_search_requests"),
        extra=extra,
    )


def _last_user_prompt(messages: list[Any]) -> str | None:
    """The last message's text if it is the user's (docs/behaviour.md §9.2)."""
    if not messages or not isinstance(last := messages[-1], dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for block in reversed(content):
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                return text if isinstance(text, str) else None
    return None


def _correlating_tool_call_id(messages: list[Any]) -> str | None:
    """The ``tool_use_id`` answered by the last message, if any (docs/behaviour.md §9.2)."""
    if not messages or not isinstance(last := messages[-1], dict):
        return None
    content = last.get("content")
    if not isinstance(content, list):
        return None
    for block in reversed(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if isinstance(tool_use_id, str) and tool_use_id:
                return tool_use_id
    return None


def _session_from_metadata(metadata: Any) -> str | None:
    """Claude Code's session id from ``metadata.user_id`` (docs/behaviour.md §9.4)."""
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str) or not user_id.strip():
        return None
    try:
        decoded = json.loads(user_id)
    except (ValueError, RecursionError):  # any client string: it may nest 10,000 levels
        decoded = None
    if isinstance(decoded, dict):
        session = decoded.get("session_id")
        return session.strip() or None if isinstance(session, str) else None
    if "_session_" in user_id:
        return user_id.rsplit("_session_", 1)[1].strip() or None
    return None
