"""DynamoDBStore on its own against a real DynamoDB Local (no mocks): the item codec,
create_table, DynamoDB's limits and error mapping, and the wire details of the aioboto3
data path. What every store must do is checked on both data paths in
tests/contract/test_store_contract.py."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.records import SummaryRecord
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
from tests.contract.conftest import SID, TRICKY_ATTRIBUTES, meta, tid, turn, write
from tests.harness.dynamodb_local import DynamoDBLocal, free_port

pytestmark = pytest.mark.dynamodb


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
    summ = SummaryRecord(text="likes horror", through_turn_id=tid(2), created_at_ms=5, expires_at=9)
    metas = [
        meta(3, page_context=TRICKY_ATTRIBUTES, attributes={"k": [1, {"x": {}}]}, summary=summ),
        meta(1, customer_id=None, last_turn_id=tid(1), floor_turn_id=tid(0)),
    ]
    for record in metas:
        item = meta_to_item(record)
        assert item["PK"] == {"S": "SESSION#" + SID} and item["SK"] == {"S": "META"}
        assert item["expires_at"] == {"N": str(record.expires_at)}
        assert item_to_meta(item) == record
    assert "customer_id" not in meta_to_item(metas[1])
    assert "summary_text" not in meta_to_item(metas[1])
    for t in [
        turn(1, content="", attributes={}),
        turn(2, content="ホラー漫画 😀", intent="product_discovery", attributes=TRICKY_ATTRIBUTES),
    ]:
        item = turn_to_item(SID, t)
        assert item["SK"] == {"S": "TURN#" + t.turn_id}
        assert item_to_turn(item) == t
    assert "intent" not in turn_to_item(SID, turn(1))
    item = summary_to_item(SID, summ)
    assert item["SK"] == {"S": "SUMMARY#" + tid(2)}
    assert item_to_summary(item) == summ


def test_codec_rejects_malformed_items_with_store_error() -> None:
    item = turn_to_item(SID, turn(1))
    del item["role"]
    with pytest.raises(StoreError, match="role"):
        item_to_turn(item)
    meta_item = meta_to_item(meta(1))
    meta_item["attributes"] = {"S": "[1, 2]"}  # JSON, but not an object
    with pytest.raises(StoreError, match="attributes"):
        item_to_meta(meta_item)
    with pytest.raises(StoreError):
        item_to_meta({"PK": {"S": "OTHER#x"}, "SK": {"S": "META"}})


# --- commit ------------------------------------------------------------------------------


async def test_oversized_item_is_a_store_error_naming_the_code(store: DynamoDBStore) -> None:
    huge = turn(1, content="x" * 410_000)
    with pytest.raises(StoreError, match="ValidationException") as info:
        await store.commit(write(meta(1), None, [huge]))
    assert not isinstance(info.value, StoreUnavailableError)


async def test_repeated_meta_only_write_is_applied(
    store: DynamoDBStore, ddb_spec: DynamoDBStoreSpec
) -> None:
    # A META-only write whose reply was lost: the stored META is exactly ours, so the
    # repeat is applied. (SQLiteStore refuses the same repeat: the protocol does not decide
    # between the two yet; see tests/unit/test_sqlite_store.py.)
    assert (await store.commit(write(meta(1), None, [turn(1)]))).applied
    meta_only = write(meta(2, last_turn_id=tid(1), page_context={"p": 1}), 1)
    assert (await store.commit(meta_only)).applied
    assert (await store.commit(meta_only)).applied
    assert await store.get_meta(SID, consistent=True) == meta_only.meta
    assert sort_keys(await raw_items(ddb_spec)) == ["META", "TURN#" + tid(1)]


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
            s.commit(write(meta(1), None)),
            s.commit(write(meta(1), None, [turn(1)])),
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
            await s.commit(write(meta(1), None, [turn(1)]))
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
            await s.commit(write(meta(1), None))
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
    for exc, is_write, maybe in [
        (reset, True, True),  # reset after sending: may have landed
        (refused, True, False),
        (timeout, True, True),
        (timeout, False, False),  # reads never "apply"
    ]:
        mapped = raised(exc, write=is_write)
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
    w = write(meta(2), 1, [turn(1)])
    none = CancellationReason(Code="None")
    conflict = CancellationReason(Code="TransactionConflict")
    outcome = s._cancelled(w, [conflict, none], ambiguous=False)
    assert not outcome.applied and outcome.current is None
    with pytest.raises(StoreUnavailableError) as info:
        s._cancelled(w, [none, conflict], ambiguous=True)
    assert info.value.maybe_applied is True
    with pytest.raises(StoreUnavailableError) as info:
        s._cancelled(w, [CancellationReason(Code="ThrottlingError"), none], ambiguous=False)
    assert info.value.maybe_applied is False
    with pytest.raises(StoreError, match="ValidationError"):
        s._cancelled(w, [CancellationReason(Code="ValidationError"), none], ambiguous=False)


async def test_description_names_the_table(ddb_spec: DynamoDBStoreSpec) -> None:
    assert new_store(ddb_spec).description == f"dynamodb:{ddb_spec.table}"
