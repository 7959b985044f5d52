"""The ledger of what a simulation sent, and the pass that reads it all back from the store.

Every append is recorded with its outcome: acknowledged (its turn ids and a digest of each
turn), refused (it raised and cannot have landed) or ambiguous (it raised with
`maybe_applied`: absent, or present exactly once). The ledger keeps digests, never content.

The verification pass reads each session back and checks, per acknowledged turn: present,
exactly once (by turn id and by the reference simulate put in its attributes), in append
order, with the content it was sent with. Refused appends must be absent; ambiguous ones
absent or present once and whole. Any turn the ledger does not know is unexpected.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from memsdk.client import MemoryClient
from memsdk.errors import MemsdkError
from memsdk.models import Turn
from memsdk.simulate.workload import REF_KEY

__all__ = ["Ledger", "SentAppend", "SessionLedger", "Verification", "turn_digest", "verify"]

Outcome = Literal["acked", "refused", "ambiguous"]
_MAX_WINDOW = 10_000  # load_context's largest last_n
_MAX_EXAMPLES = 10
_READ_ATTEMPTS = 5


def turn_digest(turn: Turn) -> bytes:
    """8 bytes that change when role, content, intent or attributes do (key order aside)."""
    encoded = msgspec.json.encode(
        [turn.role, turn.content, turn.intent, turn.attributes], order="sorted"
    )
    return hashlib.blake2b(encoded, digest_size=8).digest()


def _ref(turn: Turn) -> str | None:
    ref = turn.attributes.get(REF_KEY)
    return ref if isinstance(ref, str) else None


@dataclass(slots=True)
class SentAppend:
    """One append_turns call as sent, and what became of it."""

    refs: tuple[str, ...]
    digests: tuple[bytes, ...]
    outcome: Outcome
    turn_ids: tuple[str, ...] = ()
    durable: bool = True


@dataclass(slots=True)
class SessionLedger:
    """Everything sent to one session, in order."""

    session_id: str
    customer_id: str
    appends: list[SentAppend] = field(default_factory=list)
    # The newest acknowledged turn id, and whether an ambiguous append came after it.
    last_acked: str | None = None
    unsettled: bool = False

    def turns_sent(self) -> int:
        """Turns of every append, whatever the outcome."""
        return sum(len(a.refs) for a in self.appends)


class Ledger:
    """What a simulation sent, per session; counts kept as it goes."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionLedger] = {}
        self.counts: Counter[str] = Counter()

    def session(self, session_id: str, customer_id: str) -> SessionLedger:
        """The ledger of a session (created on first use)."""
        entry = self.sessions.get(session_id)
        if entry is None:
            entry = self.sessions[session_id] = SessionLedger(session_id, customer_id)
        return entry

    def acked(
        self, entry: SessionLedger, turns: Sequence[Turn], turn_ids: Sequence[str], durable: bool
    ) -> None:
        """An append returned a receipt: its turns are acknowledged."""
        entry.appends.append(_sent(turns, "acked", tuple(turn_ids), durable))
        entry.last_acked = turn_ids[-1] if turn_ids else entry.last_acked
        entry.unsettled = False
        self.counts["acked_turns"] += len(turns)
        self.counts["acked_turns_durable" if durable else "acked_turns_wal"] += len(turns)

    def failed(self, entry: SessionLedger, turns: Sequence[Turn], *, maybe_applied: bool) -> None:
        """An append raised: not acknowledged; ambiguous if it may have reached the store."""
        outcome: Outcome = "ambiguous" if maybe_applied else "refused"
        entry.appends.append(_sent(turns, outcome, (), False))
        entry.unsettled = entry.unsettled or maybe_applied
        self.counts[f"{outcome}_turns"] += len(turns)
        self.counts[f"{outcome}_appends"] += 1


def _sent(
    turns: Sequence[Turn], outcome: Outcome, ids: tuple[str, ...], durable: bool
) -> SentAppend:
    refs = tuple(_ref(t) or "" for t in turns)
    return SentAppend(refs, tuple(turn_digest(t) for t in turns), outcome, ids, durable)


@dataclass
class Verification:
    """The verdict of the read-back pass; `problems` names sessions and turn ids, no content."""

    sessions: int = 0
    acknowledged: int = 0
    missing: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    changed: int = 0
    unexpected: int = 0
    refused: int = 0
    refused_landed: int = 0
    ambiguous: int = 0
    ambiguous_landed: int = 0
    ambiguous_absent: int = 0
    ambiguous_broken: int = 0  # partly present, or present more than once
    unreadable_sessions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        """Everything that breaks a guarantee; 0 when the store holds exactly what it should."""
        return (
            self.missing
            + self.duplicated
            + self.out_of_order
            + self.changed
            + self.unexpected
            + self.refused_landed
            + self.ambiguous_broken
            + self.unreadable_sessions
        )

    @property
    def ok(self) -> bool:
        """True when turns were acknowledged and every one of them is intact."""
        return self.violations == 0 and self.acknowledged > 0

    def note(self, problem: str) -> None:
        """Keep the first few problems as examples."""
        if len(self.problems) < _MAX_EXAMPLES:
            self.problems.append(problem)


