"""Buffered appends: acknowledged once fsync'd in the write-ahead log, written by the flusher.

BufferedWriter is the glue between a MemoryClient and memsdk.wal: it opens the log and
queues what a previous run left unconfirmed (recovery), turns an append into a WAL record
with its turn ids fixed (so a replay writes byte-identical items), flushes a session's
records in log order as batches through the committer, sets aside under rejected/ what
the store will never take (counted, logged, traced: never dropped), overlays pending
appends on reads (read-your-writes), and drains, closes or abandons the log.

It imports the WAL, the record codec and overlay (memsdk.write_buffer), the committer,
the session cache (for META hints) and the Store protocol (one ownership read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from memsdk import session as rules
from memsdk.clock import Clock
from memsdk.committer import Committer
from memsdk.config import Config
from memsdk.errors import (
    BackpressureError,
    ClientClosedError,
    MemsdkError,
    SessionOwnershipError,
    StoreError,
    StoreUnavailableError,
)
from memsdk.ids import TurnIdGenerator
from memsdk.logs import RateLimitedLog
from memsdk.models import AppendReceipt, Context, Turn
from memsdk.reader import Read
from memsdk.records import MetaRecord, SessionWrite, TurnRecord
from memsdk.session_cache import SessionCache
from memsdk.store.base import Store
from memsdk.tasks import wait_unless
from memsdk.telemetry import Telemetry
from memsdk.wal.flusher import Flusher, FlusherStoppedError, FlushTimeoutError
from memsdk.wal.log import (
    RecoveryReport,
    WalClosedError,
    WalFullError,
    WalIOError,
    WalOptions,
    WalStats,
    WriteAheadLog,
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

__all__ = ["BufferedWriter"]

# The client's logger, as before the split: operators filter and alert on its name
# (docs/observability.md, docs/operations.md).
logger = logging.getLogger("memsdk.client")

# Why acknowledged appends were set aside in rejected/, for the log line.
_SET_ASIDE_WHY = {
    "ordered_before_delete": "another process deleted the session (or it expired and "
    "started again) without having seen them, so they are ordered before that delete",
    "ownership": "the session belongs to another customer_id",
    "store_refused": "the store refused them for good",
}


class BufferedWriter:
    """One client's write-ahead log, its flusher and the appends they hold."""

    def __init__(
        self,
        wal_dir: str,
        *,
        store: Store,
        committer: Committer,
        cache: SessionCache,
        ids: TurnIdGenerator,
        clock: Clock,
        config: Config,
        telemetry: Telemetry,
    ) -> None:
        """No I/O: open() opens and recovers the log."""
        self._wal_dir = wal_dir
        self._wal: WriteAheadLog | None = None
        self._store = store
        self._committer = committer
        self._cache = cache
        self._ids = ids
        self._clock = clock
        self._config = config
        self._telemetry = telemetry
        self._aside = SetAside(wal_dir, clock, telemetry)
        self.flusher: Flusher[BufferedAppend] = Flusher(
            apply=self._flush_batch,
            confirm=lambda lsns: self._log.confirm(lsns),
            is_retryable=lambda exc: not _final_for_wal(exc),
            retry_after=_retry_after,
            on_reject=self._aside.reject,
            batch_fits=lambda batch, entry: batch_fits(batch, entry, config.wal_flush_batch_turns),
            concurrency=config.wal_flush_concurrency,
        )
        self._rate_limited = RateLimitedLog(logger)
        # Notified after every flush attempt: reads overlaying appends whose commit is out
        # wait on it for the outcome (see with_pending).
        self._flush_progress = _Signal()

    async def open(self) -> None:
        """Open the log and queue what a previous run left unconfirmed (start() flushes);
        on failure or cancellation nothing stays open (the wal_dir lock is dropped)."""
        config = self._config
        options = WalOptions(
            segment_bytes=min(config.wal_segment_bytes, max(4_096, config.wal_max_bytes // 4)),
            max_bytes=config.wal_max_bytes,
            group_commit_interval_s=config.wal_linger,
            group_commit_max_records=config.wal_batch_records,
        )
        self._wal, report = await WriteAheadLog.open(
            self._wal_dir, options, clock_ms=self._clock.time_ms
        )
        try:
            await _recover(self, report)
        except BaseException:
            # Failed or cancelled: close at once (confirms kept, the wal_dir lock dropped).
            hurried = asyncio.Event()
            hurried.set()
            await self.close(hurried)
            raise

    @property
    def _log(self) -> WriteAheadLog:
        if self._wal is None:
            raise ClientClosedError("the write-ahead log is not open: open the client first")
        return self._wal

    def start(self) -> None:
        """Start flushing (the client is open)."""
        self.flusher.start()

    def resume_now(self) -> None:
        """The store answers again: end the flusher's backoff."""
        self.flusher.resume_now()

    def pending_sessions(self) -> set[str]:
        """The sessions with appends not yet confirmed in the store."""
        return {e.session_id for e in self.flusher.pending()}

    def pending_for(self, session_id: str) -> list[BufferedAppend]:
        """The session's appends not yet confirmed in the store, in log order."""
        return self.flusher.pending_for(session_id)

    # --------------------------------------------------------------- append

    async def append(
        self, session_id: str, turns: list[Turn], customer_id: str | None
    ) -> AppendReceipt:
        """Fix the turns' ids, put them in the WAL, acknowledge after the fsync."""
        pending = self.flusher.pending_for(session_id)
        # Only owners checked against the store (or a session known absent) lock anyone
        # out: an owner claimed during an outage is checked by the flush instead.
        verified_owners = {
            e.customer_id for e in pending if e.owner_verified and e.customer_id is not None
        }
        known = self._cache.hinted(session_id)
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
                self._cache.hint(known)
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
        flusher = self.flusher

        def durable(lsn: int) -> None:
            # Called by the log once the record is on disk, even if this call was
            # cancelled meanwhile: the record is then flushed, never left unaccounted.
            flusher.add(
                buffered_append(
                    lsn, session_id, owner, records, payload, now_ms, owner_verified=verified
                )
            )

        try:
            await self._log.append(payload, timeout=self._config.write_timeout, on_durable=durable)
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

    # ------------------------------------------------------------ overlay

    async def with_pending(
        self,
        read: Read,
        pending: list[BufferedAppend],
        last_n: int,
        customer_id: str | None,
        deadline: float,
        degrade: Callable[[Context, str], Context],
    ) -> Context:
        """The answer with this process's buffered appends that its META does not include
        overlaid (read-your-writes); degraded if that cannot be told by `deadline`."""
        ctx = read.ctx
        owner = ctx.meta.customer_id if ctx.meta is not None else None
        shown = [e for e in pending if _may_show(e, owner, customer_id)]
        ttl = self._config.ttl_seconds
        now_ms = self._clock.time_ms()
        try:
            return overlay(ctx, shown, read.version, last_n, ttl, floor=read.floor, now_ms=now_ms)
        except OverlayUncertain:
            pass
        if not ctx.degraded:
            # A commit of these appends is out: its outcome tells whether META counts them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._flush_progress.wait_for(lambda: not any(e.in_flight for e in shown))
            try:
                return overlay(
                    ctx, shown, read.version, last_n, ttl, floor=read.floor, now_ms=now_ms
                )
            except OverlayUncertain:
                pass
        # Whether META already counts appends that sort below the window cannot be told:
        # the turns are right, turn_count may not be; say so.
        ctx = degrade(ctx, "flush_outcome_unknown")
        return overlay(
            ctx,
            shown,
            read.version,
            last_n,
            ttl,
            floor=read.floor,
            uncertain_included=True,
            now_ms=now_ms,
        )

    # ---------------------------------------------------------------- flush

    async def flush(self, timeout: float | None) -> None:  # noqa: ASYNC109 - flush()'s own
        """Wait until every append acknowledged so far is in the store."""
        try:
            await self.flusher.wait_through(self.flusher.last_lsn, timeout)
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

    async def drain_session(self, session_id: str, *, operation: str) -> None:
        """Wait until the session's buffered appends are in the store (within write_timeout)."""
        try:
            await self.flusher.wait_key(session_id, self._config.write_timeout * 10)
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
                extra={"wal_pending_records": self.flusher.stats().pending_records},
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

        write = await self._committer.commit(
            session_id, plan, operation="flush", on_existing=landed_before, on_applied=applied
        )
        aside = {batch[i].lsn for i in set_aside}
        if aside:
            kept = [e for e in batch if e.lsn in aside]
            await self._aside.keep(session_id, kept, "ordered_before_delete")
        for entry, turns in zip(batch, remaining, strict=True):
            if entry.lsn in aside:
                continue
            if write is not None and turns and stored_version[0] is not None:
                entry.committed_version = stored_version[0]
            else:
                # Stored by an earlier attempt, at a META version nobody reported.
                entry.maybe_landed = True

    # ------------------------------------------------------------ lifecycle

    async def close(self, hurry: asyncio.Event) -> None:
        """Drain within wal_close_timeout (or until hurried), stop the flusher, close the
        log; what is still pending stays in the log for the next start."""
        try:
            if not hurry.is_set():
                drain = self.flusher.wait_through(
                    self.flusher.last_lsn, self._config.wal_close_timeout
                )
                await wait_unless(hurry, drain)
        except (FlushTimeoutError, FlusherStoppedError):
            pass
        finally:
            try:
                await self.flusher.stop()
            finally:
                if self._wal is not None:
                    await self._wal.close()
        if self.flusher.stats().pending_records:
            logger.warning(
                "close: %s still pending (wal_close_timeout=%ss, or the close was cancelled); "
                "they stay in the write-ahead log and are replayed when a client opens it again",
                self._pending_summary(),
                self._config.wal_close_timeout,
                extra={"wal_pending_records": self.flusher.stats().pending_records},
            )

    async def abandon(self, *, write_queued: bool = False) -> None:
        """Stop as kill -9 would: no drain, no last confirms; the lock dropped (crash tests).

        `write_queued`: let the log write what it had queued (confirmations) first."""
        await self.flusher.stop()  # an in-flight commit may still land: replay is idempotent
        if self._wal is not None:
            await self._wal.abandon(write_queued=write_queued)

    # --------------------------------------------------------------- health

    @property
    def rejected_records(self) -> int:
        """Records kept in rejected/ since open (undecodable ones included)."""
        return self._aside.records

    @property
    def rejected_turns(self) -> int:
        """Acknowledged turns kept in rejected/ since open."""
        return self._aside.turns

    def log_stats(self) -> WalStats:
        """The log's own counters; no I/O."""
        return self._log.stats()

    def _pending_summary(self) -> str:
        pending = list(self.flusher.pending())
        sessions = {e.session_id for e in pending}
        age = ""
        if pending:
            oldest_s = (self._clock.time_ms() - pending[0].appended_at_ms) / 1000
            age = f", the oldest {oldest_s:.1f}s old"
        return (
            f"{len(pending)} appends ({sum(e.size for e in pending)} bytes) of "
            f"{len(sessions)} sessions{age}"
        )


async def _recover(writer: BufferedWriter, report: RecoveryReport) -> None:
    """Queue what a previous run left unconfirmed; set aside what cannot be decoded; log
    what recovery cut or quarantined."""
    unreadable: list[tuple[int, bytes]] = []
    for record in report.pending:
        try:
            writer.flusher.add(decode_append(record.lsn, record.payload, record.appended_at_ms))
        except UndecodableRecord:
            unreadable.append((record.lsn, record.payload))
    if unreadable:
        # A record that passed its CRC but is not an append of this format (written by
        # another version?): keep it for an operator rather than drop or misread it.
        now_ms = writer._clock.time_ms()
        lines = [rejected_line("undecodable", now_ms, p) for _, p in unreadable]
        await asyncio.to_thread(write_rejected, writer._wal_dir, lines)
        writer._aside.records += len(unreadable)
        writer._log.confirm([lsn for lsn, _ in unreadable])
        logger.error(
            "WAL recovery: %d records could not be decoded; kept in rejected/",
            len(unreadable),
            extra={"wal_unreadable_records": len(unreadable)},
        )
    if report.pending:
        writer._telemetry.wal_replay(len(report.pending))
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


class SetAside:
    """Keeps acknowledged appends the store will never take under rejected/, with the
    reason: counted, logged and traced, never dropped."""

    def __init__(self, wal_dir: str, clock: Clock, telemetry: Telemetry) -> None:
        self._wal_dir = wal_dir
        self._clock = clock
        self._telemetry = telemetry
        self._rate_limited = RateLimitedLog(logger)
        self.records = 0
        self.turns = 0

    async def keep(
        self, session_id: str, batch: list[BufferedAppend], reason: str, error: str = ""
    ) -> None:
        """Keep acknowledged appends the store will not take under rejected/, with the
        reason; count, log and trace them. Runs before the log confirms them."""
        now_ms = self._clock.time_ms()
        lines = [rejected_line(reason, now_ms, e.payload) for e in batch]
        await asyncio.to_thread(write_rejected, self._wal_dir, lines)
        turns = sum(e.turn_count for e in batch)
        for entry in batch:
            entry.set_aside = True
        self.records += len(batch)
        self.turns += turns
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

    async def reject(
        self, session_id: str, batch: list[BufferedAppend], exc: BaseException
    ) -> None:
        """The store refused a batch for good: keep it where an operator finds it."""
        reason = "ownership" if isinstance(exc, SessionOwnershipError) else "store_refused"
        await self.keep(session_id, batch, reason, type(exc).__name__)


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
