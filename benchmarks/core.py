"""The core benchmarks: SDK overhead against raw aioboto3, and session-length independence.

Method (the team's rules):

- every figure is a ratio against a baseline measured in the same run, never an absolute
  time compared to a threshold;
- candidates are interleaved, one message each per round, and the order inside a round
  rotates (A B, B A, ...), so that noise on this 2-core machine (the JVM of DynamoDB
  Local, GC, other processes) falls on both alike;
- each benchmark warms up first (Python import and model loading, connection pools, the
  JVM's JIT), then measures; we quote medians and p90, and the ratio of the medians with
  a bootstrap 95% interval (rounds resampled with replacement);
- CPU per message is this process's CPU (time.process_time_ns, every thread included,
  DynamoDB Local excluded: it is another process), summed over batches of rounds.

A "message" is what an orchestrator does per user message in the seed workload: append a
user + assistant pair (~0.8 KB and ~2 KB of text, the assistant with a small attributes
dict), then load the context (META and the newest 20 turns).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import random
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aioboto3
from botocore.config import Config as BotoConfig

from memsdk import Config, MemoryClient, Turn
from memsdk.ids import TurnIdGenerator
from memsdk.records import META_SK, TURN_PREFIX, MetaRecord, TurnRecord
from memsdk.store.dynamodb_items import key, meta_to_item, pk, turn_to_item
from tests.harness.dynamodb_local import REGION, create_test_table

__all__ = ["FULL", "QUICK", "SMOKE", "Settings", "run_all", "run_smoke"]

Progress = Callable[[str], None]

# ---------------------------------------------------------------------------- workload

CUSTOMER_ID = "C-bench-0001"
USER_INTENT = "product_discovery"
_USER_SENTENCE = (
    "I am looking for a horror manga series for my nephew, something with a strong story "
    "and not too graphic; he liked the first volumes of the one you showed me last week. "
)
_ASSISTANT_SENTENCE = (
    "Here are three horror manga that fit: a slow-burn village mystery with eerie art, a "
    "school ghost story that stays spooky rather than gory, and a classic anthology. "
)
USER_TEXT = (_USER_SENTENCE * 6)[:800]  # ~0.8 KB
ASSISTANT_TEXT = (_ASSISTANT_SENTENCE * 12)[:2000]  # ~2 KB
ASSISTANT_ATTRIBUTES: dict[str, Any] = {
    "cards": [
        {"asin": "B08X1YRSTR", "title": "Village of Whispers, Vol. 1", "price": 9.99},
        {"asin": "B07Q2MNKLP", "title": "After-School Ghosts, Vol. 1", "price": 12.5},
        {"asin": "B01ABCDXYZ", "title": "Tales of Dread (anthology)", "price": 14.0},
    ],
    "suggestions": ["Show me more like the first one", "Anything for younger readers?"],
}
WINDOW = 20  # load_context's default last_n: the newest 20 turns
TURNS_PER_MESSAGE = 2
MESSAGES_PER_SESSION = 10  # sdk overhead: sessions grow to 20 turns (the usual 6-20)
SHORT_LENGTH = 10
LONG_LENGTH = 1_000
PREFILL_BATCH = 50  # turns per append_turns while pre-filling (a commit holds at most 99)
PREFILL_CONCURRENCY = 8  # sessions pre-filled at once (each one's appends stay in order)
# Generous: the benchmark must never fail on a slow emulator; timeouts are not measured here.
TIMEOUT_S = 10.0


def message_turns() -> list[Turn]:
    """The user + assistant pair one message appends."""
    return [
        Turn(role="user", content=USER_TEXT, intent=USER_INTENT),
        Turn(role="assistant", content=ASSISTANT_TEXT, attributes=ASSISTANT_ATTRIBUTES),
    ]


def prefill_turns(count: int) -> list[Turn]:
    """`count` turns alternating user / assistant, the same sizes as a message's pair."""
    pair = message_turns()
    return [pair[i % 2] for i in range(count)]


def memsdk_config(store: str, **options: Any) -> Config:
    """The memsdk configuration every benchmark uses (defaults but for the timeouts)."""
    # A 50-turn pre-fill commit on a loaded emulator takes longer than the breaker's default
    # slow-call threshold (0.25 s): with it, pre-filling opens the store breaker.
    options.setdefault("breaker_slow_call", TIMEOUT_S)
    return Config(store=store, read_timeout=TIMEOUT_S, write_timeout=TIMEOUT_S, **options)


