"""MemoryClient: the lifecycle and the public verbs; the only module that knows every tier."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from memsdk import session as rules
from memsdk.cache.base import MetaCache, MetaCacheStats
from memsdk.cache.lru import CachedWindow, ContextCache, turn_size
from memsdk.config import Config, DynamoDBStoreSpec, SQLiteStoreSpec
from memsdk.errors import (
    BackpressureError,
    ClientClosedError,
    ConfigError,
    ContextLostError,
    InvalidInputError,
    InvalidTurnError,
    MemsdkError,
    SessionOwnershipError,
    StoreError,
    StoreUnavailableError,
)
from memsdk.guard import GuardedStore, RetryGateWhileClosed
from memsdk.ids import TurnIdGenerator
from memsdk.logs import RateLimitedLog
from memsdk.models import AppendReceipt, Context, Health, Meta, Summary, Turn
from memsdk.observed import ObservedDataPath, ObservedStore, RedisObserver
from memsdk.records import MetaRecord, SessionWrite, TurnRecord
from memsdk.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from memsdk.resilience.budget import RetryBudget
from memsdk.resilience.bulkhead import Bulkhead
from memsdk.store.base import Store
from memsdk.store.dynamodb_path import DataPath, RetryGate
from memsdk.tasks import stop_tasks
from memsdk.telemetry import (
    MeterProvider,
    Scope,
    Telemetry,
    TelemetrySnapshot,
    TracerProvider,
    UnrecordedScope,
)
from memsdk.wal.rejected import rejected_line, write_rejected
from memsdk.write_buffer import (
    BufferedAppend,
    OverlayUncertain,
    UndecodableRecord,
    batch_fits,
    buffered_append,
    decode_append,
    encode_append,
    overlay,
)

if TYPE_CHECKING:
    from memsdk.wal.flusher import Flusher
    from memsdk.wal.log import WriteAheadLog

__all__ = ["Clock", "MemoryClient", "SystemClock"]

logger = logging.getLogger(__name__)

# Compare-and-set rounds before a write gives up; each lost round means another writer
# committed to the same session in between (rare at 3 req/s per session). The real bound
# is the call's deadline: rounds back off with jitter, up to _MAX_CONFLICT_BACKOFF_S.
_MAX_COMMIT_ROUNDS = 64
_MAX_CONFLICT_BACKOFF_S = 0.05
# The newest META seen per session, for the write path's compare-and-set even when L1
# holds no window for the session (evicted, too large, or L1 disabled). Bounded by count:
# ~0.5 KB each. A stale or missing hint costs one extra round trip, never a wrong write.
_MAX_META_HINTS = 10_000
# L1 keeps this many turns beyond last_n, so a window moved back over tool results
# (guarantee 9) is still served from memory.
_TOOL_SLACK = 8
# Best-effort cache work (read-through fills, repairs) never queues without bound.
_MAX_BACKGROUND_TASKS = 1_000
# The key the recovery probe reads: a valid session id that no session is expected to use;
# reading an absent item costs half a read unit and touches nothing.
_PROBE_SESSION = "memsdk:recovery-probe"
# What each degradation reason means, for the log line.
_DEGRADED_WHY = {
    "breaker_open": "the store's circuit breaker is open",
    "read_timeout": "the store did not answer within read_timeout",
    "store_unavailable": "the store is unavailable",
}
# Why acknowledged appends were set aside in rejected/, for the log line.
_SET_ASIDE_WHY = {
    "ordered_before_delete": "another process deleted the session (or it expired and "
    "started again) without having seen them, so they are ordered before that delete",
    "ownership": "the session belongs to another customer_id",
    "store_refused": "the store refused them for good",
}
# After a failed write-through, Redis may hold an older META: keep trying to drop it.
_L2_REPAIR_DELAYS_S = (0.05, 0.2, 1.0, 5.0, 15.0, 30.0)


class Clock(Protocol):
    """Wall-clock time in epoch milliseconds; injected so tests control TTL and turn ids."""

    def time_ms(self) -> int:
        """Return the current epoch time in milliseconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def time_ms(self) -> int:
        """Return time.time_ns() in milliseconds."""
        return time.time_ns() // 1_000_000


def build_store(
    config: Config,
    retry_budget: RetryGate | None = None,
    telemetry: Telemetry | None = None,
    breaker_state: Callable[[], str] = lambda: "off",
) -> Store:
    """The store a Config names (imports the backend lazily: no aioboto3 import for SQLite).

    `retry_budget` bounds the lean data path's retries; the aioboto3 path keeps botocore's
    standard retry mode, whose own retry quota plays that part. With `telemetry`, every
    request the store sends is a span (see memsdk.observed).
    """
    spec = config.store_spec
    if isinstance(spec, SQLiteStoreSpec):
        from memsdk.store.sqlite import SQLiteStore

        sqlite = SQLiteStore(spec.path)
        return sqlite if telemetry is None else ObservedStore(sqlite, telemetry, system="sqlite")
    if isinstance(spec, DynamoDBStoreSpec):
        from memsdk.store.dynamodb import DynamoDBStore

        options: dict[str, Any] = {
            "max_pool_connections": config.max_pool_connections,
            "connect_timeout": config.connect_timeout,
            "read_timeout": max(config.read_timeout, config.write_timeout),
            "max_attempts": config.store_max_attempts,
        }
        path: DataPath
        if config.dynamodb_data_path == "aioboto3":
            from memsdk.store.dynamodb_aioboto3 import Aioboto3DataPath

            path = Aioboto3DataPath(spec, **options)
        else:
            from memsdk.store.dynamodb_lean import LeanDataPath

            path = LeanDataPath(spec, retry_budget=retry_budget, **options)
        if telemetry is not None:
            from memsdk.store.dynamodb_lean import resolve_endpoint

            endpoint = spec.endpoint or resolve_endpoint(spec)
            path = ObservedDataPath(
                path, telemetry, table=spec.table, endpoint=endpoint, breaker_state=breaker_state
            )
        return DynamoDBStore(spec, path)
    raise ConfigError(f"unsupported store {type(spec).__name__}")


def breaker_policy(config: Config, *, slow_call_s: float | None = None) -> BreakerPolicy:
    """The circuit-breaker policy a Config describes (slow_call_s may differ per dependency)."""
    return BreakerPolicy(
        window_s=config.breaker_window,
        min_calls=config.breaker_min_calls,
        failure_rate=config.breaker_failure_rate,
        slow_call_s=config.breaker_slow_call if slow_call_s is None else slow_call_s,
        slow_rate=config.breaker_slow_rate,
        open_s=config.breaker_open_seconds,
        max_open_s=config.breaker_max_open_seconds,
        half_open_probes=config.breaker_half_open_probes,
        consecutive_failures=config.breaker_consecutive_failures,
    )


def _redis_server_attributes(config: Config) -> dict[str, Any]:
    """`server.address`/`server.port` of the Redis a Config names; none behind Sentinel
    (the primary is whichever node the Sentinels name at the time)."""
    spec = config.redis_spec
    if spec is None or spec.topology == "sentinel":
        return {}
    host, port = spec.nodes[0]
    return {"server.address": host, "server.port": port}


def redis_namespace(config: Config) -> str:
    """This deployment's namespace in Redis: `Config.redis_key_prefix`, else a digest of the
    store's identity (SQLite file, or DynamoDB table, region and endpoint). Deployments that
    share a Redis then miss each other's keys instead of reading them (docs/security.md)."""
    if config.redis_key_prefix is not None:
        return config.redis_key_prefix
    spec = config.store_spec
    if isinstance(spec, SQLiteStoreSpec):
        identity = f"sqlite|{os.path.abspath(spec.path)}"
    else:
        identity = f"dynamodb|{spec.region}|{spec.endpoint or ''}|{spec.table}"
    return "s" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def build_meta_cache(
    config: Config, breaker: CircuitBreaker | None = None, telemetry: Telemetry | None = None
) -> MetaCache | None:
    """The Redis META cache a Config names, or None (imports redis-py only when asked)."""
    if config.redis_url is None:
        return None
    try:
        from memsdk.cache.redis import RedisMetaCache
    except ImportError as exc:  # the `redis` extra is not installed
        raise ConfigError("redis_url needs redis-py: pip install 'memsdk[redis]'") from exc
    return RedisMetaCache(
        config.redis_url,
        key_prefix=redis_namespace(config),
        timeout=config.redis_timeout,
        connect_timeout=config.redis_timeout * 2,
        tombstone_ttl_seconds=min(config.ttl_seconds, 3_600),
        gate=breaker,
        observer=(
            None
            if telemetry is None
            else RedisObserver(telemetry, _redis_server_attributes(config))
        ),
    )


