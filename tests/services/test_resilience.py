"""Tests for bridge/services/resilience.py: retry decisions and delays, the key pool, next_step."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import mask_secret
from bridge.services.resilience import (
    DEFAULT_RATE_LIMIT_REST,
    Key,
    KeyPool,
    NoKeyAvailable,
    Step,
    next_step,
    parse_retry_after,
    retry_delay,
    should_retry,
)

SECRETS = ("sk-ant-api03-first-secret-0000", "sk-ant-api03-second-secret-111", "third-key-22222")
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(count: int = 3, cooldown: float = 60.0) -> tuple[KeyPool, FakeClock]:
    clock = FakeClock()
    return KeyPool(SECRETS[:count], clock=clock, cooldown=cooldown, name="anthropic"), clock


# --- should_retry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (None, {}, True),
        (200, {}, False),
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (503, {}, True),
        (529, {}, True),
        (599, {}, True),
        (503, {"x-should-retry": "false"}, False),
        (429, {"x-should-retry": "False "}, False),
        (None, {"x-should-retry": "false"}, False),
        (400, {"x-should-retry": "true"}, True),
        (200, {"x-should-retry": "true"}, True),
        (400, {"x-should-retry": "maybe"}, False),
        (500, {"x-should-retry": ""}, True),
    ],
)
def test_should_retry_follows_the_sdks(
    status: int | None, headers: dict[str, str], expected: bool
) -> None:
    assert should_retry(status, headers) is expected


# --- retry_delay -----------------------------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after-ms": "1500.5", "retry-after": "7"}
    assert retry_delay(0, headers) == pytest.approx(1.5005)


def test_retry_after_in_seconds_is_honoured() -> None:
    assert retry_delay(3, {"retry-after": "2"}) == 2.0
    assert retry_delay(0, {"retry-after": "0.25"}) == 0.25
    assert retry_delay(0, {"retry-after": "0"}) == 0.0
    assert retry_delay(0, {"retry-after": "60"}) == 60.0


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    date = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    assert retry_delay(0, {"retry-after": date}, now=NOW) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": date}, now=NOW + 40) == pytest.approx(-10.0)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "61"},
        {"retry-after": "-1"},
        {"retry-after": "nan"},
        {"retry-after": "inf"},
        {"retry-after": "soon"},
        {"retry-after-ms": "60001"},
        {"retry-after-ms": "-5"},
        {"retry-after": format_datetime(datetime.fromtimestamp(NOW - 5, UTC), usegmt=True)},
        {"retry-after": format_datetime(datetime.fromtimestamp(NOW + 120, UTC), usegmt=True)},
    ],
)
def test_out_of_range_or_bad_retry_after_falls_back_to_backoff(headers: dict[str, str]) -> None:
    rng = random.Random(0)
    assert retry_delay(0, headers, rng=rng, now=NOW) == retry_delay(
        0, {}, rng=random.Random(0), now=NOW
    )
    assert 0.375 <= retry_delay(0, headers, rng=rng, now=NOW) <= 0.5


def test_unparseable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert retry_delay(0, {"retry-after-ms": "x", "retry-after": "3"}) == 3.0


@pytest.mark.parametrize(
    ("attempt", "full"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (10, 8.0), (1000, 8.0)],
)
def test_backoff_doubles_up_to_eight_seconds_minus_at_most_a_quarter(
    attempt: int, full: float
) -> None:
    rng = random.Random(attempt)
    delays = [retry_delay(attempt, {}, rng=rng) for _ in range(200)]
    assert all(0.75 * full <= delay <= full for delay in delays)
    assert max(delays) - min(delays) > 0.1 * full  # the jitter is there


def test_backoff_jitter_comes_from_the_given_rng() -> None:
    first = [retry_delay(2, {}, rng=random.Random(42)) for _ in range(3)]
    assert first == [retry_delay(2, {}, rng=random.Random(42)) for _ in range(3)]
    assert first[0] == 2.0 * (1 - 0.25 * random.Random(42).random())


# --- KeyPool ---------------------------------------------------------------------------------


def test_keys_are_used_round_robin() -> None:
    pool, _ = make_pool()
    chosen = [pool.choose().index for _ in range(7)]
    assert chosen == [0, 1, 2, 0, 1, 2, 0]
    assert len(pool) == 3


def test_a_key_shows_only_its_hint() -> None:
    pool, _ = make_pool()
    key = pool.choose()
    assert key == Key(0, SECRETS[0], mask_secret(SECRETS[0]))
    assert SECRETS[0] not in repr(key)
    assert SECRETS[0] not in repr(pool)
    assert key.hint in repr(pool)


def test_a_rate_limited_key_rests_until_retry_after_then_comes_back() -> None:
    pool, clock = make_pool(2)
    first = pool.choose()
    pool.rate_limited(first, 5.0)
    assert [pool.choose().index for _ in range(3)] == [1, 1, 1]
    assert pool.status()[0] == {"hint": first.hint, "state": "resting", "until": 1005.0}
    clock.now += 4.9
    assert pool.choose().index == 1
    clock.now += 0.1
    assert {pool.choose().index, pool.choose().index} == {0, 1}
    assert pool.status()[0] == {"hint": first.hint, "state": "ok", "until": None}


def test_a_429_without_retry_after_rests_the_default() -> None:
    pool, clock = make_pool(1)
    pool.rate_limited(pool.choose(), None)
    with pytest.raises(NoKeyAvailable) as caught:
        pool.choose()
    assert caught.value.retry_after == DEFAULT_RATE_LIMIT_REST
    clock.now += DEFAULT_RATE_LIMIT_REST
    assert pool.choose().index == 0


def test_a_rejected_key_is_disabled_for_the_cooldown() -> None:
    pool, clock = make_pool(2, cooldown=30.0)
    pool.rejected(pool.choose())
    assert pool.status()[0]["state"] == "disabled"
    clock.now += 29.0
    assert [pool.choose().index for _ in range(2)] == [1, 1]
    clock.now += 1.0
    assert sorted(pool.choose().index for _ in range(2)) == [0, 1]


def test_a_short_rest_does_not_shorten_a_longer_one() -> None:
    pool, _ = make_pool(1, cooldown=30.0)
    key = pool.choose()
    pool.rejected(key)
    pool.rate_limited(key, 1.0)
    assert pool.status()[0] == {"hint": key.hint, "state": "disabled", "until": 1030.0}


def test_success_puts_a_key_back_at_once() -> None:
    pool, _ = make_pool(1)
    key = pool.choose()
    pool.rate_limited(key, 30.0)
    pool.succeeded(key)
    assert pool.choose() == key


def test_choose_skips_excluded_keys() -> None:
    pool, _ = make_pool()
    assert pool.choose(exclude={0}).index == 1
    assert pool.choose(exclude={0, 2}).index == 1
    with pytest.raises(NoKeyAvailable):
        pool.choose(exclude={0, 1, 2})


def test_every_key_resting_raises_with_the_soonest_return() -> None:
    pool, clock = make_pool()
    keys = [pool.choose() for _ in range(3)]
    pool.rate_limited(keys[0], 20.0)
    pool.rate_limited(keys[1], 60.0)
    pool.rate_limited(keys[2], 7.5)
    with pytest.raises(NoKeyAvailable, match=r"^every provider key is resting; .* 7\.5 s$") as e:
        pool.choose()
    assert e.value.retry_after == 7.5
    clock.now += 7.5
    assert pool.choose() == keys[2]


def test_a_key_disabled_by_a_401_is_still_chosen_when_no_key_is_usable() -> None:
    """A cooldown only moves traffic to another usable key; it never refuses it."""
    pool, clock = make_pool()
    keys = [pool.choose() for _ in range(3)]
    pool.rate_limited(keys[0], 20.0)
    pool.rejected(keys[1])  # 60 s
    clock.now += 1
    pool.rejected(keys[2])  # 60 s, a second later
    assert pool.choose() == keys[1]  # disabled longest ago
    assert pool.choose(exclude={1}) == keys[2]
    with pytest.raises(NoKeyAvailable):
        pool.choose(exclude={1, 2})  # only the rate-limited one is left


def test_one_key_disabled_by_a_401_stays_in_use() -> None:
    pool, _ = make_pool(count=1)
    key = pool.choose()
    tried: set[int] = set()
    assert step_after(401, pool=pool, key=key, tried=tried).action == "give_up"
    assert pool.status()[0]["state"] == "disabled"
    assert pool.choose() == key  # the next request still goes to the upstream


def test_rejection_is_logged_with_the_masked_hint_only(caplog: pytest.LogCaptureFixture) -> None:
    pool, _ = make_pool()
    key = pool.choose()
    with caplog.at_level(logging.WARNING, logger="bridge.keys"):
        pool.rejected(key)
    (record,) = caplog.records
    assert record.name == "bridge.keys"
    assert record.levelno == logging.ERROR  # a person must act
    assert key.hint in record.getMessage()
    assert "'anthropic'" in record.getMessage()
    assert SECRETS[0] not in caplog.text


@pytest.mark.parametrize("secrets", [(), ("a-key", "")])
def test_a_pool_needs_keys(secrets: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"^a KeyPool needs at least one key and no empty ones"):
        KeyPool(secrets, clock=FakeClock())


# --- next_step -------------------------------------------------------------------------------


def step_after(
    status: int | None,
    headers: dict[str, str] | None = None,
    *,
    attempt: int = 0,
    max_retries: int = 2,
    byok: bool = False,
    pool: KeyPool | None = None,
    key: Key | None = None,
    tried: set[int] | None = None,
) -> Step:
    return next_step(
        status,
        headers or {},
        attempt=attempt,
        max_retries=max_retries,
        byok=byok,
        pool=pool,
        key=key,
        tried=set() if tried is None else tried,
        rng=random.Random(0),
        now=NOW,
    )


@pytest.mark.parametrize(
    ("status", "headers", "attempt", "action"),
    [
        (200, {}, 0, "done"),
        (400, {}, 0, "done"),
        (404, {}, 0, "done"),
        (401, {}, 0, "done"),
        (500, {"x-should-retry": "false"}, 0, "done"),
        (None, {}, 0, "retry"),
        (429, {}, 0, "retry"),
        (503, {}, 1, "retry"),
        (529, {}, 2, "give_up"),
        (None, {}, 2, "give_up"),
        (400, {"x-should-retry": "true"}, 0, "retry"),
    ],
)
def test_next_step_without_a_pool_retries_like_the_sdks(
    status: int | None, headers: dict[str, str], attempt: int, action: str
) -> None:
    step = step_after(status, headers, attempt=attempt)
    assert step.action == action
    assert step.key is None
    assert step.attempt == attempt + (action == "retry")


def test_a_retry_waits_the_retry_delay() -> None:
    assert step_after(503, {"retry-after": "3"}) == Step("retry", None, 1, 3.0)
    step = step_after(503, attempt=1)
    assert step.delay == retry_delay(1, {}, rng=random.Random(0))


@pytest.mark.parametrize("status", [429, 401, 403])
def test_key_failures_fail_over_at_once_without_spending_a_retry(status: int) -> None:
    pool, _ = make_pool()
    key = pool.choose()
    tried: set[int] = set()
    step = step_after(status, attempt=1, pool=pool, key=key, tried=tried)
    assert step == Step("failover", Key(1, SECRETS[1], mask_secret(SECRETS[1])), 1, 0.0)
    assert tried == {0}
    # A 403 refuses one model or request, not the key: it never rests it.
    expected = {429: "resting", 401: "disabled", 403: "ok"}[status]
    assert pool.status()[0]["state"] == expected


def test_a_429_rests_the_key_for_the_upstreams_retry_after() -> None:
    pool, _ = make_pool()
    key = pool.choose()
    step_after(429, {"retry-after": "90"}, pool=pool, key=key)
    assert pool.status()[0]["until"] == 1090.0


def test_failover_skips_keys_already_tried() -> None:
    pool, _ = make_pool()
    key = pool.choose()  # 0
    pool.choose()  # 1: the round robin now points at 2
    step = step_after(401, pool=pool, key=key, tried={2})
    assert (step.action, step.key and step.key.index) == ("failover", 1)


def test_a_429_with_no_other_key_retries_the_same_key() -> None:
    pool, _ = make_pool(1)
    key = pool.choose()
    assert step_after(429, {"retry-after": "2"}, pool=pool, key=key) == Step("retry", key, 1, 2.0)
    assert step_after(429, attempt=2, pool=pool, key=key).action == "give_up"


@pytest.mark.parametrize("status", [401, 403])
def test_an_auth_failure_with_no_other_key_gives_up(status: int) -> None:
    pool, _ = make_pool(2)
    key = pool.choose()
    assert step_after(status, pool=pool, key=key, tried={1}) == Step("give_up", key, 0)


def test_a_server_error_retries_the_same_key_and_leaves_it_in_rotation() -> None:
    pool, _ = make_pool()
    key = pool.choose()
    tried: set[int] = set()
    assert step_after(503, pool=pool, key=key, tried=tried).action == "retry"
    assert step_after(503, pool=pool, key=key, tried=tried).key == key
    assert tried == set()
    assert [row["state"] for row in pool.status()] == ["ok", "ok", "ok"]


def test_success_clears_a_resting_key() -> None:
    pool, _ = make_pool(1)
    key = pool.choose()
    pool.rate_limited(key, 30.0)
    assert step_after(200, pool=pool, key=key) == Step("done", key, 0)
    assert pool.status()[0]["state"] == "ok"


@pytest.mark.parametrize("status", [429, 401, 403])
def test_byok_never_fails_over_nor_touches_the_pool(status: int) -> None:
    pool, _ = make_pool()
    key = pool.choose()
    tried: set[int] = set()
    step = step_after(status, byok=True, pool=pool, key=key, tried=tried)
    assert step.action == ("retry" if status == 429 else "done")
    assert tried == set()
    assert [row["state"] for row in pool.status()] == ["ok", "ok", "ok"]


OUTCOMES = st.one_of(
    st.none(), st.sampled_from([200, 400, 401, 403, 404, 408, 409, 429, 500, 503, 529])
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-should-retry": st.sampled_from(["true", "false"]),
        "retry-after": st.sampled_from(["0", "1", "30", "120", "x"]),
    },
)


@given(
    outcomes=st.lists(st.tuples(OUTCOMES, HEADERS), min_size=1, max_size=40),
    max_retries=st.integers(0, 10),
    keys=st.integers(1, 3),
    byok=st.booleans(),
)
def test_the_loop_always_ends_within_its_budget(
    outcomes: list[tuple[int | None, dict[str, str]]], max_retries: int, keys: int, byok: bool
) -> None:
    """Replaying upstream outcomes: retries <= max_retries, failovers < keys, none for BYOK."""
    pool, clock = make_pool(keys)
    key = None if byok else pool.choose()
    before = pool.status()
    tried: set[int] = set()
    attempt = retries = failovers = 0
    for status, headers in outcomes:
        step = next_step(
            status,
            headers,
            attempt=attempt,
            max_retries=max_retries,
            byok=byok,
            pool=pool,
            key=key,
            tried=tried,
            rng=random.Random(0),
            now=NOW,
        )
        assert 0 <= step.delay <= 60
        if step.action in ("done", "give_up"):
            break
        retries += step.action == "retry"
        failovers += step.action == "failover"
        assert step.delay == 0 or step.action == "retry"
        key, attempt = step.key, step.attempt
        clock.now += step.delay
    assert retries == attempt <= max_retries
    assert failovers <= keys - 1
    if byok:
        assert failovers == 0
        assert pool.status() == before
        assert tried == set()
