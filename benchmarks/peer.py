"""Peer comparison: memsdk against LangChain's DynamoDBChatMessageHistory on DynamoDB Local.

LangChain's class (langchain-community, the `bench` extra) keeps a whole session in one item
keyed by `SessionId`: `add_messages` reads the item (GetItem), appends to the list in
Python and writes the whole list back (UpdateItem `SET History = :h`). Its append therefore
costs more as the history grows, and fails once the item passes DynamoDB's 400 KB limit.
memsdk writes each turn as its own item (one TransactWriteItems of META + the new turns), so
its append costs the same at any length.

Method: sessions of each candidate grow in lockstep, one user + assistant pair (core's seed
pair: ~0.8 KB user turn with an intent, ~2 KB assistant turn with product cards) per session
per round, from 0 to `max_turns` turns; the candidates' order rotates every append. A third
candidate, memsdk on fresh sessions that never pass 20 turns, is the same-round reference
for "flat". Latency, request and reply bytes, and the capacity units DynamoDB Local reports
(`ReturnConsumedCapacity=TOTAL`, added to every request of both sides) are recorded per
append and summarised over bins of appends ending at each checkpoint length.

LangChain's class is synchronous (boto3): it runs in a worker thread of its own, timed
inside that thread around `add_messages`, so the thread hop is not charged to it; memsdk is
timed around `await append_turns(...)` on the event loop. Nothing else runs meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aioboto3

from benchmarks.cache import _row
from benchmarks.core import (
    ASSISTANT_ATTRIBUTES,
    ASSISTANT_TEXT,
    CUSTOMER_ID,
    TURNS_PER_MESSAGE,
    USER_INTENT,
    USER_TEXT,
    Progress,
    Settings,
    _dynamodb_store,
    _rotated,
    dynamodb_url,
    memsdk_config,
    message_turns,
    ratio_interval,
    summary,
)
from benchmarks.wal import _at_most
from memsdk import MemoryClient
from tests.harness.dynamodb_local import REGION, create_test_table

__all__ = ["FULL", "QUICK", "SMOKE", "PeerSettings", "peer_settings_for", "run_peer"]

LANGCHAIN = "LangChain DynamoDBChatMessageHistory"
MEMSDK = "memsdk"
REFERENCE = "memsdk, 20-turn sessions (reference)"
REFERENCE_TURNS = 20
FLAT_GOAL = 1.2  # memsdk's append at any length / its 20-turn append, same rounds
ITEM_LIMIT_BYTES = 400 * 1024
MEMSDK_TABLE = "peer_memsdk"
LANGCHAIN_TABLE = "peer_langchain"
BENCH_EXTRA_HINT = "install the bench extra: pip install -e '.[bench]' (make bench does)"


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Counts of one run."""

    mode: str
    sessions: int  # sessions per candidate, grown in lockstep
    max_turns: int  # memsdk's sessions grow to this length
    checkpoints: tuple[int, ...]  # session lengths summarised (turns before the append)
    bin_appends: int  # appends per session in a checkpoint's bin: the last ones before it
    warmup: int  # appends per candidate on a scratch session, first


# LangChain's append costs ~0.2-0.5 s of CPU near the limit (boto3 (de)serialises the whole
# history twice): growing one of its sessions to the limit takes ~30 s of CPU. The CI smoke
# therefore stops at 100 turns; quick and full modes go past the limit.
FULL = PeerSettings(
    mode="full",
    sessions=3,
    max_turns=600,
    checkpoints=(20, 100, 200, 300, 400, 500, 600),
    bin_appends=10,
    warmup=20,
)
QUICK = dataclasses.replace(
    FULL, mode="quick", sessions=1, max_turns=300, checkpoints=(20, 100, 200, 300), warmup=10
)
SMOKE = dataclasses.replace(
    FULL, mode="smoke", sessions=2, max_turns=100, checkpoints=(20, 100), bin_appends=8, warmup=5
)


