"""The background flusher: drains acknowledged WAL records to the store, session by session.

It knows neither the store nor the record format. The client gives it:
- `apply(key, batch)`: write one batch of a key's records to the store in one round trip;
  returns when they are in the store, raises when they are not;
- `is_retryable(exc)`: whether a failure is worth another attempt (store down, throttled)
  or final (the records can never be written: ownership changed, a collision);
- `on_reject(key, batch, exc)`: keep final failures somewhere an operator will see them;
- `confirm(lsns)`: tell the log the records are safe, so their segments can go.

Records of one key are applied in log order, one batch at a time, so a session's turns
reach the store in the order they were acknowledged. Keys are independent: up to
`concurrency` of them are written at once.

While the store fails, every worker waits for one shared, growing backoff (full jitter):
an outage costs about one probe per interval, not one per pending session.

Recovery is a slow start: after a failure one batch at a time is in flight, and each
success lets one more go, up to `concurrency`. A backlog of every session's pending turns
therefore reaches a store that just came back (and is serving live traffic again) as a
ramp, not as `concurrency` large transactions at once that make it slow, trip the circuit
breaker again and stall the drain. When the
failure says when the store may be tried again (`retry_after`: an open circuit breaker
refused the call without sending it), the workers wait exactly that long instead: the
refusal says nothing new about the store, so the backoff does not grow, and the backlog
starts draining the moment the breaker lets a probe through.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from memsdk.backoff import Backoff
from memsdk.tasks import stop_tasks

__all__ = ["FlushTimeoutError", "Flusher", "FlusherStats", "FlusherStoppedError", "PendingEntry"]

logger = logging.getLogger(__name__)

# The longest a waiting worker sleeps before looking at the shared backoff again.
_BACKOFF_SLICE_S = 0.25


class PendingEntry(Protocol):
    """What the flusher needs of a record: its log position, its key and its size."""

    @property
    def lsn(self) -> int: ...

    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...


E = TypeVar("E", bound=PendingEntry)


class FlushTimeoutError(Exception):
    """The wait ended with records still pending."""


class FlusherStoppedError(Exception):
    """The flusher was stopped with records still pending (they stay in the log)."""


@dataclass(frozen=True, slots=True)
class FlusherStats:
    """Counters since start; no I/O."""

    pending_records: int
    pending_keys: int
    applied_batches: int
    applied_records: int
    failed_attempts: int
    rejected_records: int


class Flusher(Generic[E]):
    """Applies pending entries per key in log order, with shared backoff while the store fails."""

    def __init__(
        self,
        *,
        apply: Callable[[str, list[E]], Awaitable[None]],
        confirm: Callable[[list[int]], None],
        is_retryable: Callable[[BaseException], bool],
        on_reject: Callable[[str, list[E], BaseException], Awaitable[None]],
        batch_fits: Callable[[Sequence[E], E], bool],
        concurrency: int,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] | None = None,
        retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    ) -> None:
        self._apply = apply
        self._retry_after = retry_after
        self._confirm = confirm
        self._is_retryable = is_retryable
        self._on_reject = on_reject
        self._batch_fits = batch_fits
        self._concurrency = concurrency
        # Shared by every worker: one failure backs them all off (the store is one).
        self.backoff = backoff if backoff is not None else Backoff.exponential(0.05, 5.0)
        self._monotonic = monotonic
        self._by_key: dict[str, deque[E]] = {}
        self._pending: dict[int, E] = {}  # insertion order is log order
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._changed = asyncio.Condition()
        self._failures = 0
        self._resume_at = 0.0
        # Batches allowed in flight: 1 after a failure, +1 per success, up to concurrency.
        self._window = concurrency
        # Bumped on every failure: a batch sent before the last failure says nothing about
        # the store since, so its success does not open the window (as in TCP slow start).
        self._epoch = 0
        self._in_flight = 0
        self._window_changed = asyncio.Condition()
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False
        self._applied_batches = 0
        self._applied_records = 0
        self._failed_attempts = 0
        self._rejected_records = 0
        self._last_lsn = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the workers (call inside the event loop)."""
        if not self._workers and not self._stopped:
            self._workers = [
                asyncio.create_task(self._work(), name=f"memsdk-wal-flusher-{i}")
                for i in range(self._concurrency)
            ]

    async def stop(self) -> None:
        """Stop the workers for sure; an interrupted batch stays pending (its replay is
        idempotent). Waiters still waiting get FlusherStoppedError."""
        self._stopped = True
        workers, self._workers = self._workers, []
        try:
            await stop_tasks(workers)
        finally:
            async with self._changed:
                self._changed.notify_all()

    # ------------------------------------------------------------------ entries

    def add(self, entry: E) -> None:
        """Queue an acknowledged entry; entries must arrive in increasing lsn order."""
        self._pending[entry.lsn] = entry
        self._last_lsn = max(self._last_lsn, entry.lsn)
        self._by_key.setdefault(entry.key, deque()).append(entry)
        self._schedule(entry.key)

    def pending_for(self, key: str) -> list[E]:
        """Entries of `key` not yet in the store (in flight included), oldest first."""
        queue = self._by_key.get(key)
        return list(queue) if queue else []

    def pending(self) -> Iterable[E]:
        """Every entry not yet in the store, oldest first."""
        return self._pending.values()

    @property
    def last_lsn(self) -> int:
        """The newest lsn ever added."""
        return self._last_lsn

    def stats(self) -> FlusherStats:
        """Counters; no I/O."""
        return FlusherStats(
            pending_records=len(self._pending),
            pending_keys=len(self._by_key),
            applied_batches=self._applied_batches,
            applied_records=self._applied_records,
            failed_attempts=self._failed_attempts,
            rejected_records=self._rejected_records,
        )

    async def wait_through(self, lsn: int, timeout: float | None) -> None:  # noqa: ASYNC109
        """Return once every entry up to `lsn` is done; FlushTimeoutError if not in time."""
        await self._wait(lambda: self._oldest_lsn() > lsn, timeout)

    async def wait_key(self, key: str, timeout: float | None) -> None:  # noqa: ASYNC109
        """Return once `key` has no pending entry; FlushTimeoutError if not in time."""
        await self._wait(lambda: key not in self._by_key, timeout)

    async def _wait(self, done: Callable[[], bool], timeout: float | None) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: done() or self._stopped)
        except TimeoutError as exc:
            raise FlushTimeoutError from exc
        if not done():
            raise FlusherStoppedError

    def _oldest_lsn(self) -> int:
        for lsn in self._pending:
            return lsn
        return self._last_lsn + 1

    # ------------------------------------------------------------------ workers

    def _schedule(self, key: str) -> None:
        if key not in self._queued and key not in self._busy:
            self._queued.add(key)
            self._ready.put_nowait(key)

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._busy.add(key)
            try:
                await self._drain_one_batch(key)
            finally:
                self._busy.discard(key)
                if key in self._by_key:
                    self._schedule(key)

    async def _drain_one_batch(self, key: str) -> None:
        while True:
            await self._wait_out_backoff()
            async with self._window_changed:
                await self._window_changed.wait_for(lambda: self._in_flight < self._window)
                if self._resume_at > self._now():
                    continue  # a batch failed while we queued: its backoff and window first
                self._in_flight += 1
                break
        try:
            await self._attempt(key)
        finally:
            async with self._window_changed:
                self._in_flight -= 1
                self._window_changed.notify_all()

    async def _attempt(self, key: str) -> None:
        queue = self._by_key.get(key)
        if not queue:
            return
        batch = [queue[0]]
        for entry in list(queue)[1:]:
            if not self._batch_fits(batch, entry):
                break
            batch.append(entry)
        epoch = self._epoch
        try:
            await self._apply(key, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._is_retryable(exc):
                self._failed_attempts += 1
                hint = self._retry_after(exc)
                self._window = 1  # probe one batch at a time until one succeeds
                self._epoch += 1
                if hint is not None:
                    # Not sent: probe from when a call may go (plus jitter).
                    self._failures = max(self._failures, 1)
                    delay = self.backoff.after_hint(hint)
                else:
                    self._failures += 1
                    delay = self.backoff.delay(self._failures)
                self._resume_at = max(self._resume_at, self._now() + delay)
                return
            await self._on_reject(key, batch, exc)
            self._rejected_records += len(batch)
        else:
            self._failures = 0
            if epoch == self._epoch:
                self._window = min(self._concurrency, self._window + 1)
            self._applied_batches += 1
            self._applied_records += len(batch)
        await self._done(key, batch)

    def resume_now(self) -> None:
        """End the shared backoff: the store is answering again (its breaker let go)."""
        self._resume_at = 0.0

    async def _wait_out_backoff(self) -> None:
        # In slices, so that resume_now() takes effect within a slice, not a whole backoff.
        while (delay := self._resume_at - self._now()) > 0:
            await self.backoff.sleep(min(delay, _BACKOFF_SLICE_S))

    async def _done(self, key: str, batch: list[E]) -> None:
        queue = self._by_key[key]
        for _ in batch:
            queue.popleft()
        if not queue:
            del self._by_key[key]
        for entry in batch:
            self._pending.pop(entry.lsn, None)
        self._confirm([entry.lsn for entry in batch])
        async with self._changed:
            self._changed.notify_all()

    def _now(self) -> float:
        if self._monotonic is not None:
            return self._monotonic()
        return asyncio.get_running_loop().time()
