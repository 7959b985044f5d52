"""Codec between the store records (memsdk.store.base) and DynamoDB items.

Items are in DynamoDB's low-level JSON shape ({"S": "..."}, {"N": "123"}), the form both
the aioboto3 client and a lean JSON-protocol client send and receive. Pure: no I/O, no boto.

Layout (single table, DESIGN.md section 2):

    META                 PK=SESSION#<sid>  SK=META
    TURN#<turn_id>       PK=SESSION#<sid>  SK=TURN#<turn_id>
    SUMMARY#<through>    PK=SESSION#<sid>  SK=SUMMARY#<through_turn_id>

`attributes` and `page_context` are stored as JSON text in a string attribute: any JSON
value (big integers, floats, empty maps, nested lists) then round-trips exactly, which
DynamoDB's native numbers (38 digits) and maps (no empty-key, set/number coercions) do not
guarantee, and the bytes we count against the item cap are the bytes we store.
"""

from __future__ import annotations

from typing import Any

import msgspec

from memsdk.errors import StoreError
from memsdk.store.base import MetaRecord, SummaryRecord, TurnRecord

__all__ = [
    "META_SK",
    "PK_PREFIX",
    "SUMMARY_PREFIX",
    "TURN_PREFIX",
    "AttributeValue",
    "Item",
    "item_to_meta",
    "item_to_summary",
    "item_to_turn",
    "key",
    "meta_to_item",
    "pk",
    "summary_sk",
    "summary_to_item",
    "turn_sk",
    "turn_to_item",
]

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]

PK_PREFIX = "SESSION#"
META_SK = "META"
TURN_PREFIX = "TURN#"
SUMMARY_PREFIX = "SUMMARY#"

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
    summary = meta.summary
    if summary is not None:
        item["summary_text"] = {"S": summary.text}
        item["summary_through_turn_id"] = {"S": summary.through_turn_id}
        item["summary_created_at_ms"] = _n(summary.created_at_ms)
        item["summary_expires_at"] = _n(summary.expires_at)
    return item


def item_to_meta(item: Item) -> MetaRecord:
    """Decode a META item (session_id comes from PK)."""
    session_id = _session_id(item)
    try:
        summary: SummaryRecord | None = None
        if "summary_through_turn_id" in item:
            summary = SummaryRecord(
                text=_s(item, "summary_text"),
                through_turn_id=_s(item, "summary_through_turn_id"),
                created_at_ms=_int(item, "summary_created_at_ms"),
                expires_at=_int(item, "summary_expires_at"),
            )
        return MetaRecord(
            session_id=session_id,
            customer_id=_opt_s(item, "customer_id"),
            created_at_ms=_int(item, "created_at_ms"),
            updated_at_ms=_int(item, "updated_at_ms"),
            turn_count=_int(item, "turn_count"),
            last_turn_id=_opt_s(item, "last_turn_id"),
            floor_turn_id=_s(item, "floor_turn_id"),
            page_context=_json_dict(item, "page_context"),
            attributes=_json_dict(item, "attributes"),
            expires_at=_int(item, "expires_at"),
            version=_int(item, "version"),
            summary=summary,
        )
    except _Malformed as exc:
        raise _store_error("META", str(exc), session_id) from None


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
    return item


def item_to_turn(item: Item) -> TurnRecord:
    """Decode a TURN item (turn_id comes from SK)."""
    session_id = _session_id(item)
    try:
        sk = _s(item, "SK")
        if not sk.startswith(TURN_PREFIX):
            raise _Malformed(f"sort key is not {TURN_PREFIX}<turn_id>")
        return TurnRecord(
            turn_id=sk[len(TURN_PREFIX) :],
            role=_s(item, "role"),
            content=_s(item, "content"),
            intent=_opt_s(item, "intent"),
            attributes=_json_dict(item, "attributes"),
            created_at_ms=_int(item, "created_at_ms"),
            expires_at=_int(item, "expires_at"),
        )
    except _Malformed as exc:
        raise _store_error("TURN", str(exc), session_id) from None


def summary_to_item(session_id: str, summary: SummaryRecord) -> Item:
    """Encode a SUMMARY record of `session_id`."""
    return {
        "PK": {"S": pk(session_id)},
        "SK": {"S": summary_sk(summary.through_turn_id)},
        "expires_at": _n(summary.expires_at),
        "text": {"S": summary.text},
        "created_at_ms": _n(summary.created_at_ms),
    }


def item_to_summary(item: Item) -> SummaryRecord:
    """Decode a SUMMARY item (through_turn_id comes from SK)."""
    session_id = _session_id(item)
    try:
        sk = _s(item, "SK")
        if not sk.startswith(SUMMARY_PREFIX):
            raise _Malformed(f"sort key is not {SUMMARY_PREFIX}<turn_id>")
        return SummaryRecord(
            text=_s(item, "text"),
            through_turn_id=sk[len(SUMMARY_PREFIX) :],
            created_at_ms=_int(item, "created_at_ms"),
            expires_at=_int(item, "expires_at"),
        )
    except _Malformed as exc:
        raise _store_error("SUMMARY", str(exc), session_id) from None


class _Malformed(Exception):
    """Internal: an attribute is missing or has the wrong type."""


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


def _session_id(item: Item) -> str:
    try:
        value = _s(item, "PK")
    except _Malformed as exc:
        raise _store_error("session", str(exc), None) from None
    if not value.startswith(PK_PREFIX):
        raise _store_error("session", f"partition key is not {PK_PREFIX}<session_id>", None)
    return value[len(PK_PREFIX) :]


def _s(item: Item, name: str) -> str:
    attr = item.get(name)
    value = attr.get("S") if isinstance(attr, dict) else None
    if not isinstance(value, str):
        raise _Malformed(f"attribute {name!r} is missing or not a string")
    return value


def _opt_s(item: Item, name: str) -> str | None:
    if name not in item:
        return None
    return _s(item, name)


def _int(item: Item, name: str) -> int:
    attr = item.get(name)
    value = attr.get("N") if isinstance(attr, dict) else None
    if not isinstance(value, str):
        raise _Malformed(f"attribute {name!r} is missing or not a number")
    try:
        return int(value)
    except ValueError:
        raise _Malformed(f"attribute {name!r} is not an integer") from None


def _json_dict(item: Item, name: str) -> dict[str, Any]:
    text = _s(item, name)
    try:
        return _dict_decoder.decode(text)
    except msgspec.DecodeError:
        raise _Malformed(f"attribute {name!r} is not a JSON object") from None
