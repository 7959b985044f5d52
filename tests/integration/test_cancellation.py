"""Cancellation and deadlines against real services (guarantee 10 of docs/guarantees.md).

A cancel is delivered when `task.cancel()` returns True (the task had not finished yet):
from then on the task must end cancelled, whatever dependency it was waiting on. These
tests deliver cancels at every loop iteration of a call's life, so that one lands in each
gap a library could swallow it in (Python 3.11's asyncio.wait_for loses a cancel that
arrives in the iteration its inner awaitable completes in).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from memsdk import Config, MemoryClient, Turn, buffered_writer
from memsdk.cache.redis import RedisMetaCache
from memsdk.errors import ClientClosedError, MemsdkError
from memsdk.faultproxy import FaultProxy
from memsdk.ids import TurnIdGenerator
from memsdk.records import MetaRecord
from memsdk.session import new_turn_records
from memsdk.wal.log import WalOptions, WriteAheadLog
from memsdk.write_buffer import encode_append
from tests.harness.redis_server import RedisServer

NOW = 1_900_000_000


def _meta(session_id: str, version: int) -> MetaRecord:
    return MetaRecord(
        session_id=session_id,
        customer_id="c",
        created_at_ms=NOW * 1000,
        updated_at_ms=NOW * 1000,
        turn_count=0,
        last_turn_id=None,
        floor_turn_id="0",
        page_context={},
        attributes={},
        expires_at=NOW + 3600,
        version=version,
    )


async def cancel_at_every_step(
    call: Callable[[int], Awaitable[Any]], *, steps: int, rounds: int = 1
) -> tuple[int, int]:
    """Start `call(i)` and cancel it after 0, 1, ... `steps` loop iterations, `rounds` times.

    Returns (cancels delivered, calls that swallowed a delivered cancel and returned).
    """
    delivered = swallowed = 0
    i = 0
    for _ in range(rounds):
        for step in range(steps):
            i += 1
            task = asyncio.ensure_future(call(i))
            for _ in range(step):
                await asyncio.sleep(0)
            if not task.cancel():
                await task
                continue
            delivered += 1
            try:
                await task
            except asyncio.CancelledError:
                continue
            swallowed += 1
    return delivered, swallowed


async def test_a_cancelled_redis_command_always_ends_cancelled(
    redis_server: RedisServer,
) -> None:
    # Generous timeouts: the cancel, not a deadline, must end every call here.
    cache = RedisMetaCache(redis_server.url, timeout=5.0, connect_timeout=5.0)
    await cache.open()
    try:
        assert await cache.put(_meta("warm", 1), now_s=NOW)

        async def call(i: int) -> Any:
            if i % 2:
                return await cache.get(f"s{i % 7}")
            return await cache.put(_meta(f"s{i % 7}", i), now_s=NOW)

        delivered, swallowed = await cancel_at_every_step(call, steps=12, rounds=60)
        assert delivered > 200
        assert swallowed == 0, f"{swallowed} of {delivered} cancels were swallowed"
    finally:
        await cache.aclose()


@pytest.mark.parametrize("kind", ["get", "put"])
async def test_a_redis_call_deadline_holds_while_the_server_hangs(
    redis_server: RedisServer, kind: str
) -> None:
    """The cache's own budget bounds a call on a server that accepts and never answers."""
    patient = RedisMetaCache(redis_server.url, timeout=10.0, connect_timeout=10.0)
    await patient.open()
    try:
        assert await patient.put(_meta("s", 1), now_s=NOW)  # setup: never a timeout
    finally:
        await patient.aclose()
    cache = RedisMetaCache(redis_server.url, timeout=0.2, connect_timeout=0.2)
    await cache.open()
    try:
        redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if kind == "get":
                assert await cache.get("s") is None
            else:
                assert not await cache.put(_meta("s", 2), now_s=NOW)
            # The budget is 0.4 s; the slack is for a stalled machine, not for the code.
            assert loop.time() - started < 5.0
            assert cache.stats().errors == 1
        finally:
            redis_server.resume()
    finally:
        await cache.aclose()


# ------------------------------------------------------------- the client, end to end


def memsdk_threads() -> list[str]:
    """Live threads memsdk started (WAL writer, SQLite worker), by name."""
    return [t.name for t in threading.enumerate() if t.name.startswith("memsdk-")]


def leftover_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since `before` that are still alive, but the test's own fault proxy."""
    left = []
    for task in asyncio.all_tasks():
        if task in before or task is asyncio.current_task() or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if filename.endswith(("faultproxy.py", "loopback.py")):
            continue
        left.append(repr(task.get_coro()))
    return left


async def settle_tasks() -> None:
    """Let tasks that were cancelled or finished a moment ago run their last step."""
    for _ in range(5):
        await asyncio.sleep(0)


