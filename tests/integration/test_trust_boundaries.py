"""Every tier is a trust boundary (issue 14): Redis, the WAL file and the store's items are
checked before anything they hold is served, cached, replayed or written back.

Each test plays the attacker (or the careless operator) against a real tier: a private
redis-server whose values the test rewrites, SQLite files, DynamoDB Local.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import SessionOwnershipError, StoreError
from memsdk.limits import MAX_WINDOW_EXTENSION_TURNS
from memsdk.records import MetaRecord
from memsdk.testing import CountingStore, FakeClock, FaultyStore
from memsdk.wal.log import WalOptions, WriteAheadLog
from memsdk.wiring import build_store, redis_namespace
from tests.conftest import TEST_TIMEOUTS
from tests.harness.redis_server import RedisServer

PREFIX = 20 + 40  # version digits + epoch (see memsdk.cache.redis)


def pair(tag: str) -> list[Turn]:
    return [Turn(role="user", content=f"q-{tag}"), Turn(role="assistant", content=f"a-{tag}")]


def config(db: Path, redis: RedisServer | None, **kw: Any) -> Config:
    return Config(
        store=f"sqlite:///{db}",
        redis_url=None if redis is None else redis.url,
        **{**TEST_TIMEOUTS, **kw},
    )


def key(cfg: Config, sid: str) -> str:
    return f"memsdk:{redis_namespace(cfg)}:{{{sid}}}:meta"


def read_value(redis: RedisServer, cfg: Config, sid: str) -> tuple[bytes, MetaRecord]:
    raw: bytes = redis.command("GET", key(cfg, sid))
    assert raw is not None, "the write-through stored META in Redis"
    return raw, msgspec.msgpack.decode(raw[PREFIX:], type=MetaRecord)


def forge(redis: RedisServer, cfg: Config, sid: str, **changes: Any) -> None:
    """Rewrite the session's cached META in place: same version, same epoch, new fields."""
    raw, meta = read_value(redis, cfg, sid)
    forged = msgspec.structs.replace(meta, **changes)
    redis.command("SET", key(cfg, sid), raw[:PREFIX] + msgspec.msgpack.encode(forged), "EX", 600)


async def opened(cfg: Config, **kw: Any) -> MemoryClient:
    client = MemoryClient(cfg, clock=kw.pop("clock", None), store=kw.pop("store", None))
    await client.open()
    return client


@pytest.fixture
async def two_sessions(tmp_path: Path, redis_server: RedisServer) -> Any:
    """Sessions A (customer CA, two appends) and B (customer CB), written through Redis."""
    cfg = config(tmp_path / "m.db", redis_server)
    writer = await opened(cfg)
    a = [await writer.append_turns("A", pair(f"a{i}"), customer_id="CA") for i in range(2)]
    await writer.update_meta("A", page_context={"page": "a"}, customer_id="CA")
    await writer.append_turns("B", pair("b"), customer_id="CB")
    await writer.update_meta("B", page_context={"page": "b"}, customer_id="CB")
    clients = [writer]

    async def client(**kw: Any) -> MemoryClient:
        c = await opened(cfg, **kw)
        clients.append(c)
        return c

    yield cfg, a, client
    for c in clients:
        await c.aclose()


A_CONTENTS = ["q-a0", "a-a0", "q-a1", "a-a1"]


async def test_another_sessions_meta_copied_onto_a_key_is_never_served(
    two_sessions: Any, redis_server: RedisServer
) -> None:
    """Finding 1: B's value SET on A's key was decoded without checking its identity: a
    read of A served B's META (owner, page_context) and ran the owner check against it."""
    cfg, _, client = two_sessions
    warm = await client()
    await warm.load_context("A", customer_id="CA")  # holds A's window in L1
    raw_b, _ = read_value(redis_server, cfg, "B")
    redis_server.command("SET", key(cfg, "A"), raw_b, "EX", 600)
    cold = await client()
    for reader in (warm, cold):
        ctx = await reader.load_context("A", customer_id="CA")
        assert ctx.meta is not None and ctx.meta.session_id == "A"
        assert ctx.meta.customer_id == "CA" and ctx.meta.page_context == {"page": "a"}
        assert [t.content for t in ctx.turns] == A_CONTENTS
        redis_server.command("SET", key(cfg, "A"), raw_b, "EX", 600)  # again, for the next
    assert warm.health().redis_errors == 1  # a foreign value is an error, then a miss


