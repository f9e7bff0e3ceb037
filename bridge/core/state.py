"""What one interception is: its plan, the services it uses, and its progress.

An interception's parts change at different rates, so they are three objects:

* :class:`Interception` is the plan, decided before the first upstream call and frozen:
  the route, the request and who sent it, the credential, the tools offered and the
  limits. It holds the other two.
* :class:`Services` are what the gateway lends it (the upstream pool, the recorder, the
  tool hub, the key pool, telemetry). The engine builds one per provider, once, and
  every interception of that provider shares it.
* :class:`Progress` is what the interception learns as it runs, and the only part that
  changes: it is written by the interception's own tasks only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from bridge.core.exchange import Request
from bridge.core.observer import Observer
from bridge.dialects.base import Dialect, ParsedRequest, TurnResult
from bridge.dialects.providers import Credential, Route
from bridge.identity.auth import Actor
from bridge.recording.recorder import Recorder
from bridge.recording.records import Outcome
from bridge.services.breaker import CircuitBreaker
from bridge.services.mcp import Tool, ToolHub
from bridge.services.resilience import KeyPool
from bridge.services.upstream import UpstreamClient
from bridge.telemetry.apidump import APIDump

__all__ = ["RECORD_DEADLINE", "Interception", "Progress", "Services"]

RECORD_DEADLINE = 5.0
"""Seconds the final records of a cancelled interception may take to be queued."""

_OBSERVER = Observer()


@dataclass(frozen=True, slots=True)
class Services:
    """What the gateway lends an interception; shared by the interceptions of a provider."""

    upstream: UpstreamClient
    recorder: Recorder
    hub: ToolHub | None = None
    pool: KeyPool | None = None
    """The provider's centralized keys; used only for centralized requests."""
    observer: Observer = _OBSERVER
    """Metrics, spans and the ended log line (none of them by default)."""
    dump: APIDump | None = None
    """Writes every upstream request and response to files (``observability.dump_dir``)."""
    sleep: Callable[[float], Awaitable[None]] = trio.sleep
    """How retries wait (tests pass a recording fake)."""


@dataclass(slots=True)
class Progress:
    """What an interception has learnt so far; the part of it that changes."""

    outcome: Outcome = Outcome.FAILED
    error: str | None = None
    """Why the outcome is not ``completed``, as recorded."""
    failure: str | None = None
    """The failure the client was told of, if any (becomes :attr:`error`)."""
    rejected: bool = False
    """The circuit breaker refused the upstream call."""
    waited: float = 0.0
    """Seconds spent waiting for the upstream and for tools (the rest is the gateway's)."""
    client: str = "Unknown"
    """The client program, as guessed from the request's headers."""
    client_gone: bool = False
    held_back: bool = False
    """Whether raw frames of the current upstream call are held back, not yet relayed."""
    prompt_recorded: bool = False
    turns: list[TurnResult] = field(default_factory=list)
    """Every upstream response so far, cut ones too."""

    def answer_delivered(
        self, *, frames_delivered: bool, complete: bool, injected: frozenset[str]
    ) -> bool:
        """Whether the client was handed the whole answer before it left.

        A client may read the final event (Anthropic's ``message_stop``, or the provider's
        ``error`` event) and hang up before the gateway has read the upstream's end or
        written the end of the body: it got everything. That is so when the stream's every
        frame went out (``frames_delivered``: none cut short), nothing was held back, and
        the last upstream turn either ended with an error event or completed with no
        ``injected`` tool call the loop would still run; or when the end frame went out
        too (``complete``). A blocking answer goes out only after the records are queued,
        so a client that left before never saw it.
        """
        if not frames_delivered:
            return False
        if complete:
            return True  # the end frame went out as well
        last = self.turns[-1] if self.turns else None
        return (
            last is not None
            and not self.held_back
            and (
                last.error is not None
                or (last.complete and not any(call.name in injected for call in last.tool_calls))
            )
        )


@dataclass(frozen=True, slots=True)
class Interception:
    """One interception's plan, decided before it starts; with its services and progress."""

    id: str
    route: Route
    request: Request
    actor: Actor
    parsed: ParsedRequest
    dialect: Dialect
    credential: Credential
    services: Services
    strip_headers: tuple[str, ...] = ()
    trusted_peer: bool = False
    """The client's address is in ``server.trusted_proxies``: its X-Forwarded-For holds."""
    tools: tuple[Tool, ...] = ()
    """The injected tools offered to the model, sorted by id."""
    breaker: CircuitBreaker | None = None
    """The breaker of this provider, endpoint and model, if the provider has them."""
    max_iterations: int = 16
    call_timeout: float = 30.0
    max_retries: int = 0
    client_write_timeout: float = 60.0
    """Seconds a write to the client may block before the client counts as gone."""
    progress: Progress = field(default_factory=Progress)

    @property
    def injected_names(self) -> frozenset[str]:
        """The names the model calls injected tools by."""
        return frozenset(tool.id for tool in self.tools)
