"""The write-ahead log file layer: segments, framing, group commit, recovery.

The log stores opaque payloads; it knows nothing of sessions, turns or stores.

Directory (0700, files 0600):
    LOCK                      flock'ed for the log's lifetime; holds the owner's pid
    wal-{first_lsn:020d}.seg  segments, oldest first
    quarantine/               copies of segments found corrupt mid-file, for an operator

Trust: the directory and its subdirectories must be real directories (not symbolic links)
owned by this process's user and writable by nobody else; files in them are opened without
following symbolic links. Anyone else who can write there could plant records (with any
customer_id) or point a file at one of this user's files (see `ensure_private_dir`).

Segment: 20-byte header = b"MSDKWAL1" + 8 random salt bytes + crc32 of those 16 bytes (a
damaged salt would otherwise make every frame look torn), then frames. Frame:
    struct "<IIBQ": payload length, crc32, type (1=APPEND, 2=CONFIRM), lsn; then the payload
    crc32 covers salt + type + lsn + payload, so a frame copied from another segment fails.
    APPEND payload  = u64 appended_at_ms + the caller's bytes
    CONFIRM payload = u64 lsns the caller confirmed (they need no replay)
Every frame takes the next lsn, so lsns strictly increase through the log and, within one
segment, are consecutive (a failed write seals its segment). The file name is the lsn of the
segment's first frame.

Durability: an append returns after its frame is fsync'd. One writer task takes what is
queued, writes it with one write and one fsync in a worker thread, then resolves the callers
(group commit). Confirmations need no fsync of their own: they ride with the next append's
fsync, and one lost in a power cut only makes a confirmed record replay (idempotently).
A failed write or fsync is never retried (fsyncgate): the batch fails, the segment is
sealed and the next batch starts a new segment.

Recovery (in `WriteAheadLog.open`): a bad frame with no valid frame after it is a torn tail
and is cut off; a bad frame followed by a valid one is corruption: the records before it are
kept, the rest of the segment is dropped and a copy of the whole file goes to quarantine/.
A payload whose CRC failed is never returned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from memsdk.errors import ConfigError
from memsdk.tasks import stop_tasks

__all__ = [
    "OPEN_NOFOLLOW",
    "FileOps",
    "PendingRecord",
    "QuarantinedSegment",
    "RecoveryReport",
    "WalClosedError",
    "WalError",
    "WalFullError",
    "WalIOError",
    "WalOptions",
    "WalSnapshot",
    "WalStats",
    "WriteAheadLog",
    "ensure_private_dir",
    "inspect_wal",
    "open_nofollow",
]

logger = logging.getLogger("memsdk.wal")

SEGMENT_HEADER_BYTES = 20
_MAGIC = b"MSDKWAL1"
_FRAME = struct.Struct("<IIBQ")  # length, crc32, type, lsn
_LEN_CRC = struct.Struct("<II")
_TYPE_LSN = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")
_APPEND = 1
_CONFIRM = 2
_APPEND_OVERHEAD = _FRAME.size + _U64.size
_MAX_FRAME_PAYLOAD = 0xFFFF_FFFF
_MAX_LSN = 0xFFFF_FFFF_FFFF_FFFF
_SEGMENT_NAME = re.compile(r"wal-(\d{20})\.seg")
_LOCK_NAME = "LOCK"
_QUARANTINE = "quarantine"
# Every file of the log is opened with these: a symbolic link planted under a file's name
# is refused rather than followed, and no descriptor leaks into a child process.
OPEN_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_PID = re.compile(r"[0-9]{1,10}")


class WalError(Exception):
    """Base of the log's internal errors; the client maps them to public memsdk errors."""


class WalFullError(WalError):
    """The disk budget (max_bytes) had no room for the record within the timeout."""


class WalIOError(WalError):
    """Writing or fsyncing the record failed; it was not acknowledged."""


class WalClosedError(WalError):
    """The log is closed."""


@dataclass(frozen=True, kw_only=True)
class WalOptions:
    """Segment size, disk budget and group-commit knobs, validated at construction."""

    segment_bytes: int = 64 * 1024 * 1024
    max_bytes: int = 1 << 30
    group_commit_interval_s: float = 0.0
    group_commit_max_records: int = 256

    def __post_init__(self) -> None:
        if self.segment_bytes <= SEGMENT_HEADER_BYTES:
            raise ConfigError(f"segment_bytes must be > {SEGMENT_HEADER_BYTES}")
        if self.max_bytes <= 0:
            raise ConfigError("max_bytes must be positive")
        if not 0.0 <= self.group_commit_interval_s < 1.0:
            raise ConfigError("group_commit_interval_s must be in [0, 1)")
        if self.group_commit_max_records < 1:
            raise ConfigError("group_commit_max_records must be at least 1")


