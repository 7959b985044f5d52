"""The session rules without any store: windows, visibility, sizes, incarnations."""

from __future__ import annotations

import pytest

from memsdk import Turn
from memsdk.errors import InvalidSessionIdError, SessionOwnershipError, TurnTooLargeError
from memsdk.ids import TurnIdGenerator
from memsdk.limits import turn_item_bytes
from memsdk.records import TurnRecord, same_turn
from memsdk.session import (
    high_water,
    plan_append,
    plan_buffered_append,
    plan_delete,
    select_window,
    validate_session_id,
    validate_turns,
    visible_turns,
)


def rec(i: int, role: str = "user", expires_at: int = 10**10) -> TurnRecord:
    return TurnRecord(
        turn_id=f"{1_700_000_000_000 + i:013d}000000000001",
        role=role,
        content=str(i),
        intent=None,
        attributes={},
        created_at_ms=0,
        expires_at=expires_at,
    )


def newest_first(roles: str) -> list[TurnRecord]:
    """'uat' -> user, assistant, tool oldest->newest; returned newest first."""
    names = {"u": "user", "a": "assistant", "t": "tool", "s": "system"}
    return [rec(i, names[r]) for i, r in enumerate(roles)][::-1]


@pytest.mark.parametrize(
    ("roles", "last_n", "exhausted", "expected"),
    [
        ("uauaua", 3, False, 3),
        ("uatta", 2, False, 4),  # window [t, a] starts with a tool: moves back to its caller
        ("tta", 2, False, None),  # only tools before the window: need an older page
        ("uatta", 3, False, 4),  # moves back to the assistant that called the tools
        ("uatta", 3, True, 4),
        ("ua", 5, False, None),  # short page, more may exist
        ("ua", 5, True, 2),
        # Tool results with no caller anywhere: the window starts at the session's first
        # turn, never drops an acknowledged one.
        ("tta", 5, True, 3),
        ("tta", 2, True, 3),
        ("tt", 5, True, 2),
        ("", 5, True, 0),
    ],
)
def test_select_window(roles: str, last_n: int, exhausted: bool, expected: int | None) -> None:
    assert select_window(newest_first(roles), last_n, exhausted) == expected


def test_window_never_starts_with_tool_unless_the_session_does() -> None:
    for roles in ("uattatau", "atttttu", "uuuut", "tuuuu", "ttau", "t"):
        turns = newest_first(roles)
        for n in range(1, len(roles) + 1):
            count = select_window(turns, n, True)
            assert count is not None and count >= min(n, len(roles))
            if turns[count - 1].role == "tool":
                assert count == len(roles), "a tool turn starts a window that could move back"


def test_validate_session_id_does_not_echo_bad_input() -> None:
    with pytest.raises(InvalidSessionIdError) as info:
        validate_session_id("secret token with spaces")
    assert "secret" not in str(info.value)


def test_size_estimate_counts_utf8_bytes_not_characters() -> None:
    t = Turn(role="user", content="€" * 1000)
    assert turn_item_bytes("s", t, b"{}") >= 3000
    with pytest.raises(TurnTooLargeError):
        validate_turns("s", [Turn(role="user", content="€" * 1000)], max_turn_bytes=2_000)


def test_visibility_floor_last_and_expiry() -> None:
    ids = TurnIdGenerator(lambda: 1_700_000_000_000)
    write = plan_append(
        None,
        session_id="s",
        turns=[Turn(role="user", content="a"), Turn(role="user", content="b")],
        customer_id=None,
        now_ms=1_700_000_000_000,
        ttl_seconds=60,
        retention_seconds=600,
        ids=ids,
    )
    meta = write.meta
    assert meta.floor_turn_id < write.turns[0].turn_id
    assert high_water(meta) == write.turns[-1].turn_id == meta.last_turn_id
    # Below the floor: a leftover of an incarnation whose META is gone, so older than the TTL.
    old = rec(-60_000)
    newer = TurnRecord(**{**_fields(write.turns[-1]), "turn_id": "9" * 13 + "0" * 12})
    expired = TurnRecord(**{**_fields(write.turns[0]), "expires_at": 1})
    page = [newer, write.turns[1], expired, old]
    assert visible_turns(meta, page, now_s=1_700_000_000) == [write.turns[1]]


def _fields(r: TurnRecord) -> dict[str, object]:
    return {f: getattr(r, f) for f in r.__struct_fields__}


def _buffered(turn_ids: list[str]) -> list[TurnRecord]:
    return [TurnRecord(**{**_fields(rec(0)), "turn_id": t}) for t in turn_ids]


