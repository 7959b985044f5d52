"""The resilience benchmark (issue 6): a naive client against memsdk under the same outage.

Two candidates, each a `MemoryClient` on a fresh table of the benchmark's DynamoDB Local,
each behind its own `memsdk.faultproxy.FaultProxy` (so the proxy's request counts are per
candidate):

- **naive**: `store_max_attempts=5`, `retry_budget_ratio=1.0`,
  `retry_budget_min_per_second=1e6` (the budget never runs dry), `breaker_min_calls=1e6`
  and `breaker_consecutive_failures=1e6` (the breaker never judges, so it never opens),
  `read_timeout=write_timeout=2.0`. What is
  left is plain tenacity with 5 attempts and exponential backoff with full jitter, bounded
  by a 2 s deadline per call: the seed design's retry loop (retry every transient error up
  to N times, no budget shared between calls, no breaker), on memsdk's own data path so that
  both candidates send byte-identical requests when the store is healthy.
- **memsdk**: its defaults (2 attempts, a 10% retry budget, the store breaker: open after 20
  failures in a row, for 5 s doubling up to 15 s, cut short by the recovery probe once a
  second; 0.3 s read and 1 s write deadlines). No WAL: appends are synchronous on both
  sides, so both candidates do the same work and an append during the outage fails.

Workload, per candidate: 32 sessions, each looping `load_context` + `append_turns` of a small
user + assistant pair, 20 ms think time between messages. After a 0.5 s warm-up, three
phases: healthy (2 s), outage (the proxy answers every request with HTTP 503; 6 s, quick
3 s), healthy again (4 s). The candidates run one after the other, never concurrently: full
mode runs naive then memsdk, then memsdk then naive; quick mode naive then memsdk once.

Measured per candidate (runs pooled), a public call belonging to the phase it started in:

- offered calls (public calls started) per phase;
- store requests at the proxy during the outage; the healthy phase gives requests per public
  call; **amplification** = outage requests / (outage calls x healthy requests per call):
  1.0 means the outage cost the store what the same calls cost when healthy;
- p50 / p99 latency of `load_context` and `append_turns` started during the outage,
  failures and degraded answers included with their duration;
- outcomes by type (ok, degraded load, exception class name);
- **recovery time**: from the end of the outage until 10 consecutive public calls (in the
  order they completed, among calls that completed after the outage ended) succeeded, loads
  non-degraded.

Ratios memsdk / naive: amplification (memsdk's own amplification has the goal <= 1.1),
outage p99 of `load_context` and of `append_turns`, recovery time; informational but for
that goal. Intervals: amplification resamples 0.5 s bins of the outage (requests and calls
started in a bin stay together), p99 resamples calls, recovery is the range over runs.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cache import _row
from benchmarks.core import CUSTOMER_ID, Progress, Settings, dynamodb_url, quantile
from benchmarks.core import memsdk_config as generous_config
from memsdk import Config, MemoryClient, Turn
from memsdk.faultproxy import FaultProxy
from tests.harness.dynamodb_local import create_test_table

__all__ = ["ResilienceSettings", "resilience_settings_for", "run_resilience"]

NAIVE = "naive (5 attempts, no budget, no breaker)"
MEMSDK = "memsdk (budget + breaker)"
PHASES = ("healthy", "outage", "after")
RECOVERY_STREAK = 10
AMPLIFICATION_GOAL = 1.1
OUTAGE_STATUS = 503


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """Durations and counts of the resilience benchmark."""

    sessions: int = 32
    think_s: float = 0.02
    server_warmup_s: float = 4.0  # once, before the first candidate
    warmup_s: float = 1.0  # per candidate run, before the healthy phase
    healthy_s: float = 2.0
    outage_s: float = 6.0
    after_s: float = 4.0
    rounds: int = 2  # rounds of (naive, memsdk), the order rotating
    bin_s: float = 0.5  # proxy sampling period; the amplification bootstrap resamples bins
    bootstrap: int = 1_000


def resilience_settings_for(settings: Settings) -> ResilienceSettings:
    """Full: a 6 s outage, two rounds; quick: a 3 s outage, one round."""
    if settings.mode == "quick":
        return ResilienceSettings(
            outage_s=3.0, rounds=1, server_warmup_s=2.0, bootstrap=settings.bootstrap
        )
    return ResilienceSettings(bootstrap=settings.bootstrap)


def naive_config(store: str) -> Config:
    """The seed design's retry loop: 5 attempts, no retry budget, no breaker, 2 s deadlines."""
    return Config(
        store=store,
        store_max_attempts=5,
        retry_budget_ratio=1.0,
        retry_budget_min_per_second=1e6,
        breaker_min_calls=1_000_000,
        breaker_consecutive_failures=1_000_000,
        read_timeout=2.0,
        write_timeout=2.0,
    )


