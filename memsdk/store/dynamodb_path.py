"""The DynamoDB data path: one method wide, so the store logic is written once.

A data path sends one DynamoDB operation and decodes its reply into a msgspec Struct:

    await path.call("GetItem", params, GetItemResponse, write=False)

`params` is the operation's request exactly as DynamoDB's JSON protocol (and botocore's
low-level client) spells it: {"TableName": ..., "Key": {"PK": {"S": ...}}, ...}. Two paths
implement it:

- memsdk.store.dynamodb_lean.LeanDataPath: msgspec encodes/decodes the JSON protocol,
  botocore's SigV4 signer signs, aiohttp sends on an explicit pool (the default);
- memsdk.store.dynamodb_aioboto3.Aioboto3DataPath: aioboto3's client (the reference).

Error contract of `call`, identical for both paths:
- DynamoDB answered with an error the store logic must interpret (conditional check
  failed, transaction cancelled or in conflict): DynamoDBCallError, with its classification;
- transient failures after the path's own retries (throttling, 5xx, connection, read
  timeout): StoreUnavailableError, `maybe_applied` set when a write may have landed;
- anything else (validation, auth, missing table, no credentials): StoreError;
- asyncio.CancelledError and TimeoutError propagate untouched (the caller's deadline).

What the endpoint answers is not trusted: DynamoDBCallError keeps only a filtered, capped
copy of an error's code, message and cancellation reasons (`wire_code`, `wire_text`), so an
endpoint cannot write escape sequences or megabytes into memsdk's errors and logs.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from memsdk.errors import StoreError, StoreUnavailableError

__all__ = [
    "CancellationReason",
    "DataPath",
    "DynamoDBCallError",
    "ErrorKind",
    "RetryGate",
    "classify",
    "error_code_from_type",
    "to_store_error",
    "wire_code",
    "wire_text",
]

T = TypeVar("T")

ErrorKind = Literal[
    "conditional",  # ConditionalCheckFailedException: nothing written; ALL_OLD item attached
    "cancelled",  # TransactionCanceledException: per-item reasons attached
    "conflict",  # TransactionConflictException: another transaction held an item
    "throttling",  # capacity or request-rate limits: retry later, with backoff
    "server",  # 5xx: retry; a write may have been applied
    "validation",  # the request is malformed: a bug, never retry
    "auth",  # credentials, signature, permissions, clock skew: never retry
    "not_found",  # the table does not exist
    "other",
]

_THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)
_SERVER = frozenset(
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
_AUTH = frozenset(
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
_RETRYABLE: frozenset[ErrorKind] = frozenset({"throttling", "server", "conflict"})

# DynamoDB's codes are short identifiers (the longest is under 50 characters); its messages
# are a sentence. Anything else an endpoint sends is replaced with '?': a mangled code then
# matches no known code, instead of being cleaned into one.
_CODE_MAX = 64
_TEXT_MAX = 256
_NOT_CODE = re.compile(r"[^A-Za-z0-9#._:\-]")
_NOT_TEXT = re.compile(r"[^\x20-\x7e]")


def wire_code(value: str) -> str:
    """An error code from the wire, safe to print: [A-Za-z0-9#._:-], '?' for anything else,
    at most 64 characters."""
    return _cap(_NOT_CODE.sub("?", value[: _CODE_MAX + 1]), _CODE_MAX)


def wire_text(value: str) -> str:
    """An error message from the wire, safe to print: printable ASCII, '?' for anything
    else, at most 256 characters."""
    return _cap(_NOT_TEXT.sub("?", value[: _TEXT_MAX + 1]), _TEXT_MAX)


def _cap(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _safe_reason(reason: CancellationReason) -> CancellationReason:
    return msgspec.structs.replace(
        reason,
        Code=None if reason.Code is None else wire_code(reason.Code),
        Message=None if reason.Message is None else wire_text(reason.Message),
    )


def error_code_from_type(type_field: str) -> str:
    """'com.amazonaws.dynamodb.v20120810#ThrottlingException' -> 'ThrottlingException'."""
    return type_field.rsplit("#", 1)[-1]


def classify(code: str, status: int) -> ErrorKind:
    """The kind of a DynamoDB error code (and HTTP status): the retry decision is data."""
    if code == "ConditionalCheckFailedException":
        return "conditional"
    if code == "TransactionCanceledException":
        return "cancelled"
    if code == "TransactionConflictException":
        return "conflict"
    if code in _THROTTLING:
        return "throttling"
    if code in _SERVER or status >= 500:
        return "server"
    if code in _AUTH:
        return "auth"
    if code == "ResourceNotFoundException":
        return "not_found"
    if code == "ValidationException" or code == "SerializationException":
        return "validation"
    return "other"


class CancellationReason(msgspec.Struct, frozen=True):
    """One entry of TransactionCanceledException.CancellationReasons (one per item)."""

    Code: str | None = None
    Message: str | None = None
    Item: dict[str, Any] | None = None


class DynamoDBCallError(Exception):
    """An error DynamoDB answered with, parsed from its body; `kind` drives every decision.

    `code`, `message` and each reason's Code and Message are kept filtered and capped
    (`wire_code`, `wire_text`): they end up in messages and logs.
    """

    def __init__(
        self,
        *,
        operation: str,
        code: str,
        message: str,
        status: int,
        item: dict[str, Any] | None = None,
        reasons: list[CancellationReason] | None = None,
    ) -> None:
        code = wire_code(code)
        super().__init__(f"{operation}: {code}")
        self.operation = operation
        self.code = code
        self.message = wire_text(message)
        self.status = status
        self.kind: ErrorKind = classify(code, status)
        self.item = item
        self.reasons = [_safe_reason(reason) for reason in reasons or []]
        # Set by the data path: an earlier attempt of this call may have been applied.
        self.maybe_applied = False

    @property
    def retryable(self) -> bool:
        """True for throttling, 5xx and transaction conflicts; never validation or conditions."""
        return self.kind in _RETRYABLE


def to_store_error(
    exc: DynamoDBCallError, *, table: str, session_id: str | None, maybe_applied: bool
) -> StoreError:
    """The memsdk error for a DynamoDB error the store logic did not handle itself."""
    what = f"DynamoDB {exc.operation} on table {table!r}"
    if exc.kind == "throttling":
        return StoreUnavailableError(
            f"{what} was throttled ({exc.code}); retry later",
            session_id=session_id,
            maybe_applied=maybe_applied,
            throttled=True,
        )
    if exc.kind in ("server", "conflict"):
        return StoreUnavailableError(
            f"{what} failed ({exc.code}); retry later",
            session_id=session_id,
            maybe_applied=maybe_applied,
        )
    if exc.kind == "not_found":
        return StoreError(
            f"DynamoDB table {table!r} does not exist: run `memsdk create-table --store URL` first",
            session_id=session_id,
        )
    if exc.kind == "auth":
        return StoreError(
            f"{what} was refused: credentials or permissions ({exc.code}): check the AWS "
            "credentials in use, the IAM policy for this table, and the system clock "
            "(signatures expire)",
            session_id=session_id,
        )
    # A malformed request stays malformed; anything else unknown may be the deployment's.
    return StoreError(
        f"{what} was refused ({exc.code})",
        session_id=session_id,
        permanent=exc.kind == "validation",
    )


class RetryGate(Protocol):
    """A retry budget as a data path sees it (memsdk.resilience.budget.RetryBudget fits)."""

    def record_call(self) -> None:
        """A first attempt is being made."""
        ...

    def try_spend(self) -> bool:
        """True: one retry may go now; False: the budget is spent, give up."""
        ...


class DataPath(Protocol):
    """Sends one DynamoDB operation; see the module docstring for the error contract."""

    @property
    def description(self) -> str:
        """A short name: 'lean' or 'aioboto3'."""
        ...

    async def open(self) -> None:
        """Create connection pools and resolve credentials; idempotent."""
        ...

    async def aclose(self) -> None:
        """Release every connection; idempotent."""
        ...

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
        ...
