"""What the core receives and where it writes: a request, an actor, a response sink.

These are the seams between the core and whatever carries the bytes (ASGI, an
embedding program, a test). The sink is written by exactly one task at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.identity.auth import Actor
from bridge.protocol.headers import normalize

__all__ = ["Request", "ResponseSink"]


@dataclass(frozen=True, slots=True)
class Request:
    """A client request, fully read.

    ``path`` is the raw (still percent-encoded) path, so that an encoded slash can be
    told apart from a real one when routing.
    """

    method: str
    path: str
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    """Header pairs, in the order received; names are lower-cased on construction."""
    body: bytes = b""
    actor: Actor | None = None
    """Who asked; ``None`` means: authenticate by the configured auth mode."""
    client_address: str = ""
    scheme: str = "http"

    def __post_init__(self) -> None:
        # Where a request's headers enter the core: an embedding program may write
        # ``Content-Type``; everything downstream compares lower-case names.
        if any(name != name.lower() for name, _ in self.headers):
            object.__setattr__(self, "headers", normalize(self.headers))


class ResponseSink(Protocol):
    """Where the core writes a response. Start once, send frames, end once."""

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Send the status line and headers."""
        ...

    async def send(self, data: bytes) -> None:
        """Send a piece of the body; one call per SSE frame, never merged."""
        ...

    async def end(self, last: bytes = b"") -> None:
        """Send ``last`` (the rest of the body, if any) and finish the body.

        One call rather than :meth:`send` then ``end``: over HTTP it is one write less
        per blocking response.
        """
        ...

    async def wait_disconnected(self) -> None:
        """Return when the client has gone away (never returns for a patient client)."""
        ...
