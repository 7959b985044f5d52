"""The flusher alone: order per session, batching, shared backoff, final failures, waits."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from memsdk.backoff import Backoff
from memsdk.wal.flusher import Flusher, FlusherStoppedError, FlushTimeoutError


@dataclass(frozen=True)
class Entry:
    lsn: int
    key: str
    size: int = 10


class Transient(Exception):
    pass


class Final(Exception):
    pass


class Recorder:
    """An `apply` whose outcome the test scripts; records every batch and concurrency."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.failures: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.confirmed: list[int] = []
        self.rejected: list[tuple[str, list[int], str]] = []

    async def apply(self, key: str, batch: list[Entry]) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.failures:
                raise self.failures.pop(0)
            self.batches.append((key, [e.lsn for e in batch]))
        finally:
            self.in_flight -= 1

    async def reject(self, key: str, batch: list[Entry], exc: BaseException) -> None:
        self.rejected.append((key, [e.lsn for e in batch], type(exc).__name__))


def make(rec: Recorder, *, concurrency: int = 4, max_batch: int = 3) -> Flusher[Entry]:
    def fits(batch: Sequence[Entry], entry: Entry) -> bool:
        return len(batch) < max_batch

    return Flusher(
        apply=rec.apply,
        confirm=rec.confirmed.extend,
        is_retryable=lambda exc: isinstance(exc, Transient),
        on_reject=rec.reject,
        batch_fits=fits,
        concurrency=concurrency,
        backoff=Backoff.exponential(0.001, 0.01),
    )


async def test_one_session_in_log_order_in_batches_while_a_batch_is_in_flight() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    flusher = make(rec)
    flusher.start()
    try:
        flusher.add(Entry(1, "a"))
        await asyncio.sleep(0.01)  # the first batch is now in flight, held by the gate
        for lsn in range(2, 8):
            flusher.add(Entry(lsn, "a"))
        assert [e.lsn for e in flusher.pending_for("a")] == list(range(1, 8))
        rec.gate.set()
        await flusher.wait_through(7, timeout=5)
    finally:
        await flusher.stop()
    assert rec.batches == [("a", [1]), ("a", [2, 3, 4]), ("a", [5, 6, 7])]
    assert rec.confirmed == list(range(1, 8))
    assert flusher.pending_for("a") == [] and flusher.stats().pending_records == 0


async def test_sessions_drain_concurrently_and_each_keeps_its_order() -> None:
    rec = Recorder()
    flusher = make(rec, concurrency=4, max_batch=1)
    flusher.start()
    try:
        lsn = 0
        for _ in range(5):
            for key in "abcdef":
                lsn += 1
                flusher.add(Entry(lsn, key))
        await flusher.wait_through(lsn, timeout=5)
    finally:
        await flusher.stop()
    for key in "abcdef":
        seen = [lsns[0] for k, lsns in rec.batches if k == key]
        assert seen == sorted(seen) and len(seen) == 5
    assert sorted(rec.confirmed) == list(range(1, 31))


async def test_while_the_store_fails_one_probe_at_a_time_then_everything_drains() -> None:
    rec = Recorder()
    rec.failures = [Transient() for _ in range(6)]
    flusher = make(rec, concurrency=8, max_batch=1)
    flusher.start()
    try:
        for lsn in range(1, 17):
            flusher.add(Entry(lsn, f"s{lsn}"))
        await flusher.wait_through(16, timeout=10)
    finally:
        await flusher.stop()
    stats = flusher.stats()
    assert stats.failed_attempts == 6 and stats.applied_records == 16
    assert sorted(rec.confirmed) == list(range(1, 17))


