"""A Hypothesis state machine: several sessions, several clients, faults, against a model.

Three client slots share one store and one redis-server; each has its own L1 and (if drawn)
its own write-ahead log, and its own consistency mode. Rules append, load, update META,
summarize, delete, flush, restart a client (cleanly, or as a crash with a power cut that
drops what was not fsync'd), switch a store outage on and off, lose a commit's reply, flush
or kill and restart Redis, and move the fake clock (TTL). After every step a verifier that
reads the store directly checks it against tests/property/model.py; every `load` checks
the client's own answer, with exactly the allowances the docs give (see docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from memsdk import Context, MemoryClient, Turn
from memsdk.errors import StoreUnavailableError
from tests.property.harness import LAST_N, TTL_S, Env, SimulatedDisk, abandon
from tests.property.model import MTurn, Op, SessionModel, World, window

SLOTS = 3
SESSIONS = 3
FLUSH_TIMEOUT_S = 30.0
# The breaker's window (2 s) plus its longest open period (0.4 s) plus slack for a busy box.
RECENT_OUTAGE_S = 4.0
# Every call of the machine returns well within this (flushes wait at most 30 s).
CALL_DEADLINE_S = 60.0
# Content suffixes: multi-byte UTF-8 in every append (the fuzz tests go much further).
SUFFIXES = ["", " é", " 日本語", " 🎉", " \u200b", " a\nb"]
# Tool turns anywhere, first included: a window that starts at a tool turn moves back to
# its caller, or to the session's first turn (guarantee 9 never drops one).
ROLE_LISTS = st.lists(
    st.sampled_from(["user", "assistant", "tool", "tool"]), min_size=1, max_size=3
)

slots = st.integers(0, SLOTS - 1)
sessions = st.integers(0, SESSIONS - 1)


class MemoryMachine(RuleBasedStateMachine):
    """memsdk under faults, against a model of what was acknowledged."""

    env: Env  # set by the test (a subclass per test function)

    def __init__(self) -> None:
        super().__init__()
        self.ex = self.env.new_example()
        self.sids = [f"p{self.ex.uid}-{k}" for k in range(SESSIONS)]
        self.model = {sid: SessionModel(sid, TTL_S) for sid in self.sids}
        self.clients: dict[int, MemoryClient] = {}
        self.setup: dict[int, tuple[bool, str]] = {}
        self.verifier: MemoryClient | None = None
        self.outage: str | None = None
        self.deleted_any = False
        self.outage_ended_at = -1e9  # time.monotonic() when the last store outage ended
        self.touched: int | None = None  # the session the last rule worked on
        self.counter = 0
        self.seen: dict[tuple[int, str], str] = {}  # newest turn id a slot's reads showed
        self.written: dict[tuple[int, str], str] = {}  # newest id this writer issued
        if self.env.kind == "dynamodb":
            self.ex.set_outage(None)
        if self.env.redis.running:
            self.env.redis.command("FLUSHALL")

    # ---------------------------------------------------------------- helpers

    @property
    def now_s(self) -> int:
        return self.ex.clock.time_ms() // 1000

    def run(self, coro: Any) -> Any:
        started = time.monotonic()
        try:
            # A call that hangs is a failure to report, not a CI run that never ends.
            return self.env.run(_within(coro, CALL_DEADLINE_S))
        finally:
            self.last_call_s = time.monotonic() - started

    def wal(self, slot: int) -> bool:
        return self.setup[slot][0]

    def mode(self, slot: int) -> str:
        return self.setup[slot][1]

    def breaker(self, slot: int) -> str:
        return self.clients[slot].health().store_breaker

    def store_up(self) -> bool:
        return self.outage is None

    def full_read(self, sid: str) -> Context:
        """The verifier's read of the whole session, straight from the store: never torn
        (its count agrees with the turns it shows), whatever flushes meanwhile."""
        assert self.verifier is not None
        ctx = self.run(self.verifier.load_context(sid, last_n=10_000))
        assert not ctx.degraded, "the verifier reads the store directly: never degraded"
        assert ctx.meta is None or ctx.meta.turn_count == len(ctx.turns), (
            f"a torn read: META counts {ctx.meta.turn_count}, the read shows {len(ctx.turns)}"
        )
        return ctx

    def rejected_ids(self, slot: int) -> set[str]:
        """Turn ids the slot's WAL set aside in rejected/ (guarantee 11)."""
        path = Path(f"{self.ex.root}/wal-{slot}/rejected/rejected.jsonl")
        if not path.exists():
            return set()
        ids = set()
        for line in path.read_bytes().splitlines():
            record = msgspec.json.decode(line)["record"]
            ids.update(t["turn_id"] for t in record["turns"])
        return ids

    def settle_pending(self, sid: str, slot: int) -> None:
        """The slot's pending appends on `sid` that the store now holds are durable (its
        flusher writes them in log order, so they are a prefix)."""
        stored = {t.turn_id for t in self.full_read(sid).turns}
        for op in self.model[sid].pending_of(slot):
            if not all(t.turn_id in stored for t in op.turns):
                break
            op.status = "durable"

    def settle_orphans(self, slot: int) -> None:
        """The slot's flush returned: each of its appends concurrent with a delete is now
        in the store whole (ordered after the delete) or set aside whole in its rejected/
        folder (ordered before it): never lost without a trace, never half."""
        for sid, model in self.model.items():
            orphans = model.orphans_of(slot)
            if not orphans:
                continue
            stored = {t.turn_id for t in self.full_read(sid).turns}
            kept = self.rejected_ids(slot)
            for op in orphans:
                ids = [t.turn_id for t in op.turns]
                landed = [i in stored for i in ids]
                assert all(landed) or not any(landed), "an append landed in part"
                if not all(landed):
                    assert all(i in kept for i in ids), (
                        "an append ordered before a delete is not in rejected/ (guarantee 11)"
                    )
                    event("append ordered before a delete: set aside in rejected/")
                else:
                    event("append concurrent with a delete: landed after it")
                op.decided = all(landed)
                op.status = "durable" if op.decided else "maybe"

    def resolve_maybe(self, sid: str, op: Op) -> None:
        """An append or META update that may have landed: ask the store, and check it landed
        whole and exactly once, or not at all (the verifier bypasses every fault)."""
        ctx = self.full_read(sid)
        model = self.model[sid]
        if op.kind == "append":
            contents = [t.content for t in ctx.turns]
            found = [t for t in ctx.turns if t.content in {m.content for m in op.turns}]
            for m in op.turns:
                assert contents.count(m.content) <= 1, f"duplicate of a maybe turn: {m.content}"
            assert len(found) in (0, len(op.turns)), "a maybe-applied append landed in part"
            landed = bool(found)
            if landed:
                ids = {t.content: t.turn_id for t in found}
                op.turns = tuple(MTurn(ids[m.content], m.role, m.content) for m in op.turns)
        else:
            # Which of "landed" and "not applied" matches the store (both: it changes nothing).
            fits = {}
            for landed in (True, False):
                op.decided = landed
                fits[landed] = any(
                    _matches(w, ctx, 10_000, self.now_s) for w, _ in model.worlds(None)
                )
            assert fits[True] or fits[False], (
                "a maybe-applied META update left the store in no model state"
            )
            landed = fits[True] and not fits[False]
        op.decided = landed
        op.status = "durable" if landed else "maybe"
        for t in op.turns:
            model.ever[t.turn_id] = t
        event(f"maybe-applied {op.kind}: {'landed' if landed else 'not applied'}")

    def check_answer(self, slot: int, sid: str, ctx: Context, n: int, breaker: str) -> None:
        """Check one client's load_context answer against the model."""
        model = self.model[sid]
        now = self.now_s
        assert ctx.session_id == sid
        ids = [t.turn_id or "" for t in ctx.turns]
        # Isolation, order, no duplicates, no corruption: always, degraded or not.
        assert ids == sorted(ids) and len(set(ids)) == len(ids), f"order/duplicates: {ids}"
        for t in ctx.turns:
            known = model.ever.get(t.turn_id or "")
            assert known is not None, f"a turn never written to {sid}: {t.content!r}"
            assert (known.role, known.content) == (t.role, t.content), "a turn came back changed"
        if ctx.meta is not None:
            assert ctx.meta.session_id == sid
            assert ctx.meta.expires_at > now, "an expired META was returned"
        if ids:
            self.seen[(slot, sid)] = max(self.seen.get((slot, sid), ""), ids[-1])
        own_pending = [t for op in model.pending_of(slot) for t in op.turns]
        if ctx.degraded:
            event("degraded answer")
            # Degraded only when the store is, or just was, unreachable: an outage now, the
            # client's breaker not closed (before or after the call), or an outage that
            # ended within the breaker's window (its failures may still open it).
            recent = time.monotonic() - self.outage_ended_at < RECENT_OUTAGE_S
            after = self.breaker(slot)
            assert not self.store_up() or recent or breaker != "closed" or after != "closed", (
                "degraded while the store was up and the breaker closed"
            )
            self._check_contains(ctx, own_pending, "its own buffered turns (overlay)")
            return
        # Sticky answers from L1 may lag; an absent verdict from a stale L1 META is labelled
        # source="store" (Context.source: a minor mislabel), so absent sticky answers too.
        if self.mode(slot) == "sticky" and (ctx.source.startswith("l1") or ctx.meta is None):
            event("sticky answer from L1")
            self._check_sticky(slot, model, ctx)
            return
        matching = []
        worlds = []
        for world, choice in model.worlds(slot):
            worlds.append(world)
            if _matches(world, ctx, n, now):
                matching.append(choice)
        assert matching, _mismatch(ctx, worlds, n, now)
        model.narrow(matching, slot)

    def load_and_check(self, slot: int, sid: str, last_n: int | None) -> None:
        """Load through a client and check the answer, once (no re-read: a torn answer is
        a failure)."""
        breaker = self.breaker(slot)
        ctx = self.run(self.clients[slot].load_context(sid, last_n=last_n))
        self.check_answer(slot, sid, ctx, last_n or LAST_N, breaker)

    def _check_contains(self, ctx: Context, turns: list[MTurn], what: str) -> None:
        shown = {t.turn_id for t in ctx.turns}
        oldest = ctx.turns[0].turn_id if ctx.turns else None
        if turns:
            assert ctx.meta is not None, (
                f"absent (source={ctx.source}), but it holds {what}: "
                f"{[t.content for t in turns]}"
            )
        for t in turns:
            assert t.turn_id in shown or (oldest is not None and t.turn_id < oldest), (
                f"missing {what}: {t.content!r}"
            )

    def _check_sticky(self, slot: int, model: SessionModel, ctx: Context) -> None:
        """Sticky may lag behind other writers, never behind this client's own writes."""
        if ctx.meta is None:
            return
        self._check_contains(ctx, model.own_turns(slot, self.now_s), "its own turns")
        last_pc = last_attrs = None
        # When the session certainly existed until (writes known to have landed): a write
        # after that may start a new incarnation, which keeps no META field of the old one.
        # Forgetting there is lenient (nothing left to check), never wrong.
        expires_at = 0
        for op in model.ops:
            if op.kind == "delete" or expires_at <= op.time_s:
                last_pc = last_attrs = None
            if op.status != "durable":
                continue
            expires_at = 0 if op.kind == "delete" else op.time_s + model.ttl_s
            if op.page_context is not None:
                last_pc = op
            if op.attributes is not None:
                last_attrs = op
        if last_pc is not None and last_pc.slot == slot:
            assert ctx.meta.page_context == last_pc.page_context, "sticky lost its own update"
        if last_attrs is not None and last_attrs.slot == slot:
            assert ctx.meta.attributes == last_attrs.attributes, "sticky lost its own update"

    def new_turns(self, sid: str, slot: int, roles: list[str], suffix: str) -> list[Turn]:
        turns = []
        for role in roles:
            self.counter += 1
            attributes = {"n": self.counter, "nested": {"list": [1, {"x": suffix}]}}
            content = f"{sid}/{slot}/{self.counter}{suffix}"
            turns.append(Turn(role=role, content=content, attributes=attributes))  # type: ignore[arg-type]
        return turns

    def flush_all(self) -> None:
        for slot in self.clients:
            if self.wal(slot):
                self.flush_slot(slot)

    def flush_slot(self, slot: int) -> None:
        self.run(self.clients[slot].flush(timeout=FLUSH_TIMEOUT_S))
        for model in self.model.values():
            model.flushed(slot)
        self.settle_orphans(slot)

    # ------------------------------------------------------------------ rules

    @initialize(
        setup=st.lists(
            st.tuples(st.booleans(), st.sampled_from(["validated", "strong", "sticky"])),
            min_size=SLOTS,
            max_size=SLOTS,
        )
    )
    def start(self, setup: list[tuple[bool, str]]) -> None:
        for slot, (wal, consistency) in enumerate(setup):
            self.setup[slot] = (wal, consistency)
            self.clients[slot] = self.ex.open_client(slot, wal=wal, consistency=consistency)
        self.verifier = self.ex.verifier()

    @rule(
        slot=slots,
        s=sessions,
        roles=ROLE_LISTS,
        suffix=st.sampled_from(SUFFIXES),
        lose_reply=st.booleans(),
    )
    def append(self, slot: int, s: int, roles: list[str], suffix: str, lose_reply: bool) -> None:
        self.touched = s
        sid, client = self.sids[s], self.clients[slot]
        model = self.model[sid]
        turns = self.new_turns(sid, slot, roles, suffix)
        store = self.ex.stores.get(slot)
        lose = lose_reply and store is not None and self.store_up()
        if lose:
            assert store is not None
            store.lose_commit_replies = 1
        try:
            receipt = self.run(client.append_turns(sid, turns))
        except StoreUnavailableError as exc:
            assert not self.wal(slot), "a buffered append raised StoreUnavailableError"
            assert lose or not self.store_up() or self.breaker(slot) != "closed", exc
            if exc.maybe_applied:
                op = Op("append", slot, "maybe", self.now_s, turns=_mturns(turns, None))
                model.add(op)
                self.resolve_maybe(sid, op)
            return
        finally:
            if store is not None:
                store.lose_commit_replies = 0
        ids = receipt.turn_ids
        assert len(ids) == len(turns) and ids == sorted(ids) and len(set(ids)) == len(ids)
        assert receipt.durable == (not self.wal(slot))
        # Guarantee 2: after everything this client saw, after its own earlier turns.
        key = (slot, sid)
        assert ids[0] > self.seen.get(key, ""), "an append sorted before a turn its writer saw"
        assert ids[0] > self.written.get(key, ""), "a writer's turns out of its own order"
        self.written[key] = ids[-1]
        self.seen[key] = max(self.seen.get(key, ""), ids[-1])
        status = "pending" if self.wal(slot) else "durable"
        op = Op("append", slot, status, self.now_s, turns=_mturns(turns, ids), wal=self.wal(slot))
        if self.wal(slot) and model.below_a_deleted_incarnation(ids[0]):
            # This client's cached META predates another client's delete, and its ids (the
            # same millisecond here) sort below the deleted incarnation's newest turn: the
            # append is concurrent with the delete, and the flusher orders it before it
            # (rejected/, checked by settle_orphans) or, above the floor, after it.
            op = replace(op, status="maybe", decided=None, orphaned=True)
        model.add(op)
        if lose and self.wal(slot):
            # The flusher's commit lands and loses its reply; it retries idempotently.
            self.flush_slot(slot)

    @rule(slot=slots, s=sessions, last_n=st.sampled_from([None, 1, 3, 12]))
    def load(self, slot: int, s: int, last_n: int | None) -> None:
        self.touched = s
        self.load_and_check(slot, self.sids[s], last_n)

    @rule(
        slot=slots,
        s=sessions,
        which=st.sampled_from(["page_context", "attributes", "both"]),
        nested=st.booleans(),
        lose_reply=st.booleans(),
    )
    def update_meta(self, slot: int, s: int, which: str, nested: bool, lose_reply: bool) -> None:
        self.touched = s
        sid, client = self.sids[s], self.clients[slot]
        self.counter += 1
        value: dict[str, Any] = {"v": self.counter}
        if nested:
            value["deep"] = {"a": [1, 2.5, None, True, {"k": "ü"}], "big": 2**62}
        pc = value if which in ("page_context", "both") else None
        attrs = {"a": value} if which in ("attributes", "both") else None
        store = self.ex.stores.get(slot)
        lose = lose_reply and store is not None and self.store_up()
        if lose:
            assert store is not None
            store.lose_commit_replies = 1
        op = Op("meta", slot, "durable", self.now_s, page_context=pc, attributes=attrs)
        try:
            meta = self.run(client.update_meta(sid, page_context=pc, attributes=attrs))
        except StoreUnavailableError as exc:
            assert lose or not self.store_up() or self.breaker(slot) != "closed", exc
            if exc.maybe_applied:
                op.status = "maybe"
                self.model[sid].add(op)
                self.resolve_maybe(sid, op)
            return
        finally:
            if store is not None:
                store.lose_commit_replies = 0
        if pc is not None:
            assert meta.page_context == pc
        if attrs is not None:
            assert meta.attributes == attrs
        self.model[sid].add(op)

    @precondition(lambda self: self.store_up())
    @rule(slot=slots, s=sessions, pick=st.integers(0, 50))
    def put_summary(self, slot: int, s: int, pick: int) -> None:
        self.touched = s
        sid, client = self.sids[s], self.clients[slot]
        if self.breaker(slot) != "closed":
            return  # a put_summary would wait out the breaker: not what this rule checks
        model = self.model[sid]
        # A turn every world holds: durable ones, and this client's own buffered ones
        # (put_summary drains them first).
        world = next(w for w, c in model.worlds(slot) if not any(c.prefixes.values()))
        if not world.live(self.now_s) or not world.turns:
            return
        through = world.turns[pick % len(world.turns)]
        self.counter += 1
        text = f"summary {self.counter} of {sid} é"
        try:
            summary = self.run(client.put_summary(sid, text, through_turn_id=through.turn_id))
        except StoreUnavailableError as exc:
            # Lost replies count as failures: the breaker may open during the call.
            assert not exc.maybe_applied and self.breaker(slot) != "closed", exc
            return
        assert (summary.through_turn_id, summary.text) == (through.turn_id, text)
        model.add(Op("summary", slot, "durable", self.now_s, summary=(through.turn_id, text)))

    @precondition(lambda self: self.store_up())
    @rule(slot=slots, s=sessions)
    def delete_session(self, slot: int, s: int) -> None:
        self.touched = s
        sid, client = self.sids[s], self.clients[slot]
        if self.breaker(slot) != "closed":
            return
        self.deleted_any = True
        model = self.model[sid]
        # The delete drains this slot's own buffered appends first, those concurrent with
        # an earlier delete included: each lands (and is deleted with the session) or is
        # set aside whole in rejected/. Either way it is gone from the store afterwards.
        own_orphans = model.orphans_of(slot)
        try:
            self.run(client.delete_session(sid))
        except StoreUnavailableError as exc:
            # Lost replies count as failures: the breaker may open during the call.
            assert self.breaker(slot) != "closed", f"{exc} after {self.last_call_s:.2f}s"
            # The delete drains the slot's own buffered appends first: some or all of them
            # may be in the store now, whatever became of the delete itself.
            self.settle_pending(sid, slot)
            if exc.maybe_applied:  # hidden or untouched: ask the store which
                ctx = self.full_read(sid)
                trial = Op("delete", slot, "maybe", self.now_s, decided=True)
                model.add(trial)
                landed = any(_matches(w, ctx, 10_000, self.now_s) for w, _ in model.worlds(None))
                model.ops.remove(trial)
                if landed:
                    model.deleted(slot, self.now_s)
                event(f"maybe-applied delete: {'landed' if landed else 'not applied'}")
            return
        kept = self.rejected_ids(slot)
        for op in own_orphans:
            op.decided = not all(t.turn_id in kept for t in op.turns)
            op.status = "durable" if op.decided else "maybe"
        model.deleted(slot, self.now_s)

    @precondition(lambda self: self.store_up())
    @rule(slot=slots)
    def flush(self, slot: int) -> None:
        self.flush_slot(slot)

    @rule(slot=slots, crash=st.booleans(), keep=st.sampled_from([0.0, 0.5, 1.0]))
    def restart(self, slot: int, crash: bool, keep: float) -> None:
        """A clean close (drains for wal_close_timeout), or kill -9 plus a power cut."""
        client = self.clients[slot]
        wal, consistency = self.setup[slot]
        if crash:
            self.run(abandon(client, write_queued=False))
            if wal:
                dropped = SimulatedDisk.power_cut(f"{self.ex.root}/wal-{slot}", keep)
                event(f"power cut dropped unsynced bytes: {dropped > 0}")
        else:
            self.run(client.aclose())
        self.clients[slot] = self.ex.open_client(slot, wal=wal, consistency=consistency)
        if self.outage is not None:
            self.ex.set_outage(self.outage)
        for key in [k for k in self.written if k[0] == slot]:
            del self.written[key]  # a new process: a new writer
        for key in [k for k in self.seen if k[0] == slot]:
            del self.seen[key]

    @rule(mode=st.sampled_from(["down", "http5xx", None]))
    def store_outage(self, mode: str | None) -> None:
        if self.env.kind == "sqlite" and mode == "http5xx":
            mode = "down"
        if self.outage is not None and mode is None:
            self.outage_ended_at = time.monotonic()
        self.outage = mode
        self.ex.set_outage(mode)

    @rule(action=st.sampled_from(["flushall", "kill", "restart"]))
    def redis(self, action: str) -> None:
        server = self.env.redis
        # No waiting for the clients' background cache work: a read-through fill still in
        # flight when Redis loses the key must be refused (its lease is gone with the key).
        if action == "flushall" and server.running:
            server.command("FLUSHALL")
        elif action == "kill" and server.running:
            server.kill()
        elif action == "restart" and not server.running:
            server.restart()

    @precondition(lambda self: self.store_up())
    @rule(seconds=st.sampled_from([0.001, 1.0, 600.0, TTL_S + 1.0]))
    def advance_clock(self, seconds: float) -> None:
        # Buffered appends commit with the flush's time: drain first, so that the model
        # knows each write's time (what the WAL does across an expiry is not modelled).
        self.flush_all()
        self.ex.clock.advance(seconds)

    @precondition(lambda self: self.store_up())
    @rule()
    def flush_everything(self) -> None:
        """Every buffered append in the store: now nothing acknowledged may be missing."""
        self.flush_all()

    # ------------------------------------------------------------- invariants

    @invariant()
    def store_matches_model(self) -> None:
        """The store, read directly, holds a world of the model (no loss, no duplicate,
        isolation, TTL); only other clients' buffered turns may still be on their way."""
        if self.verifier is None:
            return
        for sid in self.sids:
            ctx = self.full_read(sid)
            model = self.model[sid]
            matching = []
            worlds: list[World] = []
            for world, choice in model.worlds(None):
                worlds.append(world)
                if _matches(world, ctx, 10_000, self.now_s):
                    matching.append(choice)
            assert matching, _mismatch(ctx, worlds, 10_000, self.now_s)
            model.narrow(matching, None)

    @invariant()
    def every_client_answers_like_the_model(self) -> None:
        """Each client's own answer (its L1, Redis, its WAL overlay) for the session the
        last step touched: what an orchestrator reads before its next reply."""
        if self.touched is None:
            return
        sid = self.sids[self.touched]
        self.touched = None
        for slot in self.clients:
            self.load_and_check(slot, sid, None)

    @invariant()
    def resources_bounded(self) -> None:
        for slot, client in self.clients.items():
            h = client.health()
            assert h.l1_bytes <= h.l1_max_bytes
            # A power cut may drop confirmations (written without an fsync of their own):
            # then flushed records replay, idempotently. So the bound is every record the
            # slot's WAL ever acknowledged.
            appended = sum(
                1 for m in self.model.values() for op in m.ops if op.slot == slot and op.wal
            )
            assert h.wal_pending_records <= appended, "the WAL holds records nobody appended"

    def teardown(self) -> None:
        failed = sys.exc_info()[1] is not None
        if failed and self.env.first_failure is None:
            elapsed = time.monotonic() - self.env.started
            self.env.first_failure = f"example {self.env.examples} after {elapsed:.1f} s"
            print(f"first failure: {self.env.first_failure}", file=sys.stderr)
        try:
            if not failed and self.verifier is not None and self.store_up():
                # The last word: everything flushed, every acknowledged turn exactly once.
                self.flush_all()
                self.store_matches_model()
        finally:
            for client in [*self.clients.values(), self.verifier]:
                if client is not None:
                    try:
                        # No drain and no cache repairs: the example is over (and a
                        # graceful close during an outage would wait out its timeouts).
                        self.run(abandon(client))
                    except Exception as exc:
                        note(f"close failed: {exc!r}")
            if not self.env.redis.running:
                self.env.redis.restart()
            if self.env.kind == "dynamodb":
                self.ex.set_outage(None)
            self.ex.cleanup()


