"""OpenTelemetry spans for interceptions and passthrough, under stable names.

The core opens spans only through :class:`Tracer`, never through the OpenTelemetry API
directly, so span names, attribute keys and the error rules live in this one module.

Rules:

1. Span names and attribute keys are those of docs/behaviour.md §10.1, exactly: dashboards
   and tests written against the Go gateway (coder/aibridge) keep working.
2. Disabled costs (almost) nothing. With no SDK provider installed, the API hands out
   non-recording spans; :meth:`Tracer.span` then skips the context switch too, so a span is a
   few hundred nanoseconds (see ``test_a_disabled_span_is_cheap``).
3. An exception leaving a span sets its status to ERROR with the exception's text and records
   it as an event. Cancellation is not an error: a client that leaves (``trio.Cancelled``,
   possibly inside an exception group) or a consumer that stops a generator
   (``GeneratorExit``) adds a ``cancelled`` event and leaves the status unset.
4. :func:`configure_tracing` installs an SDK provider only when an OTLP endpoint is configured
   through the standard environment variables, and never over a provider the embedding
   application installed itself: the application owns its telemetry pipeline, and OpenTelemetry
   allows the global provider to be set once per process. Our spans then go to its provider.

Trio and span parents: OpenTelemetry keeps the current span in a ``contextvars`` variable.
``nursery.start_soon`` copies the context *of the task calling it* into the new task, so a
task spawned while a span is open (entered in the spawning task, before ``start_soon``) sees
that span as its current span, and the spans it opens are children of it. A span entered
*after* spawning, or in a sibling task, is not visible to the child. Do not hold a span open
across a ``yield`` of an async generator that another task iterates: the span would leak into
the consumer's context between iterations.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

__all__ = [
    "ATTR_AWS_BEDROCK",
    "ATTR_INTERCEPTION_ID",
    "ATTR_MODEL",
    "ATTR_PROVIDER",
    "ATTR_REQUEST_PATH",
    "ATTR_STREAMING",
    "ATTR_USER_ID",
    "CANCELLED_EVENT",
    "SPAN_INTERCEPT",
    "SPAN_PASSTHROUGH",
    "SPAN_PROCESS_REQUEST",
    "SPAN_RECORD_INTERCEPTION",
    "SPAN_RECORD_INTERCEPTION_ENDED",
    "SPAN_RECORD_MODEL_THOUGHT",
    "SPAN_RECORD_PROMPT_USAGE",
    "SPAN_RECORD_TOKEN_USAGE",
    "SPAN_RECORD_TOOL_USAGE",
    "SPAN_TOOL_CALL",
    "SPAN_UPSTREAM",
    "Tracer",
    "configure_tracing",
]

logger = logging.getLogger("bridge.tracing")

# Span names (docs/behaviour.md §10.1).
SPAN_INTERCEPT = "Intercept"
SPAN_PROCESS_REQUEST = "Intercept.ProcessRequest"
SPAN_UPSTREAM = "Intercept.ProcessRequest.Upstream"
SPAN_TOOL_CALL = "Intercept.ProcessRequest.ToolCall"
SPAN_RECORD_INTERCEPTION = "Intercept.RecordInterception"
SPAN_RECORD_INTERCEPTION_ENDED = "Intercept.RecordInterceptionEnded"
SPAN_RECORD_PROMPT_USAGE = "Intercept.RecordPromptUsage"
SPAN_RECORD_TOKEN_USAGE = "Intercept.RecordTokenUsage"
SPAN_RECORD_TOOL_USAGE = "Intercept.RecordToolUsage"
SPAN_RECORD_MODEL_THOUGHT = "Intercept.RecordModelThought"
SPAN_PASSTHROUGH = "Passthrough"

# Attribute keys (docs/behaviour.md §10.1).
ATTR_REQUEST_PATH = "request_path"
ATTR_INTERCEPTION_ID = "interception_id"
ATTR_USER_ID = "user_id"
ATTR_PROVIDER = "provider"
ATTR_MODEL = "model"
ATTR_STREAMING = "streaming"
ATTR_AWS_BEDROCK = "aws_bedrock"

_DISABLED: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)
"""What :meth:`Tracer.span` gives while no tracer provider is installed."""

CANCELLED_EVENT = "cancelled"
"""Event added to a span left by cancellation (which is not an error, rule 3)."""

_TRACES_PATH = "/v1/traces"
_SUPPORTED_PROTOCOL = "http/protobuf"


class Tracer:
    """The spans of one component; a thin wrapper over an OpenTelemetry tracer.

    By default it uses the global provider's tracer named ``bridge``. That tracer is a proxy:
    a :class:`Tracer` built before :func:`configure_tracing` still exports once a provider is
    installed. Tests pass ``provider.get_tracer("bridge")`` of a private provider instead.
    """

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._follows_global = tracer is None
        self._tracer = tracer if tracer is not None else trace.get_tracer("bridge")

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        """Open span ``name`` as the current span for the body of the ``with`` block.

        On an exception the status becomes ERROR with the exception's text and the exception is
        re-raised; on cancellation a ``cancelled`` event is added instead (rule 3).
        """
        if self._follows_global and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        ):
            # No provider installed (yet): every span would be a no-op. Checked on each
            # call, so spans start recording as soon as one is installed (rule 2).
            return _DISABLED
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: Mapping[str, AttributeValue] | None) -> Iterator[Span]:
        span = self._tracer.start_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        )
        if not span.is_recording() and (
            span.get_span_context() == trace.get_current_span().get_span_context()
        ):
            # The no-op tracer hands back a span carrying the current span's context: making it
            # current would change nothing, so skip the context switch (rule 2). A span dropped
            # by a sampler has a context of its own and takes the full path below, so that the
            # spans under it see the "not sampled" decision.
            yield span
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            if _is_cancellation(exc):
                span.add_event(CANCELLED_EVENT)
            else:
                span.record_exception(exc, escaped=True)
                span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    @staticmethod
    def interception_attributes(
        *,
        request_path: str,
        interception_id: str,
        user_id: str,
        provider: str,
        model: str,
        streaming: bool,
        aws_bedrock: bool | None = None,
    ) -> dict[str, AttributeValue]:
        """The attribute set the reference attaches to every ``Intercept*`` span.

        ``aws_bedrock`` is set by the Anthropic provider only; elsewhere leave it ``None`` and
        the key is absent, as in the reference.
        """
        attributes: dict[str, AttributeValue] = {
            ATTR_REQUEST_PATH: request_path,
            ATTR_INTERCEPTION_ID: interception_id,
            ATTR_USER_ID: user_id,
            ATTR_PROVIDER: provider,
            ATTR_MODEL: model,
            ATTR_STREAMING: streaming,
        }
        if aws_bedrock is not None:
            attributes[ATTR_AWS_BEDROCK] = aws_bedrock
        return attributes


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` means "stopped from outside" rather than "failed" (rule 3)."""
    if isinstance(exc, (trio.Cancelled, GeneratorExit)):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split((trio.Cancelled, GeneratorExit))
        return rest is None
    return False


