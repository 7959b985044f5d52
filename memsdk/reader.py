"""The tiered read path: L1, validated by Redis or the store, else the store; degraded
answers when the store cannot answer in time.

ContextReader answers "META and the newest turns of a session" with exactly the turns
the META it used counts (never a torn window), in the consistency mode the Config names:

- validated: an L1 window is served only if a trusted META (Redis confirming this
  process's own window, else a consistent GetItem) says it is current;
- sticky: L1 is served as is (this process saw every write of the session);
- strong: the store, read consistently, every time.

When the store's breaker is open, the store is unavailable or read_timeout passes, it
answers degraded (stateless mode) from L1 alone, or empty: never an error. It reads and
fills the session cache (memsdk.session_cache) and the store; it never writes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import msgspec

from memsdk import session as rules
from memsdk.cache.lru import CachedWindow
from memsdk.clock import Clock
from memsdk.config import Config
from memsdk.errors import StoreUnavailableError
from memsdk.logs import RateLimitedLog
from memsdk.models import Context, Turn
from memsdk.records import MetaRecord, TurnRecord
from memsdk.resilience.breaker import CircuitBreaker
from memsdk.session_cache import SessionCache
from memsdk.store.base import Store
from memsdk.tasks import stop_tasks
from memsdk.telemetry import Telemetry

__all__ = ["ContextReader", "Read"]

# The client's logger, as before the split: operators filter and alert on its name
# (docs/observability.md, docs/operations.md).
logger = logging.getLogger("memsdk.client")

# What each degradation reason means, for the log line.
_DEGRADED_WHY = {
    "breaker_open": "the store's circuit breaker is open",
    "read_timeout": "the store did not answer within read_timeout",
    "store_unavailable": "the store is unavailable",
}


class Read(NamedTuple):
    """A read's answer, the version of the META it was built from (None: none), and the
    floor below which this process's buffered turns will be set aside, not written."""

    ctx: Context
    version: int | None
    floor: str | None


