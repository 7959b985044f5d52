"""MemoryClient: the lifecycle and the public verbs.

Each verb validates its input before any I/O, opens its telemetry scope and hands the work
to the part that owns it (docs/architecture.md has the map):

- memsdk.wiring builds the tiers (the store behind its guard and observer, Redis, the
  breakers); memsdk.resilience.probe probes the store while its breaker is open;
- memsdk.reader reads a context through the tiers; memsdk.committer commits writes;
- memsdk.session_cache keeps L1, the META hints and Redis coherent with both;
- memsdk.buffered_writer owns the write-ahead log when a wal_dir is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from memsdk import session as rules
from memsdk.buffered_writer import BufferedWriter
from memsdk.cache.base import MetaCache
from memsdk.clock import Clock, SystemClock
from memsdk.committer import Committer
from memsdk.config import Config
from memsdk.errors import (
    ClientClosedError,
    ContextLostError,
    InvalidInputError,
    StoreError,
)
from memsdk.health import health_of
from memsdk.ids import TurnIdGenerator
from memsdk.models import AppendReceipt, Context, Health, Meta, Summary, Turn
from memsdk.reader import ContextReader
from memsdk.resilience.breaker import BreakerState
from memsdk.resilience.probe import RecoveryProbe
from memsdk.session_cache import SessionCache
from memsdk.store.base import Store
from memsdk.tasks import outlast_cancellation
from memsdk.telemetry import (
    MeterProvider,
    Scope,
    Telemetry,
    TelemetrySnapshot,
    TracerProvider,
    UnrecordedScope,
)
from memsdk.wiring import build_tiers

__all__ = ["Clock", "MemoryClient", "SystemClock"]

logger = logging.getLogger(__name__)

# The key the recovery probe reads: a valid session id that no session is expected to use;
# reading an absent item costs half a read unit and touches nothing.
_PROBE_SESSION = "memsdk:recovery-probe"


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
        self._config = cfg = config if config is not None else Config()
        self._telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            allowed=cfg.telemetry_attributes,
            enabled=cfg.telemetry_enabled,
        )
        self._tiers = tiers = build_tiers(
            cfg,
            self._telemetry,
            store=store,
            meta_cache=meta_cache,
            on_breaker_change=self._breaker_changed,
        )
        self._store = tiers.store
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._ids = TurnIdGenerator(self._clock.time_ms)
        self._cache = SessionCache(cfg, tiers.meta_cache, self._clock, self._telemetry)
        self._reader = ContextReader(
            self._store, tiers.store_breaker, self._cache, self._clock, cfg, self._telemetry
        )
        self._committer = Committer(
            self._store,
            self._cache,
            self._clock,
            cfg,
            ids=self._ids,
            on_context_lost=self._telemetry.context_lost,
        )
        inner = self._store.inner  # past the guard: its open breaker would refuse the probe
        self._probe = RecoveryProbe(
            tiers.store_breaker,
            lambda: inner.get_meta(_PROBE_SESSION, consistent=False),
            interval_s=cfg.breaker_probe_interval,
            timeout_s=cfg.read_timeout,
        )
        self._writer: BufferedWriter | None = None
        self._state = "new"
        # The one close that every aclose() awaits, and the signal that makes it give up
        # the drain (an aclose() cancelled by a shutdown deadline).
        self._closing: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    @property
    def config(self) -> Config:
        """The Config this client was built with."""
        return self._config

    # ------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Connect to the store; `async with` calls this for you."""
        with self._telemetry.operation("memsdk.open"):
            await self._open()

    async def _open(self) -> None:
        if self._state == "closed":
            raise ClientClosedError("this MemoryClient was closed: create a new one")
        if self._state == "opening":
            raise ClientClosedError("open() is already in progress on this MemoryClient")
        if self._state != "new":
            return
        self._state = "opening"
        try:
            # The WAL first: a locked or unusable wal_dir fails before any connection.
            if self._config.wal_dir is not None:
                writer = BufferedWriter(
                    self._config.wal_dir,
                    store=self._store,
                    committer=self._committer,
                    cache=self._cache,
                    ids=self._ids,
                    clock=self._clock,
                    config=self._config,
                    telemetry=self._telemetry,
                )
                await writer.open()
                self._writer = writer
            await self._store.open()
            await self._cache.open()
            if self._writer is not None:
                # A process that died between a flush's commit and its write-through left
                # Redis with the older META, which validated readers elsewhere trust: drop
                # it for every session the log still holds, before anyone reads through us.
                await self._cache.drop_all_from_l2(
                    self._writer.pending_sessions(), wait_s=self._config.redis_timeout * 4
                )
        except BaseException:
            # Failed or cancelled: release what was acquired (the wal_dir lock first of
            # all), without a drain, even if this task is cancelled again.
            self._state = "closed"
            self._hurry.set()
            self._closing = asyncio.ensure_future(self._release())
            await outlast_cancellation(self._closing)
            raise
        if self._writer is not None:
            self._writer.start()
        self._state = "open"
        self._telemetry.observe(self._snapshot)

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
            await outlast_cancellation(self._closing)
            raise

    async def _release(self) -> None:
        """Stop and release everything in order; every step runs even if one before it
        failed or this task was cancelled (it then re-raises the cancel at the end)."""
        self._telemetry.forget()
        cancelled: asyncio.CancelledError | None = None
        for name, step in (
            ("recovery_probe", self._probe.stop),
            ("wal", self._close_writer),
            ("background", lambda: self._cache.stop_background(self._hurry)),
            ("l2", self._cache.aclose),
            ("store", self._store.aclose),
        ):
            try:
                await step()
            except asyncio.CancelledError as exc:
                cancelled = exc  # kept: the rest must still be released
                self._hurry.set()
            except Exception as exc:  # one failed release must not leak the rest
                logger.error(
                    "close: releasing %s failed (%s); the remaining resources are released",
                    name,
                    type(exc).__name__,
                )
        if cancelled is not None:
            raise cancelled

    async def _close_writer(self) -> None:
        if self._writer is not None:
            await self._writer.close(self._hurry)

    async def _abandon(self, *, write_queued: bool = False) -> None:
        """Stop as kill -9 would: no drain, no last confirms, connections dropped
        (memsdk.testing.crash; a crash is what the public API cannot do)."""
        self._state = "closed"
        if self._writer is not None:
            await self._writer.abandon(write_queued=write_queued)
        await self._probe.stop()
        await self._cache.abandon()
        await self._store.aclose()

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

    # ----------------------------------------------------------------- reads

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
            customer_id = _identify(op, session_id, customer_id)
            window = self._config.last_n if last_n is None else last_n
            if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 10_000:
                raise InvalidInputError(
                    "last_n must be an integer in [1, 10000]", session_id=session_id
                )
            self._check_open()
            # Taken before the read: an append the flusher commits while the read is in flight
            # is then in this snapshot even if the read missed it (read-your-writes).
            pending = self._writer.pending_for(session_id) if self._writer is not None else []
            deadline = asyncio.get_running_loop().time() + self._config.read_timeout
            read = await self._reader.read(session_id, window, deadline)
            ctx = read.ctx
            if pending:
                assert self._writer is not None
                ctx = await self._writer.with_pending(
                    read, pending, window, customer_id, deadline, self._reader.degrade
                )
            op.set_metric_attribute("memsdk.tier", ctx.source)
            op.set_metric_attribute("memsdk.degraded", ctx.degraded)
            if op.recording:
                op.set("memsdk.turns", len(ctx.turns))
                op.set("memsdk.breaker.state", self._tiers.store_breaker.state)
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

    # ---------------------------------------------------------------- writes

    async def append_turns(
        self, session_id: str, turns: Sequence[Turn], *, customer_id: str | None = None
    ) -> AppendReceipt:
        """Append turns atomically, in order; returns once they are durable.

        Without a `wal_dir`: once the store acknowledged them (`durable=True`). With one:
        once their record is fsync'd in the local write-ahead log (`durable=False`); the
        flusher writes them to the store in the background.
        """
        with self._telemetry.operation("memsdk.append_turns") as op, self._overtaken_by_close():
            customer_id = _identify(op, session_id, customer_id)
            checked = rules.detach_turns(
                rules.validate_turns(session_id, turns, self._config.max_turn_bytes)
            )
            self._check_open()
            if op.recording:
                op.set("memsdk.turns", len(checked))
            if self._writer is not None:
                receipt = await self._writer.append(session_id, checked, customer_id)
            else:
                write = await self._committer.append(session_id, checked, customer_id)
                receipt = AppendReceipt(
                    session_id=session_id, turn_ids=[t.turn_id for t in write.turns], durable=True
                )
            op.set_metric_attribute("memsdk.durable", receipt.durable)
            return receipt

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
            customer_id = _identify(op, session_id, customer_id)
            if page_context is not None:
                page_context = rules.copy_json(
                    rules.validate_json(page_context, session_id, "page_context")
                )
            if attributes is not None:
                attributes = rules.copy_json(
                    rules.validate_json(attributes, session_id, "attributes")
                )
            self._check_open()
            write = await self._committer.update_meta(
                session_id, page_context, attributes, customer_id
            )
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
            customer_id = _identify(op, session_id, customer_id)
            rules.check_through_turn_id(through_turn_id, session_id)
            rules.validate_text(text, session_id, "summary text")
            rules.validate_summary_size(text, session_id, self._config.max_turn_bytes)
            self._check_open()

            if self._writer is not None and any(
                e.first_turn_id <= through_turn_id for e in self._writer.pending_for(session_id)
            ):
                # The summary may cover turns still in the WAL: they must be in the store first.
                await self._writer.drain_session(session_id, operation="put_summary")
            s = await self._committer.put_summary(session_id, text, through_turn_id, customer_id)
            return Summary(
                text=s.text, through_turn_id=s.through_turn_id, created_at_ms=s.created_at_ms
            )

    async def delete_session(self, session_id: str, *, customer_id: str | None = None) -> None:
        """Delete every item of the session; a no-op for an unknown session."""
        with self._telemetry.operation("memsdk.delete_session") as op, self._overtaken_by_close():
            customer_id = _identify(op, session_id, customer_id)
            self._check_open()
            if self._writer is not None and self._writer.pending_for(session_id):
                # Turns acknowledged before the delete are deleted with it, not written after.
                await self._writer.drain_session(session_id, operation="delete_session")
            await self._committer.delete(session_id, customer_id)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the public API's name
        """Wait until every append acknowledged before this call is in the store.

        Without a WAL nothing is buffered and this returns at once. With `timeout`, raises
        StoreUnavailableError naming what is still pending; those records stay in the WAL
        and keep draining in the background.
        """
        with self._telemetry.operation("memsdk.flush") as op, self._overtaken_by_close():
            self._check_open()
            if self._writer is None:
                return
            if op.recording:
                op.set("memsdk.wal.pending", self._writer.flusher.stats().pending_records)
            await self._writer.flush(timeout)

    # ---------------------------------------------------------------- health

    def health(self) -> Health:
        """A no-I/O snapshot of breakers, caches and the write-ahead log."""
        return health_of(
            self._tiers,
            self._cache,
            self._writer,
            degraded_replies=self._reader.degraded_replies,
            consistency=self._config.consistency,
            is_open=self._state == "open",
            now_ms=self._clock.time_ms(),
        )

    def _snapshot(self) -> TelemetrySnapshot:
        """What the observable gauges report for this client (from health(), no I/O)."""
        h = self.health()
        has_wal = self._writer is not None
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
                if self._state == "open":
                    self._probe.start()
            elif self._writer is not None:
                self._writer.resume_now()  # the store answers again: drain now
        log = logger.warning if new != "closed" else logger.info
        log(
            "%s circuit breaker: %s -> %s",
            name,
            old,
            new,
            extra={"breaker": name, "breaker_from": old, "breaker_to": new},
        )

    # --------------------------------------------------------------- helpers

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


def _identify(op: Scope | UnrecordedScope, session_id: str, customer_id: str | None) -> str | None:
    """Check both ids before any I/O and name them in the call's telemetry; returns the
    customer id to use."""
    rules.validate_session_id(session_id)
    customer_id = rules.validate_customer_id(customer_id, session_id)
    op.identify(session_id, customer_id)
    return customer_id
