"""The lean DynamoDB data path: msgspec JSON, botocore's SigV4 signer, aiohttp on one pool.

aioboto3 spends ~1.1 ms of CPU per GetItem in botocore's generic serializer, parser and
event hooks (measured against a server that answers instantly). This path speaks
DynamoDB's JSON protocol directly and keeps from the AWS SDK only what must be exactly
right: SigV4 (botocore's own signer) and credentials (aiobotocore's provider chain, which
refreshes them before they expire).
Retries live here, in one tenacity loop: the only retry layer of a call.

See memsdk.store.dynamodb_path for the error contract of `call`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec
import yarl
from aiobotocore.session import get_session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import ClientClosedError, ConfigError, StoreError, StoreUnavailableError
from memsdk.store.dynamodb_path import (
    CancellationReason,
    DynamoDBCallError,
    RetryGate,
    error_code_from_type,
    to_store_error,
)

__all__ = ["LeanDataPath", "resolve_endpoint"]

T = TypeVar("T")

# Isolated partitions need their own endpoints, CA bundles and signing rules that only
# botocore's endpoint resolver knows.
_ISOLATED_REGION_PREFIXES = ("us-iso-", "us-isob-", "eu-isoe-", "us-isof-")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TARGET_PREFIX = "DynamoDB_20120810."
# DynamoDB endpoints resolve to a rotating set of addresses: re-resolve every few seconds
# so new pool connections spread over them instead of pinning one address.
_DNS_CACHE_TTL_S = 10
# Full jitter: each retry waits uniform(0, min(1.0, 0.025 * 2**n)) seconds.
_BACKOFF_MULTIPLIER_S = 0.025
_BACKOFF_CAP_S = 1.0
_CREDENTIALS_HINT = (
    "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, refresh the SSO login, "
    "or attach an IAM role to this host"
)
_ENCODER = msgspec.json.Encoder()


def resolve_endpoint(spec: DynamoDBStoreSpec) -> str:
    """The base URL (no trailing slash) the lean path sends to; ConfigError if unsupported."""
    if spec.region.startswith(_ISOLATED_REGION_PREFIXES):
        raise ConfigError(
            f"the lean DynamoDB data path does not support the isolated region "
            f'{spec.region!r}: use Config(dynamodb_data_path="aioboto3")'
        )
    if spec.endpoint is not None:
        return spec.endpoint.rstrip("/")
    suffix = "amazonaws.com.cn" if spec.region.startswith("cn-") else "amazonaws.com"
    return f"https://dynamodb.{spec.region}.{suffix}"


def _host_header(url: str) -> str:
    # The Host value SigV4 signs must be the one sent: compute it once, send it explicitly.
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class _ErrorBody(msgspec.Struct):
    """DynamoDB's error reply; the message key is spelled either way depending on the error."""

    type: str = msgspec.field(default="", name="__type")
    message: str | None = None
    Message: str | None = None
    Item: dict[str, Any] | None = None
    CancellationReasons: list[CancellationReason] | None = None


_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody)


def _call_error(operation: str, status: int, body: bytes) -> DynamoDBCallError:
    """DynamoDB's error reply as a DynamoDBCallError; an unreadable body is judged by status."""
    try:
        parsed = _ERROR_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):
        # A proxy or load balancer page (HTML, empty) rather than DynamoDB's JSON, or a
        # body nested too deeply to be one (msgspec raises RecursionError for that).
        return DynamoDBCallError(
            operation=operation, code=f"HTTP{status}", message="", status=status
        )
    return DynamoDBCallError(
        operation=operation,
        code=error_code_from_type(parsed.type) if parsed.type else f"HTTP{status}",
        message=parsed.message or parsed.Message or "",
        status=status,
        item=parsed.Item,
        reasons=parsed.CancellationReasons,
    )


class _CorruptReplyError(aiohttp.ClientPayloadError):
    """The reply's body does not match its x-amz-crc32 header: damaged in transit."""


def _retryable(exc: BaseException) -> bool:
    """Retry throttling, 5xx, conflicts and transport failures; nothing else."""
    if isinstance(exc, DynamoDBCallError):
        return exc.retryable
    if isinstance(exc, aiohttp.ClientError):
        return True  # includes ServerTimeoutError: the socket read timeout
    if isinstance(exc, TimeoutError):
        return False  # the caller's deadline, not ours
    return isinstance(exc, OSError)


_RETRY = retry_if_exception(_retryable)
_WAIT = wait_random_exponential(multiplier=_BACKOFF_MULTIPLIER_S, max=_BACKOFF_CAP_S)


