"""Hostile bytes at every decode point: only the tier's ordinary failure (issue 14, finding 6).

Whatever Redis, the WAL file, a SQLite row or a DynamoDB reply holds, memsdk answers with
what that tier normally fails with: a miss for Redis, UndecodableRecord (rejected/) for a
WAL record, StoreError for the stores. Random bytes, random JSON and, above all, deeply
nested JSON, on which msgspec raises RecursionError rather than a DecodeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st

from memsdk.cache import redis as redis_cache
from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import StoreError
from memsdk.records import MetaRecord
from memsdk.store.dynamodb import DynamoDBStore
from memsdk.store.dynamodb_lean import LeanDataPath
from memsdk.store.sqlite import SQLiteStore
from memsdk.write_buffer import BufferedAppend, UndecodableRecord, decode_append
from tests.harness.http_endpoint import loopback_endpoint
from tests.property.conftest import profile_settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def hostile(draw: st.DrawFn, valid: bytes) -> bytes:
    """Bytes a hostile writer might leave: noise, JSON of any shape, a valid value with a
    field replaced by deep nesting, or a valid value cut or flipped."""
    kind = draw(
        st.sampled_from(["noise", "json", "deep", "deep_field", "deep_string", "cut", "flip"])
    )
    if kind == "noise":
        return draw(st.binary(max_size=256))
    if kind == "json":
        return msgspec.json.encode(draw(json_values))
    depth = draw(st.sampled_from([33, 40, 200, 5_000, 100_000]))
    nested = b"[" * depth + b"]" * depth
    if kind == "deep":
        return nested
    objects = b'{"a":' * depth + b"{}" + b"}" * depth
    marker = b'"MARK"'
    assert marker in valid
    if kind == "deep_field":
        return valid.replace(marker, draw(st.sampled_from([nested, objects])), 1)
    if kind == "deep_string":  # JSON text inside a string (DynamoDB's page_context)
        inner = draw(st.sampled_from([nested, objects])).replace(b'"', b'\\"')
        return valid.replace(marker, b'"' + inner + b'"', 1)
    if kind == "cut":
        return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    position = draw(st.integers(0, len(valid) - 1))
    return valid[:position] + bytes([valid[position] ^ 0xFF]) + valid[position + 1 :]


META = MetaRecord(
    session_id="s",
    customer_id="c",
    created_at_ms=1,
    updated_at_ms=1,
    turn_count=0,
    last_turn_id=None,
    floor_turn_id="0",
    page_context={"x": "MARK"},
    attributes={},
    expires_at=4_000_000_000,
    version=1,
)
REDIS_PREFIX = b"%020d" % 1 + b"0" * 40


def deep(valid: bytes, depth: int = 100_000, *, quoted: bool = False) -> bytes:
    """`valid` with its marker replaced by nesting far past msgspec's recursion limit."""
    nested = b"[" * depth + b"]" * depth
    return valid.replace(b'"MARK"', b'"' + nested + b'"' if quoted else nested, 1)


def deep_objects(valid: bytes, depth: int = 40) -> bytes:
    """`valid` with its marker replaced by objects nested deeper than memsdk ever writes."""
    return valid.replace(b'"MARK"', b'{"a":' * depth + b"{}" + b"}" * depth, 1)


REDIS_VALUE = REDIS_PREFIX + msgspec.json.encode(META)


@profile_settings("fuzz")
@given(hostile(REDIS_VALUE))
@example(deep(REDIS_VALUE))
@example(deep_objects(REDIS_VALUE))
@example(REDIS_PREFIX + b"\x91" * 100_000 + b"\xc0")
def test_redis_values(raw: bytes) -> None:
    try:
        meta = redis_cache._decode(raw, "s")
    except redis_cache._DecodeError:
        return  # a miss, and the key is dropped
    assert meta.session_id == "s"


WAL_RECORD = (
    b'{"type":"append","session_id":"s","customer_id":null,"turns":[{"turn_id":'
    b'"1700000000000000000000001","role":"user","content":"ok","intent":null,'
    b'"attributes":{"x":"MARK"},"created_at_ms":1,"expires_at":4000000000}]}'
)


@profile_settings("fuzz")
@given(hostile(WAL_RECORD))
@example(deep(WAL_RECORD))
@example(deep_objects(WAL_RECORD))
def test_wal_records(payload: bytes) -> None:
    try:
        entry = decode_append(1, payload, 0)
    except UndecodableRecord:
        return  # kept in rejected/, never replayed
    assert isinstance(entry, BufferedAppend) and entry.session_id


# ----------------------------------------------------------------------- the stores


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.close()


