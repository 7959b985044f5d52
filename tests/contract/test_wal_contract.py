"""Buffered writes through the WAL, on every store: acknowledged means never lost or doubled."""

from __future__ import annotations

import asyncio
import logging
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.client import build_store
from memsdk.errors import (
    BackpressureError,
    ConfigError,
    SessionOwnershipError,
    StoreError,
    StoreUnavailableError,
)
from memsdk.store.base import CommitOutcome, SessionWrite
from memsdk.testing import FakeClock, FaultyStore
from tests.conftest import TEST_TIMEOUTS


def pair(i: int, size: int = 0) -> list[Turn]:
    pad = "x" * size
    return [Turn(role="user", content=f"q{i}{pad}"), Turn(role="assistant", content=f"a{i}")]


class GatedStore(FaultyStore):
    """Commits wait for `gate`: the test decides when buffered records reach the store."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        await self.gate.wait()
        return await super().commit(write)


class DownAfterFirstCommit(FaultyStore):
    """Applies the first commit, loses its reply, then behaves as a store outage."""

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        try:
            return await super().commit(write)
        finally:
            self.down = True


@pytest.fixture
def wal_dir(tmp_path: Path) -> str:
    return str(tmp_path / "wal")


@pytest.fixture
def open_client(store_settings: dict[str, Any], clock: FakeClock) -> Any:
    clients: list[MemoryClient] = []

    async def factory(store: Any = None, **overrides: Any) -> MemoryClient:
        config = Config(**{**store_settings, **TEST_TIMEOUTS, **overrides})
        client = MemoryClient(config, clock=clock, store=store)
        await client.open()
        clients.append(client)
        return client

    factory.clients = clients  # type: ignore[attr-defined]
    return factory


@pytest.fixture(autouse=True)
async def _close_clients(open_client: Any) -> Any:
    yield
    for client in open_client.clients:
        await client.aclose()


def faulty(store_settings: dict[str, Any], cls: type[FaultyStore] = FaultyStore) -> Any:
    return cls(build_store(Config(**store_settings)))


async def stored(open_client: Any, session_id: str) -> tuple[list[str], int | None]:
    """Turn contents and turn_count as the store has them (a client without a WAL)."""
    reader = await open_client()
    ctx = await reader.load_context(session_id, last_n=10_000)
    return [t.content for t in ctx.turns], (ctx.meta.turn_count if ctx.meta else None)


async def test_buffered_append_is_read_back_at_once_and_lands_after_flush(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings, GatedStore)
    mem = await open_client(store=store, wal_dir=wal_dir)
    receipts = [await mem.append_turns("s1", pair(i), customer_id="C1") for i in range(3)]
    assert all(not r.durable for r in receipts)
    # Nothing reached the store yet: the overlay answers from this process's WAL.
    ctx = await mem.load_context("s1", customer_id="C1")
    assert [t.content for t in ctx.turns] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert [t.turn_id for t in ctx.turns] == [i for r in receipts for i in r.turn_ids]
    assert ctx.meta is not None and ctx.meta.turn_count == 6 and ctx.meta.customer_id == "C1"
    assert mem.health().wal_pending_records == 3
    assert await stored(open_client, "s1") == ([], None)
    store.gate.set()
    await mem.flush(timeout=30)
    assert mem.health().wal_pending_records == 0
    contents, count = await stored(open_client, "s1")
    assert contents == ["q0", "a0", "q1", "a1", "q2", "a2"] and count == 6
    # After the flush the overlay has nothing left to add: the same answer from the store.
    again = await mem.load_context("s1", customer_id="C1")
    assert [t.turn_id for t in again.turns] == [t.turn_id for t in ctx.turns]
    assert again.meta is not None and again.meta.turn_count == 6


async def test_flush_with_timeout_names_what_is_pending(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings)
    store.down = True
    mem = await open_client(store=store, wal_dir=wal_dir)
    for i in range(4):
        assert not (await mem.append_turns(f"s{i % 2}", pair(i))).durable
    with pytest.raises(StoreUnavailableError, match=r"4 appends .* of 2 sessions"):
        await mem.flush(timeout=0.2)
    health = mem.health()
    assert health.wal_pending_records == 4 and health.wal_pending_bytes > 0
    assert health.wal_oldest_pending_age_s is not None
    store.down = False
    await mem.flush(timeout=30)
    for s, expected in (("s0", ["q0", "a0", "q2", "a2"]), ("s1", ["q1", "a1", "q3", "a3"])):
        assert await stored(open_client, s) == (expected, 4)


async def test_records_left_by_a_closed_client_are_replayed_once_on_the_next_open(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings)
    store.down = True
    first = await open_client(store=store, wal_dir=wal_dir, wal_close_timeout=0.1)
    for i in range(5):
        await first.append_turns("s1", pair(i), customer_id="C1")
    await first.aclose()  # the store is down: everything stays in the WAL
    second = await open_client(wal_dir=wal_dir)
    await second.flush(timeout=30)
    contents, count = await stored(open_client, "s1")
    assert contents == [c for i in range(5) for c in (f"q{i}", f"a{i}")]
    assert count == 10
    # A third start finds nothing to replay: confirmations were persisted.
    await second.aclose()
    third = await open_client(wal_dir=wal_dir)
    assert third.health().wal_pending_records == 0
    assert (await stored(open_client, "s1"))[1] == 10


async def test_lost_replies_never_double_a_turn_or_the_count(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings)
    store.lose_commit_replies = 3
    mem = await open_client(store=store, wal_dir=wal_dir)
    for i in range(4):
        await mem.append_turns("s1", pair(i))
    await mem.flush(timeout=30)
    contents, count = await stored(open_client, "s1")
    assert contents == [c for i in range(4) for c in (f"q{i}", f"a{i}")] and count == 8


async def test_a_replay_batch_cut_differently_writes_only_the_missing_turns(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings, DownAfterFirstCommit)
    store.lose_commit_replies = 1
    first = await open_client(store=store, wal_dir=wal_dir, wal_close_timeout=0.1)
    await first.append_turns("s1", pair(0))
    for _ in range(200):  # the first record's commit lands, its reply is lost
        if store.down:
            break
        await asyncio.sleep(0.01)
    assert store.down
    await first.append_turns("s1", pair(1))
    await first.aclose()
    # Both records are unconfirmed; the replay writes them as one batch, of which the
    # first half is already in the store.
    second = await open_client(wal_dir=wal_dir)
    await second.flush(timeout=30)
    assert await stored(open_client, "s1") == (["q0", "a0", "q1", "a1"], 4)


async def test_full_wal_raises_backpressure_and_resumes_once_drained(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings)
    store.down = True
    mem = await open_client(
        store=store,
        wal_dir=wal_dir,
        wal_max_bytes=16 * 1024,
        wal_segment_bytes=4 * 1024,
        write_timeout=0.3,
    )
    acked: list[int] = []
    with pytest.raises(BackpressureError, match="write-ahead log is full"):
        for i in range(100):
            await mem.append_turns(f"s{i % 3}", pair(i, size=300))
            acked.append(i)
    assert 5 < len(acked) < 100
    store.down = False
    await mem.flush(timeout=30)
    await mem.append_turns("s0", pair(1000))  # space is back
    await mem.flush(timeout=30)
    for s in range(3):
        expected = [c for i in acked if i % 3 == s for c in (f"q{i}{'x' * 300}", f"a{i}")]
        if s == 0:
            expected += ["q1000", "a1000"]
        assert await stored(open_client, f"s{s}") == (expected, len(expected))


async def test_delete_and_summary_see_buffered_turns_first(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    mem = await open_client(wal_dir=wal_dir)
    receipt = await mem.append_turns("s1", pair(0))
    summary = await mem.put_summary("s1", "greeting", through_turn_id=receipt.turn_ids[-1])
    assert summary.through_turn_id == receipt.turn_ids[-1]
    await mem.append_turns("s2", pair(1))
    await mem.delete_session("s2")
    assert (await mem.load_context("s2")).meta is None
    await mem.flush(timeout=30)
    assert await stored(open_client, "s2") == ([], None)


async def test_a_replay_after_delete_never_resurrects_the_session(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str, tmp_path: Path
) -> None:
    store = faulty(store_settings)
    store.down = True
    mem = await open_client(store=store, wal_dir=wal_dir, wal_close_timeout=0.1)
    await mem.append_turns("s1", pair(0))
    # The disk as a power cut leaves it if the confirmation (written without an fsync of
    # its own, docs/durability.md) is lost: the record is acknowledged, not confirmed.
    crashed = tmp_path / "wal-after-power-cut"
    shutil.copytree(wal_dir, crashed, ignore=shutil.ignore_patterns("LOCK"))
    store.down = False
    await mem.flush(timeout=30)
    await mem.delete_session("s1")
    await mem.aclose()
    replayed = await open_client(wal_dir=str(crashed))
    await replayed.flush(timeout=30)  # the replay is "idempotent": it must change nothing
    assert await stored(open_client, "s1") == ([], None)


async def test_a_replay_of_turns_that_landed_never_caches_a_meta_the_store_never_held(
    open_client: Any,
    store_settings: dict[str, Any],
    wal_dir: str,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    """Found by the property machine (long profile): a replaying client plans its batch on
    no META (it has never seen the session), finds every turn already stored (the crashed
    process's flush landed), and took its own plan (turn_count 2, a complete window of
    the replayed turns) for the store's META: a sticky read then lost the older turns."""
    writer = await open_client()
    await writer.append_turns("s1", pair(0))
    clock.advance(0.01)  # the buffered writer never saw the session: order by time
    store = faulty(store_settings)
    store.down = True
    mem = await open_client(store=store, wal_dir=wal_dir, wal_close_timeout=0.1)
    await mem.append_turns("s1", pair(1))
    crashed = tmp_path / "wal-after-power-cut"  # the record acknowledged, not confirmed
    shutil.copytree(wal_dir, crashed, ignore=shutil.ignore_patterns("LOCK"))
    store.down = False
    await mem.flush(timeout=30)
    await mem.aclose()
    replayed = await open_client(wal_dir=str(crashed), consistency="sticky")
    await replayed.flush(timeout=30)
    ctx = await replayed.load_context("s1")
    assert [t.content for t in ctx.turns] == ["q0", "a0", "q1", "a1"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4
    assert await stored(open_client, "s1") == (["q0", "a0", "q1", "a1"], 4)


async def test_a_buffered_append_below_a_deleted_incarnation_is_never_cut_in_two(
    open_client: Any, tmp_path: Path
) -> None:
    """Found by the property machine (long profile). A client that never saw the session
    fixes its ids within the millisecond of the deleted incarnation's newest turn, so its
    ids interleave with the floor (by node id: one side or the other, at random). The
    flusher dropped the turns under it and wrote the rest: half an append. A known limit
    drops such an append (docs/guarantees.md); never a part of it. Eight pairs of fresh
    clients: the chance that no pair's ids straddle the floor is 1/256."""
    for i in range(8):
        sid = f"s-cut-{i}"
        writer = await open_client()  # each pair of node ids orders at random
        await writer.append_turn(sid, Turn(role="user", content="before"))
        await writer.delete_session(sid)
        mem = await open_client(wal_dir=str(tmp_path / f"wal-{i}"))
        await mem.append_turns(sid, pair(i))
        await mem.flush(timeout=30)
        contents, _ = await stored(open_client, sid)
        assert contents in ([], [f"q{i}", f"a{i}"]), (i, contents)


async def test_buffered_append_checks_the_owner_of_pending_and_stored_sessions(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings, GatedStore)
    mem = await open_client(store=store, wal_dir=wal_dir)
    await mem.append_turns("pending", pair(0), customer_id="C1")
    with pytest.raises(SessionOwnershipError):
        await mem.append_turns("pending", pair(1), customer_id="C2")
    store.gate.set()
    await mem.flush(timeout=30)
    other = await open_client(wal_dir=wal_dir + "-other")
    with pytest.raises(SessionOwnershipError):
        await other.append_turns("pending", pair(2), customer_id="C2")
    assert await stored(open_client, "pending") == (["q0", "a0"], 2)


class Misdeployed(FaultyStore):
    """Commits fail as with a missing table or revoked credentials until `fixed`."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.fixed = False
        self.refusals = 0

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        if not self.fixed:
            self.refusals += 1
            raise StoreError("DynamoDB table 't' does not exist (test)")
        return await super().commit(write)


async def test_a_deployment_error_keeps_records_pending_and_a_permanent_one_sets_them_aside(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="memsdk")
    store = faulty(store_settings, Misdeployed)
    mem = await open_client(store=store, wal_dir=wal_dir)
    await mem.append_turns("s1", pair(0), customer_id="C1")
    with pytest.raises(StoreUnavailableError):
        await mem.flush(timeout=1.0)  # the store keeps refusing: the records wait
    assert store.refusals >= 1
    health = mem.health()
    assert health.wal_pending_records == 1 and health.wal_rejected_records == 0
    # Never silent: the refusal is in the log (once per 10 s, however often it is retried).
    failing = [r for r in caplog.records if "could not be written yet" in r.getMessage()]
    assert len(failing) == 1 and "does not exist" in failing[0].getMessage()
    store.fixed = True  # an operator created the table
    await mem.flush(timeout=30)
    assert await stored(open_client, "s1") == (["q0", "a0"], 2)
    # A permanent refusal: another customer owns the session by the time the flush runs.
    gated = faulty(store_settings, GatedStore)
    writer = await open_client(store=gated, wal_dir=wal_dir + "-2")
    await writer.append_turns("taken", pair(1), customer_id="C1")
    other = await open_client()
    await other.append_turns("taken", pair(2), customer_id="C2")
    gated.gate.set()
    await writer.flush(timeout=30)  # done with it: the record is set aside, not retried
    assert writer.health().wal_rejected_records == 1
    assert (Path(wal_dir + "-2") / "rejected" / "rejected.jsonl").stat().st_size > 0
    assert await stored(open_client, "taken") == (["q2", "a2"], 2)


async def test_one_wal_dir_per_process_and_private_files(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    mem = await open_client(wal_dir=wal_dir)
    await mem.append_turns("s1", pair(0))
    with pytest.raises(ConfigError, match="in use"):
        await open_client(wal_dir=wal_dir)
    assert _modes(Path(wal_dir)) == (0o700, {0o600})


def _modes(root: Path) -> tuple[int, set[int]]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return stat.S_IMODE(root.stat().st_mode), {stat.S_IMODE(p.stat().st_mode) for p in files}


class StaleReads(FaultyStore):
    """Reads return what the store held when they began, but only after `released` is set."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.hold_reads = False
        self.released = asyncio.Event()

    async def get_meta(self, session_id: str, *, consistent: bool) -> Any:
        result = await super().get_meta(session_id, consistent=consistent)
        if self.hold_reads:
            await self.released.wait()
        return result

    async def query_turns(self, session_id: str, **kwargs: Any) -> Any:
        result = await super().query_turns(session_id, **kwargs)
        if self.hold_reads:
            await self.released.wait()
        return result


async def test_appends_flushed_during_a_read_are_still_read_back(
    open_client: Any, store_settings: dict[str, Any], wal_dir: str
) -> None:
    store = faulty(store_settings, StaleReads)
    store.down = True  # appends stay pending
    mem = await open_client(store=store, wal_dir=wal_dir)
    await mem.append_turns("s1", pair(0), customer_id="C1")
    await mem.append_turns("s1", pair(1), customer_id="C1")
    store.hold_reads = True
    store.down = False
    # The read starts, sees the store before the flush, and returns after the flush.
    read = asyncio.ensure_future(mem.load_context("s1", customer_id="C1"))
    await asyncio.sleep(0)
    await mem.flush(timeout=30)
    store.released.set()
    ctx = await read
    assert [t.content for t in ctx.turns] == ["q0", "a0", "q1", "a1"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4
