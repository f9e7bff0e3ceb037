"""Tests of bridge.telemetry.metrics: the reference's names, types, labels and buckets; what each
call changes; the rendered exposition; and totals across worker processes.

The multiprocess tests run real worker processes, because prometheus_client picks
its multiprocess value class once, when it is imported, from the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bridge.telemetry import metrics as metrics_module
from bridge.telemetry.metrics import (
    DURATION_BUCKETS,
    MAX_LABEL_LENGTH,
    MAX_LABEL_VALUES,
    MAX_SERIES,
    MULTIPROC_ENV,
    Metrics,
    prepare_multiprocess_dir,
    render,
)

# name -> (type, labels): the stable names (docs/behaviour.md §10.2), then ours.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "interceptions_total": (
        "counter",
        ("provider", "model", "status", "route", "method", "initiator_id", "client"),
    ),
    "interceptions_inflight": ("gauge", ("provider", "model", "route")),
    "interceptions_duration_seconds": ("histogram", ("provider", "model")),
    "passthrough_total": ("counter", ("provider", "route", "method")),
    "prompts_total": ("counter", ("provider", "model", "initiator_id", "client")),
    "tokens_total": ("counter", ("provider", "model", "type", "initiator_id", "client")),
    "injected_tool_invocations_total": ("counter", ("provider", "model", "server", "name")),
    "non_injected_tool_selections_total": ("counter", ("provider", "model", "name")),
    "circuit_breaker_state": ("gauge", ("provider", "endpoint", "model")),
    "circuit_breaker_trips_total": ("counter", ("provider", "endpoint", "model")),
    "circuit_breaker_rejects_total": ("counter", ("provider", "endpoint", "model")),
    "upstream_ttfb_seconds": ("histogram", ("provider", "model")),
    "gateway_added_seconds": ("histogram", ("provider", "model")),
    "recorder_queue_depth": ("gauge", ()),
    "recorder_journal_backlog_records": ("gauge", ()),
    "recorder_journal_backlog_bytes": ("gauge", ()),
    "recorder_records_total": ("counter", ("outcome",)),
    "mcp_tool_call_seconds": ("histogram", ("server", "name", "outcome")),
    "auth_failures_total": ("counter", ("reason",)),
    "provider_key_refusals_total": ("counter", ("provider", "status")),
}

ENDED = {
    "provider": "anthropic",
    "model": "claude-x",
    "route": "/v1/messages",
    "method": "POST",
    "initiator_id": "user-1",
    "client": "Claude Code",
}
USER = {"provider": "anthropic", "model": "claude-x", "initiator_id": "user-1", "client": "Mux"}
BREAKER = {"provider": "openai", "endpoint": "/chat/completions", "model": "gpt-x"}


def new_metrics(prefix: str = "") -> Metrics:
    """A :class:`Metrics` whose providers have served the models these tests name: a model
    no provider has served is counted as ``other``."""
    metrics = Metrics(prefix)
    metrics.model_served(provider="anthropic", model="claude-x")
    metrics.model_served(provider="openai", model="gpt-x")
    return metrics


def touch_every_metric(metrics: Metrics) -> None:
    """Create one series of each metric through the labels the reference names."""
    for name, (kind, labels) in EXPECTED.items():
        metric = getattr(metrics, name)
        child = metric.labels(**dict.fromkeys(labels, "x")) if labels else metric
        if kind == "counter":
            child.inc()
        elif kind == "gauge":
            child.set(1)
        else:
            child.observe(0.1)


def families_by_sample(text: str) -> dict[str, tuple[str, list[Sample]]]:
    """Parse an exposition into sample name -> (family type, samples of that name)."""
    found: dict[str, tuple[str, list[Sample]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, (family.type, []))[1].append(sample)
    return found


def main_sample(name: str, kind: str) -> str:
    """The sample that carries a metric's labels: counters and gauges by name, histograms
    by their count."""
    return f"{name}_count" if kind == "histogram" else name


@pytest.mark.parametrize("prefix", ["", "bridge_"])
def test_every_metric_has_the_reference_name_type_and_labels(prefix: str) -> None:
    metrics = Metrics(prefix)
    touch_every_metric(metrics)
    body, _ = render(metrics)
    found = families_by_sample(body.decode())
    for name, (kind, labels) in EXPECTED.items():
        sample_name = prefix + main_sample(name, kind)
        assert sample_name in found, f"{sample_name} missing"
        family_type, samples = found[sample_name]
        assert family_type == kind, name
        assert [set(s.labels) for s in samples] == [set(labels)], name


def test_no_metric_beyond_the_expected_ones() -> None:
    metrics = Metrics("bridge_")
    touch_every_metric(metrics)
    names = {family.name for family in metrics.registry.collect()}
    # prometheus_client names a counter's family without its "_total".
    expected = {"bridge_" + name.removesuffix("_total") for name in EXPECTED}
    assert names == expected


def test_labels_other_than_the_reference_ones_are_refused() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="label"):
        metrics.interceptions_total.labels(provider="p", model="m", status="completed")


def test_duration_histogram_has_the_reference_buckets() -> None:
    metrics = Metrics()
    metrics.interceptions_duration_seconds.labels(provider="p", model="m").observe(3)
    found = families_by_sample(generate(metrics))
    bounds = [s.labels["le"] for s in found["interceptions_duration_seconds_bucket"][1]]
    assert bounds == ["0.5", "2.0", "5.0", "15.0", "30.0", "60.0", "120.0", "+Inf"]
    assert DURATION_BUCKETS == (0.5, 2, 5, 15, 30, 60, 120)


def test_gateway_added_histogram_resolves_sub_millisecond_overhead() -> None:
    metrics = Metrics()
    metrics.gateway_added_seconds.labels(provider="p", model="m").observe(0.0003)
    found = families_by_sample(generate(metrics))
    buckets = found["gateway_added_seconds_bucket"][1]
    assert buckets[0].labels["le"] == "0.0005"
    assert buckets[0].value == 1
    assert buckets[-2].labels["le"] == "1.0"


def generate(metrics: Metrics) -> str:
    body, _ = render(metrics)
    return body.decode()


def test_an_interception_is_in_flight_until_it_ends_then_counted() -> None:
    metrics = new_metrics()
    value = metrics.registry.get_sample_value
    inflight = {k: ENDED[k] for k in ("provider", "model", "route")}
    by_model = {k: ENDED[k] for k in ("provider", "model")}

    metrics.interception_started(**{k: ENDED[k] for k in ("provider", "model", "route")})
    assert value("interceptions_inflight", inflight) == 1
    assert value("interceptions_total", {**ENDED, "status": "completed"}) is None

    metrics.interception_ended(**ENDED, status="completed", duration=3.0, added=0.002)
    assert value("interceptions_inflight", inflight) == 0
    assert value("interceptions_total", {**ENDED, "status": "completed"}) == 1
    assert value("interceptions_duration_seconds_count", by_model) == 1
    assert value("interceptions_duration_seconds_sum", by_model) == 3.0
    assert value("interceptions_duration_seconds_bucket", {**by_model, "le": "2.0"}) == 0
    assert value("interceptions_duration_seconds_bucket", {**by_model, "le": "5.0"}) == 1
    assert value("gateway_added_seconds_sum", by_model) == 0.002


def test_failed_interceptions_are_counted_apart_and_unknown_statuses_refused() -> None:
    metrics = new_metrics()
    metrics.interception_ended(**ENDED, status="failed", duration=1, added=0)
    assert metrics.registry.get_sample_value("interceptions_total", {**ENDED, "status": "failed"})
    assert (
        metrics.registry.get_sample_value("interceptions_total", {**ENDED, "status": "completed"})
        is None
    )
    with pytest.raises(
        ValueError,
        match=(
            r"status='ok' is not one of "
            r"\['completed', 'failed', 'client_disconnected', 'rejected'\]"
        ),
    ):
        metrics.interception_ended(**ENDED, status="ok", duration=1, added=0)


def test_tokens_add_up_per_type_and_zero_counts_create_no_series() -> None:
    metrics = new_metrics()
    counts = {"input": 10, "output": 5, "cache_read_input_tokens": 0, "web_search_requests": 1}
    metrics.tokens(**USER, counts=counts)
    metrics.tokens(**USER, counts={"input": 0, "output": 61})
    value = metrics.registry.get_sample_value
    assert value("tokens_total", {**USER, "type": "input"}) == 10
    assert value("tokens_total", {**USER, "type": "output"}) == 66
    assert value("tokens_total", {**USER, "type": "web_search_requests"}) == 1
    assert value("tokens_total", {**USER, "type": "cache_read_input_tokens"}) is None


def test_a_negative_token_count_is_refused_before_anything_is_counted() -> None:
    metrics = new_metrics()
    with pytest.raises(ValueError, match="input=-3 is negative"):
        metrics.tokens(**USER, counts={"output": 4, "input": -3})
    assert metrics.registry.get_sample_value("tokens_total", {**USER, "type": "output"}) is None


def test_a_breaker_opening_sets_the_gauge_and_counts_a_trip() -> None:
    metrics = new_metrics()
    value = metrics.registry.get_sample_value
    metrics.breaker_changed(**BREAKER, state=1.0)
    assert value("circuit_breaker_state", BREAKER) == 1.0
    metrics.breaker_changed(**BREAKER, state=0.5)
    assert value("circuit_breaker_state", BREAKER) == 0.5
    metrics.breaker_changed(**BREAKER, state=1.0)
    metrics.breaker_changed(**BREAKER, state=0.0)
    assert value("circuit_breaker_state", BREAKER) == 0.0
    assert value("circuit_breaker_trips_total", BREAKER) == 2
    metrics.breaker_rejected(**BREAKER)
    assert value("circuit_breaker_rejects_total", BREAKER) == 1
    with pytest.raises(ValueError, match="state 2 is not a gauge value"):
        metrics.breaker_changed(**BREAKER, state=2)


CALLS: list[tuple[Callable[[Metrics], None], str, dict[str, str], float]] = [
    (
        lambda m: m.passthrough(provider="openai", route="/models", method="GET"),
        "passthrough_total",
        {"provider": "openai", "route": "/models", "method": "GET"},
        1,
    ),
    (lambda m: m.prompt(**USER), "prompts_total", USER, 1),
    (
        lambda m: m.injected_tool_invocation(
            provider="anthropic", model="claude-x", server="http://mcp/", name="search"
        ),
        "injected_tool_invocations_total",
        {"provider": "anthropic", "model": "claude-x", "server": "http://mcp/", "name": "search"},
        1,
    ),
    (
        lambda m: m.non_injected_tool_selection(provider="openai", model="gpt-x", name="bash"),
        "non_injected_tool_selections_total",
        {"provider": "openai", "model": "gpt-x", "name": "bash"},
        1,
    ),
    (
        lambda m: m.upstream_ttfb(provider="openai", model="gpt-x", seconds=0.4),
        "upstream_ttfb_seconds_sum",
        {"provider": "openai", "model": "gpt-x"},
        0.4,
    ),
    (
        lambda m: m.mcp_tool_call(server="docs", name="search", outcome="timeout", seconds=30),
        "mcp_tool_call_seconds_sum",
        {"server": "docs", "name": "search", "outcome": "timeout"},
        30,
    ),
    (lambda m: m.recorder_queued(7), "recorder_queue_depth", {}, 7),
    (
        lambda m: m.recorder_record("spilled", 3),
        "recorder_records_total",
        {"outcome": "spilled"},
        3,
    ),
    (lambda m: m.auth_failure("invalid"), "auth_failures_total", {"reason": "invalid"}, 1),
    (
        lambda m: m.provider_key_refused(provider="anthropic", status=401),
        "provider_key_refusals_total",
        {"provider": "anthropic", "status": "401"},
        1,
    ),
]


@pytest.mark.parametrize(("call", "sample", "labels", "expected"), CALLS)
def test_each_call_changes_its_own_sample(
    call: Callable[[Metrics], None], sample: str, labels: dict[str, str], expected: float
) -> None:
    metrics = new_metrics()
    call(metrics)
    assert metrics.registry.get_sample_value(sample, labels) == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.recorder_record("lost"), "outcome='lost'"),
        (lambda m: m.auth_failure("expired"), "reason='expired'"),
        (
            lambda m: m.mcp_tool_call(server="s", name="n", outcome="cancelled", seconds=1),
            "outcome='cancelled'",
        ),
    ],
)
def test_closed_label_sets_refuse_other_values(
    call: Callable[[Metrics], None], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call(Metrics())


def test_two_metrics_objects_in_one_process_do_not_share_values() -> None:
    first, second = Metrics(), Metrics()
    first.auth_failure("missing")
    assert first.registry.get_sample_value("auth_failures_total", {"reason": "missing"}) == 1
    assert second.registry.get_sample_value("auth_failures_total", {"reason": "missing"}) is None


def test_a_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    Counter("host_metric_total", "A metric of the embedding host.", registry=registry).inc()
    metrics = Metrics("bridge_", registry=registry)
    metrics.auth_failure("missing")
    text = generate(metrics)
    assert "host_metric_total 1.0" in text
    assert 'bridge_auth_failures_total{reason="missing"} 1.0' in text


def test_render_gives_a_parseable_exposition_and_its_content_type() -> None:
    metrics = new_metrics("bridge_")
    metrics.interception_ended(**ENDED, status="completed", duration=1, added=0.001)
    body, content_type = render(metrics)
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    (sample,) = families_by_sample(body.decode())["bridge_interceptions_total"][1]
    assert sample.labels == {**ENDED, "status": "completed"}
    assert sample.value == 1


# -- multiprocess mode --------------------------------------------------------------------

# A worker loads bridge/telemetry/metrics.py by path: importing the bridge package would cost
# more than a second per process. It prints its own registry's view of the count.
WORKER = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("bridge_metrics", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n, breaker = int(sys.argv[2]), float(sys.argv[3])
    metrics = module.Metrics("bridge_")
    metrics.model_served(provider="anthropic", model="claude-x")
    metrics.model_served(provider="openai", model="gpt-x")
    ended = dict(provider="anthropic", model="claude-x", route="/v1/messages", method="POST",
                 initiator_id="user-1", client="Mux")
    short = dict(provider="anthropic", model="claude-x", route="/v1/messages")
    for _ in range(n):
        metrics.interception_started(**short)
        metrics.interception_ended(**ended, status="completed", duration=1.0, added=0.001)
    metrics.interception_started(**short)  # still in flight when the worker stops
    metrics.breaker_changed(provider="openai", endpoint="/chat/completions", model="gpt-x",
                            state=breaker)
    metrics.recorder_queued(3)
    try:
        module.Metrics("bridge_")
    except RuntimeError:
        second = "refused"
    else:
        second = "accepted"
    own = metrics.registry.get_sample_value(
        "bridge_interceptions_total", dict(ended, status="completed"))
    print(own, second)
    """
)


