"""Micro benchmarks: memsdk's in-process hot spots against a baseline timed in the same run.

Each figure times one operation of memsdk and one or two baselines doing the same job the
plain way, in nanoseconds per operation:

- codec, request: records -> TransactWriteItems body of an append (META + 2 TURN items,
  memsdk.store.dynamodb_items + msgspec) against the same items through stdlib `json`;
- codec, reply: a 20-item Query body -> TurnRecords (msgspec Structs + wire_to_turn) against
  `json.loads` and a hand-written walk over the dicts;
- WAL record, encode and decode (memsdk.write_buffer) against `json` on the same fields;
- L1 get and put (memsdk.cache.lru.ContextCache, bounded in bytes) against an LRU on an
  OrderedDict bounded in entries;
- turn ids (memsdk.ids.TurnIdGenerator, 2 ids as one append takes) against uuid4 and the
  seed's epoch-milliseconds ids.

Method (timeit's): an operation runs in batches of N calls with the garbage collector off,
timed with the thread's CPU clock, N calibrated per candidate so that a batch costs
`batch_s`; candidates alternate batch by batch, the order rotating every round, so that
drift on the shared machine falls on both. Figures are medians over batches of CPU ns per
call; ratios are memsdk / baseline of those
medians with a 95% bootstrap interval that resamples rounds (a round's batches stay paired).
"""

from __future__ import annotations

import gc
import itertools
import json
import statistics
import time
import timeit
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from benchmarks.cache import _row
from benchmarks.core import (
    CUSTOMER_ID,
    WINDOW,
    Progress,
    Settings,
    _rotated,
    prefill_turns,
    ratio_interval,
    summary,
)
from memsdk import session as rules
from memsdk.cache.lru import ContextCache, turn_size
from memsdk.ids import TurnIdGenerator
from memsdk.records import MetaRecord, TurnRecord
from memsdk.store.dynamodb_items import (
    QueryTurnsResponse,
    meta_to_item,
    turn_to_item,
    wire_to_turn,
)
from memsdk.write_buffer import buffered_append, encode_append

__all__ = ["FULL", "QUICK", "MicroSettings", "micro_settings_for", "run_micro"]

SESSION_ID = "sess-micro-000001"
L1_SESSIONS = 1_000  # entries in the caches: a warm process serving many sessions


@dataclass(frozen=True, slots=True)
class MicroSettings:
    """Batches of one run."""

    mode: str
    rounds: int  # measured batches per candidate
    warmup: int  # warm-up batches per candidate
    batch_s: float  # the length a batch is calibrated to


QUICK = MicroSettings(mode="quick", rounds=61, warmup=3, batch_s=0.0015)
FULL = MicroSettings(mode="full", rounds=101, warmup=5, batch_s=0.004)


def micro_settings_for(settings: Settings) -> MicroSettings:
    """The micro counts of the run's mode (--samples/--warmup apply to core only)."""
    return QUICK if settings.mode == "quick" else FULL


@dataclass(frozen=True, slots=True)
class Op:
    """A candidate: a name and the call timed."""

    name: str
    call: Callable[[], object]


@dataclass(frozen=True, slots=True)
class Figure:
    """memsdk's operation against its baselines (the first baseline is the main ratio)."""

    name: str
    memsdk: Op
    baselines: tuple[Op, ...]
    note: str


# ---------------------------------------------------------------------------- fixtures


def _records(now_ms: int) -> tuple[MetaRecord, list[TurnRecord]]:
    """META and 22 TURN records of a seed session, planned by memsdk's own rules."""
    write = rules.plan_append(
        None,
        session_id=SESSION_ID,
        turns=prefill_turns(WINDOW + 2),
        customer_id=CUSTOMER_ID,
        now_ms=now_ms,
        ttl_seconds=86_400,
        retention_seconds=30 * 86_400,
        ids=TurnIdGenerator(lambda: now_ms),
    )
    return write.meta, write.turns


