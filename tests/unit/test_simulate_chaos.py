"""The --chaos grammar: typed events, clear errors, and a schedule applied on time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from memsdk.config import Config, DynamoDBStoreSpec
from memsdk.simulate.chaos import (
    ChaosEvent,
    ChaosSchedule,
    ChaosSpecError,
    FaultyStoreTarget,
    check_chaos,
    parse_chaos,
)
from memsdk.simulate.runner import _dynamodb_url, _via_relay
from memsdk.store.sqlite import SQLiteStore
from memsdk.testing import FaultyStore

SQLITE = "sqlite:///sim.db"
DDB_LOCAL = "dynamodb://t-1?region=us-east-1&endpoint=http://127.0.0.1:8000"


def test_parses_typed_events_ordered_by_start() -> None:
    events = parse_chaos("redis-kill@20s, store-outage@10s+5s,store-slow:250ms@1m+0.5s")
    assert events == (
        ChaosEvent(kind="store-outage", start_s=10.0, duration_s=5.0),
        ChaosEvent(kind="redis-kill", start_s=20.0),
        ChaosEvent(kind="store-slow", start_s=60.0, duration_s=0.5, level=0.25),
    )
    assert [e.target for e in events] == ["store", "redis", "store"]
    assert [str(e) for e in events] == [
        "store-outage@10s+5s",
        "redis-kill@20s",
        "store-slow:250ms@60s+500ms",
    ]


def test_units_defaults_and_levels() -> None:
    (slow,) = parse_chaos("store-slow@1.5+2")
    assert (slow.start_s, slow.duration_s, slow.level) == (1.5, 2.0, 0.5)  # default 500 ms
    (throttle,) = parse_chaos("store-throttle@0s+500ms")
    assert throttle.level == 1.0 and throttle.duration_s == 0.5
    assert parse_chaos("store-throttle:30%@1s+1s")[0].level == pytest.approx(0.3)
    assert parse_chaos("store-throttle:0.25@1s+1s")[0].level == 0.25
    (kill,) = parse_chaos("redis-kill@3s")
    assert kill.duration_s is None and kill.end_s(10.0) == 10.0
    assert parse_chaos("store-outage@8s+5s")[0].end_s(10.0) == 10.0  # cut at the end
    # Back-to-back windows on one dependency are fine; so is overlap across dependencies.
    assert len(parse_chaos("store-outage@1s+2s,store-slow@3s+1s,redis-kill@1s+5s")) == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("store-outage@1s+1s,,redis-kill@2s", "empty event"),
        ("store-outage", "no start time"),
        ("store-outag@1s+2s", "did you mean store-outage?"),
        ("db-meltdown@1s", "known: store-outage, store-slow, store-throttle, redis-kill"),
        ("store-outage@10x+5s", "bad start '10x'"),
        ("store-outage@10s+fives", "bad duration 'fives'"),
        ("store-outage@-1s+2s", "bad start"),
        ("store-outage@1s+0s", "duration must be above 0"),
        ("store-outage@1s+", "bad duration ''"),
        ("store-outage:3@1s+1s", "takes no level"),
        ("store-slow:0ms@1s+1s", "latency above 0"),
        ("store-slow:fast@1s+1s", "bad latency 'fast'"),
        ("store-throttle:2@1s+1s", "bad throttle share '2'"),
        ("store-throttle:0%@1s+1s", "bad throttle share"),
        ("store-outage@1s+5s,store-slow@3s+1s", "overlap: one store fault at a time"),
        ("redis-kill@1s,redis-kill@9s+1s", "lasts until the end"),
        ("store-outage@1s+9999999s", "over a week"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ChaosSpecError, match=message.replace("?", r"\?")):
        parse_chaos(spec)


def test_check_refuses_what_this_run_cannot_apply() -> None:
    def check(
        spec: str, store: str = SQLITE, redis: str | None = None, duration: float = 10
    ) -> None:
        check_chaos(parse_chaos(spec), duration_s=duration, store_url=store, redis_url=redis)

    check("store-outage@1s+1s,store-slow@3s+1s")  # SQLite: FaultyStore does both
    check("store-throttle:0.5@1s+1s", store=DDB_LOCAL)
    check("redis-kill@2s", redis="redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ChaosSpecError, match="starts after the run ends"):
        check("store-outage@10s+1s")
    with pytest.raises(ChaosSpecError, match="SQLite store has no throttling"):
        check("store-throttle@1s+1s")
    with pytest.raises(ChaosSpecError, match="no Redis to kill"):
        check("redis-kill@1s")
    with pytest.raises(ChaosSpecError, match="standalone redis://"):
        check("redis-kill@1s", redis="redis+cluster://127.0.0.1:7000")
    with pytest.raises(ChaosSpecError, match="standalone redis://"):
        check("redis-kill@1s", redis="rediss://cache.example.com:6380")
    with pytest.raises(ChaosSpecError, match="needs an http:// endpoint"):
        check("store-outage@1s+1s", store="dynamodb://t-1?region=eu-west-1")
    with pytest.raises(ChaosSpecError, match="needs an http:// endpoint"):
        check("store-outage@1s+1s", store="dynamodb://t-1?region=eu-west-1&endpoint=https://x.y")


class Recorder:
    """A fault target that records what it was told, with the schedule's clock."""

    mechanism = "recorder"

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str, float]] = []

    def apply(self, event: ChaosEvent) -> None:
        self.calls.append(("apply", event.kind, self.clock[0]))

    def lift(self) -> None:
        self.calls.append(("lift", "", self.clock[0]))


