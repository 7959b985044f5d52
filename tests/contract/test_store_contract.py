"""The Store protocol (memsdk/store/base.py), checked once on every store and data path.

What any store must do: conditional commits and what they report, retries of landed
writes, reads newest first within one session, purges below a bound, the shared item
layout, and StoreError for whatever it refuses. What one backend does on its own (files,
threads, wire details) is tested beside it: tests/unit/test_sqlite_store.py,
tests/integration/test_dynamodb_store.py.
"""

from __future__ import annotations

import pytest

from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.records import CommitOutcome
from memsdk.store.base import Store
from tests.contract.conftest import (
    LIVE,
    NOW,
    SID,
    TRICKY_ATTRIBUTES,
    StoreUnderTest,
    meta,
    pk,
    summary,
    tid,
    turn,
    write,
)

# Where a store does not do yet what the protocol asks. Each is a strict xfail limited to
# the exception the gap raises: the test still runs, and the day the store is fixed it
# passes, which fails the run until its entry here goes.
KNOWN_GAPS: dict[tuple[str, str], tuple[type[BaseException], str]] = {}


# A store's own words for a refusal, where its tests pinned them before this suite: the
# contract checks what every store says, these what one says besides.
OWN_WORDS: dict[tuple[str, str], str] = {
    ("collision", "sqlite"): "already exists with different content",
    ("collision", "dynamodb-lean"): "turn id collision",
    ("collision", "dynamodb-aioboto3"): "turn id collision",
    ("undecodable", "sqlite"): "not a valid memsdk record",
    ("not-open", "sqlite"): "store is not open",
}


def own_words(refusal: str, backend: StoreUnderTest) -> str | None:
    """The pattern this store's message for `refusal` matches (None: none pinned)."""
    return OWN_WORDS.get((refusal, backend.name))


@pytest.fixture(autouse=True)
def _known_gap(request: pytest.FixtureRequest, backend: StoreUnderTest) -> None:
    """Marks this test as a strict xfail on a store listed in KNOWN_GAPS."""
    gap = KNOWN_GAPS.get((request.node.originalname, backend.name))
    if gap is not None:
        raises, reason = gap
        request.applymarker(pytest.mark.xfail(raises=raises, reason=reason, strict=True))


async def newest_first(store: Store, session_id: str = SID) -> list[str]:
    """The ids of every turn of the session, newest first."""
    turns = await store.query_turns(session_id, before_turn_id=None, limit=100, consistent=True)
    return [t.turn_id for t in turns]


# --- commit and read back ----------------------------------------------------------------


async def test_new_session_round_trips_every_field(store: Store, backend: StoreUnderTest) -> None:
    summ = summary(1, text="résumé 😀", expires_at=LIVE + 7)
    stored = meta(
        1,
        last_turn_id=tid(3),
        page_context={"asin": "B08X1YRSTR", "deep": [[[]]], "n": 2**64 + 1},
        attributes=TRICKY_ATTRIBUTES,
        summary=summ,
    )
    turns = [
        turn(1, content="", attributes={}),
        turn(2, content="Show me horror manga ホラー 😀", intent="product_discovery"),
        turn(3, role="assistant", content="x" * 10_000, attributes=TRICKY_ATTRIBUTES),
    ]
    assert await store.commit(write(stored, None, turns, summ)) == CommitOutcome(applied=True)
    for consistent in (True, False):
        assert await store.get_meta(SID, consistent=consistent) == stored
    got = await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert got == list(reversed(turns))
    assert await store.get_meta("other-session", consistent=True) is None
    # One item per record, in the DynamoDB key layout (operators' tools read every store
    # alike), each carrying its own expiry.
    assert await backend.raw.items() == {
        (pk(), "META"): LIVE,
        (pk(), f"SUMMARY#{tid(1)}"): LIVE + 7,
        **{(pk(), f"TURN#{t.turn_id}"): t.expires_at for t in turns},
    }


async def test_get_meta_of_an_absent_session_is_none(store: Store) -> None:
    for consistent in (True, False):
        assert await store.get_meta("nobody", consistent=consistent) is None


async def test_data_survives_close_and_reopen(backend: StoreUnderTest) -> None:
    first = backend.new()
    await first.open()
    await first.commit(write(meta(1), None, [turn(1)]))
    await first.aclose()

    second = backend.new()
    await second.open()
    try:
        assert await second.get_meta(SID, consistent=True) == meta(1)
        got = await second.query_turns(SID, before_turn_id=None, limit=5, consistent=True)
        assert got == [turn(1)]
    finally:
        await second.aclose()


# --- conditional commits -----------------------------------------------------------------


