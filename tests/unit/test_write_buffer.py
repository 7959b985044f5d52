"""The read-your-writes overlay and the WAL record codec, without any store."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from memsdk.models import Context, Meta, Turn
from memsdk.records import TurnRecord
from memsdk.write_buffer import (
    BufferedAppend,
    OverlayUncertain,
    UndecodableRecord,
    batch_fits,
    buffered_append,
    decode_append,
    encode_append,
    overlay,
)

T0 = 1_764_000_000_000


def tid(n: int) -> str:
    return f"{T0 + n:013d}0000aaaaaaaa"


def record(n: int, role: str = "user") -> TurnRecord:
    return TurnRecord(
        turn_id=tid(n),
        role=role,
        content=f"c{n}",
        intent=None,
        attributes={},
        created_at_ms=T0 + n,
        expires_at=2_000_000_000,
    )


def entry(lsn: int, *ns: int) -> BufferedAppend:
    turns = [record(n) for n in ns]
    payload = encode_append("s", "C", turns)
    return buffered_append(lsn, "s", "C", turns, payload, T0, owner_verified=True)


def public(n: int) -> Turn:
    return Turn(role="user", content=f"c{n}", turn_id=tid(n), created_at_ms=T0 + n)


def stored(turn_count: int, *ns: int) -> Context:
    meta = Meta(
        session_id="s",
        customer_id="C",
        created_at_ms=T0,
        updated_at_ms=T0,
        turn_count=turn_count,
        last_turn_id=tid(max(ns)) if ns else None,
        page_context={},
        expires_at=2_000_000_000,
        attributes={},
    )
    return Context(session_id="s", meta=meta, turns=[public(n) for n in ns], summary=None)


def contents(ctx: Context) -> list[str]:
    return [t.content for t in ctx.turns]


def test_appends_committed_while_the_read_was_in_flight_still_show() -> None:
    # The read began before either commit and saw nothing; both committed after its META.
    absent = Context(session_id="s", meta=None, turns=[], summary=None)
    first, second = entry(1, 1, 2), entry(2, 3, 4)
    first.committed_version, second.committed_version = 5, 6
    ctx = overlay(absent, [first, second], None, 20, 60)
    assert contents(ctx) == ["c1", "c2", "c3", "c4"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4 and ctx.meta.customer_id == "C"
    assert ctx.meta.last_turn_id == tid(4) and ctx.source == "store+wal"


def test_turns_the_read_returned_are_not_counted_twice() -> None:
    first = entry(1, 1, 2)
    first.committed_version = 5
    ctx = overlay(stored(2, 1, 2), [first, entry(2, 3, 4)], 5, 20, 60)
    assert contents(ctx) == ["c1", "c2", "c3", "c4"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4


def test_an_unverified_owner_is_never_the_overlay_owner() -> None:
    absent = Context(session_id="s", meta=None, turns=[], summary=None)
    claimed = entry(1, 1)
    claimed.owner_verified = False
    ctx = overlay(absent, [claimed], None, 20, 60)
    assert ctx.meta is not None and ctx.meta.customer_id is None


def test_pending_turns_below_a_full_window_are_counted_once() -> None:
    # Another writer committed 3 and 4 (newer ids); our 1 is older than the 2-turn window.
    ours = entry(7, 1)
    still = overlay(stored(10, 3, 4), [ours], 9, 2, 60)
    assert contents(still) == ["c3", "c4"] and still.meta is not None
    assert still.meta.turn_count == 11
    # Committed at or below the version the read's META has: already counted.
    ours.committed_version = 9
    done = overlay(stored(10, 3, 4), [ours], 9, 2, 60)
    assert done.meta is not None and done.meta.turn_count == 10
    # Committed after that META was read: not in its count yet.
    ours.committed_version = 10
    later = overlay(stored(10, 3, 4), [ours], 9, 2, 60)
    assert later.meta is not None and later.meta.turn_count == 11


@pytest.mark.parametrize("state", ["in_flight", "maybe_landed"])
def test_a_commit_of_unknown_outcome_below_the_window_cannot_be_counted(state: str) -> None:
    ours = entry(7, 1)
    setattr(ours, state, True)
    with pytest.raises(OverlayUncertain):
        overlay(stored(10, 3, 4), [ours], 9, 2, 60)
    assumed = overlay(stored(10, 3, 4), [ours], 9, 2, 60, uncertain_included=True)
    assert assumed.meta is not None and assumed.meta.turn_count == 10
    # A later append of ours that the answer shows was flushed after it: it is in META.
    shown = entry(8, 4)
    after = overlay(stored(10, 3, 4), [ours, shown], 9, 2, 60)
    assert after.meta is not None and after.meta.turn_count == 10
    # In the window's range the answer itself tells: not shown, so not in META.
    window_ours = entry(9, 5)
    setattr(window_ours, state, True)
    newer = overlay(stored(10, 3, 4), [window_ours], 9, 2, 60)
    assert contents(newer) == ["c4", "c5"]
    assert newer.meta is not None and newer.meta.turn_count == 11


def test_appends_set_aside_are_never_shown_nor_counted() -> None:
    gone = entry(3, 5)
    gone.set_aside = True
    ctx = overlay(stored(2, 1, 2), [gone], 4, 20, 60)
    assert contents(ctx) == ["c1", "c2"] and ctx.meta is not None and ctx.meta.turn_count == 2


def test_overlay_keeps_the_window_and_its_tool_rule() -> None:
    tool = TurnRecord(**{**msgspec.structs.asdict(record(3)), "role": "tool"})
    call = TurnRecord(**{**msgspec.structs.asdict(record(2)), "role": "assistant"})
    turns = [call, tool, record(4)]
    pending = buffered_append(1, "s", None, turns, encode_append("s", None, turns), T0)
    ctx = overlay(stored(1, 1), [pending], 3, 2, 60)
    # The newest two would start with the tool result: the window moves back to its call.
    assert [t.role for t in ctx.turns] == ["assistant", "tool", "user"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4


def test_a_pending_turn_below_a_whole_session_window_is_shown_before_its_tool_results() -> None:
    """Found by tests/property (long profile): the store's answer held every turn of the
    session (4 of 4, last_n=4), the oldest a tool result; this process's buffered turn
    sorts below it (its clock was behind). The overlay left it out, as if the window were
    a suffix, and served a window that starts with a tool result whose turn before it
    exists (guarantee 9)."""
    read = stored(4, 3, 4, 5, 6)
    read = msgspec.structs.replace(
        read, turns=[msgspec.structs.replace(read.turns[0], role="tool"), *read.turns[1:]]
    )
    ours = entry(7, 1)
    ctx = overlay(read, [ours], 9, 4, 60)
    assert contents(ctx) == ["c1", "c3", "c4", "c5", "c6"]
    assert [t.role for t in ctx.turns][:2] == ["user", "tool"]
    assert ctx.meta is not None and ctx.meta.turn_count == 5
    # A window that is a suffix of a longer session still leaves it out (and counts it).
    suffix = overlay(
        msgspec.structs.replace(read, meta=msgspec.structs.replace(read.meta, turn_count=9)),
        [ours],
        9,
        4,
        60,
    )  # type: ignore[arg-type]
    assert contents(suffix) == ["c3", "c4", "c5", "c6"]
    assert suffix.meta is not None and suffix.meta.turn_count == 10


def test_codec_round_trip_and_refusals() -> None:
    e = entry(5, 1, 2)
    back = decode_append(5, e.payload, T0)
    assert back.turns() == [record(1), record(2)]
    assert dataclasses.asdict(back) == {**dataclasses.asdict(e), "owner_verified": False}
    assert (back.first_turn_id, back.last_turn_id, back.turn_count) == (tid(1), tid(2), 2)
    with pytest.raises(UndecodableRecord):
        decode_append(1, b'{"type":"append","session_id":"s","customer_id":null,"turns":[]}', 0)
    with pytest.raises(UndecodableRecord):
        decode_append(1, b"not json", 0)


def test_batches_stop_at_the_transaction_limits() -> None:
    big = [entry(i, *range(i * 40, i * 40 + 40)) for i in range(3)]
    assert batch_fits(big[:1], big[1]) and not batch_fits(big[:2], big[2])  # 120 > 99 turns
    # A smaller cap (wal_flush_batch_turns) limits which entries join a batch; the
    # flusher always takes a batch's first entry whole (an append is never split).
    assert not batch_fits(big[:1], big[1], max_turns=25)
    assert batch_fits(big[:1], big[1], max_turns=99)


def test_a_batch_holds_one_customer_id() -> None:
    mine = entry(1, 1)
    turns = [record(2)]
    theirs = buffered_append(2, "s", "D", turns, encode_append("s", "D", turns), T0)
    assert not batch_fits([mine], theirs)
    assert batch_fits([mine], entry(3, 3))


def test_appends_the_flush_will_set_aside_are_never_shown() -> None:
    """Found by the machine's long profile: after a restart, a replayed record ordered
    before a delete (its ids at or below the incarnation's floor) was shown again until
    its flush set it aside a second time."""
    before_delete = entry(3, 1, 2)
    after = entry(4, 7)
    absent = Context(session_id="s", meta=None, turns=[], summary=None)
    ctx = overlay(absent, [before_delete, after], 10, 20, 60, floor=tid(5))
    assert contents(ctx) == ["c7"] and ctx.meta is not None and ctx.meta.turn_count == 1


def test_a_degraded_answer_never_makes_up_an_expired_meta_from_a_replayed_append() -> None:
    """Found by tests/property (long profile): after a crash with a power cut, a restarted
    client replayed appends flushed an hour before (their confirmations were lost); the
    store was down, and the degraded answer overlaid them on "no META", making up a META
    that had expired with them (TTL 60 s here)."""
    absent = Context(session_id="s", meta=None, turns=[], summary=None, degraded=True)
    replayed, recent = entry(1, 1, 2), entry(2, 3600 * 1000)
    old = overlay(absent, [replayed], None, 20, 60, now_ms=T0 + 3600 * 1000)
    assert old == absent  # they would have expired with their session: not shown
    ctx = overlay(absent, [replayed, recent], None, 20, 60, now_ms=T0 + 3600 * 1000 + 1)
    assert contents(ctx) == [f"c{3600 * 1000}"]
    assert ctx.meta is not None and ctx.meta.expires_at > (T0 + 3600 * 1000) // 1000
    # Without a clock (the old call) the replayed appends made up an expired META.
    stale = overlay(absent, [replayed], None, 20, 60)
    assert stale.meta is not None and stale.meta.expires_at < (T0 + 3600 * 1000) // 1000
