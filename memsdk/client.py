"""MemoryClient: the lifecycle and the public verbs; the only module that knows every tier."""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Protocol

from memsdk import session as rules
from memsdk.cache.base import MetaCache, MetaCacheStats
from memsdk.cache.lru import CachedWindow, ContextCache, turn_size
from memsdk.config import Config, DynamoDBStoreSpec, SQLiteStoreSpec
from memsdk.errors import (
    ClientClosedError,
    ConfigError,
    ContextLostError,
    InvalidInputError,
    SessionOwnershipError,
    StoreError,
    StoreUnavailableError,
)
from memsdk.ids import TurnIdGenerator
from memsdk.models import AppendReceipt, Context, Health, Meta, Summary, Turn
from memsdk.store.base import MetaRecord, SessionWrite, Store, TurnRecord

__all__ = ["Clock", "MemoryClient", "SystemClock"]

# Compare-and-set rounds before a write gives up; each lost round means another writer
# committed to the same session in between (rare at 3 req/s per session). The real bound
# is the call's deadline: rounds back off with jitter, up to _MAX_CONFLICT_BACKOFF_S.
_MAX_COMMIT_ROUNDS = 64
_MAX_CONFLICT_BACKOFF_S = 0.05
# The newest META seen per session, for the write path's compare-and-set even when L1
# holds no window for the session (evicted, too large, or L1 disabled). Bounded by count:
# ~0.5 KB each. A stale or missing hint costs one extra round trip, never a wrong write.
_MAX_META_HINTS = 10_000
# L1 keeps this many turns beyond last_n, so a window moved back over tool results
# (guarantee 9) is still served from memory.
_TOOL_SLACK = 8
# Best-effort cache work (read-through fills, repairs) never queues without bound.
_MAX_BACKGROUND_TASKS = 1_000
# After a failed write-through, Redis may hold an older META: keep trying to drop it.
_L2_REPAIR_DELAYS_S = (0.05, 0.2, 1.0, 5.0, 15.0, 30.0)


