"""LeanDataPath against a loopback aiohttp server: signing, credentials, errors, retries.

The server answers exactly as DynamoDB does (JSON 1.0 error bodies, HTTP statuses), so no
DynamoDB Local is needed; the differential tests against aioboto3 live elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec
import pytest
from aiobotocore.credentials import AioCredentials, AioRefreshableCredentials
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from multidict import CIMultiDictProxy

from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import ClientClosedError, ConfigError, StoreError, StoreUnavailableError
from memsdk.store import dynamodb_lean
from memsdk.store.dynamodb_lean import LeanDataPath, resolve_endpoint
from memsdk.store.dynamodb_path import CancellationReason, DynamoDBCallError

ACCESS_KEY = "AKIDLEANTEST"
SECRET_KEY = "lean-test-secret-key"
TOKEN = "lean-test-session-token"
REGION = "us-east-1"
TABLE = "memsdk-test"
TYPE_PREFIX = "com.amazonaws.dynamodb.v20120810#"
GET = {"TableName": TABLE, "Key": {"PK": {"S": "s1"}, "SK": {"S": "META"}}}
PUT = {"TableName": TABLE, "Item": {"PK": {"S": "s1"}, "SK": {"S": "T#1"}}}


class S(msgspec.Struct):
    S: str


class SmallItem(msgspec.Struct):
    PK: S
    SK: S


class GetItemReply(msgspec.Struct):
    Item: SmallItem | None = None


class Empty(msgspec.Struct):
    pass


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    url: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def access_key(self) -> str:
        return self.headers["Authorization"].split("Credential=", 1)[1].split("/", 1)[0]


Handler = Callable[[int, Seen], Awaitable[web.StreamResponse]]


class FakeDynamoDB:
    """A loopback HTTP server; `handler(n, seen)` answers the n-th request (0-based)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self.url = ""
        self.release = asyncio.Event()  # lets a handler that hangs finish at teardown
        self.arrived = asyncio.Event()  # set once a request has arrived
        self.site: web.TCPSite | None = None

    async def stop_listening(self) -> None:
        assert self.site is not None
        await self.site.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, str(request.url), request.headers, await request.read())
        self.seen.append(seen)
        self.arrived.set()
        return await self.handler(len(self.seen) - 1, seen)