async def test_commit_on_the_expected_version_with_and_without_turns(
    store: Store, backend: StoreUnderTest
) -> None:
    assert await store.commit(write(meta(1), None)) == CommitOutcome(applied=True)
    v2 = meta(2, last_turn_id=tid(1))
    assert await store.commit(write(v2, 1, [turn(1)])) == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == v2
    v3 = meta(3, last_turn_id=tid(1), page_context={"asin": "X"})
    assert await store.commit(write(v3, 2)) == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == v3
    assert sorted(await backend.raw.items()) == [(pk(), "META"), (pk(), f"TURN#{tid(1)}")]


async def test_expected_version_must_match(store: Store, backend: StoreUnderTest) -> None:
    stored = meta(1, attributes={"who": "first"})
    assert (await store.commit(write(stored, None, [turn(1)]))).applied
    before = await backend.raw.items()
    # A version below and above the stored one; with turns (one transaction) and without.
    for expected in (0, 2):
        for turns in ([turn(2)], []):
            stale = write(meta(3, attributes={"who": "second"}), expected, turns)
            assert await store.commit(stale) == CommitOutcome(applied=False, current=stored)
    assert await backend.raw.items() == before
    assert await store.get_meta(SID, consistent=True) == stored

    fresh = await store.commit(write(meta(2), 1, [turn(2)]))
    assert fresh == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == meta(2)
    assert await newest_first(store) == [tid(2), tid(1)]


async def test_expected_version_on_absent_meta_fails(store: Store, backend: StoreUnderTest) -> None:
    for turns in ([turn(1)], []):
        out = await store.commit(write(meta(2), 1, turns))
        assert out == CommitOutcome(applied=False, current=None)
    assert await backend.raw.items() == {}
    assert await store.get_meta(SID, consistent=True) is None


async def test_expected_version_is_not_fooled_by_expiry(store: Store) -> None:
    # An expired META still has a version: a writer that based its write on it may commit.
    assert (await store.commit(write(meta(1), None))).applied
    late = write(meta(2), 1, [turn(1)], now_s=LIVE + 5)
    assert await store.commit(late) == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == meta(2)


async def test_expected_none_fails_while_meta_is_live(
    store: Store, backend: StoreUnderTest
) -> None:
    stored = meta(5, attributes={"who": "first"})
    assert (await store.commit(write(stored, None, [turn(1)]))).applied
    before = await backend.raw.items()
    # Live now, and one second before its expiry; with turns and without.
    for now_s in (NOW, LIVE - 1):
        for turns in ([turn(2)], []):
            out = await store.commit(write(meta(1), None, turns, now_s=now_s))
            assert out == CommitOutcome(applied=False, current=stored)
    assert await backend.raw.items() == before
    assert await store.get_meta(SID, consistent=True) == stored
    assert await newest_first(store) == [tid(1)]


@pytest.mark.parametrize("late", [0, 1], ids=["expires-at-now", "expired-before-now"])
async def test_expected_none_succeeds_over_expired_meta(store: Store, late: int) -> None:
    old = meta(7, expires_at=LIVE)
    assert (await store.commit(write(old, None))).applied
    new = meta(1, floor_turn_id=tid(1), last_turn_id=tid(2))
    # expires_at <= now counts as expired.
    out = await store.commit(write(new, None, [turn(2)], now_s=LIVE + late))
    assert out == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == new
    # And again without turns, over that incarnation once it expired in turn.
    newer = meta(1, floor_turn_id=tid(3))
    assert await store.commit(write(newer, None, now_s=LIVE + 100)) == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == newer


# --- retries and turns that already exist ------------------------------------------------


async def test_retry_of_landed_write_is_applied_and_writes_nothing(
    store: Store, backend: StoreUnderTest
) -> None:
    assert (await store.commit(write(meta(1), None))).applied
    summ = summary(1)
    landed = write(
        meta(2, last_turn_id=tid(2), summary=summ),
        1,
        [turn(1, content="", attributes={}), turn(2, attributes=TRICKY_ATTRIBUTES)],
        summ,
    )
    assert (await store.commit(landed)).applied
    after_landed = await backend.raw.items()
    assert sorted(after_landed) == [
        (pk(), "META"),
        (pk(), f"SUMMARY#{tid(1)}"),
        (pk(), f"TURN#{tid(1)}"),
        (pk(), f"TURN#{tid(2)}"),
    ]
    # The reply was "lost": the same write again (its META condition now fails, its turns
    # exist). Applied by the first attempt, and the store says which META it holds.
    retried = await store.commit(landed)
    assert retried == CommitOutcome(applied=True, current=landed.meta, already_applied=True)
    assert await backend.raw.items() == after_landed

    # A later write moves META on; a retry of `landed` must not drag it back.
    moved_on = meta(3, last_turn_id=tid(3))
    assert (await store.commit(write(moved_on, 2, [turn(3)]))).applied
    before = await backend.raw.items()
    retried = await store.commit(landed)
    assert retried == CommitOutcome(applied=True, current=moved_on, already_applied=True)
    assert await store.get_meta(SID, consistent=True) == moved_on
    assert await backend.raw.items() == before


