"""The store conformance suite's fixtures: every store, opened on a fresh file or table, and
a raw view of the items it keeps; plus the record builders the store tests share.

Which stores run is `store_settings` (tests/conftest.py): a new store joins every contract
suite with one parameter there, and joins this one with a RawView below.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aioboto3
import pytest

from memsdk.config import Config, DynamoDBStoreSpec, SQLiteStoreSpec
from memsdk.records import MetaRecord, SessionWrite, SummaryRecord, TurnRecord
from memsdk.store.base import Store
from memsdk.wiring import build_store
from tests.conftest import TEST_TIMEOUTS

# Real time, not a fixed date: DynamoDB Local 3.x really deletes items whose TTL attribute
# (expires_at) is in the past, within seconds. Expiry is tested through SessionWrite.now_s
# instead, so stored items never expire during a test.
NOW = int(time.time())
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


def pk(session_id: str = SID) -> str:
    """The partition key every store files a session's items under."""
    return f"SESSION#{session_id}"


def turn(n: int, content: str = "hello", **fields: Any) -> TurnRecord:
    """TURN n of a live session; `fields` override the defaults."""
    values: dict[str, Any] = {
        "turn_id": tid(n),
        "role": "user",
        "content": content,
        "intent": None,
        "attributes": {"n": n},
        "created_at_ms": BASE_MS + n,
        "expires_at": NOW + 30 * 86_400,
        **fields,
    }
    return TurnRecord(**values)


def summary(n: int, **fields: Any) -> SummaryRecord:
    """A summary through turn n; `fields` override the defaults."""
    values: dict[str, Any] = {
        "text": f"summary through {n}",
        "through_turn_id": tid(n),
        "created_at_ms": BASE_MS + n,
        "expires_at": LIVE,
        **fields,
    }
    return SummaryRecord(**values)


def meta(version: int, *, sid: str = SID, **fields: Any) -> MetaRecord:
    """META at `version` of session `sid`, live until LIVE; `fields` override the defaults."""
    values: dict[str, Any] = {
        "session_id": sid,
        "customer_id": "C123",
        "created_at_ms": BASE_MS,
        "updated_at_ms": BASE_MS + version,
        "turn_count": version,
        "last_turn_id": None,
        "floor_turn_id": "",
        "page_context": {},
        "attributes": {},
        "expires_at": LIVE,
        "version": version,
        **fields,
    }
    return MetaRecord(**values)


def write(
    meta_: MetaRecord,
    expected: int | None,
    turns: Iterable[TurnRecord] = (),
    summary_: SummaryRecord | None = None,
    *,
    now_s: int = NOW,
) -> SessionWrite:
    """A write of `meta_` (and turns, summary) expecting META at version `expected`."""
    return SessionWrite(
        meta=meta_, expected_version=expected, now_s=now_s, turns=list(turns), summary=summary_
    )


Items = dict[tuple[str, str], int]


class RawView(Protocol):
    """The store's items as they lie, read or broken behind the store's back."""

    async def items(self) -> Items:
        """Every item of the store: (PK, SK) -> expires_at."""
        ...

    async def garble(self, session_id: str, sk: str) -> None:
        """Replace one stored item's content with something no memsdk record decodes from."""
        ...


class SQLiteRaw:
    """A plain sqlite3 connection on the store's file."""

    def __init__(self, spec: SQLiteStoreSpec) -> None:
        self._path = spec.path

    def _run(self, sql: str, *args: str) -> list[Any]:
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    async def items(self) -> Items:
        """Every row of the items table: (pk, sk) -> expires_at."""
        rows = self._run("SELECT pk, sk, expires_at FROM items")
        return {(p, s): exp for p, s, exp in rows}

    async def garble(self, session_id: str, sk: str) -> None:
        """Set the row's body to `{}`: JSON, but no record."""
        self._run("UPDATE items SET body = x'7b7d' WHERE pk = ? AND sk = ?", pk(session_id), sk)


class DynamoDBRaw:
    """A plain aioboto3 client on the store's table."""

    def __init__(self, spec: DynamoDBStoreSpec) -> None:
        self._spec = spec

    def _client(self) -> Any:
        return aioboto3.Session().client(
            "dynamodb", region_name=self._spec.region, endpoint_url=self._spec.endpoint
        )

    async def items(self) -> Items:
        """A consistent Scan of the table: (PK, SK) -> expires_at."""
        found: Items = {}
        async with self._client() as client:
            paginator = client.get_paginator("scan")
            async for page in paginator.paginate(TableName=self._spec.table, ConsistentRead=True):
                for item in page["Items"]:
                    key = (item["PK"]["S"], item["SK"]["S"])
                    found[key] = int(item["expires_at"]["N"])
        return found

    async def garble(self, session_id: str, sk: str) -> None:
        """Put a bare item (keys and expiry, none of a record's attributes) in its place."""
        item = {"PK": {"S": pk(session_id)}, "SK": {"S": sk}, "expires_at": {"N": str(LIVE)}}
        async with self._client() as client:
            await client.put_item(TableName=self._spec.table, Item=item)


@dataclass(frozen=True)
class StoreUnderTest:
    """One store of the parametrization: its id, how to build it, a raw view of its items."""

    name: str
    config: Config
    raw: RawView

    def new(self) -> Store:
        """A new, unopened store on the test's file or table (as MemoryClient builds it)."""
        return build_store(self.config)


def raw_view(spec: SQLiteStoreSpec | DynamoDBStoreSpec) -> RawView:
    """The raw view of the store that `spec` names."""
    if isinstance(spec, SQLiteStoreSpec):
        return SQLiteRaw(spec)
    return DynamoDBRaw(spec)


@pytest.fixture
def backend(request: pytest.FixtureRequest, store_settings: dict[str, Any]) -> StoreUnderTest:
    """The store under test (each parameter of `store_settings`), fresh and empty."""
    config = Config(**{**store_settings, **TEST_TIMEOUTS})
    name: str = request.node.callspec.params["store_settings"]
    return StoreUnderTest(name=name, config=config, raw=raw_view(config.store_spec))


@pytest.fixture
async def store(backend: StoreUnderTest) -> AsyncIterator[Store]:
    """The store under test, open."""
    opened = backend.new()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