@dataclass(frozen=True)
class PendingRecord:
    """A record appended (and fsync'd) by an earlier run and never confirmed."""

    lsn: int
    payload: bytes
    appended_at_ms: int


@dataclass(frozen=True)
class QuarantinedSegment:
    """A segment found corrupt at `offset`; a copy is in quarantine/."""

    name: str
    offset: int
    reason: str


@dataclass(frozen=True)
class RecoveryReport:
    """What `open` found: unconfirmed records in lsn order, and what it repaired."""

    pending: list[PendingRecord]
    truncated_bytes: int
    quarantined: list[QuarantinedSegment]
    segments: int  # segment files found on disk before recovery


@dataclass(frozen=True)
class WalStats:
    """A no-I/O snapshot of the log; `quarantined` counts files in quarantine/ at open."""

    segments: int
    bytes_on_disk: int
    pending_records: int
    pending_bytes: int
    oldest_pending_ms: int | None
    appends: int
    fsyncs: int
    batches: int
    quarantined: int
    failed: bool  # the most recent batch failed to reach the disk
    io_errors: int


@dataclass(frozen=True)
class WalSnapshot:
    """What `inspect_wal` read from a log directory, without locking or changing it."""

    segments: int
    bytes_on_disk: int
    pending_records: int
    pending_bytes: int
    oldest_pending_ms: int | None
    quarantined: int
    quarantined_files: list[str]
    torn_tail_bytes: int  # bytes recovery would cut (or a write in progress)
    corrupt_segments: list[str]  # segments recovery would quarantine


