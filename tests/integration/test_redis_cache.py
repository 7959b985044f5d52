"""RedisMetaCache against real redis-server processes: one node, a 3-master cluster, faults.

Every test starts its own servers on free loopback ports (tests/harness/redis_server.py);
the cluster used by most cluster tests is shared by the module. A busy 2-core machine can
freeze this process for a second or more at any moment, so nothing here hangs on the wall
clock: TTLs are read as absolute expiry times on the server's own clock, timeouts are out
of a stall's reach unless a test is about them, and a fault test judges how each call
ended (the error the cache's observer saw, the commands a server received) before how
long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster

from memsdk.cache.base import MetaCache, MetaCacheStats
from memsdk.cache.redis import RedisMetaCache
from memsdk.errors import ConfigError
from memsdk.records import MetaRecord, SummaryRecord
from tests.harness.redis_server import RedisCluster3, RedisServer, free_port, make_tls_files

NOW = 1_900_000_000  # a fixed "now" in epoch seconds: TTLs are computed from it, never waited
# Most tests check what the cache stores, not how fast: a call that timed out in a stall
# would be a miss, and a false failure.
TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
# What a stall may add to a call measured on the event loop's clock.
STALL_S = 3.0


def meta(
    session_id: str,
    version: int,
    *,
    expires_at: int = NOW + 3600,
    summary: SummaryRecord | None = None,
    page_context: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> MetaRecord:
    """A META record; only what the tests vary is a parameter."""
    return MetaRecord(
        session_id=session_id,
        customer_id="cust-42",
        created_at_ms=(NOW - 60) * 1000,
        updated_at_ms=NOW * 1000,
        turn_count=version,
        last_turn_id=f"{NOW * 1000:013d}{version:04d}deadbeef",
        floor_turn_id="0",
        page_context=page_context if page_context is not None else {"page": "home"},
        attributes=attributes if attributes is not None else {"f": 0.1, "n": {"a": [1, None]}},
        expires_at=expires_at,
        version=version,
        summary=summary,
    )


def key(session_id: str) -> str:
    """The key RedisMetaCache uses."""
    return f"memsdk:{{{session_id}}}:meta"


@contextlib.asynccontextmanager
async def opened(url: str, **kwargs: Any) -> AsyncIterator[RedisMetaCache]:
    """An open RedisMetaCache with the test timeouts, closed afterwards."""
    kwargs.setdefault("timeout", TIMEOUT)
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    cache = RedisMetaCache(url, **kwargs)
    await cache.open()
    try:
        yield cache
    finally:
        await cache.aclose()


async def timed(coro: Any) -> tuple[Any, float]:
    """Await `coro`; return its result and the seconds it took on the event loop's clock
    (the one the cache's deadlines run on)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await coro
    return result, loop.time() - start


class Outcomes:
    """A CacheObserver that keeps how each call ended."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def observe(
        self,
        operation: str,
        command: str,
        outcome: str,
        started_ns: int,
        ended_ns: int,
        error: str | None,
    ) -> None:
        self.calls.append((operation, outcome, error))

    def errors(self) -> list[str | None]:
        """The error type of every call that failed, in order."""
        return [error for _, outcome, error in self.calls if outcome == "error"]


def server_ms(server: RedisServer) -> int:
    """The server's clock (TIME) in epoch milliseconds: what its expiry times count from."""
    seconds, micros = server.command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


def assert_ttl_set(server: RedisServer, name: str, ttl_ms: int, since_ms: int) -> None:
    """`name` got a TTL of `ttl_ms` from a command the server ran after `since_ms` (its
    clock): its absolute expiry lies between since_ms + ttl_ms and now + ttl_ms, however
    long anything took in between."""
    expires_at = server.command("PEXPIRETIME", name)
    now_ms = server_ms(server)
    if expires_at == -2:
        # Already gone: only a TTL that the time since could have run out allows that.
        assert now_ms - since_ms >= ttl_ms, (since_ms, now_ms, ttl_ms)
        return
    assert since_ms + ttl_ms <= expires_at <= now_ms + ttl_ms, (since_ms, expires_at, now_ms)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster3]:
    """Three masters shared by the module's cluster tests (each restores what it changes)."""
    clu = RedisCluster3().start()
    try:
        yield clu
    finally:
        clu.stop()


# --- one node: the contract ------------------------------------------------------------


