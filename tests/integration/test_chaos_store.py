"""Store throttling, slow replies and outages: DynamoDB Local behind the fault proxy.

Short versions run in the default suite; the long ones (`@pytest.mark.long`, `make chaos`)
are issue 6's acceptance runs at full length; the proxy's counts are exact, so they measure
what memsdk sends during a fault, not what it believes it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memsdk import Config, Health, MemoryClient, Turn
from memsdk.errors import MemsdkError, StoreUnavailableError
from memsdk.faultproxy import FaultCounts, FaultProxy

pytestmark = pytest.mark.dynamodb

# What a stall of this process (a busy 2-core machine) may add to a time it measures.
STALL_S = 2.0
# A breaker scaled to a test: judged on 20 calls in 2 s, open 1 s, at most 2 s. Tripped by
# the faults only: DynamoDB Local on a busy machine is often slower than a real table.
FAST_BREAKER = {
    "breaker_window": 2.0,
    "breaker_min_calls": 20,
    "breaker_open_seconds": 1.0,
    "breaker_max_open_seconds": 2.0,
    "breaker_slow_call": 15.0,
}


def pair(session: str, n: int) -> list[Turn]:
    return [
        Turn(role="user", content=f"{session}:q{n}"),
        Turn(role="assistant", content=f"{session}:a{n}" + "y" * 400),
    ]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class OutageRun:
    """What a full-outage run measured; `reads` are (start time, seconds, degraded)."""

    outage_s: float
    reads: dict[str, list[tuple[float, float, bool]]]
    offered: dict[str, int]
    during: FaultCounts
    outage_health: Health
    first_open_at: float | None
    closed_after: float | None
    wait_after_recovery: float  # the rest of the breaker's open period, when it came back
    errors: list[str]


async def full_outage(
    proxy: FaultProxy,
    proxied_url: str,
    wal_dir: Path,
    *,
    sessions: int,
    think_s: float,
    outage_s: float,
    breaker: dict[str, Any],
) -> OutageRun:
    """A seed-like workload (load, append a pair, think) through a 503 outage of the store.

    Returns what it measured; every acknowledged turn has been checked against the store
    (read by a client without a WAL) before it returns.
    """
    config = Config(
        store=proxied_url, wal_dir=str(wal_dir), read_timeout=0.3, write_timeout=1.0, **breaker
    )
    acked: dict[str, list[str]] = {}
    phase = "before"
    reads: dict[str, list[tuple[float, float, bool]]] = {"before": [], "outage": [], "after": []}
    offered = {"before": 0, "outage": 0, "after": 0}
    errors: list[str] = []
    transitions: list[tuple[float, str]] = []
    rng = random.Random(7)

    async def session_loop(mem: MemoryClient, session: str, stop: asyncio.Event) -> None:
        n = 0
        await asyncio.sleep(rng.uniform(0, think_s))  # spread the sessions out
        while not stop.is_set():
            try:
                started, started_in = time.perf_counter(), phase
                ctx = await mem.load_context(session, customer_id="C1")
                took = time.perf_counter() - started
                reads[started_in].append((started, took, ctx.degraded))
                offered[phase] += 1
                receipt = await mem.append_turns(session, pair(session, n), customer_id="C1")
                offered[phase] += 1
                acked.setdefault(session, []).extend(receipt.turn_ids)
            except MemsdkError as exc:
                errors.append(type(exc).__name__)
            n += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)

    with breaker_log(transitions):
        async with MemoryClient(config) as mem:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(session_loop(mem, f"s{i}", stop)) for i in range(sessions)]
            await asyncio.sleep(2.0)
            transitions.clear()
            was_open_at_start = mem.health().store_breaker != "closed"
            phase = "outage"
            outage_started = time.perf_counter()
            proxy.reset_counts()
            proxy.set_mode("http5xx", status=503)
            await asyncio.sleep(outage_s)
            during = proxy.counts
            outage_health = mem.health()
            proxy.set_mode("pass")
            phase = "after"
            recovered_at = time.perf_counter()
            closed_after = None
            while time.perf_counter() - recovered_at < config.breaker_max_open_seconds + 10:
                if mem.health().store_breaker == "closed":
                    closed_after = time.perf_counter() - recovered_at
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)
            await mem.flush(timeout=60)

    # Nothing acknowledged was lost or doubled: read the store with a client without a WAL.
    async with MemoryClient(Config(store=proxied_url, read_timeout=10.0)) as reader:
        for session, turn_ids in acked.items():
            ctx = await reader.load_context(session, customer_id="C1", last_n=10_000)
            stored = [t.turn_id for t in ctx.turns]
            assert stored == sorted(turn_ids), session
            assert ctx.meta is not None and ctx.meta.turn_count == len(turn_ids)
    opened = [at for at, state in transitions if state == "open"]
    if was_open_at_start:
        opened.insert(0, outage_started)
    # When the breaker could first close after the store came back: at once if it was
    # half-open, else when its open period (doubled by failed probes) ran out.
    probes_due = [at for at, state in transitions if state == "half_open" and at >= recovered_at]
    last = [state for at, state in transitions if at < recovered_at]
    could_close = recovered_at
    if last and last[-1] == "open" and probes_due:
        could_close = probes_due[0]
    return OutageRun(
        outage_s=outage_s,
        reads={k: [(at - outage_started, d, g) for at, d, g in v] for k, v in reads.items()},
        offered=offered,
        during=during,
        outage_health=outage_health,
        first_open_at=(opened[0] - outage_started) if opened else None,
        closed_after=closed_after,
        wait_after_recovery=could_close - recovered_at,
        errors=errors,
    )


@contextlib.contextmanager
def breaker_log(into: list[tuple[float, str]]) -> Iterator[None]:
    """Record the store breaker's transitions (time, new state) from memsdk's log lines."""

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "breaker", None) == "store":
                into.append((time.perf_counter(), str(getattr(record, "breaker_to", ""))))

    handler = Handler(level=logging.INFO)
    logger = logging.getLogger("memsdk")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def probe_bound(run: OutageRun, breaker: dict[str, Any]) -> float:
    """Requests the breaker lets through while open: its probes, one round per open period."""
    rounds = run.outage_s / breaker.get("breaker_open_seconds", 5.0) + 1
    return breaker.get("breaker_half_open_probes", 3) * rounds


def report(run: OutageRun) -> str:
    durations = sorted(d for _, d, _ in run.reads["outage"])
    slow = sorted(round(at, 2) for at, d, _ in run.reads["outage"] if d > 0.05)
    return (
        f"outage {run.outage_s:.0f}s: {len(durations)} reads, median "
        f"{statistics.median(durations) * 1000:.2f} ms, p99 {p99(durations) * 1000:.1f} ms, "
        f"max {durations[-1] * 1000:.1f} ms, reads over 50 ms started at {slow}; "
        f"tripped after {run.first_open_at}s; "
        f"{run.during.requests_total} store requests for {run.offered['outage']} offered "
        f"calls; closed {run.closed_after}s after the store came back "
        f"(its wait then: {run.wait_after_recovery:.2f}s)"
    )


async def test_full_outage_with_a_wal_loses_nothing_and_sheds_load(
    proxy: FaultProxy, proxied_url: str, tmp_path: Path
) -> None:
    """The short version of the 30 s outage (test_long_outage...), run in every CI."""
    # The failure rate rule out of reach (min_calls): what trips the breaker must be the
    # run of failures, whatever the window still holds. When it trips depends on how fast
    # DynamoDB Local answers the requests in flight at the switch (each success ends the
    # run), so that is not timed.
    breaker = {**FAST_BREAKER, "breaker_min_calls": 1_000_000}
    run = await full_outage(
        proxy,
        proxied_url,
        tmp_path / "wal",
        sessions=20,
        think_s=0.05,
        outage_s=4.0,
        breaker=breaker,
    )
    print(report(run))
    # Appends never failed: the WAL took them (durable=False) through the outage.
    assert run.errors == []
    assert run.outage_health.store_breaker in ("open", "half_open")
    assert run.outage_health.store_breaker_opened >= 1
    assert run.outage_health.wal_pending_records > 0
    # A run of failures tripped the breaker, not the window's failure rate.
    assert run.first_open_at is not None, report(run)
    # Load shedding: with the breaker open the store saw probes, not the offered load.
    allowed = 1.1 * run.offered["outage"] + probe_bound(run, breaker)
    assert run.during.requests_total <= allowed, (run.during, run.offered)
    # Stateless reads: the typical one answers at once, none waits past its read_timeout.
    durations = [d for _, d, _ in run.reads["outage"]]
    assert len(durations) > 100
    assert statistics.median(durations) <= 0.01, statistics.median(durations)
    assert max(durations) <= 0.3 + STALL_S, max(durations)
    # Once open, reads answer within milliseconds: slow ones are at most twice what a stall
    # catches in flight (one per session), never a share of the load (the 30 s run checks
    # the overall p99).
    tripped = [d for at, d, _ in run.reads["outage"] if at >= run.first_open_at]
    assert sum(d > 0.05 for d in tripped) <= 2 * 20, report(run)
    # The breaker closes within its wait (plus a stall) once the store is back.
    assert run.closed_after is not None
    assert run.closed_after <= run.wait_after_recovery + STALL_S, report(run)


@pytest.mark.long
async def test_long_outage_under_the_seed_workload(
    proxy: FaultProxy, proxied_url: str, tmp_path: Path
) -> None:
    """Issue 6's acceptance run: 30 s of 503s, default breaker, 50 sessions at ~3 msg/s."""
    breaker: dict[str, Any] = {}
    run = await full_outage(
        proxy,
        proxied_url,
        tmp_path / "wal",
        sessions=50,
        think_s=0.33,
        outage_s=30.0,
        breaker=breaker,
    )
    print(report(run))
    assert run.errors == []
    assert run.during.requests_total <= 1.1 * run.offered["outage"] + probe_bound(run, breaker)
    durations = [d for _, d, _ in run.reads["outage"]]
    assert p99(durations) <= 0.05, report(run)
    assert run.closed_after is not None
    assert run.closed_after <= run.wait_after_recovery + STALL_S, report(run)


