"""The WAL benchmarks: buffered appends (wal_dir) against synchronous ones, DynamoDB Local.

What a write-ahead log buys on the write path (docs/durability.md): an append returns once
its record is fsync'd locally (group commit: concurrent appends share one fsync), and a
background flusher writes to the store. Two candidates, each a `MemoryClient` on its own
table (same name length) of the caller's DynamoDB Local:

- **buffered**: `Config(wal_dir=<temp dir under the repo's .cache/>)`, WAL defaults
  otherwise; the directory is on the repo's disk, not a tmpfs, so fsyncs are real;
- **synchronous**: no `wal_dir` (an append returns once the store acknowledged it).

Every append is `append_turns` of core's user + assistant pair (~0.8 KB + ~2 KB).

a. **c=1**: one append per candidate per round, candidates interleaved round by round with
   the order rotating (core's method). After each buffered append, outside its timing, the
   client is flushed (the drain is timed separately): the synchronous candidate never runs
   next to a busy flusher, and each buffered append starts from an empty log.
b. **c=64**: 64 tasks, each on its own session, each making `appends_per_task` appends in a
   row; one burst per candidate per round, interleaved the same way. Latency of every
   append, throughput = appends / time until the last append returned. The buffered burst is
   followed by `flush()` (timed: "drain"), so the next burst starts from an empty log; the
   flusher's work during the burst is part of the buffered side's cost.

Ratios: buffered / synchronous median latency at c=1 and c=64 (goal <= 0.2), throughput at
c=64 (goal >= 3), fsyncs per append at c=64 from `health()` (goal <= 0.2; burst and drain),
and, informational, throughput including the drain and CPU per append. After each benchmark
every session is read back with a client without WAL and must hold exactly the acknowledged
turn ids: the run aborts otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import secrets
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cache import _at_least, _rate_row
from benchmarks.core import (
    CUSTOMER_ID,
    Progress,
    Settings,
    _cpu_batches,
    _ratio,
    _rotated,
    dynamodb_url,
    memsdk_config,
    message_turns,
    quantile,
    summary,
)
from benchmarks.core import _verdict as verdict
from memsdk import MemoryClient
from tests.harness.dynamodb_local import cache_dir, create_test_table

__all__ = ["WalSettings", "run_wal", "wal_settings_for"]

BUFFERED = "buffered (wal_dir)"
SYNC = "synchronous (no wal_dir)"
TURNS_PER_APPEND = len(message_turns())
DRAIN_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class WalSettings:
    """Sample counts of the WAL benchmarks."""

    c1_rounds: int
    c1_warmup: int
    c1_batch: int  # rounds per CPU batch and per "wave" for the in-wave tail ratio
    c1_per_session: int  # appends per session at c=1, then a new session
    concurrency: int
    c64_rounds: int
    c64_warmup: int
    appends_per_task: int
    bootstrap: int


def wal_settings_for(settings: Settings) -> WalSettings:
    """Counts from core's Settings (`--samples` / `--warmup` set the c=1 rounds)."""
    quick = settings.mode == "quick"
    return WalSettings(
        c1_rounds=settings.samples,
        c1_warmup=settings.warmup,
        c1_batch=settings.cpu_batch,
        c1_per_session=10,
        concurrency=64,
        c64_rounds=6 if quick else 20,
        c64_warmup=1 if quick else 2,
        appends_per_task=4 if quick else 8,
        bootstrap=settings.bootstrap,
    )


# ---------------------------------------------------------------------------- candidates


