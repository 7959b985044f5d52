"""DynamoDBStore: the Store protocol on one DynamoDB table, through aioboto3's low-level client.

This is the reference data path (DESIGN.md section 2b): simple, generic botocore
serialization, differentially tested against the lean JSON-protocol path. It shares the
item codec (memsdk.store.dynamodb_items) with it, and `create_table` is the control plane
behind `memsdk create-table`.

Every DynamoDB call runs inside `_Guard`, the one place where foreign exceptions
(botocore, aiohttp, OSError) become StoreError / StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

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
from memsdk.store.base import CommitOutcome, MetaRecord, SessionWrite, TurnRecord
from memsdk.store.dynamodb_items import (
    META_SK,
    SUMMARY_PREFIX,
    TURN_PREFIX,
    Item,
    item_to_meta,
    item_to_turn,
    key,
    meta_to_item,
    pk,
    summary_to_item,
    turn_sk,
    turn_to_item,
)

__all__ = ["DynamoDBStore", "create_table"]

TTL_ATTRIBUTE = "expires_at"

# DynamoDB's limits for one TransactWriteItems call and one BatchWriteItem call.
_MAX_TRANSACT_ITEMS = 100
_BATCH_WRITE_MAX = 25
# BatchWriteItem re-sends of UnprocessedItems: bounded, with full-jitter backoff, so a
# throttled purge gives up (StoreUnavailableError) instead of hammering the table.
_BATCH_MAX_ATTEMPTS = 8
_BATCH_BACKOFF_BASE_S = 0.05
_BATCH_BACKOFF_CAP_S = 1.0

_CREATE_TABLE_ACTIVE_TIMEOUT_S = 300.0

# Transient: the request was refused or failed before an answer; retrying later can help.
_THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)
_SERVER_CODES = frozenset(
    {
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        # A transaction with the same ClientRequestToken is still running: ours may land.
        "TransactionInProgressException",
        "ReplicatedWriteConflictException",
    }
)
_AUTH_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "AccessDeniedException",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AuthFailure",
    }
)
_CANCEL_THROTTLE_CODES = frozenset(
    {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


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
    if (isinstance(status, int) and status >= 500) or code in _SERVER_CODES:
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
    # Every knob is explicit because botocore's defaults are wrong for a hot path
    # (DESIGN.md section 5): the legacy retry mode makes up to 10 attempts with
    # unjittered doubling (~25 s on one call), timeouts default to 60 s and the pool to 10
    # connections (p99 of 4-10 s at 64 concurrent calls). Standard mode adds jitter and a
    # retry quota; `total_max_attempts` is small because memsdk's own deadline wraps each
    # call and exactly one layer (this one, with the caller's tenacity loop above it
    # configured so the two never multiply) decides about retries.
    # tcp_keepalive asks for SO_KEEPALIVE so half-dead pooled connections get detected;
    # note that aiobotocore 2.25 ignores socket options (its AIOHTTPSession has a TODO),
    # so today this documents intent and takes effect if aiobotocore implements it.
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
        if isinstance(exc, MemsdkError | TimeoutError):
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
            code = _error_code(exc)
            if code in _THROTTLE_CODES:
                return self._unavailable(f"throttled ({code})", maybe_applied=False)
            if code in _SERVER_CODES or _http_status(exc) >= 500:
                return self._unavailable(f"server error ({code})", maybe_applied=True)
            if code == "ResourceNotFoundException":
                return StoreError(
                    f"DynamoDB table {table!r} does not exist: "
                    "run `memsdk create-table --store URL` first",
                    session_id=sid,
                )
            if code in _AUTH_CODES:
                return StoreError(
                    f"DynamoDB rejected the request's credentials or permissions ({code}) "
                    f"for {self._op} on table {table!r}: check the AWS credentials in use, "
                    "the IAM policy for this table, and the system clock (signatures expire)",
                    session_id=sid,
                )
            return StoreError(
                f"DynamoDB refused {self._op} on table {table!r} ({code})", session_id=sid
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


class DynamoDBStore:
    """The Store protocol on one DynamoDB table (aioboto3 low-level client, one per store)."""

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
        self._table = spec.table
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
        """A short, secret-free name, e.g. 'dynamodb:conversation_memory'."""
        return f"dynamodb:{self._table}"

    async def open(self) -> None:
        """Create the one aiobotocore client this store uses; idempotent."""
        async with self._open_lock:
            if self._client is not None:
                return
            stack = AsyncExitStack()
            with _Guard("open", write=False, table=self._table, session_id=None):
                try:
                    session = aioboto3.Session()
                    client = await stack.enter_async_context(
                        session.client(
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
                with _Guard("close", write=False, table=self._table, session_id=None):
                    await stack.aclose()

    def _require_client(self) -> Any:
        if self._client is None:
            raise StoreError(f"{self.description} is not open: call open() first")
        return self._client

    def _guard(self, op: str, *, write: bool, session_id: str | None) -> _Guard:
        return _Guard(op, write=write, table=self._table, session_id=session_id)

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Return the stored META item, expired or not, or None."""
        client = self._require_client()
        with self._guard("GetItem", write=False, session_id=session_id):
            resp = await client.get_item(
                TableName=self._table, Key=key(session_id, META_SK), ConsistentRead=consistent
            )
        item: Item | None = resp.get("Item")
        return None if item is None else item_to_meta(item)

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Return up to `limit` TURN items newest first, ids below `before_turn_id` if given."""
        if limit <= 0:
            return []
        client = self._require_client()
        values: dict[str, Any] = {":pk": {"S": pk(session_id)}}
        excluded: str | None = None
        if before_turn_id is None:
            condition = "PK = :pk AND begins_with(SK, :prefix)"
            values[":prefix"] = {"S": TURN_PREFIX}
        else:
            # BETWEEN is inclusive and a plain `SK < :hi` would also match META and
            # SUMMARY# (they sort below TURN#): bound both sides, drop the bound itself.
            excluded = turn_sk(before_turn_id)
            condition = "PK = :pk AND SK BETWEEN :lo AND :hi"
            values[":lo"] = {"S": TURN_PREFIX}
            values[":hi"] = {"S": excluded}
        turns: list[TurnRecord] = []
        start_key: Item | None = None
        while True:
            # One extra item while the bound may still come (it is the first one, newest
            # first), so that dropping it still leaves `limit` turns in one round trip.
            page_limit = limit - len(turns) + (1 if excluded is not None else 0)
            params: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ScanIndexForward": False,
                "Limit": page_limit,
                "ConsistentRead": consistent,
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            with self._guard("Query", write=False, session_id=session_id):
                resp = await client.query(**params)
            for item in resp.get("Items", []):
                if excluded is not None and item["SK"].get("S") == excluded:
                    continue
                turns.append(item_to_turn(item))
            # Any item returned is below the bound, so the bound can no longer appear.
            if resp.get("Items"):
                excluded = None
            start_key = resp.get("LastEvaluatedKey")
            # Pages stop at Limit or at 1 MB: large turns can need several pages.
            if len(turns) >= limit or start_key is None:
                return turns[:limit]

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Apply `write` atomically if the stored META matches its expectation."""
        client = self._require_client()
        sid = write.meta.session_id
        meta_put = self._meta_put(write)
        if not write.turns and write.summary is None:
            guard = self._guard("PutItem", write=True, session_id=sid)
            with guard:
                try:
                    await client.put_item(TableName=self._table, **meta_put)
                except ClientError as exc:
                    code = _error_code(exc)
                    if code == "ConditionalCheckFailedException":
                        return self._meta_refused(write, exc.response.get("Item"))
                    if code == "TransactionConflictException":
                        return self._conflict(write, guard.ambiguous)
                    raise
            return CommitOutcome(applied=True)

        transact: list[dict[str, Any]] = [{"Put": {"TableName": self._table, **meta_put}}]
        for turn in write.turns:
            transact.append(
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": turn_to_item(sid, turn),
                        # A turn id is written once: an existing item is either our own
                        # earlier attempt (same content) or a collision.
                        "ConditionExpression": "attribute_not_exists(PK)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
        if write.summary is not None:
            transact.append(
                {"Put": {"TableName": self._table, "Item": summary_to_item(sid, write.summary)}}
            )
        if len(transact) > _MAX_TRANSACT_ITEMS:
            raise StoreError(
                f"a commit holds at most {_MAX_TRANSACT_ITEMS} items (META + turns + summary), "
                f"got {len(transact)}: split the append",
                session_id=sid,
            )
        guard = self._guard("TransactWriteItems", write=True, session_id=sid)
        with guard:
            try:
                await client.transact_write_items(TransactItems=transact)
            except ClientError as exc:
                if _error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons") or []
                return self._cancelled(write, reasons, guard.ambiguous)
        return CommitOutcome(applied=True)

    def _meta_put(self, write: SessionWrite) -> dict[str, Any]:
        # Aliases for the non-key names: expressions must not depend on the reserved-word list.
        if write.expected_version is None:
            condition = "attribute_not_exists(PK) OR #exp <= :now"
            names = {"#exp": TTL_ATTRIBUTE}
            values = {":now": {"N": str(write.now_s)}}
        else:
            condition = "#ver = :v"
            names = {"#ver": "version"}
            values = {":v": {"N": str(write.expected_version)}}
        return {
            "Item": meta_to_item(write.meta),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _meta_refused(self, write: SessionWrite, item: Item | None) -> CommitOutcome:
        current = None if item is None else item_to_meta(item)
        if current is not None and not write.turns and current == write.meta:
            # The stored META is exactly the one we write: an earlier attempt whose reply
            # was lost (a botocore retry or the caller's) already applied this write.
            return CommitOutcome(applied=True)
        return CommitOutcome(applied=False, current=current)

    def _conflict(self, write: SessionWrite, ambiguous: bool) -> CommitOutcome:
        if ambiguous:
            # An earlier attempt of this call may have landed before the conflict: we
            # cannot claim "nothing was written".
            raise StoreUnavailableError(
                f"DynamoDB commit on table {self._table!r} met a conflicting transaction "
                "after an attempt whose outcome is unknown; retry",
                session_id=write.meta.session_id,
                maybe_applied=True,
            )
        # Nothing was written; the caller re-reads META and tries again.
        return CommitOutcome(applied=False, current=None)

    def _cancelled(
        self, write: SessionWrite, reasons: list[dict[str, Any]], ambiguous: bool
    ) -> CommitOutcome:
        sid = write.meta.session_id
        codes = [str(r.get("Code") or "None") for r in reasons]
        n_turns = len(write.turns)
        if len(reasons) < 1 + n_turns:
            raise StoreError(
                f"DynamoDB cancelled the commit on table {self._table!r} without per-item "
                f"reasons ({', '.join(codes) or 'none'})",
                session_id=sid,
            )
        turn_reasons = reasons[1 : 1 + n_turns]
        existing = [
            (turn, reason)
            for turn, reason in zip(write.turns, turn_reasons, strict=True)
            if reason.get("Code") == "ConditionalCheckFailed"
        ]
        # An existing TURN under our id is our own earlier attempt when its content is
        # identical. If the store did not return the item (ALL_OLD not honoured) we trust
        # the id: ids are unique per writer (random node part), collisions are not expected.
        same = [
            reason.get("Item") is None or item_to_turn(reason["Item"]) == turn
            for turn, reason in existing
        ]
        if n_turns and len(existing) == n_turns and all(same):
            return CommitOutcome(applied=True)
        if not all(same):
            raise StoreError(
                "turn id collision: a TURN item with the same id and different content "
                f"already exists in table {self._table!r}; nothing was written",
                session_id=sid,
            )
        meta_reason = reasons[0]
        if meta_reason.get("Code") == "ConditionalCheckFailed":
            return self._meta_refused(write, meta_reason.get("Item"))
        if "TransactionConflict" in codes:
            return self._conflict(write, ambiguous)
        throttled = [c for c in codes if c in _CANCEL_THROTTLE_CODES]
        if throttled:
            raise StoreUnavailableError(
                f"DynamoDB commit on table {self._table!r} was throttled ({throttled[0]}); "
                "retry later",
                session_id=sid,
                maybe_applied=ambiguous,
            )
        raise StoreError(
            f"DynamoDB cancelled the commit on table {self._table!r} (reasons: {', '.join(codes)})",
            session_id=sid,
        )

    async def purge_session(self, session_id: str, *, through_turn_id: str, version: int) -> None:
        """Delete TURN/SUMMARY items with ids <= `through_turn_id`, then META if at `version`."""
        client = self._require_client()
        for prefix in (TURN_PREFIX, SUMMARY_PREFIX):
            await self._purge_range(client, session_id, prefix, prefix + through_turn_id)
        with self._guard("DeleteItem", write=True, session_id=session_id):
            try:
                await client.delete_item(
                    TableName=self._table,
                    Key=key(session_id, META_SK),
                    ConditionExpression="#ver = :v",
                    ExpressionAttributeNames={"#ver": "version"},
                    ExpressionAttributeValues={":v": {"N": str(version)}},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                # A newer incarnation (or nothing) is there now: it is not ours to delete.

    async def _purge_range(self, client: Any, session_id: str, low: str, high: str) -> None:
        start_key: Item | None = None
        while True:
            params: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "PK = :pk AND SK BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {
                    ":pk": {"S": pk(session_id)},
                    ":lo": {"S": low},
                    ":hi": {"S": high},
                },
                "ProjectionExpression": "PK, SK",
                # Strong reads: a turn written just before the tombstone must not be missed.
                "ConsistentRead": True,
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            with self._guard("Query", write=False, session_id=session_id):
                resp = await client.query(**params)
            keys: list[Item] = [{"PK": i["PK"], "SK": i["SK"]} for i in resp.get("Items", [])]
            for offset in range(0, len(keys), _BATCH_WRITE_MAX):
                await self._batch_delete(
                    client, session_id, keys[offset : offset + _BATCH_WRITE_MAX]
                )
            start_key = resp.get("LastEvaluatedKey")
            if start_key is None:
                return

    async def _batch_delete(self, client: Any, session_id: str, keys: list[Item]) -> None:
        pending: list[dict[str, Any]] = [{"DeleteRequest": {"Key": k}} for k in keys]
        for attempt in range(_BATCH_MAX_ATTEMPTS):
            with self._guard("BatchWriteItem", write=True, session_id=session_id):
                resp = await client.batch_write_item(RequestItems={self._table: pending})
            pending = (resp.get("UnprocessedItems") or {}).get(self._table) or []
            if not pending:
                return
            if attempt + 1 < _BATCH_MAX_ATTEMPTS:
                cap = min(_BATCH_BACKOFF_CAP_S, _BATCH_BACKOFF_BASE_S * 2**attempt)
                await asyncio.sleep(random.uniform(0, cap))
        raise StoreUnavailableError(
            f"DynamoDB BatchWriteItem on table {self._table!r} left {len(pending)} deletes "
            f"unprocessed after {_BATCH_MAX_ATTEMPTS} attempts (throttled); retry later",
            session_id=session_id,
            maybe_applied=True,
        )


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
                f"{_CREATE_TABLE_ACTIVE_TIMEOUT_S:.0f} s (status {desc.get('TableStatus')}); "
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
            f"DynamoDB table {table!r} has TTL on attribute {attribute!r}; memsdk needs it on "
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
