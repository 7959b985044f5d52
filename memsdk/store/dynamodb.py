"""DynamoDBStore: the Store protocol on one DynamoDB table, over a one-method data path.

The store builds requests (memsdk.store.dynamodb_items), sends them through a DataPath
(memsdk.store.dynamodb_path: the lean msgspec/aiohttp path by default, aioboto3 as the
reference) and interprets conditional failures and transaction cancellations. Both paths
therefore share every rule of this file, and the differential tests compare them.
"""

from __future__ import annotations

import uuid
from typing import Any

from memsdk.backoff import Backoff
from memsdk.config import DynamoDBStoreSpec
from memsdk.errors import ClientClosedError, StoreError, StoreUnavailableError
from memsdk.limits import BATCH_WRITE_MAX, MAX_TRANSACT_ITEMS
from memsdk.records import (
    META_SK,
    SUMMARY_PREFIX,
    TURN_PREFIX,
    CommitOutcome,
    MetaRecord,
    MetaStamp,
    SessionWrite,
    TurnRecord,
    same_turn,
)
from memsdk.store.dynamodb_items import (
    BatchWriteResponse,
    GetMetaResponse,
    Item,
    QueryKeysResponse,
    QueryTurnsResponse,
    WriteResponse,
    item_to_meta,
    item_to_turn,
    key,
    key_of,
    meta_to_item,
    pk,
    summary_to_item,
    turn_sk,
    turn_to_item,
    wire_to_meta,
    wire_to_turn,
)
from memsdk.store.dynamodb_path import (
    CancellationReason,
    DataPath,
    DynamoDBCallError,
    to_store_error,
)

__all__ = ["TTL_ATTRIBUTE", "DynamoDBStore"]

TTL_ATTRIBUTE = "expires_at"

