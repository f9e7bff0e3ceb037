"""Providers: configured upstreams, the routes they serve, and their header policy.

A *provider* is one configured upstream instance (``anthropic``, or a second
``anthropic-eu`` pointing elsewhere). It knows, as data:

* which paths under its route prefix are *bridged* (intercepted, recorded) and by
  which dialect, and which are *passthrough* (relayed unchanged, not recorded);
* how a client path maps to an upstream URL: the base URL's own path is kept and the
  suffix after the route prefix is joined onto it, so nothing a client sends can
  reach another host or climb above the base path;
* which request headers go upstream and how the provider key is injected.

Everything here is pure: no I/O, no framework.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from bridge.auth import Actor
from bridge.config import ProviderConfig, mask_secret
from bridge.errors import Unauthorized
from bridge.headers import bearer_token, connection_tokens, header_value
from bridge.recording.records import CredentialKind

__all__ = [
    "Credential",
    "Headers",
    "Provider",
    "Route",
    "RouteKind",
    "forwardable_response_headers",
    "passthrough_headers",
    "suggest_route",
]

Headers = list[tuple[str, str]]
"""Header pairs with lower-case names, in the order received."""

# Headers the HTTP client sets itself for the upstream hop.
_TRANSPORT = frozenset({"host", "content-length", "accept-encoding"})
# Credentials the client presented to us; the provider key is injected instead.
_CLIENT_AUTH = frozenset({"authorization", "x-api-key"})
# Response headers that must not be copied from the upstream to the client.
# The HTTP server sends its own Date (a response carries one); Server would only tell
# clients which software the provider runs.
_RESPONSE_DROP = frozenset({"content-length", "content-encoding", "date", "server"})


class RouteKind(enum.Enum):
    """Whether a route is intercepted and recorded, or relayed as it is."""

    BRIDGED = "bridged"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class Route:
    """A client path resolved to a provider and what to do with it."""

    provider: Provider
    kind: RouteKind
    suffix: str
    """The path after the provider's route prefix, e.g. ``/v1/messages``."""
    dialect: str | None = None
    """For bridged routes, the dialect name (``anthropic.messages``)."""

    @property
    def template(self) -> str:
        """The route table entry this path matched: the suffix of a bridged or exact route,
        ``<subtree>*`` for a path below a passthrough subtree (``/v1/models/*``). Bounded by
        the table, so metrics label by it, never by the client's own path."""
        table = _ROUTES[self.provider.type]
        if self.suffix in table.bridged or self.suffix in table.exact:
            return self.suffix
        subtree = next((s for s in table.subtrees if self.suffix.startswith(s)), None)
        return f"{subtree}*" if subtree is not None else "other"

    def upstream_url(self, query: str) -> str:
        """The upstream URL for this route, with the client's query string kept."""
        url = self.provider.base_url + self.suffix.lstrip("/")
        return f"{url}?{query}" if query else url


@dataclass(frozen=True, slots=True)
class Credential:
    """The provider credential chosen for one upstream request."""

    kind: CredentialKind
    header: tuple[str, str]
    hint: str


@dataclass(frozen=True, slots=True)
class _RouteTable:
    bridged: dict[str, str]
    """Bridged suffix -> dialect name."""
    exact: frozenset[str]
    """Passthrough suffixes matched exactly."""
    subtrees: tuple[str, ...]
    """Passthrough suffixes matched with everything below them."""
    errors: str
    """The dialect whose error shape the provider's other routes use."""


_OPENAI_DIALECTS = {"/chat/completions": "openai.chat", "/responses": "openai.responses"}

