"""Providers: configured upstreams, the routes they serve, and their header policy.

A *provider* is one configured upstream instance (``anthropic``, or a second
``anthropic-eu`` pointing elsewhere). It knows, as data:

* which paths under its route prefix are *bridged* (intercepted, recorded) and by
  which dialect, and which are *passthrough* (relayed unchanged, recorded as one
  :class:`~bridge.recording.records.PassthroughCall` each);
* which methods each route takes: any other is refused (405) before anything goes
  upstream. A passthrough route's *writes* (changing or deleting what the provider
  stores) are allowed only with the user's own key, or where the operator turned on
  ``passthrough_writes``: under the shared key, the objects are everyone's;
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
from bridge.errors import MethodNotAllowed, Unauthorized
from bridge.headers import bearer_token, connection_tokens, header_value
from bridge.recording.records import CredentialKind

__all__ = [
    "Credential",
    "Headers",
    "Provider",
    "Route",
    "RouteKind",
    "forwardable_response_headers",
    "passthrough_credential",
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
class _Methods:
    """One row of a provider's route table: a path pattern and the methods it takes.

    The pattern is matched segment by segment: ``*`` stands for exactly one non-empty
    segment (an id), a final ``**`` for whatever follows (one or more segments).
    """

    pattern: str
    methods: tuple[str, ...]
    """Methods open to every caller: reads, token counting, telemetry, model calls."""
    writes: tuple[str, ...] = ()
    """Methods that create, change or delete objects the provider stores: open only to
    a caller whose own key goes upstream, or with ``passthrough_writes``."""

    def matches(self, suffix: str) -> bool:
        """Whether ``suffix`` (the path below the route prefix) is this row's."""
        want, got = self.pattern.split("/"), suffix.split("/")
        if want[-1] == "**":
            if len(got) < len(want):
                return False
            want, got = want[:-1], got[: len(want) - 1]
        return len(want) == len(got) and all(
            w == g or (w == "*" and g != "") for w, g in zip(want, got, strict=True)
        )


_POST = ("POST",)
_GET = ("GET",)


@dataclass(frozen=True, slots=True)
class Route:
    """A client path resolved to a provider and what to do with it."""

    provider: Provider
    kind: RouteKind
    suffix: str
    """The path after the provider's route prefix, e.g. ``/v1/messages``."""
    dialect: str | None = None
    """For bridged routes, the dialect name (``anthropic.messages``)."""
    methods: _Methods = _Methods("", _POST)
    """The methods the route takes (bridged routes: POST)."""

    @property
    def template(self) -> str:
        """The route table entry this path matched: a bridged suffix, or the pattern of the
        passthrough row (``/v1/models/**``). Bounded by the table, so metrics label by it,
        never by the client's own path."""
        return self.suffix if self.kind is RouteKind.BRIDGED else self.methods.pattern

    def upstream_url(self, query: str) -> str:
        """The upstream URL for this route, with the client's query string kept."""
        url = self.provider.base_url + self.suffix.lstrip("/")
        return f"{url}?{query}" if query else url

    def allowed(self, *, writes: bool) -> tuple[str, ...]:
        """The methods a caller may use here; ``writes``: its writes are allowed too."""
        return self.methods.methods + (self.methods.writes if writes else ())

    def check_method(self, method: str, path: str, *, writes: bool) -> None:
        """Raise :class:`~bridge.errors.MethodNotAllowed` unless ``method`` is allowed
        here; ``writes`` as in :meth:`allowed`. The message says what would allow it."""
        allowed = self.allowed(writes=writes)
        if method in allowed:
            return
        if method in self.methods.writes:
            name = self.provider.name
            raise MethodNotAllowed(
                f"{method} {path} would change what the provider stores under the"
                f" gateway's {name} key, whose objects every user of the gateway shares, so"
                " it is off: bring your own provider key (and put your gateway key in"
                " X-Bridge-Key), or ask the operator to set"
                f" providers.{name}.passthrough_writes = true",
                allowed,
            )
        use = f"use {', '.join(allowed)}" if allowed else "no method is open to you"
        raise MethodNotAllowed(f"method {method} is not allowed on {path}: {use}", allowed)