async def test_schedule_applies_and_lifts_on_time() -> None:
    # A fake clock that the patched sleep moves: the schedule never waits for real.
    clock = [100.0]
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        clock[0] += seconds
        await real_sleep(0)

    store, redis = Recorder(clock), Recorder(clock)
    events = parse_chaos("store-outage@1s+2s,store-slow@3s+1s,redis-kill@2s")
    schedule = ChaosSchedule(
        events, {"store": store, "redis": redis}, run_s=10.0, clock=lambda: clock[0]
    )
    assert schedule.status() == "store-outage in 1.0s"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", fake_sleep)
        await schedule.run()
    # Back to back: the outage is lifted before the slow store is applied, at t=3.
    assert [(a, k, round(t - 100, 3)) for a, k, t in store.calls] == [
        ("apply", "store-outage", 1.0),
        ("lift", "", 3.0),
        ("apply", "store-slow", 3.0),
        ("lift", "", 4.0),
    ]
    # redis-kill has no duration: it stays applied until the load stops.
    assert [a for a, _, _ in redis.calls] == ["apply"]
    assert schedule.status() == "redis-kill 6.0s left"
    clock[0] += 6
    schedule.lift_all()
    schedule.lift_all()
    assert [a for a, _, _ in redis.calls] == ["apply", "lift"]
    applied = {str(a.event): (a.applied_at_s, a.lifted_at_s) for a in schedule.applied}
    assert applied == {
        "store-outage@1s+2s": (1.0, 3.0),
        "redis-kill@2s": (2.0, 10.0),
        "store-slow:500ms@3s+1s": (3.0, 4.0),
    }
    assert schedule.status() == "done"


async def test_schedule_needs_a_target_for_each_dependency() -> None:
    with pytest.raises(ValueError, match="no fault target for redis"):
        ChaosSchedule(parse_chaos("redis-kill@1s"), {}, run_s=5)


async def test_faulty_store_target_fails_and_slows_the_embedded_store(tmp_path: Path) -> None:
    store = FaultyStore(SQLiteStore(str(tmp_path / "s.db")))
    await store.open()
    try:
        target = FaultyStoreTarget(store)
        (outage, slow) = parse_chaos("store-outage@1s+1s,store-slow:50ms@2s+1s")
        target.apply(outage)
        with pytest.raises(Exception, match="down"):
            await store.get_meta("s1", consistent=True)
        target.lift()
        assert await store.get_meta("s1", consistent=True) is None
        target.apply(slow)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await store.get_meta("s1", consistent=True) is None
        assert loop.time() - started >= 0.05
        target.lift()
        assert (store.down, store.delay_s) == (False, 0.0)
    finally:
        await store.aclose()


def test_fault_front_ends_keep_everything_but_the_address() -> None:
    spec = Config(store=DDB_LOCAL).store_spec
    assert isinstance(spec, DynamoDBStoreSpec)
    url = _dynamodb_url(spec, "http://127.0.0.1:4567")
    assert Config(store=url).store_spec == DynamoDBStoreSpec(
        table="t-1", region="us-east-1", endpoint="http://127.0.0.1:4567"
    )
    assert _via_relay("redis://:s3cret@cache.internal:6380/2?x=1", 7000) == (
        "redis://:s3cret@127.0.0.1:7000/2?x=1"
    )
    assert _via_relay("redis://127.0.0.1:6379", 7001) == "redis://127.0.0.1:7001"
