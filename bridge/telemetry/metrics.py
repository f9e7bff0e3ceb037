"""The gateway's Prometheus metrics, and their rendering for ``/metrics``.

:class:`Metrics` creates every metric of the gateway in its own
:class:`~prometheus_client.CollectorRegistry`; the core calls its small methods at
fixed points of an interception and never touches ``prometheus_client`` itself.
:func:`render` turns the metrics into the exposition served on ``/metrics``.

Rules:

1. Names, types, labels and the duration buckets are exactly coder/aibridge's
   (docs/behaviour.md §10.2, listed in ``tests/telemetry/test_metrics.py``), each under the optional
   ``prefix`` (``observability.metrics_prefix``, e.g. ``bridge_`` gives
   ``bridge_interceptions_total``). The metrics after those are ours.
2. Label values come from bounded sets, so the number of series stays bounded
   whatever clients send, and every value is valid in the exposition:

   * ``provider`` is a configured provider name; ``route`` and ``endpoint`` are route
     templates (a passthrough subtree is one value, e.g. ``/v1/models/*``); ``method``
     is a standard HTTP method or ``other``.
   * ``model`` is a model a provider has served (:meth:`Metrics.model_served`, called
     on an upstream success) or ``other``: clients may send any string, and a made-up
     model must not make a series.
   * Every open label (``model``, ``route``, ``initiator_id``, ``client``, ``type``,
     ``server``, ``name``...) takes at most :data:`MAX_LABEL_VALUES` distinct values,
     then ``other``; and one metric holds at most :data:`MAX_SERIES` series, then
     further combinations share their open labels' ``other`` series.
   * A value is cut to :data:`MAX_LABEL_LENGTH` characters, and characters that cannot
     be written (a lone surrogate from JSON ``"\ud800"``, control characters) become
     ``?``: one bad value would otherwise make every later scrape fail.

   The closed label sets (``status``, ``outcome``, ``reason``) are checked here, so a
   typo raises instead of creating a new series.
3. A metric never decreases except gauges; a negative token count is a bug in the
   caller and raises :class:`ValueError`.
4. Several hypercorn workers are several processes, each with its own in-memory
   values: a scrape would see only the worker that answered it. With
   ``PROMETHEUS_MULTIPROC_DIR`` set in the environment *before* ``prometheus_client`` is
   imported, every process writes its values to mmap files
   in that directory, and :func:`render` aggregates the files with
   :class:`~prometheus_client.multiprocess.MultiProcessCollector`. Gauges then need
   a rule to combine the processes' values: in-flight counts and queue depths add
   up (``livesum``), the breaker state takes the worst live worker (``livemax``).
5. In multiprocess mode one process holds at most one :class:`Metrics` per prefix:
   two objects with the same series would write the same mmap entry from two
   in-memory copies, and increments would be lost. Outside multiprocess mode any
   number can coexist (tests), each in its own registry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from bridge.recording.recorder import RecorderStats

__all__ = [
    "AUTH_FAILURE_REASONS",
    "BREAKER_STATES",
    "DURATION_BUCKETS",
    "GATEWAY_ADDED_BUCKETS",
    "HTTP_METHODS",
    "INTERCEPTION_STATUSES",
    "MAX_LABEL_LENGTH",
    "MAX_LABEL_VALUES",
    "MAX_SERIES",
    "MCP_CALL_BUCKETS",
    "MCP_CALL_OUTCOMES",
    "MULTIPROC_ENV",
    "OTHER",
    "RECORD_OUTCOMES",
    "TTFB_BUCKETS",
    "InterceptionMetrics",
    "Metrics",
    "prepare_multiprocess_dir",
    "render",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# The reference's buckets for interceptions_duration_seconds: whole LLM turns.
DURATION_BUCKETS: Final = (0.5, 2.0, 5.0, 15.0, 30.0, 60.0, 120.0)
# Time to the upstream's response headers: from a cached reply to a long queue.
TTFB_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Our own overhead: it should be a millisecond or less, so the buckets are fine there.
GATEWAY_ADDED_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# An MCP tool call: a local lookup up to a slow remote job.
MCP_CALL_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 30.0, 60.0)

# The reference has completed and failed; bridge reports every outcome of an interception.
INTERCEPTION_STATUSES: Final = ("completed", "failed", "client_disconnected", "rejected")
RECORD_OUTCOMES: Final = ("written", "spilled", "dropped")
MCP_CALL_OUTCOMES: Final = ("ok", "error", "timeout")
AUTH_FAILURE_REASONS: Final = ("missing", "invalid")
# The reference's gauge values: closed, half-open, open.
BREAKER_STATES: Final = (0.0, 0.5, 1.0)

# Bounds on label values (rule 2). 100 models, users or tools per label is more than a
# dashboard can show; beyond it the rest is "other". 2,000 series per metric keeps even the
# widest metric (interceptions_total) under about 0.5 MB of exposition, and the histograms
# (13 lines a series) under about 3 MB.
MAX_LABEL_VALUES: Final = 100
MAX_SERIES: Final = 2000
MAX_LABEL_LENGTH: Final = 128
OTHER: Final = "other"
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Labels whose values come from outside (clients, upstreams, MCP servers): capped, and
# collapsed to "other" once a metric is full. The others are configured or closed sets.
_OPEN_LABELS: Final = frozenset(
    {"model", "route", "endpoint", "initiator_id", "client", "type", "server", "name"}
)
# Characters the exposition cannot carry as they are.
_UNWRITABLE: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

# How a gauge combines the values of live processes (rule 4).
_GaugeMode = Literal["livesum", "livemax"]

# (pid, prefix) of every Metrics built in multiprocess mode in this process (rule 5).
# The pid is part of the key because a forked child starts with the parent's set.
_multiprocess_owners: set[tuple[int, str]] = set()


class InterceptionMetrics:
    """The calls an interception makes: what the core depends on.

    This base counts nothing: an instance of it is the null metrics of a core run
    without metrics (as :class:`~bridge.telemetry.tracing.Tracer` works without a
    provider), so that the core never checks whether it has any. :class:`Metrics`
    overrides every call.
    """

    __slots__ = ()

    def model_served(self, *, provider: str, model: str) -> None:
        pass

    def interception_started(self, *, provider: str, model: str, route: str) -> None:
        pass

    def interception_ended(
        self,
        *,
        provider: str,
        model: str,
        route: str,
        method: str,
        initiator_id: str,
        client: str,
        status: str,
        duration: float,
        added: float,
    ) -> None:
        pass

    def upstream_ttfb(self, *, provider: str, model: str, seconds: float) -> None:
        pass

    def prompt(self, *, provider: str, model: str, initiator_id: str, client: str) -> None:
        pass

    def tokens(
        self,
        *,
        provider: str,
        model: str,
        initiator_id: str,
        client: str,
        counts: Mapping[str, int],
    ) -> None:
        pass

    def injected_tool_invocation(
        self, *, provider: str, model: str, server: str, name: str
    ) -> None:
        pass

    def non_injected_tool_selection(self, *, provider: str, model: str, name: str) -> None:
        pass

    def mcp_tool_call(self, *, server: str, name: str, outcome: str, seconds: float) -> None:
        pass

    def breaker_rejected(self, *, provider: str, endpoint: str, model: str) -> None:
        pass

    def provider_key_refused(self, *, provider: str, status: int) -> None:
        pass


class Metrics(InterceptionMetrics):
    """Every metric of the gateway, in its own CollectorRegistry, under an optional prefix.

    Each metric is an attribute named like the metric without the prefix; the
    methods below are the calls the core makes. Label values are passed by keyword
    so a call site cannot swap two of them.
    """

    def __init__(self, prefix: str = "", *, registry: CollectorRegistry | None = None) -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry() if registry is None else registry
        self._children: dict[tuple[object, ...], Any] = {}
        # Rule 2's state: the values each open label took, the series of each metric,
        # the models each provider served, and the model label each in-flight
        # interception went up on (keyed by its raw labels; at most one per request).
        self._label_values: dict[str, set[str]] = {}
        self._series: dict[MetricWrapperBase, int] = {}
        self._served: dict[str, set[str]] = {}
        self._inflight: dict[tuple[str, str, str], list[str]] = {}
        self.multiprocess = _claim_multiprocess(prefix)

        def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(prefix + name, doc, labels, registry=self.registry)

        def gauge(name: str, doc: str, labels: Sequence[str], mode: _GaugeMode) -> Gauge:
            return Gauge(prefix + name, doc, labels, registry=self.registry, multiprocess_mode=mode)

        def histogram(
            name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(prefix + name, doc, labels, registry=self.registry, buckets=buckets)

        # The reference's metrics (rule 1).
        self.interceptions_total = counter(
            "interceptions_total",
            "Interceptions processed, by outcome.",
            ("provider", "model", "status", "route", "method", "initiator_id", "client"),
        )
        self.interceptions_inflight = gauge(
            "interceptions_inflight",
            "Interceptions being processed now.",
            ("provider", "model", "route"),
            "livesum",
        )
        self.interceptions_duration_seconds = histogram(
            "interceptions_duration_seconds",
            "Time from the start of an interception to its end.",
            ("provider", "model"),
            DURATION_BUCKETS,
        )
        self.passthrough_total = counter(
            "passthrough_total",
            "Requests relayed to the upstream without interception.",
            ("provider", "route", "method"),
        )
        self.prompts_total = counter(
            "prompts_total",
            "Non-empty user prompts seen.",
            ("provider", "model", "initiator_id", "client"),
        )
        self.tokens_total = counter(
            "tokens_total",
            "Tokens reported by the upstream, by type.",
            ("provider", "model", "type", "initiator_id", "client"),
        )
        self.injected_tool_invocations_total = counter(
            "injected_tool_invocations_total",
            "Calls of injected MCP tools made by the gateway.",
            ("provider", "model", "server", "name"),
        )
        self.non_injected_tool_selections_total = counter(
            "non_injected_tool_selections_total",
            "Client-defined tools the model chose to call.",
            ("provider", "model", "name"),
        )
        # livemax, not mostrecent: every worker has its own breaker, and a worker whose
        # breaker is open rejects its share of the traffic. The worst live worker is what
        # an alert needs; the most recent transition could be another worker closing.
        self.circuit_breaker_state = gauge(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 0.5 half-open, 1 open.",
            ("provider", "endpoint", "model"),
            "livemax",
        )
        self.circuit_breaker_trips_total = counter(
            "circuit_breaker_trips_total",
            "Transitions of a circuit breaker to open.",
            ("provider", "endpoint", "model"),
        )
        self.circuit_breaker_rejects_total = counter(
            "circuit_breaker_rejects_total",
            "Requests rejected by an open or saturated half-open circuit breaker.",
            ("provider", "endpoint", "model"),
        )
        # Ours.
        self.upstream_ttfb_seconds = histogram(
            "upstream_ttfb_seconds",
            "Time from sending a request upstream to the upstream's response headers.",
            ("provider", "model"),
            TTFB_BUCKETS,
        )
        self.gateway_added_seconds = histogram(
            "gateway_added_seconds",
            "Interception time minus the time spent waiting for the upstream and tools.",
            ("provider", "model"),
            GATEWAY_ADDED_BUCKETS,
        )
        self.recorder_queue_depth = gauge(
            "recorder_queue_depth",
            "Records waiting to be written by the recorder.",
            (),
            "livesum",
        )
        self.recorder_journal_backlog_records = gauge(
            "recorder_journal_backlog_records",
            "Records in the recording journal, waiting to be replayed into the database.",
            (),
            "livesum",
        )
        self.recorder_journal_backlog_bytes = gauge(
            "recorder_journal_backlog_bytes",
            "Bytes of the recording journal waiting to be replayed into the database.",
            (),
            "livesum",
        )
        self.recorder_records_total = counter(
            "recorder_records_total",
            "Records handled by the recorder: written, spilled to disk, or dropped.",
            ("outcome",),
        )
        self.mcp_tool_call_seconds = histogram(
            "mcp_tool_call_seconds",
            "Duration of calls to MCP tools, by outcome.",
            ("server", "name", "outcome"),
            MCP_CALL_BUCKETS,
        )
        self.provider_key_refusals_total = counter(
            "provider_key_refusals_total",
            "Upstream 401/403 answers to the gateway's own (centralized) provider keys.",
            ("provider", "status"),
        )
        self.auth_failures_total = counter(
            "auth_failures_total",
            "Requests refused because the gateway key was missing or invalid.",
            ("reason",),
        )

        # The recorder's counts already reported by recorder_observed().
        self._recorder_seen: dict[str, int] = {}

    def _child(self, metric: MetricWrapperBase, /, **labels: str) -> Any:
        """``metric.labels(**labels)`` with the values bounded (rule 2), remembered:
        prometheus-client validates and locks on every ``labels()`` call (3.4 us
        measured), and an interception makes about ten. Remembering costs nothing new:
        the metric keeps every child it made anyway.

        The values as given are tried first: a remembered child's values are bounded
        already, so values that find one need no bounding (the common case, one lookup).
        """
        child = self._children.get((metric, *labels.values()))
        if child is not None:
            return child
        labels = {name: self._bounded(name, value) for name, value in labels.items()}
        key = (metric, *labels.values())
        child = self._children.get(key)
        if child is None:
            if self._series.get(metric, 0) >= MAX_SERIES:
                labels = {n: OTHER if n in _OPEN_LABELS else v for n, v in labels.items()}
                key = (metric, *labels.values())
                child = self._children.get(key)
            if child is None:
                child = self._children[key] = metric.labels(**labels)
                self._series[metric] = self._series.get(metric, 0) + 1
        return child

    def _bounded(self, label: str, value: str) -> str:
        """``value`` as label ``label`` shows it: writable, short, one of a bounded set."""
        seen = self._label_values.get(label)
        if seen is not None and value in seen:  # the common case: two lookups
            return value
        if seen is None:
            seen = self._label_values[label] = set()
        if label == "method" and value not in HTTP_METHODS:
            return OTHER
        value = _UNWRITABLE.sub("?", value[:MAX_LABEL_LENGTH])
        if value in seen:
            return value
        if label in _OPEN_LABELS and len(seen) >= MAX_LABEL_VALUES:
            return OTHER
        seen.add(value)  # closed and configured labels are bounded where they come from
        return value

    def _model(self, provider: str, model: str) -> str:
        """The ``model`` label: the model if ``provider`` has served it, else ``other``."""
        return model if model in self._served.get(provider, ()) else OTHER

    def model_served(self, *, provider: str, model: str) -> None:
        """``provider`` answered a request for ``model`` with a success: from now on the
        model is counted under its own name (up to :data:`MAX_LABEL_VALUES` per provider)."""
        served = self._served.setdefault(provider, set())
        if len(served) < MAX_LABEL_VALUES:
            served.add(model)

    def __repr__(self) -> str:
        return f"<Metrics prefix={self.prefix!r} multiprocess={self.multiprocess}>"

    # -- interceptions ----------------------------------------------------------------

    def interception_started(self, *, provider: str, model: str, route: str) -> None:
        """An interception began: it is in flight until :meth:`interception_ended`."""
        label = self._model(provider, model)
        self._inflight.setdefault((provider, model, route), []).append(label)
        self._child(self.interceptions_inflight, provider=provider, model=label, route=route).inc()

    def _inflight_model(self, provider: str, model: str, route: str) -> str:
        """The model label an interception went up on, or the current one if unknown."""
        key = (provider, model, route)
        labels = self._inflight.get(key)
        if not labels:
            return self._model(provider, model)
        label = labels.pop()
        if not labels:
            del self._inflight[key]
        return label

    def interception_ended(
        self,
        *,
        provider: str,
        model: str,
        route: str,
        method: str,
        initiator_id: str,
        client: str,
        status: str,
        duration: float,
        added: float,
    ) -> None:
        """An interception ended, after its processing (the reference counts it then).

        ``duration`` is its whole time in seconds; ``added`` the part that was neither
        waiting for the upstream nor for tools, i.e. the gateway's own overhead.
        """
        _check_choice("status", status, INTERCEPTION_STATUSES)
        entered = self._inflight_model(provider, model, route)
        self._child(
            self.interceptions_inflight, provider=provider, model=entered, route=route
        ).dec()
        model = self._model(provider, model)
        self._child(
            self.interceptions_total,
            provider=provider,
            model=model,
            status=status,
            route=route,
            method=method,
            initiator_id=initiator_id,
            client=client,
        ).inc()
        self._child(self.interceptions_duration_seconds, provider=provider, model=model).observe(
            duration
        )
        self._child(self.gateway_added_seconds, provider=provider, model=model).observe(added)

    def upstream_ttfb(self, *, provider: str, model: str, seconds: float) -> None:
        """The upstream answered with its response headers ``seconds`` after the request."""
        model = self._model(provider, model)
        self._child(self.upstream_ttfb_seconds, provider=provider, model=model).observe(seconds)

    def passthrough(self, *, provider: str, route: str, method: str) -> None:
        """A request was relayed as is; ``route`` is its route template (rule 2)."""
        self._child(self.passthrough_total, provider=provider, route=route, method=method).inc()

    # -- usage ------------------------------------------------------------------------

    def prompt(self, *, provider: str, model: str, initiator_id: str, client: str) -> None:
        """A non-empty user prompt was recorded (empty ones are not counted)."""
        model = self._model(provider, model)
        self._child(
            self.prompts_total,
            provider=provider,
            model=model,
            initiator_id=initiator_id,
            client=client,
        ).inc()

    def tokens(
        self,
        *,
        provider: str,
        model: str,
        initiator_id: str,
        client: str,
        counts: Mapping[str, int],
    ) -> None:
        """Add one usage report: ``counts`` maps a token type to its count.

        The types are the reference's (``input``, ``output``, ``cache_read_input_tokens``,
        ``cache_write_input_tokens``) plus each dialect's extra keys. Zero counts create
        no series, so a provider that never reports a type never shows it.
        """
        for kind, count in counts.items():
            if count < 0:
                raise ValueError(
                    f"token count {kind}={count} is negative: counts must be >= 0; "
                    "clamp a computed count (e.g. input minus cached) before reporting it"
                )
        model = self._model(provider, model)
        for kind, count in counts.items():
            if count:
                self._child(
                    self.tokens_total,
                    provider=provider,
                    model=model,
                    type=kind,
                    initiator_id=initiator_id,
                    client=client,
                ).inc(count)

    def injected_tool_invocation(
        self, *, provider: str, model: str, server: str, name: str
    ) -> None:
        """The gateway invoked an injected tool (``server``: its URL, ``name``: its own name)."""
        model = self._model(provider, model)
        self._child(
            self.injected_tool_invocations_total,
            provider=provider,
            model=model,
            server=server,
            name=name,
        ).inc()

    def non_injected_tool_selection(self, *, provider: str, model: str, name: str) -> None:
        """The model chose a client-defined tool (the client will run it)."""
        model = self._model(provider, model)
        self._child(
            self.non_injected_tool_selections_total, provider=provider, model=model, name=name
        ).inc()

    def mcp_tool_call(self, *, server: str, name: str, outcome: str, seconds: float) -> None:
        """An MCP tool call finished with ``outcome`` (ok, error or timeout) after ``seconds``."""
        _check_choice("outcome", outcome, MCP_CALL_OUTCOMES)
        self._child(self.mcp_tool_call_seconds, server=server, name=name, outcome=outcome).observe(
            seconds
        )

    # -- circuit breakers -------------------------------------------------------------

    def breaker_changed(self, *, provider: str, endpoint: str, model: str, state: float) -> None:
        """A breaker moved to ``state`` (its gauge value); a move to open (1) is a trip.

        Call it from the breaker's ``on_change`` with ``change.to_state.gauge``.
        """
        if state not in BREAKER_STATES:
            raise ValueError(
                f"circuit breaker state {state!r} is not a gauge value: use one of "
                f"{BREAKER_STATES} (closed, half-open, open), e.g. State.gauge"
            )
        labels = {"provider": provider, "endpoint": endpoint, "model": self._model(provider, model)}
        self._child(self.circuit_breaker_state, **labels).set(state)
        if state == 1.0:
            self._child(self.circuit_breaker_trips_total, **labels).inc()

    def breaker_rejected(self, *, provider: str, endpoint: str, model: str) -> None:
        """A breaker refused a request (open, or half-open with no allowance left)."""
        model = self._model(provider, model)
        self._child(
            self.circuit_breaker_rejects_total, provider=provider, endpoint=endpoint, model=model
        ).inc()

    def provider_key_refused(self, *, provider: str, status: int) -> None:
        """The upstream refused one of the provider's centralized keys (401 or 403)."""
        self._child(self.provider_key_refusals_total, provider=provider, status=str(status)).inc()

    # -- recorder and auth ------------------------------------------------------------

    def recorder_queued(self, depth: int) -> None:
        """The recorder's queue now holds ``depth`` records."""
        self.recorder_queue_depth.set(depth)

    def recorder_observed(self, stats: RecorderStats) -> None:
        """Bring the recorder's gauges and counters up to date with its ``stats`` (at
        each scrape): queue depth, journal backlog, records written and spilled since the
        last call."""
        self.recorder_queue_depth.set(stats.queued)
        self.recorder_journal_backlog_records.set(stats.journal_records)
        self.recorder_journal_backlog_bytes.set(stats.journal_bytes)
        for outcome, total in (("written", stats.written), ("spilled", stats.spilled)):
            seen = self._recorder_seen.get(outcome, 0)
            if total > seen:
                self.recorder_record(outcome, total - seen)
                self._recorder_seen[outcome] = total

    def recorder_record(self, outcome: str, count: int = 1) -> None:
        """``count`` records were written, spilled to disk, or dropped."""
        _check_choice("outcome", outcome, RECORD_OUTCOMES)
        self._child(self.recorder_records_total, outcome=outcome).inc(count)

    def auth_failure(self, reason: str) -> None:
        """A request was refused because its gateway key was missing or invalid."""
        _check_choice("reason", reason, AUTH_FAILURE_REASONS)
        self._child(self.auth_failures_total, reason=reason).inc()