def run_workers(directory: Path, jobs: list[tuple[int, float]]) -> list[str]:
    """Run one worker per job at the same time; return what each printed."""
    env = {**os.environ, MULTIPROC_ENV: str(directory)}
    script = metrics_module.__file__
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, script, str(n), str(breaker)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, breaker in jobs
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        outputs.append(out.strip())
    return outputs


def test_render_in_multiprocess_mode_sums_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 25
    metrics = Metrics("bridge_")  # this process is not in multiprocess mode: no files
    outputs = run_workers(tmp_path, [(n, 1.0), (n, 0.5)])
    # The gotcha: each worker's own registry knows only its own interceptions.
    assert outputs == [f"{float(n)} refused", f"{float(n)} refused"]

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    body, content_type = render(metrics)
    assert content_type == CONTENT_TYPE_LATEST
    found = families_by_sample(body.decode())

    def value(name: str) -> float:
        (sample,) = found[name][1]
        return sample.value

    assert value("bridge_interceptions_total") == 2 * n
    assert value("bridge_interceptions_duration_seconds_count") == 2 * n
    assert value("bridge_interceptions_inflight") == 2  # livesum: one left in each worker
    assert value("bridge_recorder_queue_depth") == 6  # livesum
    assert value("bridge_circuit_breaker_state") == 1.0  # livemax (a sum would be 1.5)


