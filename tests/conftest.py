"""Shared fixtures: a mock upstream and a gateway on loopback, real HTTP between them.

Rules for tests in this suite: loopback only, port 0, no sleeping (events, or
trio's autojump_clock for timed logic), and the environment cleared of every
variable bridge or the SDKs read, so the machine's settings never leak in.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve

from bridge import (
    AuthConfig,
    Bridge,
    Config,
    ProviderConfig,
    RecordingConfig,
    ServerConfig,
    open_bridge,
)
from bridge.config import MCPConfig, ObservabilityConfig
from bridge.mock.upstream import MockUpstream
from bridge.process.server import hypercorn_config
from bridge.recording.records import InterceptionEnded, InterceptionStarted, Record
from bridge.recording.sql import END_COLUMNS, stored_row
from bridge.recording.sqlite import DIALECT as SQLITE
from bridge.recording.sqlite import SQLiteStore
from bridge.telemetry.tracing import Tracer

from .foreign_upstream import STYLES, ForeignUpstream
from .postgres import (
    Cluster,
    SQLDatabase,
    create_database,
    create_schema,
    drop_schema,
    new_sql_database,
    start_test_cluster,
)

UPSTREAM_STACKS = ("h11-mock", *STYLES)
"""The upstream implementations a test can run against: the h11 :class:`MockUpstream`,
and the stdlib server of tests/foreign_upstream.py in each of its styles."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "upstream_stacks(*names, reason=None): run the test once against each named upstream"
        f" stack, of {UPSTREAM_STACKS} (default: the h11 mock only); the closest marker wins",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``upstream_stack`` (and so ``mock``) by the ``upstream_stacks`` marker."""
    marker = metafunc.definition.get_closest_marker("upstream_stacks")
    if marker is None or "upstream_stack" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(UPSTREAM_STACKS)
    if unknown:
        raise ValueError(f"upstream_stacks: {sorted(unknown)} not among {UPSTREAM_STACKS}")
    if len(marker.args) > 1:
        metafunc.parametrize("upstream_stack", marker.args, indirect=True)


def h11_mock_only(reason: str) -> pytest.MarkDecorator:
    """For a test in a module run on every stack that needs the h11 mock, or no upstream:
    faults, its own upstream, or a request the gateway refuses before any upstream call."""
    return pytest.mark.upstream_stacks("h11-mock", reason=reason)


REFUSED_BEFORE_UPSTREAM = h11_mock_only("the gateway answers itself; no upstream is called")
OWN_UPSTREAM = h11_mock_only("the test serves an upstream of its own, or none")


def is_api_header(name: str) -> bool:
    """A provider's API header that clients act on: ids, rate limits, retry-after, API
    version. (Cloudflare's alt-svc, strict-transport-security and set-cookie describe the
    provider's origin, not the gateway's; whether to relay them is not asserted here.)"""
    return name in ("request-id", "x-request-id", "retry-after") or name.startswith(
        ("anthropic-", "openai-", "x-ratelimit-")
    )


def assert_provider_headers_relayed(
    client_headers: list[tuple[bytes, bytes]],
    upstream_headers: tuple[tuple[str, str], ...],
    *,
    body: bytes,
    stream: bool,
) -> None:
    """The client got every API header of the provider, unchanged, and the gateway's own
    framing: no name twice, one Date that is not the provider's, no Server, and a
    Content-Length that is the length of the body it got (none on a stream)."""
    got = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in client_headers]
    names = [k for k, _ in got]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    provider = {k.lower(): v for k, v in upstream_headers}
    expected = {k: v for k, v in provider.items() if is_api_header(k)}
    assert len(expected) >= 3  # request id and rate limits at least
    assert {k: v for k, v in got if k in expected} == expected
    assert "server" not in names
    assert "connection" not in names or dict(got)["connection"] != provider.get("connection")
    assert names.count("date") == 1
    assert dict(got)["date"] != provider.get("date")
    if stream:
        assert "content-length" not in names
    else:
        assert dict(got)["content-length"] == str(len(body))
        assert "transfer-encoding" not in names


_NOTES = logging.getLogger("tests.notes")
_NOTES.setLevel(logging.INFO)


def note(message: str) -> None:
    """Keep what a test measured for whoever reads the run: ``pytest -rA`` shows it under
    "Captured log call" (tests never print)."""
    _NOTES.info(message)


def is_inner_loop(name: str) -> bool:
    """Scenarios that call injected MCP tools: they need an MCP server (test_inner_loop)."""
    return "_mcp_" in name


CENTRAL_KEY = "sk-ant-central-test-key-0123456789"
OPENAI_KEY = "sk-openai-central-test-key-987654"


# Anything shaped like an unmasked provider or gateway key (masked keys contain "...").
_KEY_PATTERN = re.compile(r"(sk-ant-|sk-|bk-|ghu_|github_pat_)[A-Za-z0-9_-]{12,}")


class _KeyWatch(logging.Handler):
    """Sees every log record of the whole test session, to prove no key is ever logged."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = (
            self.format(record)
            + " "
            + " ".join(str(v) for k, v in vars(record).items() if k not in _STANDARD_ATTRS)
        )
        if _KEY_PATTERN.search(text):
            self.leaks.append(text[:300])


