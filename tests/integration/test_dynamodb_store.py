"""DynamoDBStore and its item codec against a real DynamoDB Local (no mocks)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.store.base import MetaRecord, SessionWrite, SummaryRecord, TurnRecord
from memsdk.store.dynamodb import DynamoDBStore
from memsdk.store.dynamodb_aioboto3 import Aioboto3DataPath, _Guard, create_table
from memsdk.store.dynamodb_items import (
    item_to_meta,
    item_to_summary,
    item_to_turn,
    meta_to_item,
    pk,
    summary_to_item,
    turn_to_item,
)
from memsdk.store.dynamodb_path import CancellationReason
from tests.harness.dynamodb_local import DynamoDBLocal, free_port

pytestmark = pytest.mark.dynamodb

# Real time, not a fixed date: DynamoDB Local 3.x really deletes items whose TTL
# attribute (expires_at) is in the past, within seconds. Expiry is tested through
# SessionWrite.now_s instead, so stored items never expire during a test.
NOW = int(time.time())  # epoch seconds used as "now" by every write below
LIVE = NOW + 86_400
BASE_MS = NOW * 1000
SID = "sess-abc123"

TRICKY_ATTRIBUTES: dict[str, Any] = {
    "big": 2**70,
    "neg": -(2**65),
    "float": 0.1,
    "tiny": 5e-324,
    "empty_map": {},
    "empty_list": [],
    "nested": {"cards": [{"asin": "B08X1YRSTR", "price": 12.5, "tags": ["a", ""]}, None, True]},
    "unicode": "ホラー漫画 \u2028 😀",
}


def tid(n: int) -> str:
    """A well-formed turn id; larger n sorts later."""
    return f"{BASE_MS + n:013d}0000deadbeef"


def make_turn(n: int, content: str = "hello", **kw: Any) -> TurnRecord:
    fields: dict[str, Any] = {
        "turn_id": tid(n),
        "role": "user",
        "content": content,
        "intent": None,
        "attributes": {},
        "created_at_ms": BASE_MS + n,
        "expires_at": NOW + 30 * 86_400,
    }
    fields.update(kw)
    return TurnRecord(**fields)


def make_meta(version: int, *, expires_at: int = LIVE, sid: str = SID, **kw: Any) -> MetaRecord:
    fields: dict[str, Any] = {
        "session_id": sid,
        "customer_id": "C123",
        "created_at_ms": BASE_MS,
        "updated_at_ms": BASE_MS + version,
        "turn_count": version,
        "last_turn_id": None,
        "floor_turn_id": "",
        "page_context": {},
        "attributes": {},
        "expires_at": expires_at,
        "version": version,
    }
    fields.update(kw)
    return MetaRecord(**fields)


def make_write(
    meta: MetaRecord,
    expected: int | None,
    turns: list[TurnRecord] | None = None,
    summary: SummaryRecord | None = None,
    *,
    now_s: int = NOW,
) -> SessionWrite:
    return SessionWrite(
        meta=meta, expected_version=expected, now_s=now_s, turns=turns or [], summary=summary
    )


def new_store(
    spec: DynamoDBStoreSpec, *, max_attempts: int = 2, timeout: float = 5.0
) -> DynamoDBStore:
    path = Aioboto3DataPath(
        spec,
        max_pool_connections=8,
        connect_timeout=timeout,
        read_timeout=timeout,
        max_attempts=max_attempts,
    )
    return DynamoDBStore(spec, path)


@pytest.fixture
async def store(ddb_spec: DynamoDBStoreSpec) -> AsyncIterator[DynamoDBStore]:
    s = new_store(ddb_spec)
    await s.open()
    yield s
    await s.aclose()


async def raw_items(spec: DynamoDBStoreSpec, session_id: str = SID) -> list[dict[str, Any]]:
    """Every item of a session, read straight from the table (bypassing the store)."""
    async with aioboto3.Session().client(
        "dynamodb", region_name=spec.region, endpoint_url=spec.endpoint
    ) as client:
        resp = await client.query(
            TableName=spec.table,
            KeyConditionExpression="PK = :pk",
            ExpressionAttributeValues={":pk": {"S": pk(session_id)}},
            ConsistentRead=True,
        )
        items: list[dict[str, Any]] = resp["Items"]
        return items


def sort_keys(items: list[dict[str, Any]]) -> list[str]:
    return sorted(i["SK"]["S"] for i in items)


# --- codec -------------------------------------------------------------------------------


def test_codec_round_trip_without_io() -> None:
    summary = SummaryRecord(
        text="likes horror", through_turn_id=tid(2), created_at_ms=5, expires_at=9
    )
    metas = [
        make_meta(
            3, page_context=TRICKY_ATTRIBUTES, attributes={"k": [1, {"x": {}}]}, summary=summary
        ),
        make_meta(1, customer_id=None, last_turn_id=tid(1), floor_turn_id=tid(0)),
    ]
    for meta in metas:
        item = meta_to_item(meta)
        assert item["PK"] == {"S": "SESSION#" + SID} and item["SK"] == {"S": "META"}
        assert item["expires_at"] == {"N": str(meta.expires_at)}
        assert item_to_meta(item) == meta
    assert "customer_id" not in meta_to_item(metas[1])
    assert "summary_text" not in meta_to_item(metas[1])
    for turn in [
        make_turn(1, content=""),
        make_turn(
            2, content="ホラー漫画 😀", intent="product_discovery", attributes=TRICKY_ATTRIBUTES
        ),
    ]:
        item = turn_to_item(SID, turn)
        assert item["SK"] == {"S": "TURN#" + turn.turn_id}
        assert item_to_turn(item) == turn
    assert "intent" not in turn_to_item(SID, make_turn(1))
    item = summary_to_item(SID, summary)
    assert item["SK"] == {"S": "SUMMARY#" + tid(2)}
    assert item_to_summary(item) == summary


def test_codec_rejects_malformed_items_with_store_error() -> None:
    item = turn_to_item(SID, make_turn(1))
    del item["role"]
    with pytest.raises(StoreError, match="role"):
        item_to_turn(item)
    meta_item = meta_to_item(make_meta(1))
    meta_item["attributes"] = {"S": "[1, 2]"}  # JSON, but not an object
    with pytest.raises(StoreError, match="attributes"):
        item_to_meta(meta_item)
    with pytest.raises(StoreError):
        item_to_meta({"PK": {"S": "OTHER#x"}, "SK": {"S": "META"}})


async def test_round_trip_through_dynamodb(store: DynamoDBStore) -> None:
    summary = SummaryRecord(
        text="résumé 😀", through_turn_id=tid(1), created_at_ms=7, expires_at=LIVE
    )
    meta = make_meta(
        1,
        last_turn_id=tid(3),
        page_context={"asin": "B08X1YRSTR", "deep": [[[]]], "n": 2**64 + 1},
        attributes=TRICKY_ATTRIBUTES,
        summary=summary,
    )
    turns = [
        make_turn(1, content=""),
        make_turn(2, content="Show me horror manga ホラー 😀", intent="product_discovery"),
        make_turn(3, role="assistant", content="x" * 10_000, attributes=TRICKY_ATTRIBUTES),
    ]
    outcome = await store.commit(make_write(meta, None, turns, summary))
    assert outcome.applied and outcome.current is None
    for consistent in (True, False):
        assert await store.get_meta(SID, consistent=consistent) == meta
    got = await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert got == list(reversed(turns))
    assert await store.get_meta("other-session", consistent=True) is None


# --- commit ------------------------------------------------------------------------------


async def test_commit_with_expected_version(
    store: DynamoDBStore, ddb_spec: DynamoDBStoreSpec
) -> None:
    assert (await store.commit(make_write(make_meta(1), None))).applied
    v2 = make_meta(2, last_turn_id=tid(1))
    assert (await store.commit(make_write(v2, 1, [make_turn(1)]))).applied
    assert await store.get_meta(SID, consistent=True) == v2
    # META-only write: a single conditional PutItem.
    v3 = make_meta(3, last_turn_id=tid(1), page_context={"asin": "X"})
    assert (await store.commit(make_write(v3, 2))).applied
    assert await store.get_meta(SID, consistent=True) == v3
    assert sort_keys(await raw_items(ddb_spec)) == ["META", "TURN#" + tid(1)]


async def test_commit_version_conflict_returns_current_and_writes_nothing(
    store: DynamoDBStore, ddb_spec: DynamoDBStoreSpec
) -> None:
    stored = make_meta(5, attributes={"who": "first"})
    assert (await store.commit(make_write(stored, None))).applied
    # With turns (TransactWriteItems) and without (PutItem): both report the stored META.
    stale = make_write(make_meta(5, attributes={"who": "second"}), 4, [make_turn(1)])
    outcome = await store.commit(stale)
    assert not outcome.applied and outcome.current == stored
    outcome = await store.commit(make_write(make_meta(5, attributes={"who": "third"}), 4))
    assert not outcome.applied and outcome.current == stored
    # "absent or expired" expectation against a live META fails the same way.
    outcome = await store.commit(make_write(make_meta(1), None, [make_turn(2)]))
    assert not outcome.applied and outcome.current == stored
    outcome = await store.commit(make_write(make_meta(1), None))
    assert not outcome.applied and outcome.current == stored
    assert sort_keys(await raw_items(ddb_spec)) == ["META"]
    assert await store.get_meta(SID, consistent=True) == stored


async def test_commit_expected_version_on_absent_meta(store: DynamoDBStore) -> None:
    outcome = await store.commit(make_write(make_meta(2), 1, [make_turn(1)]))
    assert not outcome.applied and outcome.current is None
    outcome = await store.commit(make_write(make_meta(2), 1))
    assert not outcome.applied and outcome.current is None
    assert await store.get_meta(SID, consistent=True) is None


async def test_new_incarnation_replaces_expired_meta(store: DynamoDBStore) -> None:
    old = make_meta(7, expires_at=LIVE)
    assert (await store.commit(make_write(old, None))).applied
    # One second before expiry the session is live: refused, with and without turns.
    new = make_meta(1, floor_turn_id=tid(1), last_turn_id=tid(2))
    for turns in ([make_turn(2)], []):
        outcome = await store.commit(make_write(new, None, turns, now_s=LIVE - 1))
        assert not outcome.applied and outcome.current == old
    # expires_at == now counts as expired (expires_at <= now).
    outcome = await store.commit(make_write(new, None, [make_turn(2)], now_s=LIVE))
    assert outcome.applied
    assert await store.get_meta(SID, consistent=True) == new
    newer = make_meta(1, floor_turn_id=tid(3))
    assert (await store.commit(make_write(newer, None, now_s=LIVE + 100))).applied
    assert await store.get_meta(SID, consistent=True) == newer


async def test_recommit_of_identical_write_is_idempotent(
    store: DynamoDBStore, ddb_spec: DynamoDBStoreSpec
) -> None:
    assert (await store.commit(make_write(make_meta(1), None))).applied
    summary = SummaryRecord(text="s", through_turn_id=tid(1), created_at_ms=1, expires_at=LIVE)
    write = make_write(
        make_meta(2, last_turn_id=tid(2), summary=summary),
        1,
        [make_turn(1, content=""), make_turn(2, attributes=TRICKY_ATTRIBUTES)],
        summary,
    )
    assert (await store.commit(write)).applied
    # The reply was "lost": the same write again (META condition now fails, turns exist).
    outcome = await store.commit(write)
    # Applied by the first commit, whose META (ALL_OLD of the failed condition) is this one.
    assert outcome.applied and outcome.already_applied and outcome.current == write.meta
    assert sort_keys(await raw_items(ddb_spec)) == [
        "META",
        "SUMMARY#" + tid(1),
        "TURN#" + tid(1),
        "TURN#" + tid(2),
    ]
    # A META-only write whose reply was lost: the stored META is exactly ours.
    meta_only = make_write(make_meta(3, last_turn_id=tid(2), page_context={"p": 1}), 2)
    assert (await store.commit(meta_only)).applied
    assert (await store.commit(meta_only)).applied
    assert len(await raw_items(ddb_spec)) == 4


async def test_partly_written_turns_are_named_and_nothing_is_written(
    store: DynamoDBStore, ddb_spec: DynamoDBStoreSpec
) -> None:
    first = make_meta(1, last_turn_id=tid(1))
    assert (await store.commit(make_write(first, None, [make_turn(1)]))).applied
    # A WAL replay whose batch holds turn 1 (already written) and turn 2 (not yet).
    outcome = await store.commit(
        make_write(make_meta(2, last_turn_id=tid(2)), None, [make_turn(1), make_turn(2)])
    )
    assert not outcome.applied
    assert outcome.existing_turn_ids == frozenset({tid(1)})
    assert outcome.current == first
    assert sort_keys(await raw_items(ddb_spec)) == ["META", "TURN#" + tid(1)]


async def test_turn_id_collision_raises_store_error(store: DynamoDBStore) -> None:
    first = make_meta(1, last_turn_id=tid(1))
    assert (await store.commit(make_write(first, None, [make_turn(1, content="original")]))).applied
    clash = make_write(make_meta(2), 1, [make_turn(1, content="SECRET-CONTENT"), make_turn(2)])
    with pytest.raises(StoreError, match="collision") as info:
        await store.commit(clash)
    assert not isinstance(info.value, StoreUnavailableError)
    assert "SECRET" not in str(info.value)  # no item contents in messages
    assert await store.get_meta(SID, consistent=True) == first
    turns = await store.query_turns(SID, before_turn_id=None, limit=10, consistent=True)
    assert [t.content for t in turns] == ["original"]


async def test_oversized_item_is_a_store_error_naming_the_code(store: DynamoDBStore) -> None:
    huge = make_turn(1, content="x" * 410_000)
    with pytest.raises(StoreError, match="ValidationException") as info:
        await store.commit(make_write(make_meta(1), None, [huge]))
    assert not isinstance(info.value, StoreUnavailableError)


# --- query_turns -------------------------------------------------------------------------


async def test_query_turns_order_limit_and_bound(store: DynamoDBStore) -> None:
    turns = [make_turn(n, content=f"turn {n}") for n in range(1, 6)]
    summary = SummaryRecord(text="s", through_turn_id=tid(9), created_at_ms=1, expires_at=LIVE)
    meta = make_meta(1, last_turn_id=tid(5), summary=summary)
    assert (await store.commit(make_write(meta, None, turns, summary))).applied

    async def ids(before: str | None, limit: int) -> list[str]:
        got = await store.query_turns(SID, before_turn_id=before, limit=limit, consistent=True)
        return [t.turn_id for t in got]

    assert await ids(None, 100) == [tid(n) for n in (5, 4, 3, 2, 1)]  # no META, no SUMMARY
    assert await ids(None, 2) == [tid(5), tid(4)]
    assert await ids(tid(4), 2) == [tid(3), tid(2)]  # the bound itself is excluded
    assert await ids(tid(4), 1) == [tid(3)]
    assert await ids(tid(2), 10) == [tid(1)]
    assert await ids(tid(1), 10) == []
    assert await ids(tid(3)[:-1] + "0", 10) == [tid(2), tid(1)]  # a bound that is no item
    assert await ids(tid(99), 3) == [tid(5), tid(4), tid(3)]
    assert await ids("", 10) == []
    assert await ids(None, 0) == []
    assert await store.query_turns("unknown", before_turn_id=None, limit=5, consistent=False) == []


async def test_query_turns_pages_past_one_megabyte(store: DynamoDBStore) -> None:
    # Five 300 KB turns: a Query page stops at 1 MB, so the store must follow LastEvaluatedKey.
    turns = [make_turn(n, content=chr(0x41 + n) * 300_000) for n in range(1, 6)]
    assert (await store.commit(make_write(make_meta(1), None, turns[:3]))).applied
    assert (await store.commit(make_write(make_meta(2), 1, turns[3:]))).applied
    got = await store.query_turns(SID, before_turn_id=None, limit=5, consistent=True)
    assert [t.turn_id for t in got] == [tid(n) for n in (5, 4, 3, 2, 1)]
    got = await store.query_turns(SID, before_turn_id=tid(5), limit=4, consistent=True)
    assert got == list(reversed(turns[:4]))


# --- purge_session -----------------------------------------------------------------------


async def test_purge_session_respects_the_bound_and_keeps_meta(
    store: DynamoDBStore, ddb_spec: DynamoDBStoreSpec
) -> None:
    turns = [make_turn(n) for n in range(1, 31)]  # > 25: BatchWriteItem needs two chunks
    s10 = SummaryRecord(text="a", through_turn_id=tid(10), created_at_ms=1, expires_at=LIVE)
    s30 = SummaryRecord(text="b", through_turn_id=tid(30), created_at_ms=2, expires_at=LIVE)
    assert (await store.commit(make_write(make_meta(1), None, turns, s10))).applied
    assert (await store.commit(make_write(make_meta(2, summary=s30), 1, [], s30))).applied
    other = make_meta(1, sid="other")
    assert (await store.commit(make_write(other, None, [make_turn(1)]))).applied

    # Items up to the bound go (a newer incarnation's, above it, would stay); META stays.
    await store.purge_session(SID, through_turn_id=tid(27))
    remaining = sort_keys(await raw_items(ddb_spec))
    assert remaining == sorted(
        ["META", "SUMMARY#" + tid(30), "TURN#" + tid(28), "TURN#" + tid(29), "TURN#" + tid(30)]
    )
    await store.purge_session(SID, through_turn_id=tid(30))
    assert sort_keys(await raw_items(ddb_spec)) == ["META"]
    assert await store.get_meta("other", consistent=True) == other  # other sessions untouched
    assert len(await raw_items(ddb_spec, "other")) == 2
    # Purging an absent session is a quiet no-op.
    await store.purge_session("never", through_turn_id=tid(5))


# --- create_table ------------------------------------------------------------------------


async def test_create_table_is_idempotent_and_enables_ttl(
    ddb_local: DynamoDBLocal, ddb_spec: DynamoDBStoreSpec
) -> None:
    assert await create_table(ddb_spec) is False  # the fixture created it already
    fresh = DynamoDBStoreSpec(
        table=f"memsdk-fresh-{uuid.uuid4().hex[:8]}",
        region="us-east-1",
        endpoint=ddb_local.endpoint,
    )
    assert await create_table(fresh) is True
    assert await create_table(fresh) is False
    async with aioboto3.Session().client(
        "dynamodb", region_name="us-east-1", endpoint_url=ddb_local.endpoint
    ) as client:
        for spec in (ddb_spec, fresh):
            ttl = (await client.describe_time_to_live(TableName=spec.table))[
                "TimeToLiveDescription"
            ]
            assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
            table = (await client.describe_table(TableName=spec.table))["Table"]
            assert table["TableStatus"] == "ACTIVE"
            assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
            assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
                ("PK", "HASH"),
                ("SK", "RANGE"),
            }


# --- errors ------------------------------------------------------------------------------


async def test_missing_table_is_a_store_error_naming_create_table(ddb_local: DynamoDBLocal) -> None:
    spec = DynamoDBStoreSpec(
        table="memsdk-no-such-table", region="us-east-1", endpoint=ddb_local.endpoint
    )
    s = new_store(spec)
    await s.open()
    try:
        for call in (
            s.get_meta(SID, consistent=True),
            s.query_turns(SID, before_turn_id=None, limit=3, consistent=False),
            s.commit(make_write(make_meta(1), None)),
            s.commit(make_write(make_meta(1), None, [make_turn(1)])),
        ):
            with pytest.raises(StoreError, match="create-table") as info:
                await call
            assert not isinstance(info.value, StoreUnavailableError)
            assert isinstance(info.value.__cause__, ClientError)
    finally:
        await s.aclose()


async def test_connection_refused_is_unavailable_and_not_applied() -> None:
    spec = DynamoDBStoreSpec(
        table="memsdk-x", region="us-east-1", endpoint=f"http://127.0.0.1:{free_port()}"
    )
    s = new_store(spec, max_attempts=2, timeout=1.0)
    await s.open()
    try:
        with pytest.raises(StoreUnavailableError) as info:
            await s.get_meta(SID, consistent=True)
        assert info.value.maybe_applied is False
        # Refused on every attempt: nothing can have landed.
        with pytest.raises(StoreUnavailableError) as info:
            await s.commit(make_write(make_meta(1), None, [make_turn(1)]))
        assert info.value.maybe_applied is False
        assert info.value.session_id == SID
    finally:
        await s.aclose()


async def test_lost_reply_then_refusal_reports_maybe_applied() -> None:
    """Attempt 1 reaches a server that drops the connection, attempt 2 is refused."""
    requests = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        await reader.read(1)  # the request arrived...
        server.close()  # ...stop listening: the retry is refused
        writer.transport.abort()  # ...and the reply is lost

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = DynamoDBStoreSpec(
        table="memsdk-x", region="us-east-1", endpoint=f"http://127.0.0.1:{port}"
    )
    s = new_store(spec, max_attempts=2, timeout=2.0)
    await s.open()
    try:
        with pytest.raises(StoreUnavailableError) as info:
            await s.commit(make_write(make_meta(1), None))
        assert info.value.maybe_applied is True
        assert requests == 1
        assert isinstance(info.value.__cause__, EndpointConnectionError)
    finally:
        await s.aclose()
        server.close()
        await server.wait_closed()


def test_guard_maps_transport_errors_and_passes_cancellation() -> None:
    def raised(exc: BaseException, *, write: bool) -> BaseException:
        try:
            with _Guard("PutItem", write=write, table="t", session_id="s"):
                raise exc
        except BaseException as mapped:
            return mapped
        raise AssertionError("guard swallowed the exception")

    reset = EndpointConnectionError(endpoint_url="u", error=aiohttp.ClientOSError(104, "reset"))
    refused = EndpointConnectionError(
        endpoint_url="u",
        error=aiohttp.ClientConnectorError(connection_key=None, os_error=OSError(111, "x")),  # type: ignore[arg-type]
    )
    timeout = ReadTimeoutError(endpoint_url="u")
    for exc, write, maybe in [
        (reset, True, True),  # reset after sending: may have landed
        (refused, True, False),
        (timeout, True, True),
        (timeout, False, False),  # reads never "apply"
    ]:
        mapped = raised(exc, write=write)
        assert isinstance(mapped, StoreUnavailableError), exc
        assert mapped.maybe_applied is maybe, exc
        assert mapped.__cause__ is exc
    throttled = ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "PutItem",
    )
    mapped = raised(throttled, write=True)
    assert isinstance(mapped, StoreUnavailableError) and mapped.maybe_applied is False
    server = ClientError(
        {
            "Error": {"Code": "InternalServerError", "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        "PutItem",
    )
    mapped = raised(server, write=True)
    assert isinstance(mapped, StoreUnavailableError) and mapped.maybe_applied is True
    denied = ClientError(
        {
            "Error": {"Code": "AccessDeniedException", "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "GetItem",
    )
    mapped = raised(denied, write=False)
    assert type(mapped) is StoreError and "AccessDeniedException" in str(mapped)
    cancelled = asyncio.CancelledError()
    assert raised(cancelled, write=True) is cancelled
    deadline = TimeoutError()
    assert raised(deadline, write=True) is deadline
    assert isinstance(raised(socket.gaierror(), write=False), StoreUnavailableError)


def test_cancellation_reasons_conflict_and_throttle() -> None:
    """DynamoDB Local never raises TransactionConflict or throttles: feed the reasons in."""
    s = new_store(DynamoDBStoreSpec(table="memsdk-x", region="us-east-1", endpoint=None))
    write = make_write(make_meta(2), 1, [make_turn(1)])
    none = CancellationReason(Code="None")
    conflict = CancellationReason(Code="TransactionConflict")
    outcome = s._cancelled(write, [conflict, none], ambiguous=False)
    assert not outcome.applied and outcome.current is None
    with pytest.raises(StoreUnavailableError) as info:
        s._cancelled(write, [none, conflict], ambiguous=True)
    assert info.value.maybe_applied is True
    with pytest.raises(StoreUnavailableError) as info:
        s._cancelled(write, [CancellationReason(Code="ThrottlingError"), none], ambiguous=False)
    assert info.value.maybe_applied is False
    with pytest.raises(StoreError, match="ValidationError"):
        s._cancelled(write, [CancellationReason(Code="ValidationError"), none], ambiguous=False)


async def test_store_must_be_open(ddb_spec: DynamoDBStoreSpec) -> None:
    s = new_store(ddb_spec)
    assert s.description == f"dynamodb:{ddb_spec.table}"
    with pytest.raises(StoreError, match="open"):
        await s.get_meta(SID, consistent=True)
    await s.open()
    await s.open()  # idempotent
    assert await s.get_meta(SID, consistent=True) is None
    await s.aclose()
    await s.aclose()  # idempotent
    with pytest.raises(StoreError, match="open"):
        await s.get_meta(SID, consistent=True)
