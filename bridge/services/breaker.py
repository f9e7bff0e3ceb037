"""Circuit breakers that stop calling an upstream that is overloaded.

One breaker guards one ``provider:endpoint:model``. It is pure logic, like h11's
state machine: no I/O, no logging, no sleeping; time comes from an injected clock,
so tests drive it on a fake clock and fuzz it against a model. The caller logs and
updates metrics from the ``on_change`` callback.

The rules are those of sony/gobreaker (the reference's library), copied exactly:

Rule 1: every state change starts a new *generation*: the counts are cleared and the
    outcome of a request admitted in an older generation is ignored (a slow request
    that started before the breaker opened must not close or re-open it).
Rule 2: CLOSED admits every request (``requests`` += 1). A success clears
    ``consecutive_failures``; a failure increments it, and once
    ``consecutive_failures >= failure_threshold`` the breaker goes OPEN (a trip).
Rule 3: CLOSED with ``interval > 0``: once the interval has expired, the counts are
    cleared (a new generation, no state change) and the next interval ends
    ``interval`` seconds after that moment. ``interval == 0`` never clears them.
Rule 4: OPEN rejects every request until ``expiry = time of opening + timeout`` has
    passed (strictly: at exactly ``expiry`` it is still open), then it is HALF_OPEN.
    Like gobreaker, this is evaluated lazily, whenever the state is looked at.
Rule 5: HALF_OPEN admits requests while ``requests < max_requests`` and rejects the
    rest ("too many requests"). Any failure re-opens it (a trip); ``max_requests``
    consecutive successes close it.

What counts as a failure is :meth:`BreakerConfig.is_failure`: by default 503, 504,
529 and connection failures/timeouts. 429 is not one: a rate limit is answered by
retrying and by key failover, not by cutting every user off (docs/behaviour.md §8.3).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from bridge.config import BreakerConfig

__all__ = [
    "MAX_BREAKERS",
    "Breakers",
    "CircuitBreaker",
    "Counts",
    "State",
    "StateChange",
    "Ticket",
]


class State(enum.Enum):
    """The three states of a breaker; the values are the names used in logs."""

    CLOSED = "closed"
    HALF_OPEN = "half-open"
    OPEN = "open"

    @property
    def gauge(self) -> float:
        """The value of the ``circuit_breaker_state`` gauge (the reference's values)."""
        return _GAUGE[self]


_GAUGE = {State.CLOSED: 0.0, State.HALF_OPEN: 0.5, State.OPEN: 1.0}


@dataclass(frozen=True, slots=True)
class Ticket:
    """Proof of admission returned by :meth:`CircuitBreaker.allow`; pass it to ``record``.

    It carries the generation the request was admitted in, so that an outcome that
    arrives after a state change is recognised as stale (rule 1).
    """

    generation: int


@dataclass(frozen=True, slots=True)
class Counts:
    """The counts of the current generation (gobreaker's ``Counts``)."""

    requests: int = 0
    total_successes: int = 0
    total_failures: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0

    def after_request(self) -> Counts:
        return Counts(
            self.requests + 1,
            self.total_successes,
            self.total_failures,
            self.consecutive_successes,
            self.consecutive_failures,
        )

    def after_success(self) -> Counts:
        return Counts(
            self.requests,
            self.total_successes + 1,
            self.total_failures,
            self.consecutive_successes + 1,
            0,
        )

    def after_failure(self) -> Counts:
        return Counts(
            self.requests,
            self.total_successes,
            self.total_failures + 1,
            0,
            self.consecutive_failures + 1,
        )


@dataclass(frozen=True, slots=True)
class StateChange:
    """A transition, passed to ``on_change`` so the caller can log it and set the gauge."""

    name: str
    from_state: State
    to_state: State


class CircuitBreaker:
    """One breaker: ``allow()`` before calling the upstream, ``record()`` after.

    ::

        ticket = breaker.allow()
        if ticket is None:
            raise CircuitOpen(..., retry_after=breaker.retry_after())
        ...call the upstream...
        breaker.record(ticket, success=not settings.is_failure(status))

    Call ``record`` exactly once per ticket (also when the call was cancelled: with
    ``success=True`` if a cancellation says nothing about the upstream's health),
    otherwise a half-open breaker keeps counting the request as in flight and never
    admits another one until the generation changes.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerConfig,
        *,
        clock: Callable[[], float],
        on_change: Callable[[StateChange], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._generation = 0
        self._counts = Counts()
        self._expiry: float | None = None
        self.rejected = 0
        """Requests rejected by this breaker (``circuit_breaker_rejects_total``)."""
        self.trips = 0
        """Transitions to OPEN (``circuit_breaker_trips_total``)."""
        self._new_generation(clock())

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    @property
    def state(self) -> State:
        """The state now; an expired timeout or interval takes effect here (rules 3, 4)."""
        return self._current_state(self._clock())

    @property
    def counts(self) -> Counts:
        """The counts of the current generation, as of now.

        Unlike gobreaker's ``Counts()``, an expired interval is applied first, so the
        counts never describe a generation that has already ended.
        """
        self._current_state(self._clock())
        return self._counts

    def allow(self) -> Ticket | None:
        """Admit a request (a ticket) or reject it (``None``, counted in ``rejected``)."""
        state = self._current_state(self._clock())
        if state is State.OPEN or (
            state is State.HALF_OPEN and self._counts.requests >= self.settings.max_requests
        ):
            self.rejected += 1
            return None
        self._counts = self._counts.after_request()
        return Ticket(self._generation)

    def record(self, ticket: Ticket, *, success: bool) -> None:
        """Record the outcome of an admitted request; a stale ticket is ignored (rule 1)."""
        now = self._clock()
        state = self._current_state(now)
        if ticket.generation != self._generation:
            return
        if success:
            self._counts = self._counts.after_success()
            if (
                state is State.HALF_OPEN
                and self._counts.consecutive_successes >= self.settings.max_requests
            ):
                self._set_state(State.CLOSED, now)  # rule 5: the upstream has recovered
        else:
            self._counts = self._counts.after_failure()
            if state is State.HALF_OPEN or (
                state is State.CLOSED
                and self._counts.consecutive_failures >= self.settings.failure_threshold
            ):
                self._set_state(State.OPEN, now)  # rules 2 and 5: trip
        # No case for OPEN: an open breaker issues no tickets, so a ticket of the
        # current generation cannot exist while it is open.

    def retry_after(self) -> int:
        """Whole seconds a rejected client should wait (the ``Retry-After`` header).

        Open: the time left until the breaker half-opens, rounded up, at least 1.
        Half-open and full: ``timeout`` rounded up, which is what the reference
        always sends: if the probes in flight fail, the breaker re-opens for that
        long; if they succeed, a retry after that long is admitted anyway.
        Otherwise 0: a request would be admitted now.
        """
        now = self._clock()
        state = self._current_state(now)
        if state is State.OPEN:
            assert self._expiry is not None
            return max(1, math.ceil(self._expiry - now))
        if state is State.HALF_OPEN and self._counts.requests >= self.settings.max_requests:
            return max(1, math.ceil(self.settings.timeout))
        return 0

    # --- transitions -------------------------------------------------------------

    def _current_state(self, now: float) -> State:
        """Apply the time-driven rules (3 and 4) that are due at ``now``."""
        if self._expiry is not None and self._expiry < now:
            if self._state is State.CLOSED:
                self._new_generation(now)  # rule 3: the counting interval is over
            elif self._state is State.OPEN:
                self._set_state(State.HALF_OPEN, now)  # rule 4: time to probe
        return self._state

    def _set_state(self, to_state: State, now: float) -> None:
        from_state = self._state
        if from_state is to_state:
            return
        self._state = to_state
        if to_state is State.OPEN:
            self.trips += 1
        self._new_generation(now)
        if self._on_change is not None:
            self._on_change(StateChange(self.name, from_state, to_state))

    def _new_generation(self, now: float) -> None:
        """Rule 1: clear the counts, invalidate tickets, and set the next deadline."""
        self._generation += 1
        self._counts = Counts()
        if self._state is State.CLOSED:
            self._expiry = now + self.settings.interval if self.settings.interval > 0 else None
        elif self._state is State.OPEN:
            self._expiry = now + self.settings.timeout
        else:
            self._expiry = None


def _trio_clock() -> float:
    """``trio.current_time()``, imported on use: it only works inside ``trio.run``."""
    import trio

    return trio.current_time()


MAX_BREAKERS = 4096
"""Breakers kept at most (see :class:`Breakers`): far more provider, endpoint and model
combinations than a deployment serves, few enough to bound memory to a few megabytes."""


class Breakers:
    """Lazily created breakers keyed by (provider, endpoint, model).

    Each provider passes its own settings to :meth:`get`. If the settings of a key
    change (a configuration reload), its breaker is replaced by a fresh, closed one
    with the new settings; ``trips`` and ``rejected`` carry over, because the
    metrics built on them are counters and must never go down.

    The model comes from the client, so the number of breakers is bounded by
    ``limit``: past it, the oldest closed breaker is dropped (a closed breaker holds
    at most a few failures of the current interval; it comes back closed when next
    needed), or the oldest of all if none is closed. Without the bound, a client
    naming a new model in every request grew the gateway's memory without end.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = _trio_clock,
        on_change: Callable[[StateChange], None] | None = None,
        limit: int = MAX_BREAKERS,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._limit = limit
        self._breakers: dict[tuple[str, str, str], CircuitBreaker] = {}

    def get(
        self, provider: str, endpoint: str, model: str, settings: BreakerConfig
    ) -> CircuitBreaker:
        """The breaker named ``<provider>:<endpoint>:<model>``, created on first use."""
        key = (provider, endpoint, model)
        breaker = self._breakers.get(key)
        if breaker is not None and breaker.settings == settings:
            return breaker
        fresh = CircuitBreaker(
            f"{provider}:{endpoint}:{model}",
            settings,
            clock=self._clock,
            on_change=self._on_change,
        )
        if breaker is not None:
            fresh.trips, fresh.rejected = breaker.trips, breaker.rejected
            old_state = breaker.state
            if old_state is not State.CLOSED and self._on_change is not None:
                self._on_change(StateChange(fresh.name, old_state, State.CLOSED))
        elif len(self._breakers) >= self._limit:
            self._evict()
        self._breakers[key] = fresh
        return fresh

    def _evict(self) -> None:
        """Drop the oldest closed breaker, or the oldest of all if none is closed."""
        oldest = next(iter(self._breakers))
        victim = next((k for k, b in self._breakers.items() if b.state is State.CLOSED), oldest)
        del self._breakers[victim]

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> list[tuple[str, str, str, State, int, int]]:
        """``(provider, endpoint, model, state, trips, rejected)`` per breaker, sorted."""
        return [
            (provider, endpoint, model, breaker.state, breaker.trips, breaker.rejected)
            for (provider, endpoint, model), breaker in sorted(self._breakers.items())
        ]
