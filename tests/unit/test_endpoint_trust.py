"""Endpoints and what they send back (issue 14, finding 8).

- a DynamoDB endpoint must be https:// unless it is loopback or the URL says allow_http=1;
- no ConfigError built from a URL echoes credentials (or the URL's other contents);
- `memsdk inspect` escapes control characters in stored strings;
- an endpoint's error `__type` and message reach memsdk's errors only filtered and capped,
  and a hostile error or reply body (deep nesting) is a store error, never a crash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiobotocore.credentials import AioCredentials
from aiohttp import web

from memsdk import Config, MemoryClient, Turn, cli
from memsdk.config import DynamoDBStoreSpec, parse_redis_url
from memsdk.errors import ConfigError, StoreError, StoreUnavailableError
from memsdk.store import dynamodb_aioboto3
from memsdk.store.dynamodb_aioboto3 import create_table
from memsdk.store.dynamodb_lean import LeanDataPath
from memsdk.store.dynamodb_path import CancellationReason, DynamoDBCallError
from tests.harness.http_endpoint import loopback_endpoint

SECRET = "s3cr3t"
TYPE_PREFIX = "com.amazonaws.dynamodb.v20120810#"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\x00\u202e\u2028"
DEEP = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


def printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


# ------------------------------------------------------------------ (a) https or loopback


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://10.0.0.5:8000",
        "http://dynamodb.internal:8000",
        "http://[2001:db8::1]:8000",
        "http://0.0.0.0:8000",
        "http://localhost.example.com:8000",
        "http://127.0.0.1.nip.io:8000",
    ],
)
def test_cleartext_to_a_remote_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"https://.*allow_http=1") as info:
        Config(store=f"dynamodb://table?region=us-east-1&endpoint={endpoint}")
    assert "endpoint" in str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8000",
        "http://127.9.8.7:8000",
        "http://[::1]:8000",
        "http://localhost:8000",
        "http://LocalHost:8000",
        "https://dynamodb.internal:8443",
        "https://10.0.0.5",
    ],
)
def test_loopback_or_tls_endpoints_are_accepted(endpoint: str) -> None:
    spec = Config(store=f"dynamodb://table?region=us-east-1&endpoint={endpoint}").store_spec
    assert spec == DynamoDBStoreSpec(table="table", region="us-east-1", endpoint=endpoint)


def test_allow_http_lets_a_trusted_network_use_cleartext() -> None:
    url = "dynamodb://table?region=us-east-1&endpoint=http://10.0.0.5:8000&allow_http=1"
    assert Config(store=url).store_spec == DynamoDBStoreSpec(
        table="table", region="us-east-1", endpoint="http://10.0.0.5:8000"
    )
    with pytest.raises(ConfigError, match="allow_http"):
        Config(store=url.replace("allow_http=1", "allow_http=0"))


@pytest.mark.parametrize("value", ["yes", "true", "2", ""])
def test_allow_http_takes_0_or_1(value: str) -> None:
    with pytest.raises(ConfigError, match="allow_http"):
        Config(store=f"dynamodb://table?region=us-east-1&allow_http={value}")


# ------------------------------------------------------------------ (b) no secret echoed


@pytest.mark.parametrize(
    "store",
    [
        f"dynamodb://key:{SECRET}@table?region=us-east-1",
        f"dynamodb://AKIAEXAMPLE:{SECRET}@my-table",
        f"dynamodb://{SECRET}@my-table?region=us-east-1",
        f"dynamodb://key:{SECRET}@?region=us-east-1",
        f"dynamodb://[{SECRET}?region=us-east-1",
        f"dynamodb://table?region={SECRET}",
        f"dynamodb://table?region=us-east-1&aws_secret_access_key={SECRET}",
        f"dynamodb://table?region=us-east-1&{SECRET}",
        f"dynamodb://table?region=us-east-1&endpoint=https://u:{SECRET}@h",
        f"dynamodb://table?region=us-east-1&endpoint=http://[{SECRET}",
        f"dynamodb://table?region=us-east-1&endpoint=https://h:{SECRET}",
        f"dynamodb://table?region=us-east-1&endpoint=https://h/{SECRET}",
        f"postgres://admin:{SECRET}@db/x",
        f"postgres:admin:{SECRET}@db",
        f"mysql:/admin:{SECRET}@db",
        f"admin:{SECRET}@db",
        f"{SECRET}\x1b[2J",
        f"sqlite://admin:{SECRET}@x.db",
    ],
)
def test_store_url_errors_never_echo_the_url(store: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(store=store)
    assert type(info.value) is ConfigError  # not a bare ValueError from urlsplit
    assert SECRET not in str(info.value)
    assert printable(str(info.value))


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET}@[::1:6379/0",
        f"redis:/user:{SECRET}@h:6379",
        f"redis//user:{SECRET}@h:6379",
        f"rediss://user:{SECRET}@h:6379/{SECRET}",
        f"redis+cluster://user:{SECRET}@h:7000/1",
        f"redis+sentinel://user:{SECRET}@h1:26379,[bad/m",
        f"redis+sentinel://user:{SECRET}@h1:26379/m?{SECRET}=1",
        f"redis+sentinel://user:{SECRET}@h1:26379/{SECRET}\x1b",
    ],
)
def test_redis_url_errors_never_echo_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url(url)
    assert type(info.value) is ConfigError
    assert SECRET not in str(info.value)
    assert printable(str(info.value))


def test_an_unsupported_scheme_is_named_when_it_is_a_plain_word() -> None:
    with pytest.raises(ConfigError, match="'postgres'"):
        Config(store=f"postgres://admin:{SECRET}@db/x")


# ------------------------------------------------------------------ (c) memsdk inspect


def test_inspect_escapes_control_characters_in_stored_strings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'memsdk.db'}"

    async def seed() -> None:
        async with MemoryClient(Config(store=url)) as mem:
            await mem.append_turns(
                "sess-1",
                [Turn(role="user", content=f"hello {ESCAPES}", intent=f"buy{ESCAPES}")],
                customer_id=f"cust{ESCAPES}",
            )

    asyncio.run(seed())
    for extra in ([], ["--show-content"]):
        assert cli.main(["inspect", "--store", url, "sess-1", *extra]) == 0
        out = capsys.readouterr().out
        assert all(printable(line) for line in out.splitlines()), out
        assert "\\x1b]0;pwned\\x07" in out  # escaped, still readable
        assert "cust" in out and "buy" in out
    assert "hello" in out


# ------------------------------------------------------------------ (d) the wire's errors


def test_error_codes_and_messages_from_the_wire_are_filtered_and_capped() -> None:
    error = DynamoDBCallError(
        operation="GetItem",
        code=f"Evil{ESCAPES}" + "A" * 10_000,
        message=f"boom{ESCAPES}" + "B" * 100_000,
        status=400,
        reasons=[CancellationReason(Code=f"ConditionalCheckFailed{ESCAPES}", Message=ESCAPES)],
    )
    for text in (error.code, error.message, str(error), error.reasons[0].Code or ""):
        assert printable(text) and "\x1b" not in text
    assert len(error.code) <= 64 and len(error.message) <= 256
    assert all(ch.isalnum() or ch in "#._:-?" for ch in error.code)
    # A mangled code never passes for a known one.
    assert error.reasons[0].Code != "ConditionalCheckFailed"
    sneaky = DynamoDBCallError(
        operation="GetItem", code="Throttling\x1bException", message="", status=400
    )
    assert sneaky.kind == "other"


def test_known_codes_pass_the_filter_unchanged() -> None:
    for code in ("ThrottlingException", "ConditionalCheckFailedException", "HTTP503"):
        error = DynamoDBCallError(operation="Query", code=code, message="a b", status=400)
        assert (error.code, error.message) == (code, "a b")


@asynccontextmanager
async def hostile_endpoint(
    answer: Callable[[], web.Response],
) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return answer()

    async with loopback_endpoint(handle) as url:
        yield url


def lean(endpoint: str) -> LeanDataPath:
    return LeanDataPath(
        DynamoDBStoreSpec(table="memsdk-test", region="us-east-1", endpoint=endpoint),
        max_pool_connections=2,
        connect_timeout=10.0,
        read_timeout=10.0,
        max_attempts=2,
        credentials=AioCredentials("AKIDTEST", "secret"),
        sleep=lambda _delay: asyncio.sleep(0),
    )


GET = {"TableName": "memsdk-test", "Key": {"PK": {"S": "s"}, "SK": {"S": "META"}}}


def body(payload: bytes, status: int) -> Callable[[], web.Response]:
    return lambda: web.Response(
        status=status, body=payload, content_type="application/x-amz-json-1.0"
    )


async def call(endpoint: str) -> BaseException:
    path = lean(endpoint)
    await path.open()
    try:
        await path.call("GetItem", GET, dict, write=False)
    except Exception as exc:
        return exc
    finally:
        await path.aclose()
    raise AssertionError("the call succeeded")


async def test_a_hostile_error_type_is_filtered_on_the_lean_path() -> None:
    hostile = json.dumps(
        {"__type": f"{TYPE_PREFIX}Evil{ESCAPES}" + "A" * 5_000, "message": ESCAPES * 1_000}
    ).encode()
    async with hostile_endpoint(body(hostile, 400)) as endpoint:
        exc = await call(endpoint)
    assert type(exc) is StoreError
    assert printable(str(exc)) and len(str(exc)) < 500
    assert isinstance(exc.__cause__, DynamoDBCallError) and printable(str(exc.__cause__))


@pytest.mark.parametrize(("status", "expected"), [(400, StoreError), (500, StoreUnavailableError)])
async def test_a_deeply_nested_error_body_is_judged_by_its_status(
    status: int, expected: type[StoreError]
) -> None:
    async with hostile_endpoint(body(DEEP, status)) as endpoint:
        exc = await call(endpoint)
    assert type(exc) is expected
    assert f"HTTP{status}" in str(exc)


async def test_a_deeply_nested_reply_is_a_store_error() -> None:
    async with hostile_endpoint(body(DEEP, 200)) as endpoint:
        exc = await call(endpoint)
    assert type(exc) is StoreError
    assert "does not decode" in str(exc)


def control_plane(table_status: str, ttl_attribute: str) -> Callable[[web.Request], object]:
    """A fake DynamoDB control plane: the table exists, with this status and TTL attribute."""
    replies = {
        "CreateTable": (400, {"__type": f"{TYPE_PREFIX}ResourceInUseException", "message": "x"}),
        "DescribeTable": (
            200,
            {
                "Table": {
                    "TableName": "memsdk-test",
                    "KeySchema": [
                        {"AttributeName": "PK", "KeyType": "HASH"},
                        {"AttributeName": "SK", "KeyType": "RANGE"},
                    ],
                    "TableStatus": table_status,
                }
            },
        ),
        "DescribeTimeToLive": (
            200,
            {
                "TimeToLiveDescription": {
                    "TimeToLiveStatus": "ENABLED",
                    "AttributeName": ttl_attribute,
                }
            },
        ),
    }

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        operation = request.headers["X-Amz-Target"].rsplit(".", 1)[-1]
        status, payload = replies[operation]
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/x-amz-json-1.0",
        )

    return handle


@asynccontextmanager
async def fake_control_plane(table_status: str, ttl_attribute: str) -> AsyncIterator[str]:
    handler = control_plane(table_status, ttl_attribute)
    async with loopback_endpoint(handler) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


@pytest.mark.usefixtures("fake_aws")
async def test_create_table_does_not_echo_a_hostile_ttl_attribute() -> None:
    async with fake_control_plane("ACTIVE", f"evil{ESCAPES}" + "x" * 5_000) as endpoint:
        spec = DynamoDBStoreSpec(table="memsdk-test", region="us-east-1", endpoint=endpoint)
        with pytest.raises(StoreError, match="has TTL on attribute") as info:
            await create_table(spec)
    assert printable(str(info.value)) and len(str(info.value)) < 500


@pytest.mark.usefixtures("fake_aws")
async def test_create_table_does_not_echo_a_hostile_table_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dynamodb_aioboto3, "_CREATE_TABLE_ACTIVE_TIMEOUT_S", 0.0)
    async with fake_control_plane(f"CREATING{ESCAPES}" + "x" * 5_000, "expires_at") as endpoint:
        spec = DynamoDBStoreSpec(table="memsdk-test", region="us-east-1", endpoint=endpoint)
        with pytest.raises(StoreUnavailableError, match="not ACTIVE") as info:
            await create_table(spec)
    assert printable(str(info.value)) and len(str(info.value)) < 500