async def test_satisfies_the_protocol_and_round_trips(server: RedisServer) -> None:
    summary = SummaryRecord(
        text="Kunde sucht Wanderschuhe 🥾 — Größe 44",
        through_turn_id="0000000000001",
        created_at_ms=NOW * 1000,
        expires_at=NOW + 3600,
    )
    page = {"url": "https://example.com/ホラー漫画?q=a&b", "cart": ["B08X1YRSTR"], "\u2028": "😀"}
    record = meta("sess-1", 7, summary=summary, page_context=page)
    async with opened(server.url) as cache:
        typed: MetaCache = cache  # the protocol, checked by mypy on the tests too
        assert typed.description == "redis"
        assert await cache.get("sess-1") is None
        assert await cache.put(record, now_s=NOW) is True
        assert await cache.get("sess-1") == record
        assert cache.stats() == MetaCacheStats(hits=1, misses=1, errors=0, writes=1)


def replid(server: RedisServer) -> bytes:
    """The server's master_replid: the epoch memsdk stamps on what it stores there."""
    return str(server.command("INFO", "replication")["master_replid"]).encode()


async def test_value_is_version_prefix_epoch_plus_msgpack(server: RedisServer) -> None:
    record = meta("s.v:1-x", 2**60 + 3)
    async with opened(server.url) as cache:
        assert await cache.put(record, now_s=NOW)
    raw = server.command("GET", key("s.v:1-x"))
    assert len(replid(server)) == 40
    assert raw == b"%020d" % (2**60 + 3) + replid(server) + msgspec.msgpack.encode(record)
    assert server.command("KEYS", "*") == [key("s.v:1-x").encode()]


async def test_ints_beyond_msgpack_round_trip_as_json(server: RedisServer) -> None:
    tricky = {"big": 2**70, "neg": -(2**65), "tiny": 5e-324, "z": -0.0, "u": "\u2028😀"}
    record = meta("s", 3, attributes=tricky, page_context={"n": 2**64})
    async with opened(server.url) as cache:
        assert await cache.put(record, now_s=NOW)
        assert await cache.get("s") == record
        assert not await cache.put(meta("s", 2), now_s=NOW)
        assert cache.stats().errors == 0
    assert server.command("GET", key("s"))[60:61] == b"{"


async def test_lower_or_equal_version_never_overwrites(server: RedisServer) -> None:
    async with opened(server.url) as cache:
        assert await cache.put(meta("s", 5), now_s=NOW)
        assert not await cache.put(meta("s", 4), now_s=NOW)
        assert not await cache.put(meta("s", 5, page_context={"other": 1}), now_s=NOW)
        assert (await cache.get("s")) == meta("s", 5)
        assert await cache.put(meta("s", 6), now_s=NOW)
        # 2^60 and 2^60 + 1 are the same double: a numeric compare in Lua would let the
        # older version through.
        assert await cache.put(meta("big", 2**60 + 1), now_s=NOW)
        assert not await cache.put(meta("big", 2**60), now_s=NOW)
        got = await cache.get("big")
        assert got is not None and got.version == 2**60 + 1
        assert cache.stats().stale_writes_refused == 3
        assert cache.stats().writes == 3
        assert cache.stats().errors == 0


async def test_tombstone_blocks_older_live_version_and_gets_the_short_ttl(
    server: RedisServer,
) -> None:
    async with opened(server.url, tombstone_ttl_seconds=120) as cache:
        assert await cache.put(meta("s", 3), now_s=NOW)
        tombstone = meta("s", 4, expires_at=NOW)  # expires_at <= now: expired
        since = server_ms(server)
        assert await cache.put(tombstone, now_s=NOW)
        assert_ttl_set(server, key("s"), 120_000, since)
        assert not await cache.put(meta("s", 3), now_s=NOW)
        assert not await cache.put(meta("s", 2, expires_at=NOW + 10), now_s=NOW)
        assert await cache.get("s") == tombstone
        # A newer incarnation replaces the tombstone and takes the session's TTL again.
        since = server_ms(server)
        assert await cache.put(meta("s", 5, expires_at=NOW + 500), now_s=NOW)
        assert_ttl_set(server, key("s"), 500_000, since)


async def test_live_ttl_is_expires_at_minus_now(server: RedisServer) -> None:
    # (session, expires_at, now_s, the TTL in seconds that follows); 1 s is the shortest.
    cases = [
        ("a", NOW + 86_400, NOW, 86_400),
        ("b", NOW + 1, NOW, 1),
        ("c", NOW + 7, NOW - 100, 107),
    ]
    async with opened(server.url) as cache:
        for sid, expires_at, now_s, ttl in cases:
            since = server_ms(server)
            assert await cache.put(meta(sid, 1, expires_at=expires_at), now_s=now_s)
            assert_ttl_set(server, key(sid), ttl * 1000, since)


