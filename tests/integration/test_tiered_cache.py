"""The tiers together against real services: L1 + real redis-server + each store.

Every Redis here is a redis-server process the test starts on a free loopback port.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import MemoryClient, Turn
from memsdk.cache.redis import RedisMetaCache
from memsdk.config import Config
from memsdk.errors import StoreUnavailableError
from memsdk.records import MetaRecord
from memsdk.testing import CountingStore, FakeClock, FaultyStore, crash
from memsdk.wiring import build_store, redis_namespace
from tests.conftest import TEST_TIMEOUTS, ClientFactory
from tests.harness.redis_server import RedisCluster3, RedisServer, free_port

# Where a test counts on Redis answering: a busy 2-core machine can stall this process
# for seconds, and a Redis call that times out then is a miss (a read from the store).
PATIENT_REDIS: dict[str, Any] = {"redis_timeout": 5.0}


def user(text: str) -> Turn:
    return Turn(role="user", content=text)


async def test_warm_validated_read_costs_no_store_call(
    make_client: ClientFactory, store_settings: dict[str, Any], redis_server: RedisServer
) -> None:
    counting = CountingStore(build_store(Config(**store_settings)))
    a = await make_client(redis_url=redis_server.url, **PATIENT_REDIS)
    b = await make_client(redis_url=redis_server.url, store=counting, **PATIENT_REDIS)
    await a.append_turns("s", [user("q1"), Turn(role="assistant", content="a1")])
    first = await b.load_context("s")
    assert first.source == "store"  # cold L1: META and turns from the store
    counting.reset()
    warm = await b.load_context("s")
    assert warm.source == "l1+redis" and warm.turns == first.turns
    assert sum(counting.calls.values()) == 0
    await a.append_turn("s", user("q2"))  # another process writes: Redis has the new stamp
    ctx = await b.load_context("s")
    assert [t.content for t in ctx.turns] == ["q1", "a1", "q2"]
    # Redis's newer META says the window is behind: META and turns from the store, in
    # parallel (Redis never decides on its own which turns a session has).
    assert ctx.source == "store" and counting.calls == {"get_meta": 1, "query_turns": 1}
    await a.update_meta("s", page_context={"asin": "B2"})
    ctx = await b.load_context("s")
    assert ctx.source == "l1+redis" and ctx.meta is not None
    assert ctx.meta.page_context == {"asin": "B2"}
    await a.delete_session("s")
    assert (await b.load_context("s")).meta is None
    h = b.health()
    assert h.redis == "redis" and h.redis_hits >= 3 and h.redis_errors == 0


async def test_redis_behind_own_write_is_not_trusted(
    make_client: ClientFactory, redis_server: RedisServer
) -> None:
    mem = await make_client(redis_url=redis_server.url)
    key = f"memsdk:{redis_namespace(mem.config)}:{{s}}:meta"
    await mem.append_turn("s", user("q1"))
    stale = redis_server.command("GET", key)
    assert stale is not None
    await mem.append_turn("s", user("q2"))
    redis_server.command("SET", key, stale)  # Redis lost the newest META
    ctx = await mem.load_context("s")
    assert [t.content for t in ctx.turns] == ["q1", "q2"]


async def test_a_write_whose_reply_was_lost_is_not_hidden_by_redis(
    make_client: ClientFactory, store_settings: dict[str, Any], redis_server: RedisServer
) -> None:
    """Found by tests/property: the write landed, its write-through never ran, and Redis
    kept validating an older META for every reader until the next write."""
    store = FaultyStore(build_store(Config(**store_settings)))
    writer = await make_client(redis_url=redis_server.url, store=store)
    reader = await make_client(redis_url=redis_server.url)
    await writer.append_turn("s", user("q1"))
    assert (await reader.load_context("s")).source == "store"  # L1 warm
    store.lose_commit_replies = 1
    with pytest.raises(StoreUnavailableError) as raised:
        await writer.update_meta("s", page_context={"asin": "B1"})
    assert raised.value.maybe_applied
    ctx = await reader.load_context("s")  # the update is in the store: show it
    assert ctx.meta is not None and ctx.meta.page_context == {"asin": "B1"}


@pytest.mark.parametrize("store_settings", ["sqlite", "dynamodb-lean"], indirect=True)
async def test_eviction_storm_loses_no_session(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    """maxmemory 2mb + allkeys-lru: the original design lost 30% of sessions this way."""
    await eviction_storm(make_client, store_settings)


@pytest.mark.long
@pytest.mark.parametrize("store_settings", ["dynamodb-aioboto3"], indirect=True)
async def test_eviction_storm_on_the_reference_data_path(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    """The same storm on the aioboto3 path (~100 s here): it tests the cache, not the path."""
    await eviction_storm(make_client, store_settings)


async def eviction_storm(make_client: ClientFactory, store_settings: dict[str, Any]) -> None:
    """Thousands of sessions through a Redis too small for them; every one read back."""
    server = RedisServer().start(maxmemory="2mb", maxmemory_policy="allkeys-lru")
    try:
        # ~1,100 sessions fit in 2 MB: these overflow it by 2-3x (evictions are asserted).
        sessions = 3_000 if store_settings["store"].startswith("sqlite") else 2_000
        writer = await make_client(redis_url=server.url)
        reader = await make_client(redis_url=server.url)  # its L1 holds every window
        limit = asyncio.Semaphore(32)

        async def write(i: int) -> None:
            async with limit:
                await writer.append_turns(
                    f"storm-{i}",
                    [
                        user(f"q{i}" + "x" * 300),
                        Turn(role="assistant", content=f"a{i}" + "y" * 300),
                    ],
                    customer_id=f"c{i}",
                )

        async def check(i: int, turns: int) -> None:
            async with limit:
                ctx = await reader.load_context(f"storm-{i}", customer_id=f"c{i}")
                assert ctx.meta is not None and ctx.meta.turn_count == turns, i
                assert [t.content[: len(f"q{i}")] for t in ctx.turns][:1] == [f"q{i}"]
                assert len(ctx.turns) == turns

        await asyncio.gather(*(write(i) for i in range(sessions)))
        # Cold reads come from the store (Redis never decides which turns a session has):
        # this pass fills the reader's L1 with every session's window.
        await asyncio.gather(*(check(i, 2) for i in range(sessions)))
        await asyncio.gather(*(write(i) for i in range(sessions)))  # the storm, again
        evicted = int(server.command("INFO", "stats").get("evicted_keys", 0))
        assert evicted > 0
        await asyncio.gather(*(check(i, 4) for i in range(sessions)))
        # Every warm read asked Redis first to validate its window; evictions (and OOM
        # refusals of the fills, which a 2 MB Redis with 64 pooled connections per client
        # produces) only cost misses and store reads, never a turn.
        h = reader.health()
        assert h.redis_hits + h.redis_misses == sessions
        print(
            f"eviction storm: {sessions} sessions, {evicted} Redis keys evicted, every session "
            f"read back whole; Redis hits {h.redis_hits}, misses {h.redis_misses}"
        )
    finally:
        server.stop()


async def test_redis_killed_mid_run_then_restarted_empty(
    make_client: ClientFactory, redis_server: RedisServer
) -> None:
    # A short breaker wait: once Redis is back, the breaker lets a probe through quickly.
    # (Capped: every failed probe while Redis is down doubles the wait, up to the maximum.)
    fast = {"breaker_open_seconds": 0.2, "breaker_max_open_seconds": 0.4, "breaker_min_calls": 10}
    # A killed Redis refuses connections at once; a slow one must not fail the probes.
    fast |= PATIENT_REDIS
    a = await make_client(redis_url=redis_server.url, **fast)
    b = await make_client(redis_url=redis_server.url, **fast)  # warm reads ask Redis
    model: dict[str, list[str]] = {}

    async def step(n: int) -> None:
        sid = f"k{n % 7}"
        await a.append_turn(sid, user(f"m{n}"))
        model.setdefault(sid, []).append(f"m{n}")
        ctx = await b.load_context(sid)
        assert [t.content for t in ctx.turns] == model[sid][-20:]

    for n in range(30):
        await step(n)
    hits_before = b.health().redis_hits
    assert hits_before > 0
    redis_server.kill()
    for n in range(30, 60):  # every call still succeeds, through the store
        await step(n)
    assert b.health().redis_errors > 0
    # The breaker opened: later calls skipped Redis instead of each paying a failed connect.
    assert b.health().redis_breaker in ("open", "half_open")
    redis_server.restart()  # same port, empty
    await asyncio.sleep(0.5)  # past breaker_max_open_seconds: the next call is a probe
    for n in range(60, 90):
        await step(n)
    assert b.health().redis_hits > hits_before  # Redis is used again
    assert int(redis_server.command("DBSIZE")) > 0


async def test_cluster_spread_and_reshard_under_load(tmp_path: Path) -> None:
    """Once, on the embedded store: the store is not what a reshard puts at risk."""
    cluster = RedisCluster3().start()
    store = f"sqlite:///{tmp_path / 'cluster.db'}"
    settings = {**TEST_TIMEOUTS, **PATIENT_REDIS}
    a = MemoryClient(Config(store=store, redis_url=cluster.url, **settings))
    b = MemoryClient(Config(store=store, redis_url=cluster.url, **settings))  # validates L1
    try:
        await a.open()
        await b.open()
        sids = [f"cl-{i}" for i in range(60)]
        for sid in sids:
            await a.append_turn(sid, user(f"{sid}-0"))
        owners = {cluster.node_of_key(f"memsdk:{{{sid}}}:meta").port for sid in sids}
        assert len(owners) == 3  # hash tags spread sessions over every master
        ids = cluster.node_ids()
        reshard = cluster.reshard_in_thread(ids[0], ids[1], 2_000)
        rounds = 0
        model = {sid: [f"{sid}-0"] for sid in sids}
        while reshard.is_alive() or rounds < 3:
            rounds += 1
            for sid in sids:
                text = f"{sid}-{rounds}"
                await a.append_turn(sid, user(text))
                model[sid].append(text)
                ctx = await b.load_context(sid)
                assert [t.content for t in ctx.turns] == model[sid][-20:]
            await asyncio.sleep(0)
        reshard.result(timeout=120)
        assert b.health().redis_hits > 0
        for sid in sids:
            ctx = await b.load_context(sid)
            assert [t.content for t in ctx.turns] == model[sid][-20:]
        # No caller saw an error and nothing was lost; a Redis call the reshard made fail
        # is a miss, and it must stay rare.
        h = b.health()
        assert h.redis_errors * 20 <= h.redis_hits + h.redis_misses
    finally:
        await a.aclose()
        await b.aclose()
        cluster.stop()


_examples = itertools.count()


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["append", "load", "meta", "flush_redis"]),
            st.integers(0, 2),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=25,
    )
)
async def test_validated_never_stale_with_redis(
    store_settings: dict[str, Any], redis_server: RedisServer, ops: list[tuple[str, int, int]]
) -> None:
    """Three clients, shared Redis and store, any interleaving: no read is ever stale."""
    url = redis_server.url
    clients = [
        MemoryClient(Config(**store_settings, **TEST_TIMEOUTS, last_n=5, redis_url=url))
        for _ in range(3)
    ]
    sid = f"hyp-redis-{next(_examples)}"
    model: list[str] = []
    page: dict[str, int] = {}
    for mem in clients:
        await mem.open()
    try:
        for n, (op, who, arg) in enumerate(ops):
            mem = clients[who]
            if op == "append":
                turns = [user(f"{who}.{n}.{k}") for k in range(arg + 1)]
                await mem.append_turns(sid, turns)
                model.extend(t.content for t in turns)
            elif op == "meta":
                page = {"step": n}
                await mem.update_meta(sid, page_context=page)
            elif op == "flush_redis":
                redis_server.command("FLUSHALL")
            else:
                ctx = await mem.load_context(sid)
                assert [t.content for t in ctx.turns] == model[-5:]
                assert (ctx.meta.page_context if ctx.meta else {}) == page
    finally:
        for mem in clients:
            await mem.aclose()


async def test_a_writer_with_an_open_breaker_still_writes_through(
    make_client: ClientFactory,
) -> None:
    """Breakers are per process: the writer's can be open while a reader's is closed.

    Skipping the write-through then leaves Redis with an older META that the reader
    trusts (its L1 window matches it): the reader would miss an acknowledged turn.
    """
    port = free_port()  # Redis is down when the writer starts
    # A generous redis_timeout: a busy machine must not turn the reader's fill into a miss.
    url, slack = f"redis://127.0.0.1:{port}", PATIENT_REDIS
    writer = await make_client(
        redis_url=url, breaker_consecutive_failures=2, breaker_open_seconds=60.0,
        breaker_max_open_seconds=60.0, **slack,
    )  # fmt: skip
    for n in range(3):
        await writer.append_turn("s", user(f"t{n}"))
    assert writer.health().redis_breaker == "open"
    server = RedisServer().start(port=port)
    try:
        reader = await make_client(redis_url=url, **slack)
        deadline = time.monotonic() + 10
        # Read until Redis holds the META (a read-through fill) and validates L1 with it.
        while (await reader.load_context("s")).source != "l1+redis":
            assert time.monotonic() < deadline, reader.health()
            await asyncio.sleep(0.02)
        await writer.append_turn("s", user("t3"))  # the writer's breaker is still open
        assert writer.health().redis_breaker == "open"
        ctx = await reader.load_context("s")
        assert [t.content for t in ctx.turns] == ["t0", "t1", "t2", "t3"]
    finally:
        server.stop()


class _HeldFills(RedisMetaCache):
    """A RedisMetaCache whose read-through fills wait until the test releases them."""

    def __init__(self, url: str, **settings: Any) -> None:
        super().__init__(url, **settings)
        self.release = asyncio.Event()
        self.results: list[bool] = []

    async def fill(self, meta: MetaRecord, *, now_s: int, lease: str | None) -> bool:
        await self.release.wait()
        stored = await super().fill(meta, now_s=now_s, lease=lease)
        self.results.append(stored)
        return stored


async def test_a_late_fill_after_redis_lost_the_key_never_hides_a_write(
    make_client: ClientFactory,
    store_settings: dict[str, Any],
    clock: FakeClock,
    redis_server: RedisServer,
) -> None:
    """Found by tests/property: a reader's read-through fill of META v1, read from the
    store before a writer's v2, landed after Redis lost the key (and v2's write-through
    with it); validated readers then trusted v1 and served a window without the new turn."""
    writer = await make_client(redis_url=redis_server.url)
    held = _HeldFills(redis_server.url, timeout=10.0, connect_timeout=10.0)
    config = Config(**store_settings, **TEST_TIMEOUTS, redis_url=redis_server.url)
    async with MemoryClient(config, clock=clock, meta_cache=held) as reader:
        await writer.append_turn("s", user("q1"))
        assert (await reader.load_context("s")).source == "store"  # cold: its L1 holds v1
        redis_server.command("FLUSHALL")
        first = await reader.load_context("s")  # a miss: META v1 from the store, fill held
        assert [t.content for t in first.turns] == ["q1"] and first.source == "l1+store"
        await writer.append_turn("s", user("q2"))  # v2, written through
        redis_server.command("FLUSHALL")  # ...and lost
        held.release.set()
        deadline = time.monotonic() + 10
        while not held.results:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        ctx = await reader.load_context("s")  # its L1 window says v1: must not be trusted
        assert [t.content for t in ctx.turns] == ["q1", "q2"]
        assert held.results[0] is False  # because the fill of v1 was refused


class _DyingPuts(RedisMetaCache):
    """A RedisMetaCache whose write-throughs never return: the process dies in them."""

    def __init__(self, url: str, **settings: Any) -> None:
        super().__init__(url, **settings)
        self.reached = asyncio.Event()

    async def put(self, meta: MetaRecord, *, now_s: int, essential: bool = False) -> bool:
        self.reached.set()
        await asyncio.Event().wait()
        return False


async def test_a_writer_killed_between_its_flush_and_the_write_through_leaves_redis_clean(
    make_client: ClientFactory,
    store_settings: dict[str, Any],
    clock: FakeClock,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Found by tests/property (long profile): a WAL client killed after its flush had
    committed but before the write-through left Redis with the older META, and validated
    readers in other processes trusted it and served windows without the flushed turns
    for as long as the key lived (the session's TTL). The client that reopens the log drops
    the Redis META of every session it recovers records for, before open() returns, even
    when it cannot reach the store to replay them yet."""
    reader = await make_client(redis_url=redis_server.url, **PATIENT_REDIS)
    await reader.append_turn("s", user("q1"))
    assert (await reader.load_context("s")).source == "l1+redis"  # its window, Redis: v1
    config = Config(
        **store_settings,
        **TEST_TIMEOUTS,
        **PATIENT_REDIS,
        redis_url=redis_server.url,
        wal_dir=str(tmp_path / "wal"),
    )
    dying_cache = _DyingPuts(
        redis_server.url, key_prefix=redis_namespace(config), timeout=10.0, connect_timeout=10.0
    )
    dying = MemoryClient(config, clock=clock, meta_cache=dying_cache)
    await dying.open()
    clock.advance(0.01)  # q2's id above q1's (in one millisecond, two writers' ids tie-break)
    await dying.append_turn("s", user("q2"))  # acknowledged: fsync'd in the WAL
    async with asyncio.timeout(10):
        await dying_cache.reached.wait()  # committed; the SET never ends
    await crash(dying)
    stale = await reader.load_context("s")
    assert [t.content for t in stale.turns] == ["q1"]  # Redis still says v1: the window
    # The process comes back on its log while the store is unreachable from it.
    unreachable = FaultyStore(build_store(config))
    unreachable.down = True
    async with MemoryClient(config, clock=clock, store=unreachable) as restarted:
        assert restarted.health().wal_pending_records == 1
        ctx = await reader.load_context("s")
        assert [t.content for t in ctx.turns] == ["q1", "q2"] and ctx.source == "store"