def render(metrics: Metrics) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the body aggregates the
    files of every process, this one included, over a fresh registry: serving
    ``metrics.registry`` there would show only the worker that answered the scrape.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


def prepare_multiprocess_dir(path: Path) -> None:
    """Create ``path`` and delete the metric files a previous run left in it.

    Call it once, in the parent process, before the workers start: stale files would
    add the last run's counts to this run's (prometheus-client sums every file it finds).
    """
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def _claim_multiprocess(prefix: str) -> bool:
    """Whether this process is in multiprocess mode; enforce rule 5 if it is."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return False
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_ENV}={directory!r} was set after prometheus_client was imported, "
            "so this process keeps its metrics in memory where a scrape cannot see them; "
            "set it in the environment before the process starts"
        )
    if not Path(directory).is_dir():
        raise ValueError(
            f"{MULTIPROC_ENV}={directory!r} is not a directory: multiprocess metrics are "
            "written there; create it (prepare_multiprocess_dir) before starting the workers"
        )
    owner = (os.getpid(), prefix)
    if owner in _multiprocess_owners:
        raise RuntimeError(
            f"a Metrics with prefix {prefix!r} already exists in this process: in "
            "multiprocess mode two of them would overwrite each other's values in the "
            "shared files; build one per process and pass it around"
        )
    _multiprocess_owners.add(owner)
    return True


def _check_choice(label: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(
            f"metric label {label}={value!r} is not one of {list(allowed)}: "
            "the label's values are a closed set, to keep the series bounded"
        )