async def test_invalidate(server: RedisServer) -> None:
    async with opened(server.url) as cache:
        assert await cache.put(meta("s", 9), now_s=NOW)
        assert await cache.invalidate("s") is True
        assert await cache.get("s") is None
        assert await cache.invalidate("never-written") is True
        # After an invalidate any version may fill again: the store decides what is newest.
        assert await cache.put(meta("s", 1), now_s=NOW)
        assert server.command("EXISTS", key("s")) == 1


async def test_undecodable_value_is_an_error_a_miss_and_deleted(server: RedisServer) -> None:
    server.command("SET", key("junk"), b"not a version" + b"\xff" * 30)
    # A good prefix whose payload says another version is corrupt too.
    server.command(
        "SET", key("liar"), b"%020d" % 8 + replid(server) + msgspec.msgpack.encode(meta("liar", 9))
    )
    async with opened(server.url) as cache:
        assert await cache.get("junk") is None
        assert await cache.get("liar") is None
        assert cache.stats() == MetaCacheStats(hits=0, misses=2, errors=2)
        # A stale-but-foreign value never blocks a write.
        server.command("SET", key("w"), b"garbage")
        assert await cache.put(meta("w", 1), now_s=NOW)
    assert server.command("EXISTS", key("junk"), key("liar")) == 0


async def test_a_bad_session_id_never_becomes_a_key(server: RedisServer) -> None:
    async with opened(server.url) as cache:
        for bad in ("a}b", "{x}", "", "x" * 129, "new\nline", "sp ace"):
            assert await cache.get(bad) is None
            assert await cache.put(meta(bad, 1), now_s=NOW) is False
            assert await cache.invalidate(bad) is False
        assert cache.stats().errors == 18
    assert server.command("DBSIZE") == 0


async def test_noscript_after_script_flush(server: RedisServer) -> None:
    async with opened(server.url) as cache:
        assert await cache.put(meta("s", 1), now_s=NOW)  # a new server: NOSCRIPT, then EVAL
        server.command("SCRIPT", "FLUSH")
        assert await cache.put(meta("s", 2), now_s=NOW)
        assert await cache.put(meta("s", 3), now_s=NOW)  # cached again by the EVAL
        assert cache.stats().errors == 0
    stats = server.command("INFO", "commandstats")
    assert stats["cmdstat_eval"]["calls"] == 2
    assert stats["cmdstat_evalsha"]["calls"] == 3


# --- epochs: what a promoted replica holds is not trusted --------------------------------


def promote_in_place(server: RedisServer) -> None:
    """What a failover does to the replica it promotes: REPLICAOF NO ONE, a new replid.

    The node replicates from a port where nothing listens, so it keeps its data."""
    server.command("REPLICAOF", "127.0.0.1", str(free_port()))
    server.command("REPLICAOF", "NO", "ONE")


async def test_a_meta_stored_before_a_promotion_is_a_miss_until_restamped(
    server: RedisServer,
) -> None:
    async with opened(server.url) as cache:
        assert await cache.put(meta("s", 5), now_s=NOW)
        before = replid(server)
        promote_in_place(server)
        assert replid(server) != before
        assert server.command("EXISTS", key("s")) == 1  # still there, but maybe outdated
        assert await cache.get("s") is None
        stats = cache.stats()
        assert (stats.misses, stats.previous_epoch, stats.errors) == (1, 1, 0)
        # Never replaced by an older version, even though it is not trusted...
        assert not await cache.put(meta("s", 4), now_s=NOW)
        assert server.command("GET", key("s"))[20:60] == before
        # ...but re-stamped by the same one (read from the store) or a newer one.
        assert await cache.put(meta("s", 5), now_s=NOW)
        assert await cache.get("s") == meta("s", 5)
        assert not await cache.put(meta("s", 5), now_s=NOW)  # now in this epoch: equal refused
        assert await cache.put(meta("s", 6), now_s=NOW)
        assert await cache.get("s") == meta("s", 6)


async def test_a_value_without_an_epoch_is_a_miss_and_replaced(server: RedisServer) -> None:
    """The previous format (version + msgpack, no epoch): what a rolling upgrade finds."""
    server.command("SET", key("s"), b"%020d" % 3 + msgspec.msgpack.encode(meta("s", 3)))
    async with opened(server.url) as cache:
        assert await cache.get("s") is None
        assert cache.stats().previous_epoch == 1 and cache.stats().errors == 0
        assert not await cache.put(meta("s", 2), now_s=NOW)
        assert await cache.put(meta("s", 3), now_s=NOW)
        assert await cache.get("s") == meta("s", 3)


# --- read-through fills: leases -------------------------------------------------------


