"""What an interception tells telemetry: metrics, spans and its ended log line.

The interception's code notifies an :class:`Observer` at fixed points (it started, the
upstream answered, a tool was called, a turn was recorded, it ended) and opens spans
through it; which metrics and attributes each point means is decided here, so that the
loop and the attempt read as what they do. One observer serves every interception of
the engine: it holds only the metrics and the tracer, and takes the interception as an
argument.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from bridge.recording.records import PromptUsage, Record, TokenUsage, ToolUsage
from bridge.services.mcp import Tool, ToolFailure, ToolResult
from bridge.telemetry.logs import interception_log
from bridge.telemetry.metrics import InterceptionMetrics
from bridge.telemetry.tracing import SPAN_TOOL_CALL, Tracer

if TYPE_CHECKING:
    from bridge.core.state import Interception

__all__ = ["Observer"]

logger = logging.getLogger("bridge.interception")


class Observer:
    """The metrics and spans of interceptions; by default none (no metrics, no provider)."""

    __slots__ = ("metrics", "tracer")

    def __init__(
        self, metrics: InterceptionMetrics | None = None, tracer: Tracer | None = None
    ) -> None:
        self.metrics = metrics if metrics is not None else InterceptionMetrics()
        self.tracer = tracer if tracer is not None else Tracer()

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        """Open span ``name`` for the body of the ``with`` block."""
        return self.tracer.span(name, attributes)

    def attributes(self, ix: Interception) -> dict[str, AttributeValue]:
        """The attributes of the interception's ``Intercept*`` spans."""
        return self.tracer.interception_attributes(
            request_path=ix.request.path,
            interception_id=ix.id,
            user_id=ix.actor.id,
            provider=ix.route.provider.name,
            model=ix.parsed.model,
            streaming=ix.parsed.stream,
        )

    def started(self, ix: Interception) -> None:
        """The interception's started record is queued."""
        self.metrics.interception_started(
            provider=ix.route.provider.name, model=ix.parsed.model, route=ix.route.suffix
        )

    def ended(self, ix: Interception, duration: float) -> None:
        """The interception ended after ``duration`` seconds (its progress is final)."""
        progress = ix.progress
        self.metrics.interception_ended(
            provider=ix.route.provider.name,
            model=ix.parsed.model,
            route=ix.route.suffix,
            method=ix.request.method,
            initiator_id=ix.actor.id,
            client=progress.client,
            status=progress.outcome.value,
            duration=duration,
            added=max(0.0, duration - progress.waited),
        )
        totals = [t.usage for t in progress.turns if t.usage is not None]
        logger.info(
            "interception ended",
            extra=interception_log(
                interception_id=ix.id,
                user=ix.actor.id,
                provider=ix.route.provider.name,
                model=ix.parsed.model,
                outcome=progress.outcome.value,
                duration_ms=round(duration * 1000, 3),
                input_tokens=sum(u.input for u in totals),
                output_tokens=sum(u.output for u in totals),
                cache_read=sum(u.cache_read for u in totals),
                cache_write=sum(u.cache_write for u in totals),
                client=progress.client,
                streaming=ix.parsed.stream,
                error=progress.error,
            ),
        )

    def upstream_answered(self, ix: Interception, status: int, waited: float, keyed: bool) -> None:
        """The upstream sent its response head after ``waited`` seconds; ``keyed``: with
        one of the provider's pooled keys."""
        provider = ix.route.provider.name
        if 200 <= status < 300:  # the provider knows the model: label it by name
            self.metrics.model_served(provider=provider, model=ix.parsed.model)
        self.metrics.upstream_ttfb(provider=provider, model=ix.parsed.model, seconds=waited)
        if keyed and status in (401, 403):
            self.metrics.provider_key_refused(provider=provider, status=status)

    def breaker_rejected(self, ix: Interception) -> None:
        """The circuit breaker refused the upstream call."""
        self.metrics.breaker_rejected(
            provider=ix.route.provider.name, endpoint=ix.route.suffix, model=ix.parsed.model
        )

    def tool_span(self, tool: Tool, arguments: Any) -> AbstractContextManager[Span]:
        """The span of one call of an injected tool."""
        return self.tracer.span(
            SPAN_TOOL_CALL,
            {
                "mcp_tool_name": tool.name,
                "mcp_server_name": tool.server,
                "mcp_server_url": tool.server_url,
                "mcp_input": json.dumps(arguments)[:100],
            },
        )

    def tool_called(self, ix: Interception, tool: Tool, result: ToolResult, seconds: float) -> None:
        """An injected tool was called and answered (or failed) in ``seconds``."""
        kind = "ok" if result.error is None and not result.is_error else "error"
        if result.failure is ToolFailure.TIMEOUT:
            kind = "timeout"
        self.metrics.mcp_tool_call(
            server=tool.server, name=tool.name, outcome=kind, seconds=seconds
        )
        self.metrics.injected_tool_invocation(
            provider=ix.route.provider.name,
            model=ix.parsed.model,
            server=tool.server,
            name=tool.name,
        )

    def turn_recorded(self, ix: Interception, records: Sequence[Record]) -> None:
        """The records of one upstream response were queued."""
        metrics = self.metrics
        labels = {
            "provider": ix.route.provider.name,
            "model": ix.parsed.model,
            "initiator_id": ix.actor.id,
            "client": ix.progress.client,
        }
        for record in records:
            if isinstance(record, PromptUsage):
                metrics.prompt(**labels)
            elif isinstance(record, TokenUsage):
                counts = {
                    "input": record.input,
                    "output": record.output,
                    "cache_read_input_tokens": record.cache_read,
                    "cache_write_input_tokens": record.cache_write,
                    "reasoning": record.reasoning,
                    "web_search_requests": record.web_search_requests,
                    **record.extra,
                }
                metrics.tokens(**labels, counts={k: max(0, v) for k, v in counts.items()})
            elif isinstance(record, ToolUsage):
                metrics.non_injected_tool_selection(
                    provider=ix.route.provider.name, model=ix.parsed.model, name=record.tool
                )