def peer_settings_for(settings: Settings, *, smoke: bool = False) -> PeerSettings:
    """The peer counts of the run's mode (--samples/--warmup apply to core only)."""
    if smoke:
        return SMOKE
    return QUICK if settings.mode == "quick" else FULL


# ---------------------------------------------------------------------------- wire meter


@dataclass(slots=True)
class Wire:
    """Bytes and capacity units of the requests a candidate sent since the last take()."""

    sent: int = 0
    received: int = 0
    # (operation, reply): memsdk's raw reply bytes, decoded only in take(), outside timings
    replies: list[tuple[str, bytes | dict[str, Any]]] = field(default_factory=list)

    def take(self) -> tuple[int, int, dict[str, float]]:
        """(bytes sent, bytes received, capacity units per operation), then reset."""
        units: dict[str, float] = {}
        for operation, reply in self.replies:
            parsed = json.loads(reply) if isinstance(reply, bytes) else reply
            units[operation] = units.get(operation, 0.0) + _capacity_units(parsed)
        out = self.sent, self.received, units
        self.sent, self.received, self.replies = 0, 0, []
        return out


def _capacity_units(reply: dict[str, Any]) -> float:
    consumed = reply.get("ConsumedCapacity") or []
    entries = consumed if isinstance(consumed, list) else [consumed]
    return float(sum(e.get("CapacityUnits", 0.0) for e in entries))


def meter_memsdk(mem: MemoryClient, wire: Wire) -> Callable[[], None] | None:
    """Ask for capacity on, and count the bytes of, memsdk's lean-path calls (None: no path)."""
    path = getattr(_dynamodb_store(mem), "_path", None)
    call, send = getattr(path, "call", None), getattr(path, "_send", None)
    if path is None or call is None or send is None:
        return None

    async def metered_call(operation: str, params: dict[str, Any], *a: Any, **kw: Any) -> Any:
        return await call(operation, {**params, "ReturnConsumedCapacity": "TOTAL"}, *a, **kw)

    async def metered_send(session: Any, operation: str, body: bytes, *a: Any, **kw: Any) -> Any:
        reply = await send(session, operation, body, *a, **kw)
        wire.sent += len(body)
        wire.received += len(reply)
        wire.replies.append((operation, reply))
        return reply

    try:  # instance attributes shadow the methods; deleted to undo
        path.call, path._send = metered_call, metered_send
    except AttributeError:  # __slots__: cannot observe this path
        return None
    return lambda: (delattr(path, "call"), delattr(path, "_send"))