def _where(exc: msgspec.DecodeError) -> str:
    # msgspec ends its messages with " - at `$.path`": keep the path, drop the rest, which
    # may quote a value (items hold user content).
    _, sep, path = str(exc).rpartition(" - at ")
    return f" at {path}" if sep else ""


class _Attempts:
    """What the attempts of one call did."""

    __slots__ = ("reached_server",)

    def __init__(self) -> None:
        # True once an attempt may have been processed by DynamoDB: a 5xx, or a transport
        # failure after the request may have been sent.
        self.reached_server = False


async def _default_credentials() -> Any:
    """aiobotocore's provider chain: env, profile, SSO, IMDS, container, web identity."""
    try:
        credentials = await get_session().get_credentials()
    except TimeoutError:
        raise
    except Exception as exc:  # botocore raises many unrelated types here (profile, SSO, ...)
        raise StoreError(
            f"cannot load AWS credentials for DynamoDB ({type(exc).__name__}): {_CREDENTIALS_HINT}"
        ) from exc
    if credentials is None:
        raise StoreError(f"no AWS credentials found for DynamoDB: {_CREDENTIALS_HINT}")
    return credentials


class LeanDataPath:
    """The DataPath protocol on aiohttp, msgspec and botocore's SigV4 signer (the default)."""

    def __init__(
        self,
        spec: DynamoDBStoreSpec,
        *,
        max_pool_connections: int,
        connect_timeout: float,
        read_timeout: float,
        max_attempts: int,
        credentials: Any | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_budget: RetryGate | None = None,
    ) -> None:
        self._spec = spec
        self._url = resolve_endpoint(spec) + "/"
        self._yarl_url = yarl.URL(self._url)  # parsed once: aiohttp would parse a str per call
        self._host = _host_header(self._url)
        self._max_pool_connections = max_pool_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._stop = stop_after_attempt(max_attempts)
        # A retry also needs a token from the budget: during an outage retries stay a small
        # share of the calls instead of multiplying them.
        self._budget = retry_budget
        budget = retry_budget
        self._retry_if = (
            _RETRY
            if budget is None
            else retry_if_exception(lambda exc: _retryable(exc) and budget.try_spend())
        )
        self._credentials = credentials
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, dict[str, str]] = {}
        self._decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}

    @property
    def description(self) -> str:
        """The data path's name."""
        return "lean"

    async def open(self) -> None:
        """Resolve credentials and create the connection pool; idempotent."""
        if self._session is not None:
            return
        if self._credentials is None:
            self._credentials = await _default_credentials()
            if self._session is not None:  # a concurrent open() finished first
                return
        connector = aiohttp.TCPConnector(
            limit=self._max_pool_connections,
            limit_per_host=self._max_pool_connections,
            ttl_dns_cache=_DNS_CACHE_TTL_S,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def aclose(self) -> None:
        """Close every pooled connection; idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # aiohttp's documented grace: let the transports run their close callbacks.
            await asyncio.sleep(0)

    async def call(
        self,
        operation: str,
        params: dict[str, Any],
        response_type: type[T],
        *,
        write: bool,
        session_id: str | None = None,
    ) -> T:
        """Send `operation` with `params`; return the reply decoded as `response_type`."""
        session = self._session
        if session is None:
            raise ClientClosedError(
                "the DynamoDB data path is not open: use the client inside `async with`",
                session_id=session_id,
            )
        table = params.get("TableName") or self._spec.table
        body = _ENCODER.encode(params)
        headers = await self._signed_headers(operation, body, session_id)
        attempts = _Attempts()
        if self._budget is not None:
            self._budget.record_call()
        try:
            try:
                reply = await self._send(session, operation, body, headers, attempts)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                reply = await self._retry(exc, session, operation, body, headers, attempts)
        except DynamoDBCallError as exc:
            maybe_applied = write and attempts.reached_server
            if exc.kind in ("conditional", "cancelled", "conflict"):
                exc.maybe_applied = maybe_applied
                raise  # the store logic interprets these
            error = to_store_error(
                exc, table=table, session_id=session_id, maybe_applied=maybe_applied
            )
            if not write and isinstance(error, StoreUnavailableError):
                error.maybe_applied = False  # to_store_error assumes a 5xx may have applied
            raise error from exc
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, operation, table, session_id, write, attempts) from exc
        except TimeoutError:
            raise  # the caller's deadline (aiohttp's own timeouts are ClientErrors)
        except OSError as exc:
            raise self._transport_error(exc, operation, table, session_id, write, attempts) from exc
        except Exception as exc:
            if self._session is None:  # aclose() ran while this call was in flight
                raise ClientClosedError(
                    "the DynamoDB data path was closed during the call", session_id=session_id
                ) from exc
            raise StoreError(
                f"DynamoDB {operation} on table {table!r} failed unexpectedly "
                f"({type(exc).__name__})",
                session_id=session_id,
            ) from exc
        try:
            return self._decoder(response_type).decode(reply)
        except (msgspec.DecodeError, RecursionError) as exc:
            where = _where(exc) if isinstance(exc, msgspec.DecodeError) else " (nested too deeply)"
            raise StoreError(
                f"DynamoDB {operation} on table {table!r} answered with a reply that does not "
                f"decode as {response_type.__name__}{where}",
                session_id=session_id,
            ) from None

    async def _retry(
        self,
        first_failure: Exception,
        session: aiohttp.ClientSession,
        operation: str,
        body: bytes,
        headers: dict[str, str],
        attempts: _Attempts,
    ) -> bytes:
        """Attempts 2..max_attempts with backoff; tenacity's attempt 1 replays the first failure."""
        # The first attempt runs outside tenacity because its bookkeeping costs ~40-50 µs of
        # CPU per call, ~10% of a whole GetItem; the loop only starts once a retry is due.
        replay: list[Exception] = [first_failure]

        async def attempt() -> bytes:
            if replay:
                raise replay.pop()
            return await self._send(session, operation, body, headers, attempts)

        retrying = AsyncRetrying(
            sleep=self._sleep, stop=self._stop, wait=_WAIT, retry=self._retry_if, reraise=True
        )
        result: bytes = await retrying(attempt)
        return result

    async def _send(
        self,
        session: aiohttp.ClientSession,
        operation: str,
        body: bytes,
        headers: dict[str, str],
        attempts: _Attempts,
    ) -> bytes:
        """One attempt: the 200 reply's body, or the error DynamoDB (or the network) gave."""
        try:
            async with session.post(self._yarl_url, data=body, headers=headers) as response:
                status = response.status
                reply = await response.read()
                crc32 = response.headers.get("x-amz-crc32")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            raise  # failed while connecting: nothing was sent
        except (aiohttp.ClientError, OSError):
            attempts.reached_server = True
            raise
        if crc32 is not None and crc32 != str(zlib.crc32(reply)):
            attempts.reached_server = True
            raise _CorruptReplyError("the reply does not match its x-amz-crc32 checksum")
        if status == 200:
            return reply
        error = _call_error(operation, status, reply)
        if error.kind == "server":
            attempts.reached_server = True
        raise error

    async def _signed_headers(
        self, operation: str, body: bytes, session_id: str | None
    ) -> dict[str, str]:
        """The headers of this request, signed once per call (a signature lasts minutes)."""
        assert self._credentials is not None  # set by open(), which the caller checked
        try:
            # Refreshable credentials refresh themselves here, before they expire.
            credentials = await self._credentials.get_frozen_credentials()
        except TimeoutError:
            raise
        except Exception as exc:  # whatever the provider's refresh raised
            raise StoreError(
                f"cannot refresh AWS credentials for DynamoDB ({type(exc).__name__}): "
                f"{_CREDENTIALS_HINT}",
                session_id=session_id,
            ) from exc
        request = AWSRequest(
            method="POST", url=self._url, data=body, headers=self._static_headers(operation)
        )
        SigV4Auth(credentials, "dynamodb", self._spec.region).add_auth(request)
        return dict(request.headers.items())

    def _static_headers(self, operation: str) -> dict[str, str]:
        headers = self._headers.get(operation)
        if headers is None:
            headers = self._headers[operation] = {
                "Host": self._host,
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": _TARGET_PREFIX + operation,
                # Uncompressed: x-amz-crc32 is checked over the bytes received, and gunzip
                # of small replies costs more CPU than the bytes it saves on the wire.
                "Accept-Encoding": "identity",
            }
        return headers

    def _decoder(self, response_type: type[T]) -> msgspec.json.Decoder[T]:
        decoder = self._decoders.get(response_type)
        if decoder is None:
            decoder = self._decoders[response_type] = msgspec.json.Decoder(response_type)
        return decoder

    def _transport_error(
        self,
        exc: Exception,
        operation: str,
        table: str,
        session_id: str | None,
        write: bool,
        attempts: _Attempts,
    ) -> StoreUnavailableError:
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            what = f"cannot connect to {self._host}"
        else:
            what = f"no complete response from {self._host}"
        return StoreUnavailableError(
            f"DynamoDB {operation} on table {table!r} failed: {what} "
            f"({type(exc).__name__}); retry later",
            session_id=session_id,
            maybe_applied=write and attempts.reached_server,
        )
