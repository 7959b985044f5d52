"""Codec between the store records (memsdk.store.base) and DynamoDB items.

Requests are built as DynamoDB's low-level JSON shape ({"S": "..."}, {"N": "123"}), the form
both the aioboto3 client and the lean JSON-protocol client send; replies are decoded into
the typed Structs below. Pure: no I/O, no boto.

Layout (single table, docs/architecture.md):

    META                 PK=SESSION#<sid>  SK=META
    TURN#<turn_id>       PK=SESSION#<sid>  SK=TURN#<turn_id>
    SUMMARY#<through>    PK=SESSION#<sid>  SK=SUMMARY#<through_turn_id>

`attributes` and `page_context` are stored as JSON text in a string attribute: any JSON
value (big integers, floats, empty maps, nested lists) then round-trips exactly, which
DynamoDB's native numbers (38 digits) and maps (no empty-key, set/number coercions) do not
guarantee, and the bytes we count against the item cap are the bytes we store.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from memsdk.errors import StoreError
from memsdk.jsonshape import too_few_brackets_to_nest, within_depth
from memsdk.records import (
    META_SK,
    PK_PREFIX,
    SUMMARY_PREFIX,
    TURN_PREFIX,
    MetaRecord,
    SummaryRecord,
    TurnRecord,
)

__all__ = [
    "AttributeValue",
    "BatchWriteResponse",
    "GetMetaResponse",
    "Item",
    "KeyItem",
    "MetaItem",
    "QueryKeysResponse",
    "QueryTurnsResponse",
    "SummaryItem",
    "TurnItem",
    "WriteResponse",
    "convert",
    "item_to_meta",
    "item_to_summary",
    "item_to_turn",
    "key",
    "key_of",
    "meta_to_item",
    "pk",
    "summary_sk",
    "summary_to_item",
    "turn_sk",
    "turn_to_item",
    "wire_to_meta",
    "wire_to_summary",
    "wire_to_turn",
]

T = TypeVar("T")
AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]


_json_encoder = msgspec.json.Encoder()
_dict_decoder = msgspec.json.Decoder(dict[str, Any])


def pk(session_id: str) -> str:
    """The partition key of a session."""
    return PK_PREFIX + session_id


def turn_sk(turn_id: str) -> str:
    """The sort key of a TURN item."""
    return TURN_PREFIX + turn_id


def summary_sk(through_turn_id: str) -> str:
    """The sort key of a SUMMARY item."""
    return SUMMARY_PREFIX + through_turn_id


def key(session_id: str, sk: str) -> Item:
    """The primary key of an item, as DynamoDB's Key parameter."""
    return {"PK": {"S": pk(session_id)}, "SK": {"S": sk}}


def meta_to_item(meta: MetaRecord) -> Item:
    """Encode a META record."""
    item: Item = {
        "PK": {"S": pk(meta.session_id)},
        "SK": {"S": META_SK},
        "expires_at": _n(meta.expires_at),
        "created_at_ms": _n(meta.created_at_ms),
        "updated_at_ms": _n(meta.updated_at_ms),
        "turn_count": _n(meta.turn_count),
        "floor_turn_id": {"S": meta.floor_turn_id},
        "page_context": {"S": _json(meta.page_context)},
        "attributes": {"S": _json(meta.attributes)},
        "version": _n(meta.version),
    }
    # Optional fields are omitted rather than stored as NULL: fewer bytes, and operators
    # reading the table see absent fields as absent.
    if meta.customer_id is not None:
        item["customer_id"] = {"S": meta.customer_id}
    if meta.last_turn_id is not None:
        item["last_turn_id"] = {"S": meta.last_turn_id}
    if meta.deleted:
        item["deleted"] = {"BOOL": True}
    if meta.late_turns:
        item["late_turns"] = {"BOOL": True}
    summary = meta.summary
    if summary is not None:
        item["summary_text"] = {"S": summary.text}
        item["summary_through_turn_id"] = {"S": summary.through_turn_id}
        item["summary_created_at_ms"] = _n(summary.created_at_ms)
        item["summary_expires_at"] = _n(summary.expires_at)
    return item


def turn_to_item(session_id: str, turn: TurnRecord) -> Item:
    """Encode a TURN record of `session_id`."""
    item: Item = {
        "PK": {"S": pk(session_id)},
        "SK": {"S": turn_sk(turn.turn_id)},
        "expires_at": _n(turn.expires_at),
        "role": {"S": turn.role},
        # DynamoDB accepts empty strings in non-key attributes, so empty content is stored as is.
        "content": {"S": turn.content},
        "attributes": {"S": _json(turn.attributes)},
        "created_at_ms": _n(turn.created_at_ms),
    }
    if turn.intent is not None:
        item["intent"] = {"S": turn.intent}
    if turn.version:
        item["version"] = _n(turn.version)
    return item


