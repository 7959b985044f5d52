"""run_simulation: set up the faults, seed the power users, run the load, then verify.

One MemoryClient plays the orchestrator process: N slot tasks drive the workload model
(memsdk.simulate.workload), a ticker samples health() and draws the progress bar, and the
chaos schedule fails the dependencies through what this module puts in front of them. After
the load the faults are lifted, the WAL is flushed, the client is closed, and a fresh
client (no WAL, no Redis, strong reads) reads every session back from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from memsdk.client import MemoryClient
from memsdk.config import Config, DynamoDBStoreSpec, SQLiteStoreSpec
from memsdk.errors import ConfigError, MemsdkError, StoreUnavailableError
from memsdk.models import Context, Turn
from memsdk.simulate.chaos import (
    ChaosEvent,
    ChaosSchedule,
    FaultTarget,
    FaultyStoreTarget,
    ProxyStoreTarget,
    RelayTarget,
    Target,
    check_chaos,
)
from memsdk.simulate.progress import Progress, ProgressStatus
from memsdk.simulate.result import Series, SimulationResult
from memsdk.simulate.stats import EventCounts, HealthSampler, LatencyRecorder
from memsdk.simulate.verify import Ledger, SessionLedger, verify
from memsdk.simulate.workload import SessionPlan, SlotScript, WorkloadShape
from memsdk.store.base import Store
from memsdk.wiring import build_store

__all__ = ["BeforeVerify", "SimulationOptions", "run_simulation"]

# A hook for tests only: runs after the load, the flush and the client's close, before the
# verification pass (e.g. to delete a turn behind simulate's back and see the pass fail).
BeforeVerify = Callable[[Ledger], Awaitable[None]]

_TICK_S = 0.1
_RATE_WINDOW_S = 2.0
_SEED_FLUSH_TIMEOUT_S = 30.0
_MAX_STALE_EXAMPLES = 5


@dataclass(frozen=True, kw_only=True, slots=True)
class SimulationOptions:
    """The run: how long, how many sessions, which seed, which chaos; workload knobs."""

    duration_s: float = 10.0
    sessions: int = 50
    seed: int = 7
    chaos: tuple[ChaosEvent, ...] = ()
    think_s: float = 1.0
    burst_rate: float = 3.0
    power_share: float = 0.05
    power_turns: tuple[int, int] = (200, 2_000)
    flush_timeout_s: float = 120.0
    verify_concurrency: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.duration_s <= 7 * 86_400:
            raise ValueError("duration must be > 0 seconds (and at most a week)")
        if self.flush_timeout_s <= 0 or self.verify_concurrency < 1:
            raise ValueError("flush_timeout_s must be > 0 and verify_concurrency >= 1")


async def run_simulation(
    config: Config,
    options: SimulationOptions,
    *,
    progress: Progress | None = None,
    before_verify: BeforeVerify | None = None,
) -> SimulationResult:
    """Run the seed workload with its chaos for options.duration_s, then verify every turn.

    Raises ChaosSpecError (or ConfigError) before any I/O when the chaos cannot be applied
    to this config, or the store cannot be read back by a second client.
    """
    spec = config.store_spec
    if isinstance(spec, SQLiteStoreSpec) and spec.path == ":memory:":
        raise ConfigError(
            "simulate verifies through a second client, which cannot see a private in-memory "
            "SQLite database: use a file, e.g. sqlite:///sim.db"
        )
    check_chaos(
        options.chaos,
        duration_s=options.duration_s,
        store_url=config.store,
        redis_url=config.redis_url,
    )
    return await _Simulation(config, options, progress).run(before_verify)


def _dynamodb_url(spec: DynamoDBStoreSpec, endpoint: str) -> str:
    return f"dynamodb://{spec.table}?region={spec.region}&endpoint={endpoint}"


def _via_relay(redis_url: str, port: int) -> str:
    parts = urlsplit(redis_url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


class _Simulation:
    def __init__(self, config: Config, options: SimulationOptions, progress: Progress | None):
        self.config = config
        self.options = options
        self.progress = progress
        self.shape = WorkloadShape(
            sessions=options.sessions,
            burst_rate=options.burst_rate,
            think_s=options.think_s,
            power_share=options.power_share,
            power_turns=options.power_turns,
            max_turn_bytes=config.max_turn_bytes,
        )
        # Not from the seed: session ids must differ from every earlier run on this store.
        self.run_tag = f"{int(time.time()):x}{secrets.token_hex(2)}"
        self.ledger = Ledger()
        self.latency = LatencyRecorder()
        self.events = EventCounts()
        self.reads: Counter[str] = Counter()
        self.stale_examples: list[str] = []
        self.stale_reads = 0
        self.deadline = 0.0
        self.schedule: ChaosSchedule | None = None
        self.sampler: HealthSampler | None = None
        self.rate_samples: deque[tuple[float, int]] = deque()
        self.result = SimulationResult(
            store_kind="sqlite" if isinstance(config.store_spec, SQLiteStoreSpec) else "dynamodb",
            wal=config.wal_dir is not None,
            redis=config.redis_url is not None,
            consistency=config.consistency,
            sessions=options.sessions,
            seed=options.seed,
            planned_s=options.duration_s,
        )

    # ------------------------------------------------------------------ the run

    async def run(self, before_verify: BeforeVerify | None) -> SimulationResult:
        # A deployment error (a missing table, no permission) fails here, at once, rather
        # than as one error per call for the whole run. A store that is down answers degraded.
        async with MemoryClient(self._store_only(read_timeout=5.0)) as probe:
            await probe.load_context(f"sim-{self.run_tag}-probe")
        async with contextlib.AsyncExitStack() as stack:
            config, store, targets = await self._fault_targets(stack)
            mem = MemoryClient(config, store=store)
            await mem.open()
            try:
                scripts = [
                    SlotScript(self.options.seed, i, self.shape)
                    for i in range(self.options.sessions)
                ]
                first = await self._seed(mem, scripts)
                await self._load(mem, scripts, first, targets)
                await self._flush(mem)
            finally:
                await mem.aclose()
        if before_verify is not None:
            await before_verify(self.ledger)
        await self._verify()
        return self.result

    async def _fault_targets(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[Config, Store | None, dict[Target, FaultTarget]]:
        """Put a fault proxy, a FaultyStore or a relay in front of what the chaos hits."""
        config = self.config
        store: Store | None = None
        targets: dict[Target, FaultTarget] = {}
        hit = {e.target for e in self.options.chaos}
        if "store" in hit:
            spec = config.store_spec
            if isinstance(spec, DynamoDBStoreSpec):
                from memsdk.faultproxy import FaultProxy

                assert spec.endpoint is not None  # check_chaos refused anything else
                proxy = FaultProxy(upstream=spec.endpoint, seed=self.options.seed)
                await proxy.start()
                stack.push_async_callback(proxy.aclose)
                config = dataclasses.replace(config, store=_dynamodb_url(spec, proxy.endpoint))
                targets["store"] = ProxyStoreTarget(proxy)
            else:
                from memsdk.testing import FaultyStore

                faulty = FaultyStore(build_store(config))
                store = faulty
                targets["store"] = FaultyStoreTarget(faulty)
        if "redis" in hit:
            from memsdk.relay import TcpRelay

            assert config.redis_url is not None  # check_chaos refused anything else
            parts = urlsplit(config.redis_url)
            relay = TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379)
            await relay.start()
            stack.push_async_callback(relay.aclose)
            config = dataclasses.replace(config, redis_url=_via_relay(config.redis_url, relay.port))
            targets["redis"] = RelayTarget(relay)
        return config, store, targets

    def _session_id(self, plan: SessionPlan) -> str:
        return f"sim-{self.run_tag}-{plan.slot}-{plan.number}"

    # ---------------------------------------------------------------- seeding

    async def _seed(self, mem: MemoryClient, scripts: list[SlotScript]) -> dict[int, SessionPlan]:
        """Write the power users' history before the clock starts; their first plans."""
        plans = {s: script.next_session() for s, script in enumerate(scripts) if script.power}
        total = sum(p.history_turns for p in plans.values())
        self.result.power_sessions = len(plans)
        self.result.power_history_turns = sorted(p.history_turns for p in plans.values())
        if not total:
            return plans
        written = 0
        started = time.monotonic()

        async def seed_one(plan: SessionPlan) -> None:
            nonlocal written
            sid = self._session_id(plan)
            entry = self.ledger.session(sid, self._customer(plan))
            for batch in scripts[plan.slot].history(sid, plan.history_turns):
                await self._append(mem, entry, batch, op="seed_history")
                written += len(batch)
                self._draw(ProgressStatus(phase="seeding", done=written, total=total))

        await asyncio.gather(*(seed_one(p) for p in plans.values()))
        if self.config.wal_dir is not None:
            # Start the load from a drained log: its backlog peak is then the load's own.
            with contextlib.suppress(StoreUnavailableError):
                await mem.flush(timeout=_SEED_FLUSH_TIMEOUT_S)
        self.result.seeding_s = time.monotonic() - started
        return plans

    @staticmethod
    def _customer(plan: SessionPlan) -> str:
        return f"cust-{plan.slot}-{plan.number}"

    # ------------------------------------------------------------------- load

    async def _load(
        self,
        mem: MemoryClient,
        scripts: list[SlotScript],
        first: dict[int, SessionPlan],
        targets: dict[Target, FaultTarget],
    ) -> None:
        duration = self.options.duration_s
        self.schedule = ChaosSchedule(self.options.chaos, targets, run_s=duration)
        self.sampler = HealthSampler(mem.health)
        for clock in (self.latency, self.events, self.sampler):
            clock.start()
        started = time.monotonic()
        self.deadline = started + duration
        chaos = asyncio.create_task(self.schedule.run())
        ticker = asyncio.create_task(self._tick())
        try:
            async with asyncio.TaskGroup() as group:
                for slot, script in enumerate(scripts):
                    group.create_task(self._slot(mem, script, first.get(slot)))
        finally:
            self.result.duration_s = time.monotonic() - started
            chaos.cancel()
            await asyncio.gather(chaos, return_exceptions=True)
            self.schedule.lift_all()
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        self.sampler.sample()
        self._draw(self._load_status(), force=True)

    async def _slot(self, mem: MemoryClient, script: SlotScript, plan: SessionPlan | None) -> None:
        if not await self._pause(script.first_delay()):
            return
        while time.monotonic() < self.deadline:
            if plan is None:
                plan = script.next_session()
            sid = self._session_id(plan)
            entry = self.ledger.session(sid, self._customer(plan))
            self.events.bump("sessions")
            for number in range(plan.messages):
                await self._message(mem, script, entry, number)
                if not await self._pause(script.pause()):
                    return
            plan = None

    async def _pause(self, seconds: float) -> bool:
        """Sleep; False (after sleeping to the deadline) when that would pass the deadline."""
        left = self.deadline - time.monotonic()
        if seconds >= left:
            # The slot idles to the end: the load lasts the planned duration, not less.
            await asyncio.sleep(max(0.0, left))
            return False
        await asyncio.sleep(seconds)
        return True

    async def _message(
        self, mem: MemoryClient, script: SlotScript, entry: SessionLedger, number: int
    ) -> None:
        """One user message: read the context, then append the user turn and the reply."""
        turns = script.message(entry.session_id, number)
        started = self.latency.now()
        try:
            ctx = await mem.load_context(entry.session_id, customer_id=entry.customer_id)
        except MemsdkError as exc:
            self.latency.error("load_context", type(exc).__name__)
            self.events.bump("errors")
        else:
            self.latency.ok("load_context", started)
            self._check_read(entry, ctx)
        if await self._append(mem, entry, turns, op="append_turns"):
            self.events.bump("messages")
        else:
            self.events.bump("messages_failed")

    async def _append(
        self, mem: MemoryClient, entry: SessionLedger, turns: list[Turn], *, op: str
    ) -> bool:
        """Append and record the outcome in the ledger; True when acknowledged."""
        started = self.latency.now()
        try:
            receipt = await mem.append_turns(entry.session_id, turns, customer_id=entry.customer_id)
        except MemsdkError as exc:
            # Not acknowledged. Only a StoreUnavailableError that says so may have landed.
            maybe = isinstance(exc, StoreUnavailableError) and exc.maybe_applied
            self.ledger.failed(entry, turns, maybe_applied=maybe)
            self.latency.error(op, type(exc).__name__)
            if op == "append_turns":  # the per-second series cover the load only
                self.events.bump("errors")
            return False
        self.latency.ok(op, started)
        self.ledger.acked(entry, turns, receipt.turn_ids, receipt.durable)
        return True

    def _check_read(self, entry: SessionLedger, ctx: Context) -> None:
        """Count where the answer came from; a current answer must end at our newest turn."""
        if ctx.degraded:
            self.reads["degraded"] += 1
            self.events.bump("degraded")
            return
        from_l1 = ctx.source.startswith("l1")
        self.reads["l1" if from_l1 else "store"] += 1
        if not from_l1 or "+store" in ctx.source:
            # The store was asked: for the whole answer, or for the META that validated L1.
            self.reads["store_found" if ctx.meta is not None else "store_absent"] += 1
        if entry.unsettled:
            return  # an append with an unknown outcome may or may not be the newest turn
        newest = ctx.turns[-1].turn_id if ctx.turns else None
        if newest != entry.last_acked:
            # Guarantee 6: complete and current, or flagged degraded. This process wrote
            # every turn of the session, so a current answer ends at its last acked turn.
            self.stale_reads += 1
            if len(self.stale_examples) < _MAX_STALE_EXAMPLES:
                self.stale_examples.append(
                    f"{entry.session_id}: read ended at {newest}, expected {entry.last_acked} "
                    f"(source {ctx.source})"
                )

    # ------------------------------------------------------------- the ticker

    async def _tick(self) -> None:
        assert self.sampler is not None
        while True:
            self.sampler.sample()
            self._draw(self._load_status())
            await asyncio.sleep(_TICK_S)

    def _load_status(self) -> ProgressStatus:
        now = time.monotonic()
        done = self.events.totals["messages"]
        self.rate_samples.append((now, done))
        while len(self.rate_samples) > 1 and now - self.rate_samples[0][0] > _RATE_WINDOW_S:
            self.rate_samples.popleft()
        first_t, first_done = self.rate_samples[0]
        rate = (done - first_done) / (now - first_t) if now > first_t else 0.0
        health = self.sampler.last if self.sampler is not None else None
        return ProgressStatus(
            phase="load",
            done=min(self.options.duration_s, self.schedule.elapsed() if self.schedule else 0.0),
            total=self.options.duration_s,
            messages_per_s=rate,
            errors=self.events.totals["errors"],
            degraded=self.events.totals["degraded"],
            wal_pending=health.wal_pending_records if health is not None else 0,
            chaos=self.schedule.status() if self.schedule is not None else "off",
        )

    def _draw(self, status: ProgressStatus, *, force: bool = False) -> None:
        if self.progress is not None:
            self.progress.update(status, force=force)

    # ------------------------------------------------------- flush and verify

    async def _flush(self, mem: MemoryClient) -> None:
        """Wait for the WAL to drain into the store (the faults are lifted by now)."""
        if self.config.wal_dir is None:
            self._finish_load(mem)
            return
        pending = mem.health().wal_pending_records
        started = time.monotonic()
        drawer = asyncio.create_task(self._draw_flush(mem, pending))
        try:
            await mem.flush(timeout=self.options.flush_timeout_s)
        except StoreUnavailableError as exc:
            self.result.flush_error = str(exc)
        finally:
            drawer.cancel()
            await asyncio.gather(drawer, return_exceptions=True)
        self.result.flush_s = time.monotonic() - started
        self._finish_load(mem)

    async def _draw_flush(self, mem: MemoryClient, pending: int) -> None:
        while True:
            left = mem.health().wal_pending_records
            self._draw(ProgressStatus(phase="flush", done=max(0, pending - left), total=pending))
            await asyncio.sleep(_TICK_S)

    def _finish_load(self, mem: MemoryClient) -> None:
        """Fill the result with the load's figures (before the client closes)."""
        r = self.result
        assert self.sampler is not None
        r.health = mem.health()
        r.wal_peak_records = self.sampler.wal_peak_records
        r.wal_peak_bytes = self.sampler.wal_peak_bytes
        r.operations = {op: self.latency.summary(op) for op in self.latency.operations()}
        r.errors = self.latency.errors()
        r.messages = self.events.totals["messages"]
        r.messages_failed = self.events.totals["messages_failed"]
        r.sessions_started = self.events.totals["sessions"]
        r.reads = dict(self.reads)
        r.stale_reads = self.stale_reads
        r.stale_examples = list(self.stale_examples)
        r.ledger = dict(self.ledger.counts)
        r.chaos = list(self.schedule.applied) if self.schedule is not None else []
        # Whole seconds of the planned load: the drain after the deadline is in the totals.
        seconds = max(1, min(math.ceil(self.options.duration_s), math.ceil(r.duration_s)))
        ops = [op for op in self.latency.operations() if op != "seed_history"]
        r.series = Series(
            seconds=seconds,
            operations={op: self.latency.series(op, seconds) for op in ops},
            messages=self.events.series("messages", seconds),
            errors=self.events.series("errors", seconds),
            degraded=self.events.series("degraded", seconds),
            wal_pending=self.sampler.wal_series(seconds),
            store_breaker=self.sampler.breaker_series("store", seconds),
            redis_breaker=self.sampler.breaker_series("redis", seconds),
        )

    def _store_only(self, *, read_timeout: float) -> Config:
        """The config of a client that reads the store itself: no WAL, no Redis, strong."""
        return dataclasses.replace(
            self.config,
            wal_dir=None,
            redis_url=None,
            consistency="strong",
            read_timeout=read_timeout,
            # A slow emulator on a busy machine is not an outage: never answer degraded.
            breaker_slow_call=600.0,
            breaker_min_calls=1_000_000,
        )

    async def _verify(self) -> None:
        """Read every session back from the store itself: no WAL overlay, no Redis, no L1."""
        reader_config = self._store_only(read_timeout=max(self.config.read_timeout, 30.0))
        total = sum(1 for s in self.ledger.sessions.values() if s.appends)

        def on_progress(done: int, of: int) -> None:
            self._draw(ProgressStatus(phase="verify", done=done, total=of))

        async with MemoryClient(reader_config) as reader:
            self._draw(ProgressStatus(phase="verify", done=0, total=total))
            self.result.verification = await verify(
                reader,
                self.ledger,
                concurrency=self.options.verify_concurrency,
                on_progress=on_progress,
            )
        if self.progress is not None:
            self.progress.close(ProgressStatus(phase="verify", done=total, total=total))
