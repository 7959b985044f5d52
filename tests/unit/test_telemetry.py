"""Telemetry on the embedded store: span and metric names, key attributes, events, privacy.

The real-service half (DynamoDB Local behind the fault proxy, redis-server) is in
tests/integration/test_telemetry_services.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import (
    ContextLostError,
    InvalidInputError,
    MemsdkError,
    SessionOwnershipError,
)
from memsdk.store.sqlite import SQLiteStore
from memsdk.telemetry import Telemetry
from memsdk.testing import FaultyStore
from tests.otel import InMemoryOtel, children, everything_exported

SECRET_TEXT = "zebra-7f3c-the-users-own-words"
SECRET_CUSTOMER = "cust-9d2e-private"
SECRET_PAGE = "asin-B0SECRET42"


@pytest.fixture
async def mem(tmp_path: Path, otel: InMemoryOtel) -> AsyncIterator[MemoryClient]:
    config = Config(store=f"sqlite:///{tmp_path / 'm.db'}")
    async with MemoryClient(config, **otel.providers()) as client:
        yield client


def lookups(otel: InMemoryOtel, tier: str, result: str) -> float:
    attrs = {"memsdk.cache.tier": tier, "memsdk.cache.result": result}
    return otel.total("memsdk.cache.lookups", **attrs)


def pair(n: int) -> list[Turn]:
    return [
        Turn(role="user", content=f"{SECRET_TEXT} question {n}", intent="product_discovery"),
        Turn(role="assistant", content=f"{SECRET_TEXT} answer {n}", attributes={"k": n}),
    ]


async def test_every_public_call_is_a_span_with_store_spans_beneath(
    mem: MemoryClient, otel: InMemoryOtel
) -> None:
    receipt = await mem.append_turns("s1", pair(0), customer_id="C1")
    await mem.load_context("s1", customer_id="C1")
    await mem.update_meta("s1", page_context={"asin": "B0"}, customer_id="C1")
    await mem.put_summary("s1", "a summary", through_turn_id=receipt.turn_ids[-1])
    await mem.flush()
    await mem.delete_session("s1")
    spans = otel.spans()
    names = [s.name for s in spans if s.name.startswith("memsdk.")]
    assert names == [
        "memsdk.open",
        "memsdk.append_turns",
        "memsdk.load_context",
        "memsdk.update_meta",
        "memsdk.put_summary",
        "memsdk.flush",
        "memsdk.delete_session",
    ]
    append = otel.spans("memsdk.append_turns")[0]
    store_spans = children(spans, append)
    assert [s.name for s in store_spans] == ["commit"]
    assert store_spans[0].attributes is not None
    assert store_spans[0].attributes["db.system.name"] == "sqlite"
    assert store_spans[0].attributes["db.operation.name"] == "commit"
    assert append.attributes is not None and append.attributes["memsdk.turns"] == 2
    load = otel.spans("memsdk.load_context")[0]
    assert load.attributes is not None
    # The append filled L1; validated mode checked it against the store's META.
    assert load.attributes["memsdk.tier"] == "l1+store"
    assert load.attributes["memsdk.degraded"] is False
    assert load.attributes["memsdk.turns"] == 2
    assert load.attributes["memsdk.breaker.state"] == "closed"
    assert [c.attributes["db.operation.name"] for c in children(spans, load) if c.attributes] == [
        "get_meta"
    ]
    # Public spans carry no identifying attribute by default.
    assert "memsdk.session_id" not in load.attributes
    assert "memsdk.customer_id" not in load.attributes


async def test_latency_and_cache_metrics_name_the_tier(
    mem: MemoryClient, otel: InMemoryOtel
) -> None:
    await mem.load_context("cold")  # absent: a miss, answered by the store
    await mem.append_turns("warm", pair(0))
    await mem.load_context("warm")  # L1 validated against the store
    assert lookups(otel, "l1", "miss") == 1
    assert lookups(otel, "l1", "hit") == 1
    loads = {
        p.attributes["memsdk.tier"]: p.count
        for p in otel.points("memsdk.operation.duration")
        if p.attributes["memsdk.operation"] == "memsdk.load_context"
    }
    assert loads == {"store": 1, "l1+store": 1}
    appends = [
        p for p in otel.points("memsdk.operation.duration")
        if p.attributes["memsdk.operation"] == "memsdk.append_turns"
    ]  # fmt: skip
    assert [(p.attributes["memsdk.durable"], p.count) for p in appends] == [(True, 1)]
    store_calls = {
        p.attributes["db.operation.name"] for p in otel.points("db.client.operation.duration")
    }
    assert store_calls == {"get_meta", "query_turns", "commit"}
    # The lost-memory detector: turn counts of the sessions load_context returned.
    loads_by_turns = {
        p.attributes["memsdk.context.turns"]: p.value for p in otel.points("memsdk.context.loads")
    }
    assert loads_by_turns == {"0": 1, "2": 1}


async def test_an_outage_is_an_event_a_metric_and_a_breaker_state(
    tmp_path: Path, otel: InMemoryOtel
) -> None:
    store = FaultyStore(SQLiteStore(str(tmp_path / "m.db")))
    config = Config(store="sqlite:///unused.db", breaker_consecutive_failures=3)
    async with MemoryClient(config, store=store, **otel.providers()) as mem:
        await mem.append_turns("s1", pair(0))
        store.down = True
        for _ in range(5):
            ctx = await mem.load_context("s1")
            assert ctx.degraded
        breaker_gauge = [
            p.value for p in otel.points("memsdk.breaker.state")
            if p.attributes["memsdk.dependency"] == "store"
        ]  # fmt: skip
    loads = otel.spans("memsdk.load_context")
    reasons = [
        e.attributes["memsdk.degraded.reason"]
        for s in loads
        for e in s.events
        if e.name == "memsdk.degraded" and e.attributes
    ]
    # Three failures in a row open the breaker; then reads do not even try the store.
    assert reasons == ["store_unavailable"] * 3 + ["breaker_open"] * 2
    assert all(s.attributes and s.attributes["memsdk.degraded"] for s in loads)
    assert otel.total("memsdk.degraded_replies") == 5
    assert otel.total("memsdk.degraded_replies", **{"memsdk.degraded.reason": "breaker_open"}) == 2
    opened = {"memsdk.dependency": "store", "memsdk.breaker.state": "open"}
    assert otel.total("memsdk.breaker.transitions", **opened) == 1
    assert breaker_gauge == [2.0]
    # The store spans of the failed reads are errors, with the error's type.
    failed = [s for s in otel.spans("get_meta") if s.status.status_code == StatusCode.ERROR]
    assert len(failed) == 3
    types = {e.attributes["exception.type"] for s in failed for e in s.events if e.attributes}
    assert types == {"memsdk.errors.StoreUnavailableError"}


async def test_wal_replay_backlog_gauges_and_flush_spans(
    tmp_path: Path, otel: InMemoryOtel
) -> None:
    store = FaultyStore(SQLiteStore(str(tmp_path / "m.db")))
    config = Config(
        store="sqlite:///unused.db", wal_dir=str(tmp_path / "wal"), wal_close_timeout=0.0
    )
    async with MemoryClient(config, store=store, **otel.providers()) as mem:
        store.down = True
        for n in range(3):
            await mem.append_turns("s1", pair(n))
        backlog = otel.total("memsdk.wal.pending_records")
    assert backlog == 3
    store.down = False
    otel.exporter.clear()
    async with MemoryClient(config, store=store, **otel.providers()) as mem:
        await mem.flush(timeout=10)
        # Only live clients report (the first one closed): this one, drained.
        after = [p.value for p in otel.points("memsdk.wal.pending_records")]
    opened = otel.spans("memsdk.open")[0]
    replay = [e for e in opened.events if e.name == "memsdk.wal.replay"]
    assert len(replay) == 1 and replay[0].attributes == {"memsdk.wal.records": 3}
    assert otel.total("memsdk.wal.replayed_records") == 3
    flushes = otel.spans("memsdk.wal.flush")
    assert flushes and sum(s.attributes["memsdk.wal.records"] for s in flushes if s.attributes) == 3
    assert all(s.parent is None for s in flushes)  # background work: root spans
    assert after == [0]


async def test_errors_carry_status_and_type_but_no_identity(
    mem: MemoryClient, otel: InMemoryOtel
) -> None:
    await mem.append_turns("owned", pair(0), customer_id=SECRET_CUSTOMER)
    with pytest.raises(SessionOwnershipError):
        await mem.load_context("owned", customer_id="someone-else")
    with pytest.raises(ContextLostError):
        await mem.load_context("never-written", expect_existing=True)
    failed = [
        s for s in otel.spans("memsdk.load_context") if s.status.status_code == StatusCode.ERROR
    ]
    assert [s.status.description for s in failed] == ["SessionOwnershipError", "ContextLostError"]
    for span in failed:
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert "session_id=" not in str(event.attributes["exception.message"])
    lost = otel.spans("memsdk.load_context")[-1]
    assert any(e.name == "memsdk.context_lost" for e in lost.events)
    assert otel.total("memsdk.context_lost") == 1
    errors = {
        p.attributes.get("error.type")
        for p in otel.points("memsdk.operation.duration")
        if p.attributes["memsdk.operation"] == "memsdk.load_context"
    }
    assert errors == {"SessionOwnershipError", "ContextLostError"}


async def test_no_content_customer_or_page_context_in_any_span_metric_or_log(
    tmp_path: Path, otel: InMemoryOtel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="memsdk")
    store = FaultyStore(SQLiteStore(str(tmp_path / "m.db")))
    wal_dir = str(tmp_path / "wal")
    config = Config(store="sqlite:///unused.db", wal_dir=wal_dir, breaker_consecutive_failures=2)
    async with MemoryClient(config, store=store, **otel.providers()) as mem:
        for n in range(3):
            await mem.append_turns("s1", pair(n), customer_id=SECRET_CUSTOMER)
        await mem.update_meta("s1", page_context={"asin": SECRET_PAGE}, customer_id=SECRET_CUSTOMER)
        await mem.flush()
        await mem.load_context("s1", customer_id=SECRET_CUSTOMER)
        store.down = True  # an outage: degraded reads, failures, breaker, WAL backlog
        for n in range(3):
            await mem.load_context("s1", customer_id=SECRET_CUSTOMER)
            await mem.append_turns("s1", pair(10 + n), customer_id=SECRET_CUSTOMER)
        with pytest.raises(SessionOwnershipError):
            await mem.load_context("s1", customer_id="intruder")
        store.down = False
        await mem.flush(timeout=10)
    exported = everything_exported(otel) + "\n" + caplog.text
    for secret in (SECRET_TEXT, SECRET_CUSTOMER, SECRET_PAGE):
        assert secret not in exported
    assert "memsdk.load_context" in exported  # the search looked at real telemetry


async def test_identity_attributes_are_opt_in(tmp_path: Path, otel: InMemoryOtel) -> None:
    config = Config(
        store=f"sqlite:///{tmp_path / 'm.db'}", telemetry_attributes=("session_id", "customer_id")
    )
    async with MemoryClient(config, **otel.providers()) as mem:
        await mem.append_turns("s1", pair(0), customer_id="C1")
    (span,) = otel.spans("memsdk.append_turns")
    assert span.attributes is not None
    assert span.attributes["memsdk.session_id"] == "s1"
    assert span.attributes["memsdk.customer_id"] == "C1"
    # Content never, whatever the allow-list says.
    assert SECRET_TEXT not in everything_exported(otel)


async def test_disabled_telemetry_emits_nothing(tmp_path: Path, otel: InMemoryOtel) -> None:
    config = Config(store=f"sqlite:///{tmp_path / 'm.db'}", telemetry_enabled=False)
    async with MemoryClient(config, **otel.providers()) as mem:
        await mem.append_turns("s1", pair(0))
        await mem.load_context("s1")
    assert otel.spans() == []
    assert otel.points() == []


def test_telemetry_settings_are_validated() -> None:
    from memsdk.errors import ConfigError

    with pytest.raises(ConfigError, match="telemetry_attributes"):
        Config(telemetry_attributes=("turn_content",))
    with pytest.raises(ConfigError, match="telemetry_attributes"):
        Config(telemetry_attributes=["session_id"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="telemetry_enabled"):
        Config(telemetry_enabled="yes")  # type: ignore[arg-type]
    env: dict[str, Any] = {"MEMSDK_TELEMETRY_ATTRIBUTES": "session_id, customer_id"}
    assert Config.from_env(env).telemetry_attributes == ("session_id", "customer_id")


def test_every_instrument_is_documented_and_every_documented_one_exists(
    otel: InMemoryOtel,
) -> None:
    """docs/observability.md's metric table and what memsdk exports agree, both ways."""
    import re

    from memsdk.telemetry import TelemetrySnapshot

    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    section = doc.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for row in section.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([a-z0-9_.]+)`", row.split("|")[1])
    }
    # Drive every signal once, so every instrument has a point to export.
    telemetry = Telemetry(**otel.providers())
    telemetry.observe(
        lambda: TelemetrySnapshot(
            store_breaker="closed",
            redis_breaker="open",
            l1_entries=1,
            l1_bytes=100,
            wal_pending_records=2,
            wal_pending_bytes=200,
            wal_oldest_pending_age_s=0.5,
        )
    )
    with telemetry.operation("memsdk.load_context"), telemetry.dependency("sqlite", "get_meta"):
        telemetry.retry("sent")
        telemetry.retry("refused_budget")
    telemetry.cache_lookup("l1", "hit")
    telemetry.redis_bypassed("get")
    telemetry.breaker_changed("store", "closed", "open")
    telemetry.degraded("breaker_open")
    telemetry.context_lost("load_context")
    telemetry.backpressure("wal_full")
    telemetry.wal_replay(3)
    telemetry.wal_rejected("ordered_before_delete", 1, 2)
    telemetry.loaded_turn_count(1)
    exported = {p.name for p in otel.points()}
    assert exported == documented


def test_server_attributes_name_one_server_or_none() -> None:
    from memsdk.observed import server_attributes

    assert server_attributes("https://dynamodb.eu-west-1.amazonaws.com") == {
        "server.address": "dynamodb.eu-west-1.amazonaws.com",
        "server.port": 443,
    }
    assert server_attributes("redis://:secret@10.0.0.5/0", 6379) == {
        "server.address": "10.0.0.5",
        "server.port": 6379,
    }
    # A list of nodes (Sentinels) names no single server; never the password either way.
    assert server_attributes("redis+sentinel://:pw@h1:1,h2:2/mymaster") == {}


def test_a_failed_span_records_only_the_exception_type_and_memsdks_message(
    otel: InMemoryOtel,
) -> None:
    """Every kind of span memsdk starts (public call, dependency, background) records an
    exception itself: type and memsdk's message; no stacktrace, no foreign message, and
    the session id only when allowed. tests/integration/test_telemetry_privacy.py drives
    the same through the public API."""

    def failing(error: BaseException) -> None:
        raise error

    ours = InvalidInputError("attributes nests deeper than 32 levels", session_id="s-SECRET")
    foreign = ValueError(f"server said: {SECRET_TEXT}")
    for allowed in ((), ("session_id",)):
        telemetry = Telemetry(**otel.providers(), allowed=allowed)
        for error in (ours, foreign):
            otel.exporter.clear()
            with pytest.raises(type(error)), telemetry.operation("memsdk.update_meta"):
                failing(error)
            with pytest.raises(type(error)), telemetry.dependency("sqlite", "commit"):
                failing(error)
            with pytest.raises(type(error)), telemetry.background("memsdk.wal.flush", {}):
                failing(error)
            spans = otel.spans()
            assert len(spans) == 3
            for span in spans:
                assert span.status.status_code == StatusCode.ERROR
                assert span.status.description == type(error).__name__
                (event,) = span.events
                assert event.name == "exception" and event.attributes is not None
                if error is foreign:
                    assert dict(event.attributes) == {
                        "exception.type": "ValueError",
                        "exception.message": "",
                    }
                    continue
                expected = "attributes nests deeper than 32 levels"
                if allowed:
                    expected += " [session_id=s-SECRET]"
                assert dict(event.attributes) == {
                    "exception.type": "memsdk.errors.InvalidInputError",
                    "exception.message": expected,
                }


def test_an_error_message_never_holds_the_session_id_str_adds_it() -> None:
    """`message` is what telemetry may carry; str() adds the session id for people."""
    error = MemsdkError("what happened; what to do", session_id="s1")
    assert error.message == "what happened; what to do"
    assert str(error) == "what happened; what to do [session_id=s1]"
    assert str(MemsdkError("no session")) == MemsdkError("no session").message == "no session"