async def test_retry_compares_records_not_bytes(store: Store) -> None:
    # A tuple encodes as a JSON list: the retried record is the same content.
    first = write(meta(1), None, [turn(1, attributes={"pair": (1, 2)})])
    assert (await store.commit(first)).applied
    retried = await store.commit(write(meta(1), None, [turn(1, attributes={"pair": [1, 2]})]))
    assert retried.applied and retried.already_applied


@pytest.mark.parametrize("expected", [None, 1], ids=["meta-refuses", "meta-agrees"])
async def test_partly_landed_turns_are_named_and_nothing_is_written(
    store: Store, backend: StoreUnderTest, expected: int | None
) -> None:
    first = meta(1, last_turn_id=tid(1))
    assert (await store.commit(write(first, None, [turn(1)]))).applied
    before = await backend.raw.items()
    # A WAL replay whose batch holds turn 1 (already written) and turn 2 (not yet). The
    # turn that landed is named, so that the replay writes only the rest.
    out = await store.commit(write(meta(2, last_turn_id=tid(2)), expected, [turn(1), turn(2)]))
    assert not out.applied and not out.already_applied
    assert out.existing_turn_ids == frozenset({tid(1)})
    if expected is None:
        assert out.current == first
    else:
        # The META condition held: a store may not have read META at all ("could not say").
        assert out.current in (None, first)
    assert await backend.raw.items() == before
    assert await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True) == [turn(1)]


async def test_turn_id_collision_raises_and_writes_nothing(
    store: Store, backend: StoreUnderTest
) -> None:
    first = meta(1, last_turn_id=tid(1))
    assert (await store.commit(write(first, None, [turn(1, content="original")]))).applied
    before = await backend.raw.items()
    clash = turn(1, content="SECRET-CONTENT")
    # The clashing turn first and last in the write.
    for turns in ([clash, turn(2)], [turn(2), clash]):
        with pytest.raises(StoreError, match=own_words("collision", backend)) as info:
            await store.commit(write(meta(2), 1, turns))
        assert not isinstance(info.value, StoreUnavailableError)
        assert info.value.permanent  # the write can never succeed: the WAL sets it aside
        assert info.value.session_id == SID
        message = str(info.value)
        assert "turn id" in message and "different content" in message
        assert "already exists" in message
        assert "SECRET" not in message  # no item contents in messages
        assert await backend.raw.items() == before
        assert await store.get_meta(SID, consistent=True) == first
        got = await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
        assert [t.content for t in got] == ["original"]
    # Nothing was left half-done: the next write goes through.
    assert (await store.commit(write(meta(2), 1, [turn(2)]))).applied


# --- query_turns -------------------------------------------------------------------------


async def test_query_turns_order_limit_and_before_bound(store: Store) -> None:
    turns = [turn(n, content=f"turn {n}") for n in range(1, 6)]
    # SUMMARY items on both sides of the turn ids: neither may show up as a turn.
    assert (await store.commit(write(meta(1), None, turns, summary(9)))).applied
    assert (await store.commit(write(meta(2), 1, [], summary(3)))).applied

    async def ids(before: str | None, limit: int) -> list[str]:
        got = await store.query_turns(SID, before_turn_id=before, limit=limit, consistent=True)
        return [t.turn_id for t in got]

    assert await ids(None, 100) == [tid(n) for n in (5, 4, 3, 2, 1)]  # no META, no SUMMARY
    assert await ids(None, 2) == [tid(5), tid(4)]
    assert await ids(tid(4), 2) == [tid(3), tid(2)]  # the bound itself is excluded
    assert await ids(tid(4), 1) == [tid(3)]
    assert await ids(tid(2), 10) == [tid(1)]
    assert await ids(tid(1), 10) == []
    assert await ids(tid(3)[:-1] + "0", 10) == [tid(2), tid(1)]  # a bound that is no item
    assert await ids(tid(99), 3) == [tid(5), tid(4), tid(3)]
    assert await ids("", 10) == []
    assert await ids(None, 0) == []
    assert await ids(None, -1) == []  # sqlite reads a negative LIMIT as "no limit"
    assert await store.query_turns("unknown", before_turn_id=None, limit=5, consistent=False) == []


async def test_query_turns_stays_in_its_session(store: Store) -> None:
    await store.commit(write(meta(1), None, [turn(1)]))
    other = write(meta(1, sid="sess-2"), None, [turn(2)])
    await store.commit(other)
    got = await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert got == [turn(1)]
    assert await store.get_meta("sess-2", consistent=True) == other.meta
    assert await newest_first(store, "sess-2") == [tid(2)]