def meter_boto3(client: Any, wire: Wire) -> None:
    """The same for a boto3 client, through botocore's events (in the caller's thread)."""

    def ask_capacity(params: dict[str, Any], **_: Any) -> None:
        params["ReturnConsumedCapacity"] = "TOTAL"

    def sent(request: Any, **_: Any) -> None:
        wire.sent += len(request.body or b"")

    def received(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        wire.received += len(http_response.content)
        wire.replies.append((model.name, parsed))

    events = client.meta.events
    # First: boto3's DynamoDB resource copies the params in a handler of the same event.
    events.register_first("provide-client-params.dynamodb", ask_capacity)
    events.register("before-send.dynamodb", sent)
    events.register("after-call.dynamodb", received)


# ---------------------------------------------------------------------------- candidates


class ItemLimitReached(Exception):
    """LangChain's append was refused: the session's item would pass 400 KB."""


class Appender(Protocol):
    """One candidate: appends the seed pair to session `session` (round `index`)."""

    name: str
    wire: Wire

    async def append(self, session: int, index: int) -> tuple[int, int]:
        """Append one pair; return (wall ns, CPU ns of the thread that did the work)."""
        ...


class MemsdkAppender:
    """memsdk: `append_turns` of the pair (one TransactWriteItems: META + 2 TURN items)."""

    def __init__(
        self, name: str, mem: MemoryClient, session_of: Callable[[int, int], str], wire: Wire
    ) -> None:
        self.name = name
        self.wire = wire
        self._mem = mem
        self._session_of = session_of

    async def append(self, session: int, index: int) -> tuple[int, int]:
        """Append the pair, timed on the event loop (its thread's CPU: nothing else runs)."""
        sid, turns = self._session_of(session, index), message_turns()
        cpu, start = time.thread_time_ns(), time.perf_counter_ns()
        await self._mem.append_turns(sid, turns, customer_id=CUSTOMER_ID)
        return time.perf_counter_ns() - start, time.thread_time_ns() - cpu


class LangChainAppender:
    """LangChain: `add_messages([human, ai])` on a session's history, in a worker thread."""

    name = LANGCHAIN

    def __init__(self, histories: Sequence[Any], executor: ThreadPoolExecutor, wire: Wire):
        self.wire = wire
        self._histories = histories
        self._executor = executor

    async def append(self, session: int, index: int) -> tuple[int, int]:
        """Append the pair; wall and CPU time are taken inside the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._append, self._histories[session])

    async def stored_turns(self, session: int) -> int:
        """How many messages the session's item holds (untimed: a check)."""
        history = self._histories[session]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: len(history.messages))

    @staticmethod
    def _append(history: Any) -> tuple[int, int]:
        from botocore.exceptions import ClientError

        messages = langchain_pair()
        cpu, start = time.thread_time_ns(), time.perf_counter_ns()
        try:
            history.add_messages(messages)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ValidationException" and "size" in error.get("Message", ""):
                raise ItemLimitReached(error["Message"]) from exc
            raise
        return time.perf_counter_ns() - start, time.thread_time_ns() - cpu


def langchain_pair() -> list[Any]:
    """The seed pair as LangChain messages: the intent and the cards in additional_kwargs."""
    from langchain_core.messages import AIMessage, HumanMessage

    return [
        HumanMessage(content=USER_TEXT, additional_kwargs={"intent": USER_INTENT}),
        AIMessage(content=ASSISTANT_TEXT, additional_kwargs=ASSISTANT_ATTRIBUTES),
    ]


def langchain_histories(endpoint: str, session_ids: Sequence[str], wire: Wire) -> list[Any]:
    """One DynamoDBChatMessageHistory per session, configured as LangChain's docs show."""
    try:
        import boto3
        from langchain_community.chat_message_histories import DynamoDBChatMessageHistory
    except ImportError as exc:
        raise RuntimeError(f"the peer benchmark needs langchain: {BENCH_EXTRA_HINT}") from exc
    boto3_session = boto3.Session(region_name=REGION)
    histories = []
    for sid in session_ids:
        history = DynamoDBChatMessageHistory(
            table_name=LANGCHAIN_TABLE,
            session_id=sid,
            endpoint_url=endpoint,
            boto3_session=boto3_session,
            # The cards carry prices (floats), which boto3 refuses: the documented switch.
            coerce_float_to_decimal=True,
        )
        meter_boto3(history.table.meta.client, wire)
        histories.append(history)
    return histories


