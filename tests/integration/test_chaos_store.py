"""Chaos against the store (FAULTS.md rows 1, 3, 4): DynamoDB Local behind the fault proxy.

Short versions that run in the default suite; the proxy's counts are exact, so they measure
what memsdk sends during a fault, not what it believes it sends.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import MemsdkError, StoreUnavailableError
from memsdk.faultproxy import FaultProxy
from tests.conftest import new_dynamodb_table
from tests.harness.dynamodb_local import DynamoDBLocal

pytestmark = pytest.mark.dynamodb

# A breaker scaled to a test: judged on 20 calls in 2 s, open 1 s, at most 2 s.
FAST_BREAKER = {
    "breaker_window": 2.0,
    "breaker_min_calls": 20,
    "breaker_open_seconds": 1.0,
    "breaker_max_open_seconds": 2.0,
}


@pytest.fixture
async def proxy(dynamodb_local: DynamoDBLocal) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(upstream=dynamodb_local.endpoint, seed=84) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def proxied_url(dynamodb_local: DynamoDBLocal, proxy: FaultProxy) -> str:
    url = new_dynamodb_table(dynamodb_local)
    return url.replace(f"endpoint={dynamodb_local.endpoint}", f"endpoint={proxy.endpoint}")


def pair(session: str, n: int) -> list[Turn]:
    return [
        Turn(role="user", content=f"{session}:q{n}"),
        Turn(role="assistant", content=f"{session}:a{n}" + "y" * 400),
    ]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_full_outage_with_a_wal_loses_nothing_and_sheds_load(
    proxy: FaultProxy, proxied_url: str, tmp_path: Path
) -> None:
    config = Config(
        store=proxied_url,
        wal_dir=str(tmp_path / "wal"),
        read_timeout=0.3,
        write_timeout=1.0,
        **FAST_BREAKER,
    )
    acked: dict[str, list[str]] = {}
    phase = "before"
    loads: dict[str, list[float]] = {"before": [], "outage": [], "after": []}
    calls = {"before": 0, "outage": 0, "after": 0}
    errors: list[str] = []

    async def session_loop(mem: MemoryClient, session: str, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            try:
                started = time.perf_counter()
                await mem.load_context(session, customer_id="C1")
                loads[phase].append(time.perf_counter() - started)
                receipt = await mem.append_turns(session, pair(session, n), customer_id="C1")
                calls[phase] += 2
                acked.setdefault(session, []).extend(receipt.turn_ids)
            except MemsdkError as exc:
                errors.append(type(exc).__name__)
            n += 1
            await asyncio.sleep(0.05)

    async with MemoryClient(config) as mem:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(session_loop(mem, f"s{i}", stop)) for i in range(20)]
        await asyncio.sleep(1.5)
        phase = "outage"
        proxy.reset_counts()
        proxy.set_mode("http5xx", status=503)
        await asyncio.sleep(4.0)
        during = proxy.counts
        outage_health = mem.health()
        proxy.set_mode("pass")
        phase = "after"
        recovered_at = time.monotonic()
        closed_after = None
        while time.monotonic() - recovered_at < 10:
            if mem.health().store_breaker == "closed":
                closed_after = time.monotonic() - recovered_at
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        await mem.flush(timeout=60)

    # Appends never failed: the WAL took them (durable=False) through the outage.
    assert errors == []
    assert outage_health.store_breaker in ("open", "half_open")
    assert outage_health.store_breaker_opened >= 1 and outage_health.store_calls_rejected > 0
    assert outage_health.wal_pending_records > 0
    # Load shedding: with the breaker open the store saw probes, not the offered load.
    probes = 3 * (4.0 / 1.0 + 1)  # 3 half-open probes per open period (1 s, at most 2 s)
    assert during.requests_total <= 1.1 * calls["outage"] + probes, (during, calls)
    # Stateless reads: the typical one answers at once, none waits past its read_timeout.
    # (Issue 6 asks p99 <= 50 ms; this short run measures ~0.1-0.25 s, from the calls made
    # before the breaker trips and the half-open probes: see docs/resilience.md, open work.)
    assert len(loads["outage"]) > 100
    assert statistics.median(loads["outage"]) <= 0.01, statistics.median(loads["outage"])
    assert p99(loads["outage"]) <= config.read_timeout + 0.05, p99(loads["outage"])
    # The breaker closes within its longest wait plus 2 s once the store is back.
    assert closed_after is not None and closed_after <= 2.0 + 2.0
    # Nothing acknowledged was lost or doubled: read the store with a client without a WAL.
    async with MemoryClient(Config(store=proxied_url, read_timeout=10.0)) as reader:
        for session, turn_ids in acked.items():
            ctx = await reader.load_context(session, customer_id="C1", last_n=10_000)
            stored = [t.turn_id for t in ctx.turns]
            assert stored == sorted(turn_ids), session
            assert ctx.meta is not None and ctx.meta.turn_count == len(turn_ids)


async def test_ten_percent_throttling_is_absorbed_without_a_retry_storm(
    proxy: FaultProxy, proxied_url: str
) -> None:
    config = Config(store=proxied_url, read_timeout=5.0, write_timeout=5.0, store_max_attempts=3)
    async with MemoryClient(config) as mem:
        for i in range(10):
            await mem.append_turns(f"t{i}", pair(f"t{i}", 0))
        proxy.reset_counts()
        proxy.set_mode("pass", probability=0.1, fault="throttle")
        for n in range(1, 16):
            for i in range(10):
                await mem.append_turns(f"t{i}", pair(f"t{i}", n))
        counts = proxy.counts
        health = mem.health()
    throttled = counts.by_outcome["throttle"]
    first_attempts = counts.by_outcome["forwarded"]  # every call succeeded exactly once
    assert first_attempts == 150 and throttled > 5
    # Each throttled request costs one more; 1 / (1 - 0.1) = 1.11 is the floor for p = 0.1
    # when every call must succeed. Anything above means retries beyond the throttles.
    amplification = counts.requests_total / first_attempts
    assert amplification == (first_attempts + throttled) / first_attempts
    assert amplification <= 1.2, amplification
    # A throttle is a hot key or the table's capacity, not an outage: no breaker trip.
    assert health.store_breaker == "closed" and health.store_breaker_opened == 0
    # Every retry went through the budget, which had room for all of them.
    assert health.store_retries == throttled and health.store_retries_refused == 0


async def test_blackhole_every_call_returns_by_its_deadline(
    proxy: FaultProxy, proxied_url: str, tmp_path: Path
) -> None:
    config = Config(store=proxied_url, read_timeout=0.3, write_timeout=0.5)
    async with MemoryClient(config) as mem:
        await mem.append_turns("b1", pair("b1", 0))
        proxy.set_mode("blackhole")
        took: list[float] = []
        for n in range(6):
            started = time.perf_counter()
            ctx = await mem.load_context("b1")
            took.append(time.perf_counter() - started)
            assert ctx.degraded
            started = time.perf_counter()
            with pytest.raises(StoreUnavailableError):
                await mem.append_turns("b1", pair("b1", n + 1))
            took.append(time.perf_counter() - started)
        # Every call ended by its own deadline (plus scheduling slack on a busy machine).
        assert max(took) <= 0.5 + 0.25, took
        proxy.set_mode("pass")


async def test_reads_fall_back_to_what_this_process_holds(
    proxy: FaultProxy, proxied_url: str
) -> None:
    config = Config(store=proxied_url, read_timeout=0.3, write_timeout=1.0, **FAST_BREAKER)
    async with MemoryClient(config) as mem:
        await mem.append_turns("warm", pair("warm", 0), customer_id="C1")
        proxy.set_mode("down")
        warm = await mem.load_context("warm", customer_id="C1", expect_existing=True)
        cold = await mem.load_context("cold", customer_id="C1", expect_existing=True)
        proxy.set_mode("pass")
        healthy = await mem.load_context("warm", customer_id="C1")
        health: Any = mem.health()
    # L1 held the warm session: its turns, flagged degraded; the cold one: nothing, but
    # flagged, and no ContextLostError (the store could not say the session is gone).
    assert warm.degraded and [t.content for t in warm.turns] == ["warm:q0", "warm:a0" + "y" * 400]
    assert cold.degraded and cold.meta is None and cold.turns == []
    assert not healthy.degraded
    assert health.degraded_replies >= 2
