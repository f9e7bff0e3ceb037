"""Upstream retry policy and the centralized key pool: the decisions, none of the I/O.

What to do after one upstream attempt is decided here, once, for every dialect and for
blocking and streaming calls alike; the core's loop only sends, sleeps and returns. The rules:

1. **The SDKs' retries** (docs/behaviour.md §8.1). Connection errors and timeouts, 408,
   409, 429 and every status >= 500 (529 included) are retried, unless the upstream says
   otherwise with ``x-should-retry: true|false``. The delay honours ``retry-after-ms``, then
   ``retry-after`` (seconds or an HTTP date) when it lies within 0..60 s; otherwise it is
   0.5 s * 2**attempt capped at 8 s, minus up to 25 % random jitter.
2. **Key failover.** A centralized key answered with 429 rests until the upstream's
   Retry-After; one answered with 401 leaves the rotation for the provider's
   ``key_cooldown``. Either way the request moves to another usable key at once, without
   spending a retry. A 403 moves the request too but never rests the key: it refuses one
   model or one request, not the key. A cooldown only ever *moves* traffic: with no other
   usable key the upstream's own answer is relayed, and when every key is cooling down
   after a 401 the one that failed longest ago is still used (one user's odd request must
   not take a one-key provider down for everyone). Requests that bring their own key
   (BYOK) never fail over and never touch the pool: their key is not ours to rest.
3. **Bounded.** A request fails over at most once per key (``tried`` grows by one each time)
   and retries at most ``max_retries`` times, so the loop always ends.
4. **Pure.** No sockets, no sleeping, no reading the clock behind the caller's back: the pool
   takes a clock (``trio.current_time`` in the gateway, a fake one in tests), HTTP dates are
   compared with an injectable ``now``, jitter comes from an injectable ``random.Random``.
5. **Secrets never show.** A :class:`Key` prints and logs only its masked hint.

The pool lives in one process; each gateway worker keeps its own view of which keys rest,
which costs at most one extra 429 per worker and key.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final, Literal

from bridge.config import mask_secret

__all__ = [
    "DEFAULT_RATE_LIMIT_REST",
    "MAX_HONOURED_RETRY_AFTER",
    "RETRY_STATUSES",
    "Action",
    "Key",
    "KeyPool",
    "NoKeyAvailable",
    "Step",
    "is_retry_status",
    "next_step",
    "parse_retry_after",
    "retry_delay",
    "should_retry",
]

logger = logging.getLogger("bridge.keys")

RETRY_STATUSES: Final = frozenset({408, 409, 429})
"""Retried statuses below 500; every status >= 500 is retried too (:func:`is_retry_status`)."""

MAX_HONOURED_RETRY_AFTER: Final = 60.0
"""A Retry-After longer than this (seconds) is ignored by the retry delay, as the SDKs do."""

DEFAULT_RATE_LIMIT_REST: Final = 1.0
"""How long a key rests after a 429 that did not say how long to wait (seconds)."""

_BACKOFF_BASE: Final = 0.5
_BACKOFF_CAP: Final = 8.0
_JITTER: Final = 0.25
_KEY_FAILURES: Final = frozenset({401, 403, 429})


# --- Retries ---------------------------------------------------------------------------------


def is_retry_status(status: int) -> bool:
    """Whether the SDKs retry ``status`` when the upstream does not say otherwise."""
    return status in RETRY_STATUSES or status >= 500


def should_retry(status: int | None, headers: Mapping[str, str]) -> bool:
    """Whether an attempt that ended with ``status`` deserves another try.

    ``status`` is ``None`` for a connection error or a timeout: no response, so retry.
    ``headers`` has lower-case keys; ``x-should-retry: true|false`` overrides the status.
    """
    override = headers.get("x-should-retry", "").strip().lower()
    if override in ("true", "false"):
        return override == "true"
    return status is None or is_retry_status(status)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """How long the upstream asks us to wait, in seconds, or ``None`` if it does not say.

    ``retry-after-ms`` (milliseconds, may be fractional) wins over ``retry-after`` (seconds,
    or an HTTP date compared with ``now``, the wall-clock time, default :func:`time.time`).
    A value that does not parse counts as absent. No range is applied here: the retry delay
    caps it, the key pool does not (a key may rest for an hour if the upstream says so).
    """
    millis = _number(headers.get("retry-after-ms", ""))
    if millis is not None:
        return millis / 1000
    text = headers.get("retry-after", "").strip()
    seconds = _number(text)
    if seconds is not None or not text:
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - (time.time() if now is None else now)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def retry_delay(
    attempt: int,
    headers: Mapping[str, str],
    *,
    rng: random.Random | None = None,
    now: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    The upstream's Retry-After (:func:`parse_retry_after`) is honoured when it lies within
    0..60 s; beyond that it is more likely a mistake than a plan, and backing off is safer.
    Otherwise 0.5 s * 2**attempt capped at 8 s, minus up to 25 % jitter so that clients
    that failed together do not all come back together.
    """
    asked = parse_retry_after(headers, now=now)
    if asked is not None and 0 <= asked <= MAX_HONOURED_RETRY_AFTER:
        return asked
    delay = min(_BACKOFF_BASE * 2.0 ** min(attempt, 16), _BACKOFF_CAP)
    draw = random.random() if rng is None else rng.random()
    return delay * (1 - _JITTER * draw)