def dynamodb_url(table: str, endpoint: str) -> str:
    """A memsdk store URL for `table` on DynamoDB Local."""
    return f"dynamodb://{table}?region={REGION}&endpoint={endpoint}"


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Settings:
    """Sample counts of one run."""

    mode: str
    samples: int  # measured messages per candidate
    warmup: int  # warm-up messages per candidate, before measuring
    cpu_batch: int  # rounds per CPU batch
    long_sessions: int  # 1,000-turn sessions the long candidate rotates over
    server_warmup: int  # raw messages sent first, to warm DynamoDB Local's JIT
    # SQLite messages take ~1 ms and its fsyncs make them noisy: many more rounds, cheaply.
    sqlite_scale: int
    bootstrap: int = 1_000  # resamples for the ratio's 95% interval


QUICK = Settings(
    mode="quick",
    samples=60,
    warmup=10,
    cpu_batch=5,
    long_sessions=5,
    server_warmup=100,
    sqlite_scale=5,
)
# CI's smoke: quick counts with a shorter JIT warm-up (the smoke's wall-time budget).
SMOKE = dataclasses.replace(QUICK, server_warmup=40)
FULL = Settings(
    mode="full",
    samples=300,
    warmup=30,
    cpu_batch=10,
    long_sessions=10,
    server_warmup=300,
    sqlite_scale=3,
)


# ---------------------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p90 and friends of a list of milliseconds."""
    return {
        "median": statistics.median(values),
        "p90": quantile(values, 0.9),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], *, reps: int, seed: int = 7
) -> tuple[float, float]:
    """95% bootstrap interval of median(numerator) / median(denominator), pairs kept together.

    The samples are paired (measured in the same round), so rounds are resampled whole.
    """
    n = len(numerator)
    rng = random.Random(seed)
    indices = range(n)
    ratios = []
    for _ in range(reps):
        pick = rng.choices(indices, k=n)
        ratios.append(
            statistics.median([numerator[i] for i in pick])
            / statistics.median([denominator[i] for i in pick])
        )
    return quantile(ratios, 0.025), quantile(ratios, 0.975)


# ---------------------------------------------------------------------------- candidates


class Candidate(Protocol):
    """One side of a comparison: sends message number `index`."""

    name: str

    async def run(self, index: int) -> tuple[int, int]:
        """Send one message; return (turns loaded, nanoseconds spent writing)."""
        ...


class MemsdkMessage:
    """memsdk: append_turns of the pair, then load_context (newest 20, or `last_n`)."""

    def __init__(
        self,
        name: str,
        mem: MemoryClient,
        session_of: Callable[[int], str],
        *,
        last_n: int | None = None,
    ) -> None:
        self.name = name
        self._mem = mem
        self._session_of = session_of
        self._last_n = last_n

    async def run(self, index: int) -> tuple[int, int]:
        """Append the pair, then load the window."""
        sid = self._session_of(index)
        start = time.perf_counter_ns()
        await self._mem.append_turns(sid, message_turns(), customer_id=CUSTOMER_ID)
        written = time.perf_counter_ns()
        ctx = await self._mem.load_context(sid, customer_id=CUSTOMER_ID, last_n=self._last_n)
        return len(ctx.turns), written - start


def raw_client_config(config: Config) -> BotoConfig:
    """The botocore Config memsdk's DynamoDB store builds from `config` (same shape, values)."""
    return BotoConfig(
        retries={"mode": "standard", "total_max_attempts": config.store_max_attempts},
        max_pool_connections=config.max_pool_connections,
        connect_timeout=config.connect_timeout,
        read_timeout=max(config.read_timeout, config.write_timeout),
        tcp_keepalive=True,
    )


