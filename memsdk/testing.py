"""A test kit for users of memsdk: a controllable clock, a store that counts its traffic, a
store that fails on command, and a crash.

For an in-memory store in your own tests use `Config(store="sqlite:///:memory:")`: it is the
real embedded store, not a mock, so your tests see the behaviour production sees.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, TypeVar, cast

from memsdk.errors import StoreUnavailableError
from memsdk.records import TurnRecord
from memsdk.store.base import Store
from memsdk.store.wrapper import StoreCall, StoreWrapper

if TYPE_CHECKING:
    from memsdk.client import MemoryClient

__all__ = ["CountingStore", "FakeClock", "FaultyStore", "crash"]

T = TypeVar("T")


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


class CountingStore(StoreWrapper):
    """Wraps a Store and counts calls per method and items returned by reads."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self.items_read = 0

    def reset(self) -> None:
        """Zero every counter."""
        self.calls.clear()
        self.items_read = 0

    async def around(self, call: StoreCall[T]) -> T:
        """Count, then delegate; a read's items count once it returned."""
        self.calls[call.operation] += 1
        result = await call.run()
        if call.operation == "get_meta":
            self.items_read += result is not None
        elif call.operation == "query_turns":
            self.items_read += len(cast("list[TurnRecord]", result))
        return result


class FaultyStore(StoreWrapper):
    """Wraps a Store and fails on command, the way a store outage looks to memsdk.

    `down = True`: every call raises StoreUnavailableError before reaching the store.
    `lose_commit_replies = n`: the next n commits are applied, then raise
    StoreUnavailableError(maybe_applied=True), as when a reply is lost on the network.
    `delay_s = 0.5`: every call waits that long first, as a slow store does.
    open and aclose always reach the store (even when down: connections are lazy).
    """

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.down = False
        self.lose_commit_replies = 0
        self.delay_s = 0.0
        self.refused = 0

    async def around(self, call: StoreCall[T]) -> T:
        """Wait delay_s; fail when down; else delegate, and lose a commit's reply when told."""
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.down:
            self.refused += 1
            raise StoreUnavailableError("FaultyStore is down (test)", session_id=call.session_id)
        result = await call.run()
        if call.operation == "commit" and self.lose_commit_replies > 0:
            self.lose_commit_replies -= 1
            raise StoreUnavailableError(
                "FaultyStore lost the reply (test)",
                session_id=call.session_id,
                maybe_applied=True,
            )
        return result


async def crash(client: MemoryClient, *, write_queued: bool = False) -> None:
    """Stop `client` as kill -9 would: no drain, no last confirmations, background work and
    connections dropped, the wal_dir lock released so that a new client can open the log.

    `write_queued`: let the log write what it had already queued (confirmations), as a
    kill a moment later would. The client is closed afterwards.
    """
    await client._abandon(write_queued=write_queued)
