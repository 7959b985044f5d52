"""The records every tier speaks: what a session's items hold, and how they are keyed.

A store keeps the items of one logical table:

    PK = SESSION#<session_id>
    SK = META | TURN#<turn_id> | SUMMARY#<through_turn_id>
    expires_at (epoch seconds) on every item

Stores translate these records to their own rows or items, caches and the write-ahead log
encode them, and the session rules (memsdk.session) plan writes as SessionWrite: one
module, so that a field added here is one change that every tier sees. It imports nothing
of memsdk.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "META_SK",
    "PK_PREFIX",
    "SUMMARY_PREFIX",
    "TURN_PREFIX",
    "CommitOutcome",
    "MetaRecord",
    "MetaStamp",
    "SessionWrite",
    "SummaryRecord",
    "TurnRecord",
    "same_turn",
    "stamp_of",
]

# The item keys (the same strings in every store).
PK_PREFIX = "SESSION#"
META_SK = "META"
TURN_PREFIX = "TURN#"
SUMMARY_PREFIX = "SUMMARY#"


class TurnRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A TURN#<turn_id> item.

    `version`: the META version of the commit that wrote it (0: not committed yet, or
    written before memsdk kept it). A read shows a turn only with a META whose version is
    at least that: reads of META and turns are not one snapshot, and a commit landing
    between them must not show turns the META does not count (see session.visible_turns).
    """

    turn_id: str
    role: str
    content: str
    intent: str | None
    attributes: dict[str, Any]
    created_at_ms: int
    expires_at: int
    version: int = 0


def same_turn(a: TurnRecord, b: TurnRecord) -> bool:
    """Whether two records are the same turn: the same content, whatever commit wrote them
    (a replay or a retry planned on another base carries another version)."""
    return msgspec.structs.replace(a, version=0) == msgspec.structs.replace(b, version=0)


class SummaryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A SUMMARY#<through_turn_id> item (also copied into META when it is the newest)."""

    text: str
    through_turn_id: str
    created_at_ms: int
    expires_at: int


class MetaRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The META item: public session fields plus the bookkeeping the rules need.

    `version` grows by one on every META write and is what conditional writes compare.
    `floor_turn_id` is the incarnation floor: only turns and summaries with ids above it
    belong to this incarnation of the session; leftovers of an expired one sit below it.
    `deleted` marks the tombstone delete_session leaves: the session reads as absent, while
    the item itself stays (its `expires_at` is its physical TTL) so that a late write of
    turns acknowledged before the delete (a WAL replay) finds it and is dropped, instead
    of starting a new incarnation that would bring them back.
    `late_turns` is True when the newest commit of turns put every one of them below the
    `last_turn_id` it found (buffered turns of a writer whose clock is behind). A read that
    took its turns and META in parallel cannot see such a commit land between the two by
    comparing newest ids: it reads the turns again, after META (see memsdk.client).
    """

    session_id: str
    customer_id: str | None
    created_at_ms: int
    updated_at_ms: int
    turn_count: int
    last_turn_id: str | None
    floor_turn_id: str
    page_context: dict[str, Any]
    attributes: dict[str, Any]
    expires_at: int
    version: int
    summary: SummaryRecord | None = None
    deleted: bool = False
    late_turns: bool = False


class MetaStamp(msgspec.Struct, frozen=True, kw_only=True):
    """What a conditional write requires of the stored META besides its version: who owns
    the session, its incarnation and its turns.

    A writer may plan on a META it did not read from the store (Redis, which anyone who can
    write to it can forge): the version alone would let a forged owner, floor or count
    become the base of a write and be persisted. With the stamp, a base that lies about
    any of these fails the condition and the writer re-plans on the stored META.
    """

    customer_id: str | None
    floor_turn_id: str
    last_turn_id: str | None
    turn_count: int
    deleted: bool


def stamp_of(meta: MetaRecord) -> MetaStamp:
    """The stamp a write based on `meta` requires of the stored META."""
    return MetaStamp(
        customer_id=meta.customer_id,
        floor_turn_id=meta.floor_turn_id,
        last_turn_id=meta.last_turn_id,
        turn_count=meta.turn_count,
        deleted=meta.deleted,
    )


class SessionWrite(msgspec.Struct, frozen=True, kw_only=True):
    """One atomic, conditional write of a session: new TURN/SUMMARY items and the new META.

    Applied only if the stored META still matches the expectation: `expected_version` is
    the version the writer based `meta` on, and `expected_stamp` the rest of that META's
    identity (see MetaStamp); or both None for "META is absent or expired at `now_s`" (a
    new session or a new incarnation; a delete's tombstone is neither, so the writer must
    plan on it). Nothing is written otherwise.
    """

    meta: MetaRecord
    expected_version: int | None
    now_s: int
    turns: list[TurnRecord] = []
    summary: SummaryRecord | None = None
    expected_stamp: MetaStamp | None = None


class CommitOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Result of Store.commit.

    applied=True: the write is in the store (now, or already from an earlier attempt whose
    reply was lost: every TURN item of the write exists with identical content). In that
    second case `already_applied` is True and `current` is the stored META when the store
    returned it: the earlier attempt may have written another META than this one (planned
    on another base), so the caller must not take `write.meta` for what the store holds
    unless they are equal.
    applied=False: the expectation failed and nothing was written; `current` is the stored
    META (possibly expired) or None when there is none, or when the store could not say.
    `existing_turn_ids`: turns of the write that already exist with identical content (an
    earlier write of the same buffered turns landed); the caller drops them and re-plans.
    """

    applied: bool
    current: MetaRecord | None = None
    existing_turn_ids: frozenset[str] = frozenset()
    already_applied: bool = False