def client_config(url: str, redis_url: str | None, wal_dir: Path | None, **kw: Any) -> Config:
    settings: dict[str, Any] = {
        "store": url,
        "redis_url": redis_url,
        "wal_dir": None if wal_dir is None else str(wal_dir),
        "read_timeout": 5.0,
        "write_timeout": 5.0,
        "breaker_slow_call": 15.0,
        **kw,
    }
    return Config(**settings)


async def test_a_cancelled_aclose_releases_everything_and_the_wal_dir_opens_again(
    proxied_url: str, proxy: FaultProxy, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Defect 2: aclose() cancelled by a shutdown deadline marked the client closed and
    leaked the flusher, the WAL writer and its lock, threads and connections; a second
    aclose() did nothing and the same wal_dir could not be opened again."""
    before = set(asyncio.all_tasks())
    wal_dir = tmp_path / "wal"
    config = client_config(proxied_url, redis_server.url, wal_dir, wal_close_timeout=60.0)
    mem = MemoryClient(config)
    await mem.open()
    acked = [await mem.append_turns("s1", pair(i)) for i in range(3)]
    await mem.flush(timeout=30)
    proxy.set_mode("blackhole")  # the store accepts and never answers: a drain cannot end
    acked += [await mem.append_turns("s1", pair(i)) for i in range(3, 6)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the shutdown deadline
            await mem.aclose()
    # Not the 60 s drain: released at once, with the stuck commits cancelled.
    assert loop.time() - started < 10.0
    await settle_tasks()
    assert memsdk_threads() == []
    assert leftover_tasks(before) == []
    await mem.aclose()  # idempotent: returns at once
    with pytest.raises(ClientClosedError):
        await mem.load_context("s1")
    proxy.set_mode("pass")
    async with MemoryClient(config) as again:  # the wal_dir lock was dropped
        assert again.health().wal_pending_records == 3  # the three that never drained
        await again.flush(timeout=30)
    async with MemoryClient(client_config(proxied_url, None, None)) as reader:
        ctx = await reader.load_context("s1", last_n=100)
        assert [t.turn_id for t in ctx.turns] == [i for r in acked for i in r.turn_ids]
    await settle_tasks()
    assert memsdk_threads() == [] and leftover_tasks(before) == []


async def test_concurrent_acloses_await_one_close(tmp_path: Path) -> None:
    config = Config(store=f"sqlite:///{tmp_path / 'm.db'}", wal_dir=str(tmp_path / "wal"))
    mem = MemoryClient(config)
    await mem.open()
    await mem.append_turns("s1", pair(0))
    await asyncio.gather(mem.aclose(), mem.aclose(), mem.aclose())
    assert memsdk_threads() == []
    async with MemoryClient(config) as again:
        ctx = await again.load_context("s1")
        assert [t.content for t in ctx.turns] == ["q0", "a0"]


async def test_a_cancelled_open_releases_the_wal_dir(tmp_path: Path) -> None:
    """An open() cancelled while its store connects leaves nothing behind."""
    config = Config(store=f"sqlite:///{tmp_path / 'm.db'}", wal_dir=str(tmp_path / "wal"))
    for steps in range(12):
        mem = MemoryClient(config)
        opening = asyncio.ensure_future(mem.open())
        for _ in range(steps):
            await asyncio.sleep(0)
        if opening.cancel():
            with pytest.raises(asyncio.CancelledError):
                await opening
        else:
            await opening
        await mem.aclose()
        assert memsdk_threads() == []
    async with MemoryClient(config) as again:
        assert again.health().open


async def test_an_open_cancelled_while_it_recovers_the_log_releases_it_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open() cancelled during the log's recovery (a record that does not decode is
    being written to rejected/, in a thread) closes the log it opened: the wal_dir opens
    again, and the recovered append is replayed, not lost."""
    wal_dir = tmp_path / "wal"
    config = Config(store=f"sqlite:///{tmp_path / 'm.db'}", wal_dir=str(wal_dir))
    now_ms = time.time_ns() // 1_000_000  # the client's clock: the append is current
    turns = new_turn_records(
        [Turn(role="user", content="kept")],
        TurnIdGenerator(lambda: now_ms).next_ids(1),
        now_ms=now_ms,
        ttl_seconds=config.ttl_seconds,
        retention_seconds=config.turn_retention_seconds,
    )
    log, _ = await WriteAheadLog.open(wal_dir, WalOptions(segment_bytes=1 << 20))
    await log.append(encode_append("s1", None, turns))
    await log.append(b'{"type":"not-an-append"}')
    await log.close()
    real_write = buffered_writer.write_rejected

    def slow_write(wal_dir: str, lines: list[bytes]) -> None:
        time.sleep(0.02)  # a slow disk: the cancel lands while recovery waits on it
        real_write(wal_dir, lines)

    monkeypatch.setattr(buffered_writer, "write_rejected", slow_write)
    cancelled = 0
    for delay_ms in range(0, 40, 2):
        mem = MemoryClient(config)
        opening = asyncio.ensure_future(mem.open())
        await asyncio.sleep(delay_ms / 1000)
        if opening.cancel():
            with pytest.raises(asyncio.CancelledError):
                await opening
            cancelled += 1
        else:
            await opening
        await mem.aclose()
        assert memsdk_threads() == []
    assert cancelled > 0
    async with MemoryClient(config) as again:
        await again.flush(timeout=10)
        ctx = await again.load_context("s1")
        assert [t.content for t in ctx.turns] == ["kept"]
    assert (wal_dir / "rejected").is_dir()


def pair(i: int) -> list[Turn]:
    return [Turn(role="user", content=f"q{i}"), Turn(role="assistant", content=f"a{i}")]


# --------------------------------------------------- every verb, cancelled at random


VERBS = ("load", "append", "append_turn", "update_meta", "put_summary", "delete", "flush")


async def test_every_verb_cancelled_at_random_moments_ends_cancelled_and_loses_nothing(
    proxied_url: str, proxy: FaultProxy, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Guarantee 10 as a property: seeded calls of every public verb, on a buffered and a
    synchronous client (Redis, DynamoDB Local behind the fault proxy, some of it slowed
    down), each cancelled after a random number of loop iterations or a random delay."""
    rng = random.Random(1310)
    before = set(asyncio.all_tasks())
    buffered = MemoryClient(client_config(proxied_url, redis_server.url, tmp_path / "wal"))
    synchronous = MemoryClient(client_config(proxied_url, redis_server.url, None))
    await buffered.open()
    await synchronous.open()
    kept = [f"keep-{i}" for i in range(4)]  # never deleted: every acknowledged turn stays
    churn = [f"churn-{i}" for i in range(2)]
    acked: dict[str, list[str]] = {sid: [] for sid in kept}
    last_ids: dict[str, str] = {}
    delivered = swallowed = completed = 0
    counter = 0
    for call in range(400):
        if call % 50 == 0:
            slow = rng.random() < 0.5
            proxy.set_mode("latency" if slow else "pass", delay_s=0.02 if slow else 0.0)
        mem = rng.choice((buffered, synchronous))
        verb = rng.choice(VERBS)
        sid = rng.choice(kept + churn if verb != "delete" else churn)
        counter += 1
        coro: Awaitable[Any]
        if verb == "load":
            coro = mem.load_context(sid, last_n=rng.choice((1, 5, 20)))
        elif verb in ("append", "append_turn"):
            turns = pair(counter) if verb == "append" else pair(counter)[:1]
            coro = mem.append_turns(sid, turns)
        elif verb == "update_meta":
            coro = mem.update_meta(sid, page_context={"n": counter})
        elif verb == "put_summary":
            if sid not in last_ids:
                continue
            coro = mem.put_summary(sid, f"summary {counter}", through_turn_id=last_ids[sid])
        elif verb == "delete":
            coro = mem.delete_session(sid)
        else:
            coro = mem.flush(timeout=5.0)
        task = asyncio.ensure_future(coro)
        if rng.random() < 0.5:
            for _ in range(rng.randrange(0, 40)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(rng.uniform(0, 0.03))
        if task.cancel():
            delivered += 1
            try:
                await task
            except asyncio.CancelledError:
                continue
            except MemsdkError:
                continue  # it failed before the cancel reached it: an answer, not a swallow
            swallowed += 1
            continue
        completed += 1
        try:
            result = task.result()
        except MemsdkError:
            continue  # e.g. put_summary after a delete: a typed answer
        if verb in ("append", "append_turn"):
            if sid in acked:
                acked[sid] += result.turn_ids
            last_ids[sid] = result.turn_ids[-1]
        elif verb == "delete":
            last_ids.pop(sid, None)
    assert delivered > 150 and completed > 50, (delivered, completed)
    assert swallowed == 0, f"{swallowed} of {delivered} delivered cancels were swallowed"
    proxy.set_mode("pass")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await buffered.aclose()  # drains what is pending (the store answers)
    await synchronous.aclose()
    assert loop.time() - started < buffered.config.wal_close_timeout + 10.0
    await settle_tasks()
    assert memsdk_threads() == []
    assert leftover_tasks(before) == []
    async with MemoryClient(client_config(proxied_url, None, tmp_path / "wal")) as reader:
        # Reopening the log replays anything the close left (nothing, if it drained).
        await reader.flush(timeout=30)
        for sid, ids in acked.items():
            ctx = await reader.load_context(sid, last_n=10_000)
            stored = [t.turn_id for t in ctx.turns]
            assert len(stored) == len(set(stored)), f"{sid}: a turn stored twice"
            missing = set(ids) - set(stored)
            assert not missing, f"{sid}: {len(missing)} acknowledged turns missing"