async def _within(coro: Any, seconds: float) -> Any:
    async with asyncio.timeout(seconds):
        return await coro


def _mturns(turns: list[Turn], ids: list[str] | None) -> tuple[MTurn, ...]:
    return tuple(
        MTurn(ids[i] if ids is not None else f"?{i}", t.role, t.content)
        for i, t in enumerate(turns)
    )


def _matches(world: World, ctx: Context, n: int, now_s: int) -> bool:
    """Whether a complete answer is exactly what `world` holds."""
    if not world.live(now_s):
        return ctx.meta is None and not ctx.turns
    meta = ctx.meta
    if meta is None:
        return False
    expected = window(world.turns[::-1], n)
    got = [(t.turn_id, t.role, t.content) for t in ctx.turns]
    if got != [(t.turn_id, t.role, t.content) for t in expected]:
        return False
    summary = (ctx.summary.through_turn_id, ctx.summary.text) if ctx.summary else None
    return (
        meta.turn_count == len(world.turns)
        and meta.last_turn_id == (world.turns[-1].turn_id if world.turns else None)
        and meta.page_context == world.page_context
        and meta.attributes == world.attributes
        and meta.expires_at == world.expires_at
        and summary == world.summary
    )


def _mismatch(ctx: Context, worlds: list[World], n: int, now_s: int) -> str:
    got = [t.content for t in ctx.turns]
    meta = ctx.meta
    lines = [
        f"no world of the model matches (source={ctx.source}, last_n={n}, now={now_s})",
        f"  got turns {got}",
        f"  got meta: count={meta.turn_count if meta else None} "
        f"pc={meta.page_context if meta else None} attrs={meta.attributes if meta else None} "
        f"expires={meta.expires_at if meta else None} summary={ctx.summary}",
    ]
    for w in worlds[:4]:
        lines.append(
            f"  world: live={w.live(now_s)} turns={[t.content for t in window(w.turns[::-1], n)]} "
            f"count={len(w.turns)} pc={w.page_context} attrs={w.attributes} "
            f"expires={w.expires_at} summary={w.summary}"
        )
    return "\n".join(lines)
