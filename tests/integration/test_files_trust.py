"""Files memsdk trusts, on the real tier (issue 14, findings 6 and 7).

- wal_dir, quarantine/ and rejected/: refused unless a real directory (not a symbolic link)
  owned by this process's user that no other user can write; created 0700 when absent.
- LOCK, segments, quarantine copies and rejected.jsonl: opened without following a
  symbolic link, so a planted link neither injects records nor clobbers its target.
- the SQLite database and its -wal/-shm companions: refused when a symbolic link, owned by
  another user or writable by group/others; a warning (no path) when others can read them.
- hostile bytes in a stored SQLite body (deep nesting, random bytes, wrong types) raise
  StoreError from load_context/append, never another exception.
- the LOCK's contents reach a ConfigError only as a decimal pid.

The tests run as root on CI: "another user" is a chown to an unused uid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import ConfigError, MemsdkError, StoreError
from memsdk.records import MetaRecord, SessionWrite, TurnRecord
from memsdk.store.sqlite import SQLiteStore
from memsdk.wal.log import WalOptions, WriteAheadLog
from memsdk.wal.rejected import write_rejected

OTHER_UID = 12345  # a user no test process runs as
OPTS = WalOptions(segment_bytes=1 << 20, max_bytes=1 << 24)
SID = "sess-trust"
CUSTOMER = "cust-1"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)"
)


async def open_log(wal_dir: Path) -> WriteAheadLog:
    log, _ = await WriteAheadLog.open(wal_dir, OPTS)
    return log


async def write_log(wal_dir: Path, payloads: list[bytes]) -> None:
    log = await open_log(wal_dir)
    try:
        for payload in payloads:
            await log.append(payload)
    finally:
        await log.close()


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


def victim(tmp_path: Path) -> Path:
    """A file outside wal_dir that a planted link points at; it must never change."""
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    os.chmod(target, 0o644)
    return target


def assert_untouched(target: Path) -> None:
    assert target.read_bytes() == b"precious"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def assert_clean_message(exc: BaseException, tmp_path: Path) -> None:
    text = str(exc)
    assert str(tmp_path) not in text  # no machine path
    assert all(ch.isprintable() for ch in text), text


# ------------------------------------------------------------------ wal_dir itself


@needs_root
async def test_wal_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    os.chown(wal_dir, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match="owned by another user") as info:
        await open_log(wal_dir)
    assert_clean_message(info.value, tmp_path)
    assert list(wal_dir.iterdir()) == []  # nothing created, no LOCK taken


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
async def test_wal_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    os.chmod(wal_dir, mode)
    with pytest.raises(ConfigError, match="writable by group or others"):
        await open_log(wal_dir)
    assert stat.S_IMODE(wal_dir.stat().st_mode) == mode  # left for the operator to inspect
    assert list(wal_dir.iterdir()) == []


async def test_wal_dir_readable_by_others_is_made_private(tmp_path: Path) -> None:
    # Nobody else could write into it: its files are this user's, so tightening is safe.
    wal_dir = private_dir(tmp_path / "wal")
    os.chmod(wal_dir, 0o755)
    log = await open_log(wal_dir)
    await log.close()
    assert stat.S_IMODE(wal_dir.stat().st_mode) == 0o700


async def test_wal_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real")
    link = tmp_path / "wal"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link") as info:
        await open_log(link)
    assert_clean_message(info.value, tmp_path)
    assert list(real.iterdir()) == []


async def test_wal_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a directory"):
        await open_log(path)


async def test_absent_wal_dir_is_created_private(tmp_path: Path) -> None:
    wal_dir = tmp_path / "new" / "wal"
    log = await open_log(wal_dir)
    await log.close()
    for path in (wal_dir, wal_dir / "quarantine"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


# ------------------------------------------------------------------ subdirectories


@needs_root
async def test_quarantine_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    quarantine = private_dir(wal_dir / "quarantine")
    os.chown(quarantine, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match="quarantine"):
        await open_log(wal_dir)


async def test_quarantine_symlink_is_refused(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    elsewhere = private_dir(tmp_path / "elsewhere")
    (wal_dir / "quarantine").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=r"quarantine.*symbolic link"):
        await open_log(wal_dir)


@needs_root
def test_rejected_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    rejected = private_dir(wal_dir / "rejected")
    os.chown(rejected, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=r"rejected.*owned by another user"):
        write_rejected(str(wal_dir), [b'{"reason":"x"}'])
    assert list(rejected.iterdir()) == []


def test_rejected_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    rejected = private_dir(wal_dir / "rejected")
    os.chmod(rejected, 0o777)
    with pytest.raises(ConfigError, match=r"rejected.*writable by group or others"):
        write_rejected(str(wal_dir), [b'{"reason":"x"}'])


def test_rejected_folder_symlink_is_refused(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    elsewhere = private_dir(tmp_path / "elsewhere")
    (wal_dir / "rejected").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=r"rejected.*symbolic link"):
        write_rejected(str(wal_dir), [b'{"reason":"x"}'])
    assert list(elsewhere.iterdir()) == []


def test_rejected_file_symlink_is_not_followed(tmp_path: Path) -> None:
    target = victim(tmp_path)
    wal_dir = private_dir(tmp_path / "wal")
    rejected = private_dir(wal_dir / "rejected")
    (rejected / "rejected.jsonl").symlink_to(target)
    with pytest.raises(ConfigError, match=r"rejected\.jsonl.*symbolic link") as info:
        write_rejected(str(wal_dir), [b'{"reason":"x"}'])
    assert_clean_message(info.value, tmp_path)
    assert_untouched(target)


def test_rejected_file_is_written_private(tmp_path: Path) -> None:
    wal_dir = private_dir(tmp_path / "wal")
    write_rejected(str(wal_dir), [b'{"reason":"x"}'])
    assert stat.S_IMODE((wal_dir / "rejected").stat().st_mode) == 0o700
    assert stat.S_IMODE((wal_dir / "rejected" / "rejected.jsonl").stat().st_mode) == 0o600
    assert (wal_dir / "rejected" / "rejected.jsonl").read_bytes() == b'{"reason":"x"}\n'


# ------------------------------------------------------------------ LOCK and segments


async def test_lock_symlink_does_not_clobber_its_target(tmp_path: Path) -> None:
    target = victim(tmp_path)
    wal_dir = private_dir(tmp_path / "wal")
    (wal_dir / "LOCK").symlink_to(target)
    with pytest.raises(ConfigError, match=r"LOCK.*symbolic link") as info:
        await open_log(wal_dir)
    assert_clean_message(info.value, tmp_path)
    assert_untouched(target)


async def test_segment_symlink_injects_nothing(tmp_path: Path) -> None:
    # A valid segment written elsewhere (say, by another user), linked into wal_dir: its
    # records must not be replayed as this log's own.
    foreign = tmp_path / "foreign"
    await write_log(foreign, [b'{"customer_id": "someone-else"}'])
    (segment,) = sorted(foreign.glob("wal-*.seg"))
    before = segment.read_bytes()
    wal_dir = private_dir(tmp_path / "wal")
    (wal_dir / segment.name).symlink_to(segment)
    with pytest.raises(ConfigError, match=r"segment.*symbolic link") as info:
        await open_log(wal_dir)
    assert_clean_message(info.value, tmp_path)
    assert segment.read_bytes() == before  # not truncated, quarantined or deleted
    assert (wal_dir / segment.name).is_symlink()


async def test_a_planted_quarantine_temp_link_is_not_followed(tmp_path: Path) -> None:
    target = victim(tmp_path)
    wal_dir = tmp_path / "wal"
    await write_log(wal_dir, [b"alpha", b"bravo", b"charlie"])
    (segment,) = sorted(wal_dir.glob("wal-*.seg"))
    data = bytearray(segment.read_bytes())
    data[20 + 25 + 5 + 20] ^= 1  # a bit of the middle record: corruption, not a torn tail
    segment.write_bytes(bytes(data))
    (wal_dir / "quarantine" / f"{segment.name}.tmp").symlink_to(target)
    log, report = await WriteAheadLog.open(wal_dir, OPTS)
    await log.close()
    assert [q.name for q in report.quarantined] == [segment.name]
    assert_untouched(target)
    copy = wal_dir / "quarantine" / segment.name
    assert not copy.is_symlink() and copy.read_bytes() == bytes(data)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


async def test_a_hostile_lock_content_is_not_echoed(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    log = await open_log(wal_dir)
    try:
        # Whoever holds the lock controls what LOCK says: only a decimal pid is printed.
        fd = os.open(wal_dir / "LOCK", os.O_WRONLY)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"\x1b]0;owned\x07 please run rm -rf\n", 0)
        finally:
            os.close(fd)
        with pytest.raises(ConfigError, match=r"in use by another process \(pid unknown\)") as info:
            await open_log(wal_dir)
        assert "owned" not in str(info.value)
        assert_clean_message(info.value, tmp_path)
    finally:
        await log.close()


# ------------------------------------------------------------------ the SQLite file


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


async def open_store(path: Path) -> SQLiteStore:
    store = SQLiteStore(str(path))
    await store.open()
    return store


async def make_db(path: Path) -> None:
    store = await open_store(path)
    await store.aclose()


def plant(path: str, *, link_to: Path | None = None) -> str:
    """Replace `path` with an empty 0600 file, or a symbolic link to `link_to`."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if link_to is None:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    else:
        os.symlink(link_to, path)
    return path


