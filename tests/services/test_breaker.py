"""Tests of bridge.services.breaker: plain behaviours, then a model-based fuzz on a fake clock.

The fuzz drives a real CircuitBreaker and a small, independently written model of
gobreaker's rules side by side, and checks after every step that they agree on the
state, the admit/reject decisions, the counts, the counters and the events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from bridge.config import BreakerConfig, ConfigError
from bridge.services.breaker import (
    Breakers,
    CircuitBreaker,
    Counts,
    State,
    StateChange,
    Ticket,
)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_breaker(
    clock: FakeClock, *, events: list[StateChange] | None = None, **overrides: Any
) -> CircuitBreaker:
    settings = BreakerConfig(**overrides)
    return CircuitBreaker(
        "anthropic:/v1/messages:claude",
        settings,
        clock=clock,
        on_change=None if events is None else events.append,
    )


def state_of(breaker: CircuitBreaker) -> State:
    """The breaker's state (a call, so mypy does not narrow it across time steps)."""
    return breaker.state


def admit(breaker: CircuitBreaker) -> Ticket:
    ticket = breaker.allow()
    assert ticket is not None, f"{breaker!r} rejected a request it should admit"
    return ticket


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record(admit(breaker), success=False)


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record(admit(breaker), success=True)


def open_breaker(clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    breaker = make_breaker(clock, **overrides)
    fail(breaker, breaker.settings.failure_threshold)
    assert state_of(breaker) is State.OPEN
    return breaker


# --- closed -----------------------------------------------------------------------


def test_five_consecutive_failures_trip_the_breaker() -> None:
    breaker = make_breaker(FakeClock())
    fail(breaker, 4)
    assert state_of(breaker) is State.CLOSED
    assert breaker.counts == Counts(
        requests=4, total_failures=4, consecutive_failures=4, total_successes=0
    )
    fail(breaker)
    assert state_of(breaker) is State.OPEN
    assert breaker.trips == 1
    assert breaker.counts == Counts()


def test_a_success_in_between_resets_the_consecutive_failures() -> None:
    breaker = make_breaker(FakeClock())
    fail(breaker, 4)
    succeed(breaker)
    fail(breaker, 4)
    assert state_of(breaker) is State.CLOSED
    assert breaker.counts.total_failures == 8
    assert breaker.counts.consecutive_failures == 4
    fail(breaker)
    assert state_of(breaker) is State.OPEN


def test_the_interval_resets_the_counts_of_a_closed_breaker() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, interval=10.0)
    fail(breaker, 4)
    clock.advance(10.0)  # exactly at the deadline: still the same interval
    assert breaker.counts.consecutive_failures == 4
    clock.advance(0.001)
    assert breaker.counts == Counts()
    fail(breaker, 4)
    assert state_of(breaker) is State.CLOSED


def test_interval_zero_never_resets_the_counts() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, interval=0.0)
    fail(breaker, 4)
    clock.advance(1e9)
    fail(breaker)
    assert state_of(breaker) is State.OPEN


def test_an_outcome_from_before_the_interval_reset_is_ignored() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=1, interval=10.0)
    ticket = admit(breaker)
    clock.advance(11.0)
    breaker.record(ticket, success=False)
    assert state_of(breaker) is State.CLOSED
    assert breaker.counts == Counts()


# --- open and half-open -------------------------------------------------------------


def test_open_rejects_then_half_opens_after_the_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, timeout=30.0)
    assert breaker.allow() is None
    clock.advance(30.0)  # gobreaker opens the gate strictly after the expiry
    assert state_of(breaker) is State.OPEN
    assert breaker.allow() is None
    assert breaker.rejected == 2
    clock.advance(0.001)
    assert state_of(breaker) is State.HALF_OPEN
    assert breaker.allow() is not None


def test_half_open_admits_exactly_max_requests_concurrently_and_rejects_the_rest() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, max_requests=3)
    clock.advance(31.0)
    tickets = [breaker.allow() for _ in range(5)]
    assert [t is not None for t in tickets] == [True, True, True, False, False]
    assert breaker.rejected == 2
    assert state_of(breaker) is State.HALF_OPEN


def test_a_failure_in_half_open_reopens_the_breaker() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(31.0)
    first, second = admit(breaker), admit(breaker)
    breaker.record(first, success=True)
    breaker.record(second, success=False)
    assert state_of(breaker) is State.OPEN
    assert breaker.trips == 2
    assert breaker.allow() is None


