"""The limits memsdk holds every write to, and the item-size rules behind them.

DynamoDB's limits (400 KB an item, 100 items and 4 MB a transaction, 25 requests a batch
write) are memsdk's limits on every store: a session written to SQLite must be one that
DynamoDB could hold too, so that a deployment can move between them and every store
refuses the same input, before any I/O. Sizes are upper bounds computed with AWS's item
size formula (attribute names plus values); they never under-count.
"""

from __future__ import annotations

import msgspec

from memsdk.models import Turn
from memsdk.records import META_SK, PK_PREFIX, TURN_PREFIX, MetaRecord, SummaryRecord

__all__ = [
    "BATCH_WRITE_MAX",
    "DYNAMODB_ITEM_LIMIT",
    "MAX_APPEND_BYTES",
    "MAX_TRANSACT_ITEMS",
    "MAX_TURNS_PER_APPEND",
    "MAX_WINDOW_EXTENSION_CHARS",
    "MAX_WINDOW_EXTENSION_TURNS",
    "META_FIXED_BYTES",
    "META_ITEM_LIMIT",
    "meta_item_bytes",
    "turn_item_bytes",
]

DYNAMODB_ITEM_LIMIT = 400 * 1024
MAX_TRANSACT_ITEMS = 100
BATCH_WRITE_MAX = 25
# A transaction holds at most 100 items and 4 MB; one slot and 400 KB go to META.
MAX_TURNS_PER_APPEND = MAX_TRANSACT_ITEMS - 1
MAX_APPEND_BYTES = 4 * 1024 * 1024 - DYNAMODB_ITEM_LIMIT
# META's own limit, 1 KB under the item limit: room for what the size formula cannot see.
META_ITEM_LIMIT = DYNAMODB_ITEM_LIMIT - 1024
# How far a window may move back past `last_n` to reach the call of its tool results
# (memsdk.session.select_window): a parallel tool call has tens of results, not hundreds.
MAX_WINDOW_EXTENSION_TURNS = 128
MAX_WINDOW_EXTENSION_CHARS = 2 * 1024 * 1024
_NUMBER_BYTES = 21  # DynamoDB's upper bound for one number; never under-count.
_TURN_ID_BYTES = 25
_JSON = msgspec.json.Encoder()


def turn_item_bytes(session_id: str, turn: Turn, attributes_json: bytes) -> int:
    """Upper bound of the DynamoDB item size of a TURN item (names + values, per AWS formula)."""
    size = 2 + len(PK_PREFIX) + len(session_id)
    size += 2 + len(TURN_PREFIX) + _TURN_ID_BYTES
    size += len("expires_at") + _NUMBER_BYTES
    size += len("created_at_ms") + _NUMBER_BYTES
    size += len("version") + _NUMBER_BYTES
    size += len("role") + len(turn.role)
    size += len("content") + len(turn.content.encode("utf-8"))
    if turn.intent is not None:
        size += len("intent") + len(turn.intent.encode("utf-8"))
    size += len("attributes") + len(attributes_json)
    return size


def meta_item_bytes(meta: MetaRecord) -> int:
    """Upper bound of the DynamoDB item size of a META item."""
    size = 2 + len(PK_PREFIX) + len(meta.session_id) + 2 + len(META_SK)
    size += sum(len(n) + _NUMBER_BYTES for n in ("expires_at", "created_at_ms", "updated_at_ms"))
    size += len("turn_count") + _NUMBER_BYTES + len("version") + _NUMBER_BYTES
    size += len("customer_id") + len((meta.customer_id or "").encode("utf-8"))
    size += len("last_turn_id") + len("floor_turn_id") + 2 * _TURN_ID_BYTES
    size += len("deleted") + len("late_turns") + 2  # two BOOLs, 1 byte each
    size += len("page_context") + len(_JSON.encode(meta.page_context))
    size += len("attributes") + len(_JSON.encode(meta.attributes))
    if meta.summary is not None:
        size += len("summary_text") + len(meta.summary.text.encode("utf-8"))
        size += len("summary_through_turn_id") + _TURN_ID_BYTES
        size += len("summary_created_at_ms") + len("summary_expires_at") + 2 * _NUMBER_BYTES
    return size


# META with the longest ids, empty page_context and attributes, and an empty summary: what a
# summary's text can never use (validate_summary_size).
META_FIXED_BYTES = meta_item_bytes(
    MetaRecord(
        session_id="s" * 128,
        customer_id="c" * 256 * 4,  # 256 characters of up to 4 UTF-8 bytes
        created_at_ms=0,
        updated_at_ms=0,
        turn_count=0,
        last_turn_id=None,
        floor_turn_id="0" * _TURN_ID_BYTES,
        page_context={},
        attributes={},
        expires_at=0,
        version=0,
        summary=SummaryRecord(text="", through_turn_id="0", created_at_ms=0, expires_at=0),
    )
)