async def test_database_symlink_is_refused(tmp_path: Path) -> None:
    target = victim(tmp_path)
    link = tmp_path / "memsdk.db"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link") as info:
        await open_store(link)
    assert_clean_message(info.value, tmp_path)
    assert_untouched(target)


async def test_dangling_database_symlink_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "memsdk.db"
    link.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(StoreError, match="symbolic link"):
        await open_store(link)
    assert not (tmp_path / "elsewhere.db").exists()


@needs_root
async def test_database_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memsdk.db"
    await make_db(path)
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(StoreError, match="owned by another user") as info:
        await open_store(path)
    assert_clean_message(info.value, tmp_path)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
async def test_database_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "memsdk.db"
    await make_db(path)
    os.chmod(path, mode)
    with pytest.raises(StoreError, match="writable by group or others"):
        await open_store(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


async def test_database_readable_by_others_warns_without_a_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memsdk.db"
    await make_db(path)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="memsdk"):
        store = await open_store(path)
        await store.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("readable by group or others" in w for w in warnings), warnings
    assert not any(str(tmp_path) in w or "memsdk.db" in w for w in warnings)


async def test_new_database_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "memsdk.db"
    await make_db(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
async def test_companion_symlink_is_refused(tmp_path: Path, suffix: str) -> None:
    target = victim(tmp_path)
    path = tmp_path / "memsdk.db"
    await make_db(path)
    plant(f"{path}{suffix}", link_to=target)
    with pytest.raises(StoreError, match=f"{suffix}.*symbolic link"):
        await open_store(path)
    assert_untouched(target)


@needs_root
@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
async def test_companion_owned_by_another_user_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "memsdk.db"
    await make_db(path)
    companion = plant(f"{path}{suffix}")
    os.chown(companion, OTHER_UID, OTHER_UID)
    with pytest.raises(StoreError, match=f"{suffix}.*owned by another user"):
        await open_store(path)


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
async def test_companion_writable_by_others_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "memsdk.db"
    await make_db(path)
    companion = plant(f"{path}{suffix}")
    os.chmod(companion, 0o666)
    with pytest.raises(StoreError, match=f"{suffix}.*writable by group or others"):
        await open_store(path)


# ------------------------------------------------------------------ hostile stored bodies

DEEP = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
HOSTILE_BODIES: dict[str, object] = {
    "deeply nested object": DEEP,
    "deeply nested array": b"[" * 100_000,
    "deeply nested in a field": b'{"page_context":' + DEEP + b"}",
    "random bytes": bytes(range(256)) * 4,
    "an integer": 42,
    "a float": 3.5,
    "text of the wrong shape": "[1, 2, 3]",
    "a field of the wrong type": b'{"session_id": 5}',
}


async def seed_session(path: Path) -> None:
    async with MemoryClient(Config(store=db_url(path))) as mem:
        await mem.append_turns(
            SID,
            [Turn(role="user", content="hello"), Turn(role="assistant", content="hi")],
            customer_id=CUSTOMER,
        )


def overwrite(path: Path, sk_like: str, body: object) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        changed = conn.execute(
            "UPDATE items SET body = ? WHERE sk LIKE ?", (body, sk_like)
        ).rowcount
    assert changed >= 1


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_hostile_meta_body_is_a_store_error(tmp_path: Path, body: object) -> None:
    path = tmp_path / "memsdk.db"
    await seed_session(path)
    overwrite(path, "META", body)
    async with MemoryClient(Config(store=db_url(path))) as mem:
        with pytest.raises(StoreError) as loading:
            await mem.load_context(SID, customer_id=CUSTOMER)
        with pytest.raises(StoreError) as appending:
            await mem.append_turns(SID, [Turn(role="user", content="more")], customer_id=CUSTOMER)
    for info in (loading, appending):
        assert isinstance(info.value, MemsdkError)
        assert "not a valid memsdk record" in str(info.value)
        assert_clean_message(info.value, tmp_path)


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_hostile_turn_body_is_a_store_error(tmp_path: Path, body: object) -> None:
    path = tmp_path / "memsdk.db"
    await seed_session(path)
    overwrite(path, "TURN#%", body)
    async with MemoryClient(Config(store=db_url(path))) as mem:  # a cold L1: reads the store
        with pytest.raises(StoreError, match="not a valid memsdk record") as info:
            await mem.load_context(SID, customer_id=CUSTOMER)
        assert_clean_message(info.value, tmp_path)
        # An append reads META only: the hostile turns do not stop new ones.
        receipt = await mem.append_turns(
            SID, [Turn(role="user", content="more")], customer_id=CUSTOMER
        )
        assert receipt.durable


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_a_commit_over_a_hostile_turn_row_is_a_store_error(
    tmp_path: Path, body: object
) -> None:
    # The retry check of a commit decodes a stored turn with the same id as its own.
    path = tmp_path / "memsdk.db"
    await seed_session(path)
    with closing(sqlite3.connect(path)) as conn:
        meta_body, turn_sk = conn.execute(
            "SELECT m.body, t.sk FROM items m, items t WHERE m.sk = 'META' AND t.sk LIKE 'TURN#%'"
        ).fetchone()
    overwrite(path, turn_sk, body)
    turn = TurnRecord(
        turn_id=turn_sk.removeprefix("TURN#"),
        role="user",
        content="hello",
        intent=None,
        attributes={},
        created_at_ms=1,
        expires_at=4_000_000_000,
    )
    current = msgspec.json.decode(meta_body, type=MetaRecord)
    write = SessionWrite(
        meta=current, expected_version=current.version, now_s=1, turns=[turn], summary=None
    )
    store = await open_store(path)
    try:
        with pytest.raises(StoreError, match="not a valid memsdk record"):
            await store.commit(write)
    finally:
        await store.aclose()


async def test_a_hostile_body_leaves_the_worker_usable(tmp_path: Path) -> None:
    path = tmp_path / "memsdk.db"
    await seed_session(path)
    overwrite(path, "META", DEEP)
    store = await open_store(path)
    try:
        for _ in range(3):
            with pytest.raises(StoreError):
                await store.get_meta(SID, consistent=True)
        assert await store.get_meta("another-session", consistent=True) is None
    finally:
        await store.aclose()
