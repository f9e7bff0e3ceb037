"""Tests for bridge.telemetry.tracing: span names, attributes, parents across Trio tasks,
error rules,
and configure_tracing with and without the OTLP environment variables.

Spans go to a private SDK provider with an in-memory exporter: the global provider can be set
once per process, so every test that lets configure_tracing install one runs in a subprocess.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import timeit
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from bridge.telemetry.tracing import (
    CANCELLED_EVENT,
    SPAN_INTERCEPT,
    SPAN_PROCESS_REQUEST,
    SPAN_RECORD_INTERCEPTION,
    SPAN_RECORD_INTERCEPTION_ENDED,
    SPAN_RECORD_PROMPT_USAGE,
    SPAN_RECORD_TOKEN_USAGE,
    SPAN_RECORD_TOOL_USAGE,
    SPAN_TOOL_CALL,
    SPAN_UPSTREAM,
    Tracer,
    configure_tracing,
)

ROOT = Path(__file__).resolve().parents[2]

ATTRIBUTES = Tracer.interception_attributes(
    request_path="/anthropic/v1/messages",
    interception_id="0b6f1c9e",
    user_id="alice",
    provider="anthropic",
    model="claude-sonnet-4",
    streaming=True,
)


def private_tracer(sampler: Sampler | None = None) -> tuple[Tracer, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(provider.get_tracer("bridge")), exporter


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    if span.parent is None:
        return None
    parent_id: int = span.parent.span_id
    return parent_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    own_id: int = span.context.span_id
    return own_id


# --- names and attributes -------------------------------------------------------------------


def test_span_names_are_the_reference_names() -> None:
    assert SPAN_INTERCEPT == "Intercept"
    assert SPAN_PROCESS_REQUEST == "Intercept.ProcessRequest"
    assert SPAN_UPSTREAM == "Intercept.ProcessRequest.Upstream"
    assert SPAN_TOOL_CALL == "Intercept.ProcessRequest.ToolCall"
    assert SPAN_RECORD_INTERCEPTION_ENDED == "Intercept.RecordInterceptionEnded"


def test_interception_attributes_use_the_reference_keys() -> None:
    assert ATTRIBUTES == {
        "request_path": "/anthropic/v1/messages",
        "interception_id": "0b6f1c9e",
        "user_id": "alice",
        "provider": "anthropic",
        "model": "claude-sonnet-4",
        "streaming": True,
    }
    bedrock = Tracer.interception_attributes(
        request_path="/anthropic/v1/messages",
        interception_id="1",
        user_id="bob",
        provider="bedrock",
        model="m",
        streaming=False,
        aws_bedrock=True,
    )
    assert bedrock["aws_bedrock"] is True
    assert bedrock["streaming"] is False


def test_an_interception_with_one_tool_call_gives_the_reference_spans() -> None:
    tracer, exporter = private_tracer()
    with tracer.span(SPAN_INTERCEPT, ATTRIBUTES):
        with tracer.span(SPAN_RECORD_INTERCEPTION, ATTRIBUTES):
            pass
        with tracer.span(SPAN_PROCESS_REQUEST, ATTRIBUTES):
            for turn in range(2):
                with tracer.span(SPAN_UPSTREAM, ATTRIBUTES):
                    pass
                if turn == 0:
                    with tracer.span(SPAN_TOOL_CALL, {**ATTRIBUTES, "mcp_tool_name": "echo"}):
                        pass
                with tracer.span(SPAN_RECORD_TOKEN_USAGE, ATTRIBUTES):
                    pass
            with tracer.span(SPAN_RECORD_PROMPT_USAGE, ATTRIBUTES):
                pass
            with tracer.span(SPAN_RECORD_TOOL_USAGE, ATTRIBUTES):
                pass
        with tracer.span(SPAN_RECORD_INTERCEPTION_ENDED, ATTRIBUTES):
            pass

    spans = by_name(exporter.get_finished_spans())
    assert {name: len(group) for name, group in spans.items()} == {
        "Intercept": 1,
        "Intercept.RecordInterception": 1,
        "Intercept.ProcessRequest": 1,
        "Intercept.ProcessRequest.Upstream": 2,
        "Intercept.ProcessRequest.ToolCall": 1,
        "Intercept.RecordTokenUsage": 2,
        "Intercept.RecordPromptUsage": 1,
        "Intercept.RecordToolUsage": 1,
        "Intercept.RecordInterceptionEnded": 1,
    }
    root = spans["Intercept"][0]
    process = spans["Intercept.ProcessRequest"][0]
    assert root.parent is None
    assert parent_of(process) == span_id(root)
    assert all(parent_of(s) == span_id(process) for s in spans[SPAN_UPSTREAM])
    assert parent_of(spans[SPAN_RECORD_INTERCEPTION_ENDED][0]) == span_id(root)
    for name, group in spans.items():
        for span in group:
            expected = (
                {**ATTRIBUTES, "mcp_tool_name": "echo"} if name == SPAN_TOOL_CALL else ATTRIBUTES
            )
            assert dict(span.attributes or {}) == expected, name
            assert span.status.status_code is StatusCode.UNSET, name
    assert (
        len({span.context.trace_id for span in exporter.get_finished_spans() if span.context}) == 1
    )


# --- parents across Trio tasks --------------------------------------------------------------


async def test_a_span_open_when_a_task_is_spawned_is_the_parent_of_its_spans() -> None:
    tracer, exporter = private_tracer()

    async def child(name: str) -> None:
        await trio.lowlevel.checkpoint()
        with tracer.span(name):
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        with tracer.span(SPAN_PROCESS_REQUEST):
            nursery.start_soon(child, SPAN_TOOL_CALL)
            nursery.start_soon(child, SPAN_TOOL_CALL)
        nursery.start_soon(child, SPAN_RECORD_TOOL_USAGE)

    spans = by_name(exporter.get_finished_spans())
    parent = spans[SPAN_PROCESS_REQUEST][0]
    assert [parent_of(s) for s in spans[SPAN_TOOL_CALL]] == [span_id(parent)] * 2
    # Spawned after the span was left: the child does not see it.
    assert spans[SPAN_RECORD_TOOL_USAGE][0].parent is None


async def test_a_sibling_tasks_span_is_not_a_parent() -> None:
    tracer, exporter = private_tracer()
    entered = trio.Event()
    release = trio.Event()

    async def holder() -> None:
        with tracer.span(SPAN_UPSTREAM):
            entered.set()
            await release.wait()

    async def other() -> None:
        await entered.wait()
        with tracer.span(SPAN_RECORD_TOKEN_USAGE):
            pass
        release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        nursery.start_soon(other)

    assert by_name(exporter.get_finished_spans())[SPAN_RECORD_TOKEN_USAGE][0].parent is None


# --- errors and cancellation ----------------------------------------------------------------


def test_an_exception_sets_error_status_with_its_text_and_propagates() -> None:
    tracer, exporter = private_tracer()
    with (
        pytest.raises(RuntimeError, match="upstream said no"),
        tracer.span(SPAN_INTERCEPT, ATTRIBUTES),
    ):
        raise RuntimeError("interception failed: upstream said no")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "interception failed: upstream said no"
    assert [event.name for event in span.events] == ["exception"]


def test_an_exception_without_text_is_described_by_its_type() -> None:
    tracer, exporter = private_tracer()
    with pytest.raises(KeyError), tracer.span(SPAN_UPSTREAM):
        raise KeyError
    assert exporter.get_finished_spans()[0].status.description == "KeyError"


async def test_cancellation_is_not_an_error() -> None:
    tracer, exporter = private_tracer()
    with trio.CancelScope() as scope, tracer.span(SPAN_INTERCEPT, ATTRIBUTES):
        scope.cancel()
        await trio.sleep_forever()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert [event.name for event in span.events] == [CANCELLED_EVENT]


async def test_cancellation_through_a_nursery_is_not_an_error() -> None:
    tracer, exporter = private_tracer()
    with trio.CancelScope() as scope, tracer.span(SPAN_PROCESS_REQUEST):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            await trio.lowlevel.checkpoint()
            scope.cancel()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert [event.name for event in span.events] == [CANCELLED_EVENT]


async def test_a_failure_next_to_a_cancellation_is_an_error() -> None:
    tracer, exporter = private_tracer()

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("tool crashed")

    async def process() -> None:
        with tracer.span(SPAN_PROCESS_REQUEST):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(fail)

    with pytest.raises(ExceptionGroup):
        await process()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


# --- sampling and cost ----------------------------------------------------------------------


class DropIntercept(Sampler):
    """Samples every root span except ``Intercept``."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decision = Decision.DROP if name == SPAN_INTERCEPT else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision, attributes)

    def get_description(self) -> str:
        return "DropIntercept"


