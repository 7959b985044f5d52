"""Buffered appends: the WAL record of one append, its codec, and the read-your-writes overlay.

A buffered append is fixed when the WAL acknowledges it: its turn ids, created_at_ms and
physical expiry are in the record, so a replay after a crash writes byte-identical TURN
items and the store recognises them (see Store.commit, `existing_turn_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from memsdk import session as rules
from memsdk.errors import MemsdkError
from memsdk.ids import is_turn_id
from memsdk.limits import MAX_APPEND_BYTES, MAX_TURNS_PER_APPEND
from memsdk.models import Context, Meta, Turn
from memsdk.records import TurnRecord

__all__ = [
    "BufferedAppend",
    "OverlayUncertain",
    "UndecodableRecord",
    "batch_fits",
    "buffered_append",
    "decode_append",
    "encode_append",
    "overlay",
]

# A buffered batch is one store transaction: META plus at most this many turns, and at
# most this many payload bytes (the JSON payload is never smaller than the items' size).
MAX_BATCH_TURNS = MAX_TURNS_PER_APPEND
MAX_BATCH_BYTES = MAX_APPEND_BYTES


class _AppendRecord(msgspec.Struct, frozen=True, kw_only=True, tag="append"):
    """The payload of one WAL record (JSON: readable by `memsdk wal status` and by people)."""

    session_id: str
    customer_id: str | None
    turns: list[TurnRecord]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_AppendRecord)


@dataclass(slots=True, eq=False)
class BufferedAppend:
    """One acknowledged append waiting for the store, and what became of it.

    It keeps the encoded payload, not the decoded turns: a backlog built up during an outage
    then costs about as much memory as it costs disk (wal_max_bytes bounds both).

    `owner_verified`: `customer_id` was checked against the session's owner (or the
    session was known absent) before the append was acknowledged. An unverified owner (the
    store was down, or the record was replayed from the log) never locks anyone out of the
    session: the flush checks it against the store.

    The flusher's progress, for reads that overlay this append (see `overlay`): `in_flight`
    while a commit carrying it is out; `maybe_landed` after a commit that may have landed
    failed; `committed_version`, the META version its commit produced (0: it was found
    already stored, at an unknown version); `set_aside` when it was kept out of the store
    (ordered before another process's delete, or refused for good).
    """

    lsn: int
    session_id: str
    customer_id: str | None
    payload: bytes
    turn_count: int
    first_turn_id: str
    last_turn_id: str
    appended_at_ms: int
    owner_verified: bool = False
    in_flight: bool = False
    maybe_landed: bool = False
    committed_version: int | None = None
    set_aside: bool = False

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
    *,
    owner_verified: bool = False,
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
        owner_verified=owner_verified,
    )


def encode_append(session_id: str, customer_id: str | None, turns: Sequence[TurnRecord]) -> bytes:
    """The WAL payload of an append."""
    record = _AppendRecord(session_id=session_id, customer_id=customer_id, turns=list(turns))
    return _encoder.encode(record)


class UndecodableRecord(Exception):
    """A WAL payload that is not an append this version of memsdk wrote."""


def decode_append(lsn: int, payload: bytes, appended_at_ms: int) -> BufferedAppend:
    """Rebuild a BufferedAppend from its WAL payload; UndecodableRecord if it is not one.

    The log is a file, so a trust boundary: a record is checked as strictly as the append
    that wrote it (ids, roles, owner, nesting), whatever bytes it holds, before it is
    replayed, shown or written anywhere.
    """
    try:
        record = _decoder.decode(payload)
        sid = rules.validate_session_id(record.session_id)
        rules.validate_customer_id(record.customer_id, sid)
        _check_turns(sid, record.turns)
    except (msgspec.DecodeError, RecursionError, MemsdkError) as exc:
        # RecursionError: msgspec's answer to deeply nested input, not a DecodeError.
        raise UndecodableRecord(type(exc).__name__) from None
    return buffered_append(lsn, sid, record.customer_id, record.turns, payload, appended_at_ms)


def _check_turns(session_id: str, turns: list[TurnRecord]) -> None:
    if not 1 <= len(turns) <= MAX_TURNS_PER_APPEND:
        raise msgspec.DecodeError("a WAL append record holds 1 to 99 turns")
    previous = ""
    for turn in turns:
        if not is_turn_id(turn.turn_id) or turn.turn_id <= previous:
            raise msgspec.DecodeError("a WAL append record's turn ids are malformed")
        previous = turn.turn_id
        if turn.role not in rules.ROLES:
            raise msgspec.DecodeError("a WAL append record holds an unknown role")
        rules.validate_text(turn.content, session_id, "content")
        rules.validate_json(turn.attributes, session_id, "attributes")


def batch_fits(
    batch: Sequence[BufferedAppend], entry: BufferedAppend, max_turns: int = MAX_BATCH_TURNS
) -> bool:
    """Whether `entry` joins `batch` in one store transaction of at most `max_turns` turns.

    An append is never split: a batch always takes its first entry, whatever its size. A
    batch holds one customer_id: the store checks ownership per commit, and one append
    refused for another owner must not take an owner's own appends down with it.
    """
    if entry.customer_id != batch[0].customer_id:
        return False
    turns = sum(e.turn_count for e in batch) + entry.turn_count
    size = sum(e.size for e in batch) + entry.size
    return turns <= min(max_turns, MAX_BATCH_TURNS) and size <= MAX_BATCH_BYTES


class OverlayUncertain(Exception):
    """Whether the read's META counts one of these appends cannot be told (see overlay)."""


def overlay(
    ctx: Context,
    before: Sequence[BufferedAppend],
    read_version: int | None,
    last_n: int,
    ttl_seconds: int,
    *,
    floor: str | None = None,
    uncertain_included: bool = False,
    now_ms: int | None = None,
) -> Context:
    """`ctx` with this process's buffered appends that its META does not include merged in
    (read-your-writes), each counted once in `turn_count`.

    `before`: the session's pending appends taken *before* the read began (an append the
    flusher commits while the read is in flight is then still in it); `read_version`: the
    version of the META the answer was built from (None: no META). The answer's turns and
    META agree (a read never serves a torn window), so an append the META includes shows
    at least one turn in the window, unless all of its turns sort below the window. For
    those, the flush's own record decides: committed at or below `read_version`, or
    followed by a later append of this process that the answer shows (a session's appends
    are flushed in log order). An append whose commit is out, or failed and may have
    landed, cannot be told: OverlayUncertain (the caller waits for the commit, or flags
    the answer degraded and passes `uncertain_included` to count such appends as included).
    Appends set aside by the flush are not shown: they never land; nor are appends with a
    turn at or below `floor` (the incarnation's floor, or the one the next incarnation
    will get), which the flush will set aside (ordered before a delete or expiry). An answer
    without META and without a floor (a degraded one) takes the floor a session with no
    META gets at `now_ms`: appends older than the TTL (a replay after a crash) would have
    expired with their session, and must not make up an expired META.
    """
    if floor is None and ctx.meta is None and now_ms is not None:
        floor = rules.incarnation_floor(None, now_ms=now_ms, ttl_seconds=ttl_seconds)
    shown = {t.turn_id for t in ctx.turns}
    oldest = ctx.turns[0].turn_id if ctx.turns else None
    # The answer holds every turn of the session (not a suffix of it): a pending turn that
    # sorts below its oldest belongs in the window too, ahead of any tool results there.
    whole_session = (
        ctx.meta is None
        or oldest is None
        or len(ctx.turns) < last_n
        or len(ctx.turns) >= ctx.meta.turn_count
    )
    decoded = []
    for entry in before:
        if entry.set_aside:
            continue
        records = entry.turns()
        if floor is not None and any(r.turn_id <= floor for r in records):
            continue  # the flush sets it aside: ordered before a delete or an expiry
        decoded.append((entry, records))
    # Newest first: once one of them is in the answer's META, every older one is too.
    included_after = False
    missing: list[list[TurnRecord]] = []
    for entry, records in reversed(decoded):
        if included_after or any(r.turn_id in shown for r in records):
            included_after = True
            continue
        version = entry.committed_version
        if version is not None:
            if read_version is not None and read_version >= version:
                included_after = True
                continue
        elif entry.in_flight or entry.maybe_landed:
            in_window = whole_session or any(r.turn_id > (oldest or "") for r in records)
            if not in_window:
                if uncertain_included:
                    continue
                raise OverlayUncertain
        missing.append(records)
    if not missing:
        return ctx
    extra = [
        rules.to_public_turn(record)
        for records in missing
        for record in records
        if whole_session or record.turn_id > (oldest or "")
    ]
    counted = sum(len(records) for records in missing)
    merged = sorted([*ctx.turns, *extra], key=_turn_id)
    newest_first = merged[::-1]
    count = rules.select_window(newest_first, last_n, True) or 0
    window = newest_first[:count][::-1]
    added = [record for records in missing for record in records]
    newest_ms = max(r.created_at_ms for r in added)
    newest_id = _turn_id(merged[-1]) if merged else max(r.turn_id for r in added)
    meta = ctx.meta
    if meta is None:
        owners = {e.customer_id for e in before if e.owner_verified and not e.set_aside}
        meta = Meta(
            session_id=ctx.session_id,
            customer_id=next(iter(owners)) if len(owners) == 1 else None,
            created_at_ms=min(r.created_at_ms for r in added),
            updated_at_ms=newest_ms,
            turn_count=counted,
            last_turn_id=newest_id,
            page_context={},
            expires_at=newest_ms // 1000 + ttl_seconds,
            attributes={},
        )
    else:
        meta = msgspec.structs.replace(
            meta,
            turn_count=meta.turn_count + counted,
            last_turn_id=max(meta.last_turn_id or "", newest_id),
            updated_at_ms=max(meta.updated_at_ms, newest_ms),
            expires_at=max(meta.expires_at, newest_ms // 1000 + ttl_seconds),
        )
    return msgspec.structs.replace(ctx, meta=meta, turns=window, source=f"{ctx.source}+wal")


def _turn_id(turn: Turn) -> str:
    return turn.turn_id or ""
