"""A bulkhead: a bound on calls in flight to one dependency, with a FIFO queue in front.

There is no timeout here on purpose: the caller wraps the whole call, wait included, in its
own deadline (`async with asyncio.timeout(d): async with bulkhead.slot(): ...`), so time
spent queueing counts against that deadline. A freed slot is handed
straight to the oldest waiter, so a newcomer cannot overtake the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType

from memsdk.errors import BackpressureError, ConfigError

__all__ = ["Bulkhead", "BulkheadFullError", "BulkheadStats"]


class BulkheadFullError(BackpressureError):
    """The bulkhead's queue is full: the call was shed without waiting."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadStats:
    """Calls in flight and waiting now; the peak in flight and calls shed since creation."""

    in_flight: int
    waiting: int
    peak_in_flight: int
    rejected: int


class Bulkhead:
    """At most `limit` calls in flight; the rest wait in FIFO order, on the caller's deadline."""

    def __init__(self, limit: int, *, max_waiting: int | None = None) -> None:
        """`max_waiting`: queue length beyond which acquiring raises BulkheadFullError at once."""
        if not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
            raise ConfigError(f"Bulkhead limit must be an int >= 1, got {limit!r}")
        if max_waiting is not None and not (
            isinstance(max_waiting, int) and not isinstance(max_waiting, bool) and max_waiting >= 0
        ):
            raise ConfigError(
                f"Bulkhead max_waiting must be None or an int >= 0, got {max_waiting!r}"
            )
        self.limit = limit
        self.max_waiting = max_waiting
        self._in_flight = 0
        self._peak = 0
        self._rejected = 0
        # Futures of the waiting callers, oldest first; a waiter removes its own on cancel.
        self._waiters: deque[asyncio.Future[None]] = deque()
        # The context manager holds no per-call state, so one instance serves every call.
        self._slot = _Slot(self)

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Return a context manager holding one slot for its body; may raise BulkheadFullError."""
        return self._slot

    def stats(self) -> BulkheadStats:
        """Return a snapshot of the counters."""
        return BulkheadStats(
            in_flight=self._in_flight,
            waiting=len(self._waiters),
            peak_in_flight=self._peak,
            rejected=self._rejected,
        )

    async def _acquire(self) -> None:
        """Take a slot, waiting in line if none is free; cancellation leaves no trace."""
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            return
        if self.max_waiting is not None and len(self._waiters) >= self.max_waiting:
            self._rejected += 1
            raise BulkheadFullError(
                f"bulkhead full: {self._in_flight} calls in flight and {len(self._waiters)} "
                "waiting; shed load or retry later"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just before the cancellation landed: pass it on.
                self._release()
            else:
                # _release skips cancelled futures, so it may have popped ours already.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        # _release handed its slot over: _in_flight already counts us.

    def _release(self) -> None:
        """Give the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1


class _Slot(AbstractAsyncContextManager[None]):
    """`async with bulkhead.slot():` acquires on entry and releases on exit."""

    __slots__ = ("_bulkhead",)

    def __init__(self, bulkhead: Bulkhead) -> None:
        """Bind to the bulkhead whose slots this hands out."""
        self._bulkhead = bulkhead

    async def __aenter__(self) -> None:
        """Wait for a slot (FIFO); raise BulkheadFullError if the queue is full."""
        await self._bulkhead._acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the slot; never swallows the body's exception."""
        self._bulkhead._release()