class FileOps:
    """The file calls the writer makes; tests subclass it to fail on cue."""

    def open(self, path: str, flags: int, mode: int) -> int:
        """Open a file and return its descriptor, like os.open."""
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write some of `data` and return how many bytes were written, like os.write."""
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        """Make the file's (or directory's) written data durable, like os.fsync."""
        os.fsync(fd)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class _Segment:
    name: str
    first_lsn: int
    size: int
    salt_crc: int = 0
    fd: int = -1  # open only while it is the active segment
    unconfirmed: int = 0


@dataclass
class _BatchResult:
    homes: list[_Segment]  # the segment of each APPEND, in order
    created: list[_Segment]
    error: OSError | None


@dataclass(slots=True)
class _Append:
    payload: bytes
    appended_at_ms: int
    future: asyncio.Future[int]
    frame_bytes: int
    on_durable: Callable[[int], None] | None
    lsn: int = 0


@dataclass
class _Opened:
    wal_dir: str
    lock_fd: int
    segments: list[_Segment]
    pending: dict[int, tuple[int, int, _Segment]]
    next_lsn: int
    report: RecoveryReport
    quarantined_files: int


@dataclass
class _Scan:
    frames: list[tuple[int, int, int, int]] = field(default_factory=list)  # type, lsn, start, end
    good_end: int = SEGMENT_HEADER_BYTES  # offset of the first bad frame, or the file size
    corrupt: bool = False  # a valid frame follows the first bad one
    last_lsn: int = 0


class WriteAheadLog:
    """An fsync'd, segmented, bounded log of opaque payloads with group commit."""

    def __init__(
        self,
        wal_dir: str,
        options: WalOptions,
        opened: _Opened,
        *,
        clock_ms: Callable[[], int],
        file_ops: FileOps,
        executor: ThreadPoolExecutor,
    ) -> None:
        """Use `WriteAheadLog.open`: it recovers the directory first."""
        self._dir = wal_dir
        self._options = options
        self._clock_ms = clock_ms
        self._executor = executor
        self._files = _SegmentFiles(wal_dir, options.segment_bytes, opened.lock_fd, file_ops)
        self._segments = opened.segments
        # lsn -> (payload bytes, appended_at_ms, segment); insertion order is lsn order.
        self._pending = opened.pending
        self._pending_bytes = sum(size for size, _, _ in opened.pending.values())
        self._next_lsn = opened.next_lsn
        self._quarantined = opened.quarantined_files
        self._queue: collections.deque[_Append] = collections.deque()
        self._confirms: list[int] = []
        self._reserved = 0  # frame bytes queued or in flight, not yet in segment sizes
        self._wake = asyncio.Event()
        self._space = asyncio.Condition()
        self._budget_waiters = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._inflight: list[_Append] = []
        self._stalled = False  # the last batch failed: confirms alone do not retry it
        self._closed = False
        self._broken = False
        self._close_task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._appends = 0
        self._failed = False
        self._io_errors = 0

    @classmethod
    async def open(
        cls,
        wal_dir: str | os.PathLike[str],
        options: WalOptions,
        *,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        file_ops: FileOps | None = None,
    ) -> tuple[WriteAheadLog, RecoveryReport]:
        """Lock and recover `wal_dir`, start the writer; ConfigError if another log holds it."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memsdk-wal")
        opening = executor.submit(_open_sync, os.fspath(wal_dir))
        try:
            opened = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled mid-recovery, the worker still finishes it and holds the lock: the
            # same single worker releases it right after. Wait for that (a second cancel
            # stops waiting), so that the directory is free when this call ends.
            await _settle(executor, executor.submit(_release_if_opened, opening))
            raise
        log = cls(
            opened.wal_dir,
            options,
            opened,
            clock_ms=clock_ms,
            file_ops=file_ops or FileOps(),
            executor=executor,
        )
        # A fresh segment now, so appends never extend a recovered file. If the disk is
        # full, open still succeeds (the pending records must be replayable) and the first
        # batch tries again.
        try:
            segment = await loop.run_in_executor(
                executor, log._files.start_segment, opened.next_lsn
            )
        except OSError as exc:
            logger.warning("WAL: could not start a segment at open (%s)", _errno_name(exc))
        except BaseException:
            # Runs after the segment start it interrupted.
            await _settle(executor, executor.submit(log._files.release))
            raise
        else:
            log._segments.append(segment)
        log._writer = asyncio.create_task(log._run(), name="memsdk-wal-writer")
        return log, opened.report

    async def append(
        self,
        payload: bytes,
        *,
        timeout: float | None = 1.0,  # noqa: ASYNC109
        on_durable: Callable[[int], None] | None = None,
    ) -> int:
        """Return the record's lsn once it is fsync'd; WalFullError, WalIOError otherwise.

        `on_durable(lsn)` is called once the record is on disk, in lsn order, even if the
        caller was cancelled meanwhile: the record is then tracked (and can be confirmed)
        instead of lingering unaccounted until the next open replays it.
        """
        if self._closed:
            raise WalClosedError("the write-ahead log is closed")
        if self._broken:
            raise WalIOError("the write-ahead log writer stopped; reopen the log")
        if len(payload) + _U64.size > _MAX_FRAME_PAYLOAD:
            raise ValueError("payload too large for one WAL frame (4 GiB)")
        frame_bytes = _APPEND_OVERHEAD + len(payload)
        if frame_bytes > self._options.max_bytes:
            raise WalFullError(
                f"a {frame_bytes}-byte record can never fit max_bytes={self._options.max_bytes}"
            )
        if not self._fits(frame_bytes):
            await self._wait_for_space(frame_bytes, timeout)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reserved += frame_bytes
        self._queue.append(_Append(payload, self._clock_ms(), future, frame_bytes, on_durable))
        self._wake.set()
        return await future

    def confirm(self, lsns: Iterable[int]) -> None:
        """Mark records as safe elsewhere; persisted with the next batch. Unknown lsns: ignored."""
        if self._closed:
            return  # not persisted: replayed at the next open, which replay tolerates
        added = False
        for lsn in lsns:
            entry = self._pending.pop(lsn, None)
            if entry is None:
                continue
            size, _, segment = entry
            segment.unconfirmed -= 1
            self._pending_bytes -= size
            self._confirms.append(lsn)
            added = True
        if added:
            self._stalled = False
            self._wake.set()

    async def flush(self) -> None:
        """Return once the writer is idle: earlier work persisted (or failed), cleanup done."""
        if self._writer is None or self._writer.done():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(future)
        self._wake.set()
        await future

    def stats(self) -> WalStats:
        """A snapshot of counters and sizes; no I/O."""
        oldest = next(iter(self._pending.values()))[1] if self._pending else None
        return WalStats(
            segments=len(self._segments),
            bytes_on_disk=self._disk_bytes(),
            pending_records=len(self._pending),
            pending_bytes=self._pending_bytes,
            oldest_pending_ms=oldest,
            appends=self._appends,
            fsyncs=self._files.fsyncs,
            batches=self._files.batches,
            quarantined=self._quarantined,
            failed=self._failed,
            io_errors=self._io_errors,
        )

    async def close(self) -> None:
        """Persist queued appends and confirms, stop the writer, release the lock; idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def abandon(self, *, write_queued: bool = False) -> None:
        """Stop as kill -9 would: the writer cancelled, nothing more written (unless
        `write_queued`: what was already queued, as a kill a moment later would), the lock
        dropped. For crash tests; a real process uses close()."""
        if write_queued:
            await self.flush()
        self._closed = True
        if self._writer is not None:
            await stop_tasks([self._writer])
        loop = asyncio.get_running_loop()
        # The single worker thread finishes a write it had started, then drops the lock.
        await loop.run_in_executor(self._executor, self._files.release)
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------ event loop side

    async def _close(self) -> None:
        self._closed = True
        self._stalled = False  # one last attempt at the confirms
        self._wake.set()
        async with self._space:
            self._space.notify_all()  # budget waiters give up with WalClosedError
        try:
            if self._writer is not None:
                await asyncio.gather(self._writer, return_exceptions=True)
        finally:
            loop = asyncio.get_running_loop()
            released = False
            try:
                await loop.run_in_executor(self._executor, self._files.release)
                released = True
            finally:
                # Once the release ran, the worker is idle: joining it takes no time, and
                # no thread of this log outlives close().
                self._executor.shutdown(wait=released)
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _disk_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    def _fits(self, frame_bytes: int) -> bool:
        return self._disk_bytes() + self._reserved + frame_bytes <= self._options.max_bytes

    async def _wait_for_space(self, frame_bytes: int, timeout: float | None) -> None:  # noqa: ASYNC109
        self._budget_waiters += 1
        self._wake.set()  # the writer may seal a fully confirmed active segment to free it
        try:
            async with asyncio.timeout(timeout), self._space:
                await self._space.wait_for(lambda: self._closed or self._fits(frame_bytes))
        except TimeoutError:
            raise WalFullError(
                f"the write-ahead log is full (max_bytes={self._options.max_bytes}) and no "
                f"space was freed within {timeout}s"
            ) from None
        finally:
            self._budget_waiters -= 1
        if self._closed:
            raise WalClosedError("the write-ahead log is closed")

    def _has_work(self) -> bool:
        return bool(self._queue) or (bool(self._confirms) and not self._stalled)

    def _deletable(self) -> bool:
        if not self._segments or self._segments[0].unconfirmed:
            return False
        first = self._segments[0]
        if first is not self._files.active:
            return True
        # Only the active segment is left and all of it is confirmed: seal it when an
        # append waits for disk budget, else it would never be freed.
        return self._budget_waiters > 0 and first.size > SEGMENT_HEADER_BYTES

    async def _run(self) -> None:
        try:
            await self._run_loop()
        except BaseException as exc:
            self._broken = True
            failed = [*self._inflight, *self._queue]
            self._queue.clear()
            for item in failed:
                _fail(item.future, WalIOError("the write-ahead log writer stopped"), exc)
            raise
        finally:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    async def _run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._has_work():
                await self._write_next_batch(loop)
                if self._deletable():
                    await self._collect_garbage(loop)
                continue
            if self._deletable() and await self._collect_garbage(loop):
                continue
            if self._closed:
                return
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()
            self._wake.clear()
            await self._wake.wait()

    async def _write_next_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = self._options.group_commit_interval_s
        limit = self._options.group_commit_max_records
        if interval > 0 and len(self._queue) < limit and not self._closed:
            await asyncio.sleep(interval)  # linger: let more appends join this fsync
        batch: list[_Append] = []
        while self._queue and len(batch) < limit:
            item = self._queue.popleft()
            if item.future.done():  # the caller was cancelled before it was written
                self._reserved -= item.frame_bytes
                continue
            item.lsn = self._next_lsn
            self._next_lsn += 1
            batch.append(item)
        frames = [
            (_APPEND, item.lsn, _U64.pack(item.appended_at_ms), item.payload) for item in batch
        ]
        confirmed = self._confirms
        self._confirms = []
        if confirmed:
            body = struct.pack(f"<{len(confirmed)}Q", *confirmed)
            frames.append((_CONFIRM, self._next_lsn, b"", body))
            self._next_lsn += 1
        if not frames:
            return
        self._inflight = batch
        result = await loop.run_in_executor(self._executor, self._files.write_batch, frames)
        self._inflight = []
        self._segments.extend(result.created)
        self._reserved -= sum(item.frame_bytes for item in batch)
        if result.error is None:
            self._failed = False
            for item, segment in zip(batch, result.homes, strict=True):
                if item.future.done() and item.on_durable is None:
                    # The caller gave up and nobody takes the record: unacknowledged, so
                    # not tracked. After a crash it is replayed at most once.
                    continue
                self._pending[item.lsn] = (len(item.payload), item.appended_at_ms, segment)
                self._pending_bytes += len(item.payload)
                segment.unconfirmed += 1
                self._appends += 1
                if item.on_durable is not None:
                    _hand_over(item.on_durable, item.lsn)
                if not item.future.done():
                    item.future.set_result(item.lsn)
        else:
            self._failed = True
            self._stalled = True
            self._io_errors += 1
            self._confirms[:0] = confirmed  # retried with a later batch
            logger.error(
                "WAL: a batch of %d records failed to reach the disk (%s); none was "
                "acknowledged, the segment is sealed",
                len(batch),
                _errno_name(result.error),
            )
            message = f"the write-ahead log could not write or fsync ({_errno_name(result.error)})"
            for item in batch:
                _fail(item.future, WalIOError(message), result.error)
        if self._budget_waiters:
            async with self._space:
                self._space.notify_all()

    async def _collect_garbage(self, loop: asyncio.AbstractEventLoop) -> int:
        doomed: list[_Segment] = []
        for segment in self._segments:
            if segment.unconfirmed:
                break
            if segment is self._files.active:
                if self._budget_waiters and segment.size > SEGMENT_HEADER_BYTES:
                    doomed.append(segment)
                break
            doomed.append(segment)
        if not doomed:
            return 0
        deleted = await loop.run_in_executor(self._executor, self._files.delete_segments, doomed)
        del self._segments[:deleted]
        if deleted:
            async with self._space:
                self._space.notify_all()
        return deleted