def test_the_children_of_a_sampled_out_span_are_sampled_out_too() -> None:
    tracer, exporter = private_tracer(ParentBased(root=DropIntercept()))
    with tracer.span(SPAN_INTERCEPT), tracer.span(SPAN_PROCESS_REQUEST):
        pass
    with tracer.span(SPAN_UPSTREAM):
        pass
    assert [span.name for span in exporter.get_finished_spans()] == [SPAN_UPSTREAM]


def test_a_disabled_span_is_cheap_and_changes_nothing() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    tracer = Tracer()
    before = trace.get_current_span()
    with tracer.span(SPAN_INTERCEPT, ATTRIBUTES) as span:
        assert not span.is_recording()
        assert trace.get_current_span() is before

    def one_span() -> None:
        with tracer.span(SPAN_INTERCEPT, ATTRIBUTES):
            pass

    number = 20_000
    seconds = min(timeit.repeat(one_span, number=number, repeat=3)) / number
    # About 2 us on a laptop; the bound only catches a real regression (export, I/O, locks).
    assert seconds < 25e-6, f"{seconds * 1e9:.0f} ns per disabled span"


# --- configure_tracing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "gateway"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_without_an_endpoint_or_when_disabled_nothing_is_installed(
    environ: dict[str, str],
) -> None:
    shutdown = configure_tracing(environ)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    shutdown()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ],
)
def test_an_unsupported_exporter_is_refused_by_name(variable: str, value: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", variable: value}
    with pytest.raises(ValueError, match=f"{variable}={value!r} is not supported"):
        configure_tracing(environ)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from opentelemetry import trace
    from bridge.telemetry.tracing import SPAN_INTERCEPT, SPAN_UPSTREAM, Tracer, configure_tracing

    if sys.argv[1] == "app-provider":
        from opentelemetry.sdk.trace import TracerProvider
        app_provider = TracerProvider(shutdown_on_exit=False)
        trace.set_tracer_provider(app_provider)
    tracer = Tracer()  # built before configure_tracing: the proxy must still export
    shutdown = configure_tracing()
    exporting = any(t.name.startswith("OtelBatch") for t in threading.enumerate())
    with tracer.span(SPAN_INTERCEPT, {"interception_id": "abc", "streaming": True}):
        with tracer.span(SPAN_UPSTREAM):
            pass
    started = time.monotonic()
    shutdown()
    shutdown()
    provider = trace.get_tracer_provider()
    if sys.argv[1] == "app-provider":
        print("kept" if provider is app_provider and not exporting else "replaced")
    else:
        print(type(provider).__name__)
    print(f"{time.monotonic() - started:.3f}")
    """
)


def otel_free_environ(**variables: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(variables)
    return environ


async def run_script(mode: str, environ: dict[str, str]) -> list[str]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-c", SCRIPT, mode],
            env=environ,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().split()


async def serve_otlp(stream: trio.SocketStream, bodies: list[bytes]) -> None:
    """A minimal OTLP/HTTP collector: keeps each request body, answers 200."""
    connection = h11.Connection(h11.SERVER)
    body = b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some()
            if not data:
                return
            connection.receive_data(data)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            bodies.append(body)
            body = b""
            headers = [("content-type", "application/x-protobuf"), ("content-length", "0")]
            await stream.send_all(connection.send(h11.Response(status_code=200, headers=headers)))
            await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
            connection.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return


async def test_with_an_endpoint_spans_are_exported_over_otlp_http() -> None:
    bodies: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        await serve_otlp(stream, bodies)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        environ = otel_free_environ(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}/",
            OTEL_SERVICE_NAME="bridge-test",
        )
        output = await run_script("configure", environ)
        nursery.cancel_scope.cancel()

    assert output[0] == "TracerProvider"
    spans = []
    services = set()
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    assert services == {"bridge-test"}
    assert sorted(span.name for span in spans) == [SPAN_INTERCEPT, SPAN_UPSTREAM]
    (root,) = [span for span in spans if span.name == SPAN_INTERCEPT]
    assert {a.key for a in root.attributes} == {"interception_id", "streaming"}


async def test_an_unreachable_collector_neither_raises_nor_blocks() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now: every export is refused.
    environ = otel_free_environ(
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{port}/v1/traces",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    provider_type, shutdown_seconds = await run_script("configure", environ)
    assert provider_type == "TracerProvider"
    assert float(shutdown_seconds) < 5


async def test_a_provider_the_application_installed_is_left_in_place() -> None:
    environ = otel_free_environ(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    verdict, _ = await run_script("app-provider", environ)
    assert verdict == "kept"