def memsdk_config(store: str) -> Config:
    """memsdk's defaults; no WAL."""
    return Config(store=store)


CONFIGS = {NAIVE: naive_config, MEMSDK: memsdk_config}


def small_pair(session: str, n: int) -> list[Turn]:
    """A small user + assistant pair (~0.5 KB)."""
    return [
        Turn(role="user", content=f"{session}: question {n}, do you have this in blue?"),
        Turn(role="assistant", content=f"{session}: answer {n}. " + "Yes, in blue. " * 30),
    ]


# ---------------------------------------------------------------------------- one run


@dataclass(slots=True)
class Call:
    """One public call: when it ran (perf_counter seconds) and how it ended."""

    op: str  # "load" or "append"
    start: float
    end: float
    outcome: str  # "ok", "degraded" or an exception class name

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(slots=True)
class Run:
    """What one candidate measured in one run."""

    name: str
    calls: list[Call] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # healthy, outage, after, end
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, requests_total)
    by_outcome_outage: dict[str, int] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)

    def phase_of(self, t: float) -> str | None:
        m = self.marks
        if t < m["healthy"]:
            return None  # warm-up
        if t < m["outage"]:
            return "healthy"
        if t < m["after"]:
            return "outage"
        return "after"

    def requests_between(self, t0: float, t1: float) -> int:
        """Proxy requests between two sample times (both must be sample times)."""
        by_time = dict(self.samples)
        return by_time[t1] - by_time[t0]

    def calls_in(self, phase: str) -> list[Call]:
        return [c for c in self.calls if self.phase_of(c.start) == phase]

    def bins(self, phase: str) -> list[tuple[int, int]]:
        """(requests, calls started) per sampling bin of `phase`."""
        lo, hi = self.marks[phase], self.marks[PHASES[PHASES.index(phase) + 1]]
        times = [t for t, _ in self.samples if lo <= t <= hi]
        counts = dict(self.samples)
        out = []
        for a, b in itertools.pairwise(times):
            started = sum(1 for c in self.calls if a <= c.start < b)
            out.append((counts[b] - counts[a], started))
        return out

    def recovery_s(self) -> float | None:
        """Seconds from the outage's end until RECOVERY_STREAK consecutive successes."""
        end = self.marks["after"]
        done = sorted((c for c in self.calls if c.end >= end), key=lambda c: c.end)
        streak = 0
        for c in done:
            streak = streak + 1 if c.ok else 0
            if streak == RECOVERY_STREAK:
                return c.end - end
        return None


async def _session_loop(
    mem: MemoryClient, sid: str, rs: ResilienceSettings, stop: asyncio.Event, sink: list[Call]
) -> None:
    """One session: load_context, append_turns of a small pair, think; until `stop`."""
    n = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            ctx = await mem.load_context(sid, customer_id=CUSTOMER_ID)
            outcome = "degraded" if ctx.degraded else "ok"
        except Exception as exc:  # every failure is an outcome
            outcome = type(exc).__name__
        t1 = time.perf_counter()
        sink.append(Call("load", t0, t1, outcome))
        try:
            await mem.append_turns(sid, small_pair(sid, n), customer_id=CUSTOMER_ID)
            outcome = "ok"
        except Exception as exc:
            outcome = type(exc).__name__
        t2 = time.perf_counter()
        sink.append(Call("append", t1, t2, outcome))
        n += 1
        await asyncio.sleep(rs.think_s)