async def test_query_turns_returns_large_turns_whole_past_one_megabyte(store: Store) -> None:
    # Five 300 KB turns: more than one DynamoDB Query page (1 MB), which the store must follow.
    turns = [turn(n, content=chr(0x41 + n) * 300_000) for n in range(1, 6)]
    assert (await store.commit(write(meta(1), None, turns[:3]))).applied
    assert (await store.commit(write(meta(2), 1, turns[3:]))).applied
    got = await store.query_turns(SID, before_turn_id=None, limit=5, consistent=True)
    assert [t.turn_id for t in got] == [tid(n) for n in (5, 4, 3, 2, 1)]
    got = await store.query_turns(SID, before_turn_id=tid(5), limit=4, consistent=True)
    assert got == list(reversed(turns[:4]))


# --- purge_session -----------------------------------------------------------------------


async def test_purge_respects_the_bound_and_keeps_meta(
    store: Store, backend: StoreUnderTest
) -> None:
    turns = [turn(n) for n in range(1, 31)]  # > 25: DynamoDB's BatchWriteItem takes two
    assert (await store.commit(write(meta(1), None, turns, summary(10)))).applied
    assert (await store.commit(write(meta(2), 1, [], summary(27)))).applied
    assert (await store.commit(write(meta(3, summary=summary(30)), 2, [], summary(30)))).applied
    other = meta(1, sid="other")
    assert (await store.commit(write(other, None, [turn(1)]))).applied
    others = {(pk("other"), "META"), (pk("other"), f"TURN#{tid(1)}")}

    # Items through the bound (inclusive) go; a newer incarnation's, above it, stay; META
    # (the tombstone, in real use) always stays.
    await store.purge_session(SID, through_turn_id=tid(27))
    assert set(await backend.raw.items()) == {
        (pk(), "META"),
        (pk(), f"SUMMARY#{tid(30)}"),
        *((pk(), f"TURN#{tid(n)}") for n in (28, 29, 30)),
        *others,
    }
    await store.purge_session(SID, through_turn_id=tid(30))
    assert set(await backend.raw.items()) == {(pk(), "META"), *others}
    assert await store.get_meta(SID, consistent=True) == meta(3, summary=summary(30))
    assert await store.get_meta("other", consistent=True) == other  # other sessions untouched


async def test_purge_of_absent_session_is_a_no_op(store: Store, backend: StoreUnderTest) -> None:
    await store.purge_session("nobody", through_turn_id=tid(9))
    assert await store.get_meta("nobody", consistent=True) is None
    assert await backend.raw.items() == {}


# --- errors ------------------------------------------------------------------------------


async def test_undecodable_items_are_a_store_error(store: Store, backend: StoreUnderTest) -> None:
    assert (await store.commit(write(meta(1), None, [turn(1)]))).applied
    await backend.raw.garble(SID, "META")
    for consistent in (True, False):
        with pytest.raises(StoreError, match=own_words("undecodable", backend)) as info:
            await store.get_meta(SID, consistent=consistent)
        assert not isinstance(info.value, StoreUnavailableError)
        assert info.value.session_id == SID
    await backend.raw.garble(SID, f"TURN#{tid(1)}")
    with pytest.raises(StoreError, match=own_words("undecodable", backend)) as info:
        await store.query_turns(SID, before_turn_id=None, limit=5, consistent=True)
    assert not isinstance(info.value, StoreUnavailableError)
    assert info.value.session_id == SID


async def test_unencodable_write_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="does not encode") as info:
        await store.commit(write(meta(1), None, [turn(1, attributes={"bad": object()})]))
    assert not isinstance(info.value, StoreUnavailableError)
    assert info.value.session_id == SID
    assert await store.get_meta(SID, consistent=True) is None


async def test_calls_need_an_open_store(backend: StoreUnderTest) -> None:
    not_open = own_words("not-open", backend) or "is not open"
    store = backend.new()
    calls = [
        lambda: store.get_meta(SID, consistent=True),
        lambda: store.query_turns(SID, before_turn_id=None, limit=1, consistent=True),
        lambda: store.commit(write(meta(1), None, [turn(1)])),
        lambda: store.commit(write(meta(1), None)),
        lambda: store.purge_session(SID, through_turn_id=tid(1)),
    ]
    for call in calls:
        with pytest.raises(StoreError, match=not_open):
            await call()
    await store.open()
    await store.open()  # idempotent
    assert await store.get_meta(SID, consistent=True) is None
    await store.aclose()
    await store.aclose()  # idempotent
    for call in calls:
        with pytest.raises(StoreError, match=not_open):
            await call()