class Clock(Protocol):
    """Wall-clock time in epoch milliseconds; injected so tests control TTL and turn ids."""

    def time_ms(self) -> int:
        """Return the current epoch time in milliseconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def time_ms(self) -> int:
        """Return time.time_ns() in milliseconds."""
        return time.time_ns() // 1_000_000


def build_store(config: Config) -> Store:
    """The store a Config names (imports the backend lazily: no aioboto3 import for SQLite)."""
    spec = config.store_spec
    if isinstance(spec, SQLiteStoreSpec):
        from memsdk.store.sqlite import SQLiteStore

        return SQLiteStore(spec.path)
    if isinstance(spec, DynamoDBStoreSpec):
        from memsdk.store.dynamodb import DynamoDBStore

        options: dict[str, Any] = {
            "max_pool_connections": config.max_pool_connections,
            "connect_timeout": config.connect_timeout,
            "read_timeout": max(config.read_timeout, config.write_timeout),
            "max_attempts": config.store_max_attempts,
        }
        if config.dynamodb_data_path == "aioboto3":
            from memsdk.store.dynamodb_aioboto3 import Aioboto3DataPath

            return DynamoDBStore(spec, Aioboto3DataPath(spec, **options))
        from memsdk.store.dynamodb_lean import LeanDataPath

        return DynamoDBStore(spec, LeanDataPath(spec, **options))
    raise ConfigError(f"unsupported store {type(spec).__name__}")


def build_meta_cache(config: Config) -> MetaCache | None:
    """The Redis META cache a Config names, or None (imports redis-py only when asked)."""
    if config.redis_url is None:
        return None
    try:
        from memsdk.cache.redis import RedisMetaCache
    except ImportError as exc:  # the `redis` extra is not installed
        raise ConfigError("redis_url needs redis-py: pip install 'memsdk[redis]'") from exc
    return RedisMetaCache(
        config.redis_url,
        timeout=config.redis_timeout,
        connect_timeout=config.redis_timeout * 2,
        tombstone_ttl_seconds=min(config.ttl_seconds, 3_600),
    )


class MemoryClient:
    """Conversation memory for one orchestrator process; use as `async with MemoryClient(cfg)`."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        meta_cache: MetaCache | None = None,
    ) -> None:
        self._config = config if config is not None else Config()
        if self._config.wal_dir is not None:
            raise ConfigError("wal_dir is not supported by this release yet: leave it None")
        self._store = store if store is not None else build_store(self._config)
        self._l2 = meta_cache if meta_cache is not None else build_meta_cache(self._config)
        self._l1 = ContextCache(self._config.l1_max_bytes)
        self._meta_hints: OrderedDict[str, MetaRecord] = OrderedDict()
        self._depth = self._config.last_n + _TOOL_SLACK
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._ids = TurnIdGenerator(self._clock.time_ms)
        self._background: set[asyncio.Future[Any]] = set()
        self._state = "new"

    @property
    def config(self) -> Config:
        """The Config this client was built with."""
        return self._config

    async def open(self) -> None:
        """Connect to the store; `async with` calls this for you."""
        if self._state == "closed":
            raise ClientClosedError("this MemoryClient was closed: create a new one")
        if self._state == "new":
            await self._store.open()
            if self._l2 is not None:
                await self._l2.open()
            self._state = "open"

    async def aclose(self) -> None:
        """Release connections and threads; safe to call twice."""
        if self._state == "open":
            self._state = "closed"
            if self._background:
                # Cache repairs are best effort: give them a moment, then let them go.
                _, pending = await asyncio.wait(self._background, timeout=1.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if self._l2 is not None:
                await self._l2.aclose()
            await self._store.aclose()
        self._state = "closed"

    async def __aenter__(self) -> MemoryClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ reads

    async def load_context(
        self,
        session_id: str,
        *,
        customer_id: str | None = None,
        last_n: int | None = None,
        expect_existing: bool = False,
    ) -> Context:
        """Return META, the newest `last_n` turns (oldest first) and the newest summary."""
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        window = self._config.last_n if last_n is None else last_n
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 10_000:
            raise InvalidInputError(
                "last_n must be an integer in [1, 10000]", session_id=session_id
            )
        self._check_open()
        ctx: Context | None = None
        if self._config.consistency == "sticky":
            # Sticky routing: this process saw every write of the session; trust L1.
            cached = self._l1.get(session_id)
            if cached is not None:
                ctx = self._serve_cached(cached, cached.meta, window, "l1")
        if ctx is None:
            try:
                async with asyncio.timeout(self._config.read_timeout):
                    ctx = await self._load(session_id, window)
            except TimeoutError as exc:
                raise StoreUnavailableError(
                    f"load_context exceeded read_timeout={self._config.read_timeout}s; retry later",
                    session_id=session_id,
                ) from exc
        if ctx.meta is None:
            if expect_existing:
                raise ContextLostError(
                    "session is absent (expired, deleted or never written): start a new "
                    "conversation or rebuild it from your own records",
                    session_id=session_id,
                )
            return ctx
        rules.check_owner(ctx.meta, customer_id)
        return ctx

    def _serve_cached(
        self, cached: CachedWindow, meta: MetaRecord, last_n: int, source: str
    ) -> Context | None:
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
        self._l1.hits += 1
        if meta.version != cached.meta.version:
            # Same turns, newer META (page_context, summary): keep L1 current.
            cached = self._cache_window(meta, newest_first, cached.complete, cached.turn_bytes)
        turns = list(newest_first[:count])
        turns.reverse()
        return Context(
            session_id=meta.session_id,
            meta=cached.public_meta,
            turns=turns,
            summary=cached.summary,
            source=source,
        )

    async def _load(self, session_id: str, last_n: int) -> Context:
        """Validate L1 against a trusted META (Redis, else the store) or read the store."""
        cached = self._l1.get(session_id)
        if self._config.consistency == "validated":
            meta, source = await self._trusted_meta(session_id, cached)
            if source is not None:
                if cached is not None and meta is not None:
                    ctx = self._serve_cached(cached, meta, last_n, f"l1+{source}")
                    if ctx is not None:
                        return ctx
                self._l1.misses += 1
                if rules.live_meta(meta, self._clock.time_ms() // 1000) is None:
                    return self._absent(session_id, meta)
                assert meta is not None
                newest_first, complete, count = await self._read_turns(session_id, meta, last_n)
                return self._answer(meta, newest_first, complete, count, source)
        self._l1.misses += 1
        return await self._read_store(session_id, last_n)

    async def _trusted_meta(
        self, session_id: str, cached: CachedWindow | None
    ) -> tuple[MetaRecord | None, str | None]:
        """A META that validated mode may trust, and where it came from (None: not looked up).

        Redis first. If Redis is behind what this process itself wrote, or missed, and L1
        has turns worth validating, a consistent GetItem on META; otherwise nothing, and
        the caller reads META and turns together.
        """
        if self._l2 is not None:
            meta = await self._l2.get(session_id)
            if meta is not None and (cached is None or cached.meta.version <= meta.version):
                return meta, "redis"
        if cached is None or cached.newest_first is None:
            return None, None
        meta = await self._store.get_meta(session_id, consistent=True)
        if meta is not None:
            self._fill_l2(meta)
        return meta, "store"

    async def _read_store(self, session_id: str, last_n: int) -> Context:
        """Read META and the first page of turns together; fill L1 and Redis."""
        strong = self._config.consistency == "strong"
        meta_task = asyncio.ensure_future(
            self._store.get_meta(session_id, consistent=self._config.consistency != "sticky")
        )
        try:
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=strong
            )
            stored = await meta_task
        finally:
            if not meta_task.done():
                meta_task.cancel()
        if stored is not None:
            self._fill_l2(stored)
        meta = rules.live_meta(stored, self._clock.time_ms() // 1000)
        if meta is None:
            return self._absent(session_id, stored)
        newest_first, complete, count = await self._read_turns(session_id, meta, last_n, page=page)
        return self._answer(meta, newest_first, complete, count, "store")

    async def _read_turns(
        self,
        session_id: str,
        meta: MetaRecord,
        last_n: int,
        *,
        page: list[TurnRecord] | None = None,
    ) -> tuple[list[TurnRecord], bool, int]:
        """Visible turns newest first, whether that is all of them, and the window's size."""
        strong = self._config.consistency == "strong"
        if page is None:
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=strong
            )
        if not strong and meta.last_turn_id and (not page or page[0].turn_id < meta.last_turn_id):
            # An eventually consistent Query lagged behind the trusted META: read again.
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=True
            )
        now_s = self._clock.time_ms() // 1000
        newest_first = rules.visible_turns(meta, page, now_s)
        exhausted = len(page) < last_n or (bool(page) and page[-1].turn_id <= meta.floor_turn_id)
        while (count := rules.select_window(newest_first, last_n, exhausted)) is None:
            before = page[-1].turn_id
            limit = max(last_n - len(newest_first), 1) + 4
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
    ) -> Context:
        """Cache what the store said and build the Context of the newest `count` turns."""
        turns = tuple(rules.to_public_turn(t) for t in newest_first)
        entry = self._cache_window(meta, turns, complete, None)
        window = list(turns[:count])
        window.reverse()
        return Context(
            session_id=meta.session_id,
            meta=entry.public_meta,
            turns=window,
            summary=entry.summary,
            source=source,
        )

    def _cache_window(
        self,
        meta: MetaRecord,
        newest_first: tuple[Turn, ...] | None,
        complete: bool,
        turn_bytes: tuple[int, ...] | None,
    ) -> CachedWindow:
        """Put a window in L1 and return it (a transient one if it exceeds the L1 budget)."""
        self._hint(meta)
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

    # ----------------------------------------------------------------- writes

    async def append_turns(
        self, session_id: str, turns: Sequence[Turn], *, customer_id: str | None = None
    ) -> AppendReceipt:
        """Append turns atomically, in order; returns once the store acknowledged them."""
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        checked = rules.validate_turns(session_id, turns, self._config.max_turn_bytes)
        self._check_open()

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            return rules.plan_append(
                current,
                session_id=session_id,
                turns=checked,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
                retention_seconds=self._config.turn_retention_seconds,
                ids=self._ids,
            )

        write = await self._commit(session_id, plan, operation="append_turns")
        return AppendReceipt(
            session_id=session_id, turn_ids=[t.turn_id for t in write.turns], durable=True
        )

    async def append_turn(
        self, session_id: str, turn: Turn, *, customer_id: str | None = None
    ) -> AppendReceipt:
        """Append one turn; same promise as append_turns."""
        return await self.append_turns(session_id, [turn], customer_id=customer_id)

    async def update_meta(
        self,
        session_id: str,
        *,
        page_context: dict[str, Any] | None = None,
        attributes: dict[str, Any] | None = None,
        customer_id: str | None = None,
    ) -> Meta:
        """Replace each given META field whole (creating the session if absent); returns META."""
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        if page_context is not None:
            rules.validate_json(page_context, session_id, "page_context")
        if attributes is not None:
            rules.validate_json(attributes, session_id, "attributes")
        self._check_open()

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            return rules.plan_update_meta(
                current,
                session_id=session_id,
                page_context=page_context,
                attributes=attributes,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
                ids=self._ids,
            )

        write = await self._commit(session_id, plan, operation="update_meta")
        return rules.to_public_meta(write.meta)

    async def put_summary(
        self,
        session_id: str,
        text: str,
        *,
        through_turn_id: str,
        customer_id: str | None = None,
    ) -> Summary:
        """Store a summary covering turns up to `through_turn_id`; the newest by that id wins."""
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        rules.check_through_turn_id(through_turn_id, session_id)
        rules.validate_text(text, session_id, "summary text")
        self._check_open()

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            live = rules.live_meta(current, now_ms // 1000)
            if live is None:
                raise ContextLostError(
                    "cannot summarize an absent session (expired, deleted or never written)",
                    session_id=session_id,
                )
            return rules.plan_summary(
                live,
                text=text,
                through_turn_id=through_turn_id,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
                retention_seconds=self._config.turn_retention_seconds,
                max_bytes=self._config.max_turn_bytes,
            )

        write = await self._commit(session_id, plan, operation="put_summary", read_first=True)
        assert write.summary is not None  # plan_summary always writes one
        s = write.summary
        return Summary(
            text=s.text, through_turn_id=s.through_turn_id, created_at_ms=s.created_at_ms
        )

    async def delete_session(self, session_id: str, *, customer_id: str | None = None) -> None:
        """Delete every item of the session; a no-op for an unknown session."""
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        self._check_open()
        try:
            async with asyncio.timeout(self._config.write_timeout * 10):
                await self._delete(session_id, customer_id)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                "delete_session timed out: the session is hidden or untouched; call it again",
                session_id=session_id,
                maybe_applied=True,
            ) from exc
        finally:
            self._forget(session_id)

    async def _delete(self, session_id: str, customer_id: str | None) -> None:
        current = await self._store.get_meta(session_id, consistent=True)
        for _ in range(_MAX_COMMIT_ROUNDS):
            if current is None:
                return
            now_ms = self._clock.time_ms()
            if rules.live_meta(current, now_ms // 1000) is not None:
                rules.check_owner(current, customer_id)
            write = rules.plan_delete(current, now_ms=now_ms)
            outcome = await self._store.commit(write)
            if outcome.applied:
                # The tombstone goes to Redis before the purge: other processes see the
                # session absent from now on, and no stale fill can revive it.
                await self._write_through(write.meta)
                await self._store.purge_session(
                    session_id,
                    through_turn_id=rules.high_water(write.meta),
                    version=write.meta.version,
                )
                return
            current = await self._current_after_conflict(session_id, outcome.current)
        raise StoreUnavailableError(
            "delete_session lost the race to concurrent writers too often; call it again",
            session_id=session_id,
        )

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - public API (DESIGN §6)
        """Wait until every buffered write is in the store (without a WAL nothing is buffered)."""
        self._check_open()

    def health(self) -> Health:
        """A no-I/O snapshot of breakers, caches and the write-ahead log."""
        l1 = self._l1.stats()
        l2 = self._l2.stats() if self._l2 is not None else MetaCacheStats()
        return Health(
            store=self._store.description,
            store_breaker="off",
            redis_breaker="off",
            l1_entries=l1.entries,
            l1_bytes=l1.bytes,
            l1_max_bytes=l1.max_bytes,
            wal_pending_records=0,
            wal_pending_bytes=0,
            wal_oldest_pending_age_s=None,
            open=self._state == "open",
            consistency=self._config.consistency,
            redis=self._l2.description if self._l2 is not None else None,
            l1_hits=l1.hits,
            l1_misses=l1.misses,
            l1_evictions=l1.evictions,
            redis_hits=l2.hits,
            redis_misses=l2.misses,
            redis_errors=l2.errors,
        )

    # ---------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClientClosedError(
                "MemoryClient is not open: use `async with MemoryClient(config) as mem:`"
            )

    def _absent(self, session_id: str, stored: MetaRecord | None) -> Context:
        """The answer for a session that is absent or expired; keep an expired META as a hint."""
        self._forget(session_id)
        if stored is not None:
            self._hint(stored)  # the next write's compare-and-set needs its version
        return Context(session_id=session_id, meta=None, turns=[], summary=None)

    def _hint(self, meta: MetaRecord) -> None:
        known = self._meta_hints.get(meta.session_id)
        if known is None or known.version <= meta.version:
            self._meta_hints[meta.session_id] = meta
        self._meta_hints.move_to_end(meta.session_id)
        if len(self._meta_hints) > _MAX_META_HINTS:
            self._meta_hints.popitem(last=False)

    def _forget(self, session_id: str) -> None:
        self._l1.pop(session_id)
        self._meta_hints.pop(session_id, None)

    def _remember(self, session_id: str, meta: MetaRecord | None) -> None:
        """Keep the newest META a store call revealed (a hint for the next write)."""
        if meta is None:
            self._forget(session_id)
            return
        cached = self._l1.get(session_id)
        if cached is not None and cached.newest_first is not None and cached.same_stamp(meta):
            self._cache_window(meta, cached.newest_first, cached.complete, cached.turn_bytes)
        else:
            self._cache_window(meta, None, False, None)

    def _after_write(self, write: SessionWrite) -> None:
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
        ):
            # L1 held exactly the META this write was based on: extend its window.
            self._cache_window(
                meta, new + cached.newest_first, cached.complete, sizes + cached.turn_bytes
            )
        elif meta.turn_count == len(write.turns):
            # The write holds every turn of the incarnation (a new or empty session).
            self._cache_window(meta, new, True, sizes)
        else:
            self._cache_window(meta, None, False, None)

    async def _write_through(self, meta: MetaRecord) -> None:
        """Put a committed META in Redis before the write is acknowledged (guarantee 5)."""
        if self._l2 is None:
            return
        if not await self._l2.put(meta, now_s=self._clock.time_ms() // 1000):
            # Refused as older than what Redis holds (fine), or Redis trouble: then Redis
            # may hold an older META than the one just acknowledged. Drop it, retrying in
            # the background, so validated reads fall back to the store.
            self._spawn(self._repair_l2(meta.session_id))

    async def _repair_l2(self, session_id: str) -> None:
        assert self._l2 is not None
        for delay in _L2_REPAIR_DELAYS_S:
            if await self._l2.invalidate(session_id):
                return
            await asyncio.sleep(delay)

    def _fill_l2(self, meta: MetaRecord) -> None:
        """Read-through: offer a META read from the store to Redis, off the caller's path."""
        if self._l2 is not None:
            self._spawn(self._l2.put(meta, now_s=self._clock.time_ms() // 1000))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        if len(self._background) >= _MAX_BACKGROUND_TASKS:
            work.close()  # shed best-effort cache work rather than queue it without bound
            return
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _current_after_conflict(
        self, session_id: str, reported: MetaRecord | None
    ) -> MetaRecord | None:
        if reported is not None:
            return reported
        return await self._store.get_meta(session_id, consistent=True)

    async def _commit(
        self,
        session_id: str,
        plan: _Planner,
        *,
        operation: str,
        read_first: bool = False,
    ) -> SessionWrite:
        """Plan on the best-known META and commit; after a lost race, re-plan on the current one."""
        sent = False
        try:
            async with asyncio.timeout(self._config.write_timeout):
                current = self._meta_hints.get(session_id)
                fresh = False
                conflicts = 0
                if current is None and read_first:
                    current, fresh = await self._store.get_meta(session_id, consistent=True), True
                for _ in range(_MAX_COMMIT_ROUNDS):
                    try:
                        write = plan(current, self._clock.time_ms())
                    except (SessionOwnershipError, ContextLostError):
                        if fresh:
                            raise
                        # The verdict came from a cached hint: confirm it with the store.
                        current, fresh = (
                            await self._store.get_meta(session_id, consistent=True),
                            True,
                        )
                        continue
                    sent = True
                    outcome = await self._store.commit(write)
                    if outcome.applied:
                        self._after_write(write)
                        await self._write_through(write.meta)
                        return write
                    sent = False
                    conflicts += 1
                    if conflicts > 1:
                        # Writers that keep colliding would otherwise retry in lockstep.
                        cap = min(_MAX_CONFLICT_BACKOFF_S, 0.001 * 2**conflicts)
                        await asyncio.sleep(random.uniform(0, cap))
                    current = await self._current_after_conflict(session_id, outcome.current)
                    fresh = True
                    self._remember(session_id, current)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"{operation} exceeded write_timeout={self._config.write_timeout}s"
                + (
                    "; it may have been applied (at most once)" if sent else "; nothing was written"
                ),
                session_id=session_id,
                maybe_applied=sent,
            ) from exc
        except StoreError:
            self._forget(session_id)
            raise
        raise StoreUnavailableError(
            f"{operation} lost the race to concurrent writers {_MAX_COMMIT_ROUNDS} times; retry",
            session_id=session_id,
        )


class _Planner(Protocol):
    def __call__(self, current: MetaRecord | None, now_ms: int, /) -> SessionWrite: ...
