"""SQLiteStore on its own: files, schema, the worker thread, locks, and where it answers
more precisely than the Store protocol asks. What every store must do is checked on this
one too, in tests/contract/test_store_contract.py."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import memsdk.store.sqlite as sqlite_module
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.records import CommitOutcome, MetaRecord
from memsdk.store.sqlite import SQLiteStore
from tests.contract.conftest import NOW, SID, meta, tid, turn, write


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


async def test_get_meta_returns_expired_meta(store: SQLiteStore) -> None:
    # The protocol's "expired or not", against the wall clock: only a file can keep such an
    # item (DynamoDB Local deletes items whose expires_at is past within seconds).
    expired = write(meta(1, expires_at=NOW - 10), None)
    assert (await store.commit(expired)).applied
    assert await store.get_meta(SID, consistent=False) == meta(1, expires_at=NOW - 10)


async def test_partly_landed_turns_report_the_meta_read_in_the_transaction(
    store: SQLiteStore,
) -> None:
    await store.commit(write(meta(1), None, [turn(1)]))
    out = await store.commit(write(meta(2), 1, [turn(1), turn(2)]))
    # Where the protocol lets a store say "current unknown" (its META condition held), this
    # one read META in the same transaction and says it.
    assert out == CommitOutcome(
        applied=False, current=meta(1), existing_turn_ids=frozenset({turn(1).turn_id})
    )
    assert await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True) == [turn(1)]


async def test_write_without_turns_is_never_taken_for_a_retry(store: SQLiteStore) -> None:
    # DynamoDBStore answers the same repeat with applied=True (its stored META is exactly
    # the write's): the protocol does not decide between the two yet.
    meta_only = write(meta(1), None)
    assert (await store.commit(meta_only)).applied
    assert await store.commit(meta_only) == CommitOutcome(applied=False, current=meta(1))


async def test_durability_settings_and_schema_version(store: SQLiteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (sqlite_module.SCHEMA_VERSION,)
        assert sqlite_module.SCHEMA_VERSION == 1
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()
    assert "WITHOUT ROWID" in sql.upper()


async def test_new_files_are_private(store: SQLiteStore, db_path: Path) -> None:
    await store.commit(write(meta(1), None, [turn(1)]))
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
        assert (await s.commit(write(meta(1), None, [turn(1)]))).applied
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
        pending = asyncio.create_task(store.commit(write(meta(1), None, [turn(1)])))
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
                await s.commit(write(meta(1), None, [turn(1)]))
            with pytest.raises(StoreUnavailableError):
                await s.purge_session(SID, through_turn_id=tid(1))
            locker.execute("ROLLBACK")
        assert info.value.maybe_applied is False
        assert info.value.retryable
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        # Nothing half-applied, and the store recovers once the lock is gone.
        assert await s.get_meta(SID, consistent=True) is None
        assert (await s.commit(write(meta(1), None, [turn(1)]))).applied
    finally:
        await s.aclose()


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
