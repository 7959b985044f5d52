"""StoreWrapper alone, over a real in-memory SQLiteStore: every data call goes through
around(), nothing else changes, and a wrapper decides whether the inner call happens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest

from memsdk.config import Config, SQLiteStoreSpec
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.records import MetaRecord, SessionWrite, TurnRecord
from memsdk.store.sqlite import SQLiteStore
from memsdk.store.wrapper import StoreCall, StoreWrapper

T = TypeVar("T")

SID = "sess-w"
NOW = 1_700_000_000
LIVE = NOW + 3_600


def tid(n: int) -> str:
    return f"{1_700_000_000_000 + n:013d}0000abcdef01"


def turn(n: int) -> TurnRecord:
    return TurnRecord(
        turn_id=tid(n),
        role="user",
        content=f"secret content {n}",
        intent=None,
        attributes={},
        created_at_ms=1_700_000_000_000 + n,
        expires_at=LIVE,
    )


def meta(version: int, last: int) -> MetaRecord:
    return MetaRecord(
        session_id=SID,
        customer_id="cust",
        created_at_ms=1,
        updated_at_ms=2,
        turn_count=version,
        last_turn_id=tid(last),
        floor_turn_id="0",
        page_context={},
        attributes={},
        expires_at=LIVE,
        version=version,
    )


def first_write() -> SessionWrite:
    return SessionWrite(meta=meta(1, 2), expected_version=None, now_s=NOW, turns=[turn(1), turn(2)])


class Recording(StoreWrapper):
    """Records what around() saw: (operation, session, outcome) per call."""

    def __init__(self, inner: Any, *, refuse: bool = False) -> None:
        super().__init__(inner)
        self.seen: list[tuple[str, str, str]] = []
        self.refuse = refuse

    async def around(self, call: StoreCall[T]) -> T:
        if self.refuse:
            self.seen.append((call.operation, call.session_id, "refused"))
            raise StoreUnavailableError("refused (test)", session_id=call.session_id)
        try:
            result = await call.run()
        except StoreError as exc:
            self.seen.append((call.operation, call.session_id, type(exc).__name__))
            raise
        self.seen.append((call.operation, call.session_id, "ok"))
        return result


@pytest.fixture
async def sqlite() -> AsyncIterator[SQLiteStore]:
    spec = Config(store="sqlite:///:memory:").store_spec
    assert isinstance(spec, SQLiteStoreSpec)
    store = SQLiteStore(spec.path)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def test_every_data_call_goes_through_around_and_returns_the_inner_answer(
    sqlite: SQLiteStore,
) -> None:
    wrapped = Recording(sqlite)
    assert wrapped.description == sqlite.description
    outcome = await wrapped.commit(first_write())
    assert outcome.applied
    assert await wrapped.get_meta(SID, consistent=True) == meta(1, 2)
    turns = await wrapped.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert [t.turn_id for t in turns] == [tid(2), tid(1)]
    await wrapped.purge_session(SID, through_turn_id=tid(1))
    remaining = await sqlite.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert [t.turn_id for t in remaining] == [tid(2)]
    assert wrapped.seen == [
        ("commit", SID, "ok"),
        ("get_meta", SID, "ok"),
        ("query_turns", SID, "ok"),
        ("purge_session", SID, "ok"),
    ]


async def test_the_default_around_changes_nothing(sqlite: SQLiteStore) -> None:
    plain = StoreWrapper(sqlite)
    assert (await plain.commit(first_write())).applied
    again = await plain.commit(first_write())  # a replay: already applied, not applied twice
    direct = await sqlite.commit(first_write())
    assert again == direct and again.already_applied
    assert await plain.get_meta(SID, consistent=False) == await sqlite.get_meta(
        SID, consistent=False
    )
    assert await plain.query_turns(
        SID, before_turn_id=tid(2), limit=1, consistent=False
    ) == await sqlite.query_turns(SID, before_turn_id=tid(2), limit=1, consistent=False)
    newest = await plain.query_turns(SID, before_turn_id=None, limit=1, consistent=False)
    assert [t.turn_id for t in newest] == [tid(2)]


async def test_a_refusing_wrapper_never_reaches_the_store(sqlite: SQLiteStore) -> None:
    wrapped = Recording(sqlite, refuse=True)
    with pytest.raises(StoreUnavailableError):
        await wrapped.commit(first_write())
    assert await sqlite.get_meta(SID, consistent=True) is None
    assert wrapped.seen == [("commit", SID, "refused")]


async def test_around_sees_the_inner_error_and_lifecycle_is_forwarded() -> None:
    store = SQLiteStore(":memory:")
    wrapped = Recording(store)
    with pytest.raises(StoreError, match="not open"):
        await wrapped.get_meta(SID, consistent=True)
    await wrapped.open()
    await wrapped.open()  # idempotent, as the inner store's
    assert await wrapped.get_meta(SID, consistent=True) is None
    await wrapped.aclose()
    with pytest.raises(StoreError, match="not open"):
        await store.get_meta(SID, consistent=True)
    assert wrapped.seen == [("get_meta", SID, "StoreError"), ("get_meta", SID, "ok")]


async def test_nothing_runs_until_the_call_is_awaited(sqlite: SQLiteStore) -> None:
    wrapped = Recording(sqlite)
    pending = wrapped.commit(first_write())
    assert wrapped.seen == [] and await sqlite.get_meta(SID, consistent=True) is None
    assert (await pending).applied
    assert wrapped.seen == [("commit", SID, "ok")]


async def test_nested_wrappers_each_see_the_call_outer_first(sqlite: SQLiteStore) -> None:
    order: list[str] = []

    class Named(StoreWrapper):
        def __init__(self, inner: Any, name: str) -> None:
            super().__init__(inner)
            self.name = name

        async def around(self, call: StoreCall[T]) -> T:
            order.append(f"{self.name}>{call.operation}")
            result = await call.run()
            order.append(f"{self.name}<{call.operation}")
            return result

    outer = Named(Named(sqlite, "inner"), "outer")
    assert await outer.get_meta(SID, consistent=True) is None
    assert order == ["outer>get_meta", "inner>get_meta", "inner<get_meta", "outer<get_meta"]


async def test_a_subclass_may_still_override_one_method(sqlite: SQLiteStore) -> None:
    """The test kit's users subclass FaultyStore/CountingStore this way."""

    class Held(Recording):
        async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
            self.seen.append(("override", session_id, "before"))
            return await super().get_meta(session_id, consistent=consistent)

    wrapped = Held(sqlite)
    await wrapped.commit(first_write())
    assert await wrapped.get_meta(SID, consistent=True) == meta(1, 2)
    assert wrapped.seen == [
        ("commit", SID, "ok"),
        ("override", SID, "before"),
        ("get_meta", SID, "ok"),
    ]


