"""Identity and attribution: gateway keys, BYOK, actor headers, client detection, usage API."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from bridge.auth import BRIDGE_KEY_HEADER
from bridge.clients import guess_client, session_id
from bridge.config import AuthConfig

from .conftest import CENTRAL_KEY, OPENAI_KEY, Gateway

ANTHROPIC_BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
async def keyed(start_gateway: Any) -> Gateway:
    gateway: Gateway = await start_gateway(
        auth=AuthConfig(mode="keys", admin_key="admin-secret-123456")
    )
    return gateway


def create_key(gateway: Gateway, user: str, **metadata: str) -> str:
    secret, _ = gateway.store.create_key(user, metadata)
    return secret


async def post(
    gateway: Gateway, path: str, body: dict[str, Any], **headers: str
) -> httpx2.Response:
    async with httpx2.AsyncClient() as client:
        return await client.post(f"{gateway.url}{path}", json=body, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "bk-unknownunknown-" + "x" * 40},
        {"authorization": "Bearer not-a-gateway-key"},
    ],
    ids=["missing", "unknown", "malformed"],
)
async def test_requests_without_a_valid_gateway_key_get_401_and_reach_nothing(
    keyed: Gateway, headers: dict[str, str]
) -> None:
    response = await post(keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    chat = await post(
        keyed, "/openai/v1/chat/completions", {"model": "m", "messages": []}, **headers
    )
    assert chat.status_code == 401
    assert chat.json()["error"]["type"] == "authentication_error"
    models = await post(keyed, "/anthropic/v1/messages/count_tokens", ANTHROPIC_BODY, **headers)
    assert models.status_code == 401  # passthrough is no open proxy either
    assert keyed.mock.requests == []
    assert keyed.bridge.auth_failures["127.0.0.1"] == 3


async def test_claude_code_style_gateway_key_gets_the_provider_key(keyed: Gateway) -> None:
    key = create_key(keyed, "alice", team="platform")
    client = anthropic.AsyncAnthropic(
        base_url=f"{keyed.url}/anthropic",
        api_key=key,
        max_retries=0,
        default_headers={"user-agent": "claude-cli/2.0.14 (external, cli)"},
    )
    await client.messages.create(**ANTHROPIC_BODY)  # type: ignore[arg-type]
    received = keyed.mock.requests[-1]
    assert received.header("x-api-key") == CENTRAL_KEY
    assert received.header("authorization") is None
    assert key not in json.dumps(received.headers)
    await keyed.flush()
    [row] = keyed.store.interceptions()
    assert (row["initiator_id"], json.loads(row["metadata"])) == ("alice", {"team": "platform"})
    assert (row["client"], row["credential_kind"]) == ("Claude Code", "centralized")
    [listed] = keyed.store.list_keys()
    assert listed.last_used_at is not None


async def test_codex_style_bearer_gateway_key_works_for_responses(keyed: Gateway) -> None:
    key = create_key(keyed, "bob")
    client = openai.AsyncOpenAI(base_url=f"{keyed.url}/openai/v1", api_key=key, max_retries=0)
    await client.responses.create(model="gpt-5", input="hi")
    assert keyed.mock.requests[-1].header("authorization") == f"Bearer {OPENAI_KEY}"
    await keyed.flush()
    assert [r["initiator_id"] for r in keyed.store.interceptions()] == ["bob"]


async def test_byok_sends_the_gateway_key_aside_and_the_provider_key_through(
    keyed: Gateway,
) -> None:
    key = create_key(keyed, "carol")
    own = "sk-ant-carols-own-key-123456789"
    response = await post(
        keyed,
        "/anthropic/v1/messages",
        ANTHROPIC_BODY,
        **{"x-api-key": own, BRIDGE_KEY_HEADER: key},
    )
    assert response.status_code == 200
    received = keyed.mock.requests[-1]
    assert received.header("x-api-key") == own
    assert received.header(BRIDGE_KEY_HEADER) is None
    await keyed.flush()
    [row] = keyed.store.interceptions()
    assert (row["initiator_id"], row["credential_kind"], row["credential_hint"]) == (
        "carol",
        "byok",
        "sk-a...6789",
    )


async def test_revoked_key_is_refused(keyed: Gateway) -> None:
    secret, key = keyed.store.create_key("dave", {})
    assert (
        await post(keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **{"x-api-key": secret})
    ).status_code == 200
    keyed.store.revoke_key(key.id)
    refused = await post(keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **{"x-api-key": secret})
    assert refused.status_code == 401
    assert len(keyed.mock.requests) == 1


async def test_another_users_key_attributes_to_that_user_only(keyed: Gateway) -> None:
    alice, bob = create_key(keyed, "alice"), create_key(keyed, "bob")
    await post(keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **{"x-api-key": alice})
    await post(
        keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **{"authorization": f"Bearer {bob}"}
    )
    await keyed.flush()
    assert sorted(r["initiator_id"] for r in keyed.store.interceptions()) == ["alice", "bob"]


ROUTES = {
    "anthropic": ("/anthropic/v1/messages", ANTHROPIC_BODY, "anthropic_text"),
    "chat": (
        "/openai/v1/chat/completions",
        {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
        "openai_chat_text",
    ),
    "responses": (
        "/openai/v1/responses",
        {"model": "gpt-5", "input": "hi"},
        "openai_responses_text",
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("api", list(ROUTES))
@pytest.mark.parametrize("enabled", [True, False], ids=["actor-headers", "no-actor-headers"])
async def test_actor_headers_follow_the_provider_setting(
    start_gateway: Any, api: str, stream: bool, enabled: bool
) -> None:
    gateway: Gateway = await start_gateway(
        auth=AuthConfig(mode="keys"), provider_changes={"send_actor_headers": enabled}
    )
    key = create_key(gateway, "erin", team="data", Username="erin")
    path, body, scenario = ROUTES[api]
    response = await post(
        gateway,
        path,
        {**body, "stream": stream},
        **{
            "authorization": f"Bearer {key}",
            "x-mock-scenario": scenario,
            "x-ai-bridge-actor-id": "spoofed",
        },
    )
    assert response.status_code == 200
    received = gateway.mock.requests[-1]
    actor_headers = {k: v for k, v in received.headers if k.startswith("x-ai-bridge-actor")}
    if enabled:
        assert actor_headers == {
            "x-ai-bridge-actor-id": "erin",
            "x-ai-bridge-actor-metadata-team": "data",
            "x-ai-bridge-actor-metadata-username": "erin",
        }
    else:
        assert actor_headers == {}  # and the client's spoofed one is gone too


async def test_passthrough_with_a_gateway_key_injects_the_provider_key(keyed: Gateway) -> None:
    key = create_key(keyed, "frank")
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{keyed.url}/anthropic/v1/models", headers={"x-api-key": key})
    assert response.status_code == 200
    assert keyed.mock.requests[-1].header("x-api-key") == CENTRAL_KEY


async def test_usage_api_is_guarded_by_the_admin_key(keyed: Gateway) -> None:
    key = create_key(keyed, "gina", team="platform")
    await post(keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **{"x-api-key": key})
    await keyed.flush()
    async with httpx2.AsyncClient() as client:
        refused = await client.get(f"{keyed.url}/api/v1/usage")
        wrong = await client.get(
            f"{keyed.url}/api/v1/usage", headers={"authorization": "Bearer nope"}
        )
        ok = await client.get(
            f"{keyed.url}/api/v1/usage?since=7d&by=user&by=model",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
        bad = await client.get(
            f"{keyed.url}/api/v1/usage?since=yesterday",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
        by_team = await client.get(
            f"{keyed.url}/api/v1/usage?by=meta:team",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
        as_csv = await client.get(
            f"{keyed.url}/api/v1/usage?by=user&format=csv",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
        wrong_format = await client.get(
            f"{keyed.url}/api/v1/usage?format=xml",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
        typo = await client.get(
            f"{keyed.url}/api/v1/usage?sinec=7d",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
    # HTTP errors name HTTP parameters, not the command line's options.
    assert "since must be" in bad.json()["error"]["message"]
    assert "--since" not in bad.json()["error"]["message"]
    assert wrong_format.status_code == 400
    assert wrong_format.json()["error"]["message"] == "format must be json or csv, got 'xml'"
    assert typo.status_code == 400
    assert typo.json()["error"]["message"].startswith("unknown parameter 'sinec'")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"] == 'attachment; filename="usage.csv"'
    assert as_csv.text.splitlines()[0].startswith("user,interceptions,failures,input")
    assert as_csv.text.splitlines()[1].startswith("gina,1,0,")
    assert (refused.status_code, wrong.status_code, bad.status_code) == (401, 401, 400)
    assert [(r["meta:team"], r["interceptions"]) for r in by_team.json()["rows"]] == [
        ("platform", 1)
    ]
    [row] = ok.json()["rows"]
    assert row["user"] == "gina"
    assert row["model"] == "claude-sonnet-4-6"
    assert row["interceptions"] == 1
    assert row["input"] > 0


async def test_usage_api_answers_400_for_a_since_too_far_back(keyed: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.get(
            f"{keyed.url}/api/v1/usage?since=99999999999d",
            headers={"authorization": "Bearer admin-secret-123456"},
        )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("since must be a duration from 0s to 36500d")


async def test_usage_api_is_off_without_an_admin_key(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{gateway.url}/api/v1/usage")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("headers", "client", "session"),
    [
        ({"user-agent": "mux/1.0"}, "Mux", None),
        (
            {"user-agent": "claude-cli/2.0 (external)", "x-claude-code-session-id": " s1 "},
            "Claude Code",
            "s1",
        ),
        (
            {"user-agent": "codex_cli_rs/0.171.0", "session-id": "s2", "thread-id": "t"},
            "Codex",
            "s2",
        ),
        ({"user-agent": "codex_exec/0.1", "session_id": "s3"}, "Codex", "s3"),
        ({"user-agent": "Zed/0.200"}, "Zed", None),
        (
            {"user-agent": "GitHubCopilotChat/0.30", "x-interaction-id": "s4"},
            "GitHub Copilot (VS Code)",
            "s4",
        ),
        ({"user-agent": "copilot/1.0", "x-client-session-id": "s5"}, "GitHub Copilot (CLI)", "s5"),
        ({"user-agent": "kilo-code/4", "x-kilocode-taskid": "s6"}, "Kilo Code", "s6"),
        ({"user-agent": "node", "originator": "kilo-code"}, "Kilo Code", None),
        ({"user-agent": "roo-code/3"}, "Roo Code", None),
        ({"user-agent": "node", "originator": "roo-code"}, "Roo Code", None),
        ({"user-agent": "coder-agents/1", "x-coder-chat-id": "s7"}, "Coder Agents", "s7"),
        ({"user-agent": "Charm Crush/0.1"}, "Charm Crush", None),
        ({"user-agent": "opencode/0.5", "x-opencode-session": "s8"}, "OpenCode", "s8"),
        ({"user-agent": "python", "x-cursor-client-version": "1.2"}, "Cursor", None),
        ({"user-agent": "Anthropic/Python 2.14.0"}, "anthropic-python", None),
        ({"user-agent": "OpenAI/Python 3.57.0"}, "openai-python", None),
        ({"user-agent": "Anthropic/JS 0.60.0"}, "anthropic-js", None),
        ({"user-agent": "OpenAI/JS 4.104.0", "x-cursor-client-version": "1"}, "Cursor", None),
        ({"user-agent": "curl/8"}, "Unknown", None),
        ({}, "Unknown", None),
    ],
)
def test_client_and_session_detection(
    headers: dict[str, str], client: str, session: str | None
) -> None:
    pairs = [(k.lower(), v) for k, v in headers.items()]
    assert guess_client(pairs) == client
    assert session_id(client, pairs) == session


def test_claude_code_session_comes_from_the_body_when_no_header() -> None:
    from bridge.dialects import DIALECTS

    for user_id, expected in [
        (json.dumps({"session_id": "abc", "device_id": "d"}), "abc"),
        ("user_123_account_456_session_0f9e-uuid", "0f9e-uuid"),
        ("plain", None),
    ]:
        body = json.dumps({**ANTHROPIC_BODY, "metadata": {"user_id": user_id}}).encode()
        hint = DIALECTS["anthropic.messages"].parse_request(body).session_hint
        assert session_id("Claude Code", [], hint) == expected


async def test_a_key_that_cannot_be_checked_is_a_503_not_a_500_or_a_401(keyed: Gateway) -> None:
    """The database is gone (here: its store closed): the gateway cannot tell a good key
    from a bad one, so it says to retry later, in the provider's shape, and sends nothing."""
    secret = create_key(keyed, "alice")
    keyed.store.close()
    response = await post(keyed, "/anthropic/v1/messages", ANTHROPIC_BODY, **{"x-api-key": secret})
    assert response.status_code == 503
    assert response.json()["type"] == "error"
    assert "retry shortly" in response.json()["error"]["message"]
    assert keyed.mock.requests == []