async def test_an_owner_forged_in_redis_never_decides_who_reads(
    two_sessions: Any, redis_server: RedisServer
) -> None:
    """Finding 1: a cold read took owner and incarnation from Redis's META, so a forged
    owner read another customer's turns."""
    cfg, _, client = two_sessions
    forge(redis_server, cfg, "A", customer_id="attacker")
    cold = await client()
    with pytest.raises(SessionOwnershipError):
        await cold.load_context("A", customer_id="attacker")
    ctx = await cold.load_context("A", customer_id="CA")
    assert [t.content for t in ctx.turns] == A_CONTENTS


async def test_a_forged_floor_is_never_persisted_by_the_next_write(
    two_sessions: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Finding 1: a validated read trusted a forged floor from Redis (hiding A's first
    turns), kept that META as the base of the next write, and the store's compare-and-set
    (version only) persisted it: the turns were hidden for good."""
    cfg, receipts, client = two_sessions
    warm = await client()
    await warm.load_context("A", customer_id="CA")
    forge(
        redis_server,
        cfg,
        "A",
        floor_turn_id=receipts[0].turn_ids[-1],
        turn_count=2,
        page_context={"forged": True},
    )
    ctx = await warm.load_context("A", customer_id="CA")
    assert [t.content for t in ctx.turns] == A_CONTENTS
    await warm.append_turns("A", pair("a2"), customer_id="CA")
    async with MemoryClient(config(tmp_path / "m.db", None, consistency="strong")) as truth:
        ctx = await truth.load_context("A", last_n=100)
    assert [t.content for t in ctx.turns] == [*A_CONTENTS, "q-a2", "a-a2"]
    assert ctx.meta is not None and ctx.meta.turn_count == 6
    assert ctx.meta.page_context == {"page": "a"}


async def test_a_write_planned_on_a_forged_base_is_refused_by_the_store(
    store_settings: dict[str, Any], clock: FakeClock
) -> None:
    """The store's condition covers owner, incarnation and turns, not only the version: a
    base that lies about them (whatever cache it came from) never becomes the stored META.
    On every store."""
    from memsdk import session as rules
    from memsdk.ids import TurnIdGenerator

    store = build_store(Config(**store_settings))
    await store.open()
    try:
        ids = TurnIdGenerator(clock.time_ms)
        now = clock.time_ms()
        first = rules.plan_append(
            None, session_id="s", turns=pair("x"), customer_id="C", now_ms=now,
            ttl_seconds=3600, retention_seconds=0, ids=ids,
        )  # fmt: skip
        assert (await store.commit(first)).applied
        stored = first.meta
        for lie in (
            {"customer_id": "attacker"},
            {"floor_turn_id": first.turns[0].turn_id},
            {"turn_count": 1},
            {"last_turn_id": first.turns[0].turn_id},
        ):
            forged = msgspec.structs.replace(stored, **lie)
            write = rules.plan_update_meta(
                forged, session_id="s", page_context={"x": 1}, attributes=None,
                customer_id=None, now_ms=now, ttl_seconds=3600,
            )  # fmt: skip
            outcome = await store.commit(write)
            assert not outcome.applied, lie
            assert outcome.current is None or outcome.current == stored
        assert await store.get_meta("s", consistent=True) == stored
    finally:
        await store.aclose()


async def test_two_deployments_on_one_redis_never_see_each_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Finding 2: keys had no namespace; a second deployment (another store) sharing the
    Redis read the first one's META for the same session id."""
    one = config(tmp_path / "one.db", redis_server)
    two = config(tmp_path / "two.db", redis_server)
    assert redis_namespace(one) != redis_namespace(two)
    async with MemoryClient(one) as first, MemoryClient(two) as second:
        await first.append_turns("s1", pair("one"), customer_id="X")
        await first.update_meta("s1", page_context={"secret": "one"}, customer_id="X")
        for _ in range(2):  # cold, then with whatever the first read cached
            ctx = await second.load_context("s1")
            assert ctx.meta is None and ctx.turns == []
        await second.append_turns("s1", pair("two"), customer_id="Y")
        ctx = await second.load_context("s1", customer_id="Y")
        assert [t.content for t in ctx.turns] == ["q-two", "a-two"]
        ctx = await first.load_context("s1", customer_id="X")
        assert ctx.meta is not None and ctx.meta.page_context == {"secret": "one"}
    keys = sorted(k.decode() for k in redis_server.command("KEYS", "memsdk:*"))
    assert keys == sorted([key(one, "s1"), key(two, "s1")])
    # An explicit prefix wins: two processes of one deployment agree on it.
    named = config(tmp_path / "one.db", redis_server, redis_key_prefix="prod-eu")
    assert redis_namespace(named) == "prod-eu"


async def test_a_pending_append_of_an_unverified_owner_reaches_no_other_customer(
    tmp_path: Path,
) -> None:
    """Finding 3: an append acknowledged while the store was down, naming a customer no one
    could check, was merged into every reader's context, degraded or not."""
    cfg = config(tmp_path / "m.db", None, wal_dir=str(tmp_path / "wal"))
    async with MemoryClient(config(tmp_path / "m.db", None)) as owner:
        await owner.append_turns("s", pair("mine"), customer_id="Y")
    faulty = FaultyStore(build_store(cfg))
    faulty.down = True
    mem = await opened(cfg, store=faulty)
    try:
        await mem.append_turns("s", pair("theirs"), customer_id="X")  # unverifiable
        await mem.append_turns("new", pair("x-only"), customer_id="X")
        for reader in ("Y", None):
            ctx = await mem.load_context("s", customer_id=reader)
            assert "q-theirs" not in [t.content for t in ctx.turns]
        other = await mem.load_context("new", customer_id="Y")
        assert other.meta is None and other.turns == []  # no Meta built from X's entry
        mine = await mem.load_context("new", customer_id="X")
        assert [t.content for t in mine.turns] == ["q-x-only", "a-x-only"]
        # The store answers again while the appends are still pending: not degraded, and
        # still none of X's turns for Y.
        gate = asyncio.Event()
        commit = faulty.inner.commit

        async def held_commit(write: Any) -> Any:
            await gate.wait()
            return await commit(write)

        faulty.inner.commit = held_commit  # type: ignore[method-assign]
        faulty.down = False
        ctx = await mem.load_context("s", customer_id="Y")
        assert not ctx.degraded
        assert [t.content for t in ctx.turns] == ["q-mine", "a-mine"]
        gate.set()
        await mem.flush(timeout=30)
        assert mem.health().wal_rejected_turns == 2  # X's append to Y's session: set aside
    finally:
        await mem.aclose()


async def test_values_passed_in_or_handed_out_never_change_the_cache(tmp_path: Path) -> None:
    """Finding 5: dicts passed in (page_context, attributes) were kept by reference, and the
    ones handed out were the cache's own: mutating either changed later reads and the next
    write, past every validation and size check."""
    async with MemoryClient(config(tmp_path / "m.db", None)) as mem:
        page = {"asin": "B0", "nested": {"list": [1]}}
        attrs = {"cards": [{"id": 1}]}
        await mem.update_meta("s", page_context=page)
        await mem.append_turn("s", Turn(role="user", content="hi", attributes=attrs))
        page["asin"] = "X" * 500_000  # after the call: past the size check
        page["nested"]["list"].append(2)
        attrs["cards"].append({"id": 2})
        ctx = await mem.load_context("s")
        assert ctx.meta is not None
        assert ctx.meta.page_context == {"asin": "B0", "nested": {"list": [1]}}
        assert ctx.turns[0].attributes == {"cards": [{"id": 1}]}
        for mutate in (
            lambda: ctx.meta.page_context.update(x=1),  # type: ignore[union-attr]
            lambda: ctx.meta.page_context["nested"]["list"].append(3),  # type: ignore[union-attr]
            lambda: ctx.turns[0].attributes["cards"].clear(),
            lambda: ctx.turns[0].attributes.__setitem__("x", 1),
        ):
            with pytest.raises(TypeError, match="read-only"):
                mutate()
        copied = dict(ctx.meta.page_context)
        copied["x"] = 1  # a copy is the caller's own
        again = await mem.load_context("s")
        assert again.meta is not None and again.meta.page_context == {
            "asin": "B0",
            "nested": {"list": [1]},
        }
        await mem.update_meta("s", attributes={"k": "v"})
        async with MemoryClient(config(tmp_path / "m.db", None)) as other:
            stored = await other.load_context("s")
        assert stored.meta is not None and stored.meta.page_context == again.meta.page_context


def nested_json(depth: int) -> str:
    return '{"x":' + "[" * depth + "]" * depth + "}"


async def test_hostile_bytes_in_redis_are_a_miss_and_dropped(
    two_sessions: Any, redis_server: RedisServer
) -> None:
    """Finding 6: msgspec raises RecursionError (not DecodeError) on deep nesting, and it
    escaped the Redis decode: one SET broke the session until the key's TTL."""
    cfg, _, client = two_sessions
    raw, meta = read_value(redis_server, cfg, "A")
    marked = msgspec.json.encode(msgspec.structs.replace(meta, page_context={"x": "MARK"}))
    assert b'"MARK"' in marked
    hostile = [
        raw[:PREFIX] + marked.replace(b'"MARK"', b"[" * 100_000 + b"]" * 100_000),
        # deeper than memsdk writes, within msgspec's own limit
        raw[:PREFIX] + marked.replace(b'"MARK"', msgspec.json.encode(nested_dict(40))),
        # the same in msgpack, which nests without a single bracket byte
        raw[:PREFIX]
        + msgspec.msgpack.encode(msgspec.structs.replace(meta, page_context=nested_dict(40))),
        raw[:PREFIX] + b"\x91" * 100_000 + b"\xc0",
        raw[:PREFIX] + b"\xff" * 64,
        b"9" * 20 + b"x" * (500 * 1024),  # oversized
    ]
    reader = await client()
    await reader.load_context("A", customer_id="CA")  # warm: Redis validates its L1 window
    for value in hostile:
        redis_server.command("SET", key(cfg, "A"), value, "EX", 600)
        ctx = await reader.load_context("A", customer_id="CA")
        assert [t.content for t in ctx.turns] == A_CONTENTS
        assert redis_server.command("GET", key(cfg, "A")) != value  # dropped or refilled


def nested_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_a_hostile_wal_record_is_set_aside_and_the_client_opens(tmp_path: Path) -> None:
    """Finding 6: a deeply nested record in the WAL raised RecursionError at every open."""
    wal_dir = tmp_path / "wal"
    log, _ = await WriteAheadLog.open(wal_dir, WalOptions(segment_bytes=1 << 20, max_bytes=1 << 24))
    now_ms = FakeClock().time_ms()
    good = (
        b'{"type":"append","session_id":"s","customer_id":null,"turns":[{"turn_id":'
        b'"%013d000000000001","role":"user","content":"ok","intent":null,'
        b'"attributes":{},"created_at_ms":%d,"expires_at":4000000000}]}' % (now_ms, now_ms)
    )
    await log.append(b'{"type":"append","session_id":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    await log.append(good.replace(b'"attributes":{}', b'"attributes":' + nested_json(40).encode()))
    await log.append(good.replace(b'"role":"user"', b'"role":"root"'))
    await log.append(good)
    await log.close()
    async with MemoryClient(config(tmp_path / "m.db", None, wal_dir=str(wal_dir))) as mem:
        await mem.flush(timeout=30)
        assert mem.health().wal_rejected_records == 3
        ctx = await mem.load_context("s")
        assert [t.content for t in ctx.turns] == ["ok"]
    lines = (wal_dir / "rejected" / "rejected.jsonl").read_bytes().splitlines()
    assert [msgspec.json.decode(line)["reason"] for line in lines] == ["undecodable"] * 3


async def test_a_hostile_item_in_dynamodb_is_a_store_error(dynamodb_url: str) -> None:
    """Finding 6: a META whose page_context nests deeply raised RecursionError from the
    item decoder; an item is the store's to answer for: StoreError."""
    import aioboto3

    from memsdk.config import parse_store_url

    spec = parse_store_url(dynamodb_url)
    async with MemoryClient(Config(store=dynamodb_url, **TEST_TIMEOUTS)) as mem:
        await mem.append_turns("s", pair("x"))
        session = aioboto3.Session()
        async with session.client(
            "dynamodb",
            region_name=spec.region,
            endpoint_url=spec.endpoint,  # type: ignore[union-attr]
        ) as ddb:
            for bad in (
                nested_json(100_000),
                '{"a":' + msgspec.json.encode(nested_dict(40)).decode() + "}",
            ):
                await ddb.update_item(
                    TableName=spec.table,  # type: ignore[union-attr]
                    Key={"PK": {"S": "SESSION#s"}, "SK": {"S": "META"}},
                    UpdateExpression="SET page_context = :p",
                    ExpressionAttributeValues={":p": {"S": bad}},
                )
                async with MemoryClient(Config(store=dynamodb_url, **TEST_TIMEOUTS)) as cold:
                    with pytest.raises(StoreError):
                        await cold.load_context("s")


async def test_a_long_run_of_tool_turns_never_makes_a_read_walk_the_session(
    tmp_path: Path,
) -> None:
    """Finding 9: a read of last_n=20 behind a long run of tool turns walked back through
    all of them (2,971 turns in 592 queries on SQLite)."""
    cfg = config(tmp_path / "m.db", None)
    async with MemoryClient(cfg) as mem:
        await mem.append_turns("s", [Turn(role="assistant", content="calls a tool")])
        for start in range(0, 3000, 99):
            await mem.append_turns(
                "s",
                [Turn(role="tool", content=f"r{i}") for i in range(start, min(start + 99, 3000))],
            )
        counting = CountingStore(build_store(cfg))
        async with MemoryClient(cfg, store=counting) as cold:
            ctx = await cold.load_context("s", last_n=20)
        assert len(ctx.turns) == 20 + MAX_WINDOW_EXTENSION_TURNS
        assert ctx.turns[-1].content == "r2999"
        assert counting.calls["query_turns"] <= 6, counting.calls
        assert counting.items_read <= 2 * (20 + MAX_WINDOW_EXTENSION_TURNS)