class RawMessage:
    """The baseline: the same DynamoDB calls memsdk makes for a message, by hand.

    TransactWriteItems(Put META with memsdk's condition, Put 2 TURN items with
    attribute_not_exists), then GetItem(META, ConsistentRead=True) and Query(newest 20,
    ScanIndexForward=False, Limit=20, ConsistentRead=False, as memsdk's default
    "validated" mode sends it) issued together with asyncio.gather. Items come from
    memsdk.store.dynamodb_items so the bytes on the wire match; responses are left as
    botocore parsed them (no decoding into records, no validation, no rules).
    """

    name = "raw aioboto3"

    def __init__(
        self,
        client: Any,
        table: str,
        session_of: Callable[[int], str],
        ttl_seconds: int,
        retention_seconds: int,
    ) -> None:
        self._client = client
        self._table = table
        self._session_of = session_of
        self._ttl = ttl_seconds
        self._retention = retention_seconds
        self._ids = TurnIdGenerator(lambda: time.time_ns() // 1_000_000)
        self._meta: MetaRecord | None = None

    async def run(self, index: int) -> tuple[int, int]:
        """One message: the conditional transaction, then the two reads concurrently."""
        sid = self._session_of(index)
        start = time.perf_counter_ns()
        now_ms = time.time_ns() // 1_000_000
        now_s = now_ms // 1000
        prev = self._meta if self._meta is not None and self._meta.session_id == sid else None
        if prev is None:
            # A new session, as memsdk plans it: fresh floor and version, and the condition
            # "absent or expired".
            floor = self._ids.next_ids(1)[0]
            base_version = (now_ms << 20) | secrets.randbits(20)
            created, count, version = now_ms, 0, base_version
            condition = "attribute_not_exists(PK) OR #exp <= :now"
            names = {"#exp": "expires_at"}
            values: dict[str, Any] = {":now": {"N": str(now_s)}}
        else:
            floor = prev.floor_turn_id
            created, count, version = prev.created_at_ms, prev.turn_count, prev.version + 1
            condition = "#ver = :v"
            names = {"#ver": "version"}
            values = {":v": {"N": str(prev.version)}}
        turn_ids = self._ids.next_ids(TURNS_PER_MESSAGE)
        physical_expiry = now_s + self._ttl + self._retention
        turns = [
            TurnRecord(
                turn_id=turn_id,
                role=turn.role,
                content=turn.content,
                intent=turn.intent,
                attributes=turn.attributes,
                created_at_ms=now_ms,
                expires_at=physical_expiry,
            )
            for turn_id, turn in zip(turn_ids, message_turns(), strict=True)
        ]
        meta = MetaRecord(
            session_id=sid,
            customer_id=CUSTOMER_ID,
            created_at_ms=created,
            updated_at_ms=now_ms,
            turn_count=count + len(turns),
            last_turn_id=turn_ids[-1],
            floor_turn_id=floor,
            page_context={},
            attributes={},
            expires_at=now_s + self._ttl,
            version=version,
        )
        transact: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": meta_to_item(meta),
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        ]
        for turn in turns:
            transact.append(
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": turn_to_item(sid, turn),
                        "ConditionExpression": "attribute_not_exists(PK)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
        # memsdk sends one idempotency token per commit (same length: 32 hex digits).
        await self._client.transact_write_items(
            TransactItems=transact, ClientRequestToken=uuid.uuid4().hex
        )
        self._meta = meta
        written = time.perf_counter_ns()
        _, page = await asyncio.gather(
            self._client.get_item(
                TableName=self._table, Key=key(sid, META_SK), ConsistentRead=True
            ),
            self._client.query(
                TableName=self._table,
                KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
                ExpressionAttributeValues={":pk": {"S": pk(sid)}, ":prefix": {"S": TURN_PREFIX}},
                ScanIndexForward=False,
                Limit=WINDOW,
                ConsistentRead=False,
            ),
        )
        return len(page.get("Items", [])), written - start


# ---------------------------------------------------------------------------- harness


@dataclass(slots=True)
class Samples:
    """What one candidate measured, one entry per round (nanoseconds)."""

    wall: list[int] = field(default_factory=list)
    write: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)


Check = Callable[[int, dict[str, int]], None]


