"""What a simulation found: the figures of the run, the chaos as applied and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from memsdk.models import Health
from memsdk.simulate.chaos import AppliedChaos
from memsdk.simulate.stats import OpSeries, OpSummary
from memsdk.simulate.verify import Verification

__all__ = ["Series", "SimulationResult", "TierRow"]

# Operations of the load itself; anything else (seed_history) is set-up.
LOAD_OPERATIONS = ("load_context", "append_turns")


@dataclass(frozen=True, slots=True)
class Series:
    """Per-second figures of the load phase, second 0 first."""

    seconds: int
    operations: dict[str, OpSeries]
    messages: list[int]
    errors: list[int]
    degraded: list[int]
    wal_pending: list[int]
    store_breaker: list[str]
    redis_breaker: list[str]


@dataclass(frozen=True, slots=True)
class TierRow:
    """One tier's lookups and hits (None: the tier is off)."""

    tier: str
    lookups: int | None
    hits: int | None
    note: str = ""

    @property
    def hit_rate(self) -> float | None:
        """hits / lookups, or None without lookups."""
        if not self.lookups or self.hits is None:
            return None
        return self.hits / self.lookups


@dataclass
class SimulationResult:
    """Everything `memsdk simulate` reports; no turn content anywhere in it."""

    store_kind: str  # "sqlite" or "dynamodb": never the URL (paths, endpoints)
    wal: bool
    redis: bool
    consistency: str
    sessions: int
    seed: int
    planned_s: float
    duration_s: float = 0.0
    seeding_s: float = 0.0
    flush_s: float | None = None
    flush_error: str | None = None
    operations: dict[str, OpSummary] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    messages: int = 0
    messages_failed: int = 0
    sessions_started: int = 0
    power_sessions: int = 0
    power_history_turns: list[int] = field(default_factory=list)
    # Answers by tier (l1, store, degraded); store_found / store_absent: answers for which
    # the store was asked (a whole read, or the META that validated L1).
    reads: dict[str, int] = field(default_factory=dict)
    stale_reads: int = 0
    stale_examples: list[str] = field(default_factory=list)
    ledger: dict[str, int] = field(default_factory=dict)
    health: Health | None = None
    wal_peak_records: int = 0
    wal_peak_bytes: int = 0
    chaos: list[AppliedChaos] = field(default_factory=list)
    verification: Verification = field(default_factory=Verification)
    series: Series | None = None

    @property
    def ok(self) -> bool:
        """Every acknowledged turn read back intact and no read missed this process's writes."""
        return self.verification.ok and self.stale_reads == 0

    @property
    def exit_code(self) -> int:
        """0 when ok, else 1."""
        return 0 if self.ok else 1

    def ops_per_s(self, op: str) -> float | None:
        """Calls of a load operation per second of load; None for set-up operations."""
        summary = self.operations.get(op)
        if summary is None or op not in LOAD_OPERATIONS or self.duration_s <= 0:
            return None
        return summary.count / self.duration_s

    def tiers(self) -> list[TierRow]:
        """Hit rates per tier: L1 and Redis from health(), the store from the answers."""
        h = self.health
        rows = []
        if h is not None:
            rows.append(
                TierRow("L1", h.l1_hits + h.l1_misses, h.l1_hits, "window served from memory")
            )
            if self.redis:
                lookups = h.redis_hits + h.redis_misses + h.redis_errors
                rows.append(
                    TierRow(
                        "Redis",
                        lookups,
                        h.redis_hits,
                        f"errors {h.redis_errors}, bypassed {h.redis_bypassed}",
                    )
                )
            else:
                rows.append(TierRow("Redis", None, None, "off"))
        found, absent = self.reads.get("store_found", 0), self.reads.get("store_absent", 0)
        rows.append(TierRow("store", found + absent, found, "session found (a new one misses)"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every figure, the time series included."""
        v = self.verification
        out: dict[str, Any] = {
            "format": "memsdk-simulate/1",
            "ok": self.ok,
            "run": {
                "store": self.store_kind,
                "wal": self.wal,
                "redis": self.redis,
                "consistency": self.consistency,
                "sessions": self.sessions,
                "seed": self.seed,
                "planned_s": self.planned_s,
                "duration_s": round(self.duration_s, 3),
                "seeding_s": round(self.seeding_s, 3),
                "flush_s": None if self.flush_s is None else round(self.flush_s, 3),
                "flush_error": self.flush_error,
            },
            "throughput": {
                "messages": self.messages,
                "messages_failed": self.messages_failed,
                "messages_per_s": round(self.messages / self.duration_s, 2)
                if self.duration_s
                else 0.0,
                "sessions_started": self.sessions_started,
                "power_sessions": self.power_sessions,
                "power_history_turns": self.power_history_turns,
            },
            "operations": {
                op: _op_dict(s, self.ops_per_s(op)) for op, s in self.operations.items()
            },
            "tiers": [
                {
                    "tier": t.tier,
                    "lookups": t.lookups,
                    "hits": t.hits,
                    "hit_rate": t.hit_rate,
                    "note": t.note,
                }
                for t in self.tiers()
            ],
            "reads": self.reads,
            "stale_reads": self.stale_reads,
            "stale_examples": self.stale_examples,
            "retries": self.health.store_retries if self.health else 0,
            "retries_refused": self.health.store_retries_refused if self.health else 0,
            "degraded_replies": self.health.degraded_replies if self.health else 0,
            "wal_backlog_peak": {"records": self.wal_peak_records, "bytes": self.wal_peak_bytes},
            "errors": self.errors,
            "turns": self.ledger,
            "chaos": [
                {
                    "event": str(a.event),
                    "kind": a.event.kind,
                    "target": a.event.target,
                    "start_s": a.event.start_s,
                    "duration_s": a.event.duration_s,
                    "level": a.event.level,
                    "mechanism": a.mechanism,
                    "applied_at_s": _round(a.applied_at_s),
                    "lifted_at_s": _round(a.lifted_at_s),
                }
                for a in self.chaos
            ],
            "verification": {
                "ok": v.ok,
                "sessions": v.sessions,
                "acknowledged": v.acknowledged,
                "missing": v.missing,
                "duplicated": v.duplicated,
                "out_of_order": v.out_of_order,
                "changed": v.changed,
                "unexpected": v.unexpected,
                "refused": v.refused,
                "refused_landed": v.refused_landed,
                "ambiguous": v.ambiguous,
                "ambiguous_landed": v.ambiguous_landed,
                "ambiguous_absent": v.ambiguous_absent,
                "ambiguous_broken": v.ambiguous_broken,
                "unreadable_sessions": v.unreadable_sessions,
                "problems": v.problems,
            },
            "health": msgspec.to_builtins(self.health) if self.health else None,
        }
        if self.series is not None:
            s = self.series
            out["series"] = {
                "seconds": s.seconds,
                "operations": {
                    op: {
                        "count": o.count,
                        "p50_ms": [_round(x) for x in o.p50_ms],
                        "p99_ms": [_round(x) for x in o.p99_ms],
                    }
                    for op, o in s.operations.items()
                },
                "messages": s.messages,
                "errors": s.errors,
                "degraded": s.degraded,
                "wal_pending": s.wal_pending,
                "store_breaker": s.store_breaker,
                "redis_breaker": s.redis_breaker,
            }
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _op_dict(s: OpSummary, ops_per_s: float | None) -> dict[str, Any]:
    return {
        "count": s.count,
        "errors": s.errors,
        "ops_per_s": _round(ops_per_s),
        "p50_ms": _round(s.p50_ms),
        "p95_ms": _round(s.p95_ms),
        "p99_ms": _round(s.p99_ms),
        "max_ms": _round(s.max_ms),
    }
