"""The parts MemoryClient delegates to, each on its own: a fake clock, a fake sleep and the
real embedded store (sqlite:///:memory:), no MemoryClient."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from memsdk import Config, Turn
from memsdk import session as rules
from memsdk.backoff import Backoff
from memsdk.cache.base import CacheLookup, MetaCacheStats
from memsdk.committer import MAX_COMMIT_ROUNDS, Committer, Planner
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.ids import TurnIdGenerator
from memsdk.reader import ContextReader
from memsdk.records import MetaRecord, SessionWrite
from memsdk.resilience.breaker import BreakerPolicy, CircuitBreaker
from memsdk.resilience.probe import RecoveryProbe
from memsdk.session_cache import SessionCache
from memsdk.store.base import Store
from memsdk.store.sqlite import SQLiteStore
from memsdk.store.wrapper import StoreCall, StoreWrapper
from memsdk.telemetry import Telemetry
from memsdk.testing import FakeClock

T = TypeVar("T")
CONFIG = Config(store="sqlite:///:memory:", last_n=4)


class SleepRecorder:
    """A fake sleep: records each delay and yields once, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
async def store() -> AsyncIterator[SQLiteStore]:
    sqlite = SQLiteStore(":memory:")
    await sqlite.open()
    try:
        yield sqlite
    finally:
        await sqlite.aclose()


def parts(store: Store, clock: FakeClock) -> tuple[SessionCache, Committer]:
    cache = SessionCache(CONFIG, None, clock, Telemetry(enabled=False))
    return cache, Committer(store, cache, clock, CONFIG)


def append_plan(session_id: str, text: str, ids: TurnIdGenerator) -> Planner:
    def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
        return rules.plan_append(
            current,
            session_id=session_id,
            turns=[Turn(role="user", content=text)],
            customer_id=None,
            now_ms=now_ms,
            ttl_seconds=CONFIG.ttl_seconds,
            retention_seconds=CONFIG.turn_retention_seconds,
            ids=ids,
        )

    return plan


# ------------------------------------------------------------------ Backoff


def test_exponential_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    backoff = Backoff.exponential(0.01, 0.1).driven_by(uniform=lambda low, high: high)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.02, 0.04, 0.08, 0.1, 0.1]
    rng = random.Random(7)
    jittered = Backoff.exponential(0.01, 0.1).driven_by(uniform=rng.uniform)
    assert all(0 <= jittered.delay(n) <= min(0.1, 0.01 * 2**n) for n in range(1, 50))
    assert Backoff.exponential(0.01, 0.1).after_hint(2.0) >= 2.0


def test_steady_and_fixed_backoffs() -> None:
    steady = Backoff.steady(1.0, 0.2).driven_by(uniform=random.Random(1).uniform)
    assert all(0.8 <= steady.delay(n) <= 1.2 for n in range(1, 100))
    fixed = Backoff.fixed((0.05, 0.2, 1.0))
    assert [fixed.delay(n) for n in range(1, 6)] == [0.05, 0.2, 1.0, 1.0, 1.0]
    assert [fixed.with_cap(0.1).delay(n) for n in range(1, 4)] == [0.05, 0.1, 0.1]
    with pytest.raises(ValueError):
        Backoff.fixed(())


async def test_a_backoff_waits_with_the_injected_sleep() -> None:
    sleep = SleepRecorder()
    backoff = Backoff.exponential(0.5, 4.0).driven_by(sleep=sleep, uniform=lambda low, high: high)
    await backoff.wait(1)
    await backoff.wait(3)
    assert sleep.delays == [1.0, 4.0]


# ---------------------------------------------------------------- Committer