async def _warm_server(endpoint: str, rs: ResilienceSettings, progress: Progress) -> None:
    """The workload, untimed, on a scratch table: DynamoDB Local's JIT, imports, pools."""
    progress(f"resilience: {rs.server_warmup_s:g} s server warm-up")
    table = f"res_warm_{secrets.token_hex(4)}"
    await create_test_table(endpoint, table)
    stop = asyncio.Event()
    sink: list[Call] = []
    # core's generous timeouts, no breaker: a cold JVM's slow calls must not trip it.
    config = generous_config(
        dynamodb_url(table, endpoint),
        breaker_min_calls=1_000_000,
        breaker_consecutive_failures=1_000_000,
    )
    async with MemoryClient(config) as mem:
        tasks = [
            asyncio.create_task(_session_loop(mem, f"warm-s{i:02d}", rs, stop, sink))
            for i in range(rs.sessions)
        ]
        await asyncio.sleep(rs.server_warmup_s)
        stop.set()
        await asyncio.gather(*tasks)
    failed = sum(1 for c in sink if not c.ok)
    if failed:
        kinds = dict(Counter(c.outcome for c in sink if not c.ok))
        progress(f"resilience warm-up: WARNING {failed} of {len(sink)} calls failed: {kinds}")


async def _run_candidate(
    name: str, endpoint: str, rs: ResilienceSettings, label: str, progress: Progress
) -> Run:
    table = f"res_{label}_{secrets.token_hex(4)}"
    await create_test_table(endpoint, table)
    run = Run(name)
    stop = asyncio.Event()
    async with FaultProxy(upstream=endpoint, seed=1) as proxy:
        store = dynamodb_url(table, proxy.endpoint)
        async with MemoryClient(CONFIGS[name](store)) as mem:

            def sample() -> float:
                t = time.perf_counter()
                run.samples.append((t, proxy.counts.requests_total))
                return t

            async def phase(mark: str, seconds: float) -> None:
                run.marks[mark] = sample()
                deadline = run.marks[mark] + seconds
                while (left := deadline - time.perf_counter()) > 1e-3:
                    await asyncio.sleep(min(rs.bin_s, left))
                    if deadline - time.perf_counter() > 1e-3:
                        sample()

            tasks = [
                asyncio.create_task(_session_loop(mem, f"{label}-s{i:02d}", rs, stop, run.calls))
                for i in range(rs.sessions)
            ]
            try:
                await asyncio.sleep(rs.warmup_s)
                await phase("healthy", rs.healthy_s)
                before = proxy.counts.by_outcome
                proxy.set_mode("http5xx", status=OUTAGE_STATUS)
                await phase("outage", rs.outage_s)
                proxy.set_mode("pass")
                after = proxy.counts.by_outcome
                run.by_outcome_outage = {k: after[k] - before[k] for k in after}
                await phase("after", rs.after_s)
                run.marks["end"] = sample()
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            health = mem.health()
            run.health = {
                k: getattr(health, k)
                for k in ("store_breaker", "store_breaker_opened", "store_calls_rejected")
                if hasattr(health, k)
            }
    progress(
        f"resilience {label}: {name}: {len(run.calls)} calls, "
        f"{run.samples[-1][1]} store requests, recovery {run.recovery_s()} s"
    )
    return run


# ---------------------------------------------------------------------------- statistics


