"""The public data model: what callers pass in and get back. All are msgspec Structs.

Returned objects may be shared with the in-process cache: treat them as read-only.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["AppendReceipt", "BreakerState", "Context", "Health", "Meta", "Role", "Summary", "Turn"]

Role = Literal["user", "assistant", "system", "tool"]
BreakerState = Literal["closed", "open", "half_open", "off"]


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a conversation; `turn_id` and `created_at_ms` are set by memsdk on append."""

    role: Role
    content: str
    intent: str | None = None
    attributes: dict[str, Any] = {}
    turn_id: str | None = None
    created_at_ms: int | None = None


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """A rolling summary covering every turn up to and including `through_turn_id`."""

    text: str
    through_turn_id: str
    created_at_ms: int


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    """Session-level state; `last_turn_id` is the version stamp of the session."""

    session_id: str
    customer_id: str | None
    created_at_ms: int
    updated_at_ms: int
    turn_count: int
    last_turn_id: str | None
    page_context: dict[str, Any]
    expires_at: int
    attributes: dict[str, Any]


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What load_context returns: META, the newest turns oldest -> newest, the newest summary."""

    session_id: str
    meta: Meta | None
    turns: list[Turn]
    summary: Summary | None
    degraded: bool = False
    source: str = "store"

    @property
    def exists(self) -> bool:
        """True when the session exists (is live) in the tier that answered."""
        return self.meta is not None


class AppendReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The ids given to appended turns, in order; `durable` is True once the store holds them."""

    session_id: str
    turn_ids: list[str]
    durable: bool


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the client's tiers; cheap to call, does no I/O."""

    store: str
    store_breaker: BreakerState
    redis_breaker: BreakerState
    l1_entries: int
    l1_bytes: int
    l1_max_bytes: int
    wal_pending_records: int
    wal_pending_bytes: int
    wal_oldest_pending_age_s: float | None
    open: bool
    consistency: str
    redis: str | None = None
    l1_hits: int = 0
    l1_misses: int = 0
    l1_evictions: int = 0
    redis_hits: int = 0
    redis_misses: int = 0
    redis_errors: int = 0
    # load_context answers flagged degraded (store breaker open, store down or too slow).
    degraded_replies: int = 0
    # Resilience: store calls refused by the open breaker, breaker trips, retries sent and
    # retries the budget refused, store calls in flight now and at the peak.
    store_calls_rejected: int = 0
    store_breaker_opened: int = 0
    store_retries: int = 0
    store_retries_refused: int = 0
    store_calls_in_flight: int = 0
    store_calls_peak_in_flight: int = 0
    redis_bypassed: int = 0
    redis_breaker_opened: int = 0
    # The write-ahead log (all zero without wal_dir).
    wal_segments: int = 0
    wal_appends: int = 0
    wal_fsyncs: int = 0
    wal_quarantined_segments: int = 0
    # Acknowledged appends (records) and their turns kept in wal_dir/rejected/ instead of
    # the store: ordered before another process's delete, refused for good, or undecodable.
    wal_rejected_records: int = 0
    wal_rejected_turns: int = 0
