"""What a simulation measures: call latencies, per-second counts and periodic health samples.

Everything is kept as compact arrays of numbers (16 bytes per call) and summarised at the
end: percentiles per operation for the whole run and per second of it.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from memsdk.models import Health

__all__ = [
    "EventCounts",
    "HealthSampler",
    "LatencyRecorder",
    "OpSeries",
    "OpSummary",
    "percentile",
]


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The pct-th percentile of sorted values, interpolated between ranks; 0.0 when empty."""
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * pct / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True, slots=True)
class OpSummary:
    """One operation over the whole run (latencies of calls that returned, in ms)."""

    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class OpSeries:
    """One operation per second of the run: calls that returned, their p50 and p99 (ms)."""

    count: list[int]
    p50_ms: list[float | None]
    p99_ms: list[float | None]


@dataclass(slots=True)
class _Op:
    at_s: array[float] = field(default_factory=lambda: array("d"))
    ms: array[float] = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)


class LatencyRecorder:
    """Latencies per operation, each stamped with its end time (seconds from start())."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._t0 = clock()
        self._ops: dict[str, _Op] = {}

    def start(self) -> None:
        """Time zero of the run: stamps and series count from here."""
        self._t0 = self._clock()

    def now(self) -> float:
        """The clock this recorder uses (pass it back as `started`)."""
        return self._clock()

    def ok(self, op: str, started: float) -> float:
        """Record a call of `op` that returned; returns its latency in ms."""
        ended = self._clock()
        entry = self._ops.setdefault(op, _Op())
        ms = (ended - started) * 1000
        entry.at_s.append(ended - self._t0)
        entry.ms.append(ms)
        return ms

    def error(self, op: str, kind: str) -> None:
        """Record a call of `op` that raised `kind` (an exception class name)."""
        self._ops.setdefault(op, _Op()).errors[kind] += 1

    def operations(self) -> list[str]:
        """Operations seen, in name order."""
        return sorted(self._ops)

    def errors(self) -> dict[str, dict[str, int]]:
        """Errors per operation and type."""
        return {op: dict(e.errors) for op, e in sorted(self._ops.items()) if e.errors}

    def summary(self, op: str) -> OpSummary:
        """Count, errors and percentiles of `op` over the whole run."""
        entry = self._ops.get(op, _Op())
        ordered = sorted(entry.ms)
        return OpSummary(
            count=len(ordered),
            errors=sum(entry.errors.values()),
            p50_ms=percentile(ordered, 50),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            max_ms=ordered[-1] if ordered else 0.0,
        )

    def series(self, op: str, seconds: int) -> OpSeries:
        """Per-second count, p50 and p99 of `op` for seconds [0, seconds); None when idle."""
        buckets: list[list[float]] = [[] for _ in range(seconds)]
        entry = self._ops.get(op, _Op())
        for at, ms in zip(entry.at_s, entry.ms, strict=True):
            if 0 <= at < seconds:
                buckets[int(at)].append(ms)
        p50: list[float | None] = []
        p99: list[float | None] = []
        for bucket in buckets:
            bucket.sort()
            p50.append(percentile(bucket, 50) if bucket else None)
            p99.append(percentile(bucket, 99) if bucket else None)
        return OpSeries(count=[len(b) for b in buckets], p50_ms=p50, p99_ms=p99)


class EventCounts:
    """Named event counts per second of the run (messages, errors, degraded replies...)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._t0 = clock()
        self._per_second: dict[str, Counter[int]] = {}
        self.totals: Counter[str] = Counter()

    def start(self) -> None:
        """Time zero of the run."""
        self._t0 = self._clock()

    def bump(self, name: str, n: int = 1) -> None:
        """Count `n` events of `name` now."""
        second = max(0, int(self._clock() - self._t0))
        self._per_second.setdefault(name, Counter())[second] += n
        self.totals[name] += n

    def series(self, name: str, seconds: int) -> list[int]:
        """Counts of `name` for each second in [0, seconds)."""
        counts = self._per_second.get(name, Counter())
        return [counts[s] for s in range(seconds)]


@dataclass(frozen=True, slots=True)
class _Sample:
    at_s: float
    wal_records: int
    wal_bytes: int
    store_breaker: str
    redis_breaker: str


class HealthSampler:
    """Samples MemoryClient.health() on demand; keeps the WAL peak and per-second states."""

    def __init__(
        self, health: Callable[[], Health], clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._health = health
        self._clock = clock
        self._t0 = clock()
        self._samples: list[_Sample] = []
        self.wal_peak_records = 0
        self.wal_peak_bytes = 0
        self.last: Health | None = None

    def start(self) -> None:
        """Time zero of the run."""
        self._t0 = self._clock()

    def sample(self) -> Health:
        """Take one sample (no I/O) and return it."""
        h = self._health()
        self.last = h
        self.wal_peak_records = max(self.wal_peak_records, h.wal_pending_records)
        self.wal_peak_bytes = max(self.wal_peak_bytes, h.wal_pending_bytes)
        self._samples.append(
            _Sample(
                at_s=self._clock() - self._t0,
                wal_records=h.wal_pending_records,
                wal_bytes=h.wal_pending_bytes,
                store_breaker=h.store_breaker,
                redis_breaker=h.redis_breaker,
            )
        )
        return h

    def wal_series(self, seconds: int) -> list[int]:
        """The largest WAL backlog (records) sampled in each second in [0, seconds)."""
        peaks = [0] * seconds
        for s in self._samples:
            if 0 <= s.at_s < seconds:
                peaks[int(s.at_s)] = max(peaks[int(s.at_s)], s.wal_records)
        return peaks

    def breaker_series(self, which: str, seconds: int) -> list[str]:
        """The worst state of the store (or redis) breaker sampled in each second."""
        rank = {"off": 0, "closed": 1, "half_open": 2, "open": 3}
        states = ["off"] * seconds
        for s in self._samples:
            if 0 <= s.at_s < seconds:
                state = s.store_breaker if which == "store" else s.redis_breaker
                i = int(s.at_s)
                if rank.get(state, 0) > rank[states[i]] or states[i] == "off":
                    states[i] = state
        return states
