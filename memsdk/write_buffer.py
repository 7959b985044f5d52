"""Buffered appends: the WAL record of one append, its codec, and the read-your-writes overlay.

A buffered append is fixed when the WAL acknowledges it: its turn ids, created_at_ms and
physical expiry are in the record, so a replay after a crash writes byte-identical TURN
items and the store recognises them (see Store.commit, `existing_turn_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

import msgspec

from memsdk import session as rules
from memsdk.models import Context, Meta, Turn
from memsdk.store.base import TurnRecord

__all__ = [
    "BufferedAppend",
    "batch_fits",
    "buffered_append",
    "decode_append",
    "encode_append",
    "overlay",
]

# A buffered batch is one store transaction: META plus at most this many turns, and at
# most this many payload bytes (the JSON payload is never smaller than the items' size).
MAX_BATCH_TURNS = rules.MAX_TURNS_PER_APPEND
MAX_BATCH_BYTES = rules.MAX_APPEND_BYTES


class _AppendRecord(msgspec.Struct, frozen=True, kw_only=True, tag="append"):
    """The payload of one WAL record (JSON: readable by `memsdk wal status` and by people)."""

    session_id: str
    customer_id: str | None
    turns: list[TurnRecord]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_AppendRecord)


@dataclass(frozen=True, slots=True)
class BufferedAppend:
    """One acknowledged append waiting for the store.

    It keeps the encoded payload, not the decoded turns: a backlog built up during an outage
    then costs about as much memory as it costs disk (wal_max_bytes bounds both).
    """

    lsn: int
    session_id: str
    customer_id: str | None
    payload: bytes
    turn_count: int
    first_turn_id: str
    last_turn_id: str
    appended_at_ms: int

    @property
    def key(self) -> str:
        """The flusher's key: a session's records are applied in order."""
        return self.session_id

    @property
    def size(self) -> int:
        """Payload bytes (what the flusher batches by)."""
        return len(self.payload)

    def turns(self) -> list[TurnRecord]:
        """Decode the turns (done when flushing or overlaying, not kept)."""
        return _decoder.decode(self.payload).turns


def buffered_append(
    lsn: int,
    session_id: str,
    customer_id: str | None,
    turns: Sequence[TurnRecord],
    payload: bytes,
    appended_at_ms: int,
) -> BufferedAppend:
    """The in-memory entry of an append whose payload the WAL acknowledged."""
    return BufferedAppend(
        lsn=lsn,
        session_id=session_id,
        customer_id=customer_id,
        payload=payload,
        turn_count=len(turns),
        first_turn_id=turns[0].turn_id,
        last_turn_id=turns[-1].turn_id,
        appended_at_ms=appended_at_ms,
    )


def encode_append(session_id: str, customer_id: str | None, turns: Sequence[TurnRecord]) -> bytes:
    """The WAL payload of an append."""
    record = _AppendRecord(session_id=session_id, customer_id=customer_id, turns=list(turns))
    return _encoder.encode(record)


def decode_append(lsn: int, payload: bytes, appended_at_ms: int) -> BufferedAppend:
    """Rebuild a BufferedAppend from its WAL payload; msgspec.DecodeError if it is not one."""
    record = _decoder.decode(payload)
    rules.validate_session_id(record.session_id)
    if not record.turns:
        raise msgspec.DecodeError("a WAL append record without turns")
    return buffered_append(
        lsn, record.session_id, record.customer_id, record.turns, payload, appended_at_ms
    )


def batch_fits(
    batch: Sequence[BufferedAppend], entry: BufferedAppend, max_turns: int = MAX_BATCH_TURNS
) -> bool:
    """Whether `entry` joins `batch` in one store transaction of at most `max_turns` turns.

    An append is never split: a batch always takes its first entry, whatever its size.
    """
    turns = sum(e.turn_count for e in batch) + entry.turn_count
    size = sum(e.size for e in batch) + entry.size
    return turns <= min(max_turns, MAX_BATCH_TURNS) and size <= MAX_BATCH_BYTES


def overlay(
    ctx: Context,
    before: Sequence[BufferedAppend],
    still_pending: Set[int],
    last_n: int,
    ttl_seconds: int,
) -> Context:
    """`ctx` with this process's pending turns merged in (read-your-writes).

    `before` is the session's pending entries taken *before* the read began, and
    `still_pending` the lsns still pending after it ended. An entry the flusher committed
    while the read was in flight is in `before`; whether the read saw it is decided per
    turn: a stored turn newer than the window's oldest (or any stored turn, when the window
    holds the whole session) is in the window. Older ones are outside the window either way
    and count toward `turn_count` only if still pending after the read.
    """
    shown = {t.turn_id for t in ctx.turns}
    oldest = ctx.turns[0].turn_id if ctx.turns else None
    whole_session = len(ctx.turns) < last_n
    extra: list[Turn] = []
    uncounted = 0
    for entry in before:
        for record in entry.turns():
            if record.turn_id in shown:
                continue
            if ctx.meta is None or whole_session or oldest is None or record.turn_id > oldest:
                extra.append(rules.to_public_turn(record))
            elif entry.lsn in still_pending:
                uncounted += 1
    if not extra and not uncounted:
        return ctx
    merged = sorted([*ctx.turns, *extra], key=_turn_id)
    newest_first = merged[::-1]
    count = rules.select_window(newest_first, last_n, True) or 0
    window = newest_first[:count][::-1]
    newest_ms = max((t.created_at_ms or 0 for t in extra), default=0)
    newest_id = _turn_id(merged[-1]) if merged else ""
    meta = ctx.meta
    if meta is None:
        owner = next((e.customer_id for e in before if e.customer_id is not None), None)
        meta = Meta(
            session_id=ctx.session_id,
            customer_id=owner,
            created_at_ms=min(t.created_at_ms or 0 for t in extra),
            updated_at_ms=newest_ms,
            turn_count=len(extra),
            last_turn_id=newest_id,
            page_context={},
            expires_at=newest_ms // 1000 + ttl_seconds,
            attributes={},
        )
    else:
        meta = msgspec.structs.replace(
            meta,
            turn_count=meta.turn_count + len(extra) + uncounted,
            last_turn_id=max(meta.last_turn_id or "", newest_id),
            updated_at_ms=max(meta.updated_at_ms, newest_ms),
            expires_at=max(meta.expires_at, newest_ms // 1000 + ttl_seconds),
        )
    return msgspec.structs.replace(ctx, meta=meta, turns=window, source=f"{ctx.source}+wal")


def _turn_id(turn: Turn) -> str:
    return turn.turn_id or ""