async def test_call_starts_a_new_inner_call_each_time(sqlite: SQLiteStore) -> None:
    """A wrapper may send a call again (a retry): the second commit is the store's replay."""
    outcomes: list[Any] = []

    class Twice(StoreWrapper):
        async def around(self, call: StoreCall[T]) -> T:
            outcomes.append(await call.run())
            return await call.run()

    second = await Twice(sqlite).commit(first_write())
    assert outcomes[0].applied and not outcomes[0].already_applied
    assert second.applied and second.already_applied


async def test_a_call_shows_no_arguments_when_printed(sqlite: SQLiteStore) -> None:
    printed: list[str] = []

    class Printing(StoreWrapper):
        async def around(self, call: StoreCall[T]) -> T:
            printed.append(repr(call))
            return await call.run()

    wrapped = Printing(sqlite)
    await wrapped.commit(first_write())
    await wrapped.get_meta(SID, consistent=True)
    await wrapped.query_turns(SID, before_turn_id=None, limit=5, consistent=True)
    await wrapped.purge_session(SID, through_turn_id=tid(1))
    assert printed == [
        f"StoreCall({operation!r}, {SID!r})"
        for operation in ("commit", "get_meta", "query_turns", "purge_session")
    ]
    assert not any("secret" in line for line in printed)
