"""The sides of a comparison: the gateway, the mock directly, and optionally a peer gateway.

Every side-by-side scenario (latency, throughput, time to first event, concurrent streams)
takes a :class:`Sides` and sends the same body and ``x-mock-*`` headers to each side; only the
path and the credentials differ. The gateway and the peer add the provider key themselves, the
direct side sends the mock's test keys. "Added" always means a side minus the direct side.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from benchmarks.client import DIRECT_AUTH

__all__ = ["DIRECT_PATHS", "GATEWAY_PATHS", "SCENARIOS", "Sides", "Target"]

SCENARIOS: Final = {
    "anthropic": "anthropic_text",
    "chat": "openai_chat_text",
    "responses": "openai_responses_text",
}
"""The three blocking APIs and the mock scenario that answers each."""

GATEWAY_PATHS: Final = {
    "anthropic": "/anthropic/v1/messages",
    "chat": "/openai/v1/chat/completions",
    "responses": "/openai/v1/responses",
}
DIRECT_PATHS: Final = {
    "anthropic": "/v1/messages",
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
}
"""The providers' own paths: the mock's, and LiteLLM's (it serves the same ones)."""

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Target:
    """One side: a server on 127.0.0.1:``port`` and its path for each API."""

    name: str
    """``gateway``, ``direct`` or ``peer``: the key of its raw data and CPU share."""
    port: int
    paths: Mapping[str, str]
    auth: Headers = ()

    def headers(self, own: Headers) -> Headers:
        """``own`` (the scenario's ``x-mock-*`` headers) plus the credentials this side needs."""
        return own + self.auth


@dataclass(frozen=True, slots=True)
class Sides:
    """The gateway and the direct side, and the peer when the run has one."""

    gateway: Target
    direct: Target
    peer: Target | None = None
    peer_label: str = "peer"
    """How reports name the peer (e.g. ``LiteLLM 1.108.6``)."""

    @classmethod
    def of(
        cls, gateway_port: int, mock_port: int, peer_port: int | None = None, peer_label: str = ""
    ) -> Sides:
        peer = None if peer_port is None else Target("peer", peer_port, DIRECT_PATHS)
        return cls(
            Target("gateway", gateway_port, GATEWAY_PATHS),
            Target("direct", mock_port, DIRECT_PATHS, DIRECT_AUTH),
            peer,
            peer_label or "peer",
        )

    def __iter__(self) -> Iterator[Target]:
        """Direct first, then the gateway, then the peer: the order rounds run in."""
        yield self.direct
        yield self.gateway
        if self.peer is not None:
            yield self.peer

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(target.name for target in self)

    @property
    def proxies(self) -> tuple[Target, ...]:
        """The sides that add latency over direct: the gateway, and the peer if any."""
        return tuple(target for target in self if target.name != "direct")