async def interleave(
    candidates: Sequence[Candidate],
    *,
    first_index: int,
    warmup: int,
    samples: int,
    check: Check,
) -> dict[str, Samples]:
    """Warm up, then measure `samples` rounds; each round runs every candidate once.

    The order inside a round rotates (A B, B A; A B C, B C A, C A B) so that no candidate
    always runs in the same position, e.g. always right after another one's write.
    `check(index, {name: turns loaded})` runs after each round, outside the timings.
    """
    index = first_index
    for r in range(warmup):
        order = _rotated(candidates, r)
        check(index, {c.name: (await c.run(index))[0] for c in order})
        index += 1
    gc.collect()
    results = {c.name: Samples() for c in candidates}
    for r in range(samples):
        order = _rotated(candidates, r)
        loaded: dict[str, int] = {}
        for c in order:
            cpu0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            loaded[c.name], write_ns = await c.run(index)
            t1 = time.perf_counter_ns()
            cpu1 = time.process_time_ns()
            out = results[c.name]
            out.wall.append(t1 - t0)
            out.write.append(write_ns)
            out.cpu.append(cpu1 - cpu0)
        check(index, loaded)
        index += 1
    return results


def _rotated(candidates: Sequence[Candidate], r: int) -> list[Candidate]:
    shift = r % len(candidates)
    return [*candidates[shift:], *candidates[:shift]]


def _ms(values: Sequence[int]) -> list[float]:
    return [v / 1e6 for v in values]


def _cpu_batches(cpu_ns: Sequence[int], batch: int) -> list[float]:
    """CPU milliseconds per message, averaged over consecutive batches of `batch` rounds."""
    if len(cpu_ns) < batch:  # fewer rounds than one batch (--samples): one short batch
        return [sum(cpu_ns) / len(cpu_ns) / 1e6] if cpu_ns else [math.nan]
    full = len(cpu_ns) - len(cpu_ns) % batch
    return [sum(cpu_ns[i : i + batch]) / batch / 1e6 for i in range(0, full, batch)]


def _ratio(
    name: str,
    numerator: Sequence[float],
    denominator: Sequence[float],
    settings: Settings,
    goal: float | None,
) -> dict[str, Any]:
    value = statistics.median(numerator) / statistics.median(denominator)
    low, high = ratio_interval(numerator, denominator, reps=settings.bootstrap)
    return {
        "name": name,
        "value": value,
        "ci95": [low, high],
        "goal": goal,
        "within_goal": None if goal is None else value <= goal,
        "verdict": _verdict(low, high, goal),
    }


def _verdict(low: float, high: float, goal: float | None) -> str:
    """Judge the whole 95% interval, not the point: noise must not flip a verdict."""
    if goal is None:
        return "-"
    if high <= goal:
        return "within goal"
    if low > goal:
        return "over goal"
    return "inconclusive (CI spans the goal): rerun"


@dataclass(frozen=True, slots=True)
class RatioSpec:
    """A ratio to report: median of `numerator` over median of `denominator` (candidates)."""

    label: str
    numerator: str
    denominator: str
    goal: float | None  # applies to the wall ratio; the CPU ratio is informational


def describe(
    results: dict[str, Samples], settings: Settings, ratios: Sequence[RatioSpec]
) -> dict[str, Any]:
    """Summaries per candidate (in measuring order) and the ratios asked for."""
    candidates: dict[str, Any] = {}
    for name in results:
        s = results[name]
        wall = _ms(s.wall)
        write = _ms(s.write)
        read = [w - x for w, x in zip(wall, write, strict=True)]
        cpu = _cpu_batches(s.cpu, settings.cpu_batch)
        candidates[name] = {
            "wall_ms": summary(wall),
            "write_ms": summary(write),
            "read_ms": summary(read),
            "cpu_ms_per_message": summary(cpu),
            "cpu_batches": len(cpu),
            "samples_wall_ms": [round(v, 4) for v in wall],
        }
    out: list[dict[str, Any]] = []
    for spec in ratios:
        num, den = results[spec.numerator], results[spec.denominator]
        out.append(_ratio(f"wall {spec.label}", _ms(num.wall), _ms(den.wall), settings, spec.goal))
        cpu_num = _cpu_batches(num.cpu, settings.cpu_batch)
        cpu_den = _cpu_batches(den.cpu, settings.cpu_batch)
        out.append(_ratio(f"CPU {spec.label}", cpu_num, cpu_den, settings, None))
    return {"candidates": candidates, "ratios": out}


