"""A circuit breaker that opens on a failure rate or a slow-call rate over a sliding window.

Why our own: on PyPI, aiobreaker is unmaintained since 2021, and purgatory and pybreaker
count consecutive failures only. None offers what memsdk needs: a failure
rate over a sliding time window with a minimum number of calls, a slow-call rate, and a
limited number of half-open probes. This module is small enough to own.

States::

    closed --(rate over threshold, >= min_calls)--> open
    closed --(consecutive_failures failures in a row)--> open
    open --(open period elapsed, seen lazily on the next read)--> half_open
    half_open --(half_open_probes probes succeeded)--> closed   (window cleared, period reset)
    half_open --(any probe failed)--> open                       (period doubled, capped)

The window is a ring of ten buckets of `window_s / 10` each (one second with the defaults);
a bucket ages out whole, so an outcome counts for between 0.9 and 1.0 `window_s`. Recording
only bumps integer counters in the current bucket: the closed path allocates nothing per call.

Why two ways to open: a rate over a window judges a brownout fairly, but a hard outage
must first outweigh the successes still in the window, which takes about
`failure_rate * window_s` (5 s with the defaults), and every call in that time pays a
failure. A run of `consecutive_failures` failures with no success between them is an
outage whatever the traffic (at 10 % random failures, 20 in a row happen with odds of
1e-20), so it opens at once. The run is not timed: any success, or a close, ends it.
A call its caller gave up on (record_timeout) is slow, not failed, and leaves the run as
it is: timeouts are judged by the slow-call rate, over enough calls.

Usage, one result per acquired call::

    if not breaker.try_acquire():
        raise Unavailable(...)              # fail fast, the dependency is presumed down
    start = clock()
    try:
        result = await call()
    except Throttled:                       # one hot key says nothing about the dependency
        breaker.record_neutral()
        raise
    except BaseException:
        breaker.record_failure(clock() - start)
        raise
    breaker.record_success(clock() - start)

The breaker hands out no per-call token, so in half_open it cannot tell a probe's result
from the late result of a call admitted while still closed: any result seen in half_open
while probes are outstanding is taken as a probe's. Results that arrive in open, or in
half_open with no probe outstanding, are dropped. Meant for one event loop; not thread-safe.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from memsdk.errors import ConfigError

__all__ = ["BreakerPolicy", "BreakerState", "BreakerStats", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]

_logger = logging.getLogger(__name__)

# Ten buckets make the window slide in 10 % steps: precise enough for a rate, and the
# bookkeeping stays a fixed few lists of ints however many calls go through.
_BUCKETS = 10


def _is_number(value: object) -> bool:
    """True for an int or float that is not a bool and not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _positive(field: str, value: float) -> None:
    """Require a finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"BreakerPolicy.{field} must be a finite number > 0, got {value!r}")


def _rate(field: str, value: float) -> None:
    """Require a fraction in (0, 1]."""
    if not (_is_number(value) and 0 < value <= 1):
        raise ConfigError(f"BreakerPolicy.{field} must be a fraction in (0, 1], got {value!r}")


def _count(field: str, value: int) -> None:
    """Require an int >= 1."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"BreakerPolicy.{field} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers; validated at construction."""

    window_s: float = 10.0
    min_calls: int = 50
    failure_rate: float = 0.5
    slow_call_s: float = 0.25
    slow_rate: float = 0.8
    open_s: float = 5.0
    max_open_s: float = 15.0
    half_open_probes: int = 3
    consecutive_failures: int = 20

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        _positive("window_s", self.window_s)
        _count("min_calls", self.min_calls)
        _rate("failure_rate", self.failure_rate)
        # math.inf is allowed here: it switches slow-call detection off.
        if not (_is_number(self.slow_call_s) and self.slow_call_s > 0):
            raise ConfigError(
                f"BreakerPolicy.slow_call_s must be > 0 seconds (math.inf disables slow-call "
                f"detection), got {self.slow_call_s!r}"
            )
        _rate("slow_rate", self.slow_rate)
        _positive("open_s", self.open_s)
        _positive("max_open_s", self.max_open_s)
        if self.max_open_s < self.open_s:
            raise ConfigError(
                f"BreakerPolicy.max_open_s ({self.max_open_s!r}) must be >= open_s "
                f"({self.open_s!r})"
            )
        _count("half_open_probes", self.half_open_probes)
        _count("consecutive_failures", self.consecutive_failures)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStats:
    """A snapshot of a breaker; counts are for the window ending now, totals since creation."""

    state: BreakerState
    calls_in_window: int
    failures_in_window: int
    slow_in_window: int
    rejected: int
    opened: int
    last_change_s: float


class CircuitBreaker:
    """Fails calls fast while a dependency looks unhealthy; see the module docstring."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy = BreakerPolicy(),  # frozen, so one shared default is safe
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        """Start closed with an empty window; `clock` returns monotonic seconds."""
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        # Hot-path copies of the policy: attribute reads on self are cheaper than via policy.
        self._per_bucket_s = _BUCKETS / policy.window_s
        self._min_calls = policy.min_calls
        self._failure_rate = policy.failure_rate
        self._slow_call_s = policy.slow_call_s
        self._slow_rate = policy.slow_rate
        self._probes = policy.half_open_probes
        self._max_streak = policy.consecutive_failures
        self._streak = 0  # closed-state failures since the last success (neutral: no change)

        self._state: BreakerState = "closed"
        self._last_change_s = clock()
        self._rejected = 0
        self._opened = 0
        # Open period: open_s, doubled on each re-open from half_open, reset on close.
        self._open_period_s = policy.open_s
        self._open_until = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        # The window: per-bucket counters, their running totals, and the absolute index
        # (clock / bucket width) of the bucket being filled.
        self._b_calls = [0] * _BUCKETS
        self._b_failures = [0] * _BUCKETS
        self._b_slow = [0] * _BUCKETS
        self._calls = 0
        self._failures = 0
        self._slow = 0
        self._bucket = int(self._last_change_s * self._per_bucket_s)

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose period has elapsed turns half_open here."""
        if self._state == "open" and self._clock() >= self._open_until:
            self._transition("half_open", self._open_until)
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until try_acquire may succeed: the rest of the open period, else 0."""
        if self.state == "open":
            return max(0.0, self._open_until - self._clock())
        return 0.0

    def try_acquire(self) -> bool:
        """Return True if a call may go now; False is a fail-fast rejection, and is counted."""
        if self._state == "closed":
            return True
        if self.state == "half_open" and self._probes_out + self._probes_ok < self._probes:
            self._probes_out += 1
            return True
        self._rejected += 1
        return False

    def record_success(self, duration_s: float) -> None:
        """Record that an acquired call succeeded after `duration_s` seconds."""
        if self._state == "closed":
            self._record(False, duration_s > self._slow_call_s)
        elif self._take_probe():
            self._probes_ok += 1
            if self._probes_ok >= self._probes:
                self._close()

    def record_failure(self, duration_s: float) -> None:
        """Record that an acquired call failed because of the dependency."""
        if self._state == "closed":
            self._record(True, duration_s > self._slow_call_s)
        elif self._take_probe():
            self._reopen()

    def record_timeout(self, duration_s: float) -> None:
        """Record that an acquired call was given up by its caller after `duration_s`.

        Closed: a slow call (it counts toward the slow-call rate), not a failure, and it
        neither extends nor ends a run of failures: a cold start, where the first calls of
        a fresh process all wait on new connections at once, must not look like an outage.
        Half-open: the probe failed.
        """
        if self._state == "closed":
            self._record(False, duration_s > self._slow_call_s, judges_run=False)
        elif self._take_probe():
            self._reopen()

    def end_open_period(self) -> None:
        """An out-of-band check found the dependency answering: stop waiting, go half-open.

        Only the open period is cut short; the half-open probes still decide whether to
        close, exactly as when the period runs out.
        """
        if self.state == "open":
            self._open_until = self._clock()
            self._transition("half_open", self._open_until)

    def record_neutral(self) -> None:
        """Record that an acquired call ended with no verdict on health; frees a probe slot."""
        if self._state != "closed":
            self._take_probe()

    def stats(self) -> BreakerStats:
        """Return a snapshot; window counts cover the window ending at the clock's now."""
        state = self.state
        self._roll(int(self._clock() * self._per_bucket_s))
        return BreakerStats(
            state=state,
            calls_in_window=self._calls,
            failures_in_window=self._failures,
            slow_in_window=self._slow,
            rejected=self._rejected,
            opened=self._opened,
            last_change_s=self._last_change_s,
        )

    def reset(self) -> None:
        """Return to closed with an empty window and the first open period; totals are kept."""
        self._clear()
        if self._state != "closed":
            self._transition("closed", self._clock())

    def _record(self, failed: bool, slow: bool, *, judges_run: bool = True) -> None:
        """Count one closed-state outcome in the current bucket, then open if over a rate."""
        now = self._clock()
        bucket = int(now * self._per_bucket_s)
        if bucket != self._bucket:
            self._roll(bucket)
        slot = self._bucket % _BUCKETS
        self._b_calls[slot] += 1
        self._calls += 1
        if failed:
            self._b_failures[slot] += 1
            self._failures += 1
            self._streak += 1
        elif judges_run:
            self._streak = 0
        if slow:
            self._b_slow[slot] += 1
            self._slow += 1
        calls = self._calls
        if self._streak >= self._max_streak or (
            calls >= self._min_calls
            and (
                self._failures / calls >= self._failure_rate
                or self._slow / calls >= self._slow_rate
            )
        ):
            # The period was reset to open_s when the breaker last closed.
            self._open_until = now + self._open_period_s
            self._transition("open", now)

    def _roll(self, bucket: int) -> None:
        """Advance the window to absolute bucket `bucket`, emptying the buckets that aged out."""
        steps = bucket - self._bucket
        if steps <= 0:
            return  # same bucket, or a clock that stepped back: keep counting where we are
        if steps >= _BUCKETS:
            self._clear_window()
        else:
            for absolute in range(self._bucket + 1, bucket + 1):
                slot = absolute % _BUCKETS
                self._calls -= self._b_calls[slot]
                self._failures -= self._b_failures[slot]
                self._slow -= self._b_slow[slot]
                self._b_calls[slot] = self._b_failures[slot] = self._b_slow[slot] = 0
        self._bucket = bucket

    def _take_probe(self) -> bool:
        """Retire one outstanding half-open probe; False if none is (a late or stray result)."""
        if self.state != "half_open" or self._probes_out == 0:
            return False
        self._probes_out -= 1
        return True

    def _close(self) -> None:
        """Half-open probes all succeeded: close with a clean slate."""
        self._clear()
        self._transition("closed", self._clock())

    def _reopen(self) -> None:
        """A probe failed: open again for twice as long as last time, up to max_open_s."""
        now = self._clock()
        self._probes_out = self._probes_ok = 0
        self._open_period_s = min(self._open_period_s * 2, self.policy.max_open_s)
        self._open_until = now + self._open_period_s
        self._transition("open", now)

    def _clear(self) -> None:
        """Forget the window, the probes and any grown open period."""
        self._clear_window()
        self._streak = 0
        self._probes_out = self._probes_ok = 0
        self._open_period_s = self.policy.open_s

    def _clear_window(self) -> None:
        """Zero every bucket and the running totals."""
        for counters in (self._b_calls, self._b_failures, self._b_slow):
            counters[:] = [0] * _BUCKETS
        self._calls = self._failures = self._slow = 0

    def _transition(self, new: BreakerState, at: float) -> None:
        """Enter `new` as of clock value `at` and tell on_change; its errors are only logged."""
        old = self._state
        self._state = new
        self._last_change_s = at
        if new == "open":
            self._opened += 1
        if self._on_change is None:
            return
        try:
            self._on_change(self.name, old, new)
        except Exception:
            # The callback feeds logs and metrics; a bug there must not break the data path.
            _logger.exception(
                "on_change callback of circuit breaker %r raised on %s -> %s", self.name, old, new
            )
