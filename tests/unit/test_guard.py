"""GuardedStore alone: what the breaker hears of each outcome, and what a refusal says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.guard import GuardedStore
from memsdk.records import MetaRecord
from memsdk.resilience.breaker import BreakerPolicy, CircuitBreaker
from memsdk.resilience.bulkhead import Bulkhead
from memsdk.store.sqlite import SQLiteStore
from memsdk.testing import FaultyStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Scripted(FaultyStore):
    """A FaultyStore whose get_meta raises whatever the test queues."""

    def __init__(self, inner: SQLiteStore) -> None:
        super().__init__(inner)
        self.raises: list[BaseException] = []

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        if self.raises:
            raise self.raises.pop(0)
        return await super().get_meta(session_id, consistent=consistent)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[GuardedStore, Scripted, Clock]]:
    clock = Clock()
    policy = BreakerPolicy(min_calls=1_000, consecutive_failures=3, open_s=5.0, max_open_s=20.0)
    breaker = CircuitBreaker("store", policy, clock=clock)
    inner = Scripted(SQLiteStore(str(tmp_path / "m.db")))
    guarded = GuardedStore(inner, breaker, Bulkhead(4), slow_call_s=0.25, monotonic=clock)
    await guarded.open()
    yield guarded, inner, clock
    await guarded.aclose()


async def test_failures_open_the_breaker_and_a_refusal_says_when_to_come_back(
    parts: tuple[GuardedStore, Scripted, Clock],
) -> None:
    guarded, inner, clock = parts
    inner.raises = [StoreUnavailableError("down") for _ in range(3)]
    for _ in range(3):
        with pytest.raises(StoreUnavailableError):
            await guarded.get_meta("s1", consistent=True)
    assert guarded.breaker.state == "open"
    clock.now += 2.0
    with pytest.raises(StoreUnavailableError) as info:
        await guarded.get_meta("s1", consistent=True)
    # Refused without sending: never maybe_applied, and it says when a call may go again.
    assert info.value.maybe_applied is False and info.value.session_id == "s1"
    assert info.value.retry_after == pytest.approx(3.0)
    assert guarded.breaker.stats().rejected == 1


async def test_throttles_and_deployment_errors_never_open_the_breaker(
    parts: tuple[GuardedStore, Scripted, Clock],
) -> None:
    guarded, inner, _ = parts
    inner.raises = [StoreUnavailableError("busy", throttled=True) for _ in range(5)]
    inner.raises += [StoreError("table missing") for _ in range(5)]
    for _ in range(10):
        with pytest.raises(StoreError):
            await guarded.get_meta("s1", consistent=True)
    assert guarded.breaker.state == "closed"
    assert await guarded.get_meta("s1", consistent=True) is None  # and calls still go


async def open_period_of_60_s(
    tmp_path: Path, probe_interval: float
) -> AsyncIterator[tuple[FaultyStore, MemoryClient]]:
    """A client whose store breaker is open for 60 s after an outage, the store back up."""
    store = FaultyStore(SQLiteStore(str(tmp_path / "r.db")))
    config = Config(
        store="sqlite:///unused.db",
        breaker_consecutive_failures=3,
        breaker_open_seconds=60.0,
        breaker_max_open_seconds=60.0,
        breaker_probe_interval=probe_interval,
    )
    async with MemoryClient(config, store=store) as mem:
        await mem.append_turns("s1", [Turn(role="user", content="hello")])
        store.down = True
        for _ in range(3):
            assert (await mem.load_context("s1")).degraded
        assert mem.health().store_breaker == "open"
        store.down = False
        yield store, mem


async def test_the_recovery_probe_ends_the_open_period_when_the_store_answers(
    tmp_path: Path,
) -> None:
    """A long open period, cut short: the store answers again, reads are whole within ~1 s."""
    async with contextlib.asynccontextmanager(open_period_of_60_s)(tmp_path, 0.1) as (_, mem):
        for _ in range(100):  # 60 s of open period otherwise
            await asyncio.sleep(0.05)
            ctx = await mem.load_context("s1")
            if not ctx.degraded:
                break
        assert not ctx.degraded and [t.content for t in ctx.turns] == ["hello"]
        for _ in range(mem.config.breaker_half_open_probes):  # the half-open probes close it
            await mem.load_context("s1")
        assert mem.health().store_breaker == "closed"


async def test_without_the_recovery_probe_the_open_period_runs_out(tmp_path: Path) -> None:
    async with contextlib.asynccontextmanager(open_period_of_60_s)(tmp_path, 0) as (_, mem):
        await asyncio.sleep(0.5)
        assert (await mem.load_context("s1")).degraded
        assert mem.health().store_breaker == "open"


async def test_a_store_outside_its_protocol_is_a_store_error_never_its_own_exception(
    parts: tuple[GuardedStore, Scripted, Clock],
) -> None:
    """A user-supplied Store (or a bug) that raises a foreign exception: the caller gets a
    StoreError, whose message holds none of the foreign text; the breaker stays neutral."""
    guarded, inner, _ = parts
    inner.raises = [RuntimeError("driver text with sess-1's content") for _ in range(5)]
    for _ in range(5):
        with pytest.raises(StoreError) as raised:
            await guarded.get_meta("sess-1", consistent=True)
        assert type(raised.value) is StoreError
        assert "content" not in str(raised.value) and "RuntimeError" in str(raised.value)
        assert isinstance(raised.value.__cause__, RuntimeError)
    assert guarded.breaker.state == "closed"