# --- The key pool ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One centralized key of a pool: its position, the secret and the hint logs may show."""

    index: int
    secret: str = field(repr=False)
    hint: str


class NoKeyAvailable(Exception):
    """Every key is resting or disabled; ``retry_after`` seconds until the soonest is back.

    The gateway answers 429 with ``Retry-After: ceil(retry_after)``: the client waits, and
    the upstream is not asked with a key we know it refuses.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"every provider key is resting; the soonest is back in {retry_after:g} s")
        self.retry_after = retry_after


_State = Literal["ok", "resting", "disabled"]


class KeyPool:
    """The centralized keys of one provider, used round-robin; a key that fails rests.

    A 429 rests a key until the upstream's Retry-After (``resting``); a 401 takes it out of
    the rotation for ``cooldown`` seconds (``disabled``), long enough not to hammer the
    upstream with a revoked key, short enough that a rotated key comes back by itself. A
    disabled key is still chosen when no key is usable (see :meth:`choose`). A success puts
    a key back at once: the upstream has just accepted it. Rests never shorten each other:
    the later end wins.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        clock: Callable[[], float],
        cooldown: float = 60.0,
        name: str = "",
    ) -> None:
        if not secrets or not all(secrets):
            raise ValueError(
                f"a KeyPool needs at least one key and no empty ones, got {len(secrets)} keys;"
                " build it from ProviderConfig.all_keys, and use no pool when that is empty"
            )
        if not cooldown > 0:
            raise ValueError(f"cooldown must be a number of seconds > 0, got {cooldown!r}")
        self._keys = tuple(Key(i, secret, mask_secret(secret)) for i, secret in enumerate(secrets))
        self._clock = clock
        self._cooldown = cooldown
        self._name = name
        self._until = [0.0] * len(self._keys)  # clock time a key is usable again
        self._state: list[_State] = ["ok"] * len(self._keys)  # why it rests, until _until
        self._next = 0
        self.rejections = 0
        """401s seen with this pool's keys since start (shown by ``/readyz``)."""

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        hints = ", ".join(key.hint for key in self._keys)
        return f"KeyPool({self._name!r}, keys=[{hints}])"

    def choose(self, exclude: Collection[int] = ()) -> Key:
        """The next usable key in round-robin order, skipping the indices in ``exclude``.

        With none usable, a key cooling down after a 401 (not in ``exclude``) is still
        better than refusing: the one disabled longest ago. Only when every candidate
        rests after a 429 (the upstream said when to come back) does this raise
        :class:`NoKeyAvailable`, with the wait until the soonest key not in ``exclude``
        is back (the soonest of all if every key is excluded).
        """
        now = self._clock()
        count = len(self._keys)
        for offset in range(count):
            index = (self._next + offset) % count
            if index not in exclude and self._until[index] <= now:
                self._next = index + 1
                return self._keys[index]
        disabled = [i for i in range(count) if i not in exclude and self._state[i] == "disabled"]
        if disabled:
            return self._keys[min(disabled, key=lambda i: self._until[i])]
        candidates = [i for i in range(count) if i not in exclude] or range(count)
        soonest = min(self._until[i] for i in candidates)
        raise NoKeyAvailable(max(soonest - now, 0.0))

    def rate_limited(self, key: Key, retry_after: float | None) -> None:
        """The upstream answered 429 with ``key``: rest it for ``retry_after`` seconds.

        ``None`` (or a negative value, a date in the past) rests it for
        :data:`DEFAULT_RATE_LIMIT_REST`.
        """
        rest = retry_after if retry_after is not None and retry_after >= 0 else None
        self._rest(key, "resting", DEFAULT_RATE_LIMIT_REST if rest is None else rest)

    def rejected(self, key: Key) -> None:
        """The upstream answered 401 with ``key``: out of the rotation for the cooldown,
        while another key is usable (:meth:`choose` still falls back to it).

        Logged as an error, because a person must act: the key is revoked or expired.
        The log names the key by its masked hint only.
        """
        self._rest(key, "disabled", self._cooldown)
        self.rejections += 1
        logger.error(
            "provider %r key %s was rejected by the upstream (401): out of rotation for"
            " %g s while another key is usable; check or replace it",
            self._name,
            key.hint,
            self._cooldown,
        )

    def succeeded(self, key: Key) -> None:
        """The upstream accepted ``key``: it is usable again, whatever rested it."""
        self._until[key.index] = 0.0
        self._state[key.index] = "ok"

    def status(self) -> list[dict[str, object]]:
        """Per key, for an admin view: ``hint``, ``state`` and ``until`` (clock time or None)."""
        now = self._clock()
        rows: list[dict[str, object]] = []
        for key in self._keys:
            until = self._until[key.index]
            resting = until > now
            rows.append(
                {
                    "hint": key.hint,
                    "state": self._state[key.index] if resting else "ok",
                    "until": until if resting else None,
                }
            )
        return rows

    def _rest(self, key: Key, state: _State, seconds: float) -> None:
        until = self._clock() + seconds
        if until >= self._until[key.index]:
            self._until[key.index] = until
            self._state[key.index] = state


