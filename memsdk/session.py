"""The session rules, free of I/O: validation, sizes, TTL, incarnations, ownership, windows.

Every store obeys these rules because none of them lives in a store. The client reads
the current META, asks this module to plan the next write, and hands the plan to the
store as one conditional, atomic commit (see memsdk.store.base.SessionWrite).

Incarnations: a session id reused after expiry must start empty, but DynamoDB removes
expired items lazily. A new incarnation therefore gets a `floor_turn_id` above every id of
the old one (see `incarnation_floor`); only turns and summaries above the floor are
visible. Turns carry a long physical TTL (`ttl_seconds + turn_retention_seconds` after their
write) and are never rewritten to slide it: their visibility follows META, whose
`expires_at` is the one sliding TTL of the session.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypedDict

import msgspec

from memsdk.errors import (
    InvalidInputError,
    InvalidSessionIdError,
    InvalidTurnError,
    SessionOwnershipError,
    TurnTooLargeError,
)
from memsdk.ids import TurnIdGenerator, is_turn_id
from memsdk.limits import (
    MAX_APPEND_BYTES,
    MAX_TURNS_PER_APPEND,
    MAX_WINDOW_EXTENSION_CHARS,
    MAX_WINDOW_EXTENSION_TURNS,
    META_FIXED_BYTES,
    META_ITEM_LIMIT,
    meta_item_bytes,
    turn_item_bytes,
)
from memsdk.models import Meta, Summary, Turn
from memsdk.readonly import freeze
from memsdk.records import MetaRecord, MetaStamp, SessionWrite, SummaryRecord, TurnRecord, stamp_of

__all__ = [
    "check_owner",
    "check_owner_id",
    "copy_json",
    "detach_turns",
    "incarnation_floor",
    "live_meta",
    "new_turn_records",
    "plan_append",
    "plan_buffered_append",
    "plan_delete",
    "plan_summary",
    "plan_update_meta",
    "select_window",
    "to_public_meta",
    "to_public_turn",
    "validate_customer_id",
    "validate_session_id",
    "validate_text",
    "validate_turns",
]

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
ROLES = frozenset({"user", "assistant", "system", "tool"})
# Bounds of the margin in incarnation_floor (milliseconds).
_FLOOR_MARGIN_MIN_MS = 2_000
_FLOOR_MARGIN_MAX_MS = 15 * 60_000
_JSON = msgspec.json.Encoder()
_JSON_DICT = msgspec.json.Decoder(dict[str, Any])


def validate_session_id(session_id: object) -> str:
    """Return `session_id` if it is 1-128 chars of [A-Za-z0-9._:-]; else InvalidSessionIdError."""
    if isinstance(session_id, str) and SESSION_ID_PATTERN.fullmatch(session_id):
        return session_id
    # The bad id is not echoed: it may be huge, binary, or someone's probe.
    kind = type(session_id).__name__
    length = len(session_id) if isinstance(session_id, str) else None
    raise InvalidSessionIdError(
        f"session_id must be 1-128 characters of [A-Za-z0-9._:-] (got {kind}"
        + (f" of length {length})" if length is not None else ")")
        + "; fix the caller, nothing was read or written"
    )


def validate_customer_id(customer_id: object, session_id: str) -> str | None:
    """Return `customer_id` if it is None or a non-empty str of at most 256 chars."""
    if customer_id is None:
        return None
    if isinstance(customer_id, str) and 0 < len(customer_id) <= 256:
        return customer_id
    raise InvalidInputError(
        "customer_id must be None or a non-empty string of at most 256 characters",
        session_id=session_id,
    )


def validate_json(value: object, session_id: str, what: str) -> dict[str, Any]:
    """Check that `value` is a dict of JSON values that round-trip exactly; return it."""
    if not isinstance(value, dict):
        raise InvalidTurnError(
            f"{what} must be a dict, got {type(value).__name__}", session_id=session_id
        )
    _check_json(value, session_id, what, depth=0)
    return value


def _check_json(value: object, session_id: str, path: str, depth: int) -> None:
    # Anything that would not come back identical is refused rather than silently changed:
    # NaN becomes null, int keys become strings, tuples become lists.
    # Messages reach logs and spans: a dict entry is named by its position ("[entry 2]",
    # insertion order), never by its key, which is the caller's data.
    if depth > 32:
        field = path.split("[entry ", 1)[0]  # the field memsdk named, not 33 positions
        raise InvalidTurnError(f"{field} nests deeper than 32 levels", session_id=session_id)
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidTurnError(f"{path} holds a non-finite float", session_id=session_id)
        return
    if isinstance(value, str):
        _check_text(value, session_id, path)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, session_id, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for i, (key, item) in enumerate(value.items()):
            entry = f"{path}[entry {i}]"
            if not isinstance(key, str):
                raise InvalidTurnError(f"{entry} has a non-string key", session_id=session_id)
            _check_text(key, session_id, f"the key of {entry}")
            _check_json(item, session_id, entry, depth + 1)
        return
    raise InvalidTurnError(
        f"{path} holds a {type(value).__name__}: only dict, list, str, int, float, bool, None",
        session_id=session_id,
    )


def _check_text(text: str, session_id: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTurnError(
            f"{path} is not valid Unicode text (lone surrogate)", session_id=session_id
        ) from exc


def copy_json(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a validated JSON dict: what memsdk keeps is never the caller's object,
    which the caller may change after the call."""
    copied: dict[str, Any] = _JSON_DICT.decode(_JSON.encode(value))
    return copied


