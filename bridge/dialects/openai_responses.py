"""The OpenAI Responses dialect (``/responses``, also Copilot; Codex speaks it).

The upstream's output reaches the client **byte for byte**: the loop relays each
chunk as read (``relay_raw``) and this dialect only reads the events for
accounting. Codex-specific fields and even malformed lines pass through untouched,
and response ids are not rewritten (clients chain them in ``previous_response_id``).
Usage comes from ``response.completed`` (or the blocking body), in streaming mode
too; reasoning summaries and ``commentary`` messages are model thoughts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bridge.dialects.base import (
    InjectedTool,
    ParsedRequest,
    TokenCounts,
    ToolCall,
    ToolOutcome,
    TurnResult,
    dumps,
    int_field,
    parse_json_object,
    required_model,
    tool_parameters,
)
from bridge.dialects.openai_common import error_body, upstream_error
from bridge.errors import BadRequest, NotSupported
from bridge.protocol.sse import Event, encode

__all__ = ["OpenAIResponses", "response_summary"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIResponses:
    """OpenAI's Responses API."""

    name = "openai.responses"
    relay_raw = True

    def parse_request(self, body: bytes) -> ParsedRequest:
        """Check ``model``; refuse ``background``; read the prompt and the answered call."""
        document = parse_json_object(body)
        model = required_model(document)
        if document.get("background") is True:
            raise NotSupported("background responses are not supported by this gateway")
        items = document.get("input")
        if items is not None and not isinstance(items, (str, list)):
            raise BadRequest("input: a string or a list of input items is required")
        return ParsedRequest(
            document=document,
            model=model,
            stream=document.get("stream") is True,
            prompt=_prompt(items),
            correlating_tool_call_id=_correlating_call(items),
        )

    def wants_tools(self, request: ParsedRequest) -> bool:
        """Always: every Responses request may use injected tools."""
        return True

    def prepare(
        self, request: ParsedRequest, body: bytes, tools: Sequence[InjectedTool]
    ) -> tuple[dict[str, Any] | None, bytes]:
        """The client's bytes, unless tools are injected (appended, parallel calls off)."""
        if not tools:
            return None, body
        document = dict(request.document)
        injected = []
        for tool in tools:
            parameters = tool_parameters(tool)
            injected.append(
                {
                    "type": "function",
                    "name": tool.id,
                    "strict": False,
                    "description": tool.description,
                    "parameters": parameters if parameters["properties"] else None,
                }
            )
        document["tools"] = [*(document.get("tools") or []), *injected]
        document["parallel_tool_calls"] = False
        return document, dumps(document)

    def append_results(
        self, document: dict[str, Any], result: TurnResult, outcomes: Sequence[ToolOutcome]
    ) -> None:
        """Every output item as an input item, then one ``function_call_output`` per call."""
        items = document.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        response = result.message if isinstance(result.message, dict) else {}
        outputs = [
            {
                "type": "function_call_output",
                "call_id": outcome.call.id,
                "output": (
                    f"invocation error: {json.dumps(outcome.error)}"
                    if outcome.error is not None
                    else json.dumps(outcome.result_json)
                ),
            }
            for outcome in outcomes
        ]
        document["input"] = [*(items or []), *(response.get("output") or []), *outputs]

    def open_exchange(self, interception_id: str, injected: frozenset[str]) -> _Exchange:
        """Responses keep no state across calls: the bytes are the upstream's."""
        return _Exchange()

    def error_body(self, status: int, message: str) -> bytes:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(status, message)

    def upstream_error(self, status: int, content_type: str, body: bytes) -> tuple[str, bytes]:
        """Relayed unchanged."""
        return upstream_error(status, content_type, body)

    def stream_error_frame(self, message: str) -> bytes:
        """An ``error`` event, the Responses API's own in-stream error."""
        data = {"type": "error", "code": "server_error", "message": message, "param": None}
        return encode(Event(event="error", data=dumps(data).decode()))

    def stream_end_frame(self) -> None:
        """Responses streams end with their own terminal event."""
        return

    def ping_frame(self) -> None:
        """Responses streams have no keep-alive event."""
        return