@pytest.fixture(scope="module")
def sqlite_store(
    loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SQLiteStore, Path]]:
    path = tmp_path_factory.mktemp("hostile") / "m.db"
    store = SQLiteStore(str(path))
    loop.run_until_complete(store.open())
    try:
        yield store, path
    finally:
        loop.run_until_complete(store.aclose())


SQLITE_META = msgspec.json.encode(META)
SQLITE_TURN = (
    b'{"turn_id":"1700000000000000000000001","role":"user","content":"ok","intent":null,'
    b'"attributes":{"x":"MARK"},"created_at_ms":1,"expires_at":4000000000}'
)


@profile_settings("fuzz")
@given(meta_body=hostile(SQLITE_META), turn_body=hostile(SQLITE_TURN))
@example(meta_body=deep(SQLITE_META), turn_body=deep(SQLITE_TURN))
@example(meta_body=deep_objects(SQLITE_META), turn_body=deep_objects(SQLITE_TURN))
def test_sqlite_rows(
    sqlite_store: tuple[SQLiteStore, Path],
    loop: asyncio.AbstractEventLoop,
    meta_body: bytes,
    turn_body: bytes,
) -> None:
    store, path = sqlite_store
    with sqlite3.connect(path) as conn:  # another writer of the same file
        conn.execute("DELETE FROM items WHERE pk = 'SESSION#s'")
        conn.executemany(
            "INSERT INTO items (pk, sk, expires_at, body) VALUES (?, ?, ?, ?)",
            [
                ("SESSION#s", "META", 4_000_000_000, meta_body),
                ("SESSION#s", "TURN#1700000000000000000000001", 4_000_000_000, turn_body),
            ],
        )
    for read in (
        store.get_meta("s", consistent=True),
        store.query_turns("s", before_turn_id=None, limit=5, consistent=True),
    ):
        with contextlib.suppress(StoreError):  # the store's ordinary failure
            loop.run_until_complete(read)


class HostileDynamoDB:
    """A loopback endpoint that answers every request with `body` (status 200)."""

    def __init__(self) -> None:
        self.body = b"{}"

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=self.body, content_type="application/x-amz-json-1.0")


@pytest.fixture(scope="module")
def dynamodb(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[HostileDynamoDB, DynamoDBStore]]:
    server = HostileDynamoDB()
    endpoint = loopback_endpoint(server.handle)
    url = loop.run_until_complete(endpoint.__aenter__())
    spec = DynamoDBStoreSpec(table="t", region="us-east-1", endpoint=url)
    monkey = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIDHOSTILE",
        "AWS_SECRET_ACCESS_KEY": "hostile",
        "AWS_SESSION_TOKEN": "",
    }.items():
        monkey.setenv(name, value)
    store = DynamoDBStore(
        spec,
        LeanDataPath(
            spec, max_pool_connections=4, connect_timeout=5, read_timeout=5, max_attempts=1
        ),
    )
    loop.run_until_complete(store.open())
    try:
        yield server, store
    finally:
        loop.run_until_complete(store.aclose())
        loop.run_until_complete(endpoint.__aexit__(None, None, None))
        monkey.undo()


DDB_META = msgspec.json.encode(
    {
        "Item": {
            "PK": {"S": "SESSION#s"},
            "SK": {"S": "META"},
            "expires_at": {"N": "4000000000"},
            "created_at_ms": {"N": "1"},
            "updated_at_ms": {"N": "1"},
            "turn_count": {"N": "0"},
            "floor_turn_id": {"S": "0"},
            "page_context": {"S": "MARK"},
            "attributes": {"S": "{}"},
            "version": {"N": "1"},
        }
    }
)


# page_context is JSON text in a string: nesting inside it reaches the item decoder.
DDB_DEEP_STRING = DDB_META.replace(
    b'"MARK"', msgspec.json.encode('{"x":' + "[" * 100_000 + "]" * 100_000 + "}"), 1
)


@profile_settings("fuzz")
@given(body=hostile(DDB_META))
@example(body=deep(DDB_META))
@example(body=deep(DDB_META, quoted=True))
@example(body=DDB_DEEP_STRING)
@example(body=b'{"Unknown":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
def test_dynamodb_replies(
    dynamodb: tuple[HostileDynamoDB, DynamoDBStore], loop: asyncio.AbstractEventLoop, body: bytes
) -> None:
    server, store = dynamodb
    server.body = body
    for read in (
        store.get_meta("s", consistent=True),
        store.query_turns("s", before_turn_id=None, limit=5, consistent=True),
    ):
        try:
            result: Any = loop.run_until_complete(read)
        except StoreError:
            continue  # the store's ordinary failure
        assert result is None or isinstance(result, MetaRecord | list)