def detach_turns(turns: Sequence[Turn]) -> list[Turn]:
    """Validated turns with their attributes copied (see copy_json)."""
    return [
        t if not t.attributes else msgspec.structs.replace(t, attributes=copy_json(t.attributes))
        for t in turns
    ]


def validate_text(text: object, session_id: str, what: str) -> str:
    """Return `text` if it is a str of valid Unicode (no lone surrogates); else InvalidTurnError."""
    if not isinstance(text, str):
        raise InvalidTurnError(f"{what} must be str", session_id=session_id)
    _check_text(text, session_id, what)
    return text


def validate_turns(session_id: str, turns: object, max_turn_bytes: int) -> list[Turn]:
    """Check roles, text, attributes and sizes of an append before any I/O; return the list."""
    if isinstance(turns, Turn) or not isinstance(turns, Sequence) or isinstance(turns, str):
        raise InvalidTurnError("turns must be a list of Turn", session_id=session_id)
    checked = list(turns)
    if not checked:
        raise InvalidTurnError("append needs at least one Turn", session_id=session_id)
    if len(checked) > MAX_TURNS_PER_APPEND:
        raise InvalidTurnError(
            f"{len(checked)} turns in one append; at most {MAX_TURNS_PER_APPEND}: split the call",
            session_id=session_id,
        )
    total = 0
    for i, turn in enumerate(checked):
        where = f"turns[{i}]"
        if not isinstance(turn, Turn):
            raise InvalidTurnError(f"{where} is not a Turn", session_id=session_id)
        if turn.role not in ROLES:
            raise InvalidTurnError(
                f"{where}.role must be one of user, assistant, system, tool", session_id=session_id
            )
        if not isinstance(turn.content, str):
            raise InvalidTurnError(f"{where}.content must be str", session_id=session_id)
        _check_text(turn.content, session_id, f"{where}.content")
        if turn.intent is not None:
            if not isinstance(turn.intent, str):
                raise InvalidTurnError(f"{where}.intent must be str or None", session_id=session_id)
            _check_text(turn.intent, session_id, f"{where}.intent")
        validate_json(turn.attributes, session_id, f"{where}.attributes")
        size = turn_item_bytes(session_id, turn, _JSON.encode(turn.attributes))
        if size > max_turn_bytes:
            raise TurnTooLargeError(
                f"{where} encodes to {size} bytes, over max_turn_bytes={max_turn_bytes}: "
                "store large tool output elsewhere and keep a reference in attributes",
                session_id=session_id,
            )
        total += size
    if total > MAX_APPEND_BYTES:
        raise TurnTooLargeError(
            f"append encodes to {total} bytes, over {MAX_APPEND_BYTES}: split it",
            session_id=session_id,
        )
    return checked


