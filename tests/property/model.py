"""The plain in-memory model the state machine checks memsdk against.

A session is the list of operations acknowledged on it (appends, META updates, summaries,
deletes), each with what the caller knows of its fate:

- `durable`: in the store (a synchronous call returned, or a flush confirmed it);
- `pending`: acknowledged into one client's write-ahead log, not known to be flushed;
- `maybe`: the call raised StoreUnavailableError(maybe_applied=True): in the store exactly
  once, or not at all;
- `orphan`: pending in another client's WAL when the session was deleted (concurrent with
  the delete, so ordered before it or after it: see `deleted`).

What the store may hold is then a set of *worlds*: every maybe in or out, and for each
client some prefix of its pending appends flushed (a client's flusher writes a session's
records in log order). A complete answer must match one world exactly; observing it
narrows the model (a maybe seen is in, a flushed prefix seen stays flushed).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Status = Literal["durable", "pending", "maybe", "orphan"]
Kind = Literal["append", "meta", "summary", "delete"]

# Enumerating worlds is a product over maybes and pending prefixes; past this the model
# stops narrowing and the check fails loudly rather than pretending (never seen so far).
_MAX_WORLDS = 4096


@dataclass(frozen=True)
class MTurn:
    """A turn as the model knows it: its id from the receipt, role and unique content."""

    turn_id: str
    role: str
    content: str


@dataclass
class Op:
    """One acknowledged (or maybe applied) write on a session."""

    kind: Kind
    slot: int
    status: Status
    time_s: int  # the fake clock's second when it was issued; it commits in the same epoch
    turns: tuple[MTurn, ...] = ()
    page_context: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None
    summary: tuple[str, str] | None = None  # (through_turn_id, text)
    decided: bool | None = None  # for maybe: None = unknown, else in or out
    wal: bool = False  # acknowledged by a write-ahead log
    orphaned: bool = False  # pending elsewhere when the session was deleted


@dataclass
class World:
    """One concrete state the store may hold for a session."""

    exists: bool = False
    expires_at: int = 0
    turns: list[MTurn] = field(default_factory=list)
    page_context: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    summary: tuple[str, str] | None = None

    def live(self, now_s: int) -> bool:
        """Whether a read at now_s sees the session (expired reads as absent)."""
        return self.exists and self.expires_at > now_s


def window(newest_first: Sequence[MTurn], last_n: int) -> list[MTurn]:
    """Guarantee 9, from its documentation: the newest last_n turns, oldest first; a window
    never starts with a tool turn, its start moves back to the turn before, down to the
    session's first turn (tool turns with nothing before them are returned, never dropped)."""
    turns = list(reversed(newest_first))  # oldest first
    start = max(0, len(turns) - last_n)
    while start > 0 and turns[start].role == "tool":
        start -= 1
    return turns[start:]


@dataclass
class Choice:
    """Which maybes are in and how many pending appends each client has flushed."""

    maybes: dict[int, bool]
    prefixes: dict[int, int]


