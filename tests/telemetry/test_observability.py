"""Observability over real HTTP: metrics, spans, the interception log line, the API dump."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from bridge import AuthConfig, MemoryStore, Request, open_bridge
from bridge.config import MCPConfig, MCPServerConfig, ObservabilityConfig
from bridge.mock.upstream import FIXTURES_DIR, MockUpstream, load_scenarios
from bridge.telemetry.logs import configure_logging
from bridge.telemetry.metrics import MAX_LABEL_VALUES, render
from bridge.telemetry.tracing import Tracer
from tests.mcp_servers import build_server, serve_http

from ..conftest import CENTRAL_KEY, Gateway, gateway_config

SCENARIOS = load_scenarios(FIXTURES_DIR)


def request_of(name: str, *, stream: bool) -> dict[str, Any]:
    return {**(SCENARIOS[name].request or {}), "stream": stream}


async def call(gateway: Gateway, path: str, name: str, *, stream: bool = False) -> httpx2.Response:
    async with httpx2.AsyncClient() as client:
        return await client.post(
            f"{gateway.url}{path}",
            json=request_of(name, stream=stream),
            headers={"x-mock-scenario": name, "user-agent": "claude-cli/2.0 (external)"},
        )


async def scrape(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{gateway.url}/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str
) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


async def test_metrics_after_representative_scenarios(gateway: Gateway) -> None:
    await call(gateway, "/anthropic/v1/messages", "anthropic_cache")
    await call(gateway, "/anthropic/v1/messages", "anthropic_parallel_tools", stream=True)
    await call(gateway, "/anthropic/v1/messages", "anthropic_error_400")
    async with httpx2.AsyncClient() as client:
        await client.get(f"{gateway.url}/anthropic/v1/models")
    await gateway.flush()
    samples = await scrape(gateway)
    base = {
        "provider": "anthropic",
        "route": "/v1/messages",
        "method": "POST",
        "initiator_id": "anonymous",
        "client": "Claude Code",
    }
    cache_model = SCENARIOS["anthropic_cache"].request["model"]  # type: ignore[index]
    tools_model = SCENARIOS["anthropic_parallel_tools"].request["model"]  # type: ignore[index]
    completed = value(samples, "interceptions_total", **base, model=cache_model, status="completed")
    completed += (
        0
        if tools_model == cache_model
        else value(samples, "interceptions_total", **base, model=tools_model, status="completed")
    )
    assert completed == 2
    model_400 = SCENARIOS["anthropic_error_400"].request["model"]  # type: ignore[index]
    assert value(samples, "interceptions_total", **base, model=model_400, status="failed") == 1
    usage = SCENARIOS["anthropic_cache"].expect.usage
    assert usage is not None
    token_labels = {
        "provider": "anthropic",
        "model": cache_model,
        "initiator_id": "anonymous",
        "client": "Claude Code",
    }
    if cache_model != tools_model:
        assert (
            value(samples, "tokens_total", **token_labels, type="cache_read_input_tokens")
            == usage.cache_read
        )
        assert (
            value(samples, "tokens_total", **token_labels, type="cache_write_input_tokens")
            == usage.cache_write
        )
    assert (
        value(
            samples,
            "non_injected_tool_selections_total",
            provider="anthropic",
            model=tools_model,
            name="get_weather",
        )
        == 2
    )
    assert (
        value(samples, "passthrough_total", provider="anthropic", route="/v1/models", method="GET")
        == 1
    )
    assert (
        value(
            samples,
            "interceptions_inflight",
            provider="anthropic",
            model=cache_model,
            route="/v1/messages",
        )
        == 0
    )
    assert (
        value(
            samples, "interceptions_duration_seconds_count", provider="anthropic", model=cache_model
        )
        >= 1
    )
    assert (
        value(samples, "upstream_ttfb_seconds_count", provider="anthropic", model=cache_model) >= 1
    )
    assert (
        value(samples, "gateway_added_seconds_count", provider="anthropic", model=cache_model) >= 1
    )
    prompts = sum(v for (name, _), v in samples.items() if name == "prompts_total")
    assert prompts == 3
    assert value(samples, "recorder_records_total", outcome="written") > 0


async def test_metrics_prefix(start_gateway: Any) -> None:
    gateway: Gateway = await start_gateway(
        observability=ObservabilityConfig(metrics_prefix="bridge_")
    )
    await call(gateway, "/anthropic/v1/messages", "anthropic_text")
    samples = await scrape(gateway)
    assert any(name == "bridge_interceptions_total" for name, _ in samples)
    assert not any(name == "interceptions_total" for name, _ in samples)


@pytest.fixture
def spans() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(provider.get_tracer("bridge")), exporter


async def test_span_set_of_a_streaming_interception(start_gateway: Any, spans: Any) -> None:
    tracer, exporter = spans
    gateway: Gateway = await start_gateway(tracer=tracer)
    await call(gateway, "/anthropic/v1/messages", "anthropic_tool_call", stream=True)
    await gateway.flush()
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == sorted(
        [
            "Intercept",
            "Intercept.RecordInterception",
            "Intercept.ProcessRequest",
            "Intercept.ProcessRequest.Upstream",
            "Intercept.RecordPromptUsage",
            "Intercept.RecordTokenUsage",
            "Intercept.RecordToolUsage",
            "Intercept.RecordInterceptionEnded",
        ]
    )
    [root] = [s for s in exporter.get_finished_spans() if s.name == "Intercept"]
    attributes = dict(root.attributes or {})
    assert set(attributes) == {
        "request_path",
        "interception_id",
        "user_id",
        "provider",
        "model",
        "streaming",
    }
    assert attributes["streaming"] is True
    assert all(s.context.trace_id == root.context.trace_id for s in exporter.get_finished_spans())


async def test_one_log_line_per_interception_end(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.interception")
    await call(gateway, "/anthropic/v1/messages", "anthropic_cache")
    await gateway.flush()
    [record] = [r for r in caplog.records if r.getMessage() == "interception ended"]
    usage = SCENARIOS["anthropic_cache"].expect.usage
    assert usage is not None
    assert record.outcome == "completed"  # type: ignore[attr-defined]
    assert record.user == "anonymous"  # type: ignore[attr-defined]
    assert record.input_tokens == usage.input  # type: ignore[attr-defined]
    assert record.cache_read == usage.cache_read  # type: ignore[attr-defined]


async def test_api_dump_writes_masked_request_and_response_files(
    start_gateway: Any, tmp_path: Path
) -> None:
    dump = tmp_path / "dump"
    gateway: Gateway = await start_gateway(observability=ObservabilityConfig(dump_dir=str(dump)))
    await call(gateway, "/anthropic/v1/messages", "anthropic_text", stream=True)
    await gateway.flush()
    files = sorted(p for p in dump.rglob("*") if p.is_file())
    assert [p.suffixes[-2:] for p in files] == [[".req", ".txt"], [".resp", ".txt"]]
    request, response = (p.read_text() for p in files)
    assert request.startswith("POST http://127.0.0.1:")
    assert '"messages"' in request
    assert response.startswith("HTTP/1.1 200")
    assert "event: message_stop" in response
    everything = "".join(p.read_text(errors="replace") for p in files)
    assert CENTRAL_KEY not in everything
    assert json.dumps(CENTRAL_KEY)[1:-1] not in everything


# --- Secrets in MCP server URLs (hardening) ---------------------------------------------------

URL_TOKEN = "s3cr3t-value"
URL_PASSWORD = "pw-hunter2"


def with_secrets(url: str) -> str:
    """``url`` with a password in its userinfo and a token in its query."""
    return url.replace("://", f"://user:{URL_PASSWORD}@", 1) + f"?token={URL_TOKEN}"


def assert_no_url_secret(text: str, where: str) -> None:
    assert URL_TOKEN not in text, where
    assert URL_PASSWORD not in text, where


async def test_secrets_in_mcp_server_urls_never_show(
    start_gateway: Any, mock: MockUpstream, nursery: trio.Nursery
) -> None:
    """A working and a failing MCP server, both with a token and a password in their URL:
    neither shows in /readyz, /metrics, the recorded tool usage or the log lines."""
    logs = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging(ObservabilityConfig(log_level="INFO"), stream=logs)
    try:
        good = await nursery.start(partial(serve_http, build_server().streamable_http_app()))
        mcp = MCPConfig(
            servers=(
                MCPServerConfig("demo", url=with_secrets(good), allow="^add$"),
                # The mock upstream answers 404 there: the server is logged unavailable.
                MCPServerConfig("broken", url=with_secrets(f"http://127.0.0.1:{mock.port}/mcp")),
            )
        )
        gateway: Gateway = await start_gateway(mcp=mcp)
        name = "anthropic_mcp_add"
        async with httpx2.AsyncClient(timeout=30) as client:
            answer = await client.post(
                f"{gateway.url}/anthropic/v1/messages",
                json=request_of(name, stream=False),
                headers={"x-mock-scenario": name},
            )
            assert answer.status_code == 200, answer.text
            await gateway.flush()
            ready = await client.get(f"{gateway.url}/readyz")
            metrics = await client.get(f"{gateway.url}/metrics")
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    servers = ready.json()["checks"]["mcp"]["servers"]
    assert servers["demo"]["url"].startswith("http://user:***@127.0.0.1:")
    assert servers["demo"]["url"].endswith("/mcp?token=***")
    assert servers["broken"]["last_error"]
    assert_no_url_secret(ready.text, "/readyz")
    assert 'server="demo"' in metrics.text  # metrics name servers as configured
    assert_no_url_secret(metrics.text, "/metrics")
    [interception] = gateway.store.interceptions()
    [tool] = gateway.store.tool_usages(interception["id"])
    assert tool["server_url"].endswith("/mcp?token=***")
    assert_no_url_secret(json.dumps(tool, default=str), "recorded tool usage")
    assert "MCP server 'broken' at http://user:***@127.0.0.1:" in logs.getvalue()
    assert_no_url_secret(logs.getvalue(), "log lines")


# --- Bounded metric labels (hardening) --------------------------------------------------------

BOMB = 10_000


@pytest.mark.slow
async def test_label_bombing_leaves_metrics_bounded(
    mock: MockUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """10,000 requests, each with its own model, user, client, path and method: the
    exposition stops growing once every capped label has reached MAX_LABEL_VALUES.

    The bound: every series that can exist after the bomb already exists after the first
    MAX_LABEL_VALUES + 1 requests of each kind (each request brings one new value per
    label, so the caps are reached by then), plus at most one ``other`` series per metric
    and closed label value. So the series after 10,000 requests are at most those after
    2 * (MAX_LABEL_VALUES + 1) requests plus a small constant, and /metrics at most
    a few hundred kilobytes; before the caps, 4,000 unique paths alone gave 4,001 series
    and 967 KB.
    """
    caplog.set_level(logging.WARNING)  # the suite logs at DEBUG: 10,000 requests' worth
    config = replace(
        gateway_config(tmp_path, mock.port),  # type: ignore[attr-defined]
        auth=AuthConfig(mode="header"),
    )
    async with open_bridge(config, store=MemoryStore()) as bridge:

        async def bomb(start: int, stop: int) -> None:
            async def one(n: int) -> None:
                headers = [("x-bridge-user", f"user-{n}"), ("user-agent", f"agent-{n}/1")]
                if n % 2:
                    body = {"model": f"model-{n}\ud800", "max_tokens": 1, "messages": []}
                    body["messages"] = [{"role": "user", "content": "hi"}]
                    request = Request(
                        "POST",
                        "/anthropic/v1/messages",
                        headers=[*headers, ("content-type", "application/json")],
                        body=json.dumps(body).encode(),
                    )
                else:
                    method = "GET" if n % 4 else f"M{n}"
                    request = Request(method, f"/anthropic/v1/models/x-{n}", headers=headers)
                response = await bridge.handle(request)
                assert response.status < 500 or response.status == 502, response.body

            async with trio.open_nursery() as nursery:
                for n in range(start, stop):
                    nursery.start_soon(one, n)
                    if (n + 1) % 50 == 0:
                        await bridge.wait_idle()

        warm = 2 * (MAX_LABEL_VALUES + 1)
        await bomb(0, warm)
        body, _ = render(bridge.metrics)
        warm_series = len([line for line in body.decode().splitlines() if line[:1] != "#"])
        await bomb(warm, BOMB)
        body, _ = render(bridge.metrics)
    text = body.decode()
    lines = [line for line in text.splitlines() if line[:1] != "#"]
    assert 'model="other"' in text
    assert 'initiator_id="other"' in text
    assert 'route="/v1/models/**"' in text
    assert "x-9998" not in text  # no raw path
    assert len(lines) <= warm_series + 200, (warm_series, len(lines))
    assert len(body) < 512 * 1024, len(body)


# --- observability.metrics_auth (hardening) ---------------------------------------------------

METRICS_KEY = "scrape-secret-0123456789"


@pytest.mark.parametrize(
    ("observability", "auth", "key"),
    [
        (ObservabilityConfig(metrics_auth=True, metrics_key=METRICS_KEY), None, METRICS_KEY),
        (
            ObservabilityConfig(metrics_auth=True),
            AuthConfig(mode="none", admin_key="admin-secret-123456"),
            "admin-secret-123456",
        ),
    ],
    ids=["metrics_key", "admin_key"],
)
async def test_metrics_auth_guards_metrics_and_readiness_details(
    start_gateway: Any, observability: ObservabilityConfig, auth: AuthConfig | None, key: str
) -> None:
    gateway: Gateway = await start_gateway(observability=observability, auth=auth)
    await call(gateway, "/anthropic/v1/messages", "anthropic_text")
    good = {"authorization": f"Bearer {key}"}
    bad = {"authorization": "Bearer not-the-key"}
    async with httpx2.AsyncClient() as client:
        anonymous = await client.get(f"{gateway.url}/metrics")
        wrong = await client.get(f"{gateway.url}/metrics", headers=bad)
        scraped = await client.get(f"{gateway.url}/metrics", headers=good)
        ready_anonymous = await client.get(f"{gateway.url}/readyz")
        ready = await client.get(f"{gateway.url}/readyz", headers=good)
        health = await client.get(f"{gateway.url}/healthz")
    assert (anonymous.status_code, wrong.status_code, scraped.status_code) == (401, 401, 200)
    assert "anonymous" not in anonymous.text  # no user id, model or client leaks
    assert "claude" not in anonymous.text
    assert 'initiator_id="anonymous"' in scraped.text
    assert ready_anonymous.status_code == 200
    assert ready_anonymous.json() == {"ready": True}
    assert "checks" in ready.json()
    assert health.status_code == 200


async def test_a_password_in_a_provider_base_url_stays_out_of_spans(
    start_gateway: Any, mock: MockUpstream, spans: Any
) -> None:
    tracer, exporter = spans
    gateway: Gateway = await start_gateway(
        tracer=tracer, upstream_url=f"http://user:{URL_PASSWORD}@127.0.0.1:{mock.port}/"
    )
    async with httpx2.AsyncClient() as client:
        await client.get(f"{gateway.url}/anthropic/v1/models")
    await gateway.flush()
    [span] = [s for s in exporter.get_finished_spans() if s.name == "Passthrough"]
    shown = str((span.attributes or {})["passthrough_upstream_url"])
    assert shown.startswith("http://user:***@127.0.0.1:")
    assert URL_PASSWORD not in shown


async def test_readyz_is_degraded_while_an_mcp_server_cannot_start(start_gateway: Any) -> None:
    """An MCP server that cannot start leaves the gateway serving (200) but not "ok":
    /readyz says degraded, and why."""
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        servers = (MCPServerConfig("broken", url=f"http://127.0.0.1:{port}/mcp"),)
        gateway: Gateway = await start_gateway(mcp=MCPConfig(servers=servers))
        hub = gateway.bridge._engine.hub
        assert hub is not None
        with trio.fail_after(10):
            while hub.status()["broken"]["last_error"] is None:
                await hub.wait_changed()
        async with httpx2.AsyncClient() as client:
            ready = await client.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["ready"], body["status"]) == (True, "degraded")
    assert body["checks"]["mcp"]["ok"] is False
    assert body["checks"]["mcp"]["detail"].startswith("broken: ")


async def test_readyz_is_ok_when_every_check_is(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as client:
        ready = await client.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert (ready.json()["ready"], ready.json()["status"]) == (True, "ok")
