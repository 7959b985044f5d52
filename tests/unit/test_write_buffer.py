"""The read-your-writes overlay and the WAL record codec, without any store."""

from __future__ import annotations

import msgspec
import pytest

from memsdk.models import Context, Meta, Turn
from memsdk.store.base import TurnRecord
from memsdk.write_buffer import (
    BufferedAppend,
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
    return buffered_append(lsn, "s", "C", turns, encode_append("s", "C", turns), T0)


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
    # The read began before either commit and saw nothing; both committed before it ended.
    absent = Context(session_id="s", meta=None, turns=[], summary=None)
    ctx = overlay(absent, [entry(1, 1, 2), entry(2, 3, 4)], set(), 20, 60)
    assert contents(ctx) == ["c1", "c2", "c3", "c4"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4 and ctx.meta.customer_id == "C"
    assert ctx.meta.last_turn_id == tid(4) and ctx.source == "store+wal"


def test_turns_the_read_returned_are_not_counted_twice() -> None:
    ctx = overlay(stored(2, 1, 2), [entry(1, 1, 2), entry(2, 3, 4)], {2}, 20, 60)
    assert contents(ctx) == ["c1", "c2", "c3", "c4"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4


def test_pending_turns_older_than_a_full_window_count_only_while_pending() -> None:
    # Another writer committed 3 and 4 (newer ids); our 1 is older than the 2-turn window.
    ours = entry(7, 1)
    still = overlay(stored(10, 3, 4), [ours], {7}, 2, 60)
    assert contents(still) == ["c3", "c4"] and still.meta is not None
    assert still.meta.turn_count == 11
    # Committed during the read: the store's count may already hold it; never add it twice.
    done = overlay(stored(10, 3, 4), [ours], set(), 2, 60)
    assert done.meta is not None and done.meta.turn_count == 10


def test_overlay_keeps_the_window_and_its_tool_rule() -> None:
    tool = TurnRecord(**{**msgspec.structs.asdict(record(3)), "role": "tool"})
    call = TurnRecord(**{**msgspec.structs.asdict(record(2)), "role": "assistant"})
    turns = [call, tool, record(4)]
    pending = buffered_append(1, "s", None, turns, encode_append("s", None, turns), T0)
    ctx = overlay(stored(1, 1), [pending], {1}, 2, 60)
    # The newest two would start with the tool result: the window moves back to its call.
    assert [t.role for t in ctx.turns] == ["assistant", "tool", "user"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4


def test_codec_round_trip_and_refusals() -> None:
    e = entry(5, 1, 2)
    back = decode_append(5, e.payload, T0)
    assert back == e and back.turns() == [record(1), record(2)]
    assert (back.first_turn_id, back.last_turn_id, back.turn_count) == (tid(1), tid(2), 2)
    with pytest.raises(msgspec.DecodeError):
        decode_append(1, b'{"type":"append","session_id":"s","customer_id":null,"turns":[]}', 0)
    with pytest.raises(msgspec.DecodeError):
        decode_append(1, b"not json", 0)


def test_batches_stop_at_the_transaction_limits() -> None:
    big = [entry(i, *range(i * 40, i * 40 + 40)) for i in range(3)]
    assert batch_fits(big[:1], big[1]) and not batch_fits(big[:2], big[2])  # 120 > 99 turns
    # A smaller cap (wal_flush_batch_turns) limits which entries join a batch; the
    # flusher always takes a batch's first entry whole (an append is never split).
    assert not batch_fits(big[:1], big[1], max_turns=25)
    assert batch_fits(big[:1], big[1], max_turns=99)