class _SegmentFiles:
    """The log's files, as the worker thread sees them: the active segment, frame writes
    and fsyncs, segment creation and deletion, and the directory lock. Only ever called in
    the log's single worker thread (or before it starts and after it stops)."""

    def __init__(self, wal_dir: str, segment_bytes: int, lock_fd: int, file_ops: FileOps) -> None:
        self._dir = wal_dir
        self._segment_bytes = segment_bytes
        self._lock_fd = lock_fd
        self._ops = file_ops
        self.active: _Segment | None = None
        self.fsyncs = 0
        self.batches = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        self._ops.fsync(fd)

    def fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | OPEN_NOFOLLOW)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._ops.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "short write")
            view = view[written:]

    def start_segment(self, first_lsn: int) -> _Segment:
        """Create, fsync and return the new active segment (the directory entry too)."""
        name = f"wal-{first_lsn:020d}.seg"
        path = os.path.join(self._dir, name)
        salt = os.urandom(8)
        fd = self._ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_NOFOLLOW, 0o600)
        try:
            self._write_all(fd, _segment_header(salt))
            self.fsync(fd)
            self.fsync_dir()
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # a half-made segment is noise for the next recovery
            raise
        segment = _Segment(name, first_lsn, SEGMENT_HEADER_BYTES, zlib.crc32(salt), fd)
        self.active = segment
        return segment

    def seal_active(self) -> None:
        segment, self.active = self.active, None
        if segment is not None and segment.fd >= 0:
            fd, segment.fd = segment.fd, -1
            os.close(fd)

    def _flush(self, segment: _Segment, parts: list[bytes], sync: bool) -> None:
        data = b"".join(parts)
        try:
            self._write_all(segment.fd, data)
            if sync:
                self.fsync(segment.fd)
        except OSError:
            try:
                segment.size = os.fstat(segment.fd).st_size
            except OSError:
                segment.size += len(data)  # assume the worst for the budget
            raise
        segment.size += len(data)

    def write_batch(self, frames: list[tuple[int, int, bytes, bytes]]) -> _BatchResult:
        """Write frames (type, lsn, stamp, body) in lsn order; one write + fsync per segment.

        A batch of confirmations alone is written without an fsync: losing one costs an
        idempotent replay, never a record, and the next append's fsync persists it anyway.
        """
        self.batches += 1
        sync = any(kind == _APPEND for kind, _, _, _ in frames)
        homes: list[_Segment] = []
        created: list[_Segment] = []
        parts: list[bytes] = []
        queued = 0
        limit = self._segment_bytes
        try:
            for kind, lsn, stamp, body in frames:
                frame_bytes = _FRAME.size + len(stamp) + len(body)
                segment = self.active
                if segment is not None:
                    used = segment.size + queued
                    if used + frame_bytes > limit and used > SEGMENT_HEADER_BYTES:
                        self._flush(segment, parts, sync)
                        parts, queued = [], 0
                        self.seal_active()
                        segment = None
                if segment is None:
                    segment = self.start_segment(lsn)
                    created.append(segment)
                type_lsn = _TYPE_LSN.pack(kind, lsn)
                crc = zlib.crc32(body, zlib.crc32(stamp, zlib.crc32(type_lsn, segment.salt_crc)))
                parts += (_LEN_CRC.pack(len(stamp) + len(body), crc), type_lsn, stamp, body)
                queued += frame_bytes
                if kind == _APPEND:
                    homes.append(segment)
            if self.active is not None and parts:
                self._flush(self.active, parts, sync)
        except OSError as exc:
            self.seal_active()  # never write to it again: its page cache state is unknown
            return _BatchResult([], created, exc)
        return _BatchResult(homes, created, None)

    def delete_segments(self, doomed: list[_Segment]) -> int:
        """Delete segments oldest first; return how many are gone."""
        deleted = 0
        for segment in doomed:
            if segment is self.active:
                self.seal_active()
            try:
                os.unlink(os.path.join(self._dir, segment.name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("WAL: could not delete a confirmed segment (%s)", _errno_name(exc))
                break
            deleted += 1
        if deleted:
            try:
                self.fsync_dir()
            except OSError as exc:  # the files are gone from this process's view either way
                logger.warning("WAL: fsync of the directory failed (%s)", _errno_name(exc))
        return deleted

    def release(self) -> None:
        self.seal_active()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


async def _settle(executor: ThreadPoolExecutor, last_job: Future[None]) -> None:
    """Let the executor's worker finish `last_job` and exit; wait for it unless cancelled."""
    executor.shutdown(wait=False)
    await asyncio.wait([asyncio.wrap_future(last_job)])
    executor.shutdown(wait=True)  # the worker is idle now: joining it takes no time
    if last_job.exception() is not None:
        logger.warning("WAL: releasing the log after an interrupted open failed")


def _hand_over(on_durable: Callable[[int], None], lsn: int) -> None:
    try:
        on_durable(lsn)
    except Exception:  # the owner's bug must not stop the writer; the record stays pending
        logger.exception("WAL: the on_durable callback failed; the record is replayed on open")


def _release_if_opened(opening: Future[_Opened]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        fd = opening.result().lock_fd
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _fail(future: asyncio.Future[int], error: WalError, cause: BaseException) -> None:
    if not future.done():
        error.__cause__ = cause
        future.set_exception(error)


def _errno_name(exc: OSError) -> str:
    if exc.errno is None:
        return type(exc).__name__
    return errno.errorcode.get(exc.errno, str(exc.errno))


# ---------------------------------------------------------------- directory, lock, recovery


def ensure_private_dir(path: str, what: str) -> None:
    """Create `path` 0700 if absent; ConfigError unless it is then a real directory owned by
    this process's user that no other user can write. Read bits of others are removed.

    `what` names the directory in messages ("wal_dir", "wal_dir/quarantine"): never a path.
    """
    with contextlib.suppress(FileExistsError):  # not a directory: described below
        os.makedirs(path, mode=0o700, exist_ok=True)
    # Checked on the opened directory, not on its name: the name cannot be swapped for
    # another directory between the check and the chmod.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | OPEN_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise ConfigError(
                f"{what} is a symbolic link: memsdk never follows links there, since whoever "
                "can change the link chooses the files; name the real directory instead"
            ) from None
        raise ConfigError(
            f"{what} is not a directory: remove it or choose another wal_dir"
        ) from None
    try:
        st = os.fstat(fd)
        euid = os.geteuid()
        if st.st_uid != euid:
            raise ConfigError(
                f"{what} is owned by another user (uid {st.st_uid}, this process runs as uid "
                f"{euid}): that user could plant or change records; chown it to uid {euid} "
                "or choose a directory of this user"
            )
        if st.st_mode & 0o022:
            raise ConfigError(
                f"{what} is writable by group or others: another user could have planted or "
                "changed records in it; check its files, then chmod 700 it (or start from a "
                "new directory, which memsdk creates 0700)"
            )
        # Nobody else could write into it, so its files are this user's: tightening it is
        # safe, and keeps the names of its files private.
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def open_nofollow(path: str, flags: int, what: str) -> int:
    """os.open(path, flags, 0o600) without following a symbolic link; ConfigError if it is one."""
    try:
        return os.open(path, flags | OPEN_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise ConfigError(
            f"{what} is a symbolic link: memsdk never follows links in wal_dir (one could "
            "point at any file of this user); check where it points, then remove it"
        ) from None


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | OPEN_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _acquire_lock(wal_dir: str) -> int:
    path = os.path.join(wal_dir, _LOCK_NAME)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, "wal_dir/LOCK")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # The holder wrote LOCK: print what it says only if it is a pid, never other text.
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        owner = text if _PID.fullmatch(text) else "unknown"
        os.close(fd)
        raise ConfigError(
            f"wal_dir is in use by another process (pid {owner}): give each process its own wal_dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _segment_files(wal_dir: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(wal_dir):
        match = _SEGMENT_NAME.fullmatch(name)
        if match is not None:
            found.append((int(match.group(1)), name))
    found.sort()
    return found


def _segment_header(salt: bytes) -> bytes:
    head = _MAGIC + salt
    return head + struct.pack("<I", zlib.crc32(head))


def _read_file(path: str) -> bytes:
    fd = open_nofollow(path, os.O_RDONLY, "a segment in wal_dir")
    with open(fd, "rb") as file:
        return file.read()


def _frame_at(buf: bytes, off: int, salt_crc: int, after_lsn: int, max_lsn: int) -> int:
    """Return the end offset of a valid frame at `off` with after_lsn < lsn <= max_lsn, or -1."""
    if len(buf) - off < _FRAME.size:
        return -1
    fields: tuple[int, int, int, int] = _FRAME.unpack_from(buf, off)
    length, crc, kind, lsn = fields
    if kind == _APPEND:
        if length < _U64.size:
            return -1
    elif kind != _CONFIRM or length % _U64.size:
        return -1
    end = off + _FRAME.size + length
    if end > len(buf) or not after_lsn < lsn <= max_lsn:
        return -1
    with memoryview(buf) as view:
        if zlib.crc32(view[off + 8 : end], salt_crc) != crc:
            return -1
    return end


def _valid_frame_after(buf: bytes, bad: int, salt_crc: int, last_lsn: int) -> bool:
    """Whether any valid frame starts after the bad frame at `bad`."""
    # Frames in a segment have consecutive lsns and take at least _FRAME.size bytes each,
    # which bounds a real frame's lsn by its distance from `bad`: random bytes rarely pass
    # that, so few candidates cost a CRC.
    for kind in (b"\x01", b"\x02"):
        pos = buf.find(kind, bad + 1 + 8)
        while pos != -1:
            off = pos - 8
            max_lsn = last_lsn + 1 + (off - bad) // _FRAME.size
            if _frame_at(buf, off, salt_crc, last_lsn, max_lsn) != -1:
                return True
            pos = buf.find(kind, pos + 1)
    return False


def _scan(buf: bytes, first_lsn: int) -> _Scan | None:
    """Parse a segment's frames up to the first bad one; None if the header is bad."""
    if len(buf) < SEGMENT_HEADER_BYTES or buf[:SEGMENT_HEADER_BYTES] != _segment_header(buf[8:16]):
        return None
    salt_crc = zlib.crc32(buf[8:16])
    scan = _Scan(last_lsn=first_lsn - 1)
    off = SEGMENT_HEADER_BYTES
    while off < len(buf):
        end = _frame_at(buf, off, salt_crc, scan.last_lsn, _MAX_LSN)
        if end == -1:
            scan.corrupt = _valid_frame_after(buf, off, salt_crc, scan.last_lsn)
            break
        _, _, kind, lsn = _FRAME.unpack_from(buf, off)
        scan.frames.append((kind, lsn, off + _FRAME.size, end))
        scan.last_lsn = lsn
        off = end
    scan.good_end = off
    return scan


def _confirmed_lsns(buf: bytes, start: int, end: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{(end - start) // _U64.size}Q", buf, start)


def _quarantine_target(wal_dir: str, name: str) -> str:
    quarantine = os.path.join(wal_dir, _QUARANTINE)
    target = os.path.join(quarantine, name)
    n = 1
    while os.path.lexists(target):
        target = os.path.join(quarantine, f"{name}.{n}")
        n += 1
    return target


def _quarantine_move(wal_dir: str, name: str) -> None:
    os.replace(os.path.join(wal_dir, name), _quarantine_target(wal_dir, name))
    _fsync_path(os.path.join(wal_dir, _QUARANTINE))
    _fsync_path(wal_dir)


def _quarantine_copy_and_cut(wal_dir: str, name: str, buf: bytes, good_end: int) -> None:
    # A copy, not a move: the records before the bad frame stay in the live segment, so
    # they are still durable until the client confirms them.
    target = _quarantine_target(wal_dir, name)
    tmp = target + ".tmp"
    # A leftover of a crash (or anything planted under its name) goes: the copy is a new file.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "a quarantine copy")
    try:
        view = memoryview(buf)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_path(os.path.join(wal_dir, _QUARANTINE))
    _truncate(os.path.join(wal_dir, name), good_end)


def _truncate(path: str, size: int) -> None:
    fd = open_nofollow(path, os.O_RDWR, "a segment in wal_dir")
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_sync(wal_dir: str) -> _Opened:
    wal_dir = os.path.abspath(wal_dir)
    try:
        ensure_private_dir(wal_dir, "wal_dir")
        ensure_private_dir(os.path.join(wal_dir, _QUARANTINE), "wal_dir/quarantine")
        lock_fd = _acquire_lock(wal_dir)
    except OSError as exc:
        raise ConfigError(
            f"wal_dir cannot be used ({_errno_name(exc)}): it must be a directory this "
            "process can create, write and lock"
        ) from exc
    try:
        return _recover(wal_dir, lock_fd)
    except OSError as exc:
        os.close(lock_fd)
        raise WalIOError(f"write-ahead log recovery failed ({_errno_name(exc)})") from exc
    except BaseException:
        os.close(lock_fd)
        raise


def _recover(wal_dir: str, lock_fd: int) -> _Opened:
    files = _segment_files(wal_dir)
    segments: list[_Segment] = []
    quarantined: list[QuarantinedSegment] = []
    truncated = 0
    max_lsn = 0
    # lsn -> (appended_at_ms, payload, segment); a CONFIRM always follows its APPEND.
    unconfirmed: dict[int, tuple[int, bytes, _Segment]] = {}
    for index, (first_lsn, name) in enumerate(files):
        max_lsn = max(max_lsn, first_lsn)
        path = os.path.join(wal_dir, name)
        buf = _read_file(path)
        scan = _scan(buf, first_lsn)
        if scan is None:
            if len(buf) < SEGMENT_HEADER_BYTES and index == len(files) - 1:
                os.unlink(path)  # a crash while the segment was being created
                _fsync_path(wal_dir)
            else:
                _quarantine_move(wal_dir, name)
                reason = f"segment {name}: bad segment header"
                quarantined.append(QuarantinedSegment(name, 0, reason))
                logger.error("WAL recovery: %s; moved to quarantine/", reason)
            continue
        max_lsn = max(max_lsn, scan.last_lsn)
        if scan.good_end < len(buf):
            if scan.corrupt:
                _quarantine_copy_and_cut(wal_dir, name, buf, scan.good_end)
                reason = (
                    f"segment {name}: corrupt frame at offset {scan.good_end} with valid "
                    "frames after it"
                )
                quarantined.append(QuarantinedSegment(name, scan.good_end, reason))
                logger.error("WAL recovery: %s; copied to quarantine/", reason)
            else:
                _truncate(path, scan.good_end)
                truncated += len(buf) - scan.good_end
                logger.warning(
                    "WAL recovery: segment %s: cut a torn tail of %d bytes at offset %d",
                    name,
                    len(buf) - scan.good_end,
                    scan.good_end,
                )
        segment = _Segment(name, first_lsn, scan.good_end)
        segments.append(segment)
        for kind, lsn, start, end in scan.frames:
            if kind == _APPEND:
                (at_ms,) = _U64.unpack_from(buf, start)
                unconfirmed[lsn] = (at_ms, buf[start + _U64.size : end], segment)
            else:
                for confirmed in _confirmed_lsns(buf, start, end):
                    unconfirmed.pop(confirmed, None)
    pending: dict[int, tuple[int, int, _Segment]] = {}
    records = []
    for lsn in sorted(unconfirmed):
        at_ms, payload, segment = unconfirmed[lsn]
        segment.unconfirmed += 1
        pending[lsn] = (len(payload), at_ms, segment)
        records.append(PendingRecord(lsn, payload, at_ms))
    # Fully confirmed segments at the front are no longer needed.
    while segments and segments[0].unconfirmed == 0:
        os.unlink(os.path.join(wal_dir, segments.pop(0).name))
    _fsync_path(wal_dir)
    report = RecoveryReport(records, truncated, quarantined, len(files))
    quarantine_files = len(os.listdir(os.path.join(wal_dir, _QUARANTINE)))
    return _Opened(wal_dir, lock_fd, segments, pending, max_lsn + 1, report, quarantine_files)


def inspect_wal(wal_dir: str | os.PathLike[str]) -> WalSnapshot:
    """Summarize a log directory without locking or modifying it (for `memsdk wal status`)."""
    path = os.fspath(wal_dir)
    if not os.path.isdir(path):
        raise ConfigError("wal_dir does not exist or is not a directory")
    segments = 0
    disk = 0
    torn = 0
    corrupt: list[str] = []
    unconfirmed: dict[int, tuple[int, int]] = {}  # lsn -> (payload bytes, appended_at_ms)
    for first_lsn, name in _segment_files(path):
        try:
            buf = _read_file(os.path.join(path, name))
        except FileNotFoundError:
            continue  # deleted by the live writer since the listing
        segments += 1
        disk += len(buf)
        scan = _scan(buf, first_lsn)
        if scan is None:
            corrupt.append(name)
            continue
        if scan.corrupt:
            corrupt.append(name)
        elif scan.good_end < len(buf):
            torn += len(buf) - scan.good_end
        for kind, lsn, start, end in scan.frames:
            if kind == _APPEND:
                unconfirmed[lsn] = (end - start - _U64.size, _U64.unpack_from(buf, start)[0])
            else:
                for confirmed in _confirmed_lsns(buf, start, end):
                    unconfirmed.pop(confirmed, None)
    quarantine = os.path.join(path, _QUARANTINE)
    files = sorted(os.listdir(quarantine)) if os.path.isdir(quarantine) else []
    oldest = unconfirmed[min(unconfirmed)][1] if unconfirmed else None
    return WalSnapshot(
        segments=segments,
        bytes_on_disk=disk,
        pending_records=len(unconfirmed),
        pending_bytes=sum(size for size, _ in unconfirmed.values()),
        oldest_pending_ms=oldest,
        quarantined=len(files),
        quarantined_files=files,
        torn_tail_bytes=torn,
        corrupt_segments=corrupt,
    )