async def test_ten_percent_throttling_is_absorbed_without_a_retry_storm(
    proxy: FaultProxy, proxied_url: str
) -> None:
    config = Config(
        store=proxied_url,
        read_timeout=5.0,
        write_timeout=5.0,
        store_max_attempts=3,
        breaker_slow_call=15.0,  # slow calls of a busy machine must not trip it either
    )
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
    # The session is written with deadlines no stall can reach; the deadlines under test
    # are the blackholed client's.
    async with MemoryClient(Config(store=proxied_url, read_timeout=10.0, write_timeout=10.0)) as w:
        await w.append_turns("b1", pair("b1", 0))
    config = Config(store=proxied_url, read_timeout=0.3, write_timeout=0.5)
    loop = asyncio.get_running_loop()
    async with MemoryClient(config) as mem:
        proxy.set_mode("blackhole")
        took: list[float] = []
        for n in range(6):
            started = loop.time()
            ctx = await mem.load_context("b1")
            took.append(loop.time() - started)
            assert ctx.degraded
            started = loop.time()
            with pytest.raises(StoreUnavailableError) as raised:
                await mem.append_turns("b1", pair("b1", n + 1))
            took.append(loop.time() - started)
            # Ended by a timeout of its own: the call's deadline or its attempt's read timeout.
            error = str(raised.value)
            assert "exceeded write_timeout=0.5s" in error or "(ServerTimeoutError)" in error
        # Every call ended by its own deadline (plus a stall of this process).
        assert max(took) <= 0.5 + STALL_S, took
        proxy.set_mode("pass")


async def test_reads_fall_back_to_what_this_process_holds(
    proxy: FaultProxy, proxied_url: str
) -> None:
    # Generous deadlines: a refused connection fails at once, and the writes and the read
    # after the outage must not fail because a busy machine stalled them.
    config = Config(store=proxied_url, read_timeout=10.0, write_timeout=10.0, **FAST_BREAKER)
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