@dataclass(slots=True)
class Side:
    """One candidate: its client, and every turn id it was acknowledged, per session."""

    name: str
    mem: MemoryClient
    store: str
    buffered: bool
    acked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    async def append(self, sid: str) -> int:
        """One append of the pair; returns its latency in ns."""
        start = time.perf_counter_ns()
        receipt = await self.mem.append_turns(sid, message_turns(), customer_id=CUSTOMER_ID)
        elapsed = time.perf_counter_ns() - start
        if receipt.durable == self.buffered:
            raise RuntimeError(f"{self.name}: receipt.durable={receipt.durable}")
        self.acked[sid].extend(receipt.turn_ids)
        return elapsed

    async def drain(self) -> int:
        """Flush the WAL (buffered side only); returns the ns it took."""
        if not self.buffered:
            return 0
        start = time.perf_counter_ns()
        await self.mem.flush(timeout=DRAIN_TIMEOUT_S)
        return time.perf_counter_ns() - start

    def counters(self) -> tuple[int, int] | None:
        """(fsyncs, WAL appends) from health(), or None when the client does not say."""
        health = self.mem.health()
        fsyncs, appends = getattr(health, "wal_fsyncs", None), getattr(health, "wal_appends", None)
        return None if fsyncs is None or appends is None else (fsyncs, appends)


@contextlib.asynccontextmanager
async def _sides(endpoint: str, label: str, wal_root: Path) -> AsyncIterator[list[Side]]:
    token = secrets.token_hex(4)  # fresh tables, same name length on both sides
    buf_table, sync_table = f"wal_buf_{label}_{token}", f"wal_syn_{label}_{token}"
    for table in (buf_table, sync_table):
        await create_test_table(endpoint, table)
    buf_store, sync_store = dynamodb_url(buf_table, endpoint), dynamodb_url(sync_table, endpoint)
    wal_dir = wal_root / f"wal-{label}-{token}"
    async with (
        MemoryClient(memsdk_config(buf_store, wal_dir=str(wal_dir))) as buf,
        MemoryClient(memsdk_config(sync_store)) as sync,
    ):
        yield [Side(BUFFERED, buf, buf_store, True), Side(SYNC, sync, sync_store, False)]


async def _verify(side: Side) -> int:
    """Read every session back without WAL: exactly the acknowledged ids; returns the turns."""
    total = 0
    async with MemoryClient(memsdk_config(side.store)) as plain:
        for sid, ids in side.acked.items():
            ctx = await plain.load_context(sid, customer_id=CUSTOMER_ID, last_n=10_000)
            stored = [t.turn_id for t in ctx.turns]
            count = None if ctx.meta is None else ctx.meta.turn_count
            if stored != ids or count != len(ids):
                lost = len(set(ids) - set(stored))
                raise RuntimeError(
                    f"{side.name}: session {sid} holds {len(stored)} turns (META says {count}), "
                    f"{len(ids)} acknowledged, {lost} missing"
                )
            total += len(ids)
    return total


# ---------------------------------------------------------------------------- statistics


def _pooled_median_interval(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    *,
    reps: int,
    seed: int = 7,
) -> tuple[float, float]:
    """95% interval of median(all numerator) / median(all denominator), rounds resampled whole.

    The values of one round (a burst) are not independent; rounds are, and the two sides of
    a round are paired (measured back to back), so a resample picks whole round indices.
    """
    rng = random.Random(seed)
    indices = range(len(numerator))
    ratios = []
    for _ in range(reps):
        pick = rng.choices(indices, k=len(numerator))
        num = [v for i in pick for v in numerator[i]]
        den = [v for i in pick for v in denominator[i]]
        ratios.append(statistics.median(num) / statistics.median(den))
    return quantile(ratios, 0.025), quantile(ratios, 0.975)


def _latency_entry(waves: Sequence[Sequence[float]], concurrency: int) -> dict[str, Any]:
    """A candidate in the renderer's "latency" shape (pool = concurrency here)."""
    flat = [v for wave in waves for v in wave]
    p50, p99 = quantile(flat, 0.5), quantile(flat, 0.99)
    in_wave = [quantile(w, 0.99) / quantile(w, 0.5) for w in waves if len(w) > 1]
    return {
        "pool": concurrency,
        "calls": len(flat),
        "latency_ms": {**summary(flat), "p50": p50, "p99": p99},
        "p99_over_p50": p99 / p50,
        "wave_p99_over_p50": statistics.median(in_wave) if in_wave else float("nan"),
    }


