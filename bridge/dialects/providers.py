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
* which request headers go upstream and how the provider key is injected: one policy,
  :meth:`Provider.upstream_headers`, for bridged and passthrough routes alike.

Everything here is pure: no I/O, no framework.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from bridge.config import PROVIDER_TYPES, ProviderConfig, mask_secret
from bridge.errors import MethodNotAllowed, Unauthorized
from bridge.identity.auth import Actor
from bridge.identity.keys import contains_gateway_key
from bridge.protocol.headers import bearer_token, connection_tokens, header_value
from bridge.recording.records import CredentialKind

__all__ = [
    "Credential",
    "Headers",
    "Provider",
    "Route",
    "RouteKind",
    "forwardable_response_headers",
    "forwarded_headers",
    "suggest_route",
]

Headers = list[tuple[str, str]]
"""Header pairs with lower-case names, in the order received."""

# Headers the HTTP client sets itself for the upstream hop.
_TRANSPORT = frozenset({"host", "content-length", "accept-encoding"})
# Credentials the client presented to us; the chosen credential is injected instead.
_CLIENT_AUTH = frozenset({"authorization", "x-api-key"})
# What a client says about the path its request took, or asks of the next hop: the
# gateway writes X-Forwarded-For/-Proto itself (see forwarded_headers); Forwarded and
# X-Forwarded-Host are never sent (the provider routes on neither, and the host would
# only tell it the gateway's internal name); Expect is answered by the gateway's own
# HTTP server, and the upstream client sends whole bodies.
_CLIENT_ROUTING = frozenset(
    {"forwarded", "expect", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
)
# Response headers that must not be copied from the upstream to the client.
# The HTTP server sends its own Date (a response carries one); Server would only tell
# clients which software the provider runs. The rest are policies of the provider's
# origin that a client would apply to the gateway's: HSTS (for a year, subdomains
# included), Alt-Svc (an HTTP/3 endpoint the gateway does not have), cookies scoped to
# the provider's domain, and Cloudflare's network error reporting.
_RESPONSE_DROP = frozenset(
    {
        "content-length",
        "content-encoding",
        "date",
        "server",
        "strict-transport-security",
        "alt-svc",
        "set-cookie",
        "nel",
        "report-to",
    }
)


class RouteKind(enum.Enum):
    """Whether a route is intercepted and recorded, or relayed as it is."""

    BRIDGED = "bridged"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class _Methods:
    """One row of a provider's route table: a path pattern and the methods it takes.

    The pattern is matched segment by segment: ``*`` stands for exactly one non-empty
    segment (an id), a final ``**`` for whatever follows, an empty last segment included
    (``/mcp/``, the trailing slash Copilot's MCP endpoint is reached by).
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


_OPENAI_DIALECTS = {"/chat/completions": "openai.chat", "/responses": "openai.responses"}

# What each provider type serves, below its route prefix (docs/behaviour.md §1.1), and
# with which methods: the providers' documented ones. Copilot always gets the user's own
# token, so its writes are always the user's. The types' other traits are the rows of
# bridge.config.PROVIDER_TYPES; a test checks both tables name the same types.
_ROUTES: dict[str, _RouteTable] = {
    "anthropic": _RouteTable(
        bridged={"/v1/messages": "anthropic.messages"},
        passthrough=(
            _Methods("/v1/models", _GET),
            _Methods("/v1/models/**", _GET),
            _Methods("/v1/messages/count_tokens", _POST),
            _Methods("/api/event_logging/**", _POST),
        ),
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
    def central_key(self) -> bool:
        """Whether the gateway holds this provider's key, or each user brings their own."""
        return PROVIDER_TYPES[self.type].central_key

    @property
    def error_dialect(self) -> str:
        """The dialect whose error shape this provider's non-bridged answers use."""
        return PROVIDER_TYPES[self.type].error_dialect

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
        """Choose the upstream credential (docs/behaviour.md §2.2).

        A key the client brings is BYOK: the client pays with its own key. Anthropic
        takes ``x-api-key`` first, then a bearer token; OpenAI a bearer token; without
        one the configured key is injected. Copilot has no central key: the user's
        GitHub token is required (:class:`~bridge.errors.Unauthorized` without it).
        A gateway key in those headers is no provider key: it counts as absent.
        """
        token = _not_a_gateway_key(bearer_token(header_value(headers, "authorization")))
        byok_bearer = Credential(
            CredentialKind.BYOK, ("authorization", f"Bearer {token}"), mask_secret(token)
        )
        key_header = PROVIDER_TYPES[self.type].key_header
        if key_header != "authorization":
            api_key = _not_a_gateway_key(header_value(headers, key_header))
            if api_key:
                return Credential(CredentialKind.BYOK, (key_header, api_key), mask_secret(api_key))
        if token:
            return byok_bearer
        if not self.central_key:
            raise Unauthorized(
                "Copilot requests need the user's GitHub Copilot token in 'Authorization: Bearer'"
            )
        return self.centralized(self.config.key)

    def centralized(self, key: str) -> Credential:
        """The credential of one of the provider's own keys, in the header its API wants."""
        key_header = PROVIDER_TYPES[self.type].key_header
        header = (key_header, f"Bearer {key}" if key_header == "authorization" else key)
        return Credential(CredentialKind.CENTRALIZED, header, mask_secret(key))

    def upstream_headers(
        self,
        headers: Headers,
        credential: Credential | None,
        *,
        strip: Iterable[str] = (),
        actor: Actor | None = None,
        client_address: str = "",
        scheme: str = "http",
        trusted_peer: bool = False,
    ) -> Headers:
        """The client's headers as the upstream should see them, on every route kind
        (docs/behaviour.md §3.1).

        Removed: hop-by-hop, transport-managed and client credential headers, the names
        in ``strip`` (gateway identity), any ``X-AI-Bridge-Actor*`` header a client made
        up, what the client says about its route (``Forwarded``, ``X-Forwarded-*``) or
        asks of the next hop (``Expect``), and any header carrying a gateway key, wherever
        the client put it. Everything else (``anthropic-version``, ``anthropic-beta``,
        ``user-agent``...) is forwarded unchanged. Then :func:`forwarded_headers`, the
        ``credential`` (``None``: none, e.g. a Copilot discovery request without a token),
        and with ``send_actor_headers`` the actor's id and metadata (docs/behaviour.md §3.2).
        """
        drop = connection_tokens(headers) | _TRANSPORT | _CLIENT_AUTH | _CLIENT_ROUTING
        drop |= {name.lower() for name in strip}
        out = [
            (name, value)
            for name, value in headers
            if name not in drop
            and not name.startswith(_ACTOR_HEADER)
            and not contains_gateway_key(value)
        ]
        out.extend(forwarded_headers(headers, client_address, scheme, trusted_peer=trusted_peer))
        if not header_value(headers, "user-agent"):
            out.append(("user-agent", "bridge"))
        if credential is not None and credential.header[1]:
            out.append(credential.header)
        if actor is not None and self.config.send_actor_headers:
            out.append(("x-ai-bridge-actor-id", actor.id))
            out.extend(
                (f"x-ai-bridge-actor-metadata-{key.lower()}", str(value))
                for key, value in actor.metadata.items()
            )
        out.append(("accept-encoding", "identity"))
        return out


def forwarded_headers(
    headers: Headers, client_address: str, scheme: str, *, trusted_peer: bool
) -> Headers:
    """``X-Forwarded-For`` and ``X-Forwarded-Proto`` for the upstream hop.

    A client's own ``X-Forwarded-For`` is believed only from a peer in
    ``server.trusted_proxies`` (a load balancer in front of the gateway): then it is
    extended with the peer's address, else replaced by it, so that nobody can make the
    provider attribute a request to an address of their choosing. Likewise the proto:
    a trusted peer's is kept, else it is the scheme the gateway was reached by.
    """
    chain = [v for k, v in headers if k == "x-forwarded-for"] if trusted_peer else []
    if client_address:
        chain.append(client_address)
    out = [("x-forwarded-for", ", ".join(chain))] if chain else []
    proto = header_value(headers, "x-forwarded-proto") if trusted_peer else ""
    out.append(("x-forwarded-proto", proto or scheme))
    return out


def _not_a_gateway_key(value: str) -> str:
    return "" if contains_gateway_key(value) else value


def _is_safe(suffix: str) -> bool:
    if "?" in suffix or "#" in suffix:
        return False  # the query travels apart; a fragment would cut the upstream path short
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
