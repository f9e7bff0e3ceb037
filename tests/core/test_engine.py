"""Unit tests for Engine.admit: what the engine decides from a request's head alone.

Over HTTP the same refusals are tested in test_identity.py and test_bad_input.py; these
call the engine directly, as an embedding program does, and check the order of the
checks and the auth-failure accounting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge import Config, MemoryStore, ProviderConfig, Request
from bridge.config import AuthConfig
from bridge.core.engine import Engine
from bridge.core.wiring import open_engine
from bridge.errors import MethodNotAllowed, NotFound, TooManyFailures, Unauthorized
from bridge.identity.auth import BRIDGE_KEY_HEADER, Actor

PROVIDER = ProviderConfig(name="anthropic", type="anthropic", base_url="http://127.0.0.1:9/")


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    config = Config(
        auth=AuthConfig(mode="keys", failure_rate=0.01, failure_burst=2), providers=(PROVIDER,)
    )
    async with open_engine(config, store=MemoryStore()) as engine:
        yield engine


def request(
    method: str = "POST",
    path: str = "/anthropic/v1/messages",
    headers: list[tuple[str, str]] | None = None,
) -> Request:
    return Request(method, path, headers=headers or [], client_address="192.0.2.7")


def auth_failures(engine: Engine, reason: str) -> float:
    value = engine.metrics.registry.get_sample_value("auth_failures_total", {"reason": reason})
    return value or 0


async def test_a_route_that_no_provider_owns_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        await engine.admit(request(path="/nobody/v1/messages"))
    assert engine.auth_failures == {}


async def test_a_bridged_route_refuses_other_methods_before_looking_at_credentials(
    engine: Engine,
) -> None:
    with pytest.raises(MethodNotAllowed):
        await engine.admit(request("GET"))
    assert engine.auth_failures == {}


async def test_refused_credentials_are_counted_by_kind_and_address(engine: Engine) -> None:
    with pytest.raises(Unauthorized):
        await engine.admit(request())
    with pytest.raises(Unauthorized):
        await engine.admit(request(headers=[("x-api-key", "not-a-gateway-key")]))
    assert (auth_failures(engine, "missing"), auth_failures(engine, "invalid")) == (1, 1)
    assert engine.auth_failures == {"192.0.2.7": 2}


async def test_an_address_out_of_failures_is_refused_whatever_it_sends(engine: Engine) -> None:
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await engine.admit(request())
    assert isinstance(engine.store, MemoryStore)
    secret, _ = engine.store.create_key("alice", {})
    with pytest.raises(TooManyFailures):
        await engine.admit(request(headers=[(BRIDGE_KEY_HEADER, secret)]))


async def test_a_valid_key_admits_the_request_with_its_actor(engine: Engine) -> None:
    assert isinstance(engine.store, MemoryStore)
    secret, _ = engine.store.create_key("alice", {"team": "search"})
    admission = await engine.admit(request(headers=[("x-api-key", secret)]))
    assert admission.identity.actor == Actor("alice", {"team": "search"})
    assert admission.identity.central
    assert admission.route.suffix == "/v1/messages"