def summary_to_item(session_id: str, summary: SummaryRecord) -> Item:
    """Encode a SUMMARY record of `session_id`."""
    return {
        "PK": {"S": pk(session_id)},
        "SK": {"S": summary_sk(summary.through_turn_id)},
        "expires_at": _n(summary.expires_at),
        "text": {"S": summary.text},
        "created_at_ms": _n(summary.created_at_ms),
    }


# ---------------------------------------------------------------- decoding
# Replies are decoded straight into these Structs (the lean path decodes the HTTP body
# into them, the aioboto3 path converts botocore's dicts into them): one decoder for both,
# typed, with no generic dict walking. Unknown attributes are ignored.


class S(msgspec.Struct, frozen=True):
    """A string attribute value: {"S": "..."}."""

    S: str


class N(msgspec.Struct, frozen=True):
    """A number attribute value: {"N": "123"} (DynamoDB sends numbers as strings)."""

    N: str


class BOOL(msgspec.Struct, frozen=True):
    """A boolean attribute value: {"BOOL": true}."""

    BOOL: bool


class MetaItem(msgspec.Struct, frozen=True):
    """A META item as DynamoDB returns it."""

    PK: S
    expires_at: N
    created_at_ms: N
    updated_at_ms: N
    turn_count: N
    floor_turn_id: S
    page_context: S
    attributes: S
    version: N
    customer_id: S | None = None
    last_turn_id: S | None = None
    summary_text: S | None = None
    summary_through_turn_id: S | None = None
    summary_created_at_ms: N | None = None
    summary_expires_at: N | None = None
    deleted: BOOL | None = None
    late_turns: BOOL | None = None


class TurnItem(msgspec.Struct, frozen=True):
    """A TURN item as DynamoDB returns it."""

    PK: S
    SK: S
    expires_at: N
    role: S
    content: S
    attributes: S
    created_at_ms: N
    intent: S | None = None
    version: N | None = None


class SummaryItem(msgspec.Struct, frozen=True):
    """A SUMMARY item as DynamoDB returns it."""

    PK: S
    SK: S
    expires_at: N
    text: S
    created_at_ms: N


class KeyItem(msgspec.Struct, frozen=True):
    """An item projected to its primary key."""

    PK: S
    SK: S


class GetMetaResponse(msgspec.Struct, frozen=True):
    """GetItem on META."""

    Item: MetaItem | None = None


class QueryTurnsResponse(msgspec.Struct, frozen=True):
    """Query over TURN items."""

    Items: list[TurnItem] = []
    LastEvaluatedKey: KeyItem | None = None


class QueryKeysResponse(msgspec.Struct, frozen=True):
    """Query projected to keys."""

    Items: list[KeyItem] = []
    LastEvaluatedKey: KeyItem | None = None


class WriteResponse(msgspec.Struct, frozen=True):
    """PutItem, DeleteItem, TransactWriteItems: nothing memsdk reads."""


class BatchWriteResponse(msgspec.Struct, frozen=True):
    """BatchWriteItem: the requests DynamoDB did not process (throttled)."""

    UnprocessedItems: dict[str, list[dict[str, Any]]] = {}


def key_of(item: KeyItem) -> Item:
    """A decoded key back in request form (ExclusiveStartKey, DeleteRequest)."""
    return {"PK": {"S": item.PK.S}, "SK": {"S": item.SK.S}}


def wire_to_meta(item: MetaItem) -> MetaRecord:
    """Decode a META item (session_id comes from PK)."""
    sid = _session_id(item.PK)
    summary: SummaryRecord | None = None
    if item.summary_through_turn_id is not None:
        if (
            item.summary_text is None
            or item.summary_created_at_ms is None
            or item.summary_expires_at is None
        ):
            raise _store_error("META", "summary attributes are incomplete", sid)
        summary = SummaryRecord(
            text=item.summary_text.S,
            through_turn_id=item.summary_through_turn_id.S,
            created_at_ms=_int(item.summary_created_at_ms, "summary_created_at_ms", sid),
            expires_at=_int(item.summary_expires_at, "summary_expires_at", sid),
        )
    return MetaRecord(
        session_id=sid,
        customer_id=None if item.customer_id is None else item.customer_id.S,
        created_at_ms=_int(item.created_at_ms, "created_at_ms", sid),
        updated_at_ms=_int(item.updated_at_ms, "updated_at_ms", sid),
        turn_count=_int(item.turn_count, "turn_count", sid),
        last_turn_id=None if item.last_turn_id is None else item.last_turn_id.S,
        floor_turn_id=item.floor_turn_id.S,
        page_context=_json_dict(item.page_context, "page_context", sid),
        attributes=_json_dict(item.attributes, "attributes", sid),
        expires_at=_int(item.expires_at, "expires_at", sid),
        version=_int(item.version, "version", sid),
        summary=summary,
        deleted=item.deleted is not None and item.deleted.BOOL,
        late_turns=item.late_turns is not None and item.late_turns.BOOL,
    )


