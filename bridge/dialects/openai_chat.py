"""The OpenAI Chat Completions dialect (``/chat/completions``, also Copilot and any
OpenAI-compatible server).

Streaming requests get ``stream_options.include_usage = true`` so that the final
chunk reports usage; that is the one edit made to the request, and it is
deterministic (same input, same bytes). Every chunk is relayed as the upstream sent
it with only its ``id`` swapped for the interception id; the upstream's
``[DONE]`` is held back and the gateway ends the stream with its own, also after
an error. Every tool call of a stream is recorded, parallel ones too, whatever
index the provider starts counting from.
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
    parse_json_object,
    required_messages,
    required_model,
    swap_id,
    tool_parameters,
)
from bridge.dialects.openai_common import error_body, error_document, last_text_part, upstream_error
from bridge.errors import UpstreamProtocolError
from bridge.sse import Event, frame

__all__ = ["OpenAIChat", "usage_counts"]

_DONE: Final = b"data: [DONE]\n\n"


class OpenAIChat:
    """OpenAI's Chat Completions API."""

    name = "openai.chat"
    relay_raw = False

    def parse_request(self, body: bytes) -> ParsedRequest:
        """Check ``model`` and ``messages``; read the prompt and the answered tool call."""
        document = parse_json_object(body)
        model = required_model(document)
        messages = required_messages(document)
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        prompt = None
        if last.get("role") == "user":
            content = last.get("content")
            prompt = content if isinstance(content, str) and content else last_text_part(content)
        tool_call_id = last.get("tool_call_id") if last.get("role") == "tool" else None
        return ParsedRequest(
            document=document,
            model=model,
            stream=document.get("stream") is True,
            prompt=prompt,
            correlating_tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
        )

    def wants_tools(self, request: ParsedRequest) -> bool:
        """Always: every chat request may use injected tools."""
        return True

    def prepare(
        self, request: ParsedRequest, body: bytes, tools: Sequence[InjectedTool]
    ) -> tuple[dict[str, Any] | None, bytes]:
        """Force ``stream_options.include_usage`` on streams and append injected tools.

        Without either edit the client's bytes go upstream unchanged.
        """
        document = request.document
        options = document.get("stream_options")
        needs_usage = request.stream and not (
            isinstance(options, dict) and options.get("include_usage") is True
        )
        if not needs_usage and not tools:
            return None, body
        edited = dict(document)
        if needs_usage:
            edited["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        if tools:
            edited["tools"] = [
                *(document.get("tools") or []),
                *(
                    {
                        "type": "function",
                        "function": {
                            "name": tool.id,
                            "strict": False,
                            "description": tool.description,
                            "parameters": tool_parameters(tool),
                        },
                    }
                    for tool in tools
                ),
            ]
            edited["parallel_tool_calls"] = False
        return edited, dumps(edited)

    def append_results(
        self, document: dict[str, Any], result: TurnResult, outcomes: Sequence[ToolOutcome]
    ) -> None:
        """The assistant message with its tool calls, then one ``tool`` message per result."""
        message = result.message if isinstance(result.message, dict) else {}
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _encode_arguments(call.input)},
            }
            for call in result.tool_calls
        ]
        replies = [
            {
                "role": "tool",
                "tool_call_id": outcome.call.id,
                "content": json.dumps(
                    {"error": True, "message": outcome.error}
                    if outcome.error is not None
                    else outcome.result_json
                ),
            }
            for outcome in outcomes
        ]
        assistant = {"role": "assistant", "content": message.get("content"), "tool_calls": calls}
        document["messages"] = [*document.get("messages", []), assistant, *replies]

    def open_exchange(self, interception_id: str, injected: frozenset[str]) -> _Exchange:
        """State shared by the upstream completions of one interception."""
        return _Exchange(interception_id, injected)

    def error_body(self, status: int, message: str) -> bytes:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(status, message)

    def upstream_error(self, status: int, content_type: str, body: bytes) -> tuple[str, bytes]:
        """Relayed unchanged."""
        return upstream_error(status, content_type, body)

    def stream_error_frame(self, message: str) -> bytes:
        """``data: {"error": ...}``, as OpenAI-compatible servers send mid-stream."""
        return b"data: " + dumps(error_document(502, message)) + b"\n\n"

    def stream_end_frame(self) -> bytes:
        """``data: [DONE]``: the gateway ends every chat stream with its own."""
        return _DONE

    def ping_frame(self) -> None:
        """Chat streams have no keep-alive event."""
        return


class _Exchange:
    """What the client has seen across the upstream completions of one interception."""

    def __init__(self, interception_id: str, injected: frozenset[str]) -> None:
        self.interception_id = interception_id
        self.injected = injected
        self.usage: dict[str, Any] = {}
        """The summed usage of the completions before the current one."""
        self._current: _Turn | None = None

    def new_turn(self) -> _Turn:
        if self._current is not None and self._current.usage is not None:
            self.usage = add_usage(self.usage, self._current.usage)
        self._current = _Turn(self)
        return self._current