class RacingStore(StoreWrapper):
    """Lets another committer win the race before each of the first `losses` commits."""

    def __init__(self, inner: Store, rival: Committer, losses: int) -> None:
        super().__init__(inner)
        self.rival = rival
        self.losses = losses
        self.ids = TurnIdGenerator(lambda: 0)

    async def around(self, call: StoreCall[T]) -> T:
        if call.operation == "commit" and self.losses > 0:
            self.losses -= 1
            await self.rival.commit_required(
                call.session_id, append_plan(call.session_id, "rival", self.ids), operation="rival"
            )
        return await call.run()


def losing_committer(
    store: Store, clock: FakeClock, *, losses: int
) -> tuple[SessionCache, Committer, SleepRecorder]:
    """A committer that loses its first `losses` races to a rival, and the sleep it waits with."""
    _, rival = parts(store, clock)
    cache = SessionCache(CONFIG, None, clock, Telemetry(enabled=False))
    sleep = SleepRecorder()
    committer = Committer(
        RacingStore(store, rival, losses=losses),
        cache,
        clock,
        CONFIG,
        conflict_backoff=Backoff.exponential(0.001, 0.05).driven_by(sleep=sleep),
    )
    return cache, committer, sleep


async def test_lost_races_replan_on_the_stored_meta_and_back_off_from_the_second(
    store: SQLiteStore,
) -> None:
    clock = FakeClock()
    cache, committer, sleep = losing_committer(store, clock, losses=3)
    ids = TurnIdGenerator(clock.time_ms)
    await committer.commit_required("s", append_plan("s", "first", ids), operation="append")
    write = await committer.commit_required("s", append_plan("s", "mine", ids), operation="append")
    meta = await store.get_meta("s", consistent=True)
    assert meta is not None and meta.turn_count == 5 and write.meta == meta
    # The first loss re-plans at once; the second and third wait.
    assert len(sleep.delays) == 2
    assert all(0 <= d <= 0.05 for d in sleep.delays)
    # L1 holds what this committer wrote: no read needed for its next write.
    assert cache.hinted("s") == meta


async def test_a_committer_gives_up_after_its_rounds(store: SQLiteStore) -> None:
    clock = FakeClock()
    _, committer, sleep = losing_committer(store, clock, losses=MAX_COMMIT_ROUNDS)
    with pytest.raises(StoreUnavailableError, match="lost the race"):
        await committer.commit_required(
            "s", append_plan("s", "x", TurnIdGenerator(clock.time_ms)), operation="append"
        )
    assert len(sleep.delays) == MAX_COMMIT_ROUNDS - 1


async def test_delete_tombstones_then_purges(store: SQLiteStore) -> None:
    clock = FakeClock()
    cache, committer = parts(store, clock)
    ids = TurnIdGenerator(clock.time_ms)
    await committer.commit_required("s", append_plan("s", "a", ids), operation="append")
    await committer.delete("s", None)
    tombstone = await store.get_meta("s", consistent=True)
    assert tombstone is not None and tombstone.deleted
    assert await store.query_turns("s", before_turn_id=None, limit=10, consistent=True) == []
    assert cache.hinted("s") is None and cache.window("s") is None


# ------------------------------------------------------------- ContextReader


async def test_the_reader_serves_l1_validated_by_the_store_and_counts(store: SQLiteStore) -> None:
    clock = FakeClock()
    cache, committer = parts(store, clock)
    breaker = CircuitBreaker("store")
    reader = ContextReader(store, breaker, cache, clock, CONFIG, Telemetry(enabled=False))
    ids = TurnIdGenerator(clock.time_ms)
    for text in ("a", "b", "c"):
        await committer.commit_required("s", append_plan("s", text, ids), operation="append")
    deadline = asyncio.get_running_loop().time() + 5
    read = await reader.read("s", 2, deadline)
    assert [t.content for t in read.ctx.turns] == ["b", "c"]
    assert read.ctx.source == "l1+store" and cache.hits == 1 and cache.misses == 0
    cache.forget("s")
    read = await reader.read("s", 2, deadline)
    assert read.ctx.source == "store" and cache.misses == 1
    assert read.version == (await store.get_meta("s", consistent=True)).version  # type: ignore[union-attr]


