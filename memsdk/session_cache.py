"""What this process remembers of sessions: L1 windows, META hints and the Redis META.

SessionCache owns every cache tier above the store and keeps them coherent with what this
process reads and commits:

- L1 (memsdk.cache.lru): a byte-bounded LRU of windows (META plus the newest turns), kept
  current by every commit and read of this process;
- META hints: the newest META seen per session, bounded by count, so the write path can
  compare-and-set without a read even when L1 holds no window (evicted, too large);
- Redis (memsdk.cache.base.MetaCache, optional): written through before a write is
  acknowledged, filled after store reads, dropped when a write's outcome is unknown, and
  repaired in the background when Redis did not confirm. It owns those background tasks.

It decides nothing about what a read may serve (memsdk.reader) or how a write is planned
(memsdk.committer); it only remembers, forgets and counts. It imports the caches, the
records, the session rules' converters and telemetry; never a store.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from typing import Any

from memsdk import session as rules
from memsdk.backoff import Backoff
from memsdk.cache.base import MetaCache, MetaCacheStats
from memsdk.cache.lru import CachedWindow, CacheStats, ContextCache, turn_size
from memsdk.clock import Clock
from memsdk.config import Config
from memsdk.models import Turn
from memsdk.records import MetaRecord, SessionWrite
from memsdk.tasks import stop_tasks, wait_unless
from memsdk.telemetry import Telemetry

__all__ = ["SessionCache"]

# The newest META seen per session, for the write path's compare-and-set even when L1
# holds no window for the session (evicted, too large, or L1 disabled). Bounded by count:
# ~0.5 KB each. A stale or missing hint costs one extra round trip, never a wrong write.
_MAX_META_HINTS = 10_000
# L1 keeps this many turns beyond last_n, so a window moved back over tool results
# (guarantee 9) is still served from memory.
_TOOL_SLACK = 8
# Best-effort cache work (read-through fills, repairs) never queues without bound.
_MAX_BACKGROUND_TASKS = 1_000
# Redis drops sent at once by drop_all_from_l2 (a WAL recovery of many sessions).
_DROP_CONCURRENCY = 64
# After a failed write-through, Redis may hold an older META: keep trying to drop it.
_L2_REPAIR_DELAYS_S = (0.05, 0.2, 1.0, 5.0, 15.0, 30.0)


class SessionCache:
    """L1 windows, META hints and the Redis META of the sessions this process touches."""

    def __init__(
        self,
        config: Config,
        l2: MetaCache | None,
        clock: Clock,
        telemetry: Telemetry,
        *,
        repair_backoff: Backoff | None = None,
    ) -> None:
        """`repair_backoff`: the waits between attempts to drop a META Redis may hold stale."""
        self.l2 = l2
        self._l1 = ContextCache(config.l1_max_bytes)
        self._hints: OrderedDict[str, MetaRecord] = OrderedDict()
        self._depth = config.last_n + _TOOL_SLACK
        self._sticky = config.consistency == "sticky"
        self._clock = clock
        self._telemetry = telemetry
        self._repair_backoff = repair_backoff or Backoff.fixed(_L2_REPAIR_DELAYS_S)
        self._background: set[asyncio.Future[Any]] = set()
        self._background_stopped = False
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ L1

    def window(self, session_id: str) -> CachedWindow | None:
        """The L1 entry of a session (most recently used now), or None; counts nothing."""
        return self._l1.get(session_id)

    def count_hit(self) -> None:
        """A read served from an L1 window."""
        self.hits += 1
        self._telemetry.cache_lookup("l1", "hit")

    def count_miss(self) -> None:
        """A read that L1 could not serve."""
        self.misses += 1
        self._telemetry.cache_lookup("l1", "miss")

    def cache_window(
        self,
        meta: MetaRecord,
        newest_first: tuple[Turn, ...] | None,
        complete: bool,
        turn_bytes: tuple[int, ...] | None,
    ) -> CachedWindow:
        """Put a window in L1 and return it (a transient one if it exceeds the L1 budget)."""
        self.hint(meta)
        public_meta = rules.to_public_meta(meta)
        summary = rules.to_public_summary(meta)
        entry = self._l1.put(
            meta.session_id,
            meta,
            public_meta,
            summary,
            newest_first,
            complete=complete,
            depth=self._depth,
            turn_bytes=turn_bytes,
        )
        if entry is None:
            return CachedWindow(
                meta=meta,
                public_meta=public_meta,
                summary=summary,
                newest_first=newest_first,
                complete=complete,
            )
        return entry

    def hint(self, meta: MetaRecord) -> None:
        """Remember `meta` as the newest this process has seen, unless it knows a newer one."""
        known = self._hints.get(meta.session_id)
        if known is None or known.version <= meta.version:
            self._hints[meta.session_id] = meta
        self._hints.move_to_end(meta.session_id)
        if len(self._hints) > _MAX_META_HINTS:
            self._hints.popitem(last=False)

    def hinted(self, session_id: str) -> MetaRecord | None:
        """The newest META this process has seen for the session, or None."""
        return self._hints.get(session_id)

    def known_version(self, session_id: str, cached: CachedWindow | None) -> int:
        """The newest META version this process holds for the session (-1: none)."""
        hint = self._hints.get(session_id)
        return max(
            -1 if cached is None else cached.meta.version, -1 if hint is None else hint.version
        )

    def forget(self, session_id: str) -> None:
        """Drop the session's L1 window and hint."""
        self._l1.pop(session_id)
        self._hints.pop(session_id, None)

    def remember(self, session_id: str, meta: MetaRecord | None) -> None:
        """Keep the newest META a store call revealed (a hint for the next write)."""
        if meta is None:
            self.forget(session_id)
            return
        cached = self._l1.get(session_id)
        if cached is not None and cached.newest_first is not None and cached.same_stamp(meta):
            self.cache_window(meta, cached.newest_first, cached.complete, cached.turn_bytes)
        else:
            self.cache_window(meta, None, False, None)

    def after_write(self, write: SessionWrite) -> None:
        """Move L1 to what this process just committed, so the next read needs no I/O."""
        meta = write.meta
        cached = self._l1.get(meta.session_id)
        new = tuple(rules.to_public_turn(t) for t in reversed(write.turns))
        sizes = tuple(turn_size(t) for t in new)
        if (
            cached is not None
            and cached.newest_first is not None
            and cached.meta.version == write.expected_version
            and cached.meta.floor_turn_id == meta.floor_turn_id
            # Buffered turns may sort below turns another writer committed meanwhile.
            and (
                not new
                or not cached.newest_first
                or (new[-1].turn_id or "") > (cached.newest_first[0].turn_id or "")
            )
        ):
            # L1 held exactly the META this write was based on: extend its window.
            self.cache_window(
                meta, new + cached.newest_first, cached.complete, sizes + cached.turn_bytes
            )
        elif meta.turn_count == len(write.turns):
            # The write holds every turn of the incarnation (a new or empty session).
            self.cache_window(meta, new, True, sizes)
        else:
            self.cache_window(meta, None, False, None)

    # --------------------------------------------------------------- Redis

    async def lookup(self, session_id: str) -> tuple[MetaRecord | None, str | None]:
        """Redis's META of the session and the fill lease a miss gave ((None, None) without
        Redis)."""
        if self.l2 is None:
            return None, None
        return await self.l2.lookup(session_id)

    def fill(self, meta: MetaRecord, lease: str | None) -> None:
        """Read-through: offer a META read from the store to Redis, off the caller's path.

        `lease`: from the Redis lookup that missed before the store was read. Without one
        the fill only replaces an older META; it never lands on an absent key.
        """
        if self.l2 is not None:
            now_s = self._clock.time_ms() // 1000
            self._spawn(self.l2.fill(meta, now_s=now_s, lease=lease))

    async def write_through(self, meta: MetaRecord) -> None:
        """Put a committed META in Redis before the write is acknowledged (guarantee 5)."""
        if self.l2 is None:
            return
        # Essential: sent even while this process's Redis breaker is open, because another
        # process's may be closed and trust what Redis holds (see RedisMetaCache._send).
        if not await self.l2.put(meta, now_s=self._clock.time_ms() // 1000, essential=True):
            # Refused as older than what Redis holds (fine), or Redis trouble: then Redis
            # may hold an older META than the one just acknowledged. Drop it, retrying in
            # the background, so validated reads fall back to the store.
            self._spawn(self._repair_l2(meta.session_id))

    async def drop_from_l2(self, session_id: str) -> None:
        """Drop Redis's META now (even past an open breaker, like a write-through: another
        process may trust it), retrying in the background if Redis did not confirm."""
        if self.l2 is not None and not await self.l2.invalidate(session_id, essential=True):
            self._spawn(self._repair_l2(session_id))

    async def drop_all_from_l2(self, session_ids: Iterable[str], *, wait_s: float) -> None:
        """drop_from_l2 for many sessions, a bounded number at a time, in a background task
        this cache owns; waits for it at most `wait_s` (what is left goes on meanwhile)."""
        pending = list(session_ids)
        if self.l2 is None or not pending:
            return

        async def drop_all() -> None:
            for start in range(0, len(pending), _DROP_CONCURRENCY):
                batch = pending[start : start + _DROP_CONCURRENCY]
                await asyncio.gather(*(self.drop_from_l2(sid) for sid in batch))

        task = self._spawn(drop_all(), essential=True)
        if task is not None:
            # asyncio.wait: a timeout leaves the task running, and a cancel of this caller
            # is never swallowed.
            await asyncio.wait([task], timeout=wait_s)

    async def forget_if_trusted(self, session_id: str) -> None:
        """After a write that may have landed unseen: drop what reads would trust unchecked.

        Validated and strong reads compare L1 with the store's META before using it, so a
        landed write makes L1 miss, never lie; and while the store is down, L1 is what
        stateless answers are made of. Sticky reads serve L1 as is: there it must go.
        Redis is what validated reads check L1 against, and a landed write never wrote
        its META through: drop the key (now, so the caller's next read cannot beat it).
        """
        if self._sticky:
            self.forget(session_id)
        await self.drop_from_l2(session_id)

    async def after_earlier_attempt(self, session_id: str, stored: MetaRecord | None) -> None:
        """The turns were already in the store, under a META this call did not plan.

        An earlier attempt wrote them (its reply lost, or a crashed process's flush that
        its log replay now repeats), on another base: the planned META is not what the
        store holds, so it must not go into L1 or Redis. Keep the stored META as a hint (or
        nothing, if the store did not say), and drop Redis's META: the earlier attempt may
        never have written through.
        """
        if stored is None:
            self.forget(session_id)
        else:
            self.remember(session_id, stored)
        await self.drop_from_l2(session_id)

    async def _repair_l2(self, session_id: str) -> None:
        assert self.l2 is not None
        for failures in range(1, len(_L2_REPAIR_DELAYS_S) + 1):
            if await self.l2.invalidate(session_id, essential=True):
                return
            await self._repair_backoff.wait(failures)

    def _spawn(
        self, work: Coroutine[Any, Any, Any], *, essential: bool = False
    ) -> asyncio.Future[Any] | None:
        """Run `work` as a background task this cache owns (None: not started)."""
        full = len(self._background) >= _MAX_BACKGROUND_TASKS and not essential
        if full or self._background_stopped:
            # Shed best-effort cache work rather than queue it without bound, or start
            # it after close() stopped the rest (nothing would ever stop it).
            work.close()
            return None
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect to Redis, if there is one."""
        if self.l2 is not None:
            await self.l2.open()

    async def stop_background(self, hurry: asyncio.Event) -> None:
        """Best-effort fills and repairs get a moment (none once hurried), then stop."""
        if self._background and not hurry.is_set():
            await wait_unless(hurry, asyncio.wait(list(self._background), timeout=1.0))
        self._background_stopped = True
        await stop_tasks(list(self._background))

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self.l2 is not None:
            await self.l2.aclose()

    async def abandon(self) -> None:
        """Stop at once, as a crash would: background work dropped, Redis disconnected."""
        hurry = asyncio.Event()
        hurry.set()
        await self.stop_background(hurry)
        await self.aclose()

    def l1_stats(self) -> CacheStats:
        """L1's sizes and counters; no I/O."""
        return self._l1.stats(hits=self.hits, misses=self.misses)

    def l2_stats(self) -> MetaCacheStats:
        """Redis's counters (zeros without Redis); no I/O."""
        return self.l2.stats() if self.l2 is not None else MetaCacheStats()