def validate_summary_size(text: str, session_id: str, max_bytes: int) -> None:
    """Raise TurnTooLargeError if a summary of `text` cannot be stored (checked before I/O).

    The summary is stored twice, as its own item and in META, so it must fit both the
    per-item cap and what META can hold beside its own fields.
    """
    size = len(text.encode("utf-8"))
    limit = min(max_bytes, META_ITEM_LIMIT - META_FIXED_BYTES)
    if size > limit:
        raise TurnTooLargeError(
            f"summary text encodes to {size} bytes, over the {limit} a summary may hold "
            "(max_turn_bytes, and room in META): summarize more tightly; nothing was written",
            session_id=session_id,
        )


def _check_meta_size(meta: MetaRecord) -> None:
    size = meta_item_bytes(meta)
    if size > META_ITEM_LIMIT:
        raise TurnTooLargeError(
            f"META would encode to {size} bytes, over {META_ITEM_LIMIT}: "
            "keep page_context, attributes and the summary smaller",
            session_id=meta.session_id,
        )


def live_meta(meta: MetaRecord | None, now_s: int) -> MetaRecord | None:
    """Return `meta` if the session is live at `now_s`, else None (expired or deleted reads
    as absent)."""
    if meta is None or meta.deleted or meta.expires_at <= now_s:
        return None
    return meta


def check_owner(meta: MetaRecord | Meta, customer_id: str | None) -> None:
    """Raise SessionOwnershipError if the session belongs to another customer."""
    check_owner_id(meta.session_id, meta.customer_id, customer_id)


def check_owner_id(session_id: str, owner: str | None, customer_id: str | None) -> None:
    """Raise SessionOwnershipError if `owner` is set and is not `customer_id` (when given)."""
    if customer_id is not None and owner is not None and owner != customer_id:
        raise SessionOwnershipError(
            "session belongs to another customer_id: no data was read or written; "
            "check the session id the caller routed",
            session_id=session_id,
        )


def high_water(meta: MetaRecord) -> str:
    """The newest turn id the session has issued (or its floor when it has no turns)."""
    if meta.last_turn_id is not None and meta.last_turn_id > meta.floor_turn_id:
        return meta.last_turn_id
    return meta.floor_turn_id


def _fresh_version(now_ms: int, current: MetaRecord | None) -> int:
    # A new incarnation must never reuse a version of an old one (a stale writer's
    # compare-and-set would then pass), so it starts from the clock plus randomness.
    fresh = (now_ms << 20) | secrets.randbits(20)
    return max(fresh, current.version + 1) if current is not None else fresh


