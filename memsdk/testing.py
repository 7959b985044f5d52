"""A test kit for users of memsdk: a controllable clock, a store that counts its traffic and
a store that fails on command.

For an in-memory store in your own tests use `Config(store="sqlite:///:memory:")`: it is the
real embedded store, not a mock, so your tests see the behaviour production sees.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from memsdk.errors import StoreUnavailableError
from memsdk.store.base import CommitOutcome, MetaRecord, SessionWrite, Store, TurnRecord

__all__ = ["CountingStore", "FakeClock", "FaultyStore"]


class FakeClock:
    """A wall clock that only moves when told to; pass it as MemoryClient(clock=...)."""

    def __init__(self, start_ms: int | None = None) -> None:
        # Default to the real time: stores that reap expired items (DynamoDB TTL) then
        # see the same epoch as the fake clock.
        self.now_ms = start_ms if start_ms is not None else time.time_ns() // 1_000_000

    def time_ms(self) -> int:
        """Return the current fake time in epoch milliseconds."""
        return self.now_ms

    def advance(self, seconds: float) -> None:
        """Move the clock forward (or backward, with a negative value) by `seconds`."""
        self.now_ms += int(seconds * 1000)


class CountingStore:
    """Wraps a Store and counts calls per method and items returned by reads."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.items_read = 0

    @property
    def description(self) -> str:
        """The wrapped store's description."""
        return self.inner.description

    def reset(self) -> None:
        """Zero every counter."""
        self.calls.clear()
        self.items_read = 0

    async def open(self) -> None:
        """Open the wrapped store."""
        await self.inner.open()

    async def aclose(self) -> None:
        """Close the wrapped store."""
        await self.inner.aclose()

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Count, then delegate."""
        self.calls["get_meta"] += 1
        meta = await self.inner.get_meta(session_id, consistent=consistent)
        self.items_read += meta is not None
        return meta

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Count, then delegate."""
        self.calls["query_turns"] += 1
        turns = await self.inner.query_turns(
            session_id, before_turn_id=before_turn_id, limit=limit, consistent=consistent
        )
        self.items_read += len(turns)
        return turns

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Count, then delegate."""
        self.calls["commit"] += 1
        return await self.inner.commit(write)

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        """Count, then delegate."""
        self.calls["purge_session"] += 1
        await self.inner.purge_session(session_id, through_turn_id=through_turn_id)


class FaultyStore:
    """Wraps a Store and fails on command, the way a store outage looks to memsdk.

    `down = True`: every call raises StoreUnavailableError before reaching the store.
    `lose_commit_replies = n`: the next n commits are applied, then raise
    StoreUnavailableError(maybe_applied=True), as when a reply is lost on the network.
    `delay_s = 0.5`: every call waits that long first, as a slow store does.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.lose_commit_replies = 0
        self.delay_s = 0.0
        self.refused = 0

    @property
    def description(self) -> str:
        """The wrapped store's description."""
        return self.inner.description

    async def _check(self, session_id: str | None) -> None:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.down:
            self.refused += 1
            raise StoreUnavailableError("FaultyStore is down (test)", session_id=session_id)

    async def open(self) -> None:
        """Open the wrapped store (even when down: connections are lazy)."""
        await self.inner.open()

    async def aclose(self) -> None:
        """Close the wrapped store."""
        await self.inner.aclose()

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Wait delay_s; fail when down, else delegate."""
        await self._check(session_id)
        return await self.inner.get_meta(session_id, consistent=consistent)

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Wait delay_s; fail when down, else delegate."""
        await self._check(session_id)
        return await self.inner.query_turns(
            session_id, before_turn_id=before_turn_id, limit=limit, consistent=consistent
        )

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Wait delay_s; fail when down; apply, then lose the reply when told to."""
        await self._check(write.meta.session_id)
        outcome = await self.inner.commit(write)
        if self.lose_commit_replies > 0:
            self.lose_commit_replies -= 1
            raise StoreUnavailableError(
                "FaultyStore lost the reply (test)",
                session_id=write.meta.session_id,
                maybe_applied=True,
            )
        return outcome

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        """Wait delay_s; fail when down, else delegate."""
        await self._check(session_id)
        await self.inner.purge_session(session_id, through_turn_id=through_turn_id)