@dataclass(frozen=True, slots=True)
class Credential:
    """The provider credential chosen for one upstream request."""

    kind: CredentialKind
    header: tuple[str, str]
    hint: str


@dataclass(frozen=True, slots=True)
class _RouteTable:
    bridged: dict[str, str]
    """Bridged suffix -> dialect name (bridged routes take POST only)."""
    passthrough: tuple[_Methods, ...]
    """Passthrough rows; the first whose pattern matches a suffix decides."""
    errors: str
    """The dialect whose error shape the provider's other routes use."""


_OPENAI_DIALECTS = {"/chat/completions": "openai.chat", "/responses": "openai.responses"}

# What each provider type serves, below its route prefix (reference section 1.1), and
# with which methods: the providers' documented ones. Copilot always gets the user's own
# token, so its writes are always the user's.
_ROUTES: dict[str, _RouteTable] = {
    "anthropic": _RouteTable(
        bridged={"/v1/messages": "anthropic.messages"},
        passthrough=(
            _Methods("/v1/models", _GET),
            _Methods("/v1/models/**", _GET),
            _Methods("/v1/messages/count_tokens", _POST),
            _Methods("/api/event_logging/**", _POST),
        ),
        errors="anthropic.messages",
    ),
    "openai": _RouteTable(
        bridged=_OPENAI_DIALECTS,
        passthrough=(
            _Methods("/models", _GET),
            # "**": OpenAI-compatible servers name models like "meta-llama/Llama-3-8B".
            _Methods("/models/**", _GET, writes=("DELETE",)),  # DELETE: a fine-tuned model
            _Methods("/responses/input_tokens", _POST),
            _Methods("/responses/compact", _POST),
            _Methods("/responses/*", _GET, writes=("DELETE",)),
            _Methods("/responses/*/cancel", (), writes=_POST),
            _Methods("/responses/*/input_items", _GET),
            _Methods("/conversations", (), writes=_POST),
            _Methods("/conversations/*", _GET, writes=("POST", "DELETE")),
            _Methods("/conversations/*/items", _GET, writes=_POST),
            _Methods("/conversations/*/items/*", _GET, writes=("DELETE",)),
        ),
        errors="openai.chat",
    ),
    "copilot": _RouteTable(
        bridged=_OPENAI_DIALECTS,
        passthrough=(
            _Methods("/models", _GET),
            _Methods("/models/**", _GET, writes=_POST),  # POST: accept a model's policy
            _Methods("/agents/**", ("GET", "POST")),
            _Methods("/mcp/**", ("GET", "POST"), writes=("DELETE",)),  # DELETE: end a session
            _Methods("/.well-known/**", _GET),
        ),
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
        row = next((row for row in table.passthrough if row.matches(suffix)), None)
        if row is None or not _is_safe(suffix):
            return None
        return Route(self, RouteKind.PASSTHROUGH, suffix, methods=row)

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
    credential = passthrough_credential(provider, out)
    if credential is not None and credential.kind is CredentialKind.CENTRALIZED:
        out.append(credential.header)
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


def passthrough_credential(
    provider: Provider, headers: Headers, *, strip: Iterable[str] = ()
) -> Credential | None:
    """The provider credential a passthrough request goes upstream with.

    The client's own key (BYOK) if one is left once the ``strip`` headers (gateway
    identity) are gone: for Anthropic ``x-api-key`` or ``Authorization``, for the others
    ``Authorization``. Else the provider's configured key, never for Copilot. ``None``
    when no credential goes upstream at all.
    """
    dropped = {name.lower() for name in strip}
    kept = [(name, value) for name, value in headers if name not in dropped]
    api_key = header_value(kept, "x-api-key") if provider.type == "anthropic" else ""
    if api_key:
        return Credential(CredentialKind.BYOK, ("x-api-key", api_key), mask_secret(api_key))
    if authorization := header_value(kept, "authorization"):
        secret = bearer_token(authorization) or authorization
        return Credential(
            CredentialKind.BYOK, ("authorization", authorization), mask_secret(secret)
        )
    if provider.type == "copilot" or not provider.config.key:
        return None
    return provider.centralized(provider.config.key)