def _transact_params(meta: MetaRecord, turns: Sequence[TurnRecord]) -> dict[str, Any]:
    """The TransactWriteItems parameters of an append, as memsdk's store builds them."""
    puts: list[dict[str, Any]] = [
        {
            "Put": {
                "TableName": "conversation_memory",
                "Item": meta_to_item(meta),
                "ConditionExpression": "#ver = :v",
                "ExpressionAttributeNames": {"#ver": "version"},
                "ExpressionAttributeValues": {":v": {"N": str(meta.version - 1)}},
            }
        }
    ]
    puts += [
        {
            "Put": {
                "TableName": "conversation_memory",
                "Item": turn_to_item(meta.session_id, t),
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }
        for t in turns
    ]
    return {"TransactItems": puts, "ClientRequestToken": "0" * 32}


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _stdlib_turn(item: dict[str, Any]) -> TurnRecord:
    """A TURN item dict -> TurnRecord by hand: what a stdlib-json client writes."""
    intent = item.get("intent")
    version = item.get("version")
    return TurnRecord(
        turn_id=item["SK"]["S"][len("TURN#") :],
        role=item["role"]["S"],
        content=item["content"]["S"],
        intent=None if intent is None else intent["S"],
        attributes=json.loads(item["attributes"]["S"]),
        created_at_ms=int(item["created_at_ms"]["N"]),
        expires_at=int(item["expires_at"]["N"]),
        version=0 if version is None else int(version["N"]),
    )


def _record_dict(record: TurnRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__struct_fields__}


class OrderedDictLRU:
    """The baseline L1: an LRU over an OrderedDict, bounded in entries, no byte accounting."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, object] = OrderedDict()
        self._max = max_entries

    def get(self, key: str) -> object | None:
        """The value (marked most recently used), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: object) -> None:
        """Store a value, evicting the least recently used beyond the bound."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


# ---------------------------------------------------------------------------- figures


def _codec_figures(meta: MetaRecord, turns: list[TurnRecord]) -> list[Figure]:
    pair = turns[-2:]
    encoder = msgspec.json.Encoder().encode  # the lean path's: one Encoder, reused
    request = Figure(
        "codec: append request (META + 2 TURN items -> TransactWriteItems JSON)",
        Op("memsdk: dynamodb_items + msgspec", lambda: encoder(_transact_params(meta, pair))),
        (Op("stdlib json", lambda: _stdlib_dumps(_transact_params(meta, pair))),),
        "both build the items with memsdk.store.dynamodb_items (the same dicts); they differ "
        "in the encoder: msgspec.json.Encoder (the lean path's) against json.dumps",
    )
    newest = turns[-WINDOW:][::-1]
    body = encoder({"Items": [turn_to_item(SESSION_ID, t) for t in newest], "Count": WINDOW})
    decoder = msgspec.json.Decoder(QueryTurnsResponse).decode  # cached per type, as there

    def memsdk_reply() -> list[TurnRecord]:
        return [wire_to_turn(item) for item in decoder(body).Items]

    def stdlib_reply() -> list[TurnRecord]:
        return [_stdlib_turn(item) for item in json.loads(body)["Items"]]

    if memsdk_reply() != stdlib_reply():
        raise RuntimeError("micro: the two Query decoders disagree")
    reply = Figure(
        f"codec: Query reply ({WINDOW} TURN items -> TurnRecords)",
        Op("memsdk: msgspec Structs + wire_to_turn", memsdk_reply),
        (Op("stdlib json + dict walk", stdlib_reply),),
        f"a {len(body):,}-byte reply of {WINDOW} seed turns; the baseline walks json.loads' "
        "dicts by hand into the same TurnRecords, without memsdk's type checks",
    )
    return [request, reply]


def _wal_figures(turns: list[TurnRecord]) -> list[Figure]:
    pair = turns[-2:]
    payload = encode_append(SESSION_ID, CUSTOMER_ID, pair)
    entry = buffered_append(1, SESSION_ID, CUSTOMER_ID, pair, payload, 0)

    def stdlib_encode() -> bytes:
        record = {
            "type": "append",
            "session_id": SESSION_ID,
            "customer_id": CUSTOMER_ID,
            "turns": [_record_dict(t) for t in pair],
        }
        return _stdlib_dumps(record)

    def stdlib_decode() -> list[TurnRecord]:
        return [TurnRecord(**t) for t in json.loads(payload)["turns"]]

    if entry.turns() != stdlib_decode() or json.loads(stdlib_encode()) != json.loads(payload):
        raise RuntimeError("micro: the WAL payload baselines do not match memsdk's record")
    return [
        Figure(
            "WAL record: encode an append (2 turns)",
            Op(
                "memsdk: write_buffer.encode_append",
                lambda: encode_append(SESSION_ID, CUSTOMER_ID, pair),
            ),
            (Op("stdlib json", stdlib_encode),),
            f"the {len(payload):,}-byte JSON payload of one buffered append (what the log "
            "fsyncs); the baseline writes the same JSON with json.dumps",
        ),
        Figure(
            "WAL record: decode an append's turns",
            Op("memsdk: BufferedAppend.turns()", entry.turns),
            (Op("stdlib json + TurnRecord(**fields)", stdlib_decode),),
            "what the flusher and the read-your-writes overlay do per pending record",
        ),
    ]


def _l1_figures(meta: MetaRecord, turns: list[TurnRecord]) -> list[Figure]:
    newest = tuple(rules.to_public_turn(t) for t in reversed(turns))
    sizes = tuple(turn_size(t) for t in newest)
    public_meta = rules.to_public_meta(meta)
    sids = [f"sess-micro-{i:06d}" for i in range(L1_SESSIONS)]
    cache = ContextCache(1 << 30)
    lru = OrderedDictLRU(L1_SESSIONS)
    for sid in sids:
        cache.put(sid, meta, public_meta, None, newest, complete=False, depth=WINDOW)
        lru.put(sid, (meta, public_meta, None, newest[:WINDOW]))
    # itertools.cycle costs the same on both sides; it keeps the key from being the hot one.
    get_keys, get_keys_lru = itertools.cycle(sids), itertools.cycle(sids)
    put_keys, put_keys_lru = itertools.cycle(sids), itertools.cycle(sids)

    def memsdk_put() -> object:
        # The write path's put: the window grown by an append's 2 turns, trimmed to depth.
        return cache.put(
            next(put_keys),
            meta,
            public_meta,
            None,
            newest,
            complete=False,
            depth=WINDOW,
            turn_bytes=sizes,
        )

    def lru_put() -> None:
        lru.put(next(put_keys_lru), (meta, public_meta, None, newest[:WINDOW]))

    note = (
        f"{L1_SESSIONS:,} warm sessions of {WINDOW} seed turns, keys cycled; the baseline "
        "is an OrderedDict LRU bounded in entries (no byte accounting)"
    )
    return [
        Figure(
            "L1: get (hit)",
            Op("memsdk: ContextCache.get", lambda: cache.get(next(get_keys))),
            (Op("OrderedDict LRU", lambda: lru.get(next(get_keys_lru))),),
            note,
        ),
        Figure(
            f"L1: put (window of {WINDOW} turns after an append)",
            Op("memsdk: ContextCache.put", memsdk_put),
            (Op("OrderedDict LRU", lru_put),),
            note + "; memsdk's put also sizes META (one msgspec encode) and trims the window, "
            "the turn sizes come from the write path as in MemoryClient",
        ),
    ]


def _id_figure(turns: list[TurnRecord]) -> Figure:
    generator = TurnIdGenerator(lambda: time.time_ns() // 1_000_000)
    newest = turns[-1].turn_id

    def uuid4_pair() -> list[str]:
        return [uuid.uuid4().hex, uuid.uuid4().hex]

    def epoch_ms_pair() -> list[str]:
        now = str(time.time_ns() // 1_000_000)
        return [now, now]

    return Figure(
        "turn ids: 2 ids for an append",
        Op(
            "memsdk: TurnIdGenerator.next_ids(2, after=...)",
            lambda: generator.next_ids(2, after=newest),
        ),
        (Op("uuid.uuid4().hex x2", uuid4_pair), Op("epoch ms (the seed's ids)", epoch_ms_pair)),
        "memsdk's ids are sortable and monotonic per session (after= the session's newest "
        "id); uuid4 is unique but unordered; the seed's epoch-ms ids collide within a "
        "millisecond (architecture.md, turn ids): the floor, not an alternative",
    )


def figures() -> list[Figure]:
    """Every micro figure, with its fixtures built."""
    meta, turns = _records(time.time_ns() // 1_000_000)
    return [
        *_codec_figures(meta, turns),
        *_wal_figures(turns),
        *_l1_figures(meta, turns),
        _id_figure(turns),
    ]


# ---------------------------------------------------------------------------- measure


def _timer(call: Callable[[], object]) -> timeit.Timer:
    # This thread's CPU time, not wall time: on the shared 2-core machine a batch is often
    # descheduled midway, which inflates a wall-clock batch (by 2-5x under load, seen here)
    # and would make the medians follow other processes rather than the code.
    return timeit.Timer(call, timer=time.thread_time)


def calibrate(call: Callable[[], object], batch_s: float) -> int:
    """Calls per batch so that a batch costs about `batch_s` of CPU (timeit's autorange)."""
    timer = _timer(call)
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= batch_s / 5:
            return max(1, round(number * batch_s / elapsed))
        number *= 5


def measure(figure: Figure, ms: MicroSettings) -> dict[str, Any]:
    """Time a figure's candidates, interleaved batch by batch; its report entry."""
    started = time.perf_counter()
    ops = [figure.memsdk, *figure.baselines]
    numbers = {op.name: calibrate(op.call, ms.batch_s) for op in ops}
    timers = {op.name: _timer(op.call) for op in ops}
    for r in range(ms.warmup):
        for op in _rotated(ops, r):
            timers[op.name].timeit(numbers[op.name])
    gc.collect()
    ns: dict[str, list[float]] = {op.name: [] for op in ops}
    for r in range(ms.rounds):
        for op in _rotated(ops, r):
            n = numbers[op.name]
            ns[op.name].append(timers[op.name].timeit(n) / n * 1e9)
    reps = 1_000
    mine = ns[figure.memsdk.name]
    ratios = [
        _row(
            f"{figure.memsdk.name.split(':')[0]} / {base.name}",
            statistics.median(mine) / statistics.median(ns[base.name]),
            ratio_interval(mine, ns[base.name], reps=reps),
            None,
        )
        for base in figure.baselines
    ]
    return {
        "name": f"micro: {figure.name}",
        "kind": "micro",
        "backend": "in process",
        "samples": ms.rounds,
        "warmup": ms.warmup,
        "elapsed_s": time.perf_counter() - started,
        "candidates": {
            op.name: {
                "ns_per_op": summary(ns[op.name]),
                "ops_per_batch": numbers[op.name],
                "batches": len(ns[op.name]),
                "samples_ns": [round(v, 1) for v in ns[op.name]],
            }
            for op in ops
        },
        "ratios": ratios,
        "notes": [figure.note],
    }


async def run_micro(settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """Every micro figure; needs no server (async only to sit beside the other suites)."""
    ms = micro_settings_for(settings)
    results = []
    for figure in figures():
        progress(f"micro: {figure.name}: {ms.warmup} + {ms.rounds} batches per candidate")
        results.append(measure(figure, ms))
    return results