async def _gather_limited(jobs: Sequence[Callable[[], Awaitable[None]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


# ---------------------------------------------------------------------------- benchmarks


async def warm_server(endpoint: str, settings: Settings, progress: Progress) -> None:
    """Send raw messages to a scratch table first: DynamoDB Local's JIT warms on both sides'."""
    table = "bench_warmup"
    await create_test_table(endpoint, table)
    config = memsdk_config(dynamodb_url(table, endpoint))
    progress(f"warming DynamoDB Local: {settings.server_warmup} messages")
    async with aioboto3.Session().client(
        "dynamodb", region_name=REGION, endpoint_url=endpoint, config=raw_client_config(config)
    ) as client:
        raw = RawMessage(
            client,
            table,
            lambda i: f"warm-{i // MESSAGES_PER_SESSION:06d}",
            config.ttl_seconds,
            config.turn_retention_seconds,
        )
        for i in range(settings.server_warmup):
            await raw.run(i)


Wire = dict[str, list[int]]  # operation -> canonical JSON sizes of its parameters


def _params_size(params: dict[str, Any]) -> int:
    """Size of a request's parameters as canonical JSON: the same measure for every client."""
    return len(json.dumps(params, sort_keys=True, separators=(",", ":")))


def _capture_raw(client: Any, sink: Wire) -> Callable[[], None]:
    """Record the parameters of every call `client` makes; returns the undo function."""

    def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
        sink.setdefault(model.name, []).append(_params_size(params))

    event, unique = "before-parameter-build.dynamodb", f"memsdk-bench-{id(sink)}"
    client.meta.events.register(event, hook, unique_id=unique)
    return lambda: client.meta.events.unregister(event, unique_id=unique)


def _dynamodb_store(mem: MemoryClient) -> Any:
    """The client's DynamoDB store, under the breaker's guard when there is one."""
    store = getattr(mem, "_store", None)
    return getattr(store, "inner", store)


def _capture_memsdk(mem: MemoryClient, sink: Wire) -> Callable[[], None] | None:
    """Record the parameters memsdk's DynamoDB store hands its data path (None: no path)."""
    path = getattr(_dynamodb_store(mem), "_path", None)
    original = getattr(path, "call", None)
    if path is None or original is None:
        return None

    async def call(operation: str, params: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        sink.setdefault(operation, []).append(_params_size(params))
        return await original(operation, params, *args, **kwargs)

    try:
        path.call = call  # an instance attribute shadows the method; deleted to undo
    except AttributeError:  # __slots__: cannot observe this path
        return None
    return lambda: delattr(path, "call")


def data_path_of(mem: MemoryClient) -> str:
    """Which DynamoDB data path a client's store uses ('lean', 'aioboto3'), if it says."""
    return str(getattr(_dynamodb_store(mem), "data_path", "unknown"))


async def bench_sdk_overhead(
    endpoint: str, settings: Settings, progress: Progress
) -> dict[str, Any]:
    """memsdk's append + load, on each data path, against the same calls made with aioboto3."""
    started = time.perf_counter()
    # Same name length on every side: same request sizes.
    lean_table, boto_table, raw_table = "ovh_lean", "ovh_boto", "ovh_rawb"
    for table in (lean_table, boto_table, raw_table):
        await create_test_table(endpoint, table)
    # L1 off: memsdk then sends exactly the calls the raw baseline sends (GetItem + Query
    # per load), so the ratio is the SDK's own overhead; the cache has its own benchmark.
    lean_config = memsdk_config(dynamodb_url(lean_table, endpoint), l1_max_bytes=0)
    boto_config = memsdk_config(
        dynamodb_url(boto_table, endpoint), dynamodb_data_path="aioboto3", l1_max_bytes=0
    )
    lean_name = "memsdk, lean data path (default)"
    boto_name = "memsdk, aioboto3 data path"
    raw_name = "raw aioboto3"

    def session_of(i: int) -> str:
        return f"bench-{i // MESSAGES_PER_SESSION:06d}"

    async with (
        MemoryClient(lean_config) as lean_mem,
        MemoryClient(boto_config) as boto_mem,
        aioboto3.Session().client(
            "dynamodb",
            region_name=REGION,
            endpoint_url=endpoint,
            config=raw_client_config(boto_config),
        ) as client,
    ):
        paths = {lean_name: data_path_of(lean_mem), boto_name: data_path_of(boto_mem)}
        candidates: list[Candidate] = [
            MemsdkMessage(lean_name, lean_mem, session_of),
            MemsdkMessage(boto_name, boto_mem, session_of),
            RawMessage(
                client,
                raw_table,
                session_of,
                boto_config.ttl_seconds,
                boto_config.turn_retention_seconds,
            ),
        ]

        def check(index: int, loaded: dict[str, int]) -> None:
            expected = min(WINDOW, (index % MESSAGES_PER_SESSION + 1) * TURNS_PER_MESSAGE)
            if set(loaded.values()) != {expected}:
                raise RuntimeError(f"message {index}: loaded {loaded}, expected {expected}")

        # The first two rounds (a new session, then an existing one) double as a check
        # that every side makes the same calls: same operations, same parameter sizes.
        wire: dict[str, Wire] = {c.name: {} for c in candidates}
        undo = [_capture_raw(client, wire[raw_name])]
        hooked = [
            _capture_memsdk(lean_mem, wire[lean_name]),
            _capture_memsdk(boto_mem, wire[boto_name]),
        ]
        undo += [u for u in hooked if u is not None]
        try:
            await interleave(candidates, first_index=0, warmup=2, samples=0, check=check)
        finally:
            for u in undo:
                u()
        checked = all(u is not None for u in hooked)
        same_wire = checked and _same_requests(wire)
        progress(f"sdk overhead: {settings.warmup} warm-up + {settings.samples} measured rounds")
        results = await interleave(
            candidates,
            first_index=2,
            warmup=max(settings.warmup - 2, 0),
            samples=settings.samples,
            check=check,
        )
    out = describe(
        results,
        settings,
        [
            RatioSpec("memsdk lean / raw", lean_name, raw_name, goal=1.15),
            RatioSpec("memsdk aioboto3 / raw", boto_name, raw_name, goal=1.15),
        ],
    )
    notes = [
        "one message = append_turns(user ~0.8 KB + assistant ~2 KB with attributes) then "
        f"load_context(last_n={WINDOW}); sessions rotate every {MESSAGES_PER_SESSION} "
        f"messages (up to {MESSAGES_PER_SESSION * TURNS_PER_MESSAGE} turns), so 1 message "
        f"in {MESSAGES_PER_SESSION} creates a session",
        "baseline: TransactWriteItems(META + 2 TURN, ClientRequestToken) then GetItem(META) "
        "|| Query(20), with the botocore Config of memsdk's aioboto3 path; one table per side, "
        "same name length",
        f"data paths reported by the stores: {paths}",
    ]
    if not checked:
        notes.append(
            "WARNING: calls not compared: a memsdk store has no data path to observe "
            "(did the store's internals change?)"
        )
    elif same_wire:
        notes.append(
            "checked on a new and an existing session: every side made the same calls with "
            "the same parameter sizes"
        )
    else:
        notes.append(f"WARNING: the sides made different calls: {wire}")
    return {
        "name": "sdk overhead",
        "backend": "DynamoDB Local",
        "samples": settings.samples,
        "warmup": settings.warmup,
        "elapsed_s": time.perf_counter() - started,
        "data_paths": paths,
        "request_param_sizes": wire,
        "same_requests": same_wire,
        "notes": notes,
        **out,
    }


def _same_requests(wire: dict[str, Wire]) -> bool:
    shapes = [{op: sorted(sizes) for op, sizes in w.items()} for w in wire.values()]
    return all(shape == shapes[0] for shape in shapes)


async def _prefill(
    mem: MemoryClient, sessions: Sequence[str], length: int, progress: Progress, label: str
) -> None:
    progress(f"{label}: pre-filling {len(sessions)} sessions x {length:,} turns")
    turns = prefill_turns(length)

    async def fill(sid: str) -> None:
        for offset in range(0, length, PREFILL_BATCH):
            batch = turns[offset : offset + PREFILL_BATCH]
            await mem.append_turns(sid, batch, customer_id=CUSTOMER_ID)

    await _gather_limited([lambda sid=sid: fill(sid) for sid in sessions], PREFILL_CONCURRENCY)


async def bench_session_length(
    store: str, backend: str, settings: Settings, progress: Progress
) -> dict[str, Any]:
    """memsdk's message cost on 10-turn sessions against 1,000-turn sessions, one store.

    A third candidate, the long sessions loaded with the short ones' window (12 turns),
    separates the cost of the history behind the window from the cost of a bigger window.
    """
    started = time.perf_counter()
    label = f"session length ({backend})"
    messages = settings.warmup + settings.samples
    # Each short session takes one message (10 -> 12 turns); the long ones take two per
    # round (both long candidates), spread over `long_sessions`. Same id lengths.
    short_ids = [f"s10-{i:06d}" for i in range(messages)]
    long_ids = [f"s1k-{i:06d}" for i in range(settings.long_sessions)]
    short_name = f"memsdk, {SHORT_LENGTH}-turn sessions"
    long_name = f"memsdk, {LONG_LENGTH:,}-turn sessions"
    short_window = SHORT_LENGTH + TURNS_PER_MESSAGE
    same_name = f"memsdk, {LONG_LENGTH:,}-turn sessions, last_n={short_window}"
    # L1 off: the cost of reading the store at each session length, not of a cache hit.
    async with MemoryClient(memsdk_config(store, l1_max_bytes=0)) as mem:
        await _prefill(mem, long_ids, LONG_LENGTH, progress, label)
        await _prefill(mem, short_ids, SHORT_LENGTH, progress, label)
        short = MemsdkMessage(short_name, mem, lambda i: short_ids[i])
        long = MemsdkMessage(long_name, mem, lambda i: long_ids[i % len(long_ids)])
        same = MemsdkMessage(
            same_name, mem, lambda i: long_ids[(i + 1) % len(long_ids)], last_n=short_window
        )

        def check(index: int, loaded: dict[str, int]) -> None:
            want = {short_name: short_window, long_name: WINDOW, same_name: short_window}
            if loaded != want:
                raise RuntimeError(f"message {index}: loaded {loaded}, expected {want}")

        progress(f"{label}: {settings.warmup} warm-up + {settings.samples} measured rounds")
        results = await interleave(
            [short, long, same],
            first_index=0,
            warmup=settings.warmup,
            samples=settings.samples,
            check=check,
        )
    lengths = f"{LONG_LENGTH:,} / {SHORT_LENGTH} turns"
    out = describe(
        results,
        settings,
        [
            RatioSpec(lengths, long_name, short_name, goal=1.2),
            RatioSpec(f"{lengths}, same window", same_name, short_name, goal=None),
        ],
    )
    per_long = math.ceil(2 * messages / settings.long_sessions)
    return {
        "name": label,
        "backend": backend,
        "samples": settings.samples,
        "warmup": settings.warmup,
        "elapsed_s": time.perf_counter() - started,
        "notes": [
            f"short: a fresh {SHORT_LENGTH}-turn session per message; long: "
            f"{settings.long_sessions} sessions pre-filled to {LONG_LENGTH:,} turns, rotated, "
            f"so they grow to at most {LONG_LENGTH + per_long * TURNS_PER_MESSAGE:,} turns; "
            "one client and one table/file for both sides",
            f"a {SHORT_LENGTH}-turn session loads {short_window} turns, a long one {WINDOW}: "
            "part of the main ratio is the bigger window, not the history behind it; the "
            f"'same window' ratio (long sessions loaded with last_n={short_window}) isolates "
            "the history",
        ],
        **out,
    }


async def run_smoke(endpoint: str, settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """The CI smoke's share of this module: the SDK overhead against raw aioboto3."""
    await warm_server(endpoint, settings, progress)
    return [await bench_sdk_overhead(endpoint, settings, progress)]


async def run_all(endpoint: str, settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """Every benchmark of this module, in order; DynamoDB Local must be running at `endpoint`."""
    results = await run_smoke(endpoint, settings, progress)
    length_table = "session_length"
    await create_test_table(endpoint, length_table)
    results.append(
        await bench_session_length(
            dynamodb_url(length_table, endpoint), "DynamoDB Local", settings, progress
        )
    )
    with tempfile.TemporaryDirectory(prefix="memsdk-bench-") as tmp:
        # TemporaryDirectory names are absolute: sqlite:/// + /tmp/... = sqlite:////tmp/...
        store = f"sqlite:///{tmp}/bench.db"
        scaled = dataclasses.replace(
            settings,
            samples=settings.samples * settings.sqlite_scale,
            warmup=settings.warmup * settings.sqlite_scale,
            long_sessions=settings.long_sessions * settings.sqlite_scale,  # same growth
        )
        results.append(await bench_session_length(store, "SQLite", scaled, progress))
    return results
