"""The reference DynamoDB data path: aioboto3's low-level client, and the control plane.

`Aioboto3DataPath` sends the same requests as the lean path through botocore, and converts
botocore's reply dicts into the same wire Structs. It is selected with
`Config(dynamodb_data_path="aioboto3")`, and the differential tests drive both paths with
identical operations. `create_table` (behind `memsdk create-table`) lives here too.

Every call runs inside `_Guard`, the one place where botocore, aiohttp and OSError
exceptions become StoreError / StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar

import aioboto3
import aiohttp
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import MemsdkError, StoreError, StoreUnavailableError
from memsdk.store.dynamodb_items import convert
from memsdk.store.dynamodb_path import (
    CancellationReason,
    DynamoDBCallError,
    classify,
    to_store_error,
    wire_code,
)

__all__ = ["Aioboto3DataPath", "create_table"]

T = TypeVar("T")

TTL_ATTRIBUTE = "expires_at"
_CREATE_TABLE_ACTIVE_TIMEOUT_S = 300.0
# botocore's snake_case method name of each operation the store sends.
_METHODS = {
    "GetItem": "get_item",
    "PutItem": "put_item",
    "UpdateItem": "update_item",
    "DeleteItem": "delete_item",
    "Query": "query",
    "TransactWriteItems": "transact_write_items",
    "BatchWriteItem": "batch_write_item",
}


class _CallState:
    """What botocore's attempts of one call did, recorded by the needs-retry hook."""

    __slots__ = ("ambiguous", "attempts")

    def __init__(self) -> None:
        self.attempts = 0
        # True once any attempt may have been applied (sent, then no definite answer, or a
        # 5xx). A connect failure or a throttle refusal proves its attempt was not applied.
        self.ambiguous = False


# The state of the DynamoDB call running in this task. botocore retries inside one call
# (standard mode), so only a hook sees each attempt: it tells "connection refused on every
# attempt" (nothing can have landed) from "refused after an attempt that timed out".
_CALL_STATE: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar(
    "memsdk_dynamodb_call_state", default=None
)