def incarnation_floor(current: MetaRecord | None, *, now_ms: int, ttl_seconds: int) -> str:
    """The floor of a new incarnation: above every old turn, below every turn still buffered.

    With the old META at hand its high-water mark covers every turn it ever committed. With
    no META at all (deleted by TTL while its turns, retained longer, may remain) the floor is
    a time: a turn of the old incarnation is older than the expiry minus the TTL. The margin
    absorbs second-rounding of expiry and writers whose clocks run ahead; turns that another
    process still holds in its write-ahead log sit above the floor unless they are older
    than (TTL - margin), i.e. would have expired with the session anyway.
    """
    if current is not None:
        return high_water(current)
    ttl_ms = ttl_seconds * 1000
    margin_ms = max(_FLOOR_MARGIN_MIN_MS, min(ttl_ms // 2, _FLOOR_MARGIN_MAX_MS))
    return f"{max(0, now_ms - ttl_ms + margin_ms):013d}{0:012x}"


def _new_meta(
    current: MetaRecord | None,
    *,
    session_id: str,
    customer_id: str | None,
    now_ms: int,
    ttl_seconds: int,
) -> MetaRecord:
    floor = incarnation_floor(current, now_ms=now_ms, ttl_seconds=ttl_seconds)
    return MetaRecord(
        session_id=session_id,
        customer_id=customer_id,
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
        turn_count=0,
        last_turn_id=None,
        floor_turn_id=floor,
        page_context={},
        attributes={},
        expires_at=now_ms // 1000 + ttl_seconds,
        version=_fresh_version(now_ms, current),
    )


def _base_meta(
    current: MetaRecord | None,
    *,
    session_id: str,
    customer_id: str | None,
    now_ms: int,
    ttl_seconds: int,
) -> tuple[MetaRecord, _Expectation]:
    """The META a write starts from (live one or a new incarnation) and what it expects of
    the stored META (see SessionWrite)."""
    live = live_meta(current, now_ms // 1000)
    if live is None:
        meta = _new_meta(
            current,
            session_id=session_id,
            customer_id=customer_id,
            now_ms=now_ms,
            ttl_seconds=ttl_seconds,
        )
        return meta, _expecting(current)
    check_owner(live, customer_id)
    meta = msgspec.structs.replace(
        live,
        customer_id=live.customer_id if live.customer_id is not None else customer_id,
        updated_at_ms=now_ms,
        expires_at=now_ms // 1000 + ttl_seconds,
        version=live.version + 1,
    )
    return meta, _expecting(live)


class _Expectation(TypedDict):
    expected_version: int | None
    expected_stamp: MetaStamp | None


def _expecting(base: MetaRecord | None) -> _Expectation:
    """SessionWrite's condition for a write planned on `base` (None: believed absent)."""
    if base is None:
        return {"expected_version": None, "expected_stamp": None}
    return {"expected_version": base.version, "expected_stamp": stamp_of(base)}


def new_turn_records(
    turns: Sequence[Turn],
    turn_ids: Sequence[str],
    *,
    now_ms: int,
    ttl_seconds: int,
    retention_seconds: int,
) -> list[TurnRecord]:
    """The TURN items for validated turns: fixed once, so that a replay writes the same item."""
    physical_expiry = now_ms // 1000 + ttl_seconds + retention_seconds
    return [
        TurnRecord(
            turn_id=turn_id,
            role=turn.role,
            content=turn.content,
            intent=turn.intent,
            attributes=turn.attributes,
            created_at_ms=now_ms,
            expires_at=physical_expiry,
        )
        for turn_id, turn in zip(turn_ids, turns, strict=True)
    ]


def plan_append(
    current: MetaRecord | None,
    *,
    session_id: str,
    turns: Sequence[Turn],
    customer_id: str | None,
    now_ms: int,
    ttl_seconds: int,
    retention_seconds: int,
    ids: TurnIdGenerator,
) -> SessionWrite:
    """Plan an append on top of `current` (None = believed absent): new ids, META, TURN items."""
    meta, expect = _base_meta(
        current,
        session_id=session_id,
        customer_id=customer_id,
        now_ms=now_ms,
        ttl_seconds=ttl_seconds,
    )
    turn_ids = ids.next_ids(len(turns), after=high_water(meta))
    records = new_turn_records(
        turns,
        turn_ids,
        now_ms=now_ms,
        ttl_seconds=ttl_seconds,
        retention_seconds=retention_seconds,
    )
    meta = msgspec.structs.replace(
        meta,
        turn_count=meta.turn_count + len(records),
        last_turn_id=turn_ids[-1],
        late_turns=False,  # fresh ids sort after the high-water mark
    )
    _check_meta_size(meta)
    written = _committed(records, meta)
    return SessionWrite(meta=meta, now_s=now_ms // 1000, turns=written, summary=None, **expect)


def plan_buffered_append(
    current: MetaRecord | None,
    *,
    session_id: str,
    appends: Sequence[Sequence[TurnRecord]],
    customer_id: str | None,
    now_ms: int,
    ttl_seconds: int,
) -> tuple[SessionWrite | None, list[int]]:
    """Plan the store write of appends whose turn ids were fixed when the WAL acknowledged
    them (one sequence of turns per append, in log order).

    Returns the write (None when nothing is left to write) and the indexes in `appends` of
    the appends set aside because they reach at or below the live incarnation's floor: the
    session was deleted (or expired and started again) by a writer that had not seen them,
    so they are ordered before that delete. An append is set aside whole, never cut in two:
    ids fixed within one millisecond can interleave with another writer's, so one append
    may straddle the floor. Raises SessionOwnershipError when the session now belongs to
    another customer.

    The write's META says `late_turns` when every kept turn sorts below the `last_turn_id`
    it found: readers then know that comparing newest ids cannot show this commit.
    """
    meta, expect = _base_meta(
        current,
        session_id=session_id,
        customer_id=customer_id,
        now_ms=now_ms,
        ttl_seconds=ttl_seconds,
    )
    keep: list[TurnRecord] = []
    set_aside: list[int] = []
    for index, turns in enumerate(appends):
        if any(t.turn_id <= meta.floor_turn_id for t in turns):
            set_aside.append(index)
        else:
            keep.extend(turns)
    if not keep:
        return None, set_aside
    newest = max(t.turn_id for t in keep)
    found = meta.last_turn_id or ""
    meta = msgspec.structs.replace(
        meta,
        turn_count=meta.turn_count + len(keep),
        last_turn_id=max(found, newest),
        late_turns=newest < found,
    )
    _check_meta_size(meta)
    written = _committed(keep, meta)
    write = SessionWrite(meta=meta, now_s=now_ms // 1000, turns=written, summary=None, **expect)
    return write, set_aside


def _committed(turns: Sequence[TurnRecord], meta: MetaRecord) -> list[TurnRecord]:
    """The turns as the commit of `meta` writes them: stamped with its version."""
    return [msgspec.structs.replace(t, version=meta.version) for t in turns]


def plan_update_meta(
    current: MetaRecord | None,
    *,
    session_id: str,
    page_context: dict[str, Any] | None,
    attributes: dict[str, Any] | None,
    customer_id: str | None,
    now_ms: int,
    ttl_seconds: int,
) -> SessionWrite:
    """Plan an update_meta: each given field replaced whole; creates the session if absent."""
    meta, expect = _base_meta(
        current,
        session_id=session_id,
        customer_id=customer_id,
        now_ms=now_ms,
        ttl_seconds=ttl_seconds,
    )
    if page_context is not None:
        meta = msgspec.structs.replace(meta, page_context=page_context)
    if attributes is not None:
        meta = msgspec.structs.replace(meta, attributes=attributes)
    _check_meta_size(meta)
    return SessionWrite(meta=meta, now_s=now_ms // 1000, **expect)


def plan_summary(
    current: MetaRecord,
    *,
    text: str,
    through_turn_id: str,
    customer_id: str | None,
    now_ms: int,
    ttl_seconds: int,
    retention_seconds: int,
    max_bytes: int,
) -> SessionWrite:
    """Plan a put_summary on a live session; META keeps the summary with the greatest through id."""
    check_owner(current, customer_id)
    sid = current.session_id
    if not (current.floor_turn_id < through_turn_id and through_turn_id <= high_water(current)):
        raise InvalidTurnError(
            "through_turn_id is not a turn of this session (use an id from an AppendReceipt "
            "or a loaded Context)",
            session_id=sid,
        )
    validate_summary_size(text, sid, max_bytes)
    summary = SummaryRecord(
        text=text,
        through_turn_id=through_turn_id,
        created_at_ms=now_ms,
        expires_at=now_ms // 1000 + ttl_seconds + retention_seconds,
    )
    newest = current.summary
    keep_new = newest is None or through_turn_id >= newest.through_turn_id
    meta = msgspec.structs.replace(
        current,
        updated_at_ms=now_ms,
        expires_at=now_ms // 1000 + ttl_seconds,
        version=current.version + 1,
        summary=summary if keep_new else newest,
    )
    _check_meta_size(meta)
    return SessionWrite(meta=meta, now_s=now_ms // 1000, summary=summary, **_expecting(current))


def plan_delete(current: MetaRecord, *, now_ms: int, retention_seconds: int) -> SessionWrite:
    """Plan the tombstone that makes a session invisible at once, before its items are purged.

    The tombstone is kept for `retention_seconds` (the session's TTL plus the turns'
    retention: as long as any of its turns could still be written late, by a WAL replay
    whose confirmation was lost). A write that finds it starts a new incarnation above its
    high-water mark, so those turns are dropped instead of brought back.
    """
    tombstone = msgspec.structs.replace(
        current,
        expires_at=now_ms // 1000 + retention_seconds,
        updated_at_ms=now_ms,
        version=current.version + 1,
        last_turn_id=high_water(current),
        # A tombstone keeps no user data: it outlives the session by weeks.
        customer_id=None,
        summary=None,
        page_context={},
        attributes={},
        deleted=True,
    )
    return SessionWrite(meta=tombstone, now_s=now_ms // 1000, **_expecting(current))


def visible_turns(meta: MetaRecord, page: Iterable[TurnRecord], now_s: int) -> list[TurnRecord]:
    """Turns of `page` that belong to META's incarnation, are covered by it (committed at or
    before its version: a commit that landed after META was read is not in its count, even
    when its ids sort below the newest), and are unexpired."""
    last = meta.last_turn_id or ""
    return [
        t
        for t in page
        if meta.floor_turn_id < t.turn_id
        and t.turn_id <= last
        and t.version <= meta.version
        and t.expires_at > now_s
    ]


class _HasRole(Protocol):
    @property
    def role(self) -> str: ...


def select_window(newest_first: Sequence[_HasRole], last_n: int, exhausted: bool) -> int | None:
    """How many of the newest turns form the window, or None if an older page is needed.

    Guarantee 9: a window never begins with a tool turn whose caller is outside it; its
    start moves back to the turn that called the tool. When no such turn exists (the
    session itself begins with tool turns), the window starts at the session's first
    visible turn: no acknowledged turn is ever dropped from view to keep the rule.
    `exhausted`: `newest_first` holds every visible turn of the session.

    The move back is bounded: at most MAX_WINDOW_EXTENSION_TURNS turns and about
    MAX_WINDOW_EXTENSION_CHARS characters of content beyond `last_n`, so that a long run of
    tool turns (a misbehaving tool loop, or a hostile caller) cannot make every read walk
    the whole session. A window cut at the bound starts with a tool turn whose call lies
    further back (the one exception to guarantee 9, see docs/guarantees.md).
    """
    count = min(last_n, len(newest_first))
    extension_chars = 0
    while count < len(newest_first) and newest_first[count - 1].role == "tool":
        if (
            count - last_n >= MAX_WINDOW_EXTENSION_TURNS
            or extension_chars >= MAX_WINDOW_EXTENSION_CHARS
        ):
            return count  # the bound: cut here
        extension_chars += _content_chars(newest_first[count])
        count += 1
    if not exhausted and (len(newest_first) < last_n or newest_first[count - 1].role == "tool"):
        return None
    return count


def _content_chars(turn: _HasRole) -> int:
    content = getattr(turn, "content", None)
    return len(content) if isinstance(content, str) else 0


def to_public_turn(record: TurnRecord) -> Turn:
    """The caller-facing Turn of a stored TURN item."""
    return Turn(
        role=record.role,  # type: ignore[arg-type]  # roles are validated on the way in
        content=record.content,
        intent=record.intent,
        attributes=freeze(record.attributes),  # shared with L1: read-only
        turn_id=record.turn_id,
        created_at_ms=record.created_at_ms,
    )


def to_public_meta(meta: MetaRecord) -> Meta:
    """The caller-facing Meta of a stored META item."""
    return Meta(
        session_id=meta.session_id,
        customer_id=meta.customer_id,
        created_at_ms=meta.created_at_ms,
        updated_at_ms=meta.updated_at_ms,
        turn_count=meta.turn_count,
        last_turn_id=meta.last_turn_id,
        page_context=freeze(meta.page_context),  # shared with L1: read-only
        expires_at=meta.expires_at,
        attributes=freeze(meta.attributes),
    )


def to_public_summary(meta: MetaRecord) -> Summary | None:
    """The newest summary of this incarnation, if any."""
    s = meta.summary
    if s is None or s.through_turn_id <= meta.floor_turn_id:
        return None
    return Summary(text=s.text, through_turn_id=s.through_turn_id, created_at_ms=s.created_at_ms)


def check_through_turn_id(through_turn_id: object, session_id: str) -> str:
    """Return `through_turn_id` if it is a well-formed turn id; else InvalidTurnError."""
    if is_turn_id(through_turn_id):
        return through_turn_id  # type: ignore[return-value]  # is_turn_id checked the type
    raise InvalidTurnError(
        "through_turn_id must be a turn id from an AppendReceipt or a loaded Context",
        session_id=session_id,
    )
