"""How long to wait before trying again: one policy object for every backoff in memsdk.

Commit conflicts, the recovery probe, Redis repairs, DynamoDB's batch deletes and the WAL
flusher all wait between attempts. Each used to compute its own delay with `random` and
sleep with `asyncio.sleep`; here a `Backoff` holds the shape of the delays (exponential
with full jitter, a steady interval with a spread, or a fixed schedule) and the two
effects it needs, `sleep` and `uniform`, injected so that a test drives any of them with a
fake sleep and a fixed random source, and reads the delays it asked for.

Full jitter (a uniform delay between 0 and the exponential cap) is AWS's recommendation
for clients that collide: writers that lose a race together do not retry together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

__all__ = ["Backoff", "Sleep", "Uniform"]

Sleep = Callable[[float], Awaitable[None]]
Uniform = Callable[[float, float], float]


class Backoff:
    """The delay after `failures` failed tries (counted from 1), and a way to wait it out."""

    def __init__(
        self,
        *,
        base_s: float,
        cap_s: float,
        spread: float | None = None,
        schedule: tuple[float, ...] = (),
        sleep: Sleep = asyncio.sleep,
        uniform: Uniform = random.uniform,
    ) -> None:
        """Prefer exponential(), steady() and fixed(), then driven_by() for fakes."""
        self.base_s = base_s
        self.cap_s = cap_s
        self._spread = spread
        self._schedule = schedule
        self._sleep = sleep
        self._uniform = uniform

    @classmethod
    def exponential(cls, base_s: float, cap_s: float) -> Backoff:
        """Full jitter: uniform in [0, min(cap_s, base_s * 2**failures)]."""
        return cls(base_s=base_s, cap_s=cap_s)

    @classmethod
    def steady(cls, interval_s: float, spread: float) -> Backoff:
        """The same interval every time, within +-`spread` of it (0.2: 80% to 120%)."""
        return cls(base_s=interval_s, cap_s=interval_s * (1 + spread), spread=spread)

    @classmethod
    def fixed(cls, delays: tuple[float, ...]) -> Backoff:
        """The given delays in turn, then the last one again; no jitter."""
        if not delays:
            raise ValueError("a fixed backoff needs at least one delay")
        return cls(base_s=delays[0], cap_s=max(delays), schedule=delays)

    def driven_by(self, *, sleep: Sleep | None = None, uniform: Uniform | None = None) -> Backoff:
        """The same policy with another sleep or random source (a test's fakes)."""
        return self._copy(
            sleep=sleep or self._sleep, uniform=uniform or self._uniform, cap_s=self.cap_s
        )

    def with_cap(self, cap_s: float) -> Backoff:
        """The same policy, its delays capped at `cap_s` (tests with short outages)."""
        return self._copy(sleep=self._sleep, uniform=self._uniform, cap_s=cap_s)

    def _copy(self, *, sleep: Sleep, uniform: Uniform, cap_s: float) -> Backoff:
        return Backoff(
            base_s=min(self.base_s, cap_s),
            cap_s=cap_s,
            spread=self._spread,
            schedule=tuple(min(d, cap_s) for d in self._schedule),
            sleep=sleep,
            uniform=uniform,
        )

    def delay(self, failures: int) -> float:
        """The delay after `failures` failed tries (1: before the first retry)."""
        failures = max(failures, 1)
        if self._schedule:
            return self._schedule[min(failures, len(self._schedule)) - 1]
        if self._spread is not None:
            return self.base_s * self._uniform(1 - self._spread, 1 + self._spread)
        # min(): the cap is reached long before 2**32, and floats stay finite.
        return self._uniform(0, min(self.cap_s, self.base_s * 2 ** min(failures, 32)))

    def after_hint(self, retry_after_s: float) -> float:
        """The delay when the other side said when to come back: then, plus a little jitter."""
        return max(retry_after_s, self.base_s) + self._uniform(0, self.base_s)

    async def wait(self, failures: int) -> None:
        """Sleep the delay after `failures` failed tries."""
        await self._sleep(self.delay(failures))

    async def sleep(self, seconds: float) -> None:
        """Sleep with the injected sleep (a caller that computed its own delay)."""
        await self._sleep(seconds)
