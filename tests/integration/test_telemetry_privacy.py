"""Telemetry never carries what callers or foreign libraries say (issue 14, finding 4).

Failures are driven through the public API with marker strings in every place a caller
or a dependency can put text: the session id, the customer id, turn content,
page_context and attributes keys and values, a store's foreign exception message, a
Redis password. Every span, span attribute, event, event attribute and metric point is
then searched for the markers, and so is every log record (which may name the session
id, nothing else of them).

With `telemetry_attributes=("session_id",)` the session id may appear in exactly two
places: the `memsdk.session_id` span attribute and memsdk's own error message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

import memsdk
from memsdk import Config, MemoryClient, Turn
from memsdk.errors import (
    BackpressureError,
    ContextLostError,
    InvalidInputError,
    SessionOwnershipError,
    StoreError,
    StoreUnavailableError,
)
from memsdk.records import CommitOutcome, MetaRecord, SessionWrite, TurnRecord
from memsdk.store.base import Store
from memsdk.store.sqlite import SQLiteStore
from memsdk.wiring import redis_namespace
from tests.conftest import TEST_TIMEOUTS
from tests.harness.redis_server import RedisServer
from tests.otel import InMemoryOtel, everything_exported

# Every marker holds "SECRET": by default that word must appear nowhere in telemetry.
SESSION = "sess-SECRET-9"
OTHER_SESSION = "gone-SECRET-2"
CUSTOMER = "cust-SECRET-3"
INTRUDER = "intruder-SECRET-1"
KEY = "SECRET-KEY-7"
VALUE = "SECRET-VALUE-8"
CONTENT = "SECRET-CONTENT-5 the user's own words"
FOREIGN = "SECRET-FOREIGN-6"
PASSWORD = "SECRET-PASS-4"
# What log records may not carry either (the session id they may: docs/observability.md).
NOT_IN_LOGS = (OTHER_SESSION, CUSTOMER, INTRUDER, KEY, VALUE, "SECRET-CONTENT", FOREIGN, PASSWORD)
EXCEPTION_FIELDS = {"exception.type", "exception.message"}

ALLOWED = pytest.mark.parametrize(
    "allowed", [(), ("session_id",)], ids=["default", "session_id_allowed"]
)


class HostileStore:
    """A real store that, on command, fails the way a driver does: a foreign exception
    whose message echoes the request, or a memsdk error caused by one."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.mode: str | None = None
        self.failed = {"foreign": 0, "chained": 0}

    @property
    def description(self) -> str:
        """The wrapped store's description."""
        return self.inner.description

    def _check(self, session_id: str) -> None:
        if self.mode is not None:
            self.failed[self.mode] += 1
        if self.mode == "foreign":
            raise RuntimeError(f"driver: {FOREIGN} while handling {session_id}: {CONTENT}")
        if self.mode == "chained":
            cause = ConnectionResetError(f"{FOREIGN} reset by peer for {session_id}")
            raise StoreUnavailableError(
                "the hostile store is unreachable (test)", session_id=session_id
            ) from cause

    async def open(self) -> None:
        """Open the wrapped store."""
        await self.inner.open()

    async def aclose(self) -> None:
        """Close the wrapped store."""
        await self.inner.aclose()

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Fail when told to, else delegate."""
        self._check(session_id)
        return await self.inner.get_meta(session_id, consistent=consistent)

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Fail when told to, else delegate."""
        self._check(session_id)
        return await self.inner.query_turns(
            session_id, before_turn_id=before_turn_id, limit=limit, consistent=consistent
        )

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Fail when told to, else delegate."""
        self._check(write.meta.session_id)
        return await self.inner.commit(write)

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        """Fail when told to, else delegate."""
        self._check(session_id)
        await self.inner.purge_session(session_id, through_turn_id=through_turn_id)


def turns(n: int = 0) -> list[Turn]:
    return [
        Turn(role="user", content=f"{CONTENT} {n}", attributes={KEY: VALUE}),
        Turn(role="assistant", content=f"{CONTENT} reply {n}", intent=VALUE),
    ]


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {KEY: VALUE}
    for _ in range(levels):
        value = {KEY: value}
    return value


async def drive_bad_input(mem: MemoryClient) -> None:
    """Every kind of invalid input, with markers where the caller's data goes."""
    receipt = await mem.append_turns(SESSION, turns(), customer_id=CUSTOMER)
    await mem.update_meta(
        SESSION, page_context={KEY: VALUE}, attributes={KEY: [VALUE]}, customer_id=CUSTOMER
    )
    bad_meta: list[dict[str, Any]] = [
        {"page_context": {KEY: {VALUE: {1, 2}}}},  # a set, under a hostile path
        {"page_context": {KEY: f"{VALUE}\ud800"}},  # a lone surrogate in a value
        {"page_context": {f"{KEY}\ud800": VALUE}},  # ... and in a key
        {"page_context": nested(40)},  # too deep, every level a hostile key
        {"attributes": {KEY: {VALUE: float("nan")}}},
        {"attributes": {KEY: {7: VALUE}}},  # a non-string key
        {"attributes": {KEY: (VALUE,)}},  # a tuple would come back a list
        {"attributes": [KEY, VALUE]},  # not a dict at all
    ]
    for fields in bad_meta:
        with pytest.raises(InvalidInputError):
            await mem.update_meta(SESSION, customer_id=CUSTOMER, **fields)
    bad_turns: list[Any] = [
        [Turn(role="user", content=CONTENT, attributes={KEY: {VALUE: {1}}})],
        [Turn(role="user", content=CONTENT, attributes={KEY: nested(40)})],
        [Turn(role="user", content=f"{CONTENT}\ud800")],
        [Turn(role="user", content=CONTENT, intent=f"{VALUE}\ud800")],
        [Turn(role="villain", content=CONTENT)],  # type: ignore[arg-type]
        [Turn(role="user", content=CONTENT * 40_000)],  # over max_turn_bytes
        [Turn(role="user", content=CONTENT)] * 100,  # over the turns of one append
        [CONTENT],
        CONTENT,
    ]
    for bad in bad_turns:
        with pytest.raises(InvalidInputError):
            await mem.append_turns(SESSION, bad, customer_id=CUSTOMER)
    with pytest.raises(InvalidInputError):
        await mem.load_context(f"{SESSION} with spaces")
    with pytest.raises(InvalidInputError):
        await mem.load_context(SESSION, customer_id=CUSTOMER * 100)
    with pytest.raises(InvalidInputError):
        await mem.put_summary(SESSION, f"{CONTENT}\ud800", through_turn_id=receipt.turn_ids[-1])
    with pytest.raises(InvalidInputError):
        await mem.put_summary(SESSION, CONTENT, through_turn_id=VALUE)
    with pytest.raises(SessionOwnershipError):
        await mem.load_context(SESSION, customer_id=INTRUDER)
    with pytest.raises(SessionOwnershipError):
        await mem.update_meta(SESSION, page_context={KEY: VALUE}, customer_id=INTRUDER)
    with pytest.raises(ContextLostError):
        await mem.load_context(OTHER_SESSION, expect_existing=True)


