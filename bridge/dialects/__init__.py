"""Dialects: what differs between the provider APIs, as pure functions over JSON and events.

A dialect never awaits and never does I/O; the one loop in :mod:`bridge.core`
drives every dialect the same way.
"""

from __future__ import annotations

from bridge.dialects.anthropic import AnthropicMessages
from bridge.dialects.base import Dialect, ParsedRequest, TokenCounts, ToolCall, Turn, TurnResult
from bridge.dialects.openai_chat import OpenAIChat
from bridge.dialects.openai_responses import OpenAIResponses

__all__ = [
    "DIALECTS",
    "AnthropicMessages",
    "Dialect",
    "OpenAIChat",
    "OpenAIResponses",
    "ParsedRequest",
    "TokenCounts",
    "ToolCall",
    "Turn",
    "TurnResult",
]

DIALECTS: dict[str, Dialect] = {
    "anthropic.messages": AnthropicMessages(),
    "openai.chat": OpenAIChat(),
    "openai.responses": OpenAIResponses(),
}
"""Every dialect by the name provider route tables use."""