def _at_most(row: dict[str, Any], goal: float) -> dict[str, Any]:
    low, high = row["ci95"]
    return {
        **row,
        "goal": goal,
        "within_goal": row["value"] <= goal,
        "verdict": verdict(low, high, goal),
    }


def _fs_type(path: Path) -> str:
    """The file system type of `path` (longest mount point prefix in /proc/mounts)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


# ---------------------------------------------------------------------------- c = 1


async def bench_c1(
    endpoint: str, settings: Settings, ws: WalSettings, wal_root: Path, progress: Progress
) -> dict[str, Any]:
    """One append at a time: what a lone chatbot turn waits for."""
    started = time.perf_counter()
    latency: dict[str, list[float]] = {BUFFERED: [], SYNC: []}
    cpu: dict[str, list[int]] = {BUFFERED: [], SYNC: []}
    drains: list[float] = []
    async with _sides(endpoint, "c1", wal_root) as sides:
        progress(f"wal c=1: {ws.c1_warmup} warm-up + {ws.c1_rounds} measured rounds")
        for r in range(ws.c1_warmup + ws.c1_rounds):
            if r == ws.c1_warmup:
                gc.collect()
            sid = f"c1-{r // ws.c1_per_session:05d}"
            for side in _rotated(sides, r):
                cpu0 = time.process_time_ns()
                elapsed = await side.append(sid)
                drained = await side.drain()
                cpu1 = time.process_time_ns()
                if r >= ws.c1_warmup:
                    latency[side.name].append(elapsed / 1e6)
                    cpu[side.name].append(cpu1 - cpu0)
                    if side.buffered:
                        drains.append(drained / 1e6)
        verified = {side.name: await _verify(side) for side in sides}
    batch = ws.c1_batch
    waves = {
        name: [values[i : i + batch] for i in range(0, len(values), batch)]
        for name, values in latency.items()
    }
    candidates = {name: _latency_entry(waves[name], 1) for name in (BUFFERED, SYNC)}
    candidates[BUFFERED]["drain_ms"] = summary(drains)
    for name in candidates:
        candidates[name]["cpu_ms_per_append"] = summary(_cpu_batches(cpu[name], batch))
        candidates[name]["samples_ms"] = [round(v, 4) for v in latency[name]]
    ratios = [
        _ratio(
            "append latency buffered / sync, c=1",
            latency[BUFFERED],
            latency[SYNC],
            settings,
            0.2,
        ),
        _ratio(
            "CPU per append buffered (incl. drain) / sync, c=1",
            _cpu_batches(cpu[BUFFERED], batch),
            _cpu_batches(cpu[SYNC], batch),
            settings,
            None,
        ),
    ]
    b, s = candidates[BUFFERED]["latency_ms"], candidates[SYNC]["latency_ms"]
    notes = [
        f"c=1: append_turns of a user + assistant pair, one at a time; medians buffered "
        f"{b['median']:.2f} ms (p90 {b['p90']:.2f}), sync {s['median']:.2f} ms "
        f"(p90 {s['p90']:.2f}); throughput at c=1 is 1 / latency",
        f"c=1 drain (flush after each buffered append, untimed in its latency): median "
        f"{statistics.median(drains):.2f} ms, p90 {quantile(drains, 0.9):.2f} ms",
        f"c=1 verified in the store: {verified} turns, exactly the acknowledged ids",
        "the 'pool' column of the latency table is the concurrency (tasks appending at once)",
    ]
    return {
        "name": "wal append c=1",
        "kind": "latency",
        "backend": "DynamoDB Local",
        "samples": ws.c1_rounds,
        "warmup": ws.c1_warmup,
        "elapsed_s": time.perf_counter() - started,
        "candidates": candidates,
        "ratios": ratios,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- c = 64


@dataclass(slots=True)
class Burst:
    """One candidate's burst: every append's latency, and what the burst cost."""

    latencies_ms: list[float]
    ack_s: float  # until the last append returned
    drain_s: float  # flush() after the burst (buffered only)
    cpu_ns: int  # this process, burst + drain
    fsyncs: int | None  # burst + drain
    ack_fsyncs: int | None  # until the last append returned
    wal_appends: int | None

    @property
    def appends(self) -> int:
        return len(self.latencies_ms)


async def _burst(side: Side, ws: WalSettings) -> Burst:
    latencies: list[float] = []

    async def task(i: int) -> None:
        sid = f"c64-{i:03d}"
        for _ in range(ws.appends_per_task):
            latencies.append((await side.append(sid)) / 1e6)

    before = side.counters()
    cpu0 = time.process_time_ns()
    t0 = time.perf_counter_ns()
    await asyncio.gather(*(task(i) for i in range(ws.concurrency)))
    t1 = time.perf_counter_ns()
    acked = side.counters()
    drain_ns = await side.drain()
    cpu1 = time.process_time_ns()
    after = side.counters()
    fsyncs = ack_fsyncs = appends = None
    if before is not None and acked is not None and after is not None:
        fsyncs, appends = after[0] - before[0], after[1] - before[1]
        ack_fsyncs = acked[0] - before[0]
    return Burst(
        latencies, (t1 - t0) / 1e9, drain_ns / 1e9, cpu1 - cpu0, fsyncs, ack_fsyncs, appends
    )


async def bench_c64(
    endpoint: str, settings: Settings, ws: WalSettings, wal_root: Path, progress: Progress
) -> dict[str, Any]:
    """64 tasks appending at once, each on its own session: group commit and throughput."""
    started = time.perf_counter()
    c = ws.concurrency
    bursts: dict[str, list[Burst]] = {BUFFERED: [], SYNC: []}
    async with _sides(endpoint, f"c{c}", wal_root) as sides:
        progress(
            f"wal c={c}: {ws.c64_warmup} warm-up + {ws.c64_rounds} measured bursts of "
            f"{c} x {ws.appends_per_task} appends"
        )
        for r in range(ws.c64_warmup + ws.c64_rounds):
            if r == ws.c64_warmup:
                gc.collect()
            for side in _rotated(sides, r):
                burst = await _burst(side, ws)
                if r >= ws.c64_warmup:
                    bursts[side.name].append(burst)
        verified = {side.name: await _verify(side) for side in sides}

    buf, sync = bursts[BUFFERED], bursts[SYNC]
    candidates: dict[str, Any] = {}
    for name, runs in bursts.items():
        entry = _latency_entry([b.latencies_ms for b in runs], c)
        entry["appends_per_s"] = summary([b.appends / b.ack_s for b in runs])
        entry["burst_ms"] = summary([b.ack_s * 1e3 for b in runs])
        entry["drain_ms"] = summary([b.drain_s * 1e3 for b in runs])
        entry["cpu_ms_per_append"] = summary([b.cpu_ns / 1e6 / b.appends for b in runs])
        entry["samples_ms"] = [[round(v, 3) for v in b.latencies_ms] for b in runs]
        candidates[name] = entry

    ack_tput = {n: [b.appends / b.ack_s for b in runs] for n, runs in bursts.items()}
    e2e_tput = {n: [b.appends / (b.ack_s + b.drain_s) for b in runs] for n, runs in bursts.items()}
    value = statistics.median([v for b in buf for v in b.latencies_ms]) / statistics.median(
        [v for b in sync for v in b.latencies_ms]
    )
    ci = _pooled_median_interval(
        [b.latencies_ms for b in buf], [b.latencies_ms for b in sync], reps=ws.bootstrap
    )
    ratios: list[dict[str, Any]] = [
        {
            "name": f"append latency buffered / sync, c={c}",
            "value": value,
            "ci95": [ci[0], ci[1]],
            "goal": 0.2,
            "within_goal": value <= 0.2,
            "verdict": verdict(ci[0], ci[1], 0.2),
        },
        _at_least(
            _ratio(
                f"throughput (appends/s) buffered / sync, c={c}",
                ack_tput[BUFFERED],
                ack_tput[SYNC],
                settings,
                None,
            ),
            3.0,
            "3",
        ),
        _ratio(
            f"throughput incl. drain, buffered / sync, c={c}",
            e2e_tput[BUFFERED],
            e2e_tput[SYNC],
            settings,
            None,
        ),
        _ratio(
            f"CPU per append buffered (incl. drain) / sync, c={c}",
            [b.cpu_ns / b.appends for b in buf],
            [b.cpu_ns / b.appends for b in sync],
            settings,
            None,
        ),
    ]
    notes: list[str] = []
    if all(b.fsyncs is not None for b in buf):
        fsyncs = [b.fsyncs or 0 for b in buf]
        row = _rate_row(
            f"fsyncs per append, c={c} (burst + drain)",
            fsyncs,
            [b.appends for b in buf],
            reps=ws.bootstrap,
            goal=None,
        )
        ratios.append(_at_most(row, 0.2))
        ack_fsyncs = [b.ack_fsyncs or 0 for b in buf]
        ratios.append(
            _rate_row(
                f"fsyncs per append, c={c}, until the last ack (informational)",
                ack_fsyncs,
                [b.appends for b in buf],
                reps=ws.bootstrap,
                goal=None,
            )
        )
        counted = sum(b.wal_appends or 0 for b in buf)
        notes.append(
            f"c={c} fsyncs: {sum(fsyncs)} for {sum(b.appends for b in buf)} appends, "
            f"{sum(ack_fsyncs)} of them before the last append returned "
            f"(health().wal_appends counted {counted})"
        )
    else:
        notes.append("WARNING: health() has no wal_fsyncs / wal_appends: fsyncs not measured")
    bt, st = candidates[BUFFERED], candidates[SYNC]
    notes += [
        f"c={c}: {ws.c64_rounds} bursts per candidate of {c} tasks x {ws.appends_per_task} "
        f"appends, each task on its own session; medians buffered "
        f"{bt['latency_ms']['median']:.2f} ms (p90 {bt['latency_ms']['p90']:.2f}), sync "
        f"{st['latency_ms']['median']:.2f} ms (p90 {st['latency_ms']['p90']:.2f}); "
        f"throughput buffered {bt['appends_per_s']['median']:.0f} appends/s, sync "
        f"{st['appends_per_s']['median']:.0f} appends/s",
        f"c={c} drain after each buffered burst: median {bt['drain_ms']['median']:.0f} ms "
        f"(burst {bt['burst_ms']['median']:.0f} ms); throughput incl. drain "
        f"{statistics.median(e2e_tput[BUFFERED]):.0f} appends/s",
        f"c={c} verified in the store: {verified} turns, exactly the acknowledged ids",
    ]
    return {
        "name": f"wal append c={c}",
        "kind": "latency",
        "backend": "DynamoDB Local",
        "samples": ws.c64_rounds * c * ws.appends_per_task,
        "warmup": ws.c64_warmup,
        "elapsed_s": time.perf_counter() - started,
        "candidates": candidates,
        "ratios": ratios,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- entry point


async def run_wal(endpoint: str, settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """Both WAL benchmarks; DynamoDB Local at `endpoint`, fake AWS env set by the caller."""
    ws = wal_settings_for(settings)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memsdk-bench-wal-", dir=root) as tmp:
        wal_root = Path(tmp)
        results = [await bench_c1(endpoint, settings, ws, wal_root, progress)]
        results.append(await bench_c64(endpoint, settings, ws, wal_root, progress))
    fs = _fs_type(wal_root)
    for result in results:
        result["notes"].append(
            f"wal_dir under the repository's .cache/ ({fs}); DynamoDB Local on loopback on "
            "the same 2 cores: "
            "the synchronous side's latency is an emulator's, not AWS's (add ~1-3 ms per "
            "round trip in region), so the ratios understate what the WAL saves on AWS"
        )
    return results
