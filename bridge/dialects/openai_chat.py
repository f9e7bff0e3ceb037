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
from bridge.protocol.sse import Event, frame

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
        """The model's own assistant message (see :func:`_echo`), then one ``tool`` message
        per result."""
        message = result.message if isinstance(result.message, dict) else {}
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
        document["messages"] = [*document.get("messages", []), _echo(message), *replies]

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
        self._fields: dict[str, list[str]] = {}
        """The text fields of the streamed message (``content``, ``refusal``, a server's
        ``reasoning_content``...), delta by delta."""
        self._message: dict[str, Any] | None = None
        """The message of a blocking body, as the upstream sent it."""
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
        for key, value in delta.items():
            if key not in ("role", "tool_calls") and isinstance(value, str):
                self._fields.setdefault(key, []).append(value)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            index = call.get("index", 0)
            entry = self._calls.setdefault(
                index, {"id": "", "name": "", "arguments": [], "extra": {}}
            )
            if call.get("id"):
                entry["id"] = call["id"]
            # Fields a server adds to a call (Gemini's ``extra_content`` with its thought
            # signature) must go back with it.
            entry["extra"].update(
                (k, v) for k, v in call.items() if k not in ("index", "id", "type", "function")
            )
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
        if isinstance(message, dict):
            self._message = message
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

    def _streamed_message(self) -> dict[str, Any]:
        """The assistant message the chunks so far add up to, as a blocking body has it."""
        joined = ((key, "".join(parts)) for key, parts in self._fields.items())
        fields = {key: text for key, text in joined if text}  # a blocking body has null
        message: dict[str, Any] = {"role": "assistant", "content": fields.pop("content", None)}
        message.update(fields)
        if self._calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": "".join(c["arguments"])},
                    **c["extra"],
                }
                for _, c in sorted(self._calls.items())
            ]
        return message

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
            message=self._message if self._message is not None else self._streamed_message(),
        )


# Fields of a response message that requests do not take back as they are.
_RESPONSE_ONLY_FIELDS: Final = frozenset({"annotations", "audio"})


def _echo(message: dict[str, Any]) -> dict[str, Any]:
    """The model's assistant message as the next request of the inner loop carries it.

    The echo goes to the server that wrote the message, so it keeps that server's own
    vocabulary: the text and the tool calls as sent, ``refusal``, and fields some
    OpenAI-compatible servers add and want back (DeepSeek's ``reasoning_content``, which
    its thinking mode requires in a tool-call loop; OpenRouter's ``reasoning_details``).
    Dropped are what carries nothing (``null`` fields) and what the API returns but does
    not accept (``annotations``; ``audio``, of which a request takes only the ``id``).
    """
    echo: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    for key, value in message.items():
        if key not in echo and value is not None and key not in _RESPONSE_ONLY_FIELDS:
            echo[key] = value
    audio = message.get("audio")
    if isinstance(audio, dict) and audio.get("id"):
        echo["audio"] = {"id": audio["id"]}
    return echo


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