_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@pytest.fixture(autouse=True, scope="session")
def no_key_is_ever_logged() -> Iterator[None]:
    """Across the whole suite, no log line (message, extras, traceback) carries a key."""
    watch = _KeyWatch()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(watch)
        root.setLevel(previous)
    assert watch.leaks == [], f"keys reached the logs: {watch.leaks[:5]}"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BRIDGE_*, ANTHROPIC_*, OPENAI_* variable from the machine reaches a test."""
    for name in list(os.environ):
        if name.startswith(("BRIDGE_", "ANTHROPIC_", "OPENAI_")):
            monkeypatch.delenv(name)


@dataclass
class Gateway:
    """A running gateway in front of a running mock upstream."""

    bridge: Bridge
    url: str
    mock: MockUpstream

    @property
    def store(self) -> SQLiteStore:
        store = self.bridge.store
        assert isinstance(store, SQLiteStore)
        return store

    def anthropic(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """An official SDK client pointed at the gateway."""
        kwargs.setdefault("api_key", "sk-ant-client-byok-key-abcdef")
        kwargs.setdefault("max_retries", 0)
        return anthropic.AsyncAnthropic(base_url=f"{self.url}/anthropic", **kwargs)

    def openai(self, *, provider: str = "openai", **kwargs: Any) -> openai.AsyncOpenAI:
        """An official OpenAI SDK client pointed at the gateway's ``provider``."""
        kwargs.setdefault("api_key", "sk-client-own-openai-key-123456")
        kwargs.setdefault("max_retries", 0)
        prefix = "/openai/v1" if provider == "openai" else f"/{provider}"
        return openai.AsyncOpenAI(base_url=f"{self.url}{prefix}", **kwargs)

    async def flush(self) -> None:
        """Wait until every request has ended and all its records are in the database."""
        with trio.fail_after(10):
            await self.bridge.wait_idle()
            await self.bridge.recorder.flush()


async def run_gateway(
    config: Config,
    *,
    tracer: Tracer | None = None,
    task_status: trio.TaskStatus[tuple[Bridge, str]],
) -> None:
    """Serve ``config`` on loopback like ``bridgectl serve`` does, reporting (bridge, url)."""
    async with open_bridge(config, tracer=tracer) as bridge, trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn_serve, bridge.asgi_app, hypercorn_config(config))  # type: ignore[arg-type]
        )
        task_status.started((bridge, binds[0]))


def gateway_config(tmp_path: Path, upstream_port: int, **server: Any) -> Config:
    return Config(
        server=ServerConfig(host="127.0.0.1", port=0, **server),
        auth=AuthConfig(mode="none"),
        recording=RecordingConfig(database=f"sqlite:///{tmp_path / 'bridge.db'}"),
        providers=(
            ProviderConfig(
                name="anthropic",
                type="anthropic",
                base_url=f"http://127.0.0.1:{upstream_port}/",
                key=CENTRAL_KEY,
                max_retries=0,  # error fixtures answer once; resilience tests turn retries on
            ),
            ProviderConfig(
                name="openai",
                type="openai",
                base_url=f"http://127.0.0.1:{upstream_port}/v1/",
                key=OPENAI_KEY,
                max_retries=0,
            ),
            ProviderConfig(
                name="copilot",
                type="copilot",
                base_url=f"http://127.0.0.1:{upstream_port}/",
                max_retries=0,
            ),
        ),
    )


@pytest.fixture
def upstream_stack(request: pytest.FixtureRequest) -> str:
    """Which implementation serves ``mock``'s scenarios (see ``upstream_stacks``)."""
    stack: str = getattr(request, "param", "h11-mock")
    return stack