class _Turn:
    """One upstream completion, from its chunks or its whole body.

    Chunks that carry an injected tool call, and the finish and usage chunks of a
    completion that ends in one, are held back: the client never sees them.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._interception_id = exchange.interception_id
        self._hidden: set[int] = set()
        self._response_id = ""
        self._usage: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._text: list[str] = []
        self._finished = False
        self._done = False
        self._error: str | None = None

    def feed_event(self, event: Event) -> bytes | None:
        if event.data == "[DONE]":
            self._done = True
            return None
        try:
            chunk = json.loads(event.data)
        except ValueError:
            raise UpstreamProtocolError("upstream sent a chunk that is not JSON") from None
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("upstream sent a chunk that is not a JSON object")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            self._error = str(message or event.data)
            return frame(event.raw)
        if not self._response_id:
            self._response_id = str(chunk.get("id") or "")
        hide = False
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                hide |= self._on_choice(choice)
        if isinstance(usage := chunk.get("usage"), dict):
            self._usage = usage
            earlier = self._exchange.usage
            if self._hidden:
                return None
            if earlier:
                chunk["usage"] = add_usage(earlier, usage)
                chunk["id"] = self._interception_id
                return b"data: " + dumps(chunk) + b"\n\n"
        if hide:
            return None
        return swap_id(frame(event.raw), self._response_id, self._interception_id)

    def _on_choice(self, choice: dict[str, Any]) -> bool:
        """Accumulate one choice; whether it must be held back from the client."""
        hide = False
        if choice.get("finish_reason"):
            self._finished = True
            hide = bool(self._hidden)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return hide
        if isinstance(content := delta.get("content"), str):
            self._text.append(content)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            index = call.get("index", 0)
            entry = self._calls.setdefault(index, {"id": "", "name": "", "arguments": []})
            if call.get("id"):
                entry["id"] = call["id"]
            function = call.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    entry["name"] += function["name"]
                    if entry["name"].strip() in self._exchange.injected:
                        self._hidden.add(index)
                if isinstance(function.get("arguments"), str):
                    entry["arguments"].append(function["arguments"])
            hide |= index in self._hidden
        return hide

    def feed_body(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamProtocolError("upstream sent a response body that is not JSON") from None
        if not isinstance(document, dict):
            raise UpstreamProtocolError("upstream sent a response body that is not a JSON object")
        self._response_id = str(document.get("id") or "")
        self._usage = document.get("usage") if isinstance(document.get("usage"), dict) else None
        choices = document.get("choices") or [{}]
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for index, call in enumerate(calls if isinstance(calls, list) else ()):
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            if not isinstance(function, dict):
                function = {}
            self._calls[index] = {
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "arguments": [function.get("arguments") or ""],
            }
        self._done = True
        earlier = self._exchange.usage
        if earlier and self._usage is not None:
            document["id"] = self._interception_id
            document["usage"] = add_usage(earlier, self._usage)
            return dumps(document)
        return swap_id(body, self._response_id, self._interception_id)

    @property
    def usage(self) -> dict[str, Any] | None:
        """The completion's usage as last reported."""
        return self._usage

    @property
    def text(self) -> str:
        """The streamed assistant text so far."""
        return "".join(self._text)

    def result(self) -> TurnResult:
        calls = tuple(
            ToolCall(str(c["id"]), str(c["name"]).strip(), _arguments("".join(c["arguments"])))
            for _, c in sorted(self._calls.items())
        )
        return TurnResult(
            response_id=self._response_id,
            usage=usage_counts(self._usage) if self._usage is not None else None,
            tool_calls=calls,
            error=self._error,
            complete=(self._done or self._finished) and self._error is None,
            message={"role": "assistant", "content": self.text or None},
        )


def _encode_arguments(arguments: Any) -> str:
    """Tool-call arguments as the JSON text chat messages carry."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _arguments(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def usage_counts(usage: dict[str, Any]) -> TokenCounts:
    """Chat usage as token counts: cached prompt tokens are cache reads, not input."""
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    cached = int_field(prompt, "cached_tokens")
    extra = {
        name: value
        for name, value in (
            ("prompt_audio", int_field(prompt, "audio_tokens")),
            ("completion_audio", int_field(completion, "audio_tokens")),
            ("completion_accepted_prediction", int_field(completion, "accepted_prediction_tokens")),
            ("completion_rejected_prediction", int_field(completion, "rejected_prediction_tokens")),
        )
        if value
    }
    return TokenCounts(
        input=int_field(usage, "prompt_tokens") - cached,
        output=int_field(usage, "completion_tokens"),
        cache_read=cached,
        reasoning=int_field(completion, "reasoning_tokens"),
        extra=extra,
    )
