"""The data-path benchmarks: what one DynamoDB call costs the client, per data path.

Four benchmarks, on top of benchmarks.core's method (baseline in the same run, candidates
interleaved with a rotating order, warm-up first, medians, bootstrap intervals):

- **CPU per call** (instant server): GetItem, PutItem, UpdateItem, TransactWriteItems
  (META + 2 TURN puts) and a 20-item Query, each sent by memsdk's lean data path
  (`LeanDataPath.call`), memsdk's aioboto3 data path (`Aioboto3DataPath.call`) and a raw
  aioboto3 client (`client.get_item(**params)`, no memsdk) with the same botocore Config.
  One round = one batch of sequential calls per candidate; CPU per call is
  time.process_time_ns over the batch. The server (benchmarks.instant_server) answers at
  once from another process, so what is measured is the client's own CPU.
- **per call (DynamoDB Local)**: the same five operations against DynamoDB Local: wall time
  and CPU per call.
- **pool starvation**: waves of 64 concurrent GetItem calls, per-call latency p50 / p99, on
  the instant server and on DynamoDB Local; memsdk's paths with their default pool of 64
  against raw aioboto3 with botocore's default Config (a pool of 10): the "before".
- **SDK CPU per seed message** (instant server): a MemoryClient's append_turns of a user /
  assistant pair + load_context(last_n=20) per message, lean and aioboto3 data paths, with
  the same DynamoDB calls made by hand on raw aioboto3 (benchmarks.core.RawMessage) as the
  baseline.

Requests are memsdk's own: a recording data path under memsdk's DynamoDBStore captures the
exact parameters the store hands its data path (get_meta, query_turns, a new session's
commit with and without turns); UpdateItem, which memsdk does not send, is built by hand.
Every write goes to a fresh key, so the same requests are valid on DynamoDB Local.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aioboto3

from benchmarks import instant_server
from benchmarks.core import (
    CUSTOMER_ID,
    WINDOW,
    Candidate,
    MemsdkMessage,
    Progress,
    RatioSpec,
    RawMessage,
    Settings,
    Wire,
    describe,
    dynamodb_url,
    interleave,
    memsdk_config,
    message_turns,
    quantile,
    raw_client_config,
    summary,
)
from benchmarks.core import _capture_memsdk as capture_memsdk
from benchmarks.core import _capture_raw as capture_raw
from benchmarks.core import _ratio as ratio_of
from benchmarks.core import _verdict as verdict
from memsdk import Config, MemoryClient
from memsdk import session as rules
from memsdk.config import DynamoDBStoreSpec
from memsdk.ids import TurnIdGenerator
from memsdk.records import META_SK
from memsdk.store.dynamodb import DynamoDBStore
from memsdk.store.dynamodb_aioboto3 import Aioboto3DataPath
from memsdk.store.dynamodb_items import (
    GetMetaResponse,
    QueryTurnsResponse,
    WriteResponse,
    key,
)
from memsdk.store.dynamodb_lean import LeanDataPath
from tests.harness.dynamodb_local import REGION, create_test_table

__all__ = ["FULL", "QUICK", "DataPathSettings", "run_all", "run_smoke", "settings_for"]

T = TypeVar("T")


def rotated(items: Sequence[T], r: int) -> list[T]:
    """core's rotation (A B C, B C A, C A B), for any kind of candidate."""
    shift = r % len(items)
    return [*items[shift:], *items[:shift]]


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class DataPathSettings:
    """Sample counts of the data-path benchmarks, per mode."""

    mode: str
    cpu_rounds: int  # CPU per call: rounds, one batch per candidate each
    cpu_batch: int  # CPU per call: sequential calls per batch
    cpu_warmup: int  # CPU per call: warm-up calls per candidate and operation
    local_rounds: int  # DynamoDB Local: rounds, one batch per candidate each
    local_batch: int  # DynamoDB Local: sequential calls per batch
    local_warmup: int  # DynamoDB Local: warm-up calls per candidate and operation
    waves: int  # pool starvation: measured waves per candidate and backend
    wave_warmup: int  # pool starvation: warm-up waves (they fill the pools)
    message_rounds: int  # seed message: measured messages per candidate
    message_warmup: int
    message_batch: int  # seed message: messages per CPU batch
    concurrency: int = 64  # calls per wave: memsdk's default pool size