# ---------------------------------------------------------------------------- checks


def span_texts(span: ReadableSpan, allowed: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(where, text) for everything a span carries, minus what `allowed` permits."""
    yield "name", span.name
    yield "status", str(span.status.description)
    for key, value in (span.attributes or {}).items():
        if key == "memsdk.session_id" and "session_id" in allowed:
            assert value in (SESSION, OTHER_SESSION), value  # the one place it may be
            continue
        yield f"attribute {key}", f"{key}={value!r}"
    for event in span.events:
        yield f"event {event.name}", event.name
        attrs = dict(event.attributes or {})
        if event.name == "exception":
            assert set(attrs) == EXCEPTION_FIELDS, attrs  # no stacktrace, no escaped flag
            message = str(attrs["exception.message"])
            if not str(attrs["exception.type"]).startswith("memsdk."):
                assert message == "", attrs  # a foreign message could echo anything
            elif "session_id" in allowed:
                # memsdk's own message may name the session: only as its suffix.
                message = message.replace(f" [session_id={SESSION}]", "")
                message = message.replace(f" [session_id={OTHER_SESSION}]", "")
            attrs["exception.message"] = message
        for key, value in attrs.items():
            yield f"event {event.name} {key}", f"{key}={value!r}"
    for link in span.links:
        yield "link", repr(link.attributes)


def assert_private(
    otel: InMemoryOtel, caplog: pytest.LogCaptureFixture, allowed: tuple[str, ...], *paths: Path
) -> list[ReadableSpan]:
    """No marker (or machine path) in any span, event, metric or log record."""
    spans = otel.spans()
    assert spans, "no telemetry was collected"
    machine_paths = [str(Path(memsdk.__file__).resolve().parent), *map(str, paths)]
    for span in spans:
        for where, text in span_texts(span, allowed):
            assert "SECRET" not in text, f"{span.name}: {where}: {text}"
            for path in machine_paths:
                assert path not in text, f"{span.name}: {where}: {text}"
    metrics = otel.reader.get_metrics_data()
    assert metrics is not None
    assert "SECRET" not in metrics.to_json()
    if not allowed:
        exported = everything_exported(otel)
        assert "SECRET" not in exported
        assert "exception.stacktrace" not in exported
    for record in caplog.records:
        text = record.getMessage() + repr(
            {k: v for k, v in vars(record).items() if k not in ("msg", "args", "exc_info")}
        )
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        for marker in NOT_IN_LOGS:
            assert marker not in text, f"log record {record.name}: {text}"
    return spans


def exception_events(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for s in spans for e in s.events if e.name == "exception"]


def check_allowed_session_id(spans: list[ReadableSpan], allowed: tuple[str, ...]) -> None:
    """With the session id allowed, it does show where it may (the search above was real)."""
    events = exception_events(spans)
    tagged = [s for s in spans if (s.attributes or {}).get("memsdk.session_id") == SESSION]
    suffixed = [
        e for e in events if str(e["exception.message"]).endswith(f"[session_id={SESSION}]")
    ]
    if "session_id" in allowed:
        assert tagged and suffixed
    else:
        assert not tagged and not suffixed


# ---------------------------------------------------------------------------- tests


@ALLOWED
async def test_invalid_input_ownership_and_lost_sessions_leak_nothing(
    store_settings: dict[str, Any],
    otel: InMemoryOtel,
    caplog: pytest.LogCaptureFixture,
    allowed: tuple[str, ...],
) -> None:
    caplog.set_level(logging.DEBUG, logger="memsdk")
    config = Config(**store_settings, **TEST_TIMEOUTS, telemetry_attributes=allowed)
    async with MemoryClient(config, **otel.providers()) as mem:
        await drive_bad_input(mem)
    spans = assert_private(otel, caplog, allowed)
    events = exception_events(spans)
    messages = {str(e["exception.message"]) for e in events}
    # memsdk's own messages stay, naming the field and position it chose.
    assert any("nests deeper than 32 levels" in m for m in messages), messages
    assert any(m.startswith("turns[0].attributes") and "holds a set" in m for m in messages)
    assert "memsdk.errors.SessionOwnershipError" in {e["exception.type"] for e in events}
    check_allowed_session_id(spans, allowed)


@ALLOWED
async def test_store_redis_and_wal_failures_leak_nothing(
    tmp_path: Path,
    redis_server: RedisServer,
    otel: InMemoryOtel,
    caplog: pytest.LogCaptureFixture,
    allowed: tuple[str, ...],
) -> None:
    caplog.set_level(logging.DEBUG, logger="memsdk")
    store = HostileStore(SQLiteStore(str(tmp_path / "m.db")))
    redis_server.config_set("requirepass", PASSWORD)
    config = Config(
        store="sqlite:///unused.db",
        redis_url=f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0",
        telemetry_attributes=allowed,
        breaker_consecutive_failures=1_000,  # the failures below reach the store
        **TEST_TIMEOUTS,
    )
    async with MemoryClient(config, store=store, **otel.providers()) as mem:
        await mem.append_turns(SESSION, turns(), customer_id=CUSTOMER)
        await mem.update_meta(SESSION, page_context={KEY: VALUE}, customer_id=CUSTOMER)
        key = f"memsdk:{redis_namespace(config)}:{{{SESSION}}}:meta"
        raw = redis_server.client(password=PASSWORD)
        # The store raises a foreign exception whose message echoes the request (Redis
        # forgets the session first, so that reads reach the store).
        raw.delete(key)
        store.mode = "foreign"
        # A store outside its protocol is a StoreError to the caller (the foreign error is
        # chained, out of the message).
        with pytest.raises(StoreError):
            await mem.append_turns(SESSION, turns(1), customer_id=CUSTOMER)
        with pytest.raises(StoreError):
            await mem.update_meta(SESSION, page_context={KEY: VALUE}, customer_id=CUSTOMER)
        with contextlib.suppress(StoreError):  # L1 answers if Redis vouches for it
            await mem.load_context(SESSION, customer_id=CUSTOMER)
        # The store raises memsdk's own error, caused by a foreign one.
        raw.delete(key)
        raw.close()
        store.mode = "chained"
        await mem.load_context(SESSION, customer_id=CUSTOMER)  # degraded, unless Redis answers
        with pytest.raises(StoreUnavailableError):
            await mem.append_turns(SESSION, turns(2), customer_id=CUSTOMER)
        with pytest.raises(StoreUnavailableError):
            await mem.delete_session(SESSION)
        store.mode = None
        redis_server.kill()  # Redis refuses connections: redis-py names host and port
        await mem.load_context(SESSION, customer_id=CUSTOMER)
        await mem.append_turns(SESSION, turns(3), customer_id=CUSTOMER)

    # The write-ahead log fills while the store is down: backpressure, failing flushes.
    store.mode = "chained"
    wal = Config(
        store="sqlite:///unused.db",
        telemetry_attributes=allowed,
        wal_dir=str(tmp_path / "wal"),
        wal_max_bytes=16 * 1024,
        wal_segment_bytes=4 * 1024,
        write_timeout=0.3,
        wal_close_timeout=0.0,
    )
    async with MemoryClient(wal, store=store, **otel.providers()) as mem:
        with pytest.raises(BackpressureError):
            for n in range(200):
                await mem.append_turns(SESSION, turns(n), customer_id=CUSTOMER)

    redis_errors = [
        p for p in otel.points("db.client.operation.duration")
        if p.attributes["db.system.name"] == "redis" and "error.type" in p.attributes
    ]  # fmt: skip
    assert redis_errors, "Redis never failed"
    assert store.failed["foreign"] >= 2 and store.failed["chained"] >= 2  # writes reach it
    spans = assert_private(otel, caplog, allowed, tmp_path)
    events = exception_events(spans)
    types = {str(e["exception.type"]) for e in events}
    assert "RuntimeError" in types, types  # builtins are named without their module
    assert "memsdk.errors.BackpressureError" in types
    flushes = [s for s in otel.spans("memsdk.wal.flush") if s.status.description]
    assert flushes and {s.status.description for s in flushes} == {"StoreUnavailableError"}
    check_allowed_session_id(spans, allowed)