class _Exchange:
    def new_turn(self) -> _Turn:
        return _Turn()


class _Turn:
    """One upstream response, read from its events or its whole body."""

    def __init__(self) -> None:
        self._response_id = ""
        self._response: dict[str, Any] | None = None
        self._error: str | None = None
        self._complete = False

    def feed_event(self, event: Event) -> None:
        try:
            data = json.loads(event.data)
        except ValueError:
            return  # relayed as it is; nothing to account for in it
        if not isinstance(data, dict):
            return
        kind = data.get("type", event.event)
        response = data.get("response")
        if isinstance(response, dict):
            if not self._response_id and response.get("id"):
                self._response_id = str(response["id"])
            if kind in _TERMINAL:
                self._response = response
                self._complete = kind != "response.failed"
                if kind == "response.failed":
                    error = response.get("error")
                    message = error.get("message") if isinstance(error, dict) else None
                    self._error = str(message or "the response failed")
        elif kind == "error":
            self._error = str(data.get("message") or event.data)
        return

    def feed_body(self, body: bytes) -> bytes:
        """The body as received, always (the API's promise: the upstream's bytes).

        One that is not a JSON object is still relayed unchanged; it becomes the
        turn's :attr:`~bridge.dialects.base.TurnResult.error`, so the interception
        is recorded as failed with the reason.
        """
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            document = None
        if isinstance(document, dict):
            self._response = document
            self._response_id = str(document.get("id") or "")
            self._complete = True
        else:
            self._error = "upstream sent a response body that is not JSON (relayed as received)"
        return body

    def result(self) -> TurnResult:
        summary = response_summary(self._response) if self._response is not None else None
        return TurnResult(
            response_id=self._response_id,
            usage=summary[0] if summary else None,
            tool_calls=summary[1] if summary else (),
            thoughts=summary[2] if summary else (),
            error=self._error,
            complete=self._complete and self._error is None,
            message=self._response,
        )


def response_summary(
    response: dict[str, Any],
) -> tuple[TokenCounts | None, tuple[ToolCall, ...], tuple[tuple[str, str], ...]]:
    """Usage, client tool calls and thoughts of a complete Response object."""
    usage = response.get("usage")
    counts = None
    if isinstance(usage, dict):
        cached = int_field(usage.get("input_tokens_details"), "cached_tokens")
        counts = TokenCounts(
            input=int_field(usage, "input_tokens") - cached,
            output=int_field(usage, "output_tokens"),
            cache_read=cached,
            reasoning=int_field(usage.get("output_tokens_details"), "reasoning_tokens"),
        )
    calls: list[ToolCall] = []
    thoughts: list[tuple[str, str]] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call":
            calls.append(
                ToolCall(
                    str(item.get("call_id", "")),
                    str(item.get("name", "")),
                    _arguments(item.get("arguments")),
                )
            )
        elif kind == "custom_tool_call":
            calls.append(
                ToolCall(str(item.get("call_id", "")), str(item.get("name", "")), item.get("input"))
            )
        elif kind == "reasoning":
            for part in item.get("summary") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"]:
                    thoughts.append(("reasoning_summary", part["text"]))
        elif kind == "message" and item.get("phase") == "commentary":
            for part in item.get("content") or ():
                if (
                    isinstance(part, dict)
                    and part.get("type") == "output_text"
                    and part.get("text")
                ):
                    thoughts.append(("commentary", str(part["text"])))
    return counts, tuple(calls), tuple(thoughts)


def _arguments(text: Any) -> Any:
    if not isinstance(text, str) or not text:
        return "" if text is None else text
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _prompt(items: Any) -> str | None:
    """The whole input string, or the text of a last input item from the user."""
    if isinstance(items, str):
        return items
    if not isinstance(items, list) or not items or not isinstance(last := items[-1], dict):
        return None
    if last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "input_text"
            and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts) if texts else None
    return None


def _correlating_call(items: Any) -> str | None:
    if not isinstance(items, list) or not items or not isinstance(last := items[-1], dict):
        return None
    if last.get("type") == "function_call_output" and isinstance(last.get("call_id"), str):
        return last["call_id"] or None
    return None