QUICK = DataPathSettings(
    mode="quick",
    cpu_rounds=11,
    cpu_batch=20,
    cpu_warmup=30,
    local_rounds=10,
    local_batch=5,
    local_warmup=20,
    waves=12,
    wave_warmup=2,
    message_rounds=50,
    message_warmup=15,
    message_batch=5,
)
FULL = DataPathSettings(
    mode="full",
    cpu_rounds=21,
    cpu_batch=50,
    cpu_warmup=100,
    local_rounds=30,
    local_batch=10,
    local_warmup=50,
    waves=40,
    wave_warmup=3,
    message_rounds=300,
    message_warmup=30,
    message_batch=10,
)


def settings_for(settings: Settings) -> DataPathSettings:
    """The data-path counts of the run's mode (--samples/--warmup apply to core only)."""
    return QUICK if settings.mode == "quick" else FULL


# ---------------------------------------------------------------------------- requests

BENCH_TABLE = "bench"  # the instant server ignores it; DynamoDB Local has it created
LEAN = "memsdk lean path"
BOTO = "memsdk aioboto3 path"
RAW = "raw aioboto3"
RAW_DEFAULT = "raw aioboto3, botocore default Config"
_PAGE_CONTEXT = {"page": "search", "query": "horror manga", "filters": ["books", "manga"]}


@dataclass(frozen=True, slots=True)
class Operation:
    """One DynamoDB operation as the benchmarks send it."""

    name: str  # DynamoDB's name: the X-Amz-Target suffix and the data path's `operation`
    label: str  # how the tables call it
    method: str  # botocore's client method
    response_type: type[Any]  # the reply Struct memsdk decodes it into
    write: bool
    code: str  # one letter, in the session ids of the writes


OPERATIONS = (
    Operation("GetItem", "GetItem (META)", "get_item", GetMetaResponse, False, "g"),
    Operation("PutItem", "PutItem (META)", "put_item", WriteResponse, True, "p"),
    Operation("UpdateItem", "UpdateItem (META)", "update_item", WriteResponse, True, "u"),
    Operation(
        "TransactWriteItems",
        "TransactWriteItems (META + 2 TURN)",
        "transact_write_items",
        WriteResponse,
        True,
        "t",
    ),
    Operation("Query", f"Query ({WINDOW} TURN)", "query", QueryTurnsResponse, False, "q"),
)
GET_ITEM = OPERATIONS[0]