class ContextReader:
    """Reads a session's context through the tiers, in the Config's consistency mode."""

    def __init__(
        self,
        store: Store,
        breaker: CircuitBreaker,
        cache: SessionCache,
        clock: Clock,
        config: Config,
        telemetry: Telemetry,
    ) -> None:
        """`breaker`: the store's, consulted to answer degraded at once while it is open."""
        self._store = store
        self._breaker = breaker
        self._cache = cache
        self._clock = clock
        self._consistency = config.consistency
        self._telemetry = telemetry
        # Degradation warnings at most once per 10 s per kind: an outage costs a few lines.
        self._rate_limited = RateLimitedLog(logger)
        self.degraded_replies = 0

    async def read(self, session_id: str, last_n: int, deadline: float) -> Read:
        """The session's META and newest `last_n` turns; degraded rather than late or failed
        (`deadline`: the event loop's time by which the store must have answered)."""
        if self._consistency == "sticky":
            # Sticky routing: this process saw every write of the session; trust L1.
            cached = self._cache.window(session_id)
            if cached is not None:
                read = self._serve_cached(cached, cached.meta, last_n, "l1")
                if read is not None:
                    return read
        if self._breaker.state == "open":
            # Stateless mode: the store is known down; answer now from what this process holds.
            return self._stateless(session_id, last_n, "breaker_open")
        try:
            async with asyncio.timeout_at(deadline):
                return await self._load(session_id, last_n)
        except TimeoutError:
            return self._stateless(session_id, last_n, "read_timeout")
        except StoreUnavailableError:
            return self._stateless(session_id, last_n, "store_unavailable")

    def degrade(self, ctx: Context, reason: str) -> Context:
        """`ctx` marked degraded (a reply whose correctness cannot be told), counted once."""
        if ctx.degraded:
            return ctx
        self.degraded_replies += 1
        self._telemetry.degraded(reason)
        return msgspec.structs.replace(ctx, degraded=True)

    def _stateless(self, session_id: str, last_n: int, reason: str) -> Read:
        """A degraded answer from L1 alone (or an empty one), with no I/O.

        `reason`: breaker_open, read_timeout or store_unavailable (metric and event label).
        """
        self.degraded_replies += 1
        self._telemetry.degraded(reason)
        self._rate_limited.log(
            logging.WARNING,
            "degraded_read",
            "load_context answered degraded from this process's cache: %s",
            _DEGRADED_WHY[reason],
            extra={"degradation": reason},
        )
        cached = self._cache.window(session_id)
        if cached is None or rules.live_meta(cached.meta, self._clock.time_ms() // 1000) is None:
            empty = Context(
                session_id=session_id,
                meta=None,
                turns=[],
                summary=None,
                degraded=True,
                source="none",
            )
            return Read(empty, None, None)
        turns: list[Turn] = []
        if cached.newest_first is not None:
            count = rules.select_window(cached.newest_first, last_n, cached.complete)
            if count is None:
                # L1 holds fewer turns than the window needs: serve what it has, from the
                # first turn whose tool results it holds whole.
                count = rules.select_window(cached.newest_first, last_n, True) or 0
                while count > 0 and cached.newest_first[count - 1].role == "tool":
                    count -= 1
            turns = list(cached.newest_first[:count])
            turns.reverse()
        ctx = Context(
            session_id=session_id,
            meta=cached.public_meta,
            turns=turns,
            summary=cached.summary,
            degraded=True,
            source="l1",
        )
        return Read(ctx, cached.meta.version, cached.meta.floor_turn_id)

    def _serve_cached(
        self, cached: CachedWindow, meta: MetaRecord, last_n: int, source: str
    ) -> Read | None:
        """The context from L1 if its turns are exactly those `meta` describes; else None."""
        now_s = self._clock.time_ms() // 1000
        if rules.live_meta(meta, now_s) is None:
            return self._absent(meta.session_id, meta)
        newest_first = cached.newest_first
        if newest_first is None or not cached.same_stamp(meta):
            return None
        count = rules.select_window(newest_first, last_n, cached.complete)
        if count is None:
            return None
        self._cache.count_hit()
        if meta.version != cached.meta.version:
            # Same turns, newer META (page_context, summary): keep L1 current.
            cached = self._cache.cache_window(
                meta, newest_first, cached.complete, cached.turn_bytes
            )
        return _window(meta, cached, newest_first, count, source)

    async def _load(self, session_id: str, last_n: int) -> Read:
        """Validate L1 against a trusted META (Redis, else the store) or read the store.

        Redis only ever confirms a window this process holds (same turns, same owner): a
        META from Redis never decides on its own who owns a session, which turns it has,
        or that it is absent. Redis is a boundary, not memory: anyone who can write to it
        could have written that META.
        """
        cached = self._cache.window(session_id)
        if (
            self._consistency == "validated"
            and cached is not None
            and cached.newest_first is not None
        ):
            meta, source = await self._trusted_meta(session_id, cached)
            if meta is not None:
                live = rules.live_meta(meta, self._clock.time_ms() // 1000) is not None
                if live or source == "store":
                    read = self._serve_cached(cached, meta, last_n, f"l1+{source}")
                    if read is not None:
                        return read
                if live and source == "store":
                    # The store's own META is in hand: only the turns are missing.
                    self._cache.count_miss()
                    newest_first, complete, count = await self._read_turns(session_id, meta, last_n)
                    return self._answer(meta, newest_first, complete, count, "store")
        self._cache.count_miss()
        return await self._read_store(session_id, last_n)

    async def _trusted_meta(
        self, session_id: str, cached: CachedWindow
    ) -> tuple[MetaRecord | None, str]:
        """A META that validated mode may check L1's window against, and where it came from.

        Redis first, unless it is behind what this process itself wrote or read; then a
        consistent GetItem on META, offered to Redis (a read-through fill, under the lease
        a miss gave: the next process's check then costs no store read).
        """
        meta, lease = await self._cache.lookup(session_id)
        if meta is not None and self._cache.known_version(session_id, cached) <= meta.version:
            return meta, "redis"
        meta = await self._store.get_meta(session_id, consistent=True)
        if meta is not None:
            self._cache.fill(meta, lease)
        return meta, "store"

    async def _read_store(self, session_id: str, last_n: int) -> Read:
        """Read META and the first page of turns together; fill L1."""
        strong = self._consistency == "strong"
        # Sticky reads may read META eventually consistent, unless this process wrote or
        # read the session before: then an older META would hide its own turns.
        consistent = not (self._consistency == "sticky" and self._cache.hinted(session_id) is None)
        meta_task = asyncio.ensure_future(self._store.get_meta(session_id, consistent=consistent))
        try:
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=strong
            )
            stored = await meta_task
        finally:
            if not meta_task.done():
                await stop_tasks([meta_task])  # the query's own error is the one raised
            elif not meta_task.cancelled():
                meta_task.exception()  # retrieved: the query's own error is the one raised
        meta = rules.live_meta(stored, self._clock.time_ms() // 1000)
        if meta is None:
            return self._absent(session_id, stored)
        newest_first, complete, count = await self._read_turns(
            session_id, meta, last_n, parallel_page=page
        )
        return self._answer(meta, newest_first, complete, count, "store")

    async def _read_turns(
        self,
        session_id: str,
        meta: MetaRecord,
        last_n: int,
        *,
        parallel_page: list[TurnRecord] | None = None,
    ) -> tuple[list[TurnRecord], bool, int]:
        """Visible turns newest first, whether that is all of them, and the window's size:
        exactly the turns `meta` counts (never a torn window).

        `parallel_page`: the first page, queried in parallel with the GetItem of `meta`.
        A commit may land between the two: if its turns are newer than the page's, the
        newest ids tell; if they all sort below the newest id (`meta.late_turns`), they
        cannot, so the page is read again after META. A page queried after META misses
        nothing META counts if it is consistent, so it is whenever META says late_turns.
        """
        strong = self._consistency == "strong"
        page = parallel_page
        if page is None or meta.late_turns:
            page = await self._store.query_turns(
                session_id,
                before_turn_id=None,
                limit=last_n,
                consistent=strong or meta.late_turns or page is not None,
            )
        if meta.last_turn_id and (not page or page[0].turn_id < meta.last_turn_id):
            # The Query lagged behind META (eventually consistent, or a commit landed
            # between the two reads, which even strong reads race with): read again.
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=True
            )
        now_s = self._clock.time_ms() // 1000
        newest_first = rules.visible_turns(meta, page, now_s)
        exhausted = len(page) < last_n or (bool(page) and page[-1].turn_id <= meta.floor_turn_id)
        while (count := rules.select_window(newest_first, last_n, exhausted)) is None:
            before = page[-1].turn_id
            # Short of last_n: what is missing, plus a few. Moving back over tool turns:
            # pages that double, so that reaching the bound costs a few round trips.
            limit = max(last_n - len(newest_first), len(newest_first) - last_n, 1) + 4
            page = await self._store.query_turns(
                session_id, before_turn_id=before, limit=limit, consistent=True
            )
            newest_first.extend(rules.visible_turns(meta, page, now_s))
            exhausted = len(page) < limit or (bool(page) and page[-1].turn_id <= meta.floor_turn_id)
        # `exhausted`: we read down to the floor, so these are all the visible turns.
        return newest_first, exhausted, count

    def _answer(
        self,
        meta: MetaRecord,
        newest_first: list[TurnRecord],
        complete: bool,
        count: int,
        source: str,
    ) -> Read:
        """Cache what the store said and build the Context of the newest `count` turns."""
        turns = tuple(rules.to_public_turn(t) for t in newest_first)
        entry = self._cache.cache_window(meta, turns, complete, None)
        return _window(meta, entry, turns, count, source)

    def _absent(self, session_id: str, stored: MetaRecord | None) -> Read:
        """The answer for a session that is absent or expired; keep an expired META as a hint."""
        self._cache.forget(session_id)
        if stored is not None:
            self._cache.hint(stored)  # the next write's compare-and-set needs its version
        ctx = Context(session_id=session_id, meta=None, turns=[], summary=None)
        if stored is None:
            return Read(ctx, None, None)
        # The floor the next incarnation will have: buffered turns at or below it are
        # ordered before the delete (or expiry) and will be set aside, never shown.
        return Read(ctx, stored.version, rules.high_water(stored))


def _window(
    meta: MetaRecord, entry: CachedWindow, newest_first: tuple[Turn, ...], count: int, source: str
) -> Read:
    """The answer of the newest `count` turns (oldest first) under `meta`."""
    turns = list(newest_first[:count])
    turns.reverse()
    ctx = Context(
        session_id=meta.session_id,
        meta=entry.public_meta,
        turns=turns,
        summary=entry.summary,
        source=source,
    )
    return Read(ctx, meta.version, meta.floor_turn_id)
