"""Unit tests of bridge/dialects/providers.py: routes, methods, URLs and header policy.

Everything there is pure, so these tests build :class:`Provider` values from
:class:`ProviderConfig` and call them; no gateway, no network.
"""

from __future__ import annotations

from posixpath import normpath
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import ProviderConfig
from bridge.dialects.providers import (
    Credential,
    Provider,
    RouteKind,
    forwardable_response_headers,
    suggest_route,
)
from bridge.errors import MethodNotAllowed
from bridge.identity.auth import Actor
from bridge.recording.records import CredentialKind

GATEWAY_KEY = "bk-abcdefgh-" + "A" * 43  # the shape of a gateway key


def _provider(name: str, type_: str, base_url: str = "", **options: object) -> Provider:
    return Provider(ProviderConfig(name=name, type=type_, base_url=base_url, **options))  # type: ignore[arg-type]


ANTHROPIC = _provider("anthropic", "anthropic", "https://up.test/base/", key="sk-central")
OPENAI = _provider("openai", "openai", "https://up.test/v1/", key="sk-openai")
COPILOT = _provider("copilot", "copilot", "https://copilot.test/")


# --- route ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "path", "dialect"),
    [
        (ANTHROPIC, "/anthropic/v1/messages", "anthropic.messages"),
        (OPENAI, "/openai/v1/chat/completions", "openai.chat"),
        (OPENAI, "/openai/v1/responses", "openai.responses"),
        (COPILOT, "/copilot/chat/completions", "openai.chat"),
        (COPILOT, "/copilot/responses", "openai.responses"),
    ],
)
def test_bridged_routes(provider: Provider, path: str, dialect: str) -> None:
    route = provider.route(path)
    assert route is not None
    assert (route.kind, route.dialect) == (RouteKind.BRIDGED, dialect)
    assert route.suffix == path.removeprefix(provider.prefix)
    assert route.template == route.suffix
    assert route.allowed(writes=True) == ("POST",)


@pytest.mark.parametrize(
    ("provider", "path", "template"),
    [
        (ANTHROPIC, "/anthropic/v1/models", "/v1/models"),
        (ANTHROPIC, "/anthropic/v1/models/claude-x", "/v1/models/**"),
        (ANTHROPIC, "/anthropic/v1/messages/count_tokens", "/v1/messages/count_tokens"),
        (ANTHROPIC, "/anthropic/api/event_logging/batch", "/api/event_logging/**"),
        (OPENAI, "/openai/v1/models/meta-llama/Llama-3-8B", "/models/**"),
        (OPENAI, "/openai/v1/responses/resp_1", "/responses/*"),
        (OPENAI, "/openai/v1/responses/resp_1/cancel", "/responses/*/cancel"),
        (OPENAI, "/openai/v1/responses/input_tokens", "/responses/input_tokens"),
        (OPENAI, "/openai/v1/conversations/c_1/items/i_2", "/conversations/*/items/*"),
        (COPILOT, "/copilot/mcp/a/b/c", "/mcp/**"),
        (COPILOT, "/copilot/.well-known/oauth", "/.well-known/**"),
    ],
)
def test_passthrough_routes_match_their_row(provider: Provider, path: str, template: str) -> None:
    route = provider.route(path)
    assert route is not None
    assert route.kind is RouteKind.PASSTHROUGH
    assert route.dialect is None
    assert route.template == template  # the row, never the client's own path


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        (ANTHROPIC, "/anthropic"),  # the prefix alone
        (ANTHROPIC, "/anthropicx/v1/messages"),  # not the prefix followed by "/"
        (ANTHROPIC, "/openai/v1/chat/completions"),  # another provider's
        (ANTHROPIC, "/anthropic/v1/files"),  # not in the table
        (OPENAI, "/openai/v1/responses/"),  # "*" is exactly one non-empty segment
        (OPENAI, "/openai/v1/responses/a/b"),
        (OPENAI, "/openai/v1/conversations//items"),
        (OPENAI, "/openai/chat/completions"),  # the OpenAI prefix holds the /v1
    ],
)
def test_paths_a_provider_does_not_serve(provider: Provider, path: str) -> None:
    assert provider.route(path) is None


