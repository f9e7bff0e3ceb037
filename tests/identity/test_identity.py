"""Identity and attribution: gateway keys, BYOK, actor headers, client detection, usage API."""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import trio
import trio.testing

from bridge import Config, MemoryStore, ProviderConfig, Request, open_bridge
from bridge.config import AuthConfig
from bridge.dialects.clients import guess_client, session_id
from bridge.errors import Unauthorized
from bridge.identity.auth import BRIDGE_KEY_HEADER, FailureLimiter, identify

from ..conftest import CENTRAL_KEY, OPENAI_KEY, Gateway

DEAD = "http://127.0.0.1:9/"  # nothing listens there: a forwarded request is a 502

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
        ({"user-agent": "AsyncAnthropic/Python 2.14.0"}, "anthropic-python", None),
        ({"user-agent": "AsyncOpenAI/Python 3.57.0"}, "openai-python", None),
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


# -- what reaches the provider -------------------------------------------------------------

GATEWAY_KEY = re.compile(r"bk-[A-Za-z0-9_-]{8}-[A-Za-z0-9_-]{43}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/anthropic/v1/messages"),
        ("POST", "/openai/v1/chat/completions"),
        ("GET", "/anthropic/v1/models"),
        ("GET", "/openai/v1/models"),
    ],
)
async def test_no_gateway_key_reaches_the_provider_wherever_the_client_puts_it(
    keyed: Gateway, method: str, path: str
) -> None:
    """BYOK with a gateway key where the provider key belongs (a misconfigured client, or
    a key pasted twice): no header going upstream may carry any gateway key."""
    key = create_key(keyed, "hank")
    other = create_key(keyed, "ivy")
    headers = {
        BRIDGE_KEY_HEADER: key,
        "x-api-key": other,
        "authorization": f"Bearer {other}",
        "x-custom-token": f"token={key}",
    }
    body = {**ANTHROPIC_BODY, "model": "gpt-5"} if "openai" in path else ANTHROPIC_BODY
    async with httpx2.AsyncClient() as client:
        response = await client.request(
            method,
            f"{keyed.url}{path}",
            headers=headers,
            content=json.dumps(body).encode() if method == "POST" else None,
        )
    assert response.status_code == 200, response.text
    [received] = keyed.mock.requests
    assert [(k, v) for k, v in received.headers if GATEWAY_KEY.search(v)] == []
    # No real provider key was brought: the provider's own is used.
    expected = ("x-api-key", CENTRAL_KEY) if "anthropic" in path else None
    if expected is not None:
        assert received.header(expected[0]) == expected[1]
    else:
        assert received.header("authorization") == f"Bearer {OPENAI_KEY}"


@pytest.mark.parametrize("trusted", [False, True], ids=["direct", "behind-a-trusted-proxy"])
async def test_forwarding_headers_follow_one_policy_on_both_route_kinds(
    start_gateway: Any, trusted: bool
) -> None:
    """A client cannot choose the address or host the provider sees: X-Forwarded-For is
    the peer's address (extended, from a trusted proxy), Forwarded, X-Forwarded-Host and
    Expect never go upstream, and bridged and passthrough routes behave alike."""
    changes = {"trusted_proxies": ("127.0.0.1",)} if trusted else {}
    gateway: Gateway = await start_gateway(server_changes=changes)
    spoofed = {
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-host": "evil.example",
        "x-forwarded-proto": "https",
        "forwarded": "for=203.0.113.9;host=evil.example",
    }
    async with httpx2.AsyncClient() as client:
        bridged = await client.post(
            f"{gateway.url}/anthropic/v1/messages", json=ANTHROPIC_BODY, headers=spoofed
        )
        passthrough = await client.get(f"{gateway.url}/anthropic/v1/models", headers=spoofed)
    assert (bridged.status_code, passthrough.status_code) == (200, 200)
    assert len(gateway.mock.requests) == 2
    for received in gateway.mock.requests:
        names = [name for name, _ in received.headers]
        assert received.header("x-forwarded-for") == (
            "203.0.113.9, 127.0.0.1" if trusted else "127.0.0.1"
        )
        assert received.header("x-forwarded-proto") == ("https" if trusted else "http")
        assert names.count("x-forwarded-for") == 1
        assert "x-forwarded-host" not in names
        assert "forwarded" not in names
        assert "expect" not in names


async def test_expect_is_answered_by_the_gateway_and_not_forwarded(gateway: Gateway) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    body = json.dumps(ANTHROPIC_BODY).encode()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    assert b"HTTP/1.1 200" in answer
    assert gateway.mock.requests[-1].header("expect") is None


# -- authentication failures are rate limited ----------------------------------------------


def test_failure_limiter_refills_and_forgets() -> None:
    now = [0.0]
    limiter = FailureLimiter(10.0, 3, clock=lambda: now[0], max_addresses=100)
    assert limiter.retry_after("a") == 0.0
    for _ in range(3):
        limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(0.1)
    assert limiter.retry_after("b") == 0.0  # per address
    now[0] += 0.05
    assert limiter.retry_after("a") == pytest.approx(0.05)
    now[0] += 0.05
    assert limiter.retry_after("a") == 0.0  # one token back
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(0.1)
    now[0] += 10
    assert limiter.retry_after("a") == 0.0
    assert len(limiter) == 0  # a refilled bucket is dropped once looked at
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100  # bounded: the least recently failed are forgotten
    off = FailureLimiter(0.0, 1, clock=lambda: now[0])
    for _ in range(50):
        off.failed("a")
    assert (off.retry_after("a"), len(off)) == (0.0, 0)