class MemoryClient:
    """Conversation memory for one orchestrator process; use as `async with MemoryClient(cfg)`."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        meta_cache: MetaCache | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """Build the tiers a Config describes; no I/O until open().

        `tracer_provider` / `meter_provider`: OpenTelemetry providers to report to instead of
        the global ones (docs/observability.md).
        """
        self._config = config if config is not None else Config()
        cfg = self._config
        self._telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            allowed=cfg.telemetry_attributes,
            enabled=cfg.telemetry_enabled,
        )
        self._store_breaker = CircuitBreaker(
            "store", breaker_policy(cfg), on_change=self._breaker_changed
        )
        self._retry_budget = RetryBudget(
            ratio=cfg.retry_budget_ratio,
            min_per_s=cfg.retry_budget_min_per_second,
            window_s=cfg.breaker_window,
        )
        retry_gate = RetryGateWhileClosed(
            self._retry_budget, self._store_breaker, on_retry=self._telemetry.retry
        )
        if store is not None:
            system = store.description.split(":", 1)[0] or "other"
            store = ObservedStore(store, self._telemetry, system=system)
        else:
            store = build_store(cfg, retry_gate, self._telemetry, lambda: self._store_breaker.state)
        self._store = GuardedStore(
            store,
            self._store_breaker,
            Bulkhead(cfg.max_inflight_store_calls),
            slow_call_s=cfg.breaker_slow_call,
            on_shed=lambda: self._telemetry.backpressure("bulkhead"),
        )
        self._redis_breaker = CircuitBreaker(
            "redis",
            breaker_policy(cfg, slow_call_s=cfg.redis_timeout),
            on_change=self._breaker_changed,
        )
        self._l2 = (
            meta_cache
            if meta_cache is not None
            else build_meta_cache(cfg, self._redis_breaker, self._telemetry)
        )
        self._l1 = ContextCache(self._config.l1_max_bytes)
        self._meta_hints: OrderedDict[str, MetaRecord] = OrderedDict()
        self._depth = self._config.last_n + _TOOL_SLACK
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._ids = TurnIdGenerator(self._clock.time_ms)
        self._background: set[asyncio.Future[Any]] = set()
        self._background_stopped = False
        self._wal: WriteAheadLog | None = None
        self._flusher: Flusher[BufferedAppend] | None = None
        self._wal_rejected_records = 0
        self._wal_rejected_turns = 0
        self._degraded_replies = 0
        self._recovery_probe: asyncio.Task[None] | None = None
        # Degradation warnings at most once per 10 s per kind: an outage costs a few lines.
        self._rate_limited = RateLimitedLog(logger)
        self._state = "new"
        # The one close that every aclose() awaits, and the signal that makes it give up
        # the drain (an aclose() cancelled by a shutdown deadline).
        self._closing: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()
        # Notified after every flush attempt: reads overlaying appends whose commit is out
        # wait on it for the outcome (see _with_pending).
        self._flush_progress = _Signal()

    @property
    def config(self) -> Config:
        """The Config this client was built with."""
        return self._config

    async def open(self) -> None:
        """Connect to the store; `async with` calls this for you."""
        with self._telemetry.operation("memsdk.open"):
            await self._open()

    async def _open(self) -> None:
        if self._state == "closed":
            raise ClientClosedError("this MemoryClient was closed: create a new one")
        if self._state == "new":
            self._state = "opening"
            try:
                # The WAL first: a locked or unusable wal_dir fails before any connection.
                if self._config.wal_dir is not None:
                    await self._open_wal(self._config.wal_dir)
                await self._store.open()
                if self._l2 is not None:
                    await self._l2.open()
            except BaseException:
                # Failed or cancelled: release what was acquired (the wal_dir lock first
                # of all), without a drain, even if this task is cancelled again.
                self._state = "closed"
                self._hurry.set()
                self._closing = asyncio.ensure_future(self._release())
                await _outlast_cancellation(self._closing)
                raise
            if self._flusher is not None:
                self._flusher.start()
            self._state = "open"
            self._telemetry.observe(self._snapshot)
        elif self._state == "opening":
            raise ClientClosedError("open() is already in progress on this MemoryClient")

    async def aclose(self) -> None:
        """Drain the WAL (up to wal_close_timeout), then release every task, thread,
        connection and the wal_dir lock; idempotent and cancel-safe.

        Every call awaits the same close. A call that is cancelled (a shutdown deadline)
        ends the drain at once (what is still pending stays in the WAL for the next open)
        and still releases everything before it raises CancelledError.
        """
        if self._closing is None:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closed"
            self._closing = asyncio.ensure_future(self._release())
        try:
            await asyncio.shield(self._closing)
        except asyncio.CancelledError:
            self._hurry.set()
            await _outlast_cancellation(self._closing)
            raise

    async def _release(self) -> None:
        """Stop and release everything in order; every step runs even if one before it
        failed or this task was cancelled (it then re-raises the cancel at the end)."""
        self._telemetry.forget()
        cancelled: asyncio.CancelledError | None = None
        for step in (
            self._stop_recovery_probe,
            self._close_wal,
            self._stop_background,
            self._close_l2,
            self._store.aclose,
        ):
            try:
                await step()
            except asyncio.CancelledError as exc:
                cancelled = exc  # kept: the rest must still be released
                self._hurry.set()
            except Exception as exc:  # one failed release must not leak the rest
                logger.error(
                    "close: releasing %s failed (%s); the remaining resources are released",
                    step.__name__.lstrip("_"),
                    type(exc).__name__,
                )
        if cancelled is not None:
            raise cancelled

    async def _stop_recovery_probe(self) -> None:
        if self._recovery_probe is not None:
            await stop_tasks([self._recovery_probe])

    async def _stop_background(self) -> None:
        """Best-effort cache repairs and fills get a moment (none when hurried), then stop."""
        if self._background and not self._hurry.is_set():
            await _wait_unless(self._hurry, asyncio.wait(list(self._background), timeout=1.0))
        self._background_stopped = True
        await stop_tasks(list(self._background))

    async def _close_l2(self) -> None:
        if self._l2 is not None:
            await self._l2.aclose()

    async def __aenter__(self) -> MemoryClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ reads

    async def load_context(
        self,
        session_id: str,
        *,
        customer_id: str | None = None,
        last_n: int | None = None,
        expect_existing: bool = False,
    ) -> Context:
        """Return META, the newest `last_n` turns (oldest first) and the newest summary."""
        with self._telemetry.operation("memsdk.load_context") as op, self._overtaken_by_close():
            return await self._load_context(op, session_id, customer_id, last_n, expect_existing)

    async def _load_context(
        self,
        op: Scope | UnrecordedScope,
        session_id: str,
        customer_id: str | None,
        last_n: int | None,
        expect_existing: bool,
    ) -> Context:
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        op.identify(session_id, customer_id)
        window = self._config.last_n if last_n is None else last_n
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 10_000:
            raise InvalidInputError(
                "last_n must be an integer in [1, 10000]", session_id=session_id
            )
        self._check_open()
        # Taken before the read: an append the flusher commits while the read is in flight
        # is then in this snapshot even if the read missed it (read-your-writes).
        pending = self._flusher.pending_for(session_id) if self._flusher is not None else []
        read: _Read | None = None
        deadline = asyncio.get_running_loop().time() + self._config.read_timeout
        if self._config.consistency == "sticky":
            # Sticky routing: this process saw every write of the session; trust L1.
            cached = self._l1.get(session_id)
            if cached is not None:
                read = self._serve_cached(cached, cached.meta, window, "l1")
        if read is None and self._store_breaker.state == "open":
            # Stateless mode: the store is known down; answer now from what this process holds.
            read = self._stateless(session_id, window, "breaker_open")
        if read is None:
            try:
                async with asyncio.timeout_at(deadline):
                    read = await self._load(session_id, window)
            except TimeoutError:
                read = self._stateless(session_id, window, "read_timeout")
            except StoreUnavailableError:
                read = self._stateless(session_id, window, "store_unavailable")
        ctx = read.ctx
        if pending:
            ctx = await self._with_pending(read, pending, window, customer_id, deadline)
        op.set_metric_attribute("memsdk.tier", ctx.source)
        op.set_metric_attribute("memsdk.degraded", ctx.degraded)
        if op.recording:
            op.set("memsdk.turns", len(ctx.turns))
            op.set("memsdk.breaker.state", self._store_breaker.state)
            if pending:
                op.set("memsdk.wal.pending", len(pending))
        if not ctx.degraded:
            self._telemetry.loaded_turn_count(0 if ctx.meta is None else ctx.meta.turn_count)
        if ctx.meta is None:
            if expect_existing and not ctx.degraded:
                self._telemetry.context_lost("load_context")
                raise ContextLostError(
                    "session is absent (expired, deleted or never written): start a new "
                    "conversation or rebuild it from your own records",
                    session_id=session_id,
                )
            return ctx
        rules.check_owner(ctx.meta, customer_id)
        return ctx

    async def _with_pending(
        self,
        read: _Read,
        pending: list[BufferedAppend],
        last_n: int,
        customer_id: str | None,
        deadline: float,
    ) -> Context:
        """The answer with this process's buffered appends that its META does not include
        overlaid (read-your-writes); degraded if that cannot be told by `deadline`."""
        ctx = read.ctx
        owner = ctx.meta.customer_id if ctx.meta is not None else None
        shown = [e for e in pending if _may_show(e, owner, customer_id)]
        ttl = self._config.ttl_seconds
        try:
            return overlay(ctx, shown, read.version, last_n, ttl, floor=read.floor)
        except OverlayUncertain:
            pass
        if not ctx.degraded:
            # A commit of these appends is out: its outcome tells whether META counts them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._flush_progress.wait_for(lambda: not any(e.in_flight for e in shown))
            try:
                return overlay(ctx, shown, read.version, last_n, ttl, floor=read.floor)
            except OverlayUncertain:
                pass
        # Whether META already counts appends that sort below the window cannot be told:
        # the turns are right, turn_count may not be; say so.
        if not ctx.degraded:
            self._degraded_replies += 1
            self._telemetry.degraded("flush_outcome_unknown")
            ctx = msgspec.structs.replace(ctx, degraded=True)
        return overlay(
            ctx, shown, read.version, last_n, ttl, floor=read.floor, uncertain_included=True
        )

    def _stateless(self, session_id: str, last_n: int, reason: str) -> _Read:
        """A degraded answer from L1 alone (or an empty one), with no I/O.

        `reason`: breaker_open, read_timeout or store_unavailable (metric and event label).
        """
        self._degraded_replies += 1
        self._telemetry.degraded(reason)
        self._rate_limited.log(
            logging.WARNING,
            "degraded_read",
            "load_context answered degraded from this process's cache: %s",
            _DEGRADED_WHY[reason],
            extra={"degradation": reason},
        )
        cached = self._l1.get(session_id)
        if cached is None or rules.live_meta(cached.meta, self._clock.time_ms() // 1000) is None:
            empty = Context(
                session_id=session_id,
                meta=None,
                turns=[],
                summary=None,
                degraded=True,
                source="none",
            )
            return _Read(empty, None, None)
        turns: list[Turn] = []
        if cached.newest_first is not None:
            count = rules.select_window(cached.newest_first, last_n, cached.complete)
            if count is None:
                # L1 holds fewer turns than the window needs: serve what it has, from the
                # first turn whose tool results it holds whole.
                count = rules.select_window(cached.newest_first, last_n, True) or 0
                while count > 0 and cached.newest_first[count - 1].role == "tool":
                    count -= 1
            turns = list(cached.newest_first[:count])
            turns.reverse()
        ctx = Context(
            session_id=session_id,
            meta=cached.public_meta,
            turns=turns,
            summary=cached.summary,
            degraded=True,
            source="l1",
        )
        return _Read(ctx, cached.meta.version, cached.meta.floor_turn_id)

    def _snapshot(self) -> TelemetrySnapshot:
        """What the observable gauges report for this client (from health(), no I/O)."""
        h = self.health()
        has_wal = self._wal is not None
        return TelemetrySnapshot(
            store_breaker=h.store_breaker,
            redis_breaker=h.redis_breaker,
            l1_entries=h.l1_entries,
            l1_bytes=h.l1_bytes,
            wal_pending_records=h.wal_pending_records if has_wal else None,
            wal_pending_bytes=h.wal_pending_bytes if has_wal else None,
            wal_oldest_pending_age_s=h.wal_oldest_pending_age_s,
        )

    def _breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self._telemetry.breaker_changed(name, old, new)
        if name == "store":
            if new == "open":
                self._start_recovery_probe()
            elif self._flusher is not None:
                self._flusher.resume_now()  # the store answers again: drain now
        log = logger.warning if new != "closed" else logger.info
        log(
            "%s circuit breaker: %s -> %s",
            name,
            old,
            new,
            extra={"breaker": name, "breaker_from": old, "breaker_to": new},
        )

    def _start_recovery_probe(self) -> None:
        interval = self._config.breaker_probe_interval
        running = self._recovery_probe is not None and not self._recovery_probe.done()
        if interval > 0 and self._state == "open" and not running:
            self._recovery_probe = asyncio.ensure_future(self._probe_while_open(interval))

    async def _probe_while_open(self, interval: float) -> None:
        """While the store's breaker is open, ask the store directly, once per interval.

        The first answer ends the open period; the half-open probes of real traffic then
        decide whether to close, as always. Without this, recovery waits out the open
        period, which doubles on every failed probe up to breaker_max_open_seconds: every
        second of that after the store is back is a second of degraded replies. One small
        read per interval per process is all it costs while the store is down.
        """
        store = self._store.inner  # past the guard: the breaker would refuse it
        while self._store_breaker.state == "open":
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            if self._store_breaker.state != "open":
                return
            try:
                async with asyncio.timeout(self._config.read_timeout):
                    await store.get_meta(_PROBE_SESSION, consistent=False)
            except (TimeoutError, StoreError):
                continue
            self._store_breaker.end_open_period()

    def _serve_cached(
        self, cached: CachedWindow, meta: MetaRecord, last_n: int, source: str
    ) -> _Read | None:
        """The context from L1 if its turns are exactly those `meta` describes; else None."""
        now_s = self._clock.time_ms() // 1000
        if rules.live_meta(meta, now_s) is None:
            return self._absent(meta.session_id, meta)
        newest_first = cached.newest_first
        if newest_first is None or not cached.same_stamp(meta):
            return None
        count = rules.select_window(newest_first, last_n, cached.complete)
        if count is None:
            return None
        self._l1.hits += 1
        self._telemetry.cache_lookup("l1", "hit")
        if meta.version != cached.meta.version:
            # Same turns, newer META (page_context, summary): keep L1 current.
            cached = self._cache_window(meta, newest_first, cached.complete, cached.turn_bytes)
        turns = list(newest_first[:count])
        turns.reverse()
        ctx = Context(
            session_id=meta.session_id,
            meta=cached.public_meta,
            turns=turns,
            summary=cached.summary,
            source=source,
        )
        return _Read(ctx, meta.version, meta.floor_turn_id)

    async def _load(self, session_id: str, last_n: int) -> _Read:
        """Validate L1 against a trusted META (Redis, else the store) or read the store.

        Redis only ever confirms a window this process holds (same turns, same owner): a
        META from Redis never decides on its own who owns a session, which turns it has,
        or that it is absent. Redis is a boundary, not memory: anyone who can write to it
        could have written that META.
        """
        cached = self._l1.get(session_id)
        if (
            self._config.consistency == "validated"
            and cached is not None
            and cached.newest_first is not None
        ):
            meta, source = await self._trusted_meta(session_id, cached)
            if meta is not None:
                live = rules.live_meta(meta, self._clock.time_ms() // 1000) is not None
                if live or source == "store":
                    read = self._serve_cached(cached, meta, last_n, f"l1+{source}")
                    if read is not None:
                        return read
                if live and source == "store":
                    # The store's own META is in hand: only the turns are missing.
                    self._l1.misses += 1
                    self._telemetry.cache_lookup("l1", "miss")
                    newest_first, complete, count = await self._read_turns(session_id, meta, last_n)
                    return self._answer(meta, newest_first, complete, count, "store")
        self._l1.misses += 1
        self._telemetry.cache_lookup("l1", "miss")
        return await self._read_store(session_id, last_n)

    async def _trusted_meta(
        self, session_id: str, cached: CachedWindow
    ) -> tuple[MetaRecord | None, str]:
        """A META that validated mode may check L1's window against, and where it came from.

        Redis first, unless it is behind what this process itself wrote or read; then a
        consistent GetItem on META, offered to Redis (a read-through fill, under the lease
        a miss gave: the next process's check then costs no store read).
        """
        lease = None
        if self._l2 is not None:
            meta, lease = await self._l2.lookup(session_id)
            if meta is not None and self._known_version(session_id, cached) <= meta.version:
                return meta, "redis"
        meta = await self._store.get_meta(session_id, consistent=True)
        if meta is not None:
            self._fill_l2(meta, lease)
        return meta, "store"

    def _known_version(self, session_id: str, cached: CachedWindow | None) -> int:
        """The newest META version this process holds for the session (-1: none)."""
        hint = self._meta_hints.get(session_id)
        return max(
            -1 if cached is None else cached.meta.version, -1 if hint is None else hint.version
        )

    async def _read_store(self, session_id: str, last_n: int) -> _Read:
        """Read META and the first page of turns together; fill L1."""
        strong = self._config.consistency == "strong"
        # Sticky reads may read META eventually consistent, unless this process wrote or
        # read the session before: then an older META would hide its own turns.
        consistent = not (
            self._config.consistency == "sticky" and session_id not in self._meta_hints
        )
        meta_task = asyncio.ensure_future(self._store.get_meta(session_id, consistent=consistent))
        try:
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=strong
            )
            stored = await meta_task
        finally:
            if not meta_task.done():
                await stop_tasks([meta_task])  # the query's own error is the one raised
            elif not meta_task.cancelled():
                meta_task.exception()  # retrieved: the query's own error is the one raised
        meta = rules.live_meta(stored, self._clock.time_ms() // 1000)
        if meta is None:
            return self._absent(session_id, stored)
        newest_first, complete, count = await self._read_turns(
            session_id, meta, last_n, parallel_page=page
        )
        return self._answer(meta, newest_first, complete, count, "store")

    async def _read_turns(
        self,
        session_id: str,
        meta: MetaRecord,
        last_n: int,
        *,
        parallel_page: list[TurnRecord] | None = None,
    ) -> tuple[list[TurnRecord], bool, int]:
        """Visible turns newest first, whether that is all of them, and the window's size:
        exactly the turns `meta` counts (never a torn window).

        `parallel_page`: the first page, queried in parallel with the GetItem of `meta`.
        A commit may land between the two: if its turns are newer than the page's, the
        newest ids tell; if they all sort below the newest id (`meta.late_turns`), they
        cannot, so the page is read again after META. A page queried after META misses
        nothing META counts if it is consistent, so it is whenever META says late_turns.
        """
        strong = self._config.consistency == "strong"
        page = parallel_page
        if page is None or meta.late_turns:
            page = await self._store.query_turns(
                session_id,
                before_turn_id=None,
                limit=last_n,
                consistent=strong or meta.late_turns or page is not None,
            )
        if meta.last_turn_id and (not page or page[0].turn_id < meta.last_turn_id):
            # The Query lagged behind META (eventually consistent, or a commit landed
            # between the two reads, which even strong reads race with): read again.
            page = await self._store.query_turns(
                session_id, before_turn_id=None, limit=last_n, consistent=True
            )
        now_s = self._clock.time_ms() // 1000
        newest_first = rules.visible_turns(meta, page, now_s)
        exhausted = len(page) < last_n or (bool(page) and page[-1].turn_id <= meta.floor_turn_id)
        while (count := rules.select_window(newest_first, last_n, exhausted)) is None:
            before = page[-1].turn_id
            # Short of last_n: what is missing, plus a few. Moving back over tool turns:
            # pages that double, so that reaching the bound costs a few round trips.
            limit = max(last_n - len(newest_first), len(newest_first) - last_n, 1) + 4
            page = await self._store.query_turns(
                session_id, before_turn_id=before, limit=limit, consistent=True
            )
            newest_first.extend(rules.visible_turns(meta, page, now_s))
            exhausted = len(page) < limit or (bool(page) and page[-1].turn_id <= meta.floor_turn_id)
        # `exhausted`: we read down to the floor, so these are all the visible turns.
        return newest_first, exhausted, count

    def _answer(
        self,
        meta: MetaRecord,
        newest_first: list[TurnRecord],
        complete: bool,
        count: int,
        source: str,
    ) -> _Read:
        """Cache what the store said and build the Context of the newest `count` turns."""
        turns = tuple(rules.to_public_turn(t) for t in newest_first)
        entry = self._cache_window(meta, turns, complete, None)
        window = list(turns[:count])
        window.reverse()
        ctx = Context(
            session_id=meta.session_id,
            meta=entry.public_meta,
            turns=window,
            summary=entry.summary,
            source=source,
        )
        return _Read(ctx, meta.version, meta.floor_turn_id)

    def _cache_window(
        self,
        meta: MetaRecord,
        newest_first: tuple[Turn, ...] | None,
        complete: bool,
        turn_bytes: tuple[int, ...] | None,
    ) -> CachedWindow:
        """Put a window in L1 and return it (a transient one if it exceeds the L1 budget)."""
        self._hint(meta)
        public_meta = rules.to_public_meta(meta)
        summary = rules.to_public_summary(meta)
        entry = self._l1.put(
            meta.session_id,
            meta,
            public_meta,
            summary,
            newest_first,
            complete=complete,
            depth=self._depth,
            turn_bytes=turn_bytes,
        )
        if entry is None:
            return CachedWindow(
                meta=meta,
                public_meta=public_meta,
                summary=summary,
                newest_first=newest_first,
                complete=complete,
            )
        return entry

    # ----------------------------------------------------------------- writes

    async def append_turns(
        self, session_id: str, turns: Sequence[Turn], *, customer_id: str | None = None
    ) -> AppendReceipt:
        """Append turns atomically, in order; returns once they are durable.

        Without a `wal_dir`: once the store acknowledged them (`durable=True`). With one:
        once their record is fsync'd in the local write-ahead log (`durable=False`); the
        flusher writes them to the store in the background.
        """
        with self._telemetry.operation("memsdk.append_turns") as op, self._overtaken_by_close():
            receipt = await self._append_turns(op, session_id, turns, customer_id)
            op.set_metric_attribute("memsdk.durable", receipt.durable)
            return receipt

    async def _append_turns(
        self,
        op: Scope | UnrecordedScope,
        session_id: str,
        turns: Sequence[Turn],
        customer_id: str | None,
    ) -> AppendReceipt:
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        op.identify(session_id, customer_id)
        checked = rules.detach_turns(
            rules.validate_turns(session_id, turns, self._config.max_turn_bytes)
        )
        self._check_open()
        if op.recording:
            op.set("memsdk.turns", len(checked))
        if self._wal is not None:
            return await self._append_buffered(session_id, checked, customer_id)

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            return rules.plan_append(
                current,
                session_id=session_id,
                turns=checked,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
                retention_seconds=self._config.turn_retention_seconds,
                ids=self._ids,
            )

        write = await self._commit_required(session_id, plan, operation="append_turns")
        return AppendReceipt(
            session_id=session_id, turn_ids=[t.turn_id for t in write.turns], durable=True
        )

    async def append_turn(
        self, session_id: str, turn: Turn, *, customer_id: str | None = None
    ) -> AppendReceipt:
        """Append one turn; same promise as append_turns."""
        return await self.append_turns(session_id, [turn], customer_id=customer_id)

    async def update_meta(
        self,
        session_id: str,
        *,
        page_context: dict[str, Any] | None = None,
        attributes: dict[str, Any] | None = None,
        customer_id: str | None = None,
    ) -> Meta:
        """Replace each given META field whole (creating the session if absent); returns META."""
        with self._telemetry.operation("memsdk.update_meta") as op, self._overtaken_by_close():
            return await self._update_meta(op, session_id, page_context, attributes, customer_id)

    async def _update_meta(
        self,
        op: Scope | UnrecordedScope,
        session_id: str,
        page_context: dict[str, Any] | None,
        attributes: dict[str, Any] | None,
        customer_id: str | None,
    ) -> Meta:
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        op.identify(session_id, customer_id)
        if page_context is not None:
            page_context = rules.copy_json(
                rules.validate_json(page_context, session_id, "page_context")
            )
        if attributes is not None:
            attributes = rules.copy_json(rules.validate_json(attributes, session_id, "attributes"))
        self._check_open()

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            return rules.plan_update_meta(
                current,
                session_id=session_id,
                page_context=page_context,
                attributes=attributes,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
            )

        write = await self._commit_required(session_id, plan, operation="update_meta")
        return rules.to_public_meta(write.meta)

    async def put_summary(
        self,
        session_id: str,
        text: str,
        *,
        through_turn_id: str,
        customer_id: str | None = None,
    ) -> Summary:
        """Store a summary covering turns up to `through_turn_id`; the newest by that id wins."""
        with self._telemetry.operation("memsdk.put_summary") as op, self._overtaken_by_close():
            return await self._put_summary(op, session_id, text, through_turn_id, customer_id)

    async def _put_summary(
        self,
        op: Scope | UnrecordedScope,
        session_id: str,
        text: str,
        through_turn_id: str,
        customer_id: str | None,
    ) -> Summary:
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        op.identify(session_id, customer_id)
        rules.check_through_turn_id(through_turn_id, session_id)
        rules.validate_text(text, session_id, "summary text")
        rules.validate_summary_size(text, session_id, self._config.max_turn_bytes)
        self._check_open()

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite:
            live = rules.live_meta(current, now_ms // 1000)
            if live is None:
                self._telemetry.context_lost("put_summary")
                raise ContextLostError(
                    "cannot summarize an absent session (expired, deleted or never written)",
                    session_id=session_id,
                )
            return rules.plan_summary(
                live,
                text=text,
                through_turn_id=through_turn_id,
                customer_id=customer_id,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
                retention_seconds=self._config.turn_retention_seconds,
                max_bytes=self._config.max_turn_bytes,
            )

        if self._flusher is not None and any(
            e.first_turn_id <= through_turn_id for e in self._flusher.pending_for(session_id)
        ):
            # The summary may cover turns still in the WAL: they must be in the store first.
            await self._drain_session(session_id, operation="put_summary")
        write = await self._commit_required(
            session_id, plan, operation="put_summary", read_first=True
        )
        assert write.summary is not None  # plan_summary always writes one
        s = write.summary
        return Summary(
            text=s.text, through_turn_id=s.through_turn_id, created_at_ms=s.created_at_ms
        )

    async def delete_session(self, session_id: str, *, customer_id: str | None = None) -> None:
        """Delete every item of the session; a no-op for an unknown session."""
        with self._telemetry.operation("memsdk.delete_session") as op, self._overtaken_by_close():
            await self._delete_session(op, session_id, customer_id)

    async def _delete_session(
        self, op: Scope | UnrecordedScope, session_id: str, customer_id: str | None
    ) -> None:
        rules.validate_session_id(session_id)
        customer_id = rules.validate_customer_id(customer_id, session_id)
        op.identify(session_id, customer_id)
        self._check_open()
        if self._flusher is not None and self._flusher.pending_for(session_id):
            # Turns acknowledged before the delete are deleted with it, not written after.
            await self._drain_session(session_id, operation="delete_session")
        try:
            async with asyncio.timeout(self._config.write_timeout * 10):
                await self._delete(session_id, customer_id)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                "delete_session timed out: the session is hidden or untouched; call it again",
                session_id=session_id,
                maybe_applied=True,
            ) from exc
        finally:
            self._forget(session_id)

    async def _delete(self, session_id: str, customer_id: str | None) -> None:
        current = await self._store.get_meta(session_id, consistent=True)
        for _ in range(_MAX_COMMIT_ROUNDS):
            if current is None:
                return
            if current.deleted:
                # Already deleted: finish a purge that an earlier call may not have finished.
                await self._purge(current)
                return
            now_ms = self._clock.time_ms()
            if rules.live_meta(current, now_ms // 1000) is not None:
                rules.check_owner(current, customer_id)
            write = rules.plan_delete(
                current,
                now_ms=now_ms,
                retention_seconds=self._config.ttl_seconds + self._config.turn_retention_seconds,
            )
            outcome = await self._store.commit(write)
            if outcome.applied:
                # The tombstone goes to Redis before the purge: other processes see the
                # session absent from now on, and no stale fill can revive it.
                await self._write_through(write.meta)
                await self._purge(write.meta)
                return
            current = await self._current_after_conflict(session_id, outcome.current)
        raise StoreUnavailableError(
            "delete_session lost the race to concurrent writers too often; call it again",
            session_id=session_id,
        )

    async def _purge(self, tombstone: MetaRecord) -> None:
        """Remove the items a tombstone hides; the tombstone itself stays (see plan_delete)."""
        try:
            await self._store.purge_session(
                tombstone.session_id, through_turn_id=rules.high_water(tombstone)
            )
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(
                "delete_session hid the session but could not remove its items; call it again",
                session_id=tombstone.session_id,
                maybe_applied=True,
            ) from exc

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the public API's name
        """Wait until every append acknowledged before this call is in the store.

        Without a WAL nothing is buffered and this returns at once. With `timeout`, raises
        StoreUnavailableError naming what is still pending; those records stay in the WAL
        and keep draining in the background.
        """
        with self._telemetry.operation("memsdk.flush") as op, self._overtaken_by_close():
            self._check_open()
            if self._flusher is None:
                return
            if op.recording:
                op.set("memsdk.wal.pending", self._flusher.stats().pending_records)
            await self._flush(timeout)

    async def _flush(self, timeout: float | None) -> None:  # noqa: ASYNC109 - flush()'s own
        assert self._flusher is not None
        from memsdk.wal.flusher import FlusherStoppedError, FlushTimeoutError

        try:
            await self._flusher.wait_through(self._flusher.last_lsn, timeout)
        except FlushTimeoutError:
            raise StoreUnavailableError(
                f"flush timed out after {timeout}s with {self._pending_summary()} still in the "
                "write-ahead log; they stay there and drain when the store answers"
            ) from None
        except FlusherStoppedError:
            raise ClientClosedError(
                "the MemoryClient was closed before its write-ahead log drained: what is "
                "still pending stays in wal_dir and is replayed by the next client that opens it"
            ) from None

    def health(self) -> Health:
        """A no-I/O snapshot of breakers, caches and the write-ahead log."""
        l1 = self._l1.stats()
        l2 = self._l2.stats() if self._l2 is not None else MetaCacheStats()
        breaker = self._store_breaker.stats()
        budget = self._retry_budget.stats()
        bulkhead = self._store.bulkhead.stats()
        wal: dict[str, Any] = {}
        if self._wal is not None and self._flusher is not None:
            log = self._wal.stats()
            oldest = log.oldest_pending_ms
            wal = {
                "wal_pending_records": log.pending_records,
                "wal_pending_bytes": log.pending_bytes,
                "wal_oldest_pending_age_s": (
                    None if oldest is None else max(0.0, (self._clock.time_ms() - oldest) / 1000)
                ),
                "wal_segments": log.segments,
                "wal_appends": log.appends,
                "wal_fsyncs": log.fsyncs,
                "wal_quarantined_segments": log.quarantined,
                "wal_rejected_records": self._wal_rejected_records,
                "wal_rejected_turns": self._wal_rejected_turns,
            }
        return Health(
            store=self._store.description,
            store_breaker=self._store_breaker.state,
            redis_breaker=self._redis_breaker.state if self._l2 is not None else "off",
            l1_entries=l1.entries,
            l1_bytes=l1.bytes,
            l1_max_bytes=l1.max_bytes,
            wal_pending_records=wal.pop("wal_pending_records", 0),
            wal_pending_bytes=wal.pop("wal_pending_bytes", 0),
            wal_oldest_pending_age_s=wal.pop("wal_oldest_pending_age_s", None),
            open=self._state == "open",
            consistency=self._config.consistency,
            redis=self._l2.description if self._l2 is not None else None,
            l1_hits=l1.hits,
            l1_misses=l1.misses,
            l1_evictions=l1.evictions,
            redis_hits=l2.hits,
            redis_misses=l2.misses,
            redis_errors=l2.errors,
            degraded_replies=self._degraded_replies,
            store_calls_rejected=breaker.rejected,
            store_breaker_opened=breaker.opened,
            store_retries=budget.retries,
            store_retries_refused=budget.refused,
            store_calls_in_flight=bulkhead.in_flight,
            store_calls_peak_in_flight=bulkhead.peak_in_flight,
            redis_bypassed=l2.bypassed,
            redis_breaker_opened=self._redis_breaker.stats().opened,
            **wal,
        )

    # ------------------------------------------------------- write-ahead log

    async def _open_wal(self, wal_dir: str) -> None:
        """Open the log and queue what a previous run left unconfirmed (open() starts it)."""
        from memsdk.wal.flusher import Flusher
        from memsdk.wal.log import WalOptions, WriteAheadLog

        cfg = self._config
        options = WalOptions(
            segment_bytes=min(cfg.wal_segment_bytes, max(4_096, cfg.wal_max_bytes // 4)),
            max_bytes=cfg.wal_max_bytes,
            group_commit_interval_s=cfg.wal_linger,
            group_commit_max_records=cfg.wal_batch_records,
        )
        wal, report = await WriteAheadLog.open(wal_dir, options, clock_ms=self._clock.time_ms)
        flusher: Flusher[BufferedAppend] = Flusher(
            apply=self._flush_batch,
            confirm=wal.confirm,
            is_retryable=lambda exc: not _final_for_wal(exc),
            retry_after=_retry_after,
            on_reject=self._reject_batch,
            batch_fits=lambda batch, entry: batch_fits(batch, entry, cfg.wal_flush_batch_turns),
            concurrency=cfg.wal_flush_concurrency,
        )
        self._wal, self._flusher = wal, flusher
        unreadable: list[tuple[int, bytes]] = []
        for record in report.pending:
            try:
                flusher.add(decode_append(record.lsn, record.payload, record.appended_at_ms))
            except UndecodableRecord:
                unreadable.append((record.lsn, record.payload))
        if unreadable:
            # A record that passed its CRC but is not an append of this format (written by
            # another version?): keep it for an operator rather than drop or misread it.
            now_ms = self._clock.time_ms()
            lines = [rejected_line("undecodable", now_ms, p) for _, p in unreadable]
            await asyncio.to_thread(write_rejected, wal_dir, lines)
            self._wal_rejected_records += len(unreadable)
            wal.confirm([lsn for lsn, _ in unreadable])
            logger.error(
                "WAL recovery: %d records could not be decoded; kept in rejected/",
                len(unreadable),
                extra={"wal_unreadable_records": len(unreadable)},
            )
        if report.pending:
            self._telemetry.wal_replay(len(report.pending))
            logger.info(
                "WAL recovery: replaying %d unconfirmed records",
                len(report.pending),
                extra={"wal_replay_records": len(report.pending)},
            )
        if report.truncated_bytes:
            logger.warning(
                "WAL recovery: cut a torn tail of %d bytes (a write interrupted by a crash; "
                "it was never acknowledged)",
                report.truncated_bytes,
                extra={"wal_truncated_bytes": report.truncated_bytes},
            )
        for segment in report.quarantined:
            logger.error(
                "WAL recovery: segment %s is corrupt at offset %d (%s); records before it "
                "are replayed, the segment is kept in quarantine/ for inspection",
                segment.name,
                segment.offset,
                segment.reason,
                extra={"wal_quarantined_segment": segment.name},
            )

    async def _close_wal(self) -> None:
        """Drain within wal_close_timeout (or until hurried), stop the flusher, close the
        log; what is still pending stays in the log for the next start."""
        wal, flusher = self._wal, self._flusher
        if wal is None or flusher is None:
            return
        from memsdk.wal.flusher import FlusherStoppedError, FlushTimeoutError

        try:
            if not self._hurry.is_set():
                drain = flusher.wait_through(flusher.last_lsn, self._config.wal_close_timeout)
                await _wait_unless(self._hurry, drain)
        except (FlushTimeoutError, FlusherStoppedError):
            pass
        finally:
            try:
                await flusher.stop()
            finally:
                await wal.close()
        if flusher.stats().pending_records:
            logger.warning(
                "close: %s still pending (wal_close_timeout=%ss, or the close was cancelled); "
                "they stay in the write-ahead log and are replayed when a client opens it again",
                self._pending_summary(),
                self._config.wal_close_timeout,
                extra={"wal_pending_records": flusher.stats().pending_records},
            )

    def _pending_records(self) -> int:
        return self._flusher.stats().pending_records if self._flusher is not None else 0

    def _pending_summary(self) -> str:
        assert self._flusher is not None
        pending = list(self._flusher.pending())
        sessions = {e.session_id for e in pending}
        age = ""
        if pending:
            oldest_s = (self._clock.time_ms() - pending[0].appended_at_ms) / 1000
            age = f", the oldest {oldest_s:.1f}s old"
        return (
            f"{len(pending)} appends ({sum(e.size for e in pending)} bytes) of "
            f"{len(sessions)} sessions{age}"
        )

    async def _append_buffered(
        self, session_id: str, turns: list[Turn], customer_id: str | None
    ) -> AppendReceipt:
        """Fix the turns' ids, put them in the WAL, acknowledge after the fsync."""
        assert self._wal is not None and self._flusher is not None
        pending = self._flusher.pending_for(session_id)
        # Only owners checked against the store (or a session known absent) lock anyone
        # out: an owner claimed during an outage is checked by the flush instead.
        verified_owners = {
            e.customer_id for e in pending if e.owner_verified and e.customer_id is not None
        }
        known = self._meta_hints.get(session_id)
        verified = known is not None or customer_id in verified_owners
        now_ms = self._clock.time_ms()
        if not verified and customer_id is not None:
            # Ownership needs the session's owner; one META read when this process has
            # never seen the session. A store outage does not block the append: the
            # flusher checks ownership again before anything is written.
            try:
                async with asyncio.timeout(self._config.read_timeout):
                    known = await self._store.get_meta(session_id, consistent=True)
                verified = True
            except (TimeoutError, StoreError):
                known = None
            if known is not None:
                self._hint(known)
        live = rules.live_meta(known, now_ms // 1000)
        if live is not None:
            rules.check_owner(live, customer_id)
        for pending_owner in verified_owners:
            rules.check_owner_id(session_id, pending_owner, customer_id)
        after = rules.high_water(known) if known is not None else None
        if pending and (after is None or pending[-1].last_turn_id > after):
            after = pending[-1].last_turn_id
        records = rules.new_turn_records(
            turns,
            self._ids.next_ids(len(turns), after=after),
            now_ms=now_ms,
            ttl_seconds=self._config.ttl_seconds,
            retention_seconds=self._config.turn_retention_seconds,
        )
        owner = customer_id if customer_id is not None else next(iter(verified_owners), None)
        payload = encode_append(session_id, owner, records)
        flusher = self._flusher

        def durable(lsn: int) -> None:
            # Called by the log once the record is on disk, even if this call was
            # cancelled meanwhile: the record is then flushed, never left unaccounted.
            flusher.add(
                buffered_append(
                    lsn, session_id, owner, records, payload, now_ms, owner_verified=verified
                )
            )

        from memsdk.wal.log import WalClosedError, WalFullError, WalIOError

        try:
            await self._wal.append(payload, timeout=self._config.write_timeout, on_durable=durable)
        except WalFullError as exc:
            self._telemetry.backpressure("wal_full")
            raise BackpressureError(
                f"the write-ahead log is full (wal_max_bytes={self._config.wal_max_bytes}) and "
                f"did not free space within write_timeout={self._config.write_timeout}s: "
                "nothing was written; slow down or retry when the store catches up",
                session_id=session_id,
            ) from exc
        except WalIOError as exc:
            self._telemetry.backpressure("wal_io")
            raise BackpressureError(
                "the write-ahead log could not write this append to disk (disk full or I/O "
                "error): nothing was acknowledged; retry, and check the WAL disk",
                session_id=session_id,
            ) from exc
        except WalClosedError as exc:
            raise ClientClosedError(
                "the MemoryClient was closed before this append reached its write-ahead log: "
                "nothing was acknowledged; append through an open client",
                session_id=session_id,
            ) from exc
        return AppendReceipt(
            session_id=session_id, turn_ids=[t.turn_id for t in records], durable=False
        )

    async def _drain_session(self, session_id: str, *, operation: str) -> None:
        """Wait until the session's buffered appends are in the store (within write_timeout)."""
        assert self._flusher is not None
        from memsdk.wal.flusher import FlusherStoppedError, FlushTimeoutError

        try:
            await self._flusher.wait_key(session_id, self._config.write_timeout * 10)
        except FlushTimeoutError:
            raise StoreUnavailableError(
                f"{operation} needs the session's buffered appends in the store first, and "
                "they did not drain in time; nothing was changed, retry later",
                session_id=session_id,
            ) from None
        except FlusherStoppedError:
            raise ClientClosedError(
                f"the MemoryClient was closed while {operation} waited for the session's "
                "buffered appends: nothing was changed; call it on an open client",
                session_id=session_id,
            ) from None

    async def _flush_batch(self, session_id: str, batch: list[BufferedAppend]) -> None:
        """Write one batch of a session's buffered appends: its turns and META, one commit."""
        remaining = [e.turns() for e in batch]
        attributes = {"memsdk.wal.records": len(batch), "memsdk.turns": sum(map(len, remaining))}
        for entry in batch:
            entry.in_flight = True
        try:
            with self._telemetry.background("memsdk.wal.flush", attributes):
                await self._flush_turns(session_id, batch, remaining)
        except StoreUnavailableError as exc:
            if exc.maybe_applied:
                for entry in batch:
                    entry.maybe_landed = True
            self._flush_failing(batch, exc)
            raise
        except MemsdkError as exc:
            self._flush_failing(batch, exc)
            raise
        finally:
            for entry in batch:
                entry.in_flight = False
            self._flush_progress.notify()

    def _flush_failing(self, batch: list[BufferedAppend], exc: MemsdkError) -> None:
        if not _final_for_wal(exc):
            # Never silent: a store that keeps refusing (down, or a missing table or
            # permission) must show in the logs, not only in the backlog gauges.
            self._rate_limited.log(
                logging.WARNING,
                "wal_flush_failing",
                "WAL flush: %d buffered appends could not be written yet (%s: %s); "
                "they stay in the log and are retried with backoff",
                len(batch),
                type(exc).__name__,
                exc.args[0] if exc.args else "",
                extra={"wal_pending_records": self._pending_records()},
            )

    async def _flush_turns(
        self, session_id: str, batch: list[BufferedAppend], remaining: list[list[TurnRecord]]
    ) -> None:
        """Commit `remaining` (the batch's appends, one list of turns each) as one write;
        appends ordered before another process's delete go to rejected/ instead."""
        owner = batch[0].customer_id  # one owner per batch (see batch_fits)
        set_aside: list[int] = []
        stored_version: list[int | None] = [None]

        def plan(current: MetaRecord | None, now_ms: int) -> SessionWrite | None:
            write, aside = rules.plan_buffered_append(
                current,
                session_id=session_id,
                appends=remaining,
                customer_id=owner,
                now_ms=now_ms,
                ttl_seconds=self._config.ttl_seconds,
            )
            set_aside[:] = aside
            return write

        def landed_before(turn_ids: frozenset[str]) -> None:
            # An earlier run wrote part of these appends (a batch cut another way): skip
            # those turns; positions stay, so that `set_aside` indexes `batch`.
            remaining[:] = [[t for t in turns if t.turn_id not in turn_ids] for turns in remaining]

        def applied(version: int | None) -> None:
            stored_version[0] = version

        write = await self._commit(
            session_id, plan, operation="flush", on_existing=landed_before, on_applied=applied
        )
        aside = {batch[i].lsn for i in set_aside}
        if aside:
            kept = [e for e in batch if e.lsn in aside]
            await self._set_aside(session_id, kept, "ordered_before_delete")
        for entry, turns in zip(batch, remaining, strict=True):
            if entry.lsn in aside:
                continue
            if write is not None and turns and stored_version[0] is not None:
                entry.committed_version = stored_version[0]
            else:
                # Stored by an earlier attempt, at a META version nobody reported.
                entry.maybe_landed = True

    async def _set_aside(
        self, session_id: str, batch: list[BufferedAppend], reason: str, error: str = ""
    ) -> None:
        """Keep acknowledged appends the store will not take under rejected/, with the
        reason; count, log and trace them. Runs before the log confirms them."""
        assert self._config.wal_dir is not None
        now_ms = self._clock.time_ms()
        lines = [rejected_line(reason, now_ms, e.payload) for e in batch]
        await asyncio.to_thread(write_rejected, self._config.wal_dir, lines)
        turns = sum(e.turn_count for e in batch)
        for entry in batch:
            entry.set_aside = True
        self._wal_rejected_records += len(batch)
        self._wal_rejected_turns += turns
        self._telemetry.wal_rejected(reason, len(batch), turns)
        why = _SET_ASIDE_WHY.get(reason, reason)
        self._rate_limited.log(
            logging.ERROR if reason != "ordered_before_delete" else logging.WARNING,
            f"wal_rejected_{reason}",
            "WAL flush: %d acknowledged turns (%d appends) were not written to the store: %s%s; "
            "they are kept in the WAL's rejected/ folder",
            turns,
            len(batch),
            why,
            f" ({error})" if error else "",
            extra={
                "session_id": session_id,
                "wal_rejected_records": len(batch),
                "wal_rejected_turns": turns,
                "wal_reason": reason,
            },
        )

    async def _reject_batch(
        self, session_id: str, batch: list[BufferedAppend], exc: BaseException
    ) -> None:
        """The store refused a batch for good: keep it where an operator finds it."""
        reason = "ownership" if isinstance(exc, SessionOwnershipError) else "store_refused"
        await self._set_aside(session_id, batch, reason, type(exc).__name__)

    # ---------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _overtaken_by_close(self) -> Iterator[None]:
        """A store error of a call that aclose() overtook (its store or log went away
        under it) reads as ClientClosedError: what happened is the close."""
        try:
            yield
        except ClientClosedError:
            raise
        except StoreError as exc:
            if self._state != "closed" or getattr(exc, "maybe_applied", False):
                raise  # an ambiguous write keeps saying so
            raise ClientClosedError(
                "the MemoryClient was closed during this call, which did not complete; "
                "call it again on an open client",
                session_id=exc.session_id,
            ) from exc

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClientClosedError(
                "MemoryClient is not open: use `async with MemoryClient(config) as mem:`"
            )

    def _absent(self, session_id: str, stored: MetaRecord | None) -> _Read:
        """The answer for a session that is absent or expired; keep an expired META as a hint."""
        self._forget(session_id)
        if stored is not None:
            self._hint(stored)  # the next write's compare-and-set needs its version
        ctx = Context(session_id=session_id, meta=None, turns=[], summary=None)
        if stored is None:
            return _Read(ctx, None, None)
        # The floor the next incarnation will have: buffered turns at or below it are
        # ordered before the delete (or expiry) and will be set aside, never shown.
        return _Read(ctx, stored.version, rules.high_water(stored))

    def _hint(self, meta: MetaRecord) -> None:
        known = self._meta_hints.get(meta.session_id)
        if known is None or known.version <= meta.version:
            self._meta_hints[meta.session_id] = meta
        self._meta_hints.move_to_end(meta.session_id)
        if len(self._meta_hints) > _MAX_META_HINTS:
            self._meta_hints.popitem(last=False)

    async def _forget_if_trusted(self, session_id: str) -> None:
        """After a write that may have landed unseen: drop what reads would trust unchecked.

        Validated and strong reads compare L1 with the store's META before using it, so a
        landed write makes L1 miss, never lie; and while the store is down, L1 is what
        stateless answers are made of. Sticky reads serve L1 as is: there it must go.
        Redis is what validated reads check L1 against, and a landed write never wrote
        its META through: drop the key (now, so the caller's next read cannot beat it).
        """
        if self._config.consistency == "sticky":
            self._forget(session_id)
        await self._drop_from_l2(session_id)

    async def _after_earlier_attempt(self, session_id: str, stored: MetaRecord | None) -> None:
        """The turns were already in the store, under a META this call did not plan.

        An earlier attempt wrote them (its reply lost, or a crashed process's flush that
        its log replay now repeats), on another base: `write.meta` is not what the store
        holds, so it must not go into L1 or Redis. Keep the stored META as a hint (or
        nothing, if the store did not say), and drop Redis's META: the earlier attempt may
        never have written through.
        """
        if stored is None:
            self._forget(session_id)
        else:
            self._remember(session_id, stored)
        await self._drop_from_l2(session_id)

    async def _drop_from_l2(self, session_id: str) -> None:
        """Drop Redis's META now (even past an open breaker, like a write-through: another
        process may trust it), retrying in the background if Redis did not confirm."""
        if self._l2 is not None and not await self._l2.invalidate(session_id, essential=True):
            self._spawn(self._repair_l2(session_id))

    def _forget(self, session_id: str) -> None:
        self._l1.pop(session_id)
        self._meta_hints.pop(session_id, None)

    def _remember(self, session_id: str, meta: MetaRecord | None) -> None:
        """Keep the newest META a store call revealed (a hint for the next write)."""
        if meta is None:
            self._forget(session_id)
            return
        cached = self._l1.get(session_id)
        if cached is not None and cached.newest_first is not None and cached.same_stamp(meta):
            self._cache_window(meta, cached.newest_first, cached.complete, cached.turn_bytes)
        else:
            self._cache_window(meta, None, False, None)

    def _after_write(self, write: SessionWrite) -> None:
        """Move L1 to what this process just committed, so the next read needs no I/O."""
        meta = write.meta
        cached = self._l1.get(meta.session_id)
        new = tuple(rules.to_public_turn(t) for t in reversed(write.turns))
        sizes = tuple(turn_size(t) for t in new)
        if (
            cached is not None
            and cached.newest_first is not None
            and cached.meta.version == write.expected_version
            and cached.meta.floor_turn_id == meta.floor_turn_id
            # Buffered turns may sort below turns another writer committed meanwhile.
            and (
                not new
                or not cached.newest_first
                or (new[-1].turn_id or "") > _newest_id(cached.newest_first)
            )
        ):
            # L1 held exactly the META this write was based on: extend its window.
            self._cache_window(
                meta, new + cached.newest_first, cached.complete, sizes + cached.turn_bytes
            )
        elif meta.turn_count == len(write.turns):
            # The write holds every turn of the incarnation (a new or empty session).
            self._cache_window(meta, new, True, sizes)
        else:
            self._cache_window(meta, None, False, None)

    async def _write_through(self, meta: MetaRecord) -> None:
        """Put a committed META in Redis before the write is acknowledged (guarantee 5)."""
        if self._l2 is None:
            return
        # Essential: sent even while this process's Redis breaker is open, because another
        # process's may be closed and trust what Redis holds (see RedisMetaCache._send).
        if not await self._l2.put(meta, now_s=self._clock.time_ms() // 1000, essential=True):
            # Refused as older than what Redis holds (fine), or Redis trouble: then Redis
            # may hold an older META than the one just acknowledged. Drop it, retrying in
            # the background, so validated reads fall back to the store.
            self._spawn(self._repair_l2(meta.session_id))

    async def _repair_l2(self, session_id: str) -> None:
        assert self._l2 is not None
        for delay in _L2_REPAIR_DELAYS_S:
            if await self._l2.invalidate(session_id, essential=True):
                return
            await asyncio.sleep(delay)

    def _fill_l2(self, meta: MetaRecord, lease: str | None) -> None:
        """Read-through: offer a META read from the store to Redis, off the caller's path.

        `lease`: from the Redis lookup that missed before the store was read. Without one
        the fill only replaces an older META; it never lands on an absent key.
        """
        if self._l2 is not None:
            now_s = self._clock.time_ms() // 1000
            self._spawn(self._l2.fill(meta, now_s=now_s, lease=lease))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        if len(self._background) >= _MAX_BACKGROUND_TASKS or self._background_stopped:
            # Shed best-effort cache work rather than queue it without bound, or start
            # it after close() stopped the rest (nothing would ever stop it).
            work.close()
            return
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _current_after_conflict(
        self, session_id: str, reported: MetaRecord | None
    ) -> MetaRecord | None:
        if reported is not None:
            return reported
        return await self._store.get_meta(session_id, consistent=True)

    async def _commit_required(
        self,
        session_id: str,
        plan: _Planner,
        *,
        operation: str,
        read_first: bool = False,
    ) -> SessionWrite:
        write = await self._commit(session_id, plan, operation=operation, read_first=read_first)
        if write is None:
            raise AssertionError(f"{operation} planned no write")  # its planners always write
        return write

    async def _commit(
        self,
        session_id: str,
        plan: _Planner,
        *,
        operation: str,
        read_first: bool = False,
        on_existing: Callable[[frozenset[str]], None] | None = None,
        on_applied: Callable[[int | None], None] | None = None,
    ) -> SessionWrite | None:
        """Plan on the best-known META and commit; after a lost race, re-plan on the current one.

        Returns the write applied, or None when the planner found nothing left to write.
        `on_applied(version)`: the version of the META the store holds after the write
        (None: it was applied by an earlier attempt and the store did not say which).
        """
        sent = False
        try:
            async with asyncio.timeout(self._config.write_timeout):
                current = self._meta_hints.get(session_id)
                fresh = False
                conflicts = 0
                if current is None and read_first:
                    current, fresh = await self._store.get_meta(session_id, consistent=True), True
                for _ in range(_MAX_COMMIT_ROUNDS):
                    try:
                        write = plan(current, self._clock.time_ms())
                    except (SessionOwnershipError, ContextLostError, InvalidTurnError):
                        if fresh:
                            raise
                        # The verdict came from a cached hint (e.g. a summary through a turn
                        # another process appended since): confirm it with the store.
                        current, fresh = (
                            await self._store.get_meta(session_id, consistent=True),
                            True,
                        )
                        continue
                    if write is None:
                        return None
                    sent = True
                    outcome = await self._store.commit(write)
                    if outcome.applied:
                        stored: MetaRecord | None = write.meta
                        if outcome.already_applied and outcome.current != write.meta:
                            stored = outcome.current
                            await self._after_earlier_attempt(session_id, stored)
                        else:
                            self._after_write(write)
                            await self._write_through(write.meta)
                        if on_applied is not None:
                            on_applied(None if stored is None else stored.version)
                        return write
                    sent = False
                    if outcome.existing_turn_ids and on_existing is not None:
                        on_existing(outcome.existing_turn_ids)
                    conflicts += 1
                    if conflicts > 1:
                        # Writers that keep colliding would otherwise retry in lockstep.
                        cap = min(_MAX_CONFLICT_BACKOFF_S, 0.001 * 2**conflicts)
                        await asyncio.sleep(random.uniform(0, cap))
                    current = await self._current_after_conflict(session_id, outcome.current)
                    fresh = True
                    self._remember(session_id, current)
        except TimeoutError as exc:
            if sent:
                await self._forget_if_trusted(session_id)
            raise StoreUnavailableError(
                f"{operation} exceeded write_timeout={self._config.write_timeout}s"
                + (
                    "; it may have been applied (at most once)" if sent else "; nothing was written"
                ),
                session_id=session_id,
                maybe_applied=sent,
            ) from exc
        except StoreUnavailableError as exc:
            if exc.maybe_applied:
                await self._forget_if_trusted(session_id)
            raise
        raise StoreUnavailableError(
            f"{operation} lost the race to concurrent writers {_MAX_COMMIT_ROUNDS} times; retry",
            session_id=session_id,
        )


async def _outlast_cancellation(task: asyncio.Future[None]) -> None:
    """Wait for `task` (a close) to end even if this caller is cancelled once more meanwhile;
    the caller re-raises its own cancel afterwards. A second cancel while waiting here is
    given up on: the close goes on in its own task."""
    if not task.done():
        await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: the close logs its own failures


async def _wait_unless(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` until it ends or `stop` is set, whichever comes first; then stop both."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await stop_tasks([stopper])
        if task.done():
            task.result()  # its error, if any, is the caller's to handle
        else:
            await stop_tasks([task])


class _Signal:
    """A broadcast without a lock: notify() wakes every wait_for() to check its predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every waiter (safe anywhere, even in a cancelled task's finally)."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true, checking after every notify()."""
        while not predicate():
            await self._event.wait()


class _Read(NamedTuple):
    """A read's answer, the version of the META it was built from (None: none), and the
    floor below which this process's buffered turns will be set aside, not written."""

    ctx: Context
    version: int | None
    floor: str | None


def _may_show(entry: BufferedAppend, owner: str | None, reader: str | None) -> bool:
    """Whether a read may overlay this buffered append.

    An append that names a customer is shown only to that customer (a trusted reader, with
    no customer_id, sees it once its owner is the session's, or was checked against the
    store): an append acknowledged while its owner could not be checked may belong to
    another customer's session, and the flush will set it aside then.
    """
    if entry.customer_id is None:
        return True
    if reader is not None:
        return entry.customer_id == reader
    if owner is not None:
        return entry.customer_id == owner
    return entry.owner_verified


class _Planner(Protocol):
    def __call__(self, current: MetaRecord | None, now_ms: int, /) -> SessionWrite | None: ...


def _newest_id(newest_first: tuple[Turn, ...]) -> str:
    return newest_first[0].turn_id or ""


def _retry_after(exc: BaseException) -> float | None:
    """When a refused store call may be tried again (None: it was sent and failed)."""
    return exc.retry_after if isinstance(exc, StoreUnavailableError) else None


def _final_for_wal(exc: BaseException) -> bool:
    """A flush failure that no retry can fix: the records go to rejected/, not round again.

    A store error about the deployment (missing table, credentials, permissions, disk) is
    not final: the records wait, with backoff, until an operator fixes it.
    """
    if isinstance(exc, SessionOwnershipError):
        return True
    return isinstance(exc, StoreError) and exc.permanent