class _Recorder:
    """A data path that sends nothing: records what memsdk's store hands it."""

    description = "recorder"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to close."""

    async def call(
        self,
        operation: str,
        params: dict[str, Any],
        response_type: type[Any],
        *,
        write: bool,
        session_id: str | None = None,
    ) -> Any:
        """Record the call; answer with an empty reply (no item, no turns)."""
        self.sent.append((operation, params))
        return response_type()


class Requests:
    """The parameters memsdk sends for each operation; every write on a fresh key."""

    def __init__(self, table: str, config: Config) -> None:
        self._table = table
        self._config = config
        self._recorder = _Recorder()
        self._store = DynamoDBStore(DynamoDBStoreSpec(table, REGION, None), self._recorder)
        self._ids = TurnIdGenerator(lambda: time.time_ns() // 1_000_000)
        self._reads: dict[str, dict[str, Any]] = {}
        self._counter = itertools.count()

    async def build(self, op: Operation, tag: str) -> dict[str, Any]:
        """Parameters of one `op` call by candidate `tag` (reads: the same every time)."""
        if not op.write:
            cached = self._reads.get(op.name)
            if cached is None:
                cached = self._reads[op.name] = await self._read(op)
            return cached
        # Same length on every side: the same request sizes.
        sid = f"dp-{op.code}{tag}-{next(self._counter):08d}"
        now_ms = time.time_ns() // 1_000_000
        if op.name == "UpdateItem":
            return self._update(sid, now_ms)
        if op.name == "PutItem":  # update_meta on a new session: META alone, conditional
            write = rules.plan_update_meta(
                None,
                session_id=sid,
                page_context=_PAGE_CONTEXT,
                attributes=None,
                customer_id=CUSTOMER_ID,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
            )
        else:  # append_turns of the pair on a new session: META + 2 TURN, one transaction
            write = rules.plan_append(
                None,
                session_id=sid,
                turns=message_turns(),
                customer_id=CUSTOMER_ID,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
                retention_seconds=self._config.turn_retention_seconds,
                ids=self._ids,
            )
        return await self._captured(op, self._store.commit(write))

    async def _read(self, op: Operation) -> dict[str, Any]:
        sid = instant_server.SESSION_ID
        if op.name == "GetItem":
            # validated mode (the default) reads META strongly consistent
            call: Awaitable[Any] = self._store.get_meta(sid, consistent=True)
        else:  # the first page of load_context, eventually consistent in validated mode
            call = self._store.query_turns(sid, before_turn_id=None, limit=WINDOW, consistent=False)
        return await self._captured(op, call)

    async def _captured(self, op: Operation, call: Awaitable[Any]) -> dict[str, Any]:
        self._recorder.sent.clear()
        await call
        (sent_op, params), *more = self._recorder.sent
        if sent_op != op.name or more:
            raise RuntimeError(f"memsdk sent {self._recorder.sent!r}, expected one {op.name}")
        return params

    def _update(self, sid: str, now_ms: int) -> dict[str, Any]:
        # memsdk itself never sends UpdateItem: a META-sized update, as an app might write.
        return {
            "TableName": self._table,
            "Key": key(sid, META_SK),
            "UpdateExpression": "SET #upd = :now, #pc = :pc, #exp = :exp ADD #ver :one",
            "ConditionExpression": "attribute_not_exists(PK) OR #ver >= :zero",
            "ExpressionAttributeNames": {
                "#upd": "updated_at_ms",
                "#pc": "page_context",
                "#exp": "expires_at",
                "#ver": "version",
            },
            "ExpressionAttributeValues": {
                ":now": {"N": str(now_ms)},
                ":pc": {"S": _compact_json(_PAGE_CONTEXT)},
                ":exp": {"N": str(now_ms // 1000 + self._config.ttl_seconds)},
                ":one": {"N": "1"},
                ":zero": {"N": "0"},
            },
        }


def _compact_json(value: dict[str, Any]) -> str:
    """JSON text as memsdk stores page_context (compact)."""
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------------------- candidates

Send = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CallCandidate:
    """One client: `bind(op)` returns the function that sends `op` with given params."""

    name: str
    tag: str  # one letter: keeps the keys its writes use apart from the other candidates'
    bind: Callable[[Operation], Send]
    decoded: bool  # True: replies are memsdk Structs; False: botocore dicts


def path_candidate(name: str, tag: str, path: Any) -> CallCandidate:
    """A memsdk data path: path.call(op, params, reply Struct, write=...)."""

    def bind(op: Operation) -> Send:
        call, operation, response_type, write = path.call, op.name, op.response_type, op.write
        return lambda params: call(operation, params, response_type, write=write)

    return CallCandidate(name, tag, bind, decoded=True)


def raw_candidate(name: str, tag: str, client: Any) -> CallCandidate:
    """A raw aioboto3 client: client.get_item(**params), the reply as botocore parsed it."""

    def bind(op: Operation) -> Send:
        method = getattr(client, op.method)
        return lambda params: method(**params)

    return CallCandidate(name, tag, bind, decoded=False)


def _check_reply(candidate: CallCandidate, op: Operation, reply: Any) -> None:
    """The first reply of each candidate and operation: the expected item, or 20 turns."""
    if op.name == "GetItem":
        found = reply.Item is not None if candidate.decoded else "Item" in reply
        ok = found
    elif op.name == "Query":
        items = reply.Items if candidate.decoded else reply.get("Items", [])
        ok = len(items) == WINDOW
    else:
        ok = True
    if not ok:
        raise RuntimeError(f"{candidate.name}: unexpected {op.name} reply: {reply!r}"[:500])


def path_options(config: Config) -> dict[str, Any]:
    """The data path options memsdk.client.build_store derives from `config`."""
    return {
        "max_pool_connections": config.max_pool_connections,
        "connect_timeout": config.connect_timeout,
        "read_timeout": max(config.read_timeout, config.write_timeout),
        "max_attempts": config.store_max_attempts,
    }


async def _open_candidates(
    stack: AsyncExitStack, endpoint: str, table: str, config: Config
) -> list[CallCandidate]:
    """lean path, aioboto3 path and raw aioboto3 (memsdk's botocore Config), all open."""
    spec = DynamoDBStoreSpec(table, REGION, endpoint)
    lean = LeanDataPath(spec, **path_options(config))
    boto = Aioboto3DataPath(spec, **path_options(config))
    for path in (lean, boto):
        await path.open()
        stack.push_async_callback(path.aclose)
    client = await stack.enter_async_context(
        aioboto3.Session().client(
            "dynamodb", region_name=REGION, endpoint_url=endpoint, config=raw_client_config(config)
        )
    )
    return [
        path_candidate(LEAN, "l", lean),
        path_candidate(BOTO, "b", boto),
        raw_candidate(RAW, "r", client),
    ]


# ---------------------------------------------------------------------------- per call


@dataclass(slots=True)
class _PerCall:
    cpu_ms: list[float] = field(default_factory=list)  # CPU per call, one value per batch
    wall_ms: list[float] = field(default_factory=list)  # one value per call


async def _batch(send: Send, batch: Sequence[dict[str, Any]]) -> tuple[int, list[int]]:
    """Send the calls one after the other: (CPU ns of the whole batch, wall ns per call)."""
    walls: list[int] = []
    cpu0 = time.process_time_ns()
    for params in batch:
        t0 = time.perf_counter_ns()
        await send(params)
        walls.append(time.perf_counter_ns() - t0)
    return time.process_time_ns() - cpu0, walls


async def measure_calls(
    candidates: Sequence[CallCandidate],
    requests: Requests,
    *,
    rounds: int,
    batch: int,
    warmup: int,
    progress: Progress,
    label: str,
    operations: Sequence[Operation] = OPERATIONS,
) -> dict[str, dict[str, _PerCall]]:
    """Per operation: warm-up, then `rounds` rounds of one batch per candidate, rotating."""
    results: dict[str, dict[str, _PerCall]] = {}
    for op in operations:
        progress(f"{label}: {op.label}: {warmup} warm-up calls + {rounds} x {batch} measured")
        sends = {c.name: c.bind(op) for c in candidates}
        for r in range(max(warmup, 1)):
            for c in rotated(candidates, r):
                reply = await sends[c.name](await requests.build(op, c.tag))
                if r == 0:
                    _check_reply(c, op, reply)
        out = {c.name: _PerCall() for c in candidates}
        gc.collect()
        for r in range(rounds):
            for c in rotated(candidates, r):
                params = [await requests.build(op, c.tag) for _ in range(batch)]
                cpu_ns, walls = await _batch(sends[c.name], params)
                out[c.name].cpu_ms.append(cpu_ns / batch / 1e6)
                out[c.name].wall_ms.extend(w / 1e6 for w in walls)
        results[op.name] = out
    return results


def describe_calls(
    results: dict[str, dict[str, _PerCall]],
    settings: Settings,
    *,
    cpu_goal: float | None,
    wall_ratio: bool,
) -> dict[str, Any]:
    """Summaries per operation and candidate; ratios lean / raw and aioboto3 path / raw."""
    operations: dict[str, Any] = {}
    ratios: list[dict[str, Any]] = []
    for op in OPERATIONS:
        per = results.get(op.name)
        if per is None:  # not measured in this run (the smoke measures a subset)
            continue
        operations[op.label] = {
            name: {
                "cpu_ms_per_call": summary(s.cpu_ms),
                "wall_ms": summary(s.wall_ms),
                "batches": len(s.cpu_ms),
                "calls": len(s.wall_ms),
                "samples_cpu_ms_per_call": [round(v, 5) for v in s.cpu_ms],
            }
            for name, s in per.items()
        }
        lean, boto, raw = per[LEAN], per[BOTO], per[RAW]
        ratios.append(
            ratio_of(f"{op.label}: CPU lean / raw", lean.cpu_ms, raw.cpu_ms, settings, cpu_goal)
        )
        ratios.append(
            ratio_of(
                f"{op.label}: CPU aioboto3 path / raw", boto.cpu_ms, raw.cpu_ms, settings, None
            )
        )
        if wall_ratio:
            ratios.append(
                ratio_of(f"{op.label}: wall lean / raw", lean.wall_ms, raw.wall_ms, settings, None)
            )
    return {"operations": operations, "ratios": ratios}


async def bench_cpu_per_call(
    server: instant_server.InstantServer,
    settings: Settings,
    dp: DataPathSettings,
    progress: Progress,
    operations: Sequence[Operation] = OPERATIONS,
) -> dict[str, Any]:
    """CPU per call of each data path against the instant server, raw aioboto3 as baseline."""
    started = time.perf_counter()
    config = memsdk_config(dynamodb_url(BENCH_TABLE, server.endpoint))
    async with AsyncExitStack() as stack:
        candidates = await _open_candidates(stack, server.endpoint, BENCH_TABLE, config)
        results = await measure_calls(
            candidates,
            Requests(BENCH_TABLE, config),
            rounds=dp.cpu_rounds,
            batch=dp.cpu_batch,
            warmup=dp.cpu_warmup,
            progress=progress,
            label="CPU per call",
            operations=operations,
        )
    out = describe_calls(results, settings, cpu_goal=0.4, wall_ratio=False)
    return {
        "name": "CPU per call (instant server)",
        "kind": "per call",
        "backend": "instant server",
        "samples": dp.cpu_rounds * dp.cpu_batch,
        "warmup": dp.cpu_warmup,
        "elapsed_s": time.perf_counter() - started,
        "pinning": server.describe(),
        "notes": [
            f"{dp.cpu_rounds} rounds x {dp.cpu_batch} sequential calls per candidate and "
            "operation, candidates interleaved batch by batch (rotating order); CPU per call "
            "= time.process_time_ns of this process over a batch / calls, median of batches",
            f"{LEAN} = LeanDataPath.call, {BOTO} = Aioboto3DataPath.call (both decode into "
            f"memsdk's reply Structs), {RAW} = client.<op>(**params) with the botocore Config "
            "of memsdk's aioboto3 path, reply left as botocore parsed it; same parameters "
            "(captured from memsdk's DynamoDBStore), same canned replies",
            f"{server.describe()}: the figures are client CPU only (the server's CPU is not "
            "counted and it answers at once); goal for lean / raw: <= 0.40 (upper CI bound)",
        ],
        **out,
    }


async def bench_local_calls(
    endpoint: str, settings: Settings, dp: DataPathSettings, progress: Progress
) -> dict[str, Any]:
    """The same five operations against DynamoDB Local: wall and CPU per call."""
    started = time.perf_counter()
    table = "dp_calls"
    await create_test_table(endpoint, table)
    config = memsdk_config(dynamodb_url(table, endpoint))
    await seed_session(endpoint, table)
    async with AsyncExitStack() as stack:
        candidates = await _open_candidates(stack, endpoint, table, config)
        results = await measure_calls(
            candidates,
            Requests(table, config),
            rounds=dp.local_rounds,
            batch=dp.local_batch,
            warmup=dp.local_warmup,
            progress=progress,
            label="per call (DynamoDB Local)",
        )
    out = describe_calls(results, settings, cpu_goal=None, wall_ratio=True)
    return {
        "name": "per call (DynamoDB Local)",
        "kind": "per call",
        "backend": "DynamoDB Local",
        "samples": dp.local_rounds * dp.local_batch,
        "warmup": dp.local_warmup,
        "elapsed_s": time.perf_counter() - started,
        "notes": [
            f"{dp.local_rounds} rounds x {dp.local_batch} sequential calls per candidate and "
            "operation, interleaved; GetItem / Query read a seeded 20-turn session (the "
            "instant server's items), every write goes to a fresh session (conditions hold)",
            "wall includes DynamoDB Local's own time (a JVM on the same cores, not pinned); "
            "CPU is this process only",
        ],
        **out,
    }


async def seed_session(endpoint: str, table: str) -> None:
    """Write the instant server's META and 20 TURN items to `table` (GetItem / Query targets)."""
    meta, turns = instant_server.canned_items()
    async with aioboto3.Session().client(
        "dynamodb", region_name=REGION, endpoint_url=endpoint
    ) as client:
        for item in (meta, *turns):
            await client.put_item(TableName=table, Item=item)


# ---------------------------------------------------------------------------- pool starvation


async def _wave(send: Send, params: dict[str, Any], concurrency: int) -> list[float]:
    """`concurrency` calls at once; the latency of each, in ms."""
    latencies: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter_ns()
        await send(params)
        latencies.append((time.perf_counter_ns() - t0) / 1e6)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies


class _GcWatch:
    """Gen-2 garbage collections (count, ms) per candidate, while `current` is set."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.passes: dict[str, list[float]] = {}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        elif self.current is not None:
            ms = (time.perf_counter() - self._start) * 1e3
            self.passes.setdefault(self.current, []).append(ms)

    @contextmanager
    def installed(self) -> Iterator[_GcWatch]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)


def _in_wave(waves: Sequence[Sequence[float]]) -> list[float]:
    """p99 / p50 of each wave on its own."""
    return [quantile(w, 0.99) / quantile(w, 0.5) for w in waves]


def _median_interval(values: Sequence[float], reps: int, seed: int = 7) -> tuple[float, float]:
    """95% bootstrap interval of the median of `values` (one per wave)."""
    rng = random.Random(seed)
    medians = [statistics.median(rng.choices(values, k=len(values))) for _ in range(reps)]
    return quantile(medians, 0.025), quantile(medians, 0.975)


def _tail_interval(
    waves: Sequence[Sequence[float]], reps: int, seed: int = 7
) -> tuple[float, float]:
    """95% bootstrap interval of p99 / p50, resampling whole waves (a wave's calls interact)."""
    rng = random.Random(seed)
    indices = range(len(waves))
    ratios = []
    for _ in range(reps):
        values = sorted(v for i in rng.choices(indices, k=len(waves)) for v in waves[i])
        ratios.append(quantile(values, 0.99) / quantile(values, 0.5))
    return quantile(ratios, 0.025), quantile(ratios, 0.975)


async def bench_pool_starvation(
    endpoint: str,
    backend: str,
    settings: Settings,
    dp: DataPathSettings,
    progress: Progress,
    *,
    table: str = BENCH_TABLE,
    pinning: str | None = None,
) -> dict[str, Any]:
    """Waves of 64 concurrent GetItem: latency p50 / p99 per data path and pool."""
    started = time.perf_counter()
    config = memsdk_config(dynamodb_url(table, endpoint))
    spec = DynamoDBStoreSpec(table, REGION, endpoint)
    pools = {LEAN: config.max_pool_connections, BOTO: config.max_pool_connections}
    async with AsyncExitStack() as stack:
        lean = LeanDataPath(spec, **path_options(config))
        boto = Aioboto3DataPath(spec, **path_options(config))
        for path in (lean, boto):
            await path.open()
            stack.push_async_callback(path.aclose)
        client = await stack.enter_async_context(
            aioboto3.Session().client("dynamodb", region_name=REGION, endpoint_url=endpoint)
        )
        pools[RAW_DEFAULT] = client.meta.config.max_pool_connections  # botocore's: 10
        candidates = [
            path_candidate(LEAN, "l", lean),
            path_candidate(BOTO, "b", boto),
            raw_candidate(RAW_DEFAULT, "d", client),
        ]
        params = await Requests(table, config).build(GET_ITEM, "-")
        sends = {c.name: c.bind(GET_ITEM) for c in candidates}
        for c in candidates:
            _check_reply(c, GET_ITEM, await sends[c.name](params))
        label = f"pool starvation ({backend})"
        progress(
            f"{label}: {dp.wave_warmup} warm-up + {dp.waves} waves of {dp.concurrency} "
            "concurrent GetItem per candidate"
        )
        for r in range(dp.wave_warmup):
            for c in rotated(candidates, r):
                await _wave(sends[c.name], params, dp.concurrency)
        waves: dict[str, list[list[float]]] = {c.name: [] for c in candidates}
        # The harness's heap (every client's botocore models, earlier results) would make
        # each gen-2 pass stall a wave for ~50-150 ms, whoever's allocation triggers it:
        # freeze what exists now, so collections only scan what the waves allocate.
        gc.collect()
        gc.freeze()
        try:
            with _GcWatch().installed() as watch:
                for r in range(dp.waves):
                    for c in rotated(candidates, r):
                        watch.current = c.name
                        waves[c.name].append(await _wave(sends[c.name], params, dp.concurrency))
                        watch.current = None
        finally:
            gc.unfreeze()
    out: dict[str, Any] = {}
    ratios: list[dict[str, Any]] = []
    for name, per_wave in waves.items():
        flat = [v for wave in per_wave for v in wave]
        p50, p99 = quantile(flat, 0.5), quantile(flat, 0.99)
        out[name] = {
            "pool": pools[name],
            "calls": len(flat),
            "latency_ms": {**summary(flat), "p50": p50, "p99": p99},
            "p99_over_p50": p99 / p50,
            # Within one wave, median over waves: blind to drift between waves (the shared
            # machine, the JVM), which the pooled ratio above also contains.
            "wave_p99_over_p50": statistics.median(_in_wave(per_wave)),
            "wave_ms": summary([max(w) for w in per_wave]),
            "gc_gen2_ms": [round(v, 2) for v in watch.passes.get(name, [])],
            "samples_ms": [[round(v, 3) for v in wave] for wave in per_wave],
        }
        goal = None if name == RAW_DEFAULT else 3.0
        in_wave = _in_wave(per_wave)
        for label, value, (low, high) in (
            ("p99 / p50 latency", p99 / p50, _tail_interval(per_wave, settings.bootstrap)),
            (
                "in-wave p99 / p50 (median of waves)",
                statistics.median(in_wave),
                _median_interval(in_wave, settings.bootstrap),
            ),
        ):
            ratios.append(
                {
                    "name": f"{label}, {name} (pool {pools[name]})",
                    "value": value,
                    "ci95": [low, high],
                    "goal": goal,
                    "within_goal": None if goal is None else value <= goal,
                    "verdict": verdict(low, high, goal),
                }
            )
    notes = [
        f"{dp.waves} waves of {dp.concurrency} concurrent GetItem(META) per candidate, "
        "candidates interleaved wave by wave, after warm-up waves that fill the pools; "
        "latency of each call from its start, all calls of a wave start together",
        f"memsdk's paths with Config defaults for the pool (max_pool_connections="
        f"{config.max_pool_connections}); '{RAW_DEFAULT}' = aioboto3 with botocore's defaults "
        f"(pool of {pools[RAW_DEFAULT]}, legacy retries, 60 s timeouts): the 'before'; "
        "goal p99 / p50 <= 3 for memsdk's paths",
    ]
    gc_passes = ", ".join(
        f"{name} {len(watch.passes.get(name, []))} ({sum(watch.passes.get(name, [])):.0f} ms)"
        for name in waves
    )
    notes.append(
        "gen-2 garbage collections during the measured waves (the harness's heap is frozen "
        f"first with gc.freeze(); a pass stalls every call of its wave): {gc_passes}"
    )
    if pinning is not None:
        notes.append(pinning)
    return {
        "name": f"pool starvation ({backend})",
        "kind": "latency",
        "backend": backend,
        "samples": dp.waves * dp.concurrency,
        "warmup": dp.wave_warmup,
        "elapsed_s": time.perf_counter() - started,
        "candidates": out,
        "ratios": ratios,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- seed message


async def bench_seed_message(
    server: instant_server.InstantServer,
    settings: Settings,
    dp: DataPathSettings,
    progress: Progress,
) -> dict[str, Any]:
    """memsdk's CPU per message (append of a pair + load of 20) on the instant server."""
    started = time.perf_counter()
    store = dynamodb_url(BENCH_TABLE, server.endpoint)
    lean_config = Config(store=store, read_timeout=5, write_timeout=5)
    boto_config = Config(
        store=store, read_timeout=5, write_timeout=5, dynamodb_data_path="aioboto3"
    )
    lean_name = "memsdk, lean data path (default)"
    boto_name = "memsdk, aioboto3 data path"

    def session_of(_: int) -> str:
        return instant_server.SESSION_ID

    async with (
        MemoryClient(lean_config) as lean_mem,
        MemoryClient(boto_config) as boto_mem,
        aioboto3.Session().client(
            "dynamodb",
            region_name=REGION,
            endpoint_url=server.endpoint,
            config=raw_client_config(boto_config),
        ) as client,
    ):
        candidates: list[Candidate] = [
            MemsdkMessage(lean_name, lean_mem, session_of),
            MemsdkMessage(boto_name, boto_mem, session_of),
            RawMessage(
                client,
                BENCH_TABLE,
                session_of,
                boto_config.ttl_seconds,
                boto_config.turn_retention_seconds,
            ),
        ]

        def check(index: int, loaded: dict[str, int]) -> None:
            if set(loaded.values()) != {WINDOW}:
                raise RuntimeError(f"message {index}: loaded {loaded}, expected {WINDOW}")

        progress(
            f"SDK CPU per seed message: {dp.message_warmup} warm-up + {dp.message_rounds} "
            "measured rounds"
        )
        await interleave(
            candidates, first_index=0, warmup=dp.message_warmup, samples=0, check=check
        )
        # Two probe rounds, outside the measurement: which calls each side makes per message.
        wire: dict[str, Wire] = {c.name: {} for c in candidates}
        undo = [capture_raw(client, wire[RawMessage.name])]
        hooked = [
            capture_memsdk(lean_mem, wire[lean_name]),
            capture_memsdk(boto_mem, wire[boto_name]),
        ]
        undo += [u for u in hooked if u is not None]
        try:
            await interleave(
                candidates, first_index=dp.message_warmup, warmup=2, samples=0, check=check
            )
        finally:
            for u in undo:
                u()
        calls = {name: {op: len(v) / 2 for op, v in w.items()} for name, w in wire.items()}
        results = await interleave(
            candidates,
            first_index=dp.message_warmup + 2,
            warmup=0,
            samples=dp.message_rounds,
            check=check,
        )
    scaled = dataclasses.replace(
        settings, samples=dp.message_rounds, warmup=dp.message_warmup, cpu_batch=dp.message_batch
    )
    out = describe(
        results,
        scaled,
        [
            RatioSpec("memsdk lean / raw (instant server)", lean_name, RawMessage.name, None),
            RatioSpec("memsdk aioboto3 / raw (instant server)", boto_name, RawMessage.name, None),
        ],
    )
    lean_cpu = out["candidates"][lean_name]["cpu_ms_per_message"]["median"]
    boto_cpu = out["candidates"][boto_name]["cpu_ms_per_message"]["median"]
    return {
        "name": "SDK CPU per seed message (instant server)",
        "backend": "instant server",
        "samples": dp.message_rounds,
        "warmup": dp.message_warmup,
        "elapsed_s": time.perf_counter() - started,
        "cpu_ms_per_message": {lean_name: lean_cpu, boto_name: boto_cpu},
        "calls_per_message": calls,
        "notes": [
            "one message = append_turns(user + assistant pair) then load_context(last_n=20) "
            "on one warm 20-turn session (GetItem + one Query: the canned ids need no second "
            "query), MemoryClient(Config(store=dynamodb://bench?...&endpoint=<instant "
            "server>, read_timeout=5, write_timeout=5)); baseline: the same calls by hand on "
            "raw aioboto3 (benchmarks.core.RawMessage)",
            f"SDK CPU per message: lean {lean_cpu:.3f} ms, aioboto3 path {boto_cpu:.3f} ms "
            "(goal for the finished SDK: <= 0.5 ms with the lean path; reported, not judged)",
            f"DynamoDB calls per message (2 probe rounds): {calls}"
            + ("" if None not in hooked else " (WARNING: a memsdk store could not be observed)"),
            "the canned META never carries the client's own last write, so memsdk's L1 window "
            "never validates here: every load is a miss (GetItem, then Query), the upper bound "
            "of a message's CPU",
            f"{server.describe()}: wall times are client-bound, CPU is client-only",
        ],
        **out,
    }


# ---------------------------------------------------------------------------- suite


@contextmanager
def _instant(progress: Progress) -> Iterator[instant_server.InstantServer]:
    with instant_server.running() as server:
        progress(f"{server.describe()} ({server.endpoint})")
        with instant_server.pinned(server.client_cpu):
            yield server


async def run_smoke(settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """The CI smoke's share: CPU per call of the hot path's calls against the instant server."""
    hot = [op for op in OPERATIONS if op.name in ("GetItem", "TransactWriteItems", "Query")]
    with _instant(progress) as server:
        dp = settings_for(settings)
        return [await bench_cpu_per_call(server, settings, dp, progress, operations=hot)]


async def run_all(endpoint: str, settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """Every data-path benchmark; DynamoDB Local must be running at `endpoint`."""
    dp = settings_for(settings)
    with _instant(progress) as server:
        per_call = await bench_cpu_per_call(server, settings, dp, progress)
        starved = await bench_pool_starvation(
            server.endpoint,
            "instant server",
            settings,
            dp,
            progress,
            pinning=f"{server.describe()}: latency here is client CPU and queueing only",
        )
        message = await bench_seed_message(server, settings, dp, progress)
    local = await bench_local_calls(endpoint, settings, dp, progress)
    await create_test_table(endpoint, "dp_pool")
    await seed_session(endpoint, "dp_pool")
    starved_local = await bench_pool_starvation(
        endpoint, "DynamoDB Local", settings, dp, progress, table="dp_pool"
    )
    return [per_call, local, starved, starved_local, message]