async def create_langchain_table(endpoint: str) -> None:
    """The table LangChain's docs create: `SessionId` (S) as the only key, on demand."""
    async with aioboto3.Session().client(
        "dynamodb", region_name=REGION, endpoint_url=endpoint
    ) as client:
        await client.create_table(
            TableName=LANGCHAIN_TABLE,
            KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        await client.get_waiter("table_exists").wait(TableName=LANGCHAIN_TABLE)


# ---------------------------------------------------------------------------- harness


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured append."""

    ns: int
    cpu_ns: int  # CPU of the thread that ran the append (this process only)
    sent: int
    received: int
    units: dict[str, float]


Grid = dict[tuple[int, int], Sample]  # (round index, session) -> sample


@dataclass(slots=True)
class Growth:
    """What growing the sessions measured, per candidate."""

    samples: dict[str, Grid]
    limit: dict[int, int] = field(default_factory=dict)  # LangChain session -> turns stored
    limit_error: str = ""


async def grow(candidates: Sequence[Appender], ps: PeerSettings, progress: Progress) -> Growth:
    """Warm up, then grow every session of every candidate to `max_turns`, interleaved."""
    for i in range(ps.warmup):  # session index `ps.sessions` is the scratch one
        for c in _rotated(candidates, i):
            await c.append(ps.sessions, i)
            c.wire.take()
    gc.collect()
    growth = Growth({c.name: {} for c in candidates})
    rounds = ps.max_turns // TURNS_PER_MESSAGE
    for i in range(rounds):
        if i % 50 == 0:
            progress(f"peer: sessions at {i * TURNS_PER_MESSAGE} turns")
        for r in range(ps.sessions):
            for c in _rotated(candidates, i + r):
                if c.name == LANGCHAIN and r in growth.limit:
                    continue
                try:
                    ns, cpu_ns = await c.append(r, i)
                except ItemLimitReached as exc:
                    c.wire.take()
                    growth.limit[r] = i * TURNS_PER_MESSAGE
                    growth.limit_error = str(exc)
                    continue
                growth.samples[c.name][(i, r)] = Sample(ns, cpu_ns, *c.wire.take())
    return growth


# ---------------------------------------------------------------------------- results


def _bin(turns: int, ps: PeerSettings) -> range:
    """Round indices of a checkpoint's bin: the last `bin_appends` appends before `turns`."""
    end = turns // TURNS_PER_MESSAGE
    return range(max(end - ps.bin_appends, 0), end)


def _pairs(a: Grid, b: Grid, rounds: range) -> tuple[list[Sample], list[Sample]]:
    keys = sorted(k for k in a if k[0] in rounds and k in b)
    return [a[k] for k in keys], [b[k] for k in keys]


def _latency(s: Sample) -> float:
    return s.ns / 1e6


def _cpu(s: Sample) -> float:
    return s.cpu_ns / 1e6


def _wire_bytes(s: Sample) -> float:
    return s.sent + s.received


def _units(s: Sample) -> float:
    return sum(s.units.values())


def _cell(samples: Sequence[Sample]) -> dict[str, Any]:
    return {
        "appends": len(samples),
        "latency_ms": summary([_latency(s) for s in samples]),
        "cpu_ms": summary([_cpu(s) for s in samples]),
        "sent_bytes": statistics.median(s.sent for s in samples),
        "received_bytes": statistics.median(s.received for s in samples),
        "capacity_units": statistics.median(_units(s) for s in samples),
        "operations": sorted(samples[0].units),
    }


def _ratio_row(
    name: str, num: Sequence[Sample], den: Sequence[Sample], key: Callable[[Sample], float]
) -> dict[str, Any]:
    a, b = [key(s) for s in num], [key(s) for s in den]
    value = statistics.median(a) / statistics.median(b)
    return _row(name, value, ratio_interval(a, b, reps=1_000), None)


def describe_growth(growth: Growth, ps: PeerSettings) -> dict[str, Any]:
    """Checkpoint table, the limit and the ratios."""
    mine, ref = growth.samples[MEMSDK], growth.samples[REFERENCE]
    lang = growth.samples[LANGCHAIN]
    checkpoints = []
    ratios: list[dict[str, Any]] = []
    for turns in ps.checkpoints:
        rounds = _bin(turns, ps)
        cells = {}
        for name, grid in growth.samples.items():
            picked = [grid[k] for k in sorted(grid) if k[0] in rounds]
            if picked:
                cells[name] = _cell(picked)
        span = [rounds.start * TURNS_PER_MESSAGE, (rounds.stop - 1) * TURNS_PER_MESSAGE]
        checkpoints.append({"turns": turns, "range": span, "candidates": cells})
        num, den = _pairs(lang, mine, rounds)
        if num:
            ratios.append(
                _ratio_row(f"append latency LangChain / memsdk, {turns} turns", num, den, _latency)
            )
        num, den = _pairs(mine, ref, rounds)
        flat = f"memsdk at {turns} turns / memsdk at <= {REFERENCE_TURNS}"
        ratios += [
            _at_most(_ratio_row(f"append latency {flat}", num, den, _latency), FLAT_GOAL),
            # Steadier than latency on a loaded machine (no emulator, no scheduling in it).
            _ratio_row(f"client CPU per append {flat}", num, den, _cpu),
        ]
    limit = None
    if growth.limit:
        stored = min(growth.limit.values())
        last = range(max(stored // 2 - ps.bin_appends, 0), stored // 2)
        num, den = _pairs(lang, mine, last)
        before = [lang[k] for k in sorted(lang) if k[0] == stored // 2 - 1]
        limit = {
            "stored_turns": stored,
            "failed_appending_turns": stored + TURNS_PER_MESSAGE,
            "sessions_failed": len(growth.limit),
            "item_kb_before": statistics.median(s.units.get("UpdateItem", 0.0) for s in before),
            "error": growth.limit_error,
            "last_bin": {
                "range": [last.start * 2, (last.stop - 1) * 2],
                LANGCHAIN: _cell(num),
                MEMSDK: _cell(den),
            },
        }
        label = f"last {ps.bin_appends} appends before LangChain's limit ({stored} turns)"
        ratios += [
            _ratio_row(f"append latency LangChain / memsdk, {label}", num, den, _latency),
            _ratio_row(f"client CPU per append LangChain / memsdk, {label}", num, den, _cpu),
            _ratio_row(f"bytes on the wire LangChain / memsdk, {label}", num, den, _wire_bytes),
            _ratio_row(f"capacity units LangChain / memsdk, {label}", num, den, _units),
        ]
    return {"checkpoints": checkpoints, "limit": limit, "ratios": ratios}


async def _verify_memsdk(mem: MemoryClient, sessions: Sequence[str], turns: int) -> None:
    for sid in sessions:
        ctx = await mem.load_context(sid, customer_id=CUSTOMER_ID, last_n=1)
        count = None if ctx.meta is None else ctx.meta.turn_count
        if count != turns:
            raise RuntimeError(f"peer benchmark aborted: {sid} holds {count} turns, not {turns}")


async def run_peer(
    endpoint: str, settings: Settings, progress: Progress, *, smoke: bool = False
) -> list[dict[str, Any]]:
    """The peer benchmark on the caller's DynamoDB Local (`smoke`: CI's shorter growth)."""
    started = time.perf_counter()
    ps = peer_settings_for(settings, smoke=smoke)
    await create_test_table(endpoint, MEMSDK_TABLE)
    await create_langchain_table(endpoint)
    sessions = ps.sessions + 1  # the last one is the warm-up's

    def long_session(r: int, i: int) -> str:
        return f"peer-long-{r:03d}"

    def reference_session(r: int, i: int) -> str:
        # A fresh session every 10 appends: never more than 20 turns before an append.
        return f"peer-refs-{r:03d}-{i // (REFERENCE_TURNS // TURNS_PER_MESSAGE):04d}"

    memsdk_wire, lang_wire = Wire(), Wire()
    histories = langchain_histories(
        endpoint, [f"peer-lang-{r:03d}" for r in range(sessions)], lang_wire
    )
    async with MemoryClient(memsdk_config(dynamodb_url(MEMSDK_TABLE, endpoint))) as mem:
        undo = meter_memsdk(mem, memsdk_wire)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="langchain") as executor:
            lang = LangChainAppender(histories, executor, lang_wire)
            candidates: list[Appender] = [
                MemsdkAppender(MEMSDK, mem, long_session, memsdk_wire),
                lang,
                MemsdkAppender(REFERENCE, mem, reference_session, memsdk_wire),
            ]
            progress(
                f"peer: {ps.warmup} warm-up appends, then {ps.sessions} sessions per "
                f"candidate grown to {ps.max_turns} turns"
            )
            growth = await grow(candidates, ps, progress)
            for r, stored in growth.limit.items():
                held = await lang.stored_turns(r)
                if held != stored:
                    raise RuntimeError(
                        f"peer benchmark aborted: LangChain session {r} holds {held} messages "
                        f"after its refused append, expected {stored}"
                    )
        if undo is not None:
            undo()
        await _verify_memsdk(mem, [long_session(r, 0) for r in range(ps.sessions)], ps.max_turns)
    out = describe_growth(growth, ps)
    limit = out["limit"]
    notes = [
        f"{ps.sessions} sessions per candidate grown in lockstep from 0 to {ps.max_turns} turns, "
        "one user + assistant pair per append (~0.8 KB user turn with an intent, ~2 KB "
        "assistant turn with 3 product cards: core's seed pair; LangChain gets the intent and "
        "the cards as additional_kwargs), candidates' order rotating every append, after "
        f"{ps.warmup} warm-up appends each on a scratch session",
        f"a checkpoint of N turns summarises the last {ps.bin_appends} appends of every "
        "session before it reached N turns",
        f"{MEMSDK}: MemoryClient(Config(store='dynamodb://{MEMSDK_TABLE}?...', read_timeout=10, "
        "write_timeout=10)) with every other setting at its default (lean data path, L1 on): "
        "append_turns = one TransactWriteItems (META + 2 TURN items), timed around the await; "
        f"{REFERENCE}: the same client on fresh sessions of at most {REFERENCE_TURNS} turns, "
        "appended in the same rounds",
        f"{LANGCHAIN}: langchain-community's class as its docs configure it (table_name, "
        "session_id, endpoint_url, a boto3 Session; coerce_float_to_decimal=True because the "
        "cards hold prices), one instance per session created before the run, on a table "
        "keyed by SessionId; add_messages([human, ai]) = GetItem of the whole item + "
        "UpdateItem SET History = the whole list; run in its own worker thread and timed "
        "inside it (the thread hop is not charged to it)",
        "client CPU: time.thread_time of the thread that ran the append (memsdk: the event "
        "loop's, nothing else runs meanwhile; LangChain: its worker thread's); bytes are "
        "request and reply bodies; capacity units are what DynamoDB Local reports "
        "for ReturnConsumedCapacity=TOTAL, which the harness adds to every request of both "
        "sides (reads: GetItem eventually consistent, 0.5 unit per 4 KB; writes: 1 unit per "
        "KB, 2 per KB inside a transaction)",
    ]
    if undo is None:
        notes.append("WARNING: memsdk's bytes and capacity not observed (no lean data path)")
    if limit is not None:
        notes.append(
            f"LangChain's append failed when its session held {limit['stored_turns']} turns "
            f"(item ~{limit['item_kb_before']:.0f} KB; DynamoDB: {limit['error']!r}) in "
            f"{limit['sessions_failed']} of {ps.sessions} sessions; each still held exactly "
            "its earlier messages, and every later append would fail the same way; memsdk's "
            f"sessions went on to {ps.max_turns} turns, each checked to hold exactly "
            f"{ps.max_turns} turns"
        )
    else:
        notes.append(f"LangChain did not reach the 400 KB limit within {ps.max_turns} turns")
    return [
        {
            "name": "peer: append as the session grows (DynamoDB Local)",
            "kind": "peer",
            "backend": "DynamoDB Local",
            "samples": ps.sessions,
            "warmup": ps.warmup,
            "elapsed_s": time.perf_counter() - started,
            "settings": {
                "sessions": ps.sessions,
                "max_turns": ps.max_turns,
                "checkpoints": list(ps.checkpoints),
                "bin_appends": ps.bin_appends,
            },
            "notes": notes,
            **out,
        }
    ]