def test_max_requests_successes_close_the_breaker() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, max_requests=3)
    clock.advance(31.0)
    tickets = [admit(breaker) for _ in range(3)]
    for ticket in tickets[:2]:
        breaker.record(ticket, success=True)
    assert state_of(breaker) is State.HALF_OPEN
    breaker.record(tickets[2], success=True)
    assert state_of(breaker) is State.CLOSED
    assert breaker.counts == Counts()
    assert breaker.trips == 1


def test_outcomes_of_a_stale_generation_are_ignored() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=2, max_requests=1)
    slow = admit(breaker)  # admitted while closed, answers after the trip
    fail(breaker, 2)
    breaker.record(slow, success=False)
    assert breaker.trips == 1
    clock.advance(31.0)
    probe = admit(breaker)
    breaker.record(slow, success=False)  # must not re-open the half-open breaker
    assert state_of(breaker) is State.HALF_OPEN
    breaker.record(probe, success=True)
    assert state_of(breaker) is State.CLOSED
    breaker.record(probe, success=False)  # the probe's generation is over, too
    assert breaker.counts == Counts()


def test_retry_after_counts_down_the_open_timeout_in_whole_seconds() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    assert breaker.retry_after() == 0
    fail(breaker, 5)
    assert breaker.retry_after() == 30
    clock.advance(0.5)
    assert breaker.retry_after() == 30
    clock.advance(29.0)
    assert breaker.retry_after() == 1
    clock.advance(0.5)  # exactly at the expiry: still open, never 0
    assert breaker.retry_after() == 1
    clock.advance(0.5)
    assert breaker.retry_after() == 0  # half-open with room for a probe
    for _ in range(3):
        admit(breaker)
    assert breaker.retry_after() == 30  # half-open and full: the reference's value


def test_retry_after_rounds_a_fractional_timeout_up() -> None:
    breaker = open_breaker(FakeClock(), timeout=0.25)
    assert breaker.retry_after() == 1


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "failure"),
    [(None, True), (503, True), (504, True), (529, True), (429, False), (500, False), (200, False)],
)
def test_default_failure_statuses(status: int | None, failure: bool) -> None:
    assert BreakerConfig().is_failure(status) is failure


def test_failure_statuses_are_configurable_but_connection_failures_always_count() -> None:
    settings = BreakerConfig(failure_statuses=(429, 500))
    assert settings.is_failure(429)
    assert settings.is_failure(500)
    assert not settings.is_failure(503)
    assert settings.is_failure(None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"failure_threshold": 0}, r"^circuit_breaker.failure_threshold must be an integer >= 1"),
        ({"interval": -1.0}, r"^circuit_breaker.interval must be a number of seconds >= 0"),
        ({"interval": float("nan")}, r"^circuit_breaker.interval must be a number of seconds"),
        ({"timeout": 0.0}, r"^circuit_breaker.timeout must be a number of seconds > 0"),
        ({"max_requests": 0}, r"^circuit_breaker.max_requests must be an integer >= 1"),
    ],
)
def test_invalid_settings_are_rejected_with_the_rule(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**overrides)  # type: ignore[arg-type]


def test_state_gauge_values_are_the_references() -> None:
    assert [s.gauge for s in (State.CLOSED, State.HALF_OPEN, State.OPEN)] == [0.0, 0.5, 1.0]


# --- events ---------------------------------------------------------------------------


def test_on_change_reports_every_transition_but_not_interval_resets() -> None:
    clock = FakeClock()
    events: list[StateChange] = []
    breaker = make_breaker(clock, events=events, failure_threshold=1, max_requests=1)
    clock.advance(11.0)
    assert breaker.counts == Counts()  # an interval reset: no event
    fail(breaker)
    clock.advance(31.0)
    assert state_of(breaker) is State.HALF_OPEN
    fail(breaker)
    clock.advance(31.0)
    succeed(breaker)
    name = "anthropic:/v1/messages:claude"
    assert events == [
        StateChange(name, State.CLOSED, State.OPEN),
        StateChange(name, State.OPEN, State.HALF_OPEN),
        StateChange(name, State.HALF_OPEN, State.OPEN),
        StateChange(name, State.OPEN, State.HALF_OPEN),
        StateChange(name, State.HALF_OPEN, State.CLOSED),
    ]


# --- Breakers -------------------------------------------------------------------------