# --- The decision after one attempt ----------------------------------------------------------

Action = Literal["done", "retry", "failover", "give_up"]


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after one attempt, and with what for the next one.

    ``key`` and ``attempt`` are the key and retry count of the next attempt (unchanged for
    ``done`` and ``give_up``); ``delay`` is the wait before it, in seconds.
    """

    action: Action
    key: Key | None
    attempt: int
    delay: float = 0.0


def next_step(
    status: int | None,
    headers: Mapping[str, str],
    *,
    attempt: int,
    max_retries: int,
    byok: bool,
    pool: KeyPool | None,
    key: Key | None,
    tried: set[int],
    rng: random.Random | None = None,
    now: float | None = None,
) -> Step:
    """Decide what follows an attempt that ended with ``status`` (``None``: no response).

    ``attempt`` counts the retries already made (0 after the first call). With a
    centralized key (not ``byok``, a ``pool`` and the ``key`` used), this also tells the
    pool how the key fared and adds a failed key's index to ``tried``. The decision table,
    first matching row wins:

    ======================================  =================================================
    outcome                                 step
    ======================================  =================================================
    429/401/403, centralized key, another   ``failover`` to that key, after 0 s, same
    key not in ``tried`` can be chosen      ``attempt``: a failover spends no retry (429
                                            rests the key, 401 disables it, 403 neither)
    401/403, centralized key                ``give_up``: no key left to try; the upstream's
                                            answer is relayed, the key stays in use
    :func:`should_retry` and                ``retry`` with the same key after
    ``attempt < max_retries``               :func:`retry_delay`, ``attempt + 1``
    :func:`should_retry`                    ``give_up``: retries spent
    anything else (2xx, 400, a 500 with     ``done``: the response is final
    ``x-should-retry: false``...)
    ======================================  =================================================

    ``give_up`` and ``done`` both mean "return what we have"; with no response (``None``)
    the caller answers 502. The core's loop: ``step = next_step(...)``; on ``done`` or
    ``give_up`` return; else sleep ``step.delay`` and send again with ``step.key`` and
    ``step.attempt``. It ends: ``tried`` grows with each failover, ``attempt`` with each retry.
    """
    if not byok and pool is not None and key is not None:
        if status is not None and status < 400:
            pool.succeeded(key)
        elif status in _KEY_FAILURES:
            if status == 429:
                pool.rate_limited(key, parse_retry_after(headers, now=now))
            elif status == 401:
                pool.rejected(key)
            tried.add(key.index)
            try:
                return Step("failover", pool.choose(exclude=tried), attempt)
            except NoKeyAvailable:
                if status != 429:
                    return Step("give_up", key, attempt)
    if should_retry(status, headers):
        if attempt < max_retries:
            return Step("retry", key, attempt + 1, retry_delay(attempt, headers, rng=rng, now=now))
        return Step("give_up", key, attempt)
    return Step("done", key, attempt)