def test_buffered_append_joins_an_incarnation_started_after_it_was_acknowledged() -> None:
    # Process A buffered turns for a new session at t0; process B created the session at
    # t0 + 5 s. A's turns must join B's incarnation, not vanish below its floor.
    t0 = 1_700_000_000_000
    ids = TurnIdGenerator(lambda: t0 + 5_000)
    created = plan_append(
        None,
        session_id="s",
        turns=[Turn(role="user", content="b")],
        customer_id="C",
        now_ms=t0 + 5_000,
        ttl_seconds=86_400,
        retention_seconds=600,
        ids=ids,
    )
    pending = _buffered([f"{t0:013d}0000aaaaaaaa", f"{t0:013d}0001aaaaaaaa"])
    write, dropped = plan_buffered_append(
        created.meta,
        session_id="s",
        appends=[pending],
        customer_id="C",
        now_ms=t0 + 6_000,
        ttl_seconds=86_400,
    )
    assert dropped == [] and write is not None
    assert write.meta.late_turns, "every turn sorts below the newest: readers must re-read"
    assert write.expected_version == created.meta.version
    assert write.meta.turn_count == 3
    assert write.meta.last_turn_id == created.turns[0].turn_id  # B's turn is still the newest
    assert visible_turns(write.meta, [*created.turns, *pending], now_s=(t0 + 6_000) // 1000) == [
        *created.turns,
        *pending,
    ]


def test_buffered_append_drops_turns_of_a_deleted_incarnation() -> None:
    t0 = 1_700_000_000_000
    ids = TurnIdGenerator(lambda: t0)
    first = plan_append(
        None,
        session_id="s",
        turns=[Turn(role="user", content="a")],
        customer_id=None,
        now_ms=t0,
        ttl_seconds=86_400,
        retention_seconds=600,
        ids=ids,
    )
    later = plan_append(
        first.meta,
        session_id="s",
        turns=[Turn(role="user", content="b")],
        customer_id=None,
        now_ms=t0 + 10,
        ttl_seconds=86_400,
        retention_seconds=600,
        ids=ids,
    )
    tombstone = plan_delete(later.meta, now_ms=t0 + 20, retention_seconds=86_400 + 600).meta
    # A turn buffered between the two appends, flushed after the delete: it was deleted.
    stale = _buffered([f"{t0:013d}0000ffffffff"])
    write, dropped = plan_buffered_append(
        tombstone,
        session_id="s",
        appends=[stale],
        customer_id=None,
        now_ms=t0 + 30,
        ttl_seconds=86_400,
    )
    assert write is None and dropped == [0]
    # A turn buffered after the delete starts a new incarnation above the old high water.
    fresh = _buffered([f"{t0 + 25:013d}0000bbbbbbbb"])
    write, dropped = plan_buffered_append(
        tombstone,
        session_id="s",
        appends=[fresh],
        customer_id=None,
        now_ms=t0 + 30,
        ttl_seconds=86_400,
    )
    assert write is not None and dropped == []
    assert not write.meta.late_turns
    assert write.expected_version == tombstone.version
    assert write.meta.floor_turn_id == high_water(tombstone)
    assert (write.meta.turn_count, write.meta.last_turn_id) == (1, fresh[0].turn_id)
    # One append whose ids straddle the floor is dropped whole, never cut in two; the
    # next append of the same batch, above the floor, is written.
    straddling = _buffered([f"{t0:013d}0000ffffffff", f"{t0 + 25:013d}0001bbbbbbbb"])
    write, dropped = plan_buffered_append(
        tombstone,
        session_id="s",
        appends=[straddling, fresh],
        customer_id=None,
        now_ms=t0 + 30,
        ttl_seconds=86_400,
    )
    assert dropped == [0]
    assert write is not None and write.meta.turn_count == 1
    assert [same_turn(t, f) for t, f in zip(write.turns, fresh, strict=True)] == [True]
    assert {t.version for t in write.turns} == {write.meta.version}  # stamped by its commit


def test_buffered_append_checks_the_owner() -> None:
    t0 = 1_700_000_000_000
    owned = plan_append(
        None,
        session_id="s",
        turns=[Turn(role="user", content="a")],
        customer_id="C1",
        now_ms=t0,
        ttl_seconds=60,
        retention_seconds=600,
        ids=TurnIdGenerator(lambda: t0),
    )
    with pytest.raises(SessionOwnershipError):
        plan_buffered_append(
            owned.meta,
            session_id="s",
            appends=[_buffered([f"{t0 + 1:013d}0000cccccccc"])],
            customer_id="C2",
            now_ms=t0 + 2,
            ttl_seconds=60,
        )