async def test_the_reader_answers_degraded_from_l1_while_the_breaker_is_open(
    store: SQLiteStore,
) -> None:
    clock = FakeClock()
    cache, committer = parts(store, clock)
    breaker = CircuitBreaker("store", BreakerPolicy(consecutive_failures=1, min_calls=1))
    reader = ContextReader(store, breaker, cache, clock, CONFIG, Telemetry(enabled=False))
    await committer.commit_required(
        "s", append_plan("s", "a", TurnIdGenerator(clock.time_ms)), operation="append"
    )
    breaker.record_failure(0.01)
    assert breaker.state == "open"
    read = await reader.read("s", 2, asyncio.get_running_loop().time() + 5)
    assert read.ctx.degraded and read.ctx.source == "l1"
    assert [t.content for t in read.ctx.turns] == ["a"]
    empty = await reader.read("unknown", 2, asyncio.get_running_loop().time() + 5)
    assert empty.ctx.degraded and empty.ctx.meta is None and reader.degraded_replies == 2


# ------------------------------------------------------------- RecoveryProbe


async def test_the_probe_ends_the_open_period_when_the_store_answers() -> None:
    breaker = CircuitBreaker("store", BreakerPolicy(consecutive_failures=1, min_calls=1))
    breaker.record_failure(0.01)
    answers = [StoreError("down"), StoreError("down"), None]
    probed: list[int] = []

    async def probe() -> None:
        probed.append(1)
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    sleep = SleepRecorder()
    recovery = RecoveryProbe(
        breaker,
        probe,
        interval_s=1.0,
        timeout_s=1.0,
        backoff=Backoff.steady(1.0, 0.2).driven_by(sleep=sleep),
    )
    recovery.start()
    for _ in range(50):
        await asyncio.sleep(0)
        if breaker.state != "open":
            break
    assert breaker.state == "half_open" and len(probed) == 3
    assert len(sleep.delays) == 3 and all(0.8 <= d <= 1.2 for d in sleep.delays)
    await recovery.stop()
    recovery.start()  # stopped for good: a later open period starts nothing
    assert recovery._task is not None and recovery._task.done()


# --------------------------------------------------------------- SessionCache


class UnconfirmingRedis:
    """A MetaCache whose invalidations fail `failures` times (Redis not answering)."""

    description = "redis:test"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.invalidations = 0

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def get(self, session_id: str) -> MetaRecord | None:
        return None

    async def lookup(self, session_id: str) -> CacheLookup:
        return CacheLookup(None, None)

    async def fill(self, meta: MetaRecord, *, now_s: int, lease: str | None) -> bool:
        return False

    async def put(self, meta: MetaRecord, *, now_s: int, essential: bool = False) -> bool:
        return False

    async def invalidate(self, session_id: str, *, essential: bool = False) -> bool:
        self.invalidations += 1
        if self.failures > 0:
            self.failures -= 1
            return False
        return True

    def stats(self) -> MetaCacheStats:
        return MetaCacheStats()


async def test_a_drop_redis_did_not_confirm_is_repaired_in_the_background_on_schedule() -> None:
    redis = UnconfirmingRedis(failures=3)
    sleep = SleepRecorder()
    cache = SessionCache(
        CONFIG,
        redis,
        FakeClock(),
        Telemetry(enabled=False),
        repair_backoff=Backoff.fixed((0.05, 0.2, 1.0)).driven_by(sleep=sleep),
    )
    await cache.drop_from_l2("s")
    hurry = asyncio.Event()
    await cache.stop_background(hurry)  # gives the repair its moment, then stops it
    assert redis.invalidations == 4 and sleep.delays == [0.05, 0.2]
    await cache.drop_from_l2("s")  # after stop: nothing new is started
    assert redis.invalidations == 5
