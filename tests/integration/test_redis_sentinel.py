"""Redis behind Sentinel (docs/caching.md): failover, a lost acknowledged SET, a fenced primary.

Every test starts its own group on free loopback ports (tests/harness/redis_server.py): a
primary, a replica and three Sentinels, `down-after-milliseconds 1000`, `failover-timeout
5000`. The store is SQLite (one file shared by the clients of a test, as two processes
would share a table); each MemoryClient has its own L1, as separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import memsdk.cache.redis as redis_cache
from memsdk import MemoryClient, Turn
from memsdk.cache.redis import RedisMetaCache
from memsdk.config import Config
from memsdk.records import MetaRecord
from tests.harness.redis_server import (
    RedisSentinel,
    RedisSentinelGroup,
    RedisServer,
    free_port,
    make_tls_files,
)

NOW = 1_900_000_000
# For tests about what Redis holds, not how fast it answers: a busy 2-core machine can
# stall this process for seconds, and a Redis call that times out then is a miss.
# One key namespace for the caches and the clients below, so that key() names both.
PREFIX = "sentinel-test"
PATIENT: dict[str, Any] = {"timeout": 10.0, "connect_timeout": 10.0, "key_prefix": PREFIX}
PATIENT_CLIENT: dict[str, Any] = {"redis_timeout": 5.0}
# What a stall of this process may add to a time it measures (the failover tests).
STALL_S = 2.0


def key(session_id: str) -> str:
    """The key RedisMetaCache and the clients below use."""
    return f"memsdk:{PREFIX}:{{{session_id}}}:meta"


def stored_version(node: RedisServer, session_id: str) -> int | None:
    """The META version a data node holds for the session (the value's digit prefix); None
    if it holds none, or a reader's lease (`L` + token) until that reader's fill lands."""
    raw = node.command("GET", key(session_id))
    return None if raw is None or raw.startswith(b"L") else int(raw[:20])


def replid(node: RedisServer) -> bytes:
    """The node's master_replid: the epoch memsdk stamps on what it stores."""
    return str(node.command("INFO", "replication")["master_replid"]).encode()


def user(text: str) -> Turn:
    return Turn(role="user", content=text)


@pytest.fixture
def group() -> Iterator[RedisSentinelGroup]:
    """A fresh Sentinel group for one test (failovers change it for good)."""
    grp = RedisSentinelGroup().start()
    try:
        yield grp
    finally:
        grp.stop()


@contextlib.asynccontextmanager
async def clients(
    tmp_path: Path, url: str, count: int, **overrides: Any
) -> AsyncIterator[list[MemoryClient]]:
    """`count` MemoryClients on one SQLite file and one Redis URL, each with its own L1."""
    settings: dict[str, Any] = {
        "store": f"sqlite:///{tmp_path / 'memory.db'}",
        "redis_url": url,
        "redis_key_prefix": PREFIX,
        # Generous: these tests judge staleness and Redis behaviour, not the store's speed.
        "read_timeout": 5.0,
        "write_timeout": 5.0,
        **overrides,
    }
    opened: list[MemoryClient] = []
    try:
        for _ in range(count):
            mem = MemoryClient(Config(**settings))
            await mem.__aenter__()
            opened.append(mem)
        yield opened
    finally:
        for mem in opened:
            await mem.aclose()


# --- plain operation ---------------------------------------------------------------------


async def test_memory_client_through_sentinel_end_to_end(
    group: RedisSentinelGroup, tmp_path: Path
) -> None:
    async with clients(tmp_path, group.url, 2, **PATIENT_CLIENT) as (a, b):
        await a.append_turns("s", [user("q1"), Turn(role="assistant", content="a1")])
        first = await b.load_context("s")
        assert [t.content for t in first.turns] == ["q1", "a1"]
        warm = await b.load_context("s")
        assert warm.source == "l1+redis" and warm.turns == first.turns
        await a.append_turn("s", user("q2"))
        ctx = await b.load_context("s")
        # Redis's newer META only tells that the L1 window is behind: META and turns come
        # from the store (Redis never decides on its own which turns a session has).
        assert [t.content for t in ctx.turns] == ["q1", "a1", "q2"] and ctx.source == "store"
        health = b.health()
        assert health.redis == "redis-sentinel" and health.redis_breaker == "closed"
        assert health.redis_hits >= 2 and health.redis_errors == 0
    primary = group.primary
    raw = primary.command("GET", key("s"))
    assert raw[20:60] == replid(primary)  # stamped with the primary's epoch
    group.wait_replicated()  # asynchronous: a busy machine may take a while
    assert group.replica.command("GET", key("s")) == raw


async def test_database_number_and_password_reach_the_primary() -> None:
    grp = RedisSentinelGroup().start(requirepass="pw-of-the-primary")
    try:
        url = grp.url.replace("redis+sentinel://", "redis+sentinel://:pw-of-the-primary@")
        cache = RedisMetaCache(f"{url}?db=3", **PATIENT)
        await cache.open()
        try:
            assert cache.description == "redis-sentinel"
            record = meta_record("s", 1)
            assert await cache.put(record, now_s=NOW)
            assert await cache.get("s") == record
            assert cache.stats().errors == 0
        finally:
            await cache.aclose()
        with grp.primary.client(db=3) as client:
            assert client.exists(key("s")) == 1
    finally:
        grp.stop()


async def test_rediss_sentinel_speaks_tls_to_sentinels_and_primary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tls_files(tmp_path)
    tls = {
        "tls_cert_file": tmp_path / "server.pem",
        "tls_key_file": tmp_path / "server.key",
        "tls_ca_cert_file": tmp_path / "ca.pem",
        "tls_auth_clients": "no",
    }
    primary_tls, sentinel_tls = free_port(), free_port()
    primary, sentinel = RedisServer(), RedisSentinel()
    try:
        primary.start(tls_port=primary_tls, **tls)
        # The Sentinel watches the primary over TLS, and tells clients that TLS port.
        sentinel.start(
            tls_port=sentinel_tls,
            tls_replication="yes",
            sentinel=[f"monitor tls-svc 127.0.0.1 {primary_tls} 1"],
            **tls,
        )
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the private CA
        url = f"rediss+sentinel://127.0.0.1:{sentinel_tls}/tls-svc"
        cache = RedisMetaCache(url, **PATIENT)
        await cache.open()
        try:
            assert await cache.put(meta_record("s", 1), now_s=NOW)
            assert await cache.get("s") == meta_record("s", 1)
            assert cache.stats().errors == 0
        finally:
            await cache.aclose()
        assert primary.command("EXISTS", key("s")) == 1
        # Plain redis+sentinel:// against the TLS ports fails like a broken server: a miss.
        plain = RedisMetaCache(url.replace("rediss+", "redis+"), timeout=0.5, connect_timeout=0.5)
        await plain.open()
        try:
            assert await plain.get("s") is None and plain.stats().errors == 1
        finally:
            await plain.aclose()
    finally:
        sentinel.stop()
        primary.stop()


def meta_record(session_id: str, version: int) -> MetaRecord:
    """A live META record at version `version`."""
    return MetaRecord(
        session_id=session_id,
        customer_id=None,
        created_at_ms=NOW * 1000,
        updated_at_ms=NOW * 1000,
        turn_count=version,
        last_turn_id=f"{NOW * 1000:013d}{version:04d}",
        floor_turn_id="0",
        page_context={},
        attributes={},
        expires_at=NOW + 3600,
        version=version,
        summary=None,
    )


# --- roles change under the client --------------------------------------------------------


async def test_a_demoted_primary_is_never_read_and_the_client_reconnects(
    group: RedisSentinelGroup,
) -> None:
    """READONLY: a pooled connection that now reaches a replica is dropped, never trusted."""
    cache = RedisMetaCache(group.url, **PATIENT)
    await cache.open()
    try:
        primary, replica = group.primary, group.replica
        assert await cache.put(meta_record("s", 1), now_s=NOW)
        assert await cache.get("s") == meta_record("s", 1)  # a pooled connection to primary
        group.wait_replicated()
        # The primary turns into a replica behind the Sentinels' back (as an old primary
        # that comes back does): its data is intact, but a replica lags its primary.
        replica.command("REPLICAOF", "NO", "ONE")
        primary.command("REPLICAOF", "127.0.0.1", str(replica.port))
        assert await cache.get("s") is None  # READONLY: a miss, not the replica's copy
        assert await cache.put(meta_record("s", 2), now_s=NOW) is False  # READONLY too
        assert cache.stats().errors == 2 and cache.stats().hits == 1
        # Each READONLY closed its connection, so every call asks the Sentinels again: put
        # the roles back where the Sentinels think they are, and the same client works.
        primary.command("REPLICAOF", "NO", "ONE")
        replica.command("REPLICAOF", "127.0.0.1", str(primary.port))
        assert await cache.put(meta_record("s", 3), now_s=NOW)
        assert await cache.get("s") == meta_record("s", 3)
        assert cache.stats().errors == 2
    finally:
        await cache.aclose()


async def until_redis_answers(mem: MemoryClient, within_s: float = 15.0) -> None:
    """Read an absent session until a Redis call succeeds (stale pooled connections used up)."""
    deadline = time.monotonic() + within_s
    while True:
        errors = mem.health().redis_errors
        await mem.load_context("probe")
        health = mem.health()
        if health.redis_errors == errors and health.redis_breaker == "closed":
            return
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.05)