def _healthy_rate(runs: Sequence[Run]) -> float:
    requests = sum(r.requests_between(r.marks["healthy"], r.marks["outage"]) for r in runs)
    calls = sum(len(r.calls_in("healthy")) for r in runs)
    return requests / calls


def _amplification(runs: Sequence[Run]) -> float:
    requests = sum(r.requests_between(r.marks["outage"], r.marks["after"]) for r in runs)
    calls = sum(len(r.calls_in("outage")) for r in runs)
    return requests / (calls * _healthy_rate(runs))


def _bins(runs: Sequence[Run]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(healthy bins, outage bins) of every run: computed once, resampled many times."""
    return [b for r in runs for b in r.bins("healthy")], [b for r in runs for b in r.bins("outage")]


def _amplification_boot(
    bins: tuple[list[tuple[int, int]], list[tuple[int, int]]], rng: random.Random
) -> float:
    """One bootstrap replicate: healthy and outage bins resampled with replacement."""
    healthy, outage = bins
    h = rng.choices(healthy, k=len(healthy))
    o = rng.choices(outage, k=len(outage))
    rate = sum(b[0] for b in h) / max(1, sum(b[1] for b in h))
    return sum(b[0] for b in o) / max(1e-9, sum(b[1] for b in o) * rate)


def _latencies(runs: Sequence[Run], op: str, phase: str) -> list[float]:
    return [(c.end - c.start) * 1e3 for r in runs for c in r.calls_in(phase) if c.op == op]


def _p99_ratio(
    num: Sequence[float], den: Sequence[float], reps: int, rng: random.Random
) -> tuple[float, tuple[float, float]]:
    value = quantile(num, 0.99) / quantile(den, 0.99)
    boot = [
        quantile(rng.choices(num, k=len(num)), 0.99) / quantile(rng.choices(den, k=len(den)), 0.99)
        for _ in range(reps)
    ]
    return value, (quantile(boot, 0.025), quantile(boot, 0.975))


def _candidate(runs: Sequence[Run], rs: ResilienceSettings, reps: int) -> dict[str, Any]:
    rng = random.Random(11)
    amp = _amplification(runs)
    bins = _bins(runs)
    boot = [_amplification_boot(bins, rng) for _ in range(reps)]
    recoveries = [r.recovery_s() for r in runs]
    outcomes: dict[str, dict[str, dict[str, int]]] = {}
    for phase in PHASES:
        per_op: dict[str, dict[str, int]] = {}
        for op in ("load", "append"):
            per_op[op] = dict(
                Counter(c.outcome for r in runs for c in r.calls_in(phase) if c.op == op)
            )
        outcomes[phase] = per_op
    latency = {}
    for op in ("load", "append"):
        values = _latencies(runs, op, "outage")
        latency[op] = {
            "calls": len(values),
            "p50": quantile(values, 0.5),
            "p99": quantile(values, 0.99),
            "max": max(values),
        }
    healthy = {
        op: {
            "p50": quantile(_latencies(runs, op, "healthy"), 0.5),
            "p99": quantile(_latencies(runs, op, "healthy"), 0.99),
        }
        for op in ("load", "append")
    }
    return {
        "runs": len(runs),
        "healthy_latency_ms": healthy,
        "offered_calls": {p: sum(len(r.calls_in(p)) for r in runs) for p in PHASES},
        "healthy_requests_per_call": _healthy_rate(runs),
        "outage_requests": sum(
            r.requests_between(r.marks["outage"], r.marks["after"]) for r in runs
        ),
        "outage_proxy_outcomes": dict(sum((Counter(r.by_outcome_outage) for r in runs), Counter())),
        "amplification": amp,
        "healthy_requests_per_s": sum(
            r.requests_between(r.marks["healthy"], r.marks["outage"]) for r in runs
        )
        / sum(r.marks["outage"] - r.marks["healthy"] for r in runs),
        "outage_requests_per_s": sum(
            r.requests_between(r.marks["outage"], r.marks["after"]) for r in runs
        )
        / sum(r.marks["after"] - r.marks["outage"] for r in runs),
        "amplification_ci95": [quantile(boot, 0.025), quantile(boot, 0.975)],
        "outage_latency_ms": latency,
        "outcomes": outcomes,
        "recovery_s": recoveries,
        "recovery_s_median": statistics.median(rs.after_s if v is None else v for v in recoveries),
        "recovered": all(v is not None for v in recoveries),
        "health": [r.health for r in runs],
        "samples_ms": {
            op: [round(v, 3) for v in _latencies(runs, op, "outage")] for op in ("load", "append")
        },
    }


# ---------------------------------------------------------------------------- entry point


async def run_resilience(
    endpoint: str, settings: Settings, progress: Progress
) -> list[dict[str, Any]]:
    """The naive client against memsdk under the same outage; DynamoDB Local at `endpoint`."""
    rs = resilience_settings_for(settings)
    started = time.perf_counter()
    runs: dict[str, list[Run]] = {NAIVE: [], MEMSDK: []}
    progress(
        f"resilience: {rs.rounds} round(s) of naive + memsdk, {rs.sessions} sessions, "
        f"{rs.healthy_s:g} s healthy, {rs.outage_s:g} s outage (HTTP {OUTAGE_STATUS}), "
        f"{rs.after_s:g} s after"
    )
    await _warm_server(endpoint, rs, progress)
    for r in range(rs.rounds):
        order = (NAIVE, MEMSDK) if r % 2 == 0 else (MEMSDK, NAIVE)
        for name in order:
            gc.collect()
            label = f"r{r}{'n' if name == NAIVE else 'm'}"
            runs[name].append(await _run_candidate(name, endpoint, rs, label, progress))

    candidates = {name: _candidate(rr, rs, rs.bootstrap) for name, rr in runs.items()}
    naive, mem = candidates[NAIVE], candidates[MEMSDK]
    rng = random.Random(5)
    amp_lo, amp_hi = mem["amplification_ci95"]
    mem_bins, naive_bins = _bins(runs[MEMSDK]), _bins(runs[NAIVE])
    boot_ratio = [
        _amplification_boot(mem_bins, rng) / _amplification_boot(naive_bins, rng)
        for _ in range(rs.bootstrap)
    ]
    ratios = [
        _row(
            "amplification memsdk / naive",
            mem["amplification"] / naive["amplification"],
            (quantile(boot_ratio, 0.025), quantile(boot_ratio, 0.975)),
            None,
        ),
        _row(
            "memsdk amplification (outage requests / healthy cost)",
            mem["amplification"],
            (amp_lo, amp_hi),
            AMPLIFICATION_GOAL,
        ),
        _row(
            "naive amplification (informational)",
            naive["amplification"],
            tuple(naive["amplification_ci95"]),  # type: ignore[arg-type]
            None,
        ),
    ]
    for op, label in (("load", "load_context"), ("append", "append_turns")):
        value, ci = _p99_ratio(
            _latencies(runs[MEMSDK], op, "outage"),
            _latencies(runs[NAIVE], op, "outage"),
            rs.bootstrap,
            rng,
        )
        ratios.append(_row(f"outage p99 {label} memsdk / naive", value, ci, None))
    per_run = [
        (m if m is not None else rs.after_s) / max(1e-3, n if n is not None else rs.after_s)
        for m, n in zip(mem["recovery_s"], naive["recovery_s"], strict=True)
    ]
    ratios.append(
        _row(
            "recovery time memsdk / naive",
            mem["recovery_s_median"] / max(1e-3, naive["recovery_s_median"]),
            (min(per_run), max(per_run)),
            None,
        )
    )

    def fmt_rec(values: list[float | None]) -> str:
        return ", ".join("not within the run" if v is None else f"{v:.2f} s" for v in values)

    notes = [
        f"{rs.sessions} sessions per candidate, each looping load_context + append_turns of a "
        f"small pair, {rs.think_s * 1e3:.0f} ms think time; phases {rs.healthy_s:g} s healthy, "
        f"{rs.outage_s:g} s outage (every request answered HTTP {OUTAGE_STATUS} by the fault "
        f"proxy), {rs.after_s:g} s healthy again; {rs.rounds} round(s), candidates one after "
        "the other (order rotating), each on its own table and its own proxy",
        "naive = memsdk with store_max_attempts=5, retry_budget_ratio=1.0, "
        "retry_budget_min_per_second=1e6, breaker_min_calls=1e6, "
        "breaker_consecutive_failures=1e6, 2 s deadlines: plain tenacity with 5 attempts, no "
        "budget, no breaker (the seed design's retry loop)",
        "memsdk = its defaults (2 attempts, 10% retry budget, breaker opening after 20 "
        "failures in a row, recovery probe every second), read_timeout 0.3 s, write_timeout "
        "1 s, no WAL",
        "amplification = store requests during the outage / (calls started during the outage "
        "x store requests per call when healthy); CI resamples 0.5 s bins. p99 CI resamples "
        "calls; the recovery 'CI' is the range of per-run ratios. Failed calls and degraded "
        "loads count with their duration",
        "closed loop: a session that fails fast offers more calls, so memsdk offers many more "
        "calls during the outage than the naive client; amplification is per offered call, "
        "the store request rates below are per second",
        f"recovery = from the outage's end until {RECOVERY_STREAK} consecutive calls (in "
        "completion order) succeed, loads non-degraded; memsdk's waits for its recovery probe "
        "(one read a second while the breaker is open) and three half-open probes, the naive "
        "client retries into the recovered store at once",
    ]
    for name, c in candidates.items():
        lat = c["outage_latency_ms"]
        notes.append(
            f"{name}: offered calls {c['offered_calls']}; healthy "
            f"{c['healthy_requests_per_call']:.2f} store requests per call; outage "
            f"{c['outage_requests']} store requests ({c['outage_proxy_outcomes']}), "
            f"amplification {c['amplification']:.2f}; outage load_context p50 "
            f"{lat['load']['p50']:.1f} ms / p99 {lat['load']['p99']:.1f} ms, append p50 "
            f"{lat['append']['p50']:.1f} ms / p99 {lat['append']['p99']:.1f} ms; recovery "
            f"{fmt_rec(c['recovery_s'])}; health {c['health']}"
        )
        notes.append(
            f"{name}: healthy latency load_context p50 "
            f"{c['healthy_latency_ms']['load']['p50']:.1f} ms / p99 "
            f"{c['healthy_latency_ms']['load']['p99']:.1f} ms, append p50 "
            f"{c['healthy_latency_ms']['append']['p50']:.1f} ms / p99 "
            f"{c['healthy_latency_ms']['append']['p99']:.1f} ms; "
            f"store requests per second healthy {c['healthy_requests_per_s']:.0f}, "
            f"during the outage {c['outage_requests_per_s']:.0f}; outcomes during the outage "
            f"{c['outcomes']['outage']}"
        )
        notes.append(
            f"{name}: outcomes healthy {c['outcomes']['healthy']}, after the outage "
            f"{c['outcomes']['after']}"
        )
    return [
        {
            "name": "resilience: store outage",
            "kind": "resilience",
            "backend": "DynamoDB Local behind FaultProxy",
            "samples": rs.rounds,
            "warmup": 0,
            "elapsed_s": time.perf_counter() - started,
            "settings": {
                "sessions": rs.sessions,
                "think_s": rs.think_s,
                "warmup_s": rs.warmup_s,
                "healthy_s": rs.healthy_s,
                "outage_s": rs.outage_s,
                "after_s": rs.after_s,
                "rounds": rs.rounds,
            },
            "candidates": candidates,
            "ratios": ratios,
            "notes": notes,
        }
    ]