class SessionModel:
    """Everything acknowledged on one session, in the order it was acknowledged."""

    def __init__(self, sid: str, ttl_s: int) -> None:
        self.sid = sid
        self.ttl_s = ttl_s
        self.ops: list[Op] = []
        self.ever: dict[str, MTurn] = {}  # every turn ever acknowledged or maybe written

    # ----------------------------------------------------------------- updates

    def add(self, op: Op) -> None:
        """Record an operation (the caller decided its status)."""
        self.ops.append(op)
        for t in op.turns:
            self.ever[t.turn_id] = t

    def pending_of(self, slot: int) -> list[Op]:
        """The slot's pending appends on this session, oldest first."""
        return [op for op in self.ops if op.status == "pending" and op.slot == slot]

    def flushed(self, slot: int) -> None:
        """The slot's flush returned: its pending appends are in the store."""
        for op in self.pending_of(slot):
            op.status = "durable"

    def deleted(self, slot: int, time_s: int) -> None:
        """A delete by `slot`: it drained its own pending first; others' become orphans.

        An orphan was acknowledged by a process that had not seen the delete: concurrent
        with it, so it is ordered after the delete (written into the next incarnation)
        or before it (set aside, whole, in its client's rejected/ folder; guarantee 11).
        Each orphan is a maybe placed after the delete (its owner's overlay may show it
        until its flusher has dealt with it); `settle_orphans` decides it once flushed.
        """
        self.flushed(slot)
        # Still concurrent with this delete: other slots' pending appends, and their
        # appends already concurrent with an earlier delete whose fate is not settled
        # (an earlier delete of an absent session changed nothing in the store).
        orphans = [
            op
            for op in self.ops
            if op.status == "pending"
            or (op.orphaned and op.status == "maybe" and op.decided is None and op.slot != slot)
        ]
        self.add(Op("delete", slot, "durable", time_s))
        for op in orphans:
            self.ops.remove(op)
            self.add(replace(op, status="maybe", decided=None, orphaned=True))

    def orphans_of(self, slot: int) -> list[Op]:
        """The slot's appends whose order against a delete is not settled yet."""
        return [
            op
            for op in self.ops
            if op.orphaned and op.slot == slot and op.status == "maybe" and op.decided is None
        ]

    def below_a_deleted_incarnation(self, turn_id: str) -> bool:
        """Whether `turn_id` may sort at or below the newest turn written before the
        session's last delete: the deleted incarnation's floor. A buffered append there was
        fixed by a process that had not seen the delete: the flusher orders it before the
        delete and sets it aside (guarantee 11). True when unsure (a maybe write before the
        delete whose ids are unknown)."""
        deletes = [i for i, op in enumerate(self.ops) if op.kind == "delete"]
        if not deletes:
            return False
        before = [t.turn_id for op in self.ops[: deletes[-1]] for t in op.turns]
        if any(t.startswith("?") for t in before):
            return True
        return bool(before) and turn_id <= max(before)

    # ------------------------------------------------------------------ worlds

    def _unknown_maybes(self) -> list[int]:
        return [i for i, op in enumerate(self.ops) if op.status == "maybe" and op.decided is None]

    def _pending_slots(self, viewer: int | None) -> dict[int, list[int]]:
        slots: dict[int, list[int]] = {}
        for i, op in enumerate(self.ops):
            if op.status == "pending" and op.slot != viewer:
                slots.setdefault(op.slot, []).append(i)
        return slots

    def worlds(self, viewer: int | None) -> Iterator[tuple[World, Choice]]:
        """Every world the store (plus `viewer`'s own WAL overlay) may show."""
        maybes = self._unknown_maybes()
        pending = self._pending_slots(viewer)
        count = 2 ** len(maybes)
        for idx in pending.values():
            count *= len(idx) + 1
        assert count <= _MAX_WORLDS, f"model: {count} worlds for {self.sid}, too many to check"
        slots = list(pending)
        for bits in itertools.product((False, True), repeat=len(maybes)):
            chosen = dict(zip(maybes, bits, strict=True))
            for lengths in itertools.product(*(range(len(pending[s]) + 1) for s in slots)):
                prefixes = dict(zip(slots, lengths, strict=True))
                included = set()
                for s, n in prefixes.items():
                    included.update(pending[s][:n])
                yield self._fold(chosen, included, viewer), Choice(chosen, prefixes)

    def _fold(self, chosen: dict[int, bool], included: set[int], viewer: int | None) -> World:
        w = World()
        for i, op in enumerate(self.ops):
            if op.status == "orphan":
                continue
            if op.status == "maybe" and not (op.decided or chosen.get(i, False)):
                continue
            if op.status == "pending" and op.slot != viewer and i not in included:
                continue
            if op.kind == "delete":
                w = World()
                continue
            if w.exists and w.expires_at <= op.time_s:
                w = World()  # expired: this write starts a new incarnation
            w.exists = True
            w.expires_at = op.time_s + self.ttl_s
            w.turns = [*w.turns, *op.turns]
            if op.page_context is not None:
                w.page_context = op.page_context
            if op.attributes is not None:
                w.attributes = op.attributes
            if op.summary is not None and (w.summary is None or op.summary[0] >= w.summary[0]):
                w.summary = op.summary
        w.turns.sort(key=lambda t: t.turn_id)
        return w

    def narrow(self, matching: list[Choice], viewer: int | None) -> None:
        """Keep what every world matching an observation agrees on.

        An orphan is only ever decided "in", by a read of the store itself: its owner's
        overlay shows it while pending, and its flusher may still write it later.
        """
        if not matching:
            return
        for i in self._unknown_maybes():
            values = {c.maybes[i] for c in matching}
            if self.ops[i].orphaned and (viewer is not None or values != {True}):
                continue
            if len(values) == 1:
                self.ops[i].decided = values.pop()
                if self.ops[i].decided:
                    self.ops[i].status = "durable"
        for slot, idx in self._pending_slots(None).items():
            seen = min(c.prefixes.get(slot, 0) for c in matching)
            for i in idx[:seen]:
                self.ops[i].status = "durable"

    def own_turns(self, slot: int, now_s: int) -> list[MTurn]:
        """Turns the slot wrote into the live incarnation (durable, pending, or maybe seen)."""
        turns: list[MTurn] = []
        expires_at = 0
        for op in self.ops:
            if op.status == "orphan" or (op.status == "maybe" and not op.decided):
                continue
            if op.kind == "delete" or expires_at <= op.time_s:
                turns = []
            if op.kind == "delete":
                expires_at = 0
                continue
            expires_at = op.time_s + self.ttl_s
            if op.slot == slot:
                turns.extend(op.turns)
        return turns if expires_at > now_s else []

    def with_status(self, index: int, status: Status) -> None:
        """Change one op's status (used when a call's outcome becomes known)."""
        self.ops[index] = replace(self.ops[index], status=status)