async def test_probes_are_serialized_during_failures() -> None:
    rec = Recorder()
    # Fail forever until the test lets go; count how many applies overlap meanwhile.
    forever = True

    async def failing(key: str, batch: list[Entry]) -> None:
        rec.in_flight += 1
        rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
        try:
            await asyncio.sleep(0.002)
            if forever:
                raise Transient
        finally:
            rec.in_flight -= 1

    flusher: Flusher[Entry] = Flusher(
        apply=failing,
        confirm=rec.confirmed.extend,
        is_retryable=lambda exc: isinstance(exc, Transient),
        on_reject=rec.reject,
        batch_fits=lambda batch, entry: False,
        concurrency=8,
        backoff=Backoff.exponential(0.001, 0.005),
    )

    async def until_failed(count: int) -> None:
        # Counted, not timed: a stall of this process can swallow any fixed wait.
        deadline = asyncio.get_running_loop().time() + 30
        while flusher.stats().failed_attempts < count:
            assert asyncio.get_running_loop().time() < deadline, flusher.stats()
            await asyncio.sleep(0.001)

    flusher.start()
    try:
        for lsn in range(1, 9):
            flusher.add(Entry(lsn, f"s{lsn}"))
        await until_failed(8)  # the eight sent before the store was known to fail
        rec.max_in_flight = 0
        await until_failed(8 + 20)
        assert rec.max_in_flight == 1  # one probe at a time once the store is failing
        forever = False
        await flusher.wait_through(8, timeout=10)
    finally:
        await flusher.stop()
    assert sorted(rec.confirmed) == list(range(1, 9))


async def test_a_final_failure_goes_to_on_reject_and_is_confirmed() -> None:
    rec = Recorder()
    rec.failures = [Final()]
    flusher = make(rec, max_batch=1)
    flusher.start()
    try:
        flusher.add(Entry(1, "a"))
        flusher.add(Entry(2, "a"))
        await flusher.wait_through(2, timeout=5)
    finally:
        await flusher.stop()
    assert rec.rejected == [("a", [1], "Final")]
    assert rec.batches == [("a", [2])]
    assert rec.confirmed == [1, 2]
    assert flusher.stats().rejected_records == 1


async def test_waits_time_out_with_entries_still_pending() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    flusher = make(rec)
    flusher.start()
    try:
        flusher.add(Entry(1, "a"))
        flusher.add(Entry(2, "b"))
        with pytest.raises(FlushTimeoutError):
            await flusher.wait_through(2, timeout=0.05)
        with pytest.raises(FlushTimeoutError):
            await flusher.wait_key("a", timeout=0.05)
        rec.gate.set()
        await flusher.wait_key("a", timeout=5)
        await flusher.wait_through(2, timeout=5)
    finally:
        await flusher.stop()
    assert flusher.stats().pending_records == 0


async def test_stop_leaves_an_interrupted_batch_pending() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    flusher = make(rec)
    flusher.start()
    flusher.add(Entry(1, "a"))
    await asyncio.sleep(0.01)
    await flusher.stop()
    assert [e.lsn for e in flusher.pending()] == [1]
    assert rec.confirmed == []


class Refused(Transient):
    """Refused before sending, like an open circuit breaker: says when to come back."""

    def __init__(self, after_s: float) -> None:
        super().__init__("refused")
        self.after_s = after_s


async def test_a_refusal_waits_exactly_its_retry_after_without_growing_the_backoff() -> None:
    # A fake monotonic clock that moves only when the flusher sleeps.
    now = [0.0]
    attempts: list[float] = []

    async def sleep(delay: float) -> None:
        now[0] += delay
        await asyncio.sleep(0)

    rec = Recorder()
    rec.failures = [Refused(2.0), Refused(0.0), Refused(0.0)]

    async def apply(key: str, batch: list[Entry]) -> None:
        attempts.append(now[0])
        await rec.apply(key, batch)

    flusher = Flusher(
        apply=apply,
        confirm=rec.confirmed.extend,
        is_retryable=lambda exc: isinstance(exc, Transient),
        on_reject=rec.reject,
        batch_fits=lambda batch, entry: True,
        concurrency=4,
        backoff=Backoff.exponential(0.05, 5.0).driven_by(sleep=sleep),
        monotonic=lambda: now[0],
        retry_after=lambda exc: exc.after_s if isinstance(exc, Refused) else None,
    )
    flusher.start()
    try:
        flusher.add(Entry(1, "a"))
        await flusher.wait_through(1, timeout=5)
    finally:
        await flusher.stop()
    assert rec.batches == [("a", [1])]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # The first refusal: 2 s (the breaker's rest) plus at most one base of jitter. The next
    # two (the breaker busy with other probes): a base each, never the growing backoff.
    assert len(attempts) == 4
    assert 2.0 <= gaps[0] <= 2.0 + 0.05 + 1e-9
    assert all(0.05 <= g <= 0.1 + 1e-9 for g in gaps[1:]), gaps