def wire_to_turn(item: TurnItem) -> TurnRecord:
    """Decode a TURN item (turn_id comes from SK)."""
    sid = _session_id(item.PK)
    sk = item.SK.S
    if not sk.startswith(TURN_PREFIX):
        raise _store_error("TURN", f"sort key is not {TURN_PREFIX}<turn_id>", sid)
    return TurnRecord(
        turn_id=sk[len(TURN_PREFIX) :],
        role=item.role.S,
        content=item.content.S,
        intent=None if item.intent is None else item.intent.S,
        attributes=_json_dict(item.attributes, "attributes", sid),
        created_at_ms=_int(item.created_at_ms, "created_at_ms", sid),
        expires_at=_int(item.expires_at, "expires_at", sid),
        version=0 if item.version is None else _int(item.version, "version", sid),
    )


def wire_to_summary(item: SummaryItem) -> SummaryRecord:
    """Decode a SUMMARY item (through_turn_id comes from SK)."""
    sid = _session_id(item.PK)
    sk = item.SK.S
    if not sk.startswith(SUMMARY_PREFIX):
        raise _store_error("SUMMARY", f"sort key is not {SUMMARY_PREFIX}<turn_id>", sid)
    return SummaryRecord(
        text=item.text.S,
        through_turn_id=sk[len(SUMMARY_PREFIX) :],
        created_at_ms=_int(item.created_at_ms, "created_at_ms", sid),
        expires_at=_int(item.expires_at, "expires_at", sid),
    )


def convert(value: object, wire_type: type[T], kind: str, session_id: str | None = None) -> T:
    """Convert botocore's dicts (or any builtins) into a wire Struct; StoreError if malformed."""
    try:
        return msgspec.convert(value, wire_type)
    except msgspec.ValidationError as exc:
        # msgspec names the path of the bad attribute, never its value.
        raise _store_error(kind, str(exc), session_id) from None


def item_to_meta(item: Item) -> MetaRecord:
    """Decode a META item given as a dict."""
    return wire_to_meta(convert(item, MetaItem, "META"))


def item_to_turn(item: Item) -> TurnRecord:
    """Decode a TURN item given as a dict."""
    return wire_to_turn(convert(item, TurnItem, "TURN"))


def item_to_summary(item: Item) -> SummaryRecord:
    """Decode a SUMMARY item given as a dict."""
    return wire_to_summary(convert(item, SummaryItem, "SUMMARY"))


def _store_error(kind: str, detail: str, session_id: str | None) -> StoreError:
    # Names the attribute at fault, never its value: items hold user content.
    return StoreError(
        f"malformed {kind} item in the DynamoDB table ({detail}): was it written by "
        "another tool or an incompatible memsdk version?",
        session_id=session_id,
    )


def _n(value: int) -> AttributeValue:
    return {"N": str(value)}


def _json(value: dict[str, Any]) -> str:
    return _json_encoder.encode(value).decode("utf-8")


def _session_id(pk_value: S) -> str:
    value = pk_value.S
    if not value.startswith(PK_PREFIX):
        raise _store_error("session", f"partition key is not {PK_PREFIX}<session_id>", None)
    return value[len(PK_PREFIX) :]


def _int(value: N, name: str, session_id: str) -> int:
    try:
        return int(value.N)
    except ValueError:
        raise _store_error("item", f"attribute {name!r} is not an integer", session_id) from None


def _json_dict(value: S, name: str, session_id: str) -> dict[str, Any]:
    try:
        decoded = _dict_decoder.decode(value.S)
    except (msgspec.DecodeError, RecursionError):  # deep nesting is RecursionError, not ours
        raise _store_error("item", f"attribute {name!r} is not a JSON object", session_id) from None
    if not too_few_brackets_to_nest(value.S) and not within_depth(decoded):
        raise _store_error(
            "item", f"attribute {name!r} nests deeper than memsdk writes", session_id
        )
    return decoded