def test_breakers_are_bounded_and_an_open_one_outlives_closed_ones() -> None:
    """Models come from clients: a new one per request must not grow memory for ever."""
    breakers = Breakers(clock=FakeClock(), limit=3)
    settings = BreakerConfig(failure_threshold=1)
    tripped = breakers.get("anthropic", "/v1/messages", "tripped", settings)
    fail(tripped)
    for index in range(1000):
        breakers.get("anthropic", "/v1/messages", f"model-{index}", settings)
        assert len(breakers) <= 3
    assert breakers.get("anthropic", "/v1/messages", "tripped", settings) is tripped
    assert tripped.allow() is None  # still open: the flood did not reset it


def test_breakers_are_isolated_per_model_and_endpoint() -> None:
    clock = FakeClock()
    breakers = Breakers(clock=clock)
    settings = BreakerConfig(failure_threshold=1)
    tripped = breakers.get("openai", "/v1/chat/completions", "gpt-4o", settings)
    fail(tripped)
    assert breakers.get("openai", "/v1/chat/completions", "gpt-4o", settings) is tripped
    assert tripped.name == "openai:/v1/chat/completions:gpt-4o"
    other_model = breakers.get("openai", "/v1/chat/completions", "gpt-5", settings)
    other_endpoint = breakers.get("openai", "/v1/responses", "gpt-4o", settings)
    assert other_model.allow() is not None
    assert other_endpoint.allow() is not None
    assert tripped.allow() is None
    assert breakers.snapshot() == [
        ("openai", "/v1/chat/completions", "gpt-4o", State.OPEN, 1, 1),
        ("openai", "/v1/chat/completions", "gpt-5", State.CLOSED, 0, 0),
        ("openai", "/v1/responses", "gpt-4o", State.CLOSED, 0, 0),
    ]


def test_breakers_pass_on_change_to_every_breaker() -> None:
    events: list[StateChange] = []
    breakers = Breakers(clock=FakeClock(), on_change=events.append)
    settings = BreakerConfig(failure_threshold=1)
    fail(breakers.get("anthropic", "/v1/messages", "claude-a", settings))
    fail(breakers.get("anthropic", "/v1/messages", "claude-b", settings))
    assert [e.name for e in events] == [
        "anthropic:/v1/messages:claude-a",
        "anthropic:/v1/messages:claude-b",
    ]


def test_new_settings_replace_the_breaker_but_keep_its_counters() -> None:
    events: list[StateChange] = []
    breakers = Breakers(clock=FakeClock(), on_change=events.append)
    old = breakers.get("anthropic", "/v1/messages", "claude", BreakerConfig(failure_threshold=1))
    fail(old)
    assert old.allow() is None
    new = breakers.get("anthropic", "/v1/messages", "claude", BreakerConfig(failure_threshold=2))
    assert new is not old
    assert new.settings.failure_threshold == 2
    assert (new.state, new.trips, new.rejected) == (State.CLOSED, 1, 1)
    assert events[-1] == StateChange("anthropic:/v1/messages:claude", State.OPEN, State.CLOSED)


async def test_breakers_default_to_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    breakers = Breakers()
    breaker = breakers.get("anthropic", "/v1/messages", "claude", BreakerConfig(timeout=5.0))
    fail(breaker, 5)
    assert state_of(breaker) is State.OPEN
    await trio.sleep(5.5)
    assert state_of(breaker) is State.HALF_OPEN


# --- model-based fuzzing ----------------------------------------------------------------


