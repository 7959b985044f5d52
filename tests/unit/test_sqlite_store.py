"""SQLiteStore in isolation: commit semantics, queries, purge, durability, errors, threading."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import memsdk.store.sqlite as sqlite_module
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.store.base import (
    CommitOutcome,
    MetaRecord,
    SessionWrite,
    SummaryRecord,
    TurnRecord,
)
from memsdk.store.sqlite import SQLiteStore

SID = "sess-1"
NOW = 1_700_000_000
LIVE = NOW + 3_600


def tid(n: int) -> str:
    """A well-formed turn id; string order follows n."""
    return f"{1_700_000_000_000 + n:013d}0000abcdef01"


def turn(n: int, content: str = "hello", **extra: Any) -> TurnRecord:
    return TurnRecord(
        turn_id=tid(n),
        role="user",
        content=content,
        intent=None,
        attributes={"n": n, **extra},
        created_at_ms=1_700_000_000_000 + n,
        expires_at=LIVE + 86_400,
    )


def summary(n: int) -> SummaryRecord:
    return SummaryRecord(
        text=f"summary through {n}", through_turn_id=tid(n), created_at_ms=1, expires_at=LIVE
    )


def meta(version: int, *, expires_at: int = LIVE, last: int | None = None) -> MetaRecord:
    return MetaRecord(
        session_id=SID,
        customer_id="cust",
        created_at_ms=1,
        updated_at_ms=2,
        turn_count=version,
        last_turn_id=None if last is None else tid(last),
        floor_turn_id="0",
        page_context={"page": "/x"},
        attributes={"v": version},
        expires_at=expires_at,
        version=version,
    )


def write(
    version: int,
    expected: int | None,
    turns: list[TurnRecord],
    *,
    now_s: int = NOW,
    summ: SummaryRecord | None = None,
) -> SessionWrite:
    return SessionWrite(
        meta=meta(version),
        expected_version=expected,
        now_s=now_s,
        turns=turns,
        summary=summ,
    )


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, plain connection to peek at (or lock) the file behind the store's back."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def keys(path: Path) -> list[tuple[str, str]]:
    with raw(path) as conn:
        return conn.execute("SELECT pk, sk FROM items ORDER BY pk, sk").fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "memsdk.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(db_path))
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


async def test_new_session_commit_is_readable(store: SQLiteStore, db_path: Path) -> None:
    out = await store.commit(write(1, None, [turn(1), turn(2)], summ=summary(2)))
    assert out == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == meta(1)
    assert await store.query_turns(SID, before_turn_id=None, limit=10, consistent=False) == [
        turn(2),
        turn(1),
    ]
    # The DynamoDB key layout, so that operators' tools read both stores alike.
    assert keys(db_path) == [
        (f"SESSION#{SID}", "META"),
        (f"SESSION#{SID}", f"SUMMARY#{tid(2)}"),
        (f"SESSION#{SID}", f"TURN#{tid(1)}"),
        (f"SESSION#{SID}", f"TURN#{tid(2)}"),
    ]


async def test_rows_carry_their_own_expiry(store: SQLiteStore, db_path: Path) -> None:
    await store.commit(write(1, None, [turn(1)], summ=summary(1)))
    with raw(db_path) as conn:
        rows = dict(conn.execute("SELECT sk, expires_at FROM items").fetchall())
    assert rows == {
        "META": LIVE,
        f"TURN#{tid(1)}": LIVE + 86_400,
        f"SUMMARY#{tid(1)}": LIVE,
    }


async def test_get_meta_absent_is_none(store: SQLiteStore) -> None:
    assert await store.get_meta("nobody", consistent=False) is None


async def test_get_meta_returns_expired_meta(store: SQLiteStore) -> None:
    expired = SessionWrite(meta=meta(1, expires_at=NOW - 10), expected_version=None, now_s=NOW)
    await store.commit(expired)
    assert await store.get_meta(SID, consistent=False) == meta(1, expires_at=NOW - 10)


async def test_expected_none_fails_while_meta_is_live(store: SQLiteStore) -> None:
    await store.commit(write(1, None, [turn(1)]))
    out = await store.commit(write(1, None, [turn(2)]))
    assert out == CommitOutcome(applied=False, current=meta(1))
    assert await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True) == [turn(1)]


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1])
async def test_expected_none_succeeds_over_expired_meta(
    store: SQLiteStore, expires_at: int
) -> None:
    old = SessionWrite(meta=meta(7, expires_at=expires_at), expected_version=None, now_s=NOW - 99)
    assert (await store.commit(old)).applied
    out = await store.commit(write(1, None, [turn(1)]))
    assert out == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == meta(1)


async def test_expected_version_must_match(store: SQLiteStore) -> None:
    await store.commit(write(1, None, [turn(1)]))
    stale = await store.commit(write(3, 2, [turn(2)]))
    assert stale == CommitOutcome(applied=False, current=meta(1))
    assert await store.get_meta(SID, consistent=True) == meta(1)

    fresh = await store.commit(write(2, 1, [turn(2)]))
    assert fresh == CommitOutcome(applied=True)
    assert await store.get_meta(SID, consistent=True) == meta(2)
    assert len(await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)) == 2


async def test_expected_version_on_absent_meta_fails(store: SQLiteStore, db_path: Path) -> None:
    out = await store.commit(write(2, 1, [turn(1)]))
    assert out == CommitOutcome(applied=False, current=None)
    assert keys(db_path) == []


async def test_expected_version_is_not_fooled_by_expiry(store: SQLiteStore) -> None:
    # An expired META still has a version: a writer that based its write on it may commit.
    await store.commit(
        SessionWrite(meta=meta(1, expires_at=NOW - 5), expected_version=None, now_s=0)
    )
    assert (await store.commit(write(2, 1, [turn(1)]))).applied


async def test_retry_of_landed_write_is_applied_and_writes_nothing(
    store: SQLiteStore, db_path: Path
) -> None:
    first = write(1, None, [turn(1), turn(2)], summ=summary(2))
    assert (await store.commit(first)).applied
    # A later write moves META on; the lost-reply retry of `first` must not drag it back.
    assert (await store.commit(write(2, 1, [turn(3)]))).applied
    before = keys(db_path)

    # Applied by the earlier attempt; the store says so, and which META it holds now.
    assert await store.commit(first) == CommitOutcome(
        applied=True, current=meta(2), already_applied=True
    )
    assert await store.get_meta(SID, consistent=True) == meta(2)
    assert keys(db_path) == before


async def test_retry_compares_records_not_bytes(store: SQLiteStore) -> None:
    # A tuple encodes as a JSON list: the retried record is the same content.
    assert (await store.commit(write(1, None, [turn(1, pair=(1, 2))]))).applied
    retried = await store.commit(write(1, None, [turn(1, pair=[1, 2])]))
    assert retried.applied and retried.already_applied


async def test_partially_landed_turns_fail_like_an_expectation(store: SQLiteStore) -> None:
    await store.commit(write(1, None, [turn(1)]))
    out = await store.commit(write(2, 1, [turn(1), turn(2)]))
    # The turn that landed is named, so that a WAL replay writes only the rest.
    assert out == CommitOutcome(
        applied=False, current=meta(1), existing_turn_ids=frozenset({turn(1).turn_id})
    )
    assert await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True) == [turn(1)]


async def test_write_without_turns_is_never_taken_for_a_retry(store: SQLiteStore) -> None:
    meta_only = write(1, None, [])
    assert (await store.commit(meta_only)).applied
    assert await store.commit(meta_only) == CommitOutcome(applied=False, current=meta(1))


async def test_turn_id_collision_raises_and_rolls_back(store: SQLiteStore, db_path: Path) -> None:
    await store.commit(write(1, None, [turn(1)]))
    before = keys(db_path)
    with pytest.raises(StoreError, match="already exists with different content") as info:
        await store.commit(write(2, 1, [turn(2), turn(1, content="other")]))
    assert not isinstance(info.value, StoreUnavailableError)
    assert info.value.session_id == SID
    assert keys(db_path) == before
    # The transaction was rolled back: the connection is usable for the next write.
    assert (await store.commit(write(2, 1, [turn(2)]))).applied


async def test_query_turns_order_limit_and_before_bound(store: SQLiteStore) -> None:
    await store.commit(write(1, None, [turn(n) for n in range(1, 6)], summ=summary(5)))

    async def ids(before: int | None, limit: int) -> list[str]:
        before_id = None if before is None else tid(before)
        got = await store.query_turns(SID, before_turn_id=before_id, limit=limit, consistent=True)
        return [t.turn_id for t in got]

    assert await ids(None, 2) == [tid(5), tid(4)]
    assert await ids(4, 2) == [tid(3), tid(2)]
    assert await ids(2, 10) == [tid(1)]
    assert await ids(1, 10) == []
    assert await ids(None, 0) == []
    assert await ids(None, -1) == []  # sqlite reads a negative LIMIT as "no limit"
    # A limit beyond the turns never spills into the META or SUMMARY items.
    assert await ids(None, 100) == [tid(n) for n in range(5, 0, -1)]


async def test_query_turns_stays_in_its_session(store: SQLiteStore) -> None:
    await store.commit(write(1, None, [turn(1)]))
    other = SessionWrite(
        meta=MetaRecord(**{**_fields(meta(1)), "session_id": "sess-2"}),
        expected_version=None,
        now_s=NOW,
        turns=[turn(2)],
    )
    await store.commit(other)
    got = await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert got == [turn(1)]
    assert await store.get_meta("sess-2", consistent=True) == other.meta


def _fields(record: MetaRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__struct_fields__}


async def test_purge_respects_the_bound_and_keeps_meta(store: SQLiteStore, db_path: Path) -> None:
    await store.commit(write(1, None, [turn(1), turn(2)], summ=summary(2)))
    await store.commit(write(2, 1, [turn(3)], summ=summary(3)))
    pk = f"SESSION#{SID}"

    await store.purge_session(SID, through_turn_id=tid(2))
    # Items through the bound go; a newer incarnation's items above it stay; META (the
    # tombstone, in real use) always stays.
    assert keys(db_path) == [(pk, "META"), (pk, f"SUMMARY#{tid(3)}"), (pk, f"TURN#{tid(3)}")]

    await store.purge_session(SID, through_turn_id=tid(3))
    assert keys(db_path) == [(pk, "META")]


async def test_purge_of_absent_session_is_a_no_op(store: SQLiteStore) -> None:
    await store.purge_session("nobody", through_turn_id=tid(9))
    assert await store.get_meta("nobody", consistent=True) is None


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    first = SQLiteStore(str(db_path))
    await first.open()
    await first.commit(write(1, None, [turn(1)]))
    await first.aclose()

    second = SQLiteStore(str(db_path))
    await second.open()
    try:
        assert await second.get_meta(SID, consistent=True) == meta(1)
        got = await second.query_turns(SID, before_turn_id=None, limit=5, consistent=True)
        assert got == [turn(1)]
    finally:
        await second.aclose()


async def test_durability_settings_and_schema_version(store: SQLiteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (sqlite_module.SCHEMA_VERSION,)
        assert sqlite_module.SCHEMA_VERSION == 1
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()
    assert "WITHOUT ROWID" in sql.upper()


async def test_new_files_are_private(store: SQLiteStore, db_path: Path) -> None:
    await store.commit(write(1, None, [turn(1)]))
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    for path in files:  # the database and its -wal / -shm companions
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


async def test_relative_path_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = SQLiteStore("rel.db")
    await s.open()
    await s.aclose()
    assert (tmp_path / "rel.db").is_file()


async def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    s = SQLiteStore(str(tmp_path / "absent" / "m.db"))
    with pytest.raises(StoreError, match="does not exist") as info:
        await s.open()
    assert not isinstance(info.value, StoreUnavailableError)
    assert not (tmp_path / "absent").exists()
    with pytest.raises(StoreError, match="store is not open"):
        await s.get_meta(SID, consistent=True)


async def test_garbage_file_is_a_store_error(db_path: Path) -> None:
    _write_garbage(db_path)
    s = SQLiteStore(str(db_path))
    with pytest.raises(StoreError) as info:
        await s.open()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_newer_schema_version_is_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("PRAGMA user_version = 2")
    s = SQLiteStore(str(db_path))
    with pytest.raises(StoreError, match="upgrade memsdk"):
        await s.open()


async def test_corrupt_item_is_a_store_error(store: SQLiteStore, db_path: Path) -> None:
    await store.commit(write(1, None, [turn(1)]))
    with raw(db_path) as conn:
        conn.execute("UPDATE items SET body = x'7b7d' WHERE sk = 'META'")  # b"{}"
    with pytest.raises(StoreError, match="not a valid memsdk record") as info:
        await store.get_meta(SID, consistent=True)
    assert info.value.session_id == SID


async def test_use_before_open_and_after_close(db_path: Path) -> None:
    s = SQLiteStore(str(db_path))
    calls = [
        lambda: s.get_meta(SID, consistent=True),
        lambda: s.query_turns(SID, before_turn_id=None, limit=1, consistent=True),
        lambda: s.commit(write(1, None, [turn(1)])),
        lambda: s.purge_session(SID, through_turn_id=tid(1)),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="store is not open"):
            await call()
    await s.open()
    await s.aclose()
    await s.aclose()  # idempotent
    for call in calls:
        with pytest.raises(StoreError, match="store is not open"):
            await call()


async def test_open_is_idempotent(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[str] = []
    real_connect = sqlite_module._connect

    def counting_connect(path: str) -> sqlite3.Connection:
        connects.append(path)
        return real_connect(path)

    monkeypatch.setattr(sqlite_module, "_connect", counting_connect)
    s = SQLiteStore(str(db_path))
    await asyncio.gather(s.open(), s.open())
    await s.open()
    await s.aclose()
    assert connects == [str(db_path)]
    await s.open()  # reopening after close works
    await s.aclose()
    assert len(connects) == 2


async def test_memory_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = SQLiteStore(":memory:")
    await s.open()
    try:
        assert (await s.commit(write(1, None, [turn(1)]))).applied
        assert await s.get_meta(SID, consistent=True) == meta(1)
    finally:
        await s.aclose()
    assert _listing(tmp_path) == []


async def test_description_hides_the_path(db_path: Path) -> None:
    s = SQLiteStore(str(db_path))
    assert s.description == "sqlite"


async def test_sqlite_runs_on_the_worker_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[threading.Thread] = []
    pragmas: list[tuple[int, int]] = []
    real = sqlite_module._get_meta_sync

    def spy(conn: sqlite3.Connection, *, session_id: str) -> MetaRecord | None:
        seen.append(threading.current_thread())
        # Per-connection settings are only visible on the store's own connection.
        (synchronous,) = conn.execute("PRAGMA synchronous").fetchone()
        (busy_timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
        pragmas.append((synchronous, busy_timeout))
        time.sleep(0.01)  # overlap the calls, so that a pool would spread them over threads
        return real(conn, session_id=session_id)

    monkeypatch.setattr(sqlite_module, "_get_meta_sync", spy)
    await asyncio.gather(*(store.get_meta(SID, consistent=True) for _ in range(4)))
    assert len(seen) == 4
    assert len(set(seen)) == 1  # one dedicated thread, not a pool
    assert seen[0] is not threading.current_thread()
    assert seen[0].name.startswith("memsdk-sqlite")
    assert pragmas[0] == (2, 5000)  # synchronous=FULL


async def test_loop_runs_while_a_commit_waits_for_the_lock(
    store: SQLiteStore, db_path: Path
) -> None:
    with raw(db_path) as locker:
        locker.execute("BEGIN IMMEDIATE")
        pending = asyncio.create_task(store.commit(write(1, None, [turn(1)])))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(10):
            await asyncio.sleep(0.01)
        # The loop kept turning while the commit waited on the lock (busy_timeout is 5 s).
        assert loop.time() - started < 2.0
        assert not pending.done()
        locker.execute("COMMIT")
        assert await pending == CommitOutcome(applied=True)


async def test_busy_database_is_unavailable_not_applied(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_MS", 50)
    s = SQLiteStore(str(db_path))
    await s.open()
    try:
        with raw(db_path) as locker:
            locker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailableError) as info:
                await s.commit(write(1, None, [turn(1)]))
            with pytest.raises(StoreUnavailableError):
                await s.purge_session(SID, through_turn_id=tid(1))
            locker.execute("ROLLBACK")
        assert info.value.maybe_applied is False
        assert info.value.retryable
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        # Nothing half-applied, and the store recovers once the lock is gone.
        assert await s.get_meta(SID, consistent=True) is None
        assert (await s.commit(write(1, None, [turn(1)]))).applied
    finally:
        await s.aclose()


async def test_unencodable_write_is_a_store_error(store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match="does not encode") as info:
        await store.commit(write(1, None, [turn(1, bad=object())]))
    assert not isinstance(info.value, StoreUnavailableError)
    assert await store.get_meta(SID, consistent=True) is None


async def test_cancelled_open_leaks_no_connection(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[sqlite3.Connection] = []
    connected = threading.Event()
    real_connect = sqlite_module._connect

    def slow_connect(path: str) -> sqlite3.Connection:
        time.sleep(0.1)
        conn = real_connect(path)
        opened.append(conn)
        connected.set()
        return conn

    monkeypatch.setattr(sqlite_module, "_connect", slow_connect)
    s = SQLiteStore(str(db_path))
    task = asyncio.create_task(s.open())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(connected.wait, 5.0)
    await asyncio.sleep(0.1)  # the cleanup runs on the worker right after the connect
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")
    with pytest.raises(StoreError, match="store is not open"):
        await s.get_meta(SID, consistent=True)
