"""Which AI client sent a request, and its session id (docs/behaviour.md §9.4).

The rules are a table, first match wins, read from the lower-cased ``User-Agent``
and a few client-specific headers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from bridge.protocol.headers import header_value

__all__ = ["guess_client", "session_id"]

# (user-agent prefix, client name), in order: the first match wins.
_USER_AGENT_PREFIXES: Final = (
    ("mux/", "Mux"),
    ("claude", "Claude Code"),
    ("codex", "Codex"),
    ("zed/", "Zed"),
    ("githubcopilotchat/", "GitHub Copilot (VS Code)"),
    ("copilot/", "GitHub Copilot (CLI)"),
    ("kilo-code/", "Kilo Code"),
    ("roo-code/", "Roo Code"),
    ("coder-agents/", "Coder Agents"),
    ("charm crush/", "Charm Crush"),
    ("opencode/", "OpenCode"),
)
_ORIGINATORS: Final = {"kilo-code": "Kilo Code", "roo-code": "Roo Code"}
# The official SDKs (Stainless-generated) send ``Anthropic/Python 2.14.0``,
# ``AsyncOpenAI/Python 3.57.0``, ``OpenAI/JS 4.104.0``...: a program using one is recorded
# as ``anthropic-python``. Last in line, because tools built on an SDK (Cursor...) say who
# they are elsewhere.
_SDK_USER_AGENT: Final = re.compile(r"(?:async)?(anthropic|openai)/([a-z]+)\b")

# The header carrying each client's session id.
_SESSION_HEADERS: Final = {
    "Claude Code": ("x-claude-code-session-id",),
    "Codex": ("session-id", "session_id"),
    "Mux": ("x-mux-workspace-id",),
    "GitHub Copilot (VS Code)": ("x-interaction-id",),
    "GitHub Copilot (CLI)": ("x-client-session-id",),
    "Kilo Code": ("x-kilocode-taskid",),
    "Coder Agents": ("x-coder-chat-id",),
    "OpenCode": ("x-opencode-session",),
}


def guess_client(headers: Sequence[tuple[str, str]]) -> str:
    """The client's name, or ``Unknown``."""
    user_agent = header_value(headers, "user-agent").lower()
    for prefix, name in _USER_AGENT_PREFIXES:
        if user_agent.startswith(prefix):
            return name
    originator = header_value(headers, "originator").lower()
    if originator in _ORIGINATORS:
        return _ORIGINATORS[originator]
    if header_value(headers, "x-cursor-client-version"):
        return "Cursor"
    if sdk := _SDK_USER_AGENT.match(user_agent):
        return f"{sdk[1]}-{sdk[2]}"
    return "Unknown"


def session_id(
    client: str, headers: Sequence[tuple[str, str]], body_hint: str | None = None
) -> str | None:
    """The client's session id from its header, else from the body (Claude Code)."""
    for name in _SESSION_HEADERS.get(client, ()):
        if value := header_value(headers, name).strip():
            return value
    if client == "Claude Code" and body_hint:
        return body_hint
    return None
