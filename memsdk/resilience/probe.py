"""The recovery probe: while a breaker is open, ask the dependency directly, once an interval.

The first answer ends the open period; the half-open probes of real traffic then decide
whether to close, as always. Without this, recovery waits out the open period, which
doubles on every failed probe up to breaker_max_open_seconds: every second of that after
the store is back is a second of degraded replies. One small read per interval per process
is all it costs while the store is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from memsdk.backoff import Backoff
from memsdk.errors import StoreError
from memsdk.resilience.breaker import CircuitBreaker
from memsdk.tasks import stop_tasks

__all__ = ["RecoveryProbe"]


class RecoveryProbe:
    """Probes a dependency while its breaker is open; one task at a time, owned and stopped."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        probe: Callable[[], Awaitable[object]],
        *,
        interval_s: float,
        timeout_s: float,
        backoff: Backoff | None = None,
    ) -> None:
        """`probe`: one call past the breaker (it would refuse it); an interval of 0 disables
        probing. `backoff`: the wait between probes (default: the interval, +-20%)."""
        self._breaker = breaker
        self._probe = probe
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._backoff = backoff if backoff is not None else Backoff.steady(interval_s, 0.2)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        """Probe until the breaker leaves open (a no-op if already probing or stopped)."""
        running = self._task is not None and not self._task.done()
        if self._interval_s > 0 and not self._stopped and not running:
            self._task = asyncio.ensure_future(self._probe_while_open())

    async def stop(self) -> None:
        """Stop probing for good; returns once the task has ended."""
        self._stopped = True
        if self._task is not None:
            await stop_tasks([self._task])

    async def _probe_while_open(self) -> None:
        failures = 0
        while self._breaker.state == "open":
            failures += 1
            await self._backoff.wait(failures)
            if self._breaker.state != "open":
                return
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._probe()
            except (TimeoutError, StoreError):
                continue
            self._breaker.end_open_period()