@dataclass
class Model:
    """gobreaker's rules, written out independently of bridge.services.breaker.

    ``epoch`` numbers the periods whose outcomes count; ``deadline`` is when the
    current period ends (None: never). Timed rules fire strictly after the deadline.
    """

    threshold: int
    interval: float
    timeout: float
    max_requests: int
    now: float
    state: State = State.CLOSED
    epoch: int = 0
    deadline: float | None = None
    requests: int = 0
    successes: int = 0
    failures: int = 0
    success_run: int = 0
    failure_run: int = 0
    trips: int = 0
    rejected: int = 0
    events: list[tuple[State, State]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.new_epoch()

    def new_epoch(self) -> None:
        self.epoch += 1
        self.requests = self.successes = self.failures = 0
        self.success_run = self.failure_run = 0
        if self.state is State.OPEN:
            self.deadline = self.now + self.timeout
        elif self.state is State.CLOSED and self.interval:
            self.deadline = self.now + self.interval
        else:
            self.deadline = None

    def move(self, to: State) -> None:
        self.events.append((self.state, to))
        self.state = to
        self.trips += to is State.OPEN
        self.new_epoch()

    def tick(self) -> None:
        if self.deadline is None or not self.now > self.deadline:
            return
        if self.state is State.OPEN:
            self.move(State.HALF_OPEN)
        else:
            self.new_epoch()

    def allow(self) -> int | None:
        self.tick()
        full = self.state is State.HALF_OPEN and self.requests == self.max_requests
        if self.state is State.OPEN or full:
            self.rejected += 1
            return None
        self.requests += 1
        return self.epoch

    def record(self, epoch: int, success: bool) -> None:
        self.tick()
        if epoch != self.epoch:
            return
        if success:
            self.successes += 1
            self.success_run += 1
            self.failure_run = 0
            if self.state is State.HALF_OPEN and self.success_run == self.max_requests:
                self.move(State.CLOSED)
        else:
            self.failures += 1
            self.failure_run += 1
            self.success_run = 0
            if self.state is State.HALF_OPEN or self.failure_run == self.threshold:
                self.move(State.OPEN)

    def counts(self) -> Counts:
        self.tick()
        return Counts(
            self.requests, self.successes, self.failures, self.success_run, self.failure_run
        )


class BreakerAgainstModel(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.events: list[StateChange] = []

    @initialize(
        threshold=st.integers(1, 5),
        interval=st.sampled_from([0.0, 0.5, 4.0, 10.0]),
        timeout=st.sampled_from([0.25, 1.0, 2.5, 30.0]),
        max_requests=st.integers(1, 4),
    )
    def create(self, threshold: int, interval: float, timeout: float, max_requests: int) -> None:
        self.settings = BreakerConfig(
            failure_threshold=threshold,
            interval=interval,
            timeout=timeout,
            max_requests=max_requests,
        )
        self.breaker = CircuitBreaker(
            "p:e:m", self.settings, clock=self.clock, on_change=self.events.append
        )
        self.model = Model(threshold, interval, timeout, max_requests, now=self.clock.now)

    @rule(target=tickets)
    def allow(self) -> object:
        ticket = self.breaker.allow()
        epoch = self.model.allow()
        assert (ticket is None) == (epoch is None)
        if ticket is None or epoch is None:
            return multiple()
        return (ticket, epoch)

    @rule(pair=consumes(tickets), success=st.booleans())
    def record(self, pair: tuple[Ticket, int], success: bool) -> None:
        ticket, epoch = pair
        self.breaker.record(ticket, success=success)
        self.model.record(epoch, success)

    @rule(pair=tickets, success=st.booleans())
    def record_again(self, pair: tuple[Ticket, int], success: bool) -> None:
        """A ticket recorded twice: the second outcome is usually stale."""
        self.record(pair, success)

    @rule(
        seconds=st.one_of(
            st.floats(0.0, 100.0),
            st.sampled_from([0.0, 0.001, 0.25, 0.5, 1.0]),
            st.just("timeout"),
            st.just("interval"),
        )
    )
    def advance(self, seconds: float | str) -> None:
        if seconds == "timeout":
            seconds = self.settings.timeout
        elif seconds == "interval":
            seconds = self.settings.interval
        assert isinstance(seconds, float)
        self.clock.advance(seconds)
        self.model.now = self.clock.now

    def observe(self) -> State:
        """Let both sides apply the timed rules now: looking at the state does that."""
        self.model.tick()
        return self.breaker.state

    @invariant()
    def same_state_and_counts(self) -> None:
        state = self.observe()
        assert state is self.model.state
        assert state.gauge == {"closed": 0.0, "half-open": 0.5, "open": 1.0}[state.value]
        counts = self.breaker.counts
        assert counts == self.model.counts()
        assert counts.consecutive_failures <= counts.total_failures
        assert counts.consecutive_successes <= counts.total_successes
        assert 0 in (counts.consecutive_failures, counts.consecutive_successes)
        if state is State.HALF_OPEN:
            assert counts.requests <= self.settings.max_requests
        if state is State.OPEN:
            assert counts == Counts()

    @invariant()
    def same_counters_and_events(self) -> None:
        self.observe()
        assert (self.breaker.trips, self.breaker.rejected) == (
            self.model.trips,
            self.model.rejected,
        )
        assert [(e.from_state, e.to_state) for e in self.events] == self.model.events
        assert all(e.name == "p:e:m" for e in self.events)

    @invariant()
    def retry_after_is_positive_exactly_when_rejecting(self) -> None:
        state = self.observe()
        seconds = self.breaker.retry_after()
        full = state is State.HALF_OPEN and self.breaker.counts.requests >= (
            self.settings.max_requests
        )
        assert (seconds >= 1) == (state is State.OPEN or full)


BreakerAgainstModel.TestCase.settings = hypothesis_settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
test_breaker_agrees_with_the_model = BreakerAgainstModel.TestCase
