"""MemoryClient: the lifecycle and the public verbs; the only module that knows every tier."""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from memsdk import session as rules
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
# META hints let an append skip the read before its conditional write. Bounded by count;
# a stale hint only costs one extra round trip (the store returns the current META).
_MAX_META_HINTS = 10_000


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


class MemoryClient:
    """Conversation memory for one orchestrator process; use as `async with MemoryClient(cfg)`."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config if config is not None else Config()
        if self._config.redis_url is not None:
            raise ConfigError("redis_url is not supported by this release yet: leave it None")
        if self._config.wal_dir is not None:
            raise ConfigError("wal_dir is not supported by this release yet: leave it None")
        self._store = store if store is not None else build_store(self._config)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._ids = TurnIdGenerator(self._clock.time_ms)
        self._meta_hints: OrderedDict[str, MetaRecord] = OrderedDict()
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
            self._state = "open"

    async def aclose(self) -> None:
        """Release connections and threads; safe to call twice."""
        if self._state == "open":
            self._state = "closed"
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
        try:
            async with asyncio.timeout(self._config.read_timeout):
                meta, turns = await self._read_window(session_id, window)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"load_context exceeded read_timeout={self._config.read_timeout}s; retry later",
                session_id=session_id,
            ) from exc
        if meta is None:
            if expect_existing:
                raise ContextLostError(
                    "session is absent (expired, deleted or never written): start a new "
                    "conversation or rebuild it from your own records",
                    session_id=session_id,
                )
            return Context(session_id=session_id, meta=None, turns=[], summary=None)
        rules.check_owner(meta, customer_id)
        return Context(
            session_id=session_id,
            meta=rules.to_public_meta(meta),
            turns=[rules.to_public_turn(t) for t in turns],
            summary=rules.to_public_summary(meta),
            source="store",
        )

    async def _read_window(
        self, session_id: str, last_n: int
    ) -> tuple[MetaRecord | None, list[TurnRecord]]:
        """META and the window of turns oldest first; META and the first page go out together."""
        strong = self._config.consistency == "strong"
        meta_consistent = self._config.consistency != "sticky"
        meta_task = asyncio.ensure_future(
            self._store.get_meta(session_id, consistent=meta_consistent)
        )
        try:
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=strong
            )
            stored = await meta_task
        finally:
            if not meta_task.done():
                meta_task.cancel()
        now_s = self._clock.time_ms() // 1000
        self._remember(session_id, stored)
        meta = rules.live_meta(stored, now_s)
        if meta is None:
            return None, []
        if not strong and meta.last_turn_id and (not page or page[0].turn_id < meta.last_turn_id):
            # An eventually consistent Query lagged behind the consistent META: read again.
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=True
            )
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
        window = newest_first[:count]
        window.reverse()
        return meta, window

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
        if not isinstance(text, str):
            raise InvalidInputError("summary text must be str", session_id=session_id)
        rules.validate_json({"text": text}, session_id, "summary")
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
            self._meta_hints.pop(session_id, None)

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
        return Health(
            store=self._store.description,
            store_breaker="off",
            redis_breaker="off",
            l1_entries=0,
            l1_bytes=0,
            l1_max_bytes=self._config.l1_max_bytes,
            wal_pending_records=0,
            wal_pending_bytes=0,
            wal_oldest_pending_age_s=None,
            open=self._state == "open",
            consistency=self._config.consistency,
        )

    # ---------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClientClosedError(
                "MemoryClient is not open: use `async with MemoryClient(config) as mem:`"
            )

    def _remember(self, session_id: str, meta: MetaRecord | None) -> None:
        if meta is None:
            self._meta_hints.pop(session_id, None)
            return
        self._meta_hints[session_id] = meta
        self._meta_hints.move_to_end(session_id)
        if len(self._meta_hints) > _MAX_META_HINTS:
            self._meta_hints.popitem(last=False)

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
                        self._remember(session_id, write.meta)
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
            self._meta_hints.pop(session_id, None)
            raise
        raise StoreUnavailableError(
            f"{operation} lost the race to concurrent writers {_MAX_COMMIT_ROUNDS} times; retry",
            session_id=session_id,
        )


class _Planner(Protocol):
    def __call__(self, current: MetaRecord | None, now_ms: int, /) -> SessionWrite: ...
