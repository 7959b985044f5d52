"""The META cache protocol (L2): what the client needs from Redis, and nothing more.

A META cache is a hint, never a source of truth: every method is best-effort, never
raises, and a failure is a miss. The store stays the only place a conversation lives.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import msgspec

from memsdk.records import MetaRecord

__all__ = ["CacheLookup", "CacheObserver", "CallGate", "MetaCache", "MetaCacheStats"]


class MetaCacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since the cache was opened."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    writes: int = 0
    stale_writes_refused: int = 0
    bypassed: int = 0  # calls not sent because the cache's circuit breaker was open
    # Misses on a META that another primary stored (before a failover or a restart, or
    # before a reshard moved it): never trusted, it may be older than an acknowledged write.
    previous_epoch: int = 0


class CacheLookup(NamedTuple):
    """What a lookup found: the META, or on a miss maybe a lease for the fill that follows."""

    meta: MetaRecord | None
    # Granted on a miss to one reader at a time; it lets fill() store what the store said
    # after the lookup, unless a write-through, an invalidation or the key's loss came first.
    lease: str | None


class CallGate(Protocol):
    """A circuit breaker as a cache sees it (memsdk.resilience.breaker.CircuitBreaker fits)."""

    def try_acquire(self) -> bool:
        """False: do not call the dependency now."""
        ...

    def record_success(self, duration_s: float) -> None:
        """The admitted call succeeded after `duration_s`."""
        ...

    def record_failure(self, duration_s: float) -> None:
        """The admitted call failed (error or timeout) after `duration_s`."""
        ...

    def record_neutral(self) -> None:
        """The admitted call ended without a verdict on the dependency's health."""
        ...


class CacheObserver(Protocol):
    """Told about every cache operation after it ended (telemetry); must not raise or block."""

    def observe(
        self,
        operation: str,
        command: str,
        outcome: str,
        started_ns: int,
        ended_ns: int,
        error: str | None,
    ) -> None:
        """`operation`: get, put, fill or invalidate; `command`: what was sent (EVALSHA, DEL);
        `outcome`: hit, miss, stored, refused, deleted, error or bypassed (not sent: the
        breaker is open); `error`: its type."""
        ...


class MetaCache(Protocol):
    """A shared cache of META records keyed by session id (Redis in production)."""

    @property
    def description(self) -> str:
        """A short, secret-free name, e.g. 'redis' or 'redis-cluster'."""
        ...

    async def open(self) -> None:
        """Prepare connections; never raises for an unreachable server (that is a miss later)."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...

    async def get(self, session_id: str) -> MetaRecord | None:
        """The cached META (live or a tombstone), or None on a miss or any cache trouble."""
        ...

    async def lookup(self, session_id: str) -> CacheLookup:
        """get(), and on a miss a lease for fill() (None if another reader holds one)."""
        ...

    async def fill(self, meta: MetaRecord, *, now_s: int, lease: str | None) -> bool:
        """Read-through: cache `meta`, read from the store after lookup() gave `lease`.

        Stored only where no newer write can have gone through since that lookup: over the
        lease, or over an older META. Never where the key is absent: a write-through lost
        with the key (flush, eviction, restart) may be newer than `meta`. True if stored.
        """
        ...

    async def put(self, meta: MetaRecord, *, now_s: int, essential: bool = False) -> bool:
        """Cache `meta` unless a META with a version >= meta.version is cached; True if stored.

        False also when the cache could not be reached: the caller then calls invalidate.
        The key's TTL follows META: `meta.expires_at - now_s` for a live session, a short
        fixed time for an expired one (so a tombstone still blocks stale fills).
        `essential`: a write-through that a write is acknowledged on; sent even while the
        cache's circuit breaker is open (a best-effort fill is skipped then).
        """
        ...

    async def invalidate(self, session_id: str, *, essential: bool = False) -> bool:
        """Drop the cached META; True when the cache confirmed it (`essential`: see put)."""
        ...

    def stats(self) -> MetaCacheStats:
        """Counters since open(); no I/O."""
        ...