async def test_a_miss_leases_the_key_to_one_reader_and_its_fill_lands(server: RedisServer) -> None:
    async with opened(server.url) as cache:
        since = server_ms(server)
        first = await cache.lookup("s")
        assert first.meta is None and first.lease is not None
        assert (await cache.lookup("s")).lease is None  # one reader at a time fills
        assert await cache.get("s") is None  # a lease is a miss, never a value
        assert_ttl_set(server, key("s"), 5000, since)  # the lease ends on its own
        assert not await cache.fill(meta("s", 3), now_s=NOW, lease=None)  # not the holder
        assert not await cache.fill(meta("s", 3), now_s=NOW, lease="f" * 16)
        since = server_ms(server)
        assert await cache.fill(meta("s", 3), now_s=NOW, lease=first.lease)
        assert await cache.get("s") == meta("s", 3)
        assert_ttl_set(server, key("s"), 3_600_000, since)  # the session's TTL, as put()
        hit = await cache.lookup("s")
        assert hit == (meta("s", 3), None)
        stats = cache.stats()
        assert (stats.errors, stats.writes, stats.stale_writes_refused) == (0, 1, 2)


@pytest.mark.parametrize("lost_by", ["flushall", "invalidate", "eviction"])
async def test_a_fill_never_lands_after_the_key_was_lost(server: RedisServer, lost_by: str) -> None:
    """The race the property machine found: a reader read META v1 from the store, a writer
    wrote v2 through, Redis lost the key, then the reader's fill arrived. Storing v1 then
    made validated readers trust it over the store's v2."""
    async with opened(server.url) as cache:
        lease = (await cache.lookup("s")).lease
        assert lease is not None
        assert await cache.put(meta("s", 2), now_s=NOW, essential=True)  # the write-through
        if lost_by == "flushall":
            server.command("FLUSHALL")
        elif lost_by == "invalidate":
            assert await cache.invalidate("s")
        else:
            server.command("DEL", key("s"))  # what allkeys-lru does to a cold key
        assert not await cache.fill(meta("s", 1), now_s=NOW, lease=lease)
        assert server.command("EXISTS", key("s")) == 0
        # The next reader's lookup leases the key again and fills what the store says.
        again = await cache.lookup("s")
        assert again.lease is not None and again.lease != lease
        assert not await cache.fill(meta("s", 1), now_s=NOW, lease=lease)  # still not
        assert await cache.fill(meta("s", 2), now_s=NOW, lease=again.lease)
        assert await cache.get("s") == meta("s", 2)


async def test_a_write_through_ends_a_lease_and_a_fill_only_replaces_older(
    server: RedisServer,
) -> None:
    async with opened(server.url) as cache:
        lease = (await cache.lookup("s")).lease
        assert await cache.put(meta("s", 2), now_s=NOW, essential=True)  # replaces the lease
        assert not await cache.fill(meta("s", 1), now_s=NOW, lease=lease)
        assert not await cache.fill(meta("s", 2), now_s=NOW, lease=lease)
        # Over a value this primary stored, a fill needs no lease: newer replaces older.
        assert await cache.fill(meta("s", 3), now_s=NOW, lease=None)
        assert await cache.get("s") == meta("s", 3)


async def test_another_primarys_value_is_replaced_only_through_a_lease(
    server: RedisServer,
) -> None:
    async with opened(server.url) as cache:
        assert await cache.put(meta("s", 5), now_s=NOW)
        promote_in_place(server)
        # Never re-stamped by a fill without a lease: the store may hold a newer META whose
        # write-through the old primary took and lost.
        assert not await cache.fill(meta("s", 6), now_s=NOW, lease=None)
        found = await cache.lookup("s")
        assert found.meta is None and found.lease is not None
        assert cache.stats().previous_epoch == 1
        assert server.command("GET", key("s")) == b"L" + found.lease.encode()
        assert await cache.fill(meta("s", 5), now_s=NOW, lease=found.lease)
        assert await cache.get("s") == meta("s", 5)


async def test_a_full_noeviction_redis_gives_no_lease_and_no_error() -> None:
    srv = RedisServer().start(maxmemory_policy="noeviction")
    try:
        async with opened(srv.url) as cache:
            srv.config_set("maxmemory", "1")
            assert await cache.lookup("s") == (None, None)
            assert srv.command("EXISTS", key("s")) == 0
            assert cache.stats().errors == 0 and cache.stats().misses == 1
    finally:
        srv.stop()


async def test_a_replica_is_never_read() -> None:
    primary = RedisServer().start()
    replica = RedisServer().start(replicaof=f"127.0.0.1 {primary.port}")
    try:
        async with opened(primary.url) as cache:
            assert await cache.put(meta("s", 1), now_s=NOW)
        deadline = time.monotonic() + 10
        while replica.command("EXISTS", key("s")) != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        async with opened(replica.url) as cache:
            assert await cache.get("s") is None  # READONLY from the script: an error
            assert await cache.lookup("absent") == (None, None)  # no lease on a replica
            assert await cache.put(meta("s", 2), now_s=NOW) is False
            assert cache.stats().errors == 2 and cache.stats().hits == 0
            assert replica.command("EXISTS", key("absent")) == 0
    finally:
        replica.stop()
        primary.stop()