@pytest.mark.parametrize(
    "suffix",
    [
        "/v1/models/..",
        "/v1/models/../../secret",
        "/v1/models/./x",
        "/v1/models/%2e%2e",
        "/v1/models/a%2fb",
        "/v1/models/a%2Fb",
        "/v1/models/a%5cb",
        "/v1/models/a\\b",
        "/v1/models/a%00b",
        "/v1/models/a\x00b",
        "/v1/models/a//b",
        "/v1/models/a%252fb",  # decodes to a "%": a second decoding would be a slash
        "/v1/models/#0",  # a fragment would cut the upstream path short
        "/v1/models/a?b",  # the query travels apart, never inside the path
    ],
)
def test_unsafe_passthrough_suffixes_are_refused(suffix: str) -> None:
    assert ANTHROPIC.route("/anthropic" + suffix) is None


def test_a_safe_neighbour_of_the_unsafe_ones_is_served() -> None:
    """The refusals above are about the unsafe part, not the row."""
    assert ANTHROPIC.route("/anthropic/v1/models/a.b..c") is not None


@given(st.text(alphabet=st.sampled_from("ab./\\%2fFeE05c\x00?#"), max_size=20))
def test_no_suffix_reaches_above_the_base_path(suffix: str) -> None:
    route = ANTHROPIC.route("/anthropic/v1/models/" + suffix)
    if route is None:
        return
    url = urlsplit(route.upstream_url(""))
    assert (url.scheme, url.netloc) == ("https", "up.test")
    assert (url.query, url.fragment) == ("", "")
    # Decoded and normalised as a server behind the provider might, the path stays
    # below the passthrough row it matched.
    decoded = unquote(url.path)
    assert "\\" not in decoded
    assert "\x00" not in decoded
    assert (normpath(decoded) + "/").startswith("/base/v1/models/")


# --- methods --------------------------------------------------------------------


def test_reads_are_open_and_writes_need_permission() -> None:
    route = OPENAI.route("/openai/v1/conversations/c_1")
    assert route is not None
    assert route.allowed(writes=False) == ("GET",)
    assert route.allowed(writes=True) == ("GET", "POST", "DELETE")
    route.check_method("GET", "/openai/v1/conversations/c_1", writes=False)
    route.check_method("DELETE", "/openai/v1/conversations/c_1", writes=True)
    with pytest.raises(MethodNotAllowed, match=r"passthrough_writes = true") as refused:
        route.check_method("DELETE", "/openai/v1/conversations/c_1", writes=False)
    assert "providers.openai.passthrough_writes" in str(refused.value)
    assert refused.value.allowed == ("GET",)


def test_a_method_no_row_takes_names_the_allowed_ones() -> None:
    route = ANTHROPIC.route("/anthropic/v1/models")
    assert route is not None
    with pytest.raises(MethodNotAllowed, match=r"use GET$") as refused:
        route.check_method("PUT", "/anthropic/v1/models", writes=True)
    assert refused.value.allowed == ("GET",)


def test_a_write_only_route_says_no_method_is_open() -> None:
    route = OPENAI.route("/openai/v1/responses/r_1/cancel")
    assert route is not None
    assert route.allowed(writes=False) == ()
    with pytest.raises(MethodNotAllowed, match="no method is open to you"):
        route.check_method("GET", "/openai/v1/responses/r_1/cancel", writes=False)


def test_bridged_routes_take_post_only() -> None:
    route = ANTHROPIC.route("/anthropic/v1/messages")
    assert route is not None
    route.check_method("POST", "/anthropic/v1/messages", writes=False)
    with pytest.raises(MethodNotAllowed, match="use POST"):
        route.check_method("GET", "/anthropic/v1/messages", writes=True)


# --- upstream URL ----------------------------------------------------------------


def test_upstream_url_keeps_the_base_path_and_the_query() -> None:
    route = ANTHROPIC.route("/anthropic/v1/models")
    assert route is not None
    assert route.upstream_url("") == "https://up.test/base/v1/models"
    assert route.upstream_url("limit=5&after_id=x") == (
        "https://up.test/base/v1/models?limit=5&after_id=x"
    )
    chat = OPENAI.route("/openai/v1/chat/completions")
    assert chat is not None
    assert chat.upstream_url("") == "https://up.test/v1/chat/completions"


# --- response headers ------------------------------------------------------------


def test_forwardable_response_headers() -> None:
    upstream = [
        ("Request-Id", "req_1"),
        ("anthropic-ratelimit-requests-remaining", "9"),
        ("x-ratelimit-remaining-tokens", "100"),
        ("Retry-After", "3"),
        ("Connection", "keep-alive, X-Private"),
        ("x-private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"),
        ("Content-Encoding", "gzip"),
        ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
        ("Alt-Svc", 'h3=":443"'),
        ("Set-Cookie", "__cf_bm=x; Domain=.anthropic.com"),
        ("NEL", "{}"),
        ("Report-To", "{}"),
        ("Date", "today"),
        ("Server", "cloudflare"),
        ("Content-Type", "application/json"),
    ]
    assert forwardable_response_headers(upstream) == [
        ("request-id", "req_1"),
        ("anthropic-ratelimit-requests-remaining", "9"),
        ("x-ratelimit-remaining-tokens", "100"),
        ("retry-after", "3"),
        ("content-type", "application/json"),
    ]