def _noop() -> None:
    """The shutdown function when nothing was installed."""


def configure_tracing(environ: Mapping[str, str] = os.environ) -> Callable[[], None]:
    """Install an OTLP/HTTP exporting provider if the standard variables ask for one.

    Spans are exported when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended) is set, unless
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. The service name is
    ``OTEL_SERVICE_NAME`` or ``bridge``. ``environ`` decides whether to export, where to, and
    the service name; the exporter's other settings (headers, timeout, compression,
    certificates) and the batch and sampler settings are read by the OpenTelemetry SDK from the
    process environment.

    Nothing is installed when no endpoint is set (spans stay no-ops, rule 2) or when the
    application already installed a provider (rule 4).

    Returns a function that flushes the pending spans and stops the exporter. It blocks, for
    at most about ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` (default 10 s) when the collector is
    unreachable: call it after ``trio.run`` returns or through ``trio.to_thread.run_sync``.
    Calling it twice is harmless.

    Raises ValueError for an exporter or protocol this build cannot honour, rather than
    silently not exporting.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return _noop
    exporters = {
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    }
    if "none" in exporters:
        return _noop
    endpoint = _traces_endpoint(environ)
    if endpoint is None:
        return _noop
    if exporters - {"otlp"}:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r} is not supported: bridge "
            "exports traces over OTLP only; set it to 'otlp' or 'none', or unset it"
        )
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol and protocol != _SUPPORTED_PROTOCOL:
            raise ValueError(
                f"{variable}={protocol!r} is not supported: bridge exports traces with "
                f"{_SUPPORTED_PROTOCOL!r} only; set it to {_SUPPORTED_PROTOCOL!r} or unset it "
                "(collectors accept it on port 4318)"
            )
        if protocol:
            break
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        logger.info(
            "a tracer provider is already installed; bridge's spans go to it "
            "and OTEL_EXPORTER_OTLP_* is left to its owner"
        )
        return _noop

    # Imported here: a gateway that does not export never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service_name = environ.get("OTEL_SERVICE_NAME", "").strip() or "bridge"
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}),
        # The caller owns shutdown (the returned function): an atexit hook would block the
        # interpreter's exit on an unreachable collector with the SDK's 30 s default.
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    logger.info("exporting traces to %s as service %r", endpoint, service_name)

    stopped = False

    def shutdown() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            provider.shutdown()

    return shutdown


def _traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL the standard variables name, or None if they name none."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if endpoint:
        return endpoint
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return base.rstrip("/") + _TRACES_PATH
    return None