@pytest.fixture
async def mock(nursery: trio.Nursery, upstream_stack: str) -> MockUpstream:
    """The scenario upstream. Whichever stack serves it, it records into this object."""
    upstream = MockUpstream()
    if upstream_stack == "h11-mock":
        upstream.port = await nursery.start(upstream.serve)  # type: ignore[attr-defined]
    else:
        foreign = ForeignUpstream(upstream, upstream_stack)
        upstream.port = await nursery.start(foreign.serve)  # type: ignore[attr-defined]
    return upstream


@pytest.fixture
async def gateway(nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path) -> Gateway:
    config = gateway_config(tmp_path, mock.port)  # type: ignore[attr-defined]
    bridge, url = await nursery.start(partial(run_gateway, config))
    return Gateway(bridge, url, mock)


@pytest.fixture
def start_gateway(nursery: trio.Nursery, mock: MockUpstream, tmp_path: Path) -> Any:
    """Start a gateway with changed settings.

    ``await start_gateway(server_changes={...}, auth=AuthConfig(...), upstream_url=...)``
    """

    async def start(
        *,
        server_changes: dict[str, Any] | None = None,
        auth: AuthConfig | None = None,
        upstream_url: str | None = None,
        mcp: MCPConfig | None = None,
        provider_changes: dict[str, Any] | None = None,
        observability: ObservabilityConfig | None = None,
        tracer: Tracer | None = None,
    ) -> Gateway:
        config = gateway_config(tmp_path, mock.port, **(server_changes or {}))  # type: ignore[attr-defined]
        if auth is not None:
            config = replace(config, auth=auth)
        if mcp is not None:
            config = replace(config, mcp=mcp)
        if provider_changes:
            providers = tuple(replace(p, **provider_changes) for p in config.providers)
            config = replace(config, providers=providers)
        if upstream_url is not None:
            providers = tuple(
                replace(p, base_url=upstream_url + ("v1/" if p.type == "openai" else ""))
                for p in config.providers
            )
            config = replace(config, providers=providers)
        if observability is not None:
            config = replace(config, observability=observability)
        bridge, url = await nursery.start(partial(run_gateway, config, tracer=tracer))
        return Gateway(bridge, url, mock)

    return start


@pytest.fixture
def scenario_request() -> Any:
    """The client request body of a fixture scenario."""
    from bridge.mock.upstream import FIXTURES_DIR, load_scenarios

    scenarios = load_scenarios(FIXTURES_DIR)

    def get(name: str) -> dict[str, Any]:
        body = scenarios[name].request
        assert body is not None
        return dict(body)

    return get


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the session (see tests/postgres.py), started by
    the first test that needs it. In CI a server that cannot start fails those tests;
    elsewhere they are skipped with the reason."""
    cluster = start_test_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def postgres_database(postgres_cluster: Cluster) -> str:
    """The URL of the session's test database; each test works in schemas of its own."""
    return create_database(postgres_cluster, "bridge_tests")


_SCHEMA_NUMBERS = itertools.count(1)


@pytest.fixture
def new_postgres_url(postgres_database: str) -> Iterator[Callable[[], str]]:
    """Makes new, empty PostgreSQL databases for the test: each a schema of its own in the
    session's database, named by the URL returned (see tests/postgres.py). Dropped after."""
    names: list[str] = []

    def new() -> str:
        names.append(f"test_{next(_SCHEMA_NUMBERS)}")
        return create_schema(postgres_database, names[-1])

    try:
        yield new
    finally:
        for name in names:
            drop_schema(postgres_database, name)


@pytest.fixture
def postgres_url(new_postgres_url: Callable[[], str]) -> str:
    """The URL of a new, empty PostgreSQL database (a schema of its own) for the test."""
    return new_postgres_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_database(request: pytest.FixtureRequest, tmp_path: Path) -> SQLDatabase:
    """An empty database of each SQL kind, so that both SQL stores pass the same tests."""
    return new_sql_database(request.param, request, tmp_path)


def rows(records: Sequence[Record], ends: Sequence[InterceptionEnded] = ()) -> list[dict[str, Any]]:
    """The rows *records* become, as every store's readers return them (with SQLite's
    values): an interception's row carries its end's columns, from *ends*, or ``None``."""
    ended = {end.interception_id: end for end in ends}
    made = []
    for record in records:
        row = stored_row(record, SQLITE)
        if isinstance(record, InterceptionStarted):
            end = ended.get(record.id)
            row |= dict.fromkeys(END_COLUMNS) if end is None else stored_row(end, SQLITE)
        made.append(row)
    return made