async def test_a_primary_fenced_by_min_replicas_is_never_read(server: RedisServer) -> None:
    """min-replicas-to-write set and no replica in reach: the old side of a partition."""
    async with opened(server.url) as cache:
        assert await cache.put(meta("s", 1), now_s=NOW)
        server.config_set("min_replicas_to_write", 1)  # and no replica at all
        assert await cache.get("s") is None
        assert await cache.put(meta("s", 2), now_s=NOW) is False
        assert cache.stats().errors == 2
        server.config_set("min_replicas_to_write", 0)
        assert await cache.get("s") == meta("s", 1)


# --- lifecycle and configuration -------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379",
        "redis://127.0.0.1",  # no port
        "redis://:6379",
        "redis://127.0.0.1:99999",
        "redis://127.0.0.1:6379/x",
        "redis://127.0.0.1:6379/0?socket_timeout=30",
        "redis+cluster://127.0.0.1:7000/0",
        "rediss+cluster://127.0.0.1:7000",
        "unix:///tmp/redis.sock",
        "",
    ],
)
def test_unsupported_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        RedisMetaCache(url)


def test_config_errors_never_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisMetaCache("redis://:s3cr3t@127.0.0.1:6379/0?x=1")
    assert "s3cr3t" not in str(info.value)
    for kwargs in ({"timeout": 0}, {"connect_timeout": -1}, {"tombstone_ttl_seconds": 0}):
        with pytest.raises(ConfigError):
            RedisMetaCache("redis://127.0.0.1:6379", **kwargs)
    with pytest.raises(ConfigError):
        RedisMetaCache("redis://127.0.0.1:6379", max_connections=0)


async def test_description_is_secret_free_and_lifecycle_is_idempotent() -> None:
    port = free_port()  # nothing listens: open() must not care
    cache = RedisMetaCache(f"redis://:s3cr3t@127.0.0.1:{port}/3")
    assert cache.description == "redis"
    assert RedisMetaCache(f"redis+cluster://:pw@127.0.0.1:{port}").description == "redis-cluster"
    await cache.open()
    await cache.open()
    assert await cache.get("s") is None
    await cache.aclose()
    await cache.aclose()
    assert await cache.get("s") is None  # closed: a miss, never an exception
    assert await cache.put(meta("s", 1), now_s=NOW) is False
    assert cache.stats().errors == 3


async def test_password_and_db_from_the_url() -> None:
    srv = RedisServer().start(requirepass="s3cr3t")
    try:
        async with opened(f"redis://:s3cr3t@127.0.0.1:{srv.port}/2") as cache:
            assert await cache.put(meta("s", 1), now_s=NOW)
            assert await cache.get("s") == meta("s", 1)
        async with opened(f"redis://:wrong@127.0.0.1:{srv.port}/2") as cache:
            assert await cache.get("s") is None
            assert cache.stats().errors == 1
        with srv.client(db=2) as client:
            assert client.exists(key("s")) == 1
    finally:
        srv.stop()


async def test_rediss_with_tls_and_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tls_files(tmp_path)
    tls_port = free_port()
    srv = RedisServer().start(
        tls_port=tls_port,
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server.key",
        tls_ca_cert_file=tmp_path / "ca.pem",
        tls_auth_clients="no",
        requirepass="s3cr3t",
    )
    try:
        # The URL takes no options, so a private CA comes from OpenSSL's default path.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        async with opened(f"rediss://:s3cr3t@127.0.0.1:{tls_port}/0") as cache:
            assert await cache.put(meta("s", 1), now_s=NOW)
            assert await cache.get("s") == meta("s", 1)
            assert cache.stats().errors == 0
        # Plain redis:// against the TLS port fails like any broken server: a miss.
        async with opened(f"redis://:s3cr3t@127.0.0.1:{tls_port}") as cache:
            assert await cache.get("s") is None
            assert cache.stats().errors == 1
    finally:
        srv.stop()