def test_multiprocess_dir_set_after_import_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="set after prometheus_client was imported"):
        Metrics()


def test_prepare_multiprocess_dir_removes_the_last_runs_files(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    prepare_multiprocess_dir(directory)
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not ours")
    prepare_multiprocess_dir(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]


# -- bounded, valid label values (hardening) ----------------------------------------------


def series(text: str) -> list[str]:
    """The sample lines of an exposition (one per series and bucket)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_a_label_value_that_is_not_valid_unicode_does_not_break_the_exposition() -> None:
    metrics = new_metrics()
    bad = "x\ud800"  # a lone surrogate: what JSON "x\ud800" decodes to
    metrics.model_served(provider="anthropic", model=bad)
    metrics.interception_started(provider="anthropic", model=bad, route="/v1/messages")
    metrics.interception_ended(
        **{**ENDED, "model": bad, "initiator_id": "u\udfff\r\n"},
        status="completed",
        duration=1,
        added=0,
    )
    metrics.tokens(**{**USER, "client": "c\x00"}, counts={"input": 1})
    text = generate(metrics)  # raised UnicodeEncodeError, at every later scrape too
    assert 'model="x?"' in text
    assert "\r" not in text
    assert "\x00" not in text


def test_label_values_are_bounded_in_length() -> None:
    metrics = new_metrics()
    long = "m" * 10_000
    metrics.model_served(provider="anthropic", model=long)
    metrics.interception_ended(
        **{**ENDED, "model": long, "initiator_id": "u" * 10_000},
        status="completed",
        duration=1,
        added=0,
    )
    text = generate(metrics)
    assert max(len(line) for line in series(text)) < 2 * MAX_LABEL_LENGTH + 200


def test_a_model_no_provider_has_served_is_counted_as_other() -> None:
    metrics = new_metrics()
    metrics.interception_ended(
        **{**ENDED, "model": "made-up-model"}, status="failed", duration=1, added=0
    )
    value = metrics.registry.get_sample_value
    assert value("interceptions_total", {**ENDED, "model": "other", "status": "failed"}) == 1
    # Served by another provider is not served by this one.
    metrics.tokens(**{**USER, "model": "gpt-x"}, counts={"input": 1})
    assert value("tokens_total", {**USER, "model": "other", "type": "input"}) == 1
    metrics.model_served(provider="anthropic", model="made-up-model")
    metrics.interception_ended(
        **{**ENDED, "model": "made-up-model"}, status="completed", duration=1, added=0
    )
    labels = {**ENDED, "model": "made-up-model", "status": "completed"}
    assert value("interceptions_total", labels) == 1


def test_an_interception_leaves_the_in_flight_series_it_entered() -> None:
    """The model may become known while the interception runs (its first success): the
    in-flight gauge goes back down on the series it went up on."""
    metrics = Metrics()
    inflight = {"provider": "anthropic", "route": "/v1/messages"}
    metrics.interception_started(provider="anthropic", model="new-model", route="/v1/messages")
    metrics.model_served(provider="anthropic", model="new-model")
    metrics.interception_ended(
        **{**ENDED, "model": "new-model"}, status="completed", duration=1, added=0
    )
    value = metrics.registry.get_sample_value
    assert value("interceptions_inflight", {**inflight, "model": "other"}) == 0
    assert value("interceptions_inflight", {**inflight, "model": "new-model"}) in (None, 0)
    assert value("interceptions_total", {**ENDED, "model": "new-model", "status": "completed"})


def test_each_open_label_takes_at_most_max_label_values_then_other() -> None:
    metrics = new_metrics()
    for n in range(MAX_LABEL_VALUES + 50):
        metrics.model_served(provider="anthropic", model=f"model-{n}")
        metrics.tokens(
            **{**USER, "model": f"model-{n}", "initiator_id": f"user-{n}"}, counts={"input": 1}
        )
    models = {s.labels["model"] for s in families_by_sample(generate(metrics))["tokens_total"][1]}
    users = {
        s.labels["initiator_id"] for s in families_by_sample(generate(metrics))["tokens_total"][1]
    }
    assert len(models) <= MAX_LABEL_VALUES + 1
    assert len(users) <= MAX_LABEL_VALUES + 1
    assert "other" in models
    assert "other" in users


def test_an_unknown_http_method_is_counted_as_other() -> None:
    metrics = Metrics()
    metrics.passthrough(provider="openai", route="/models", method="BREW")
    value = metrics.registry.get_sample_value
    labels = {"provider": "openai", "route": "/models"}
    assert value("passthrough_total", {**labels, "method": "other"}) == 1


def test_a_metric_holds_at_most_max_series() -> None:
    """Combinations of capped values could still multiply: the number of series of one
    metric is capped too, further combinations share one series."""
    metrics = Metrics()
    for model in range(60):
        metrics.model_served(provider="anthropic", model=f"m{model}")
    for model in range(60):
        for user in range(60):
            metrics.prompt(
                provider="anthropic", model=f"m{model}", initiator_id=f"u{user}", client="Mux"
            )
    found = families_by_sample(generate(metrics))["prompts_total"][1]
    assert len(found) <= MAX_SERIES + 1
    assert sum(s.value for s in found) == 60 * 60
