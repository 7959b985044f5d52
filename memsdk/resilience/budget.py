"""A retry budget: retries may be at most a fraction of recent calls, plus a small reserve.

Modelled on Finagle's RetryBudget (also used by Linkerd): every first attempt deposits
`ratio` tokens, every retry withdraws one, and both deposits and withdrawals expire after
`window_s`. A reserve of `min_per_s * window_s` tokens lets a low-traffic client still retry.
So over any window, retries <= ratio * calls + min_per_s * window_s: an outage can never
multiply the load on a dependency by more than 1 + ratio (the original design's retry
storm kept a database pegged for minutes).

Like Finagle, the window is a ring of ten buckets of `window_s / 10`; a bucket ages out
whole, so a deposit or withdrawal counts for between 0.9 and 1.0 `window_s`. We keep integer
counts of calls and retries per bucket and derive the balance, so no float drifts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from memsdk.errors import ConfigError

__all__ = ["BudgetStats", "RetryBudget"]

_BUCKETS = 10
# ratio * calls is a float (0.29 * 100 == 28.999999999999996): forgive rounding, not a retry.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStats:
    """Totals since creation (calls, retries, refused) and the tokens available now."""

    calls: int
    retries: int
    refused: int
    balance: float


class RetryBudget:
    """Token bucket: retries may be at most `ratio` of recent calls, plus `min_per_s` per second."""

    def __init__(
        self,
        *,
        ratio: float = 0.1,
        min_per_s: float = 10.0,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start with only the reserve; raise ConfigError on a negative or non-finite value."""
        _non_negative("ratio", ratio)
        _non_negative("min_per_s", min_per_s)
        _non_negative("window_s", window_s)
        if window_s == 0:
            raise ConfigError("RetryBudget.window_s must be > 0 seconds, got 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        self._per_bucket_s = _BUCKETS / window_s
        self._reserve = min_per_s * window_s
        self._b_calls = [0] * _BUCKETS
        self._b_retries = [0] * _BUCKETS
        self._win_calls = 0
        self._win_retries = 0
        self._bucket = int(clock() * self._per_bucket_s)
        self._calls = 0
        self._retries = 0
        self._refused = 0

    def record_call(self) -> None:
        """Record a first attempt; it deposits `ratio` tokens for the next `window_s`."""
        self._roll()
        self._b_calls[self._bucket % _BUCKETS] += 1
        self._win_calls += 1
        self._calls += 1

    def try_spend(self) -> bool:
        """Take one token for a retry and return True, or count a refusal and return False."""
        self._roll()
        if self._win_retries + 1 > self.ratio * self._win_calls + self._reserve + _EPSILON:
            self._refused += 1
            return False
        self._b_retries[self._bucket % _BUCKETS] += 1
        self._win_retries += 1
        self._retries += 1
        return True

    def stats(self) -> BudgetStats:
        """Return the totals and the balance (retries still allowed in the window ending now)."""
        self._roll()
        return BudgetStats(
            calls=self._calls,
            retries=self._retries,
            refused=self._refused,
            balance=self.ratio * self._win_calls + self._reserve - self._win_retries,
        )

    def _roll(self) -> None:
        """Advance the window to the clock's now, emptying the buckets that aged out."""
        bucket = int(self._clock() * self._per_bucket_s)
        steps = bucket - self._bucket
        if steps <= 0:
            return  # same bucket, or a clock that stepped back: keep counting where we are
        for absolute in range(self._bucket + 1, self._bucket + 1 + min(steps, _BUCKETS)):
            slot = absolute % _BUCKETS
            self._win_calls -= self._b_calls[slot]
            self._win_retries -= self._b_retries[slot]
            self._b_calls[slot] = self._b_retries[slot] = 0
        self._bucket = bucket


def _non_negative(field: str, value: float) -> None:
    """Require a finite number >= 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= 0):
        raise ConfigError(f"RetryBudget.{field} must be a finite number >= 0, got {value!r}")