def _record_attempt(
    *, response: Any = None, caught_exception: BaseException | None = None, **_kwargs: Any
) -> None:
    """botocore `needs-retry` hook: runs after every attempt; returns None (no say in retries)."""
    state = _CALL_STATE.get()
    if state is None:
        return
    state.attempts += 1
    if caught_exception is not None:
        if not _not_sent(caught_exception):
            state.ambiguous = True
        return
    if response is None:
        return
    http_response, parsed = response
    status = getattr(http_response, "status_code", 0)
    error = parsed.get("Error") if isinstance(parsed, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    if classify(str(code or ""), status if isinstance(status, int) else 0) == "server":
        state.ambiguous = True


def _not_sent(exc: BaseException) -> bool:
    """True when `exc` proves the request never reached the server (failed while connecting)."""
    if not isinstance(exc, BotoConnectionError):
        return False
    if isinstance(exc, EndpointConnectionError):
        # aiobotocore also wraps aiohttp's ClientOSError here, e.g. a connection reset while
        # reading the reply of a request that was sent: only connect-phase errors (refused,
        # DNS) prove nothing was sent. A bare one (raised by a test hook) means "refused".
        cause = exc.kwargs.get("error")
        return cause is None or isinstance(cause, aiohttp.ClientConnectorError | socket.gaierror)
    # Connect timeouts, TLS handshake and proxy failures all happen before sending.
    return True


def _install_hooks(client: Any) -> None:
    client.meta.events.register("needs-retry.dynamodb", _record_attempt)


def _client_config(
    *, max_pool_connections: int, connect_timeout: float, read_timeout: float, max_attempts: int
) -> BotoConfig:
    # Every knob is explicit because botocore's defaults are wrong for a hot path:
    # the legacy retry mode makes up to 10 attempts with
    # unjittered doubling (~25 s on one call), timeouts default to 60 s and the pool to 10
    # connections (p99 of 4-10 s at 64 concurrent calls). Standard mode adds jitter and a
    # retry quota; `total_max_attempts` is small because memsdk's own deadline wraps each
    # call and exactly one layer (botocore, on this path) retries transient errors.
    # tcp_keepalive asks for SO_KEEPALIVE so half-dead pooled connections get detected;
    # aiobotocore 2.25 does not apply socket options yet, so today this states intent.
    return BotoConfig(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error") or {}
    return str(error.get("Code") or "Unknown")


def _http_status(exc: ClientError) -> int:
    meta = exc.response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    return status if isinstance(status, int) else 0


class _Guard:
    """The error choke point around one DynamoDB call: maps every foreign exception.

    Memsdk errors, cancellation and TimeoutError pass through untouched: the caller
    enforces deadlines and must see its own cancellation.
    """

    __slots__ = ("_op", "_session_id", "_state", "_table", "_token", "_write")

    def __init__(self, op: str, *, write: bool, table: str, session_id: str | None) -> None:
        self._op = op
        self._write = write
        self._table = table
        self._session_id = session_id
        self._state = _CallState()
        self._token: contextvars.Token[_CallState | None] | None = None

    @property
    def ambiguous(self) -> bool:
        """True when an attempt of this call may have been applied by the store."""
        return self._state.ambiguous

    def __enter__(self) -> _Guard:
        self._state = _CallState()
        self._token = _CALL_STATE.set(self._state)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _CALL_STATE.reset(self._token)
            self._token = None
        if exc is None or not isinstance(exc, Exception):
            return  # success, or CancelledError / KeyboardInterrupt: propagate untouched
        if isinstance(exc, MemsdkError | DynamoDBCallError | TimeoutError):
            return
        raise self._map(exc) from exc

    def _unavailable(self, what: str, *, maybe_applied: bool) -> StoreUnavailableError:
        # The final error may itself be ambiguous; so may an earlier attempt of this call.
        return StoreUnavailableError(
            f"DynamoDB {self._op} on table {self._table!r} failed: {what}; retry later",
            session_id=self._session_id,
            maybe_applied=self._write and (maybe_applied or self._state.ambiguous),
        )

    def _map(self, exc: Exception) -> StoreError:
        sid = self._session_id
        table = self._table
        if isinstance(exc, ClientError):
            error = _call_error(self._op, exc)
            # The final attempt's 5xx counts too: the hook may not have seen it.
            ambiguous = self._state.ambiguous or error.kind == "server"
            return to_store_error(
                error, table=table, session_id=sid, maybe_applied=self._write and ambiguous
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            if _not_sent(exc):
                return self._unavailable(
                    f"cannot connect to the endpoint ({type(exc).__name__})", maybe_applied=False
                )
            return self._unavailable(
                f"no complete response ({type(exc).__name__})", maybe_applied=True
            )
        if isinstance(
            exc,
            NoCredentialsError
            | PartialCredentialsError
            | CredentialRetrievalError
            | TokenRetrievalError
            | SSOError,
        ):
            return StoreError(
                f"no usable AWS credentials for DynamoDB ({type(exc).__name__}): set "
                "AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, refresh the SSO "
                "login, or attach an IAM role to this host",
                session_id=sid,
            )
        if isinstance(exc, NoRegionError):
            return StoreError(
                "no AWS region for DynamoDB: add region=... to the store URL", session_id=sid
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return self._unavailable(f"transport error ({type(exc).__name__})", maybe_applied=True)
        if isinstance(exc, BotoCoreError):
            return StoreError(
                f"DynamoDB client error in {self._op} ({type(exc).__name__})", session_id=sid
            )
        return StoreError(
            f"unexpected {type(exc).__name__} from the DynamoDB client in {self._op}",
            session_id=sid,
        )


def _call_error(operation: str, exc: ClientError) -> DynamoDBCallError:
    """botocore's parsed error response as the data path's DynamoDBCallError."""
    response = exc.response
    error = response.get("Error") or {}
    reasons = response.get("CancellationReasons") or []
    return DynamoDBCallError(
        operation=operation,
        code=_error_code(exc),
        message=str(error.get("Message") or ""),
        status=_http_status(exc),
        item=response.get("Item"),
        reasons=convert(reasons, list[CancellationReason], "CancellationReasons"),
    )


class Aioboto3DataPath:
    """The DataPath protocol on aioboto3's client: one client per path, reused."""

    def __init__(
        self,
        spec: DynamoDBStoreSpec,
        *,
        max_pool_connections: int,
        connect_timeout: float,
        read_timeout: float,
        max_attempts: int,
    ) -> None:
        self._spec = spec
        self._config = _client_config(
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._open_lock = asyncio.Lock()

    @property
    def description(self) -> str:
        """The data path's name."""
        return "aioboto3"

    async def open(self) -> None:
        """Create the aiobotocore client; idempotent."""
        async with self._open_lock:
            if self._client is not None:
                return
            stack = AsyncExitStack()
            with _Guard("open", write=False, table=self._spec.table, session_id=None):
                try:
                    client = await stack.enter_async_context(
                        aioboto3.Session().client(
                            "dynamodb",
                            region_name=self._spec.region,
                            endpoint_url=self._spec.endpoint,
                            config=self._config,
                        )
                    )
                    _install_hooks(client)
                except BaseException:
                    await stack.aclose()
                    raise
            self._stack, self._client = stack, client

    async def aclose(self) -> None:
        """Close the client and its connection pool; idempotent."""
        async with self._open_lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                with _Guard("close", write=False, table=self._spec.table, session_id=None):
                    await stack.aclose()

    async def call(
        self,
        operation: str,
        params: dict[str, Any],
        response_type: type[T],
        *,
        write: bool,
        session_id: str | None = None,
    ) -> T:
        """Send `operation` through botocore; convert its reply into `response_type`."""
        if self._client is None:
            raise StoreError(
                "the DynamoDB store is not open: call open() first", session_id=session_id
            )
        method = getattr(self._client, _METHODS[operation])
        table = str(params.get("TableName") or self._spec.table)
        guard = _Guard(operation, write=write, table=table, session_id=session_id)
        with guard:
            try:
                response = await method(**params)
            except ClientError as exc:
                error = _call_error(operation, exc)
                if error.kind in ("conditional", "cancelled", "conflict"):
                    # The store interprets these: hand them over, with what we know.
                    error.maybe_applied = write and guard.ambiguous
                    raise error from exc
                raise
        return convert(response, response_type, operation, session_id)


async def create_table(spec: DynamoDBStoreSpec) -> bool:
    """Create the table (on-demand) with TTL on expires_at; False when it already existed."""
    config = _client_config(
        max_pool_connections=2, connect_timeout=5.0, read_timeout=30.0, max_attempts=4
    )
    table = spec.table

    def guard(op: str) -> _Guard:
        return _Guard(op, write=True, table=table, session_id=None)

    async with AsyncExitStack() as stack:
        with guard("connect"):
            session = aioboto3.Session()
            client = await stack.enter_async_context(
                session.client(
                    "dynamodb",
                    region_name=spec.region,
                    endpoint_url=spec.endpoint,
                    config=config,
                )
            )
            _install_hooks(client)
        created = True
        with guard("CreateTable"):
            try:
                await client.create_table(
                    TableName=table,
                    KeySchema=[
                        {"AttributeName": "PK", "KeyType": "HASH"},
                        {"AttributeName": "SK", "KeyType": "RANGE"},
                    ],
                    AttributeDefinitions=[
                        {"AttributeName": "PK", "AttributeType": "S"},
                        {"AttributeName": "SK", "AttributeType": "S"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            except ClientError as exc:
                if _error_code(exc) != "ResourceInUseException":
                    raise
                created = False
        await _wait_active(client, table, guard)
        await _ensure_ttl(client, table, guard)
        return created


async def _wait_active(client: Any, table: str, guard: Callable[[str], _Guard]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CREATE_TABLE_ACTIVE_TIMEOUT_S
    delay = 0.1
    while True:
        with guard("DescribeTable"):
            resp = await client.describe_table(TableName=table)
        desc = resp["Table"]
        schema = {(k["AttributeName"], k["KeyType"]) for k in desc.get("KeySchema", [])}
        if schema != {("PK", "HASH"), ("SK", "RANGE")}:
            raise StoreError(
                f"DynamoDB table {table!r} exists with a different key schema: memsdk needs "
                "PK (string, HASH) and SK (string, RANGE); use another table name"
            )
        if desc.get("TableStatus") == "ACTIVE":
            return
        if loop.time() > deadline:
            raise StoreUnavailableError(
                f"DynamoDB table {table!r} is not ACTIVE after "
                f"{_CREATE_TABLE_ACTIVE_TIMEOUT_S:.0f} s "
                f"(status {wire_code(str(desc.get('TableStatus')))}); "
                "run create-table again later"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _ensure_ttl(client: Any, table: str, guard: Callable[[str], _Guard]) -> None:
    with guard("DescribeTimeToLive"):
        resp = await client.describe_time_to_live(TableName=table)
    desc = resp.get("TimeToLiveDescription") or {}
    status = desc.get("TimeToLiveStatus")
    attribute = desc.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attribute == TTL_ATTRIBUTE:
            return
        raise StoreError(
            f"DynamoDB table {table!r} has TTL on attribute {wire_code(str(attribute))!r}; "
            "memsdk needs it on "
            f"{TTL_ATTRIBUTE!r}: disable TTL on the table or use another table"
        )
    with guard("UpdateTimeToLive"):
        try:
            await client.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        except ClientError as exc:
            message = str((exc.response.get("Error") or {}).get("Message") or "")
            if _error_code(exc) != "ValidationException" or "already enabled" not in (
                message.lower()
            ):
                raise