async def verify(
    reader: MemoryClient,
    ledger: Ledger,
    *,
    concurrency: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> Verification:
    """Read every session of `ledger` back through `reader` and check it turn by turn."""
    result = Verification()
    sessions = [s for s in ledger.sessions.values() if s.appends]
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(entry: SessionLedger) -> None:
        nonlocal done
        async with gate:
            turns = await _read_all(reader, entry)
        if turns is None:
            result.unreadable_sessions += 1
            result.note(f"{entry.session_id}: could not be read (store unavailable)")
        else:
            _check_session(entry, turns, result)
        done += 1
        if on_progress is not None:
            on_progress(done, len(sessions))

    await asyncio.gather(*(one(s) for s in sessions))
    result.sessions = len(sessions)
    return result


async def _read_all(reader: MemoryClient, entry: SessionLedger) -> list[Turn] | None:
    """Every visible turn of the session, oldest first; None if the store never answered."""
    # Twice what was sent, so extra copies show up as duplicates, not as missing turns.
    window = min(_MAX_WINDOW, 2 * entry.turns_sent() + 16)
    for attempt in range(_READ_ATTEMPTS):
        try:
            ctx = await reader.load_context(entry.session_id, last_n=window)
        except MemsdkError:
            ctx = None
        if ctx is not None and not ctx.degraded:
            count = ctx.meta.turn_count if ctx.meta is not None else 0
            if len(ctx.turns) >= window and count > window and window < _MAX_WINDOW:
                window = min(_MAX_WINDOW, count + 16)
                continue
            return list(ctx.turns)
        await asyncio.sleep(0.2 * (attempt + 1))
    return None


def _check_session(entry: SessionLedger, turns: list[Turn], result: Verification) -> None:
    sid = entry.session_id
    by_id: dict[str, list[int]] = {}
    by_ref: dict[str, list[int]] = {}
    for pos, turn in enumerate(turns):
        by_id.setdefault(turn.turn_id or "", []).append(pos)
        by_ref.setdefault(_ref(turn) or "", []).append(pos)
    known: set[str] = set()
    positions: list[int] = []
    for sent in entry.appends:
        known.update(sent.refs)
        if sent.outcome == "acked":
            result.acknowledged += len(sent.refs)
            for turn_id, ref, digest in zip(sent.turn_ids, sent.refs, sent.digests, strict=True):
                found = by_id.get(turn_id, [])
                copies = max(len(found), len(by_ref.get(ref, [])))
                if not found:
                    result.missing += 1
                    result.note(f"{sid}: acknowledged turn {turn_id} is missing")
                    continue
                if copies > 1:
                    result.duplicated += copies - 1
                    result.note(f"{sid}: acknowledged turn {turn_id} is there {copies} times")
                positions.append(found[0])
                if turn_digest(turns[found[0]]) != digest:
                    result.changed += 1
                    result.note(f"{sid}: acknowledged turn {turn_id} came back changed")
        elif sent.outcome == "refused":
            result.refused += len(sent.refs)
            landed = sum(len(by_ref.get(ref, [])) for ref in sent.refs)
            if landed:
                result.refused_landed += landed
                result.note(f"{sid}: {landed} turns of an append that was refused are stored")
        else:
            result.ambiguous += len(sent.refs)
            stored = [len(by_ref.get(ref, [])) for ref in sent.refs]
            if all(n == 0 for n in stored):
                result.ambiguous_absent += len(stored)
            elif all(n == 1 for n in stored):
                result.ambiguous_landed += len(stored)
            else:
                result.ambiguous_broken += len(stored)
                result.note(f"{sid}: an append with an unknown outcome is stored as {stored}")
    out_of_order = sum(1 for a, b in itertools.pairwise(positions) if b < a)
    if out_of_order:
        result.out_of_order += out_of_order
        result.note(f"{sid}: {out_of_order} acknowledged turns read back out of order")
    strangers = sum(len(p) for ref, p in by_ref.items() if ref not in known)
    if strangers:
        result.unexpected += strangers
        result.note(f"{sid}: {strangers} turns that this run never sent to the session")