@asynccontextmanager
async def fake_dynamodb(handler: Handler) -> AsyncIterator[FakeDynamoDB]:
    server = FakeDynamoDB(handler)
    app = web.Application()
    app.router.add_post("/", server._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.site = site
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def reply(payload: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/x-amz-json-1.0"
    )


def error(status: int, code: str, message: str = "boom", **extra: Any) -> web.Response:
    return reply({"__type": TYPE_PREFIX + code, "message": message, **extra}, status)


def always(response: Callable[[], web.Response]) -> Handler:
    async def handler(n: int, seen: Seen) -> web.StreamResponse:
        return response()

    return handler


def sequence(*responses: Callable[[], web.Response]) -> Handler:
    """The n-th request gets responses[n]; later ones get the last."""

    async def handler(n: int, seen: Seen) -> web.StreamResponse:
        return responses[min(n, len(responses) - 1)]()

    return handler


ITEM = {"PK": {"S": "s1"}, "SK": {"S": "T#1"}}
OK = always(lambda: reply({"Item": ITEM}))


class SleepRecorder:
    """The injected backoff sleep: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_path(
    endpoint: str,
    *,
    max_attempts: int = 3,
    read_timeout: float = 5.0,
    credentials: Any = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> LeanDataPath:
    return LeanDataPath(
        DynamoDBStoreSpec(table=TABLE, region=REGION, endpoint=endpoint),
        max_pool_connections=4,
        # Loopback connects are instant, but a stall of this process can outlast a short
        # timeout and turn one into a retry.
        connect_timeout=10.0,
        read_timeout=read_timeout,
        max_attempts=max_attempts,
        credentials=credentials
        if credentials is not None
        else AioCredentials(ACCESS_KEY, SECRET_KEY),
        sleep=sleep if sleep is not None else SleepRecorder(),
    )


@asynccontextmanager
async def lean_against(
    handler: Handler, **path_options: Any
) -> AsyncIterator[tuple[FakeDynamoDB, LeanDataPath]]:
    """A fake DynamoDB and an open LeanDataPath pointed at it."""
    async with (
        fake_dynamodb(handler) as server,
        opened(make_path(server.url, **path_options)) as path,
    ):
        yield server, path


@asynccontextmanager
async def opened(path: LeanDataPath) -> AsyncIterator[LeanDataPath]:
    await path.open()
    try:
        yield path
    finally:
        await path.aclose()


def botocore_signature(seen: Seen, credentials: ReadOnlyCredentials) -> str:
    """Re-sign the received request with botocore, as DynamoDB would verify it."""
    signed = seen.headers["Authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0]
    headers = {name: seen.headers[name] for name in signed.split(";")}
    request = AWSRequest(method=seen.method, url=seen.url, headers=headers, data=seen.body)
    request.context["timestamp"] = seen.headers["X-Amz-Date"]
    signer = SigV4Auth(credentials, "dynamodb", REGION)
    signature: str = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    return signature


def sent_signature(seen: Seen) -> str:
    return seen.headers["Authorization"].rsplit("Signature=", 1)[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ------------------------------------------------------------------------------ endpoints


def spec(region: str, endpoint: str | None = None) -> DynamoDBStoreSpec:
    return DynamoDBStoreSpec(table=TABLE, region=region, endpoint=endpoint)


@pytest.mark.parametrize(
    ("region", "endpoint", "expected"),
    [
        ("us-east-1", None, "https://dynamodb.us-east-1.amazonaws.com"),
        ("eu-west-3", None, "https://dynamodb.eu-west-3.amazonaws.com"),
        ("cn-north-1", None, "https://dynamodb.cn-north-1.amazonaws.com.cn"),
        ("cn-northwest-1", None, "https://dynamodb.cn-northwest-1.amazonaws.com.cn"),
        ("us-east-1", "http://localhost:8000", "http://localhost:8000"),
        ("us-east-1", "http://localhost:8000/", "http://localhost:8000"),
        ("eu-west-1", "https://vpce-1.dynamodb.eu-west-1.vpce.amazonaws.com", None),
    ],
)
def test_resolve_endpoint(region: str, endpoint: str | None, expected: str | None) -> None:
    assert resolve_endpoint(spec(region, endpoint)) == (expected or endpoint)


@pytest.mark.parametrize(
    "region", ["us-iso-east-1", "us-isob-east-1", "eu-isoe-west-1", "us-isof-south-1"]
)
def test_isolated_regions_are_refused_with_the_alternative(region: str) -> None:
    with pytest.raises(ConfigError, match="aioboto3"):
        resolve_endpoint(spec(region))
    with pytest.raises(ConfigError, match=r'dynamodb_data_path="aioboto3"'):
        LeanDataPath(
            spec(region),
            max_pool_connections=1,
            connect_timeout=1.0,
            read_timeout=1.0,
            max_attempts=1,
        )


# ------------------------------------------------------------------------------ signing


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_requests_are_signed_as_botocore_signs_them(token: str | None) -> None:
    credentials = AioCredentials(ACCESS_KEY, SECRET_KEY, token)
    async with lean_against(OK, credentials=credentials) as (server, path):
        await path.call("GetItem", GET, GetItemReply, write=False)
        await path.call("PutItem", PUT, Empty, write=True)
    frozen = ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, token, None)
    for seen, target in zip(server.seen, ["GetItem", "PutItem"], strict=True):
        assert seen.headers["X-Amz-Target"] == f"DynamoDB_20120810.{target}"
        assert seen.headers["Content-Type"] == "application/x-amz-json-1.0"
        assert seen.headers["Accept-Encoding"] == "identity"
        assert sent_signature(seen) == botocore_signature(seen, frozen)
        signed = seen.headers["Authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0]
        assert {"host", "x-amz-date", "x-amz-target", "content-type"} <= set(signed.split(";"))
        assert seen.headers.get("X-Amz-Security-Token") == token
        assert ("x-amz-security-token" in signed) == (token is not None)
    assert msgspec.json.decode(server.seen[1].body) == PUT
    # The comparison is meaningful: another secret gives another signature.
    other = ReadOnlyCredentials(ACCESS_KEY, "another-secret", token, None)
    assert sent_signature(server.seen[0]) != botocore_signature(server.seen[0], other)


async def test_expired_credentials_are_refreshed_before_signing() -> None:
    refreshes = 0

    def metadata(access_key: str) -> dict[str, str]:
        # Inside botocore's mandatory refresh window (10 min): every use refreshes.
        expiry = datetime.now(UTC) + timedelta(seconds=5)
        return {
            "access_key": access_key,
            "secret_key": f"{access_key}-secret",
            "token": f"{access_key}-token",
            "expiry_time": expiry.isoformat(),
        }

    async def refresh() -> dict[str, str]:
        nonlocal refreshes
        refreshes += 1
        return metadata(f"AKIDREFRESHED{refreshes}")

    credentials = AioRefreshableCredentials.create_from_metadata(
        metadata=metadata("AKIDINITIAL"), refresh_using=refresh, method="test"
    )
    async with lean_against(OK, credentials=credentials) as (server, path):
        for _ in range(3):
            got = await path.call("GetItem", GET, GetItemReply, write=False)
            assert got.Item == SmallItem(PK=S("s1"), SK=S("T#1"))
    keys = [seen.access_key for seen in server.seen]
    assert keys == ["AKIDREFRESHED1", "AKIDREFRESHED2", "AKIDREFRESHED3"]
    for seen, key in zip(server.seen, keys, strict=True):
        frozen = ReadOnlyCredentials(key, f"{key}-secret", f"{key}-token", None)
        assert sent_signature(seen) == botocore_signature(seen, frozen)


async def test_a_failing_credential_refresh_is_a_store_error() -> None:
    class Broken:
        async def get_frozen_credentials(self) -> ReadOnlyCredentials:
            raise RuntimeError("the refresh endpoint is down")

    async with lean_against(OK, credentials=Broken()) as (server, path):
        with pytest.raises(StoreError, match="credentials") as info:
            await path.call("GetItem", GET, GetItemReply, write=False)
    assert not isinstance(info.value, StoreUnavailableError)
    assert server.seen == []


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere: env, files, IMDS, containers, web identity."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_no_credentials_is_a_store_error_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolate_aws_environment(monkeypatch, tmp_path)
    path = LeanDataPath(
        spec(REGION, "http://127.0.0.1:9"),
        max_pool_connections=1,
        connect_timeout=1.0,
        read_timeout=1.0,
        max_attempts=1,
    )
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID") as info:
        await path.open()
    assert not isinstance(info.value, StoreUnavailableError)
    await path.aclose()  # nothing was opened: still fine


async def test_default_chain_reads_environment_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolate_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    async with fake_dynamodb(OK) as server:
        path = LeanDataPath(
            spec(REGION, server.url),
            max_pool_connections=1,
            connect_timeout=10.0,
            read_timeout=5.0,
            max_attempts=1,
        )
        async with opened(path):
            await path.call("GetItem", GET, GetItemReply, write=False)
    frozen = ReadOnlyCredentials("AKIDFROMENV", "env-secret", None, None)
    assert sent_signature(server.seen[0]) == botocore_signature(server.seen[0], frozen)


# ------------------------------------------------------------------------------ replies


async def test_a_200_reply_is_decoded_into_the_response_type() -> None:
    async with lean_against(OK) as (server, path):
        got = await path.call("GetItem", GET, GetItemReply, write=False)
        empty = await path.call("GetItem", GET, Empty, write=False)
    assert got == GetItemReply(Item=SmallItem(PK=S("s1"), SK=S("T#1")))
    assert empty == Empty()
    assert msgspec.json.decode(server.seen[0].body) == GET


class RoleReply(msgspec.Struct):
    role: Literal["user", "assistant"]


@pytest.mark.parametrize(
    ("payload", "response_type", "where"),
    [
        (
            {"Item": {"PK": {"S": 42}, "SK": {"S": "private-user-text"}}},
            GetItemReply,
            "$.Item.PK.S",
        ),
        # msgspec quotes an invalid enum value in its message: it must not reach ours.
        ({"role": "private-user-text"}, RoleReply, "$.role"),
    ],
)
async def test_an_undecodable_200_reply_is_a_store_error_without_its_content(
    payload: dict[str, Any], response_type: type[Any], where: str
) -> None:
    async with lean_against(always(lambda: reply(payload))) as (server, path):
        with pytest.raises(StoreError, match=response_type.__name__) as info:
            await path.call("GetItem", GET, response_type, write=False)
    message = str(info.value)
    assert where in message
    assert "private-user-text" not in message and "42" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(server.seen) == 1


async def test_a_corrupted_reply_is_retried_and_may_have_been_applied() -> None:
    async def bad_crc(n: int, seen: Seen) -> web.StreamResponse:
        response = reply({})
        response.headers["x-amz-crc32"] = str(zlib.crc32(b"something else"))
        return response

    async with lean_against(bad_crc, max_attempts=2) as (server, path):
        with pytest.raises(StoreUnavailableError) as info:
            await path.call("PutItem", PUT, Empty, write=True)
    assert info.value.maybe_applied is True
    assert len(server.seen) == 2


async def test_a_matching_crc32_is_accepted() -> None:
    async def good_crc(n: int, seen: Seen) -> web.StreamResponse:
        response = reply({"Item": ITEM})
        assert isinstance(response.body, bytes)
        response.headers["x-amz-crc32"] = str(zlib.crc32(response.body))
        return response

    async with lean_against(good_crc) as (server, path):
        got = await path.call("GetItem", GET, GetItemReply, write=False)
    assert got.Item is not None
    assert len(server.seen) == 1


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException"])
async def test_throttling_is_retried_then_unavailable(code: str) -> None:
    sleep = SleepRecorder()
    throttled = always(lambda: error(400, code))
    async with lean_against(throttled, max_attempts=3, sleep=sleep) as (server, path):
        with pytest.raises(StoreUnavailableError, match=code) as info:
            await path.call("PutItem", PUT, Empty, write=True, session_id="s1")
    assert len(server.seen) == 3
    assert info.value.maybe_applied is False  # a throttled request was refused
    assert info.value.session_id == "s1"
    assert isinstance(info.value.__cause__, DynamoDBCallError)
    assert len(sleep.delays) == 2


async def test_backoff_uses_the_injected_sleep_with_full_jitter() -> None:
    sleep = SleepRecorder()
    throttled = always(lambda: error(400, "ThrottlingException"))
    async with lean_against(throttled, max_attempts=5, sleep=sleep) as (server, path):
        for _ in range(4):
            with pytest.raises(StoreUnavailableError):
                await path.call("GetItem", GET, GetItemReply, write=False)
    assert len(server.seen) == 20
    assert len(sleep.delays) == 16
    for i, delay in enumerate(sleep.delays):
        retry = i % 4  # 0 before the 2nd attempt of a call, 3 before its 5th
        assert 0.0 <= delay <= min(1.0, 0.025 * 2**retry)
    # Full jitter: not a fixed schedule.
    assert len(set(sleep.delays)) > 4


async def test_a_recovered_call_returns_the_reply() -> None:
    flaky = sequence(lambda: error(500, "InternalServerError"), lambda: reply({"Item": ITEM}))
    async with lean_against(flaky) as (server, path):
        got = await path.call("GetItem", GET, GetItemReply, write=False)
    assert got.Item == SmallItem(PK=S("s1"), SK=S("T#1"))
    assert len(server.seen) == 2


async def test_conditional_check_failure_is_raised_after_one_request_with_the_item() -> None:
    old = {"PK": {"S": "s1"}, "SK": {"S": "META"}, "version": {"N": "7"}}
    failed = always(
        lambda: error(
            400, "ConditionalCheckFailedException", "The conditional request failed", Item=old
        )
    )
    async with lean_against(failed) as (server, path):
        with pytest.raises(DynamoDBCallError) as info:
            await path.call("PutItem", PUT, Empty, write=True)
    assert len(server.seen) == 1
    exc = info.value
    assert (exc.kind, exc.code, exc.status, exc.operation) == (
        "conditional",
        "ConditionalCheckFailedException",
        400,
        "PutItem",
    )
    assert exc.item == old
    assert exc.message == "The conditional request failed"
    assert exc.maybe_applied is False


@pytest.mark.parametrize("write", [True, False])
async def test_a_conditional_failure_after_a_5xx_may_have_been_applied(write: bool) -> None:
    # The 500'd attempt may have written: its own write can be why the condition now fails.
    script = sequence(
        lambda: error(500, "InternalServerError"),
        lambda: error(400, "ConditionalCheckFailedException"),
    )
    async with lean_against(script) as (server, path):
        with pytest.raises(DynamoDBCallError) as info:
            await path.call("PutItem", PUT, Empty, write=write)
    assert len(server.seen) == 2
    assert info.value.kind == "conditional"
    assert info.value.maybe_applied is write  # a read never applies anything


async def test_transaction_cancelled_carries_the_parsed_reasons() -> None:
    old = {"PK": {"S": "s1"}, "SK": {"S": "META"}}
    body = {
        "__type": TYPE_PREFIX + "TransactionCanceledException",
        "Message": "Transaction cancelled, please refer cancellation reasons for specific "
        "reasons [None, ConditionalCheckFailed, TransactionConflict]",
        "CancellationReasons": [
            {"Code": "None"},
            {
                "Code": "ConditionalCheckFailed",
                "Message": "The conditional request failed",
                "Item": old,
            },
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
        ],
    }
    async with lean_against(always(lambda: reply(body, 400))) as (server, path):
        with pytest.raises(DynamoDBCallError) as info:
            await path.call("TransactWriteItems", {"TransactItems": []}, Empty, write=True)
    assert len(server.seen) == 1
    exc = info.value
    assert exc.kind == "cancelled"
    assert exc.message.startswith("Transaction cancelled")
    assert exc.reasons == [
        CancellationReason(Code="None"),
        CancellationReason(
            Code="ConditionalCheckFailed", Message="The conditional request failed", Item=old
        ),
        CancellationReason(
            Code="TransactionConflict", Message="Transaction is ongoing for the item"
        ),
    ]


async def test_transaction_conflict_is_retried_then_raised_for_the_store() -> None:
    conflict = always(lambda: error(400, "TransactionConflictException"))
    async with lean_against(conflict, max_attempts=2) as (server, path):
        with pytest.raises(DynamoDBCallError) as info:
            await path.call("TransactWriteItems", {"TransactItems": []}, Empty, write=True)
    assert len(server.seen) == 2
    assert info.value.kind == "conflict"
    assert info.value.maybe_applied is False


async def test_validation_error_is_a_store_error_after_one_request() -> None:
    invalid = always(lambda: error(400, "ValidationException", "One or more parameter values"))
    async with lean_against(invalid) as (server, path):
        with pytest.raises(StoreError, match="ValidationException") as info:
            await path.call("PutItem", PUT, Empty, write=True)
    assert not isinstance(info.value, StoreUnavailableError)
    assert len(server.seen) == 1


async def test_missing_table_says_to_create_it() -> None:
    missing = always(
        lambda: error(400, "ResourceNotFoundException", "Requested resource not found")
    )
    async with lean_against(missing) as (server, path):
        with pytest.raises(StoreError, match="create-table") as info:
            await path.call("GetItem", GET, GetItemReply, write=False)
    assert not isinstance(info.value, StoreUnavailableError)
    assert TABLE in str(info.value)
    assert len(server.seen) == 1


async def test_auth_errors_are_not_retried() -> None:
    denied = always(lambda: error(400, "UnrecognizedClientException", "The security token"))
    async with lean_against(denied) as (server, path):
        with pytest.raises(StoreError, match="credentials") as info:
            await path.call("GetItem", GET, GetItemReply, write=False)
    assert not isinstance(info.value, StoreUnavailableError)
    assert len(server.seen) == 1


@pytest.mark.parametrize("write", [True, False])
async def test_server_errors_are_retried_then_unavailable(write: bool) -> None:
    failing = always(lambda: error(500, "InternalServerError", "Internal server error"))
    async with lean_against(failing, max_attempts=3) as (server, path):
        with pytest.raises(StoreUnavailableError, match="InternalServerError") as info:
            await path.call("PutItem", PUT, Empty, write=write)
    assert len(server.seen) == 3
    assert info.value.maybe_applied is write


async def test_an_unparseable_error_body_is_judged_by_its_status() -> None:
    gateway = always(lambda: web.Response(status=502, text="<html>Bad Gateway</html>"))
    async with lean_against(gateway, max_attempts=2) as (server, path):
        with pytest.raises(StoreUnavailableError, match="HTTP502") as info:
            await path.call("PutItem", PUT, Empty, write=True)
    assert len(server.seen) == 2
    assert info.value.maybe_applied is True


# ------------------------------------------------------------------------------ transport


async def test_a_server_that_never_answers_times_out_per_attempt() -> None:
    async def hang(n: int, seen: Seen) -> web.StreamResponse:
        await server.release.wait()
        return reply({})

    read_timeout, attempts = 0.2, 2
    options = {"max_attempts": attempts, "read_timeout": read_timeout}
    async with lean_against(hang, **options) as (server, path):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="no complete response") as info:
            await path.call("PutItem", PUT, Empty, write=True)
        elapsed = time.monotonic() - started
    # Each attempt waited out its read timeout. The upper bound only tells a hang from a
    # stall of this process, which a busy machine can make last seconds.
    assert read_timeout * attempts * 0.9 <= elapsed < read_timeout * attempts + 10.0
    assert len(server.seen) == attempts
    assert info.value.maybe_applied is True  # sent, then no answer


async def test_connection_refused_is_unavailable_and_not_applied() -> None:
    sleep = SleepRecorder()
    path = make_path(f"http://127.0.0.1:{free_port()}", max_attempts=3, sleep=sleep)
    async with opened(path):
        with pytest.raises(StoreUnavailableError, match="cannot connect") as info:
            await path.call("PutItem", PUT, Empty, write=True, session_id="s1")
    assert info.value.maybe_applied is False
    assert info.value.session_id == "s1"
    assert len(sleep.delays) == 2  # every attempt was made


async def test_refused_after_a_timed_out_attempt_may_have_been_applied() -> None:
    async def hang(n: int, seen: Seen) -> web.StreamResponse:
        await server.release.wait()
        return reply({})

    async def stop_listening(delay: float) -> None:
        # Runs between the attempts: the second one finds nothing listening.
        await server.stop_listening()

    options = {"max_attempts": 2, "read_timeout": 0.1, "sleep": stop_listening}
    async with lean_against(hang, **options) as (server, path):
        with pytest.raises(StoreUnavailableError, match="cannot connect") as info:
            await path.call("PutItem", PUT, Empty, write=True)
    assert len(server.seen) == 1
    assert info.value.maybe_applied is True  # the first attempt was sent


async def test_cancellation_propagates_untouched() -> None:
    async def hang(n: int, seen: Seen) -> web.StreamResponse:
        await server.release.wait()
        return reply({})

    async with lean_against(hang) as (server, path):
        task = asyncio.create_task(path.call("GetItem", GET, GetItemReply, write=False))
        await server.arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await path.call("GetItem", GET, GetItemReply, write=False)


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (aiohttp.ServerTimeoutError("socket read timeout"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), False),  # the caller's deadline
        (asyncio.CancelledError(), False),
        (ValueError("a bug"), False),
        (
            DynamoDBCallError(
                operation="Query", code="ThrottlingException", message="", status=400
            ),
            True,
        ),
        (
            DynamoDBCallError(
                operation="Query", code="InternalServerError", message="", status=500
            ),
            True,
        ),
        (
            DynamoDBCallError(
                operation="Query", code="ValidationException", message="", status=400
            ),
            False,
        ),
        (
            DynamoDBCallError(
                operation="Query", code="AccessDeniedException", message="", status=400
            ),
            False,
        ),
    ],
)
def test_the_retry_decision(exc: BaseException, retried: bool) -> None:
    assert dynamodb_lean._retryable(exc) is retried


async def test_open_and_aclose_are_idempotent_and_calls_need_open() -> None:
    async with fake_dynamodb(OK) as server:
        path = make_path(server.url)
        assert path.description == "lean"
        with pytest.raises(ClientClosedError):
            await path.call("GetItem", GET, GetItemReply, write=False)
        await path.open()
        await path.open()
        await path.call("GetItem", GET, GetItemReply, write=False)
        await path.aclose()
        await path.aclose()
        with pytest.raises(ClientClosedError):
            await path.call("GetItem", GET, GetItemReply, write=False)
    assert len(server.seen) == 1


async def test_closing_the_path_during_a_call_says_so() -> None:
    async def hang(n: int, seen: Seen) -> web.StreamResponse:
        await server.release.wait()
        return reply({})

    async with lean_against(hang) as (server, path):
        task = asyncio.create_task(path.call("PutItem", PUT, Empty, write=True))
        await server.arrived.wait()
        await path.aclose()
        with pytest.raises(ClientClosedError):
            await task
