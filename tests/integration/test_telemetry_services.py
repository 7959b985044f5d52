"""Telemetry against real services: DynamoDB Local (through the fault proxy) and redis-server.

Checks the spans and metrics a deployment sees for a cache hit, a miss, a retry, an
outage and a Redis outage, with the database semantic-convention attributes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.faultproxy import FaultProxy
from tests.harness.redis_server import RedisServer
from tests.otel import InMemoryOtel, children, everything_exported

pytestmark = pytest.mark.dynamodb

SECRET = "tiger-0c1d-content-nobody-may-see"
RELAXED = {"read_timeout": 5.0, "write_timeout": 5.0, "breaker_slow_call": 15.0}


def pair(n: int) -> list[Turn]:
    return [
        Turn(role="user", content=f"{SECRET} {n}"),
        Turn(role="assistant", content=f"{SECRET} reply {n}"),
    ]


def lookups(otel: InMemoryOtel, tier: str, result: str) -> float:
    attrs = {"memsdk.cache.tier": tier, "memsdk.cache.result": result}
    return otel.total("memsdk.cache.lookups", **attrs)


async def test_hit_and_miss_with_dynamodb_and_redis(
    proxied_url: str, proxy: FaultProxy, redis_server: RedisServer, otel: InMemoryOtel
) -> None:
    config = Config(store=proxied_url, redis_url=redis_server.url, **RELAXED)
    async with MemoryClient(config) as writer:  # reports to the global no-op providers
        await writer.append_turns("s1", pair(0))
    async with MemoryClient(config, **otel.providers()) as reader:
        # Cold: META and turns from DynamoDB (Redis never decides who owns a session or
        # which turns it has); Redis only validates what L1 holds.
        cold = await reader.load_context("s1")
        warm = await reader.load_context("s1")  # L1 validated by Redis: no store call
    assert (cold.source, warm.source) == ("store", "l1+redis")
    spans = otel.spans()
    cold_span, warm_span = otel.spans("memsdk.load_context")
    cold_children = children(spans, cold_span)
    table = table_of(proxied_url)
    assert sorted(s.name for s in cold_children) == [f"GetItem {table}", f"Query {table}"]
    query = next(s for s in cold_children if s.name.startswith("Query"))
    assert query.attributes is not None
    assert query.attributes["db.system.name"] == "aws.dynamodb"
    assert query.attributes["db.operation.name"] == "Query"
    assert query.attributes["aws.dynamodb.table_names"] == (table_of(proxied_url),)
    assert query.attributes["server.address"] == "127.0.0.1"
    assert query.attributes["server.port"] == proxy_port(proxied_url)
    assert query.attributes["memsdk.breaker.state"] == "closed"
    (get,) = [s for s in children(spans, warm_span)]
    assert get.name == "EVALSHA" and get.attributes is not None
    assert get.attributes["memsdk.cache.operation"] == "get"
    assert get.attributes["db.system.name"] == "redis"
    assert get.attributes["memsdk.cache.result"] == "hit"
    assert get.attributes["server.address"] == "127.0.0.1"
    assert warm_span.attributes is not None and warm_span.attributes["memsdk.tier"] == "l1+redis"
    assert lookups(otel, "redis", "hit") == 1
    assert lookups(otel, "l1", "miss") == 1 and lookups(otel, "l1", "hit") == 1
    calls = {
        (p.attributes["db.system.name"], p.attributes["db.operation.name"])
        for p in otel.points("db.client.operation.duration")
    }
    assert calls == {("redis", "EVALSHA"), ("aws.dynamodb", "GetItem"), ("aws.dynamodb", "Query")}
    assert SECRET not in everything_exported(otel)


async def test_a_retry_is_counted_on_the_call_and_its_store_span(
    proxied_url: str, proxy: FaultProxy, otel: InMemoryOtel
) -> None:
    config = Config(store=proxied_url, store_max_attempts=3, l1_max_bytes=0, **RELAXED)
    async with MemoryClient(config, **otel.providers()) as mem:
        await mem.append_turns("s1", pair(0))
        otel.exporter.clear()
        proxy.set_mode("throttle", requests=1)  # exactly one throttled request
        await mem.append_turns("s1", pair(1))
    (append,) = otel.spans("memsdk.append_turns")
    assert append.attributes is not None and append.attributes["memsdk.retry_count"] == 1
    (commit,) = children(otel.spans(), append)
    assert commit.attributes is not None and commit.attributes["memsdk.retry_count"] == 1
    retry_events = [e for e in commit.events if e.name == "memsdk.retry"]
    assert [e.attributes for e in retry_events] == [{"memsdk.retry.outcome": "sent"}]
    assert otel.total("memsdk.store.retries", **{"memsdk.retry.outcome": "sent"}) == 1


async def test_an_outage_shows_degradation_and_the_breaker(
    proxied_url: str, proxy: FaultProxy, otel: InMemoryOtel
) -> None:
    # Generous deadlines: the store refuses connections at once when down, and a stall of
    # this machine must not time out the setup append.
    config = Config(
        store=proxied_url,
        read_timeout=5.0,
        write_timeout=5.0,
        breaker_slow_call=15.0,
        breaker_consecutive_failures=3,
    )
    async with MemoryClient(config, **otel.providers()) as mem:
        await mem.append_turns("s1", pair(0))
        proxy.set_mode("down")
        for _ in range(5):
            assert (await mem.load_context("s1")).degraded
        proxy.set_mode("pass")
    reasons = [
        e.attributes["memsdk.degraded.reason"]
        for s in otel.spans("memsdk.load_context")
        for e in s.events
        if e.name == "memsdk.degraded" and e.attributes
    ]
    assert reasons[:3] == ["store_unavailable"] * 3 and reasons[3:] == ["breaker_open"] * 2
    opened = {"memsdk.dependency": "store", "memsdk.breaker.state": "open"}
    assert otel.total("memsdk.breaker.transitions", **opened) == 1
    assert otel.total("memsdk.degraded_replies") == 5
    failed = [
        p for p in otel.points("db.client.operation.duration")
        if p.attributes.get("error.type") == "StoreUnavailableError"
    ]  # fmt: skip
    assert failed and all(p.attributes["db.system.name"] == "aws.dynamodb" for p in failed)


async def test_redis_outage_is_a_bypass_event_not_an_error(
    tmp_path: object, redis_server: RedisServer, otel: InMemoryOtel
) -> None:
    config = Config(
        store="sqlite:///:memory:",
        redis_url=redis_server.url,
        breaker_consecutive_failures=2,
        breaker_open_seconds=30.0,
        breaker_max_open_seconds=30.0,
    )
    async with MemoryClient(config, **otel.providers()) as mem:
        await mem.append_turns("s1", pair(0))
        redis_server.kill()
        for _ in range(4):
            ctx = await mem.load_context("s1")
            assert not ctx.degraded  # the store answered: complete and current
    assert lookups(otel, "redis", "error") == 2
    assert lookups(otel, "redis", "bypassed") == 2  # the GETs; fills and repairs skip too
    bypass_events = [
        e for s in otel.spans("memsdk.load_context") for e in s.events
        if e.name == "memsdk.redis.bypassed"
    ]  # fmt: skip
    assert len(bypass_events) >= 2
    assert otel.total("memsdk.redis.bypassed", **{"memsdk.cache.operation": "get"}) == 2
    opened = {"memsdk.dependency": "redis", "memsdk.breaker.state": "open"}
    assert otel.total("memsdk.breaker.transitions", **opened) == 1
    # The public calls themselves never failed.
    assert all("error.type" not in p.attributes for p in otel.points("memsdk.operation.duration"))


def table_of(url: str) -> str:
    return urlsplit(url).netloc


def proxy_port(url: str) -> int:
    endpoint = url.split("endpoint=", 1)[1]
    port = urlsplit(endpoint).port
    assert port is not None
    return port
