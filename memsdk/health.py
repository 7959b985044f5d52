"""What MemoryClient.health() reports: each part's own counters, put together; no I/O."""

from __future__ import annotations

from typing import Any

from memsdk.buffered_writer import BufferedWriter
from memsdk.models import Health
from memsdk.session_cache import SessionCache
from memsdk.wiring import Tiers

__all__ = ["health_of"]


def health_of(
    tiers: Tiers,
    cache: SessionCache,
    writer: BufferedWriter | None,
    *,
    degraded_replies: int,
    consistency: str,
    is_open: bool,
    now_ms: int,
) -> Health:
    """The Health of a client made of these parts (`writer`: None without a wal_dir)."""
    l1 = cache.l1_stats()
    l2 = cache.l2_stats()
    breaker = tiers.store_breaker.stats()
    budget = tiers.retry_budget.stats()
    bulkhead = tiers.store.bulkhead.stats()
    wal: dict[str, Any] = {}
    if writer is not None:
        log = writer.log_stats()
        oldest = log.oldest_pending_ms
        wal = {
            "wal_pending_records": log.pending_records,
            "wal_pending_bytes": log.pending_bytes,
            "wal_oldest_pending_age_s": (
                None if oldest is None else max(0.0, (now_ms - oldest) / 1000)
            ),
            "wal_segments": log.segments,
            "wal_appends": log.appends,
            "wal_fsyncs": log.fsyncs,
            "wal_quarantined_segments": log.quarantined,
            "wal_rejected_records": writer.rejected_records,
            "wal_rejected_turns": writer.rejected_turns,
        }
    has_l2 = cache.l2 is not None
    return Health(
        store=tiers.store.description,
        store_breaker=tiers.store_breaker.state,
        redis_breaker=tiers.redis_breaker.state if has_l2 else "off",
        l1_entries=l1.entries,
        l1_bytes=l1.bytes,
        l1_max_bytes=l1.max_bytes,
        wal_pending_records=wal.pop("wal_pending_records", 0),
        wal_pending_bytes=wal.pop("wal_pending_bytes", 0),
        wal_oldest_pending_age_s=wal.pop("wal_oldest_pending_age_s", None),
        open=is_open,
        consistency=consistency,
        redis=cache.l2.description if cache.l2 is not None else None,
        l1_hits=l1.hits,
        l1_misses=l1.misses,
        l1_evictions=l1.evictions,
        redis_hits=l2.hits,
        redis_misses=l2.misses,
        redis_errors=l2.errors,
        degraded_replies=degraded_replies,
        store_calls_rejected=breaker.rejected,
        store_breaker_opened=breaker.opened,
        store_retries=budget.retries,
        store_retries_refused=budget.refused,
        store_calls_in_flight=bulkhead.in_flight,
        store_calls_peak_in_flight=bulkhead.peak_in_flight,
        redis_bypassed=l2.bypassed,
        redis_breaker_opened=tiers.redis_breaker.stats().opened,
        **wal,
    )
