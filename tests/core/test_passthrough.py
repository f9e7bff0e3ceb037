"""Passthrough routes: each allows only its own methods, writes on objects stored under the
gateway's shared provider key are off by default, and every call is recorded.

The gateway runs in keys mode, as in production: a user's gateway key in the API-key
header means the provider's central key goes upstream; in ``X-Bridge-Key`` next to the
user's own provider key, it is BYOK.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from bridge.config import PROVIDER_TYPES, AuthConfig, ProviderConfig
from bridge.dialects import providers
from bridge.dialects.providers import Provider
from bridge.recording.records import CredentialKind

from ..conftest import CENTRAL_KEY, OPENAI_KEY, Gateway

OWN_OPENAI_KEY = "sk-user-own-openai-key-abcdef123456"
GITHUB_TOKEN = "ghu_copilot_user_token_4242424242"


@pytest.fixture
async def keyed(start_gateway: Any) -> Gateway:
    gateway: Gateway = await start_gateway(auth=AuthConfig(mode="keys"))
    return gateway


def create_key(gateway: Gateway, user: str) -> str:
    secret, _ = gateway.store.create_key(user, {})
    return secret


def credentials(path: str, gateway_key: str) -> dict[str, str]:
    """How a user reaches ``path``: Copilot needs the user's own GitHub token (the gateway
    key then goes in X-Bridge-Key); elsewhere the gateway key alone, so that the provider's
    central key is used."""
    if path.startswith("/copilot/"):
        return {"x-bridge-key": gateway_key, "authorization": f"Bearer {GITHUB_TOKEN}"}
    return {"x-api-key": gateway_key}


async def send(
    gateway: Gateway, method: str, path: str, headers: dict[str, str]
) -> httpx2.Response:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
    async with httpx2.AsyncClient() as client:
        return await client.request(
            method, httpx2.URL(f"{gateway.url}{path}"), headers=headers, content=body
        )


# (method, client path, the Allow header a central-key user gets)
FORBIDDEN = [
    # Anthropic: the README lists reads, token counting and telemetry only.
    ("DELETE", "/anthropic/v1/models/claude-sonnet-4-6", "GET"),
    ("PUT", "/anthropic/v1/models", "GET"),
    ("TRACE", "/anthropic/v1/models/claude-sonnet-4-6", "GET"),
    ("PATCH", "/anthropic/v1/models", "GET"),
    ("GET", "/anthropic/v1/messages/count_tokens", "POST"),
    ("DELETE", "/anthropic/api/event_logging/batch", "POST"),
    # OpenAI: objects stored under the central key are read-only for its users.
    ("DELETE", "/openai/v1/models/ft:gpt-4o-mini:acme::abc123", "GET"),
    ("DELETE", "/openai/v1/responses/resp_123", "GET"),
    ("POST", "/openai/v1/responses/resp_123/cancel", ""),
    ("PUT", "/openai/v1/responses/resp_123/input_items", "GET"),
    ("GET", "/openai/v1/responses/input_tokens", "POST"),
    ("POST", "/openai/v1/conversations", ""),
    ("DELETE", "/openai/v1/conversations/conv_123", "GET"),
    ("POST", "/openai/v1/conversations/conv_123", "GET"),
    ("POST", "/openai/v1/conversations/conv_123/items", "GET"),
    ("DELETE", "/openai/v1/conversations/conv_123/items/msg_1", "GET"),
    # Copilot: always the user's own token, so its writes are allowed; the rest is not.
    ("PATCH", "/copilot/models", "GET"),
    ("DELETE", "/copilot/agents/some-agent", "GET, POST"),
    ("PUT", "/copilot/mcp/", "GET, POST, DELETE"),
    ("POST", "/copilot/.well-known/oauth-protected-resource", "GET"),
    # Bridged routes take POST only.
    ("GET", "/anthropic/v1/messages", "POST"),
    ("DELETE", "/openai/v1/chat/completions", "POST"),
    ("GET", "/openai/v1/responses", "POST"),
    ("PUT", "/copilot/chat/completions", "POST"),
]


@pytest.mark.parametrize(("method", "path", "allow"), FORBIDDEN)
async def test_a_method_the_route_does_not_allow_is_405_and_never_forwarded(
    keyed: Gateway, method: str, path: str, allow: str
) -> None:
    key = create_key(keyed, "mallory")
    response = await send(keyed, method, path, credentials(path, key))
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    document = response.json()
    if path.startswith("/anthropic/"):
        assert document["type"] == "error"
    assert document["error"]["type"] == "invalid_request_error"
    assert method in document["error"]["message"]
    assert keyed.mock.requests == []


# (method, client path, what the upstream receives)
ALLOWED = [
    ("GET", "/anthropic/v1/models?limit=2", "/v1/models?limit=2"),
    ("GET", "/anthropic/v1/models/claude-sonnet-4-6", "/v1/models/claude-sonnet-4-6"),
    ("POST", "/anthropic/v1/messages/count_tokens", "/v1/messages/count_tokens"),
    ("POST", "/anthropic/api/event_logging/batch", "/api/event_logging/batch"),
    ("GET", "/openai/v1/models", "/v1/models"),
    ("GET", "/openai/v1/models/meta-llama/Llama-3-8B", "/v1/models/meta-llama/Llama-3-8B"),
    ("GET", "/openai/v1/responses/resp_123", "/v1/responses/resp_123"),
    ("GET", "/openai/v1/responses/resp_123/input_items", "/v1/responses/resp_123/input_items"),
    ("POST", "/openai/v1/responses/input_tokens", "/v1/responses/input_tokens"),
    ("POST", "/openai/v1/responses/compact", "/v1/responses/compact"),
    ("GET", "/openai/v1/conversations/conv_1", "/v1/conversations/conv_1"),
    ("GET", "/openai/v1/conversations/conv_1/items", "/v1/conversations/conv_1/items"),
    ("GET", "/openai/v1/conversations/conv_1/items/msg_1", "/v1/conversations/conv_1/items/msg_1"),
    ("GET", "/copilot/models", "/models"),
    ("POST", "/copilot/models/gpt-5/policy", "/models/gpt-5/policy"),
    ("POST", "/copilot/agents/some-agent", "/agents/some-agent"),
    ("POST", "/copilot/mcp/", "/mcp/"),
    ("DELETE", "/copilot/mcp/", "/mcp/"),
    (
        "GET",
        "/copilot/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource",
    ),
]


@pytest.mark.parametrize(("method", "path", "target"), ALLOWED)
async def test_the_methods_a_route_allows_reach_the_upstream(
    keyed: Gateway, method: str, path: str, target: str
) -> None:
    key = create_key(keyed, "alice")
    await send(keyed, method, path, credentials(path, key))
    (received,) = keyed.mock.requests
    assert (received.method, received.target) == (method, target)


WRITES = [
    ("DELETE", "/openai/v1/models/ft:gpt-4o-mini:acme::abc123"),
    ("DELETE", "/openai/v1/responses/resp_123"),
    ("POST", "/openai/v1/responses/resp_123/cancel"),
    ("POST", "/openai/v1/conversations"),
    ("POST", "/openai/v1/conversations/conv_123"),
    ("DELETE", "/openai/v1/conversations/conv_123"),
    ("POST", "/openai/v1/conversations/conv_123/items"),
    ("DELETE", "/openai/v1/conversations/conv_123/items/msg_1"),
]


@pytest.mark.parametrize(("method", "path"), WRITES)
async def test_writes_under_the_central_key_are_refused_and_say_how_to_allow_them(
    keyed: Gateway, method: str, path: str
) -> None:
    response = await send(keyed, method, path, {"x-api-key": create_key(keyed, "mallory")})
    assert response.status_code == 405
    message = response.json()["error"]["message"]
    assert "every user of the gateway shares" in message
    assert "X-Bridge-Key" in message
    assert "providers.openai.passthrough_writes = true" in message
    assert keyed.mock.requests == []


@pytest.mark.parametrize(("method", "path"), WRITES)
async def test_writes_with_the_users_own_key_reach_the_upstream_with_that_key(
    keyed: Gateway, method: str, path: str
) -> None:
    """BYOK: the objects live in the user's own provider account, so the user may change
    them, as they could without the gateway."""
    headers = {
        "x-bridge-key": create_key(keyed, "alice"),
        "authorization": f"Bearer {OWN_OPENAI_KEY}",
    }
    await send(keyed, method, path, headers)
    (received,) = keyed.mock.requests
    assert (received.method, received.target) == (method, path.removeprefix("/openai"))
    assert received.header("authorization") == f"Bearer {OWN_OPENAI_KEY}"


@pytest.mark.parametrize(("method", "path"), WRITES)
async def test_passthrough_writes_lets_central_key_users_write(
    start_gateway: Any, method: str, path: str
) -> None:
    gateway: Gateway = await start_gateway(
        auth=AuthConfig(mode="keys"), provider_changes={"passthrough_writes": True}
    )
    await send(gateway, method, path, {"x-api-key": create_key(gateway, "ops")})
    (received,) = gateway.mock.requests
    assert received.method == method
    assert received.header("authorization") == f"Bearer {OPENAI_KEY}"


async def test_a_users_own_key_does_not_open_methods_no_route_has(keyed: Gateway) -> None:
    headers = {"x-bridge-key": create_key(keyed, "alice"), "x-api-key": "sk-ant-own-key-1234567"}
    response = await send(keyed, "DELETE", "/anthropic/v1/models/claude-sonnet-4-6", headers)
    assert (response.status_code, response.headers["allow"]) == (405, "GET")
    assert keyed.mock.requests == []


def passthrough_rows(gateway: Gateway) -> list[dict[str, Any]]:
    return gateway.store.passthrough_calls()


async def test_every_passthrough_call_is_recorded_with_user_method_path_and_status(
    keyed: Gateway,
) -> None:
    alice, bob, mallory = (create_key(keyed, user) for user in ("alice", "bob", "mallory"))
    listed = await send(keyed, "GET", "/anthropic/v1/models?limit=2", {"x-api-key": alice})
    own = {"x-bridge-key": bob, "authorization": f"Bearer {OWN_OPENAI_KEY}"}
    deleted = await send(keyed, "DELETE", "/openai/v1/responses/resp_9", own)
    refused = await send(keyed, "DELETE", "/openai/v1/responses/resp_9", {"x-api-key": mallory})
    assert (listed.status_code, deleted.status_code, refused.status_code) == (200, 404, 405)
    await keyed.flush()
    rows = passthrough_rows(keyed)
    assert [
        (
            row["initiator_id"],
            row["method"],
            row["path"],
            row["status"],
            row["provider"],
            row["provider_name"],
            row["credential_kind"],
        )
        for row in rows
    ] == [
        ("alice", "GET", "/anthropic/v1/models", 200, "anthropic", "anthropic", "centralized"),
        ("bob", "DELETE", "/openai/v1/responses/resp_9", 404, "openai", "openai", "byok"),
        (
            "mallory",
            "DELETE",
            "/openai/v1/responses/resp_9",
            405,
            "openai",
            "openai",
            "centralized",
        ),
    ]
    assert all(row["duration_ms"] >= 0 for row in rows)
    hints = [row["credential_hint"] for row in rows]
    assert all("..." in hint for hint in hints)  # masked, never a key
    assert not any(secret in str(rows) for secret in (CENTRAL_KEY, OPENAI_KEY, OWN_OPENAI_KEY))
    assert keyed.store.interceptions() == []  # a passthrough call is no interception


async def test_a_passthrough_call_without_any_provider_key_is_recorded_as_such(
    gateway: Gateway,
) -> None:
    """Auth mode none, and a Copilot discovery request without a token: nothing to
    inject, so nothing went upstream as a credential."""
    await send(gateway, "GET", "/copilot/.well-known/oauth-protected-resource", {})
    await gateway.flush()
    (row,) = passthrough_rows(gateway)
    assert (row["initiator_id"], row["credential_kind"], row["credential_hint"]) == (
        "anonymous",
        None,
        "",
    )


async def test_an_unreachable_upstream_is_recorded_with_the_502_the_client_got(
    start_gateway: Any,
) -> None:
    gateway: Gateway = await start_gateway(upstream_url="http://127.0.0.1:1/")
    response = await send(gateway, "GET", "/anthropic/v1/models", {})
    assert response.status_code == 502
    await gateway.flush()
    (row,) = passthrough_rows(gateway)
    assert (row["path"], row["status"], row["credential_kind"]) == (
        "/anthropic/v1/models",
        502,
        CredentialKind.CENTRALIZED.value,
    )


def test_every_provider_type_has_one_route_table_and_one_row_of_traits() -> None:
    """The route tables (here) and the other traits (config) are two tables of one key set."""
    assert set(providers._ROUTES) == set(PROVIDER_TYPES)


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/openai/v1/models/", ("GET", "DELETE")),  # "**": whatever follows, even nothing
        ("/openai/v1/models/org/name", ("GET", "DELETE")),
        ("/openai/v1/responses/resp_1", ("GET", "DELETE")),
        ("/openai/v1/responses/input_tokens", ("POST",)),  # the first matching row decides
        ("/openai/v1/responses/", None),  # "*": one non-empty segment
        ("/openai/v1/responses/resp_1/input_items/x", None),
        ("/openai/v1/responses/resp_1/other", None),
        ("/openai/v1/conversations/conv_1/items/item_1", ("GET", "DELETE")),
        ("/openai/v1/conversations/conv_1/items/item_1/x", None),
        ("/copilot/mcp", None),
        ("/copilot/mcp/", ("GET", "POST", "DELETE")),
        ("/anthropic/api/event_logging/batch", ("POST",)),
        ("/anthropic/api/event_logging", None),
    ],
)
def test_route_rows_match_by_segment(path: str, methods: tuple[str, ...] | None) -> None:
    name = path.split("/")[1]
    provider = Provider(ProviderConfig(name=name, type=name, key="k"))
    route = provider.route(path)
    if methods is None:
        assert route is None
    else:
        assert route is not None
        assert route.allowed(writes=True) == methods