# What each provider type serves, below its route prefix (reference section 1.1).
_ROUTES: dict[str, _RouteTable] = {
    "anthropic": _RouteTable(
        bridged={"/v1/messages": "anthropic.messages"},
        exact=frozenset({"/v1/models", "/v1/messages/count_tokens"}),
        subtrees=("/v1/models/", "/api/event_logging/"),
        errors="anthropic.messages",
    ),
    "openai": _RouteTable(
        bridged=_OPENAI_DIALECTS,
        exact=frozenset({"/models", "/conversations"}),
        subtrees=("/models/", "/conversations/", "/responses/"),
        errors="openai.chat",
    ),
    "copilot": _RouteTable(
        bridged=_OPENAI_DIALECTS,
        exact=frozenset({"/models"}),
        subtrees=("/models/", "/agents/", "/mcp/", "/.well-known/"),
        errors="openai.chat",
    ),
}

# Headers that attribute a request to an actor: set by the gateway only, never by clients.
_ACTOR_HEADER = "x-ai-bridge-actor"

_UNSAFE_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


@dataclass(frozen=True, slots=True)
class Provider:
    """A configured upstream, with its routes and header policy."""

    config: ProviderConfig

    @property
    def name(self) -> str:
        """The instance name, also the first path segment of its routes."""
        return self.config.name

    @property
    def type(self) -> str:
        """The provider type (``anthropic``)."""
        return self.config.type

    @property
    def base_url(self) -> str:
        """The upstream base URL, always ending with ``/``."""
        return self.config.base_url

    @property
    def prefix(self) -> str:
        """The route prefix, e.g. ``/anthropic`` or ``/openai/v1``."""
        return self.config.route_prefix

    @property
    def error_dialect(self) -> str:
        """The dialect whose error shape this provider's non-bridged answers use."""
        return _ROUTES[self.type].errors

    def route(self, path: str) -> Route | None:
        """Resolve a client path to a route, or ``None`` if this provider does not serve it.

        Passthrough suffixes are refused when they could escape the base path once
        decoded: ``..`` or ``.`` segments, encoded slashes or backslashes, NUL.
        """
        if not path.startswith(self.prefix + "/"):
            return None
        suffix = path[len(self.prefix) :]
        table = _ROUTES[self.type]
        if (dialect := table.bridged.get(suffix)) is not None:
            return Route(self, RouteKind.BRIDGED, suffix, dialect)
        if suffix in table.exact or any(suffix.startswith(s) for s in table.subtrees):
            if not _is_safe(suffix):
                return None
            return Route(self, RouteKind.PASSTHROUGH, suffix)
        return None

    def credential(self, headers: Headers) -> Credential:
        """Choose the upstream credential (reference 1.4).

        A key the client brings is BYOK: the client pays with its own key. Anthropic
        takes ``x-api-key`` first, then a bearer token; OpenAI a bearer token; without
        one the configured key is injected. Copilot has no central key: the user's
        GitHub token is required (:class:`~bridge.errors.Unauthorized` without it).
        """
        token = bearer_token(header_value(headers, "authorization"))
        byok_bearer = Credential(
            CredentialKind.BYOK, ("authorization", f"Bearer {token}"), mask_secret(token)
        )
        if self.type == "anthropic":
            api_key = header_value(headers, "x-api-key")
            if api_key:
                return Credential(CredentialKind.BYOK, ("x-api-key", api_key), mask_secret(api_key))
        if token:
            return byok_bearer
        if self.type == "copilot":
            raise Unauthorized(
                "Copilot requests need the user's GitHub Copilot token in 'Authorization: Bearer'"
            )
        return self.centralized(self.config.key)

    def centralized(self, key: str) -> Credential:
        """The credential of one of the provider's own keys, in the header its API wants."""
        header = (
            ("x-api-key", key) if self.type == "anthropic" else ("authorization", f"Bearer {key}")
        )
        return Credential(CredentialKind.CENTRALIZED, header, mask_secret(key))

    def upstream_headers(
        self,
        headers: Headers,
        credential: Credential,
        *,
        strip: Iterable[str] = (),
        actor: Actor | None = None,
    ) -> Headers:
        """The client's headers as the upstream should see them (reference 1.5).

        Hop-by-hop, transport-managed and client credential headers are removed, as
        are the names in ``strip`` (gateway identity) and any ``X-AI-Bridge-Actor*``
        header a client made up; everything else the client sent
        (``anthropic-version``, ``anthropic-beta``, ``user-agent``...) is forwarded
        unchanged. Then the chosen credential, and with ``send_actor_headers`` the
        actor's id and metadata (reference 1.6).
        """
        drop = connection_tokens(headers) | _TRANSPORT | _CLIENT_AUTH
        drop |= {name.lower() for name in strip}
        out = [
            (name, value)
            for name, value in headers
            if name not in drop and not name.startswith(_ACTOR_HEADER)
        ]
        if credential.header[1]:
            out.append(credential.header)
        if actor is not None and self.config.send_actor_headers:
            out.append(("x-ai-bridge-actor-id", actor.id))
            out.extend(
                (f"x-ai-bridge-actor-metadata-{key.lower()}", str(value))
                for key, value in actor.metadata.items()
            )
        out.append(("accept-encoding", "identity"))
        return out