# --- request headers -------------------------------------------------------------


def _names(headers: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]


def test_upstream_headers_strip_client_credentials_and_inject_the_chosen_one() -> None:
    headers = [
        ("authorization", "Bearer sk-client"),
        ("x-api-key", "sk-client"),
        ("x-bridge-key", GATEWAY_KEY),
        ("x-custom", f"Bearer {GATEWAY_KEY}"),  # a gateway key wherever the client put it
        ("anthropic-version", "2023-06-01"),
        ("host", "gateway.test"),
        ("content-length", "5"),
        ("accept-encoding", "gzip"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("expect", "100-continue"),
        ("forwarded", "for=1.2.3.4"),
        ("x-forwarded-host", "internal"),
        ("x-ai-bridge-actor-id", "forged"),
        ("user-agent", "claude-cli/1.0"),
    ]
    credential = ANTHROPIC.centralized("sk-central")
    out = ANTHROPIC.upstream_headers(headers, credential, strip=["X-Bridge-Key"])
    assert out == [
        ("anthropic-version", "2023-06-01"),
        ("user-agent", "claude-cli/1.0"),
        ("x-forwarded-proto", "http"),
        ("x-api-key", "sk-central"),
        ("accept-encoding", "identity"),
    ]


def test_upstream_headers_without_a_credential_or_user_agent() -> None:
    out = COPILOT.upstream_headers([("authorization", "Bearer gho_x")], None, scheme="https")
    assert out == [
        ("x-forwarded-proto", "https"),
        ("user-agent", "bridge"),
        ("accept-encoding", "identity"),
    ]


def test_actor_headers_only_with_send_actor_headers() -> None:
    actor = Actor("alice", {"Team": "infra"})
    credential = Credential(CredentialKind.CENTRALIZED, ("x-api-key", "k"), "k")
    quiet = ANTHROPIC.upstream_headers([], credential, actor=actor)
    assert not [n for n in _names(quiet) if n.startswith("x-ai-bridge")]
    loud = _provider("anthropic", "anthropic", key="k", send_actor_headers=True)
    out = loud.upstream_headers([], credential, actor=actor)
    assert ("x-ai-bridge-actor-id", "alice") in out
    assert ("x-ai-bridge-actor-metadata-team", "infra") in out


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "proto"),
    [
        (False, "192.0.2.9", "http"),  # the client's claims replaced by what we saw
        (True, "203.0.113.7, 192.0.2.9", "https"),  # a trusted proxy's chain extended
    ],
)
def test_x_forwarded_for_believes_only_a_trusted_peer(
    trusted: bool, forwarded_for: str, proto: str
) -> None:
    headers = [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")]
    out = OPENAI.upstream_headers(
        headers, None, client_address="192.0.2.9", scheme="http", trusted_peer=trusted
    )
    assert [(k, v) for k, v in out if k.startswith("x-forwarded")] == [
        ("x-forwarded-for", forwarded_for),
        ("x-forwarded-proto", proto),
    ]


def test_no_client_address_sends_no_x_forwarded_for() -> None:
    out = OPENAI.upstream_headers([("x-forwarded-for", "203.0.113.7")], None)
    assert "x-forwarded-for" not in _names(out)


# --- suggest_route ---------------------------------------------------------------


def test_suggest_route_finds_the_provider_meant() -> None:
    providers = [OPENAI, ANTHROPIC, COPILOT]
    assert suggest_route(providers, "/v1/messages") == (ANTHROPIC, "/anthropic/v1/messages")
    assert suggest_route(providers, "/v1/chat/completions") == (
        OPENAI,
        "/openai/v1/chat/completions",
    )
    assert suggest_route(providers, "/v1/nothing") is None


def test_suggest_route_prefers_the_provider_named_like_its_type() -> None:
    eu = _provider("anthropic-eu", "anthropic", "https://eu.test/", key="k")
    assert suggest_route([eu, ANTHROPIC], "/v1/messages") == (ANTHROPIC, "/anthropic/v1/messages")
    assert suggest_route([eu], "/v1/messages") == (eu, "/anthropic-eu/v1/messages")