async def test_a_lost_acknowledged_set_is_never_served_after_failover(
    group: RedisSentinelGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica misses the newest META, the primary dies, the replica is promoted."""
    async with clients(tmp_path, group.url, 3, **PATIENT_CLIENT) as (writer, reader, unguarded):
        await writer.append_turn("s", user("t1"))
        group.wait_replicated()
        for mem in (reader, unguarded):  # their L1 windows: [t1], stamped with META v1
            assert [t.content for t in (await mem.load_context("s")).turns] == ["t1"]
        group.block_replication()
        await writer.append_turn("s", user("t2"))  # acknowledged, and so was its SET
        acked, replicated = stored_version(group.primary, "s"), stored_version(group.replica, "s")
        assert acked is not None and replicated is not None and replicated < acked
        old = group.kill_primary().port
        new = await asyncio.to_thread(group.wait_for_new_primary, old)
        assert stored_version(new, "s") == replicated  # the acknowledged SET is lost
        for mem in (reader, unguarded):
            await until_redis_answers(mem)

        # The test can see a stale read: a cache that trusts any stored META (the previous
        # memsdk) validates the old L1 window against it and leaves t2 out.
        trust_all = redis_cache._Script("return redis.call('GET', KEYS[1])")
        with monkeypatch.context() as patch:
            patch.setattr(redis_cache, "_GET", trust_all)
            stale = await unguarded.load_context("s")
        assert [t.content for t in stale.turns] == ["t1"] and stale.source == "l1+redis"

        # memsdk: the META was stored in the dead primary's epoch, so it is not trusted.
        ctx = await reader.load_context("s")
        assert [t.content for t in ctx.turns] == ["t1", "t2"] and ctx.source == "store"
        # The read re-stamped the store's META in the new epoch: warm again from now on.
        deadline = time.monotonic() + 10
        while stored_version(new, "s") != acked:  # the read-through fill runs in the background
            assert time.monotonic() < deadline, stored_version(new, "s")
            await asyncio.sleep(0.02)
        again = await reader.load_context("s")
        assert again.source == "l1+redis" and again.turns == ctx.turns


# --- kill -9 the primary under load -------------------------------------------------------


class FailoverRun:
    """Two clients write and read the same sessions across a failover; what they saw."""

    def __init__(self, sessions: int = 4) -> None:
        self.sessions = [f"f{i}" for i in range(sessions)]
        # Per session: (monotonic time the append returned, turn id), in ack order.
        self.acked: dict[str, list[tuple[float, str]]] = {sid: [] for sid in self.sessions}
        self.violations: list[str] = []
        self.latencies: list[float] = []
        self.append_latencies: list[float] = []
        self.reads = self.appends = 0
        self.killed_at: float | None = None
        self.recovered: dict[int, float] = {}  # client -> seconds from the kill to a Redis hit
        self.failovers: list[float] = []  # seconds from each kill until the Sentinels agree
        self.stop = asyncio.Event()

    async def write(self, mem: MemoryClient, name: int) -> None:
        """Append to every session in turn until stopped; record each acknowledgement."""
        n = 0
        while not self.stop.is_set():
            for sid in self.sessions:
                n += 1
                started = time.monotonic()
                receipt = await mem.append_turn(sid, user(f"{name}-{n}"))
                self.append_latencies.append(time.monotonic() - started)
                # No await between the return and the record: nothing else ran in between.
                self.acked[sid].append((time.monotonic(), receipt.turn_ids[0]))
                self.appends += 1
            await asyncio.sleep(0.005)

    async def read(self, mem: MemoryClient, name: int) -> None:
        """Read every session in turn until stopped; check each read against the acks."""
        while not self.stop.is_set():
            for sid in self.sessions:
                started = time.monotonic()
                before = [tid for at, tid in self.acked[sid] if at < started]
                ctx = await mem.load_context(sid)
                self.latencies.append(time.monotonic() - started)
                self.reads += 1
                self._check(sid, before, [t.turn_id or "" for t in ctx.turns], ctx.source)
                after_kill = self.killed_at is not None and started > self.killed_at
                if after_kill and "redis" in ctx.source and name not in self.recovered:
                    self.recovered[name] = started - (self.killed_at or 0.0)
            await asyncio.sleep(0.005)

    def _check(self, sid: str, before: list[str], ids: list[str], source: str) -> None:
        # Guarantee 5: every turn acknowledged before the read began is in it, as far as
        # the window reaches (last_n newest turns: older ones may have scrolled out).
        if not before:
            return
        if not ids or ids[-1] < max(before):
            self.violations.append(f"{sid} via {source}: newest acked turn missing")
            return
        window = set(ids)
        missing = [tid for tid in before if tid >= ids[0] and tid not in window]
        if missing:
            self.violations.append(f"{sid} via {source}: {len(missing)} acked turns missing")

    def summary(self) -> str:
        """The figures a report needs."""
        return (
            f"appends={self.appends} reads={self.reads} "
            f"read {_percentiles(self.latencies)} append {_percentiles(self.append_latencies)} "
            f"failovers={[round(f, 2) for f in self.failovers]} "
            f"recovered={ {k: round(v, 2) for k, v in self.recovered.items()} }"
        )


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values) or [0.0]
    p99 = ordered[int(len(ordered) * 0.99)]
    return (
        f"p50={statistics.median(ordered) * 1e3:.1f}ms p99={p99 * 1e3:.1f}ms "
        f"max={ordered[-1] * 1e3:.1f}ms"
    )


async def run_kill_primary(
    group: RedisSentinelGroup, tmp_path: Path, *, kills: int, settle_s: float, **settings: Any
) -> FailoverRun:
    """kill -9 the primary `kills` times (the victim restarts as the next replica)."""
    run = FailoverRun()
    victim: RedisServer | None = None
    async with clients(tmp_path, group.url, 2, last_n=30, **settings) as pair:
        tasks = [asyncio.create_task(run.write(mem, i)) for i, mem in enumerate(pair)]
        tasks += [asyncio.create_task(run.read(mem, i)) for i, mem in enumerate(pair)]
        try:
            for kill in range(kills):
                if victim is not None:
                    # Back as an empty node; the Sentinels make it a replica of the primary.
                    await asyncio.to_thread(group.restart, victim)
                    await asyncio.to_thread(group.wait_replicated)
                await asyncio.sleep(settle_s)
                run.recovered.clear()
                run.killed_at = time.monotonic()
                victim = group.kill_primary()
                await asyncio.to_thread(group.wait_for_new_primary, victim.port)
                run.failovers.append(time.monotonic() - run.killed_at)
                deadline = time.monotonic() + 30
                while len(run.recovered) < len(pair):
                    assert time.monotonic() < deadline, run.summary()
                    await asyncio.sleep(0.05)
                print(f"kill -9 primary #{kill + 1}: {run.summary()}")
            await asyncio.sleep(settle_s)
        finally:
            run.stop.set()
            await asyncio.gather(*tasks)  # an error that reached a caller fails the test here
        for mem in pair:
            assert mem.health().redis_breaker == "closed"
    return run


async def test_kill_primary_under_load(group: RedisSentinelGroup, tmp_path: Path) -> None:
    # A short breaker open period, so that recovery measures Sentinel and the client, not
    # the breaker (with the default 5 s, both clients are back ~5.2 s after the kill).
    run = await run_kill_primary(
        group, tmp_path, kills=1, settle_s=1.0, breaker_open_seconds=0.5,
        breaker_max_open_seconds=1.0,
    )  # fmt: skip
    assert run.violations == []
    assert run.appends > 100 and run.reads > 100
    # Both clients use Redis again without a restart, within the failover (down-after +
    # election + promotion) + the breaker's longest open period.
    assert max(run.recovered.values()) < run.failovers[-1] + 1.0 + STALL_S, run.summary()
    # A read waits for Redis at most one call budget (connect + timeout = 0.3 s) before it
    # falls back to the store.
    assert max(run.latencies) < 0.3 + STALL_S, run.summary()


@pytest.mark.long
async def test_kill_primary_under_load_three_times(
    group: RedisSentinelGroup, tmp_path: Path
) -> None:
    """The full-length run, with the default breaker: each node is killed in turn."""
    run = await run_kill_primary(group, tmp_path, kills=3, settle_s=5.0)
    assert run.violations == []
    assert max(run.latencies) < 0.3 + STALL_S, run.summary()


# --- a partition: the old primary is cut off, its clients are not -------------------------


async def partitioned(tmp_path: Path, **server_config: Any) -> tuple[list[str], str]:
    """Run the split-brain script; return what the late client read last, and from where.

    Two replicas, so that the promoted one still has a replica after the old primary is
    cut off. A writer whose connections stay on the old primary appends after the
    Sentinels promoted a replica; a late client (so it reaches the new primary) had written
    the turn before, so its L1 window matches what the new primary holds.
    """
    group = RedisSentinelGroup().start(replicas=2, **server_config)
    try:
        async with clients(tmp_path, group.url, 1, **PATIENT_CLIENT) as (writer,):
            await writer.append_turn("s", user("t1"))
            group.wait_replicated()
            old = group.partition_primary()
            await asyncio.to_thread(group.wait_for_new_primary, old.port)
            await asyncio.to_thread(group.wait_replicated)  # the other replica follows it
            async with clients(tmp_path, group.url, 1, **PATIENT_CLIENT) as (late,):
                assert len((await late.load_context("s")).turns) == 1  # its L1 window: [t1]
                await late.append_turn("s", user("t2"))  # through to the new primary
                assert (await late.load_context("s")).source == "l1+redis"
                await writer.append_turn("s", user("t3"))  # acknowledged
                ctx = await late.load_context("s")
                return [t.content for t in ctx.turns], ctx.source
    finally:
        group.stop()


async def test_partition_without_min_replicas_serves_a_stale_context(tmp_path: Path) -> None:
    """Why memsdk asks for min-replicas-to-write: without it, the test sees the split brain.

    The writer's connections never fail, so it keeps writing through to the old primary,
    which keeps acknowledging; the new primary keeps the late client's older META.
    """
    turns, source = await partitioned(tmp_path)
    assert turns == ["t1", "t2"] and source == "l1+redis"  # t3 was acknowledged before


async def test_partition_with_min_replicas_fences_the_old_primary(tmp_path: Path) -> None:
    """min-replicas-to-write 1 (lag 1 s): the old primary answers READONLY once its replicas
    are gone; the writer's write-through follows the Sentinels to the new primary at once."""
    turns, source = await partitioned(tmp_path, min_replicas_to_write=1, min_replicas_max_lag=1)
    # "store": the new primary held t3's META, newer than the late client's L1 window, so
    # that window was read again from the store.
    assert turns == ["t1", "t2", "t3"] and source == "store"