def _is_safe(suffix: str) -> bool:
    decoded = unquote(suffix)
    if "\\" in decoded or "\x00" in decoded or "%" in decoded:
        return False
    if "%2f" in suffix.lower() or "%5c" in suffix.lower():
        return False
    return _UNSAFE_SEGMENT.search(decoded) is None and "//" not in decoded


def forwardable_response_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """Upstream response headers worth relaying to the client.

    Everything but hop-by-hop headers (those its ``Connection`` names included) and
    framing ones: clients act on ``retry-after``, ``request-id`` and the rate-limit
    headers, so they must reach them. Names come out lower-case, whatever case the
    upstream wrote them in.
    """
    pairs = [(k.lower(), v) for k, v in headers]
    drop = connection_tokens(pairs) | _RESPONSE_DROP
    return [(k, v) for k, v in pairs if k not in drop]


def passthrough_headers(
    provider: Provider,
    headers: Headers,
    *,
    client_address: str,
    scheme: str,
    strip: Iterable[str] = (),
) -> Headers:
    """Request headers for a passthrough route (reference 1.3).

    The client's headers minus hop-by-hop and transport ones, with ``X-Forwarded-*``
    added, and the provider key injected only when the client brought none.
    """
    drop = connection_tokens(headers) | _TRANSPORT
    drop |= {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
    headers = [(k, v) for k, v in headers if not k.startswith(_ACTOR_HEADER)]
    drop |= {name.lower() for name in strip}
    out = [(name, value) for name, value in headers if name not in drop]
    forwarded = [v for k, v in headers if k == "x-forwarded-for"]
    if client_address:
        forwarded.append(client_address)
    if forwarded:
        out.append(("x-forwarded-for", ", ".join(forwarded)))
    if host := header_value(headers, "host"):
        out.append(("x-forwarded-host", host))
    out.append(("x-forwarded-proto", scheme))
    if not header_value(headers, "user-agent"):
        out.append(("user-agent", "bridge"))
    # Whatever credential the client sent and we did not strip (BYOK) is kept.
    key = provider.config.key
    if provider.type == "anthropic":
        if key and not (header_value(out, "x-api-key") or header_value(out, "authorization")):
            out.append(("x-api-key", key))
    elif provider.type == "openai" and key and not header_value(out, "authorization"):
        out.append(("authorization", f"Bearer {key}"))
    out.append(("accept-encoding", "identity"))
    return out


def suggest_route(providers: Iterable[Provider], path: str) -> tuple[Provider, str] | None:
    """The provider and path ``path`` was probably meant as, if any.

    For a client pointed at the gateway's root instead of a provider's base URL: it sends
    ``POST /v1/messages`` (or ``/v1/chat/completions``, where the OpenAI prefix already
    holds the ``/v1``). Providers named like their type are preferred.
    """
    for provider in sorted(providers, key=lambda p: p.name != p.type):
        candidates = [provider.prefix + path]
        if provider.prefix.endswith("/v1") and path.startswith("/v1/"):
            candidates.append(provider.prefix + path.removeprefix("/v1"))
        for candidate in candidates:
            if provider.route(candidate) is not None:
                return provider, candidate
    return None