async def test_auth_failures_get_429_with_retry_after_until_the_bucket_refills(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``auth.failure_burst`` failures per address, then 429 before the key is looked at
    (even a valid one); ``auth.failure_rate`` tokens per second come back."""
    config = Config(
        auth=AuthConfig(mode="keys", failure_rate=10.0, failure_burst=20),
        providers=(
            ProviderConfig(
                name="anthropic", type="anthropic", base_url=DEAD, key="k", max_retries=0
            ),
        ),
    )
    store = MemoryStore()
    secret, _ = store.create_key("alice", {})
    body = json.dumps(ANTHROPIC_BODY).encode()

    def request(address: str, key: str) -> Request:
        headers = [("x-api-key", key)]
        return Request(
            "POST", "/anthropic/v1/messages", headers=headers, body=body, client_address=address
        )

    async with open_bridge(config, store=store) as bridge:
        statuses = [
            (await bridge.handle(request("192.0.2.1", f"wrong-{n}"))).status for n in range(20)
        ]
        assert statuses == [401] * 20
        refused = await bridge.handle(request("192.0.2.1", "wrong"))
        assert refused.status == 429
        assert refused.header("retry-after") == "1"
        assert json.loads(refused.body)["error"]["type"] == "rate_limit_error"
        assert (await bridge.handle(request("192.0.2.1", secret))).status == 429
        assert (await bridge.handle(request("192.0.2.2", "wrong"))).status == 401
        mock_clock.jump(0.1)  # one token back
        assert (await bridge.handle(request("192.0.2.1", "wrong"))).status == 401
        assert (await bridge.handle(request("192.0.2.1", "wrong"))).status == 429
        mock_clock.jump(2.0)
        assert (await bridge.handle(request("192.0.2.1", secret))).status == 502  # dead upstream
    assert bridge.auth_failures["192.0.2.1"] == 21


async def test_auth_failure_counts_are_bounded_in_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Addresses come from strangers (an IPv6 /64 has 2**64): the per-address failure
    counts keep the most recent ones only."""
    monkeypatch.setattr("bridge.core.engine.MAX_COUNTED_ADDRESSES", 50)
    config = Config(
        auth=AuthConfig(mode="keys", failure_rate=0.0),
        providers=(ProviderConfig(name="anthropic", type="anthropic", base_url=DEAD, key="k"),),
    )
    async with open_bridge(config, store=MemoryStore()) as bridge:
        for n in range(200):
            request = Request(
                "POST",
                "/anthropic/v1/messages",
                headers=[("x-api-key", "wrong")],
                body=b"{}",
                client_address=f"2001:db8::{n:x}",
            )
            assert (await bridge.handle(request)).status == 401
        assert len(bridge.auth_failures) == 50
        assert "2001:db8::c7" in bridge.auth_failures  # the latest kept
        assert "2001:db8::0" not in bridge.auth_failures


async def test_a_key_guessing_client_gets_429_over_http(start_gateway: Any) -> None:
    gateway: Gateway = await start_gateway(
        auth=AuthConfig(mode="keys", failure_rate=0.001, failure_burst=5)
    )
    statuses = []
    retry_after = set()
    async with httpx2.AsyncClient() as client:
        for n in range(30):
            response = await client.post(
                f"{gateway.url}/anthropic/v1/messages",
                json=ANTHROPIC_BODY,
                headers={"x-api-key": f"bk-guess{n:04d}-" + "a" * 43},
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after.add(int(response.headers["retry-after"]))
                assert response.json()["error"]["type"] == "rate_limit_error"
    assert statuses == [401] * 5 + [429] * 25
    assert min(retry_after, default=0) >= 1
    assert gateway.bridge.auth_failures["127.0.0.1"] == 5  # the 429s looked nothing up
    assert gateway.mock.requests == []


async def test_a_gateway_key_request_without_a_provider_key_gets_401_naming_the_setting(
    start_gateway: Any,
) -> None:
    gateway: Gateway = await start_gateway(
        auth=AuthConfig(mode="keys"), provider_changes={"key": ""}
    )
    key = create_key(gateway, "erin")
    client = anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic", api_key=key, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await client.messages.create(**ANTHROPIC_BODY)  # type: ignore[arg-type]
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "providers.anthropic.key" in caught.value.message
    assert "ANTHROPIC_API_KEY" in caught.value.message
    chat = openai.AsyncOpenAI(base_url=f"{gateway.url}/openai/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        await chat.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "hi"}]
        )
    assert "providers.openai.key" in refused.value.message
    with pytest.raises(anthropic.AuthenticationError) as listing:
        await client.models.list()  # a passthrough route
    assert "providers.anthropic.key" in listing.value.message
    assert gateway.mock.requests == []
    own = "sk-ant-erins-own-key-123456789"
    byok = anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic",
        api_key=own,
        default_headers={BRIDGE_KEY_HEADER: key},
        max_retries=0,
    )
    await byok.messages.create(**ANTHROPIC_BODY)  # type: ignore[arg-type]
    assert gateway.mock.requests[-1].header("authorization") == f"Bearer {own}"  # this SDK's way


@pytest.mark.parametrize(
    ("config", "headers", "missing"),
    [
        (AuthConfig(mode="keys"), [], True),
        (AuthConfig(mode="keys"), [("x-api-key", "bk-nobody")], False),
        (AuthConfig(mode="header", header="X-User"), [], True),
    ],
)
async def test_a_refusal_says_by_type_whether_the_credential_was_missing(
    config: AuthConfig, headers: list[tuple[str, str]], missing: bool
) -> None:
    """The auth-failure metric's reason comes from the error's field, not its wording."""

    async def nobody(secret: str) -> None:
        return None

    with pytest.raises(Unauthorized) as refused:
        await identify(config, headers, nobody)
    assert refused.value.missing is missing