async def test_resume_now_ends_the_backoff_within_a_slice() -> None:
    rec = Recorder()
    rec.failures = [Refused(30.0)]  # a long open period
    slices: list[float] = []

    async def sleep(delay: float) -> None:
        slices.append(delay)
        await asyncio.sleep(delay)

    flusher = Flusher(
        apply=rec.apply,
        confirm=rec.confirmed.extend,
        is_retryable=lambda exc: isinstance(exc, Transient),
        on_reject=rec.reject,
        batch_fits=lambda batch, entry: True,
        concurrency=2,
        backoff=Backoff.exponential(0.05, 5.0).driven_by(sleep=sleep),
        retry_after=lambda exc: exc.after_s if isinstance(exc, Refused) else None,
    )
    flusher.start()
    try:
        flusher.add(Entry(1, "a"))
        await asyncio.sleep(0.05)  # refused: now waiting out 30 s
        assert rec.batches == []
        sliced = len(slices)
        flusher.resume_now()  # the breaker let go early (an out-of-band probe succeeded)
        # Half the 30 s it would otherwise wait: no stall of this process comes near it.
        await flusher.wait_through(1, timeout=15)
    finally:
        await flusher.stop()
    assert rec.batches == [("a", [1])]
    # The workers waited in slices, and none began another once resume_now() was called.
    assert sliced > 0 and all(delay <= 0.25 for delay in slices), slices
    assert len(slices) == sliced, slices


async def test_after_a_failure_the_drain_ramps_up_one_batch_at_a_time() -> None:
    # Each apply notes how many batches were in flight when it started (itself included)
    # and whether it started once the batches sent before the failure were all done (a
    # batch that was already past the window when the failure came still goes); the first
    # apply to finish fails.
    in_flight = 0
    before_failure: set[int] = set()  # applies started before the failure, still running
    starts: list[tuple[bool, int]] = []
    failed = False

    async def apply(key: str, batch: list[Entry]) -> None:
        nonlocal in_flight, failed
        in_flight += 1
        me = batch[0].lsn
        recovering = failed and not before_failure
        if not failed:
            before_failure.add(me)
        starts.append((recovering, in_flight))
        try:
            await asyncio.sleep(0.005)
            if not failed:
                failed = True
                raise Transient
        finally:
            in_flight -= 1
            before_failure.discard(me)

    rec = Recorder()
    flusher = Flusher(
        apply=apply,
        confirm=rec.confirmed.extend,
        is_retryable=lambda exc: isinstance(exc, Transient),
        on_reject=rec.reject,
        batch_fits=lambda batch, entry: False,
        concurrency=8,
        backoff=Backoff.exponential(0.001, 0.01),
    )
    flusher.start()
    try:
        for lsn in range(1, 41):
            flusher.add(Entry(lsn, f"s{lsn}"))
        await flusher.wait_through(40, timeout=10)
    finally:
        await flusher.stop()
    assert sorted(rec.confirmed) == list(range(1, 41))
    before = [n for after, n in starts if not after]
    recovery = [n for after, n in starts if after]
    assert max(before) == 8  # healthy: the whole concurrency at once
    # After the failure: one batch, then one more per success, up to the concurrency.
    assert recovery[0] == 1
    assert all(n <= i + 1 for i, n in enumerate(recovery)), recovery
    assert max(recovery) == 8


async def test_stop_outlasts_a_worker_that_swallows_a_cancel() -> None:
    """Defect 1 (issue 13): a worker whose store call swallowed its one cancel (redis-py's
    asyncio.wait_for on Python 3.11) kept Flusher.stop() waiting forever."""
    swallowed = asyncio.Event()

    async def stubborn(key: str, batch: list[Entry]) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # swallowed once, as that wait_for does
        await asyncio.sleep(3600)

    rec = Recorder()
    flusher = Flusher(
        apply=stubborn,
        confirm=rec.confirmed.extend,
        is_retryable=lambda exc: True,
        on_reject=rec.reject,
        batch_fits=lambda batch, entry: True,
        concurrency=2,
    )
    flusher.start()
    flusher.add(Entry(1, "a"))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(flusher.wait_through(1, timeout=None))
    async with asyncio.timeout(10):
        await flusher.stop()
    assert swallowed.is_set()
    # A waiter is told the flusher stopped instead of waiting forever.
    with pytest.raises(FlusherStoppedError):
        await waiter
    assert [e.lsn for e in flusher.pending_for("a")] == [1]  # pending: replayed later