async def test_cancellation_propagates(server: RedisServer) -> None:
    async with opened(server.url) as cache:
        # Scripts wait until UNPAUSE (allowed while only writes are paused): the get is
        # still waiting when it is cancelled, however long this process stalls first.
        server.command("CLIENT", "PAUSE", "60000", "WRITE")
        try:
            task = asyncio.create_task(cache.get("s"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            server.command("CLIENT", "UNPAUSE")
        assert await cache.put(meta("s", 1), now_s=NOW)  # the pool recovered
        assert cache.stats().errors == 0


async def test_the_pool_is_bounded_and_a_full_pool_is_a_miss(server: RedisServer) -> None:
    async with opened(server.url, max_connections=2) as cache:
        assert await cache.put(meta("s", 1), now_s=NOW)
        server.command("CLIENT", "PAUSE", "200", "ALL")  # hold the two connections busy
        results = await asyncio.gather(*(cache.get("s") for _ in range(20)))
        stats = cache.stats()
        assert results.count(meta("s", 1)) == stats.hits == 2
        assert stats.errors == 18  # MaxConnectionsError: fail fast, never queue
        clients = server.command("INFO", "clients")["connected_clients"]
        assert clients <= 3  # the cache's two and this probe


# --- faults: down, hanging, memory -----------------------------------------------------


async def test_killed_server_is_a_fast_miss_and_a_restart_heals(server: RedisServer) -> None:
    outcomes = Outcomes()
    async with opened(server.url, observer=outcomes) as cache:
        assert await cache.put(meta("s", 1), now_s=NOW)
        assert await cache.get("s") is not None
        server.kill()
        for _ in range(3):
            got, took = await timed(cache.get("s"))
            assert got is None and took < TIMEOUT
            stored, took = await timed(cache.put(meta("s", 2), now_s=NOW))
            assert stored is False and took < TIMEOUT
            dropped, took = await timed(cache.invalidate("s"))
            assert dropped is False and took < TIMEOUT
        assert cache.stats().errors == 9
        # Fast: each call ended on the refused connection, none waited out a timeout.
        assert outcomes.errors() == ["ConnectionError"] * 9
        server.restart()  # same port, empty
        assert await cache.put(meta("s", 3), now_s=NOW)  # the same instance heals
        assert await cache.get("s") == meta("s", 3)
        errors = cache.stats().errors
        assert await cache.get("s") == meta("s", 3)
        assert cache.stats().errors == errors


async def test_a_server_that_never_answers_costs_one_timeout() -> None:
    peers: list[asyncio.StreamWriter] = []
    received: list[bytearray] = []  # what each connection sent
    ended = 0

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal ended
        peers.append(writer)
        sent = bytearray()
        received.append(sent)
        try:
            while data := await reader.read(65536):
                sent.extend(data)  # swallow every command, answer nothing
        finally:
            ended += 1

    # A call ends after one timeout (0.5 s) or at the latest on its deadline (one connect
    # plus one command: 1 s): 20 calls waiting in turn (10 s or more) could never pass for
    # 20 waiting at once, stall or not.
    timeout = 0.5
    budget = 2 * timeout
    outcomes = Outcomes()
    hole = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    url = f"redis://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    try:
        async with opened(
            url, timeout=timeout, connect_timeout=timeout, observer=outcomes
        ) as cache:
            for _ in range(2):
                got, took = await timed(cache.get("s"))
                assert got is None and took < budget + STALL_S
                stored, took = await timed(cache.put(meta("s", 1), now_s=NOW))
                assert stored is False and took < budget + STALL_S
            # Concurrent callers each wait one timeout, not one each in turn.
            results, took = await timed(asyncio.gather(*(cache.get(f"s{i}") for i in range(20))))
            assert results == [None] * 20 and took < budget + STALL_S
            assert cache.stats().errors == 24
        # Every call ended on a timeout of the cache's, and sent its command at most once:
        # one attempt each, no retry (a stall may end a call while it still connects).
        assert outcomes.errors() == ["TimeoutError"] * 24
        deadline = loop.time() + 30
        while ended < len(peers):  # every connection closed, all it sent read
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        assert 0 < sum(sent.count(b"EVALSHA") for sent in received) <= 24
    finally:
        hole.close()
        for writer in peers:
            writer.close()
        await hole.wait_closed()


@pytest.mark.parametrize("headroom", [64 * 1024, 1024 * 1024])
async def test_allkeys_lru_eviction_is_a_miss_never_an_error(headroom: int) -> None:
    # maxmemory = what the server uses with the scripts loaded and no key (~1 MB on Redis
    # 7.0) + headroom: 64 KB keeps a few dozen METAs (nearly every write evicts), 1 MB
    # keeps the newest ~1,000. Relative, because the baseline moves with the version.
    srv = RedisServer().start(maxmemory_policy="allkeys-lru")
    try:
        page = {"blob": "x" * 600}
        async with opened(srv.url) as cache:
            assert await cache.put(meta("warm-up", 1), now_s=NOW)
            assert await cache.invalidate("warm-up")
            srv.config_set("maxmemory", srv.command("INFO", "memory")["used_memory"] + headroom)
            for i in range(3000):
                assert await cache.put(meta(f"s{i}", 1, page_context=page), now_s=NOW)
            assert srv.command("INFO", "stats")["evicted_keys"] > 0
            # Newest first: every GET refreshes its key's LRU clock, so reading oldest-first
            # would leave s2999 the least recently used key by the time the loop reached it
            # (and a server that briefly crossed maxmemory during the reads evicted it: seen
            # in CI).
            found = [await cache.get(f"s{i}") for i in reversed(range(3000))][::-1]
            # Redis's LRU is approximate (it samples keys): most old keys go, not all.
            assert found[:1000].count(None) > 500
            if headroom >= 1024 * 1024:
                assert found[-1] == meta("s2999", 1, page_context=page)
            stats = cache.stats()
            assert stats.errors == 0
            assert stats.misses == found.count(None) > 0
            assert stats.hits == 3000 - stats.misses
    finally:
        srv.stop()


async def test_noeviction_oom_refuses_puts_without_raising() -> None:
    srv = RedisServer().start(maxmemory_policy="noeviction")
    try:
        async with opened(srv.url) as cache:
            assert await cache.put(meta("kept", 1), now_s=NOW)
            srv.config_set("maxmemory", "1")  # below what the server already uses
            for i in range(5):
                assert await cache.put(meta(f"s{i}", 1), now_s=NOW) is False
            assert await cache.put(meta("kept", 2), now_s=NOW) is False
            assert cache.stats().errors == 6
            # Reads and deletes still work under OOM.
            assert await cache.get("kept") == meta("kept", 1)
            assert await cache.invalidate("kept") is True
            srv.config_set("maxmemory", "0")
            assert await cache.put(meta("s0", 1), now_s=NOW)
    finally:
        srv.stop()


# --- cluster ---------------------------------------------------------------------------


def _sessions_by_port(cluster: RedisCluster3, count: int) -> dict[int, list[str]]:
    by_port: dict[int, list[str]] = {port: [] for port in cluster.ports}
    ranges = cluster.slot_ranges(cluster.nodes[0])
    for i in range(count):
        sid = f"sess-{i}"
        slot = cluster.keyslot(key(sid))
        # The hash tag: only the session id decides the slot.
        assert slot == cluster.keyslot(sid)
        port = next(p for start, end, p in ranges if start <= slot <= end)
        by_port[port].append(sid)
    return by_port


async def test_cluster_spreads_sessions_and_every_op_works(cluster: RedisCluster3) -> None:
    by_port = _sessions_by_port(cluster, 60)
    assert all(len(sids) >= 5 for sids in by_port.values()), by_port
    async with opened(cluster.url) as cache:
        assert cache.description == "redis-cluster"
        for port, sids in by_port.items():
            node = next(n for n in cluster.nodes if n.port == port)
            for sid in sids:
                assert await cache.put(meta(sid, 2), now_s=NOW)
                assert not await cache.put(meta(sid, 1), now_s=NOW)
                assert node.command("EXISTS", key(sid)) == 1  # on the slot's own master
                assert await cache.get(sid) == meta(sid, 2)
                assert await cache.invalidate(sid)
                assert await cache.get(sid) is None
                assert node.command("EXISTS", key(sid)) == 0
        assert cache.stats().errors == 0
        assert cache.stats().stale_writes_refused == 60


async def test_cluster_master_killed_then_restarted(cluster: RedisCluster3) -> None:
    by_port = _sessions_by_port(cluster, 60)
    victim = cluster.nodes[2]
    lost = by_port[cluster.ports[2]][:5]
    for node in cluster.nodes:
        node.command("CONFIG", "RESETSTAT")
    outcomes = Outcomes()
    async with opened(cluster.url, observer=outcomes) as cache:
        for sid in lost:
            assert await cache.put(meta(sid, 1), now_s=NOW)
        victim.kill()
        try:
            for sid in lost:
                got, took = await timed(cache.get(sid))
                assert got is None and took < TIMEOUT
                stored, took = await timed(cache.put(meta(sid, 2), now_s=NOW))
                assert stored is False and took < TIMEOUT
            assert cache.stats().errors == 10
            # A dead master refuses connections: no call waited out a timeout.
            assert outcomes.errors() == ["ConnectionError"] * 10
            # Each error refreshed the topology, but the COMMAND table was fetched once.
            stats = [node.command("INFO", "commandstats") for node in cluster.nodes[:2]]
            assert sum(s.get("cmdstat_command", {}).get("calls", 0) for s in stats) == 1
        finally:
            victim.restart()  # nodes.conf kept: it rejoins, empty
            cluster.wait_ok()
        # The same instance finds its way back (topology refresh after the errors).
        deadline = time.monotonic() + 30
        while not await cache.put(meta(lost[0], 3), now_s=NOW):
            assert time.monotonic() < deadline, cache.stats()
            await asyncio.sleep(0.1)
        for sid in lost:
            assert await cache.put(meta(sid, 4), now_s=NOW)
            assert await cache.get(sid) == meta(sid, 4)


async def test_cluster_reshard_under_load() -> None:
    """Move every slot of one master to another while tasks put and get (MOVED and ASK)."""
    clu = RedisCluster3().start()
    try:
        source, target = clu.node_ids()[:2]
        by_port = _sessions_by_port(clu, 200)
        sids = by_port[clu.ports[0]][:24]
        slots = clu.slot_count(clu.ports[0])
        attempted = dict.fromkeys(sids, 0)
        acked = dict.fromkeys(sids, 0)
        calls = 0
        async with opened(clu.url) as cache:
            for sid in sids:
                attempted[sid] = acked[sid] = 1
                assert await cache.put(meta(sid, 1, page_context={"pad": "p" * 200}), now_s=NOW)

            async def driver(mine: list[str], stop: asyncio.Event) -> None:
                nonlocal calls
                while not stop.is_set():
                    for sid in mine:
                        version = attempted[sid] + 1
                        attempted[sid] = version
                        if await cache.put(meta(sid, version), now_s=NOW):
                            acked[sid] = version
                        got = await cache.get(sid)  # each session has one driver: in order
                        assert got is None or acked[sid] <= got.version <= attempted[sid]
                        calls += 2
                    await asyncio.sleep(0)

            stop = asyncio.Event()
            drivers = [asyncio.create_task(driver(sids[i::4], stop)) for i in range(4)]
            thread = clu.reshard_in_thread(source, target, slots)
            try:
                await asyncio.to_thread(thread.result, 60)
            finally:
                stop.set()
                await asyncio.gather(*drivers)
            clu.wait_ok()
            assert all(clu.node_of_key(key(sid)).port == clu.ports[1] for sid in sids)
            stats = cache.stats()
            for sid in sids:
                moved_unwritten = cache.stats().previous_epoch
                got = await cache.get(sid)
                if got is None:
                    # Moved after its last put: stamped by its old primary, so a miss (one
                    # store read) until the next write re-stamps it; never lost, never stale.
                    assert cache.stats().previous_epoch == moved_unwritten + 1
                else:
                    assert acked[sid] <= got.version <= attempted[sid]
                    # Only a put that failed may be missing, and the next one lands.
                    assert stats.errors > 0 or got.version == attempted[sid]
                assert await cache.put(meta(sid, attempted[sid] + 1), now_s=NOW)
                assert await cache.get(sid) == meta(sid, attempted[sid] + 1)
            # A planned reshard is not an outage: a few timeouts at most on a busy machine.
            assert stats.errors <= max(5, calls // 100), (calls, stats)
    finally:
        clu.stop()


async def test_cluster_nodes_of_every_dropped_slot_map_are_closed(cluster: RedisCluster3) -> None:
    """Two topology refreshes between two calls: the nodes of both old maps get closed.

    redis-py builds new ClusterNode objects on every refresh and forgets the old ones, open
    sockets and all; left to the garbage collector they warn (ResourceWarning) and hold
    their sockets until then. memsdk closes every one it is handed.
    """
    sid = "orphans-1"
    async with opened(cluster.url) as cache:
        client = cache._client
        assert isinstance(client, RedisCluster)
        assert await cache.put(meta(sid, 1), now_s=NOW)  # connects through the first map
        first = {id(n): n for nodes in client.nodes_manager.slots_cache.values() for n in nodes}
        await client.nodes_manager.initialize()  # map 2 replaces map 1 ...
        assert await cache.get(sid) == meta(sid, 1)  # ... and is used: its node connects
        second = {id(n): n for nodes in client.nodes_manager.slots_cache.values() for n in nodes}
        await client.nodes_manager.initialize()  # map 3, then map 4, with no call between
        await client.nodes_manager.initialize()
        assert await cache.get(sid) == meta(sid, 1)
        current = {id(n) for n in client.nodes_manager.nodes_cache.values()}
        current |= {id(n) for nodes in client.nodes_manager.slots_cache.values() for n in nodes}
        dropped = [n for key, n in {**first, **second}.items() if key not in current]
        assert dropped  # the refreshes really replaced node objects
        for node in dropped:
            assert not any(c.is_connected for c in node._connections), node
    gc.collect()  # nothing left for the collector to warn about (warnings are errors here)
