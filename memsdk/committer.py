"""The optimistic, conditional commit loop: every write of a session goes through here.

A write is planned on the best-known META (a hint from memsdk.session_cache, else a read)
by a pure planner of memsdk.session, and sent as one conditional commit. A lost race (the
stored META moved on) re-plans on the META the store reports, with jittered backoff after
the first loss; a write whose reply was lost may have landed, and the caches are told to
stop trusting what they hold. Deletes tombstone META by the same loop and then purge.

It owns no cache and no store; it imports the rules, the records, the Store protocol, the
session cache and the backoff policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from memsdk import session as rules
from memsdk.backoff import Backoff
from memsdk.clock import Clock
from memsdk.config import Config
from memsdk.errors import (
    ContextLostError,
    InvalidTurnError,
    SessionOwnershipError,
    StoreUnavailableError,
)
from memsdk.ids import TurnIdGenerator
from memsdk.models import Turn
from memsdk.records import MetaRecord, SessionWrite, SummaryRecord
from memsdk.session_cache import SessionCache
from memsdk.store.base import Store

__all__ = ["MAX_COMMIT_ROUNDS", "Committer", "Planner"]

# Compare-and-set rounds before a write gives up; each lost round means another writer
# committed to the same session in between (rare at 3 req/s per session). The real bound
# is the call's deadline: rounds back off with full jitter, capped at 4 ms to 50 ms.
MAX_COMMIT_ROUNDS = 64


class Planner(Protocol):
    """Plans the next write on the current META (None: absent); None: nothing to write."""

    def __call__(self, current: MetaRecord | None, now_ms: int, /) -> SessionWrite | None: ...


class Committer:
    """Commits planned writes of a session, re-planning after every lost race."""

    def __init__(
        self,
        store: Store,
        cache: SessionCache,
        clock: Clock,
        config: Config,
        *,
        ids: TurnIdGenerator | None = None,
        on_context_lost: Callable[[str], None] = lambda operation: None,
        conflict_backoff: Backoff | None = None,
    ) -> None:
        """`ids`: the turn ids of appends; `on_context_lost(operation)`: told when a write
        finds its session absent; `conflict_backoff`: the wait after the second and later
        lost races of a write."""
        self._store = store
        self._cache = cache
        self._clock = clock
        self._config = config
        self._ids = ids if ids is not None else TurnIdGenerator(clock.time_ms)
        self._on_context_lost = on_context_lost
        self._backoff = conflict_backoff or Backoff.exponential(0.001, 0.05)

    async def append(
        self, session_id: str, turns: Sequence[Turn], customer_id: str | None
    ) -> SessionWrite:
        """Append validated turns, atomically and in order; returns the write applied."""
        config = self._config

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            return rules.plan_append(
                current,
                session_id=session_id,
                turns=turns,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=config.ttl_seconds,
                retention_seconds=config.turn_retention_seconds,
                ids=self._ids,
            )

        return await self.commit_required(session_id, plan, operation="append_turns")

    async def update_meta(
        self,
        session_id: str,
        page_context: dict[str, Any] | None,
        attributes: dict[str, Any] | None,
        customer_id: str | None,
    ) -> SessionWrite:
        """Replace the given META fields whole (validated copies); returns the write applied."""
        ttl_seconds = self._config.ttl_seconds

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            return rules.plan_update_meta(
                current,
                session_id=session_id,
                page_context=page_context,
                attributes=attributes,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=ttl_seconds,
            )

        return await self.commit_required(session_id, plan, operation="update_meta")

    async def put_summary(
        self, session_id: str, text: str, through_turn_id: str, customer_id: str | None
    ) -> SummaryRecord:
        """Store a validated summary of a live session; returns it as stored."""
        config = self._config

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            live = rules.live_meta(current, now_ms // 1000)
            if live is None:
                self._on_context_lost("put_summary")
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
                ttl_seconds=config.ttl_seconds,
                retention_seconds=config.turn_retention_seconds,
                max_bytes=config.max_turn_bytes,
            )

        write = await self.commit_required(
            session_id, plan, operation="put_summary", read_first=True
        )
        assert write.summary is not None  # plan_summary always writes one
        return write.summary

    async def commit_required(
        self, session_id: str, plan: Planner, *, operation: str, read_first: bool = False
    ) -> SessionWrite:
        """commit() for planners that always write; returns the write applied."""
        write = await self.commit(session_id, plan, operation=operation, read_first=read_first)
        if write is None:
            raise AssertionError(f"{operation} planned no write")  # its planners always write
        return write

    async def commit(
        self,
        session_id: str,
        plan: Planner,
        *,
        operation: str,
        read_first: bool = False,
        on_existing: Callable[[frozenset[str]], None] | None = None,
        on_applied: Callable[[int | None], None] | None = None,
    ) -> SessionWrite | None:
        """Plan on the best-known META and commit; after a lost race, re-plan on the current one.

        Returns the write applied, or None when the planner found nothing left to write.
        Within write_timeout, else StoreUnavailableError (maybe_applied if one was sent).
        `on_existing(turn_ids)`: turns of a lost write that the store already holds.
        `on_applied(version)`: the version of the META the store holds after the write
        (None: it was applied by an earlier attempt and the store did not say which).
        """
        sent = False
        try:
            async with asyncio.timeout(self._config.write_timeout):
                current = self._cache.hinted(session_id)
                fresh = False
                conflicts = 0
                if current is None and read_first:
                    current, fresh = await self._store.get_meta(session_id, consistent=True), True
                for _ in range(MAX_COMMIT_ROUNDS):
                    try:
                        write = plan(current, self._clock.time_ms())
                    except (SessionOwnershipError, ContextLostError, InvalidTurnError):
                        if fresh:
                            raise
                        # The verdict came from a cached hint (e.g. a summary through a turn
                        # another process appended since): confirm it with the store.
                        current, fresh = (
                            await self._store.get_meta(session_id, consistent=True),
                            True,
                        )
                        continue
                    if write is None:
                        return None
                    sent = True
                    outcome = await self._store.commit(write)
                    if outcome.applied:
                        stored: MetaRecord | None = write.meta
                        if outcome.already_applied and outcome.current != write.meta:
                            stored = outcome.current
                            await self._cache.after_earlier_attempt(session_id, stored)
                        else:
                            self._cache.after_write(write)
                            await self._cache.write_through(write.meta)
                        if on_applied is not None:
                            on_applied(None if stored is None else stored.version)
                        return write
                    sent = False
                    if outcome.existing_turn_ids and on_existing is not None:
                        on_existing(outcome.existing_turn_ids)
                    conflicts += 1
                    if conflicts > 1:
                        # Writers that keep colliding would otherwise retry in lockstep.
                        await self._backoff.wait(conflicts)
                    current = await self._current_after_conflict(session_id, outcome.current)
                    fresh = True
                    self._cache.remember(session_id, current)
        except TimeoutError as exc:
            if sent:
                await self._cache.forget_if_trusted(session_id)
            raise StoreUnavailableError(
                f"{operation} exceeded write_timeout={self._config.write_timeout}s"
                + (
                    "; it may have been applied (at most once)" if sent else "; nothing was written"
                ),
                session_id=session_id,
                maybe_applied=sent,
            ) from exc
        except StoreUnavailableError as exc:
            if exc.maybe_applied:
                await self._cache.forget_if_trusted(session_id)
            raise
        raise StoreUnavailableError(
            f"{operation} lost the race to concurrent writers {MAX_COMMIT_ROUNDS} times; retry",
            session_id=session_id,
        )

    async def delete(self, session_id: str, customer_id: str | None) -> None:
        """Tombstone META, then purge the items it hides (within 10 x write_timeout)."""
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
            self._cache.forget(session_id)

    async def _delete(self, session_id: str, customer_id: str | None) -> None:
        current = await self._store.get_meta(session_id, consistent=True)
        for _ in range(MAX_COMMIT_ROUNDS):
            if current is None:
                return
            if current.deleted:
                # Already deleted: finish a purge that an earlier call may not have finished.
                await self._purge(current)
                return
            now_ms = self._clock.time_ms()
            if rules.live_meta(current, now_ms // 1000) is not None:
                rules.check_owner(current, customer_id)
            write = rules.plan_delete(
                current,
                now_ms=now_ms,
                retention_seconds=self._config.ttl_seconds + self._config.turn_retention_seconds,
            )
            outcome = await self._store.commit(write)
            if outcome.applied:
                # The tombstone goes to Redis before the purge: other processes see the
                # session absent from now on, and no stale fill can revive it.
                await self._cache.write_through(write.meta)
                await self._purge(write.meta)
                return
            current = await self._current_after_conflict(session_id, outcome.current)
        raise StoreUnavailableError(
            "delete_session lost the race to concurrent writers too often; call it again",
            session_id=session_id,
        )

    async def _purge(self, tombstone: MetaRecord) -> None:
        """Remove the items a tombstone hides; the tombstone itself stays (see plan_delete)."""
        try:
            await self._store.purge_session(
                tombstone.session_id, through_turn_id=rules.high_water(tombstone)
            )
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(
                "delete_session hid the session but could not remove its items; call it again",
                session_id=tombstone.session_id,
                maybe_applied=True,
            ) from exc

    async def _current_after_conflict(
        self, session_id: str, reported: MetaRecord | None
    ) -> MetaRecord | None:
        if reported is not None:
            return reported
        return await self._store.get_meta(session_id, consistent=True)
