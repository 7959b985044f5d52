"""The store protocol: five async methods and their error contract.

A store keeps the items of one logical table (memsdk.records, docs/architecture.md).

Stores only translate. Every rule (TTL, incarnations, ownership, turn ids, windows) lives
in `memsdk.session` and `memsdk.client`, so that all stores behave alike and one
conformance suite (tests/contract) proves it.

Error contract, for every method:
- transient failures (connection, timeout, throttling, 5xx) raise StoreUnavailableError,
  with `maybe_applied=True` when a write may have reached the store;
- anything else the store refuses raises StoreError;
- no foreign exception (botocore, sqlite3, aiohttp) ever escapes.
"""

from __future__ import annotations

from typing import Protocol

from memsdk.records import CommitOutcome, MetaRecord, SessionWrite, TurnRecord

__all__ = ["Store"]


class Store(Protocol):
    """The durable tier. Implementations: SQLiteStore, DynamoDBStore."""

    @property
    def description(self) -> str:
        """A short, secret-free name for health() and logs, e.g. 'dynamodb:conversation_memory'."""
        ...

    async def open(self) -> None:
        """Acquire connections; idempotent."""
        ...

    async def aclose(self) -> None:
        """Release every connection and thread; idempotent."""
        ...

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Return the stored META item, expired or not, or None."""
        ...

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Return up to `limit` (>= 1) TURN items newest first, ids < `before_turn_id` if given.

        No filtering by expiry or incarnation: the caller does that, so that it can page on.
        """
        ...

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Apply `write` atomically if the stored META matches its expectation."""
        ...

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        """Delete TURN/SUMMARY items with ids <= `through_turn_id`; never META.

        Called after META was tombstoned; must not touch items of a newer incarnation
        created in the meantime (their ids are above the bound). The tombstone stays until
        its TTL.
        """
        ...
