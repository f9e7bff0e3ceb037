"""The records an interception leaves behind.

Every record is a frozen dataclass that carries its own id, so that writing one
twice is harmless (stores insert with "ignore on conflict"): a journal replay or a
retried batch never duplicates a row. Timestamps are timezone-aware UTC.

One interception produces, in this order:

* one :class:`InterceptionStarted`, before the first upstream call;
* any number of :class:`TokenUsage`, :class:`PromptUsage`, :class:`ToolUsage` and
  :class:`ModelThought` records;
* exactly one :class:`InterceptionEnded`, whatever happened (also when the client
  went away or the gateway was shutting down).

A request on a passthrough route is no interception: it leaves one
:class:`PassthroughCall`, written once the call is over (refused ones included).
"""

from __future__ import annotations

import datetime as _dt
import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from bridge.protocol.usage import TOKEN_COUNTERS, TokenCounts

__all__ = [
    "CredentialKind",
    "InterceptionEnded",
    "InterceptionStarted",
    "ModelThought",
    "Outcome",
    "PassthroughCall",
    "PromptUsage",
    "Record",
    "TokenUsage",
    "ToolUsage",
    "new_id",
    "utcnow",
]


def new_id() -> str:
    """A fresh random UUIDv4 as text, the id of every record and interception."""
    return str(uuid.uuid4())


def utcnow() -> _dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return _dt.datetime.now(_dt.UTC)


class Outcome(enum.StrEnum):
    """How an interception ended. Exactly one per interception."""

    COMPLETED = "completed"
    FAILED = "failed"
    CLIENT_DISCONNECTED = "client_disconnected"
    REJECTED = "rejected"


class CredentialKind(enum.StrEnum):
    """Whose provider key paid for the request."""

    CENTRALIZED = "centralized"
    BYOK = "byok"


@dataclass(frozen=True, slots=True)
class InterceptionStarted:
    """One client request to a bridged route, before anything is sent upstream."""

    id: str
    initiator_id: str
    provider: str
    """The provider type: ``anthropic``, ``openai``, ``copilot``."""
    provider_name: str
    """The configured instance name, e.g. ``anthropic`` or ``copilot-business``."""
    model: str
    streaming: bool
    client: str
    user_agent: str
    credential_kind: CredentialKind
    credential_hint: str
    """The provider key, masked (docs/behaviour.md §2.4): never the key itself."""
    session_id: str | None = None
    correlating_tool_call_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    started_at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class InterceptionEnded:
    """The end of an interception, with why it ended."""

    interception_id: str
    outcome: Outcome
    error: str | None = None
    """A short, key-free description of what went wrong, if anything did."""
    ended_at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The true totals of one upstream response (one message, completion or response).

    The counters are those of :class:`~bridge.protocol.usage.TokenCounts`, in the same
    order (:data:`~bridge.protocol.usage.TOKEN_COUNTERS`), spelled out here because they
    are the record's fields and the table's columns; :meth:`of` and :attr:`counts`
    convert, and a test keeps the two lists equal.
    """

    interception_id: str
    provider_response_id: str
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    web_search_requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    created_at: _dt.datetime = field(default_factory=utcnow)

    @classmethod
    def of(cls, interception_id: str, provider_response_id: str, counts: TokenCounts) -> TokenUsage:
        """The record of one response's counters (``extra`` copied, not shared)."""
        named = {name: getattr(counts, name) for name in TOKEN_COUNTERS}
        return cls(interception_id, provider_response_id, **named, extra=dict(counts.extra))

    @property
    def counts(self) -> TokenCounts:
        """The counters alone, without the record's identity."""
        named = {name: getattr(self, name) for name in TOKEN_COUNTERS}
        return TokenCounts(**named, extra=dict(self.extra))


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """The user's last prompt of an interception (recorded at most once)."""

    interception_id: str
    provider_response_id: str
    prompt: str
    id: str = field(default_factory=new_id)
    created_at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ToolUsage:
    """One tool call chosen by the model: a client tool, or an injected MCP tool."""

    interception_id: str
    provider_response_id: str
    tool: str
    tool_call_id: str
    input: Any
    """The call's arguments as parsed JSON, or the raw text when it does not parse."""
    injected: bool = False
    server_url: str | None = None
    invocation_error: str | None = None
    id: str = field(default_factory=new_id)
    created_at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ModelThought:
    """A piece of model reasoning: a thinking block, a reasoning summary, a commentary."""

    interception_id: str
    content: str
    source: str
    """``thinking``, ``reasoning_summary`` or ``commentary``."""
    id: str = field(default_factory=new_id)
    created_at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class PassthroughCall:
    """One request on a passthrough route, relayed or refused: who did what to which
    path, and what came of it.

    Passthrough routes act on what the provider stores (models, stored responses,
    conversations), under the gateway's shared key unless the user brought their own:
    this is the audit trail of who did it. The query string is not kept (it may carry
    anything); the credential only as its kind and masked hint.
    """

    initiator_id: str
    provider: str
    """The provider type: ``anthropic``, ``openai``, ``copilot``."""
    provider_name: str
    """The configured instance name, e.g. ``openai`` or ``copilot-business``."""
    method: str
    path: str
    """The client's path, as sent (still percent-encoded), e.g. ``/openai/v1/models``."""
    status: int | None
    """The HTTP status the client got (the upstream's, or the gateway's own 405, 502,
    504...); ``None`` when the client left before any answer."""
    duration_ms: int
    credential_kind: CredentialKind | None
    """Whose key went upstream; ``None`` when none did (a Copilot request without the
    user's token, a provider without a configured key)."""
    credential_hint: str
    """That key, masked; empty when none went upstream."""
    id: str = field(default_factory=new_id)
    started_at: _dt.datetime = field(default_factory=utcnow)


Record: TypeAlias = (
    InterceptionStarted
    | InterceptionEnded
    | TokenUsage
    | PromptUsage
    | ToolUsage
    | ModelThought
    | PassthroughCall
)