# BatchWriteItem re-sends of UnprocessedItems: bounded, with full-jitter backoff, so a
# throttled purge gives up (StoreUnavailableError) instead of hammering the table.
_BATCH_MAX_ATTEMPTS = 8
# Cancellation reason codes that mean "throttled", as opposed to exception names.
_CANCEL_THROTTLE_CODES = frozenset(
    {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


class DynamoDBStore:
    """The Store protocol on one DynamoDB table."""

    def __init__(
        self, spec: DynamoDBStoreSpec, path: DataPath, *, batch_backoff: Backoff | None = None
    ) -> None:
        """`batch_backoff`: the wait between re-sends of a batch's unprocessed deletes."""
        self._spec = spec
        self._table = spec.table
        self._path = path
        # Full jitter from 25 ms, 50 ms on the first retry, up to 1 s.
        self._batch_backoff = batch_backoff or Backoff.exponential(0.025, 1.0)

    @property
    def description(self) -> str:
        """A short, secret-free name, e.g. 'dynamodb:conversation_memory'."""
        return f"dynamodb:{self._table}"

    @property
    def data_path(self) -> str:
        """Which data path sends the requests: 'lean' or 'aioboto3'."""
        return self._path.description

    async def open(self) -> None:
        """Open the data path; idempotent."""
        await self._path.open()

    async def aclose(self) -> None:
        """Close the data path; idempotent."""
        await self._path.aclose()

    async def _call(
        self,
        operation: str,
        params: dict[str, Any],
        response_type: type[Any],
        sid: str,
        *,
        write: bool,
        interpret: bool = False,
    ) -> Any:
        """The data path's call, its errors as StoreErrors; with `interpret`, a
        DynamoDBCallError (a refused condition, a cancelled transaction) is left to the
        caller to read."""
        try:
            return await self._path.call(
                operation, params, response_type, write=write, session_id=sid
            )
        except ClientClosedError as exc:
            # The Store protocol's answer for a store that is not open (or was closed during
            # the call): a StoreError, which the client reports as its own close.
            raise StoreError(
                "the DynamoDB store is not open (or was closed during the call): open it first",
                session_id=sid,
            ) from exc
        except DynamoDBCallError as exc:
            if interpret:
                raise
            raise to_store_error(
                exc, table=self._table, session_id=sid, maybe_applied=exc.maybe_applied
            ) from exc

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Return the stored META item, expired or not, or None."""
        params = {
            "TableName": self._table,
            "Key": key(session_id, META_SK),
            "ConsistentRead": consistent,
        }
        resp: GetMetaResponse = await self._call(
            "GetItem", params, GetMetaResponse, session_id, write=False
        )
        return None if resp.Item is None else wire_to_meta(resp.Item)

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Return up to `limit` TURN items newest first, ids below `before_turn_id` if given."""
        if limit <= 0:
            return []
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
            params: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ScanIndexForward": False,
                "Limit": limit - len(turns) + (1 if excluded is not None else 0),
                "ConsistentRead": consistent,
            }
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            resp: QueryTurnsResponse = await self._call(
                "Query", params, QueryTurnsResponse, session_id, write=False
            )
            for item in resp.Items:
                if excluded is not None and excluded == item.SK.S:
                    continue
                turns.append(wire_to_turn(item))
            # Any item returned is below the bound, so the bound can no longer appear.
            if resp.Items:
                excluded = None
            start_key = None if resp.LastEvaluatedKey is None else key_of(resp.LastEvaluatedKey)
            # Pages stop at Limit or at 1 MB: large turns can need several pages.
            if len(turns) >= limit or start_key is None:
                return turns[:limit]

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Apply `write` atomically if the stored META matches its expectation."""
        sid = write.meta.session_id
        try:
            meta_put = self._meta_put(write)
            turn_items = [turn_to_item(sid, turn) for turn in write.turns]
            summary_item = None if write.summary is None else summary_to_item(sid, write.summary)
        except (TypeError, ValueError, OverflowError) as exc:
            # The client validates every value first; a caller of the store alone may not.
            raise StoreError(
                f"the DynamoDB store could not commit a write: it does not encode as JSON "
                f"({type(exc).__name__}); nothing was written",
                session_id=sid,
                permanent=True,
            ) from None
        if not write.turns and write.summary is None:
            params = {"TableName": self._table, **meta_put}
            try:
                await self._call("PutItem", params, WriteResponse, sid, write=True, interpret=True)
            except DynamoDBCallError as exc:
                if exc.kind == "conditional":
                    return self._meta_refused(write, exc.item)
                if exc.kind == "conflict":
                    return self._conflict(write, exc.maybe_applied)
                raise to_store_error(
                    exc, table=self._table, session_id=sid, maybe_applied=exc.maybe_applied
                ) from exc
            return CommitOutcome(applied=True)

        transact: list[dict[str, Any]] = [{"Put": {"TableName": self._table, **meta_put}}]
        for item in turn_items:
            transact.append(
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": item,
                        # A turn id is written once: an existing item is either our own
                        # earlier attempt (same content) or a collision.
                        "ConditionExpression": "attribute_not_exists(PK)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
        if summary_item is not None:
            transact.append({"Put": {"TableName": self._table, "Item": summary_item}})
        if len(transact) > MAX_TRANSACT_ITEMS:
            raise StoreError(
                f"a commit holds at most {MAX_TRANSACT_ITEMS} items (META + turns + summary), "
                f"got {len(transact)}: split the append",
                session_id=sid,
                permanent=True,
            )
        # One token for every attempt of this commit, whichever layer retries: DynamoDB
        # then answers a re-sent, already applied transaction with success (for 10 minutes;
        # beyond that the per-item conditions make the replay idempotent).
        params = {"TransactItems": transact, "ClientRequestToken": uuid.uuid4().hex}
        try:
            await self._call(
                "TransactWriteItems", params, WriteResponse, sid, write=True, interpret=True
            )
        except DynamoDBCallError as exc:
            if exc.kind == "cancelled":
                return self._cancelled(write, exc.reasons, exc.maybe_applied)
            if exc.kind == "conflict":
                return self._conflict(write, exc.maybe_applied)
            raise to_store_error(
                exc, table=self._table, session_id=sid, maybe_applied=exc.maybe_applied
            ) from exc
        return CommitOutcome(applied=True)

    def _meta_put(self, write: SessionWrite) -> dict[str, Any]:
        # Aliases for the non-key names: expressions must not depend on the reserved-word list.
        if write.expected_version is None:
            # Absent or expired. A delete's tombstone (kept, unexpired) refuses this: the
            # writer must see it and start above its high-water mark (see plan_delete).
            condition = "attribute_not_exists(PK) OR #exp <= :now"
            names = {"#exp": TTL_ATTRIBUTE}
            values = {":now": {"N": str(write.now_s)}}
        else:
            condition, names, values = _expectation(write.expected_version, write.expected_stamp)
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
            # was lost already applied this write.
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
        self, write: SessionWrite, reasons: list[CancellationReason], ambiguous: bool
    ) -> CommitOutcome:
        sid = write.meta.session_id
        codes = [r.Code or "None" for r in reasons]
        n_turns = len(write.turns)
        if len(reasons) < 1 + n_turns:
            raise StoreError(
                f"DynamoDB cancelled the commit on table {self._table!r} without per-item "
                f"reasons ({', '.join(codes) or 'none'})",
                session_id=sid,
            )
        existing = [
            (turn, reason)
            for turn, reason in zip(write.turns, reasons[1 : 1 + n_turns], strict=True)
            if reason.Code == "ConditionalCheckFailed"
        ]
        # An existing TURN under our id is our own earlier attempt when its content is
        # identical. If the store did not return the item (ALL_OLD not honoured) we trust
        # the id: ids are unique per writer (random node part), collisions are not expected.
        same = [
            reason.Item is None or same_turn(item_to_turn(reason.Item), turn)
            for turn, reason in existing
        ]
        if n_turns and len(existing) == n_turns and all(same):
            # Applied by an earlier attempt; its META may not be this attempt's (see
            # CommitOutcome): the stored one, when the META condition returned it.
            meta_item = reasons[0].Item if reasons[0].Code == "ConditionalCheckFailed" else None
            return CommitOutcome(
                applied=True,
                current=None if meta_item is None else item_to_meta(meta_item),
                already_applied=True,
            )
        if not all(same):
            raise StoreError(
                "turn id collision: a TURN item with the same id and different content "
                f"already exists in table {self._table!r}; nothing was written",
                session_id=sid,
                permanent=True,
            )
        if existing:
            # Part of these turns landed in an earlier write (a buffered batch cut another
            # way before a crash): report them so the caller writes only the rest.
            meta_item = reasons[0].Item if reasons[0].Code == "ConditionalCheckFailed" else None
            return CommitOutcome(
                applied=False,
                current=None if meta_item is None else item_to_meta(meta_item),
                existing_turn_ids=frozenset(turn.turn_id for turn, _ in existing),
            )
        if reasons[0].Code == "ConditionalCheckFailed":
            return self._meta_refused(write, reasons[0].Item)
        if "TransactionConflict" in codes:
            return self._conflict(write, ambiguous)
        throttled = [c for c in codes if c in _CANCEL_THROTTLE_CODES]
        if throttled:
            raise StoreUnavailableError(
                f"DynamoDB commit on table {self._table!r} was throttled ({throttled[0]}); "
                "retry later",
                session_id=sid,
                maybe_applied=ambiguous,
                throttled=True,
            )
        raise StoreError(
            f"DynamoDB cancelled the commit on table {self._table!r} (reasons: {', '.join(codes)})",
            session_id=sid,
        )

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        """Delete TURN/SUMMARY items with ids <= `through_turn_id`; never META."""
        for prefix in (TURN_PREFIX, SUMMARY_PREFIX):
            await self._purge_range(session_id, prefix, prefix + through_turn_id)

    async def _purge_range(self, session_id: str, low: str, high: str) -> None:
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
            resp: QueryKeysResponse = await self._call(
                "Query", params, QueryKeysResponse, session_id, write=False
            )
            keys = [key_of(item) for item in resp.Items]
            for offset in range(0, len(keys), BATCH_WRITE_MAX):
                await self._batch_delete(session_id, keys[offset : offset + BATCH_WRITE_MAX])
            start_key = None if resp.LastEvaluatedKey is None else key_of(resp.LastEvaluatedKey)
            if start_key is None:
                return

    async def _batch_delete(self, session_id: str, keys: list[Item]) -> None:
        pending: list[dict[str, Any]] = [{"DeleteRequest": {"Key": k}} for k in keys]
        for attempt in range(_BATCH_MAX_ATTEMPTS):
            params = {"RequestItems": {self._table: pending}}
            resp: BatchWriteResponse = await self._call(
                "BatchWriteItem", params, BatchWriteResponse, session_id, write=True
            )
            pending = resp.UnprocessedItems.get(self._table) or []
            if not pending:
                return
            if attempt + 1 < _BATCH_MAX_ATTEMPTS:
                await self._batch_backoff.wait(attempt + 1)
        raise StoreUnavailableError(
            f"DynamoDB BatchWriteItem on table {self._table!r} left {len(pending)} deletes "
            f"unprocessed after {_BATCH_MAX_ATTEMPTS} attempts (throttled); retry later",
            session_id=session_id,
            maybe_applied=True,
        )


def _expectation(
    version: int, stamp: MetaStamp | None
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The condition on META for a write planned on a META of `version` and `stamp`: the
    version, and the owner, incarnation and turns it was planned on (see MetaStamp)."""
    terms = ["#ver = :v"]
    names = {"#ver": "version"}
    values: dict[str, Any] = {":v": {"N": str(version)}}
    if stamp is not None:
        names.update({"#flo": "floor_turn_id", "#cnt": "turn_count"})
        terms += ["#flo = :flo", "#cnt = :cnt"]
        values.update({":flo": {"S": stamp.floor_turn_id}, ":cnt": {"N": str(stamp.turn_count)}})
        # Optional attributes are absent rather than NULL (see meta_to_item).
        for name, attr, value in (
            ("#cus", "customer_id", stamp.customer_id),
            ("#last", "last_turn_id", stamp.last_turn_id),
        ):
            names[name] = attr
            if value is None:
                terms.append(f"attribute_not_exists({name})")
            else:
                terms.append(f"{name} = :{attr}")
                values[f":{attr}"] = {"S": value}
        names["#del"] = "deleted"
        terms.append("attribute_exists(#del)" if stamp.deleted else "attribute_not_exists(#del)")
    return " AND ".join(terms), names, values
