"""The WAL file layer alone: framing, recovery, group commit, budget, faults, lock, files."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from memsdk.errors import ConfigError
from memsdk.wal.log import (
    FileOps,
    RecoveryReport,
    WalClosedError,
    WalFullError,
    WalIOError,
    WalOptions,
    WriteAheadLog,
    inspect_wal,
)

HEADER = 20
OVERHEAD = 25  # frame header (17) + appended_at_ms (8)
OPTS = WalOptions(segment_bytes=1 << 20, max_bytes=1 << 24)
PAYLOADS = [b"alpha", b"bravo", b"charlie-3"]


def segments(wal_dir: Path) -> list[str]:
    return sorted(p.name for p in wal_dir.glob("wal-*.seg"))


def only_segment(wal_dir: Path) -> Path:
    (name,) = segments(wal_dir)
    return wal_dir / name


def frame_bounds(payloads: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) of each APPEND frame of a segment written one record at a time."""
    bounds, off = [], HEADER
    for payload in payloads:
        bounds.append((off, off + OVERHEAD + len(payload)))
        off = bounds[-1][1]
    return bounds


def pairs(report: RecoveryReport) -> list[tuple[int, bytes]]:
    return [(r.lsn, r.payload) for r in report.pending]


async def write_log(wal_dir: Path, payloads: list[bytes], options: WalOptions = OPTS) -> list[int]:
    log, _ = await WriteAheadLog.open(wal_dir, options)
    try:
        return [await log.append(p) for p in payloads]
    finally:
        await log.close()


async def reopen(
    wal_dir: Path, options: WalOptions = OPTS, **kwargs: Any
) -> tuple[WriteAheadLog, RecoveryReport]:
    return await WriteAheadLog.open(wal_dir, options, **kwargs)


async def recover(wal_dir: Path, options: WalOptions = OPTS) -> RecoveryReport:
    """Open, then close at once: what a restart would find."""
    log, report = await WriteAheadLog.open(wal_dir, options)
    await log.close()
    return report


@pytest.fixture
async def template(tmp_path: Path) -> Path:
    """A closed log holding PAYLOADS in one segment, to copy per case."""
    wal_dir = tmp_path / "template"
    await write_log(wal_dir, PAYLOADS)
    assert only_segment(wal_dir).stat().st_size == frame_bounds(PAYLOADS)[-1][1]
    return wal_dir


class FaultyOps(FileOps):
    """Raises OSError(errno) at the next call of an operation, once; can block fsync."""

    def __init__(self) -> None:
        self.faults: dict[str, int] = {}
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.writes = 0

    def _maybe_fail(self, op: str) -> None:
        code = self.faults.pop(op, None)
        if code is not None:
            raise OSError(code, os.strerror(code))

    def open(self, path: str, flags: int, mode: int) -> int:
        self._maybe_fail("open")
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        self._maybe_fail("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(10)
        self._maybe_fail("fsync")
        super().fsync(fd)


# ------------------------------------------------------------------ round trip


async def test_round_trip_confirm_and_lsns_continue(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    payloads = [f"record-{i}".encode() * (i + 1) for i in range(20)]
    lsns = await write_log(wal_dir, payloads)
    assert lsns == sorted(set(lsns))

    log, report = await reopen(wal_dir)
    assert [r.payload for r in report.pending] == payloads
    assert [r.lsn for r in report.pending] == lsns
    assert report.truncated_bytes == 0 and report.quarantined == []
    log.confirm(lsns[::2])
    log.confirm([lsns[0], 999_999, -1])  # duplicates and unknown lsns are ignored
    assert log.stats().pending_records == 10
    await log.close()

    log, report = await reopen(wal_dir)
    assert pairs(report) == list(zip(lsns[1::2], payloads[1::2], strict=True))
    new = await log.append(b"after-reopen")
    assert new > max(lsns)
    log.confirm(lsns[1::2])
    await log.close()

    log, report = await reopen(wal_dir)
    assert pairs(report) == [(new, b"after-reopen")]
    assert await log.append(b"again") > new
    await log.close()


async def test_close_persists_confirms_without_flush(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    log, _ = await reopen(wal_dir)
    lsns = [await log.append(p) for p in PAYLOADS]
    log.confirm(lsns[:2])
    await log.close()
    assert pairs(await recover(wal_dir)) == [(lsns[2], PAYLOADS[2])]


async def test_appended_at_comes_from_the_injected_clock(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    now = [1_000]

    def clock() -> int:
        now[0] += 10
        return now[0]

    log, _ = await reopen(wal_dir, clock_ms=clock)
    assert log.stats().oldest_pending_ms is None
    first = await log.append(b"a")
    await log.append(b"b")
    assert log.stats().oldest_pending_ms == 1_010
    log.confirm([first])
    assert log.stats().oldest_pending_ms == 1_020
    await log.close()
    report = await recover(wal_dir)
    assert [r.appended_at_ms for r in report.pending] == [1_020]


async def test_stats_track_pending_bytes_and_disk(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    log, _ = await reopen(wal_dir)
    lsns = [await log.append(p) for p in PAYLOADS]
    stats = log.stats()
    assert stats.pending_records == 3
    assert stats.pending_bytes == sum(map(len, PAYLOADS))
    assert stats.appends == 3 and stats.batches == 3 and not stats.failed
    log.confirm(lsns[:1])
    await log.flush()
    stats = log.stats()
    assert stats.pending_bytes == sum(map(len, PAYLOADS[1:]))
    assert stats.bytes_on_disk == sum(p.stat().st_size for p in wal_dir.glob("wal-*.seg"))
    assert stats.segments == len(segments(wal_dir))
    await log.close()


# ------------------------------------------------------------------ torn tails and corruption


async def test_torn_tail_at_every_offset_of_the_last_frame(tmp_path: Path, template: Path) -> None:
    start, end = frame_bounds(PAYLOADS)[-1]
    for cut in range(start, end + 1):
        wal_dir = tmp_path / f"cut-{cut}"
        shutil.copytree(template, wal_dir)
        os.truncate(only_segment(wal_dir), cut)

        log, report = await reopen(wal_dir)
        kept = PAYLOADS if cut == end else PAYLOADS[:2]
        assert [r.payload for r in report.pending] == kept, cut
        assert report.truncated_bytes == (cut - start if start < cut < end else 0), cut
        assert report.quarantined == []
        new = await log.append(b"next")
        await log.close()

        report = await recover(wal_dir)
        assert [r.payload for r in report.pending] == [*kept, b"next"], cut
        assert report.pending[-1].lsn == new
        assert report.truncated_bytes == 0


async def test_bit_flip_in_a_middle_frame_quarantines(tmp_path: Path, template: Path) -> None:
    start, end = frame_bounds(PAYLOADS)[1]
    name = only_segment(template).name
    for bit in range(start * 8, end * 8):
        wal_dir = tmp_path / f"flip-{bit}"
        shutil.copytree(template, wal_dir)
        data = bytearray(only_segment(wal_dir).read_bytes())
        data[bit // 8] ^= 1 << (bit % 8)
        only_segment(wal_dir).write_bytes(data)

        report = await recover(wal_dir)
        assert [r.payload for r in report.pending] == PAYLOADS[:1], bit
        assert [(q.name, q.offset) for q in report.quarantined] == [(name, start)], bit
        assert name in report.quarantined[0].reason and str(start) in report.quarantined[0].reason
        assert (wal_dir / "quarantine" / name).read_bytes() == data
        assert report.truncated_bytes == 0
    # The record before the corruption is still durable in the live (cut) segment.
    again = await recover(wal_dir)
    assert [r.payload for r in again.pending] == PAYLOADS[:1] and again.quarantined == []


async def test_bit_flip_in_the_last_frame_is_a_torn_tail(tmp_path: Path, template: Path) -> None:
    start, end = frame_bounds(PAYLOADS)[-1]
    for bit in range(start * 8, end * 8, 3):
        wal_dir = tmp_path / f"flip-{bit}"
        shutil.copytree(template, wal_dir)
        data = bytearray(only_segment(wal_dir).read_bytes())
        data[bit // 8] ^= 1 << (bit % 8)
        only_segment(wal_dir).write_bytes(data)

        report = await recover(wal_dir)
        assert [r.payload for r in report.pending] == PAYLOADS[:2], bit
        assert report.truncated_bytes == end - start and report.quarantined == []
        assert list((wal_dir / "quarantine").iterdir()) == []


async def test_frame_from_another_segment_fails_its_crc(tmp_path: Path) -> None:
    # Same lsns, same lengths, different salts: only the salt tells the frames apart.
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    await write_log(ours, [b"ours-1", b"ours-2"])
    await write_log(theirs, [b"them-1", b"them-2", b"them-3"])
    foreign = only_segment(theirs).read_bytes()
    (s2, e2), (s3, e3) = frame_bounds([b"them-1", b"them-2", b"them-3"])[1:]

    tail = tmp_path / "tail"
    shutil.copytree(ours, tail)
    with only_segment(tail).open("ab") as f:
        f.write(foreign[s3:e3])  # lsn 3 follows lsn 2: only the CRC can reject it
    report = await recover(tail)
    assert [r.payload for r in report.pending] == [b"ours-1", b"ours-2"]
    assert report.truncated_bytes == e3 - s3

    middle = tmp_path / "middle"
    await write_log(middle, [b"ours-1", b"ours-2", b"ours-3"])
    data = bytearray(only_segment(middle).read_bytes())
    data[s2:e2] = foreign[s2:e2]
    only_segment(middle).write_bytes(data)
    report = await recover(middle)
    assert [r.payload for r in report.pending] == [b"ours-1"]
    assert len(report.quarantined) == 1


async def test_duplicated_tail_block_is_cut(tmp_path: Path, template: Path) -> None:
    wal_dir = tmp_path / "dup"
    shutil.copytree(template, wal_dir)
    start, end = frame_bounds(PAYLOADS)[-1]
    data = only_segment(wal_dir).read_bytes()
    only_segment(wal_dir).write_bytes(data + data[start:end])  # same frame, same salt
    report = await recover(wal_dir)
    assert [r.payload for r in report.pending] == PAYLOADS
    assert report.truncated_bytes == end - start and report.quarantined == []


async def test_bad_segment_headers(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    lsns = await write_log(wal_dir, PAYLOADS)
    # A crash while creating the newest segment: empty, removed without fuss.
    (wal_dir / f"wal-{900:020d}.seg").write_bytes(b"")
    report = await recover(wal_dir)
    assert [r.payload for r in report.pending] == PAYLOADS and report.quarantined == []
    assert f"wal-{900:020d}.seg" not in segments(wal_dir)

    # Garbage that is not the newest segment, or is long enough to be one: quarantined.
    bad = [f"wal-{lsns[-1] + 1:020d}.seg", f"wal-{lsns[-1] + 2:020d}.seg"]
    (wal_dir / bad[0]).write_bytes(b"NOTAWAL!" * 4)
    (wal_dir / bad[1]).write_bytes(b"MSDK")
    report = await recover(wal_dir)
    assert [r.payload for r in report.pending] == PAYLOADS
    assert sorted(q.name for q in report.quarantined) == bad
    assert all("bad segment header" in q.reason for q in report.quarantined)
    assert sorted(p.name for p in (wal_dir / "quarantine").iterdir()) == bad
    log, _ = await reopen(wal_dir)
    assert log.stats().quarantined == 2
    await log.close()


@pytest.mark.parametrize("bit", range(8 * 8, HEADER * 8, 7))
async def test_a_damaged_salt_quarantines_instead_of_cutting_everything(
    tmp_path: Path, bit: int
) -> None:
    # Without a checksum on the header, a flipped salt bit fails every frame's CRC and the
    # whole segment would look like one torn tail: acknowledged records cut silently.
    wal_dir = tmp_path / "wal"
    await write_log(wal_dir, PAYLOADS)
    path = only_segment(wal_dir)
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    report = await recover(wal_dir)
    assert report.truncated_bytes == 0
    assert [q.name for q in report.quarantined] == [path.name]
    assert "bad segment header" in report.quarantined[0].reason
    assert (wal_dir / "quarantine" / path.name).read_bytes() == bytes(data)


async def test_confirms_in_later_segments_cover_earlier_records(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    options = WalOptions(segment_bytes=128, max_bytes=1 << 20)
    log, _ = await reopen(wal_dir, options)
    lsns = [await log.append(f"r{i:02d}".encode() * 5) for i in range(12)]
    log.confirm(lsns[1::2])
    await log.close()
    report = await recover(wal_dir, options)
    assert [r.lsn for r in report.pending] == lsns[::2]
    assert report.segments > 3


async def test_recovery_logs_no_payload_or_path(
    tmp_path: Path, template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="memsdk.wal")
    wal_dir = tmp_path / "secret"
    await write_log(wal_dir, [b"SECRET-1", b"SECRET-2", b"SECRET-3"])
    data = bytearray(only_segment(wal_dir).read_bytes())
    data[frame_bounds([b"SECRET-1"] * 3)[1][0] + 30] ^= 1
    data += b"junk"
    only_segment(wal_dir).write_bytes(data)
    ops = FaultyOps()
    log, report = await reopen(wal_dir, file_ops=ops)
    ops.faults["fsync"] = errno.EIO
    with pytest.raises(WalIOError):
        await log.append(b"SECRET-4")
    await log.close()
    assert report.quarantined and caplog.records
    text = caplog.text + " ".join(q.reason for q in report.quarantined)
    assert "SECRET" not in text and str(tmp_path) not in text


# ------------------------------------------------------------------ files, permissions, lock


async def test_permissions(tmp_path: Path, template: Path) -> None:
    wal_dir = tmp_path / "loose"
    wal_dir.mkdir(mode=0o755)
    os.chmod(wal_dir, 0o755)
    log, _ = await reopen(wal_dir)
    await log.append(b"x")
    assert stat.S_IMODE(wal_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((wal_dir / "quarantine").stat().st_mode) == 0o700
    assert stat.S_IMODE((wal_dir / "LOCK").stat().st_mode) == 0o600
    for name in segments(wal_dir):
        assert stat.S_IMODE((wal_dir / name).stat().st_mode) == 0o600
    await log.close()

    new_dir = tmp_path / "new" / "wal"
    await recover(new_dir)
    assert stat.S_IMODE(new_dir.stat().st_mode) == 0o700

    corrupt = tmp_path / "corrupt"
    shutil.copytree(template, corrupt)
    data = bytearray(only_segment(corrupt).read_bytes())
    data[frame_bounds(PAYLOADS)[1][0] + 20] ^= 1
    only_segment(corrupt).write_bytes(data)
    await recover(corrupt)
    (copy,) = (corrupt / "quarantine").iterdir()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


async def test_second_open_is_refused_until_close(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    log, _ = await reopen(wal_dir)
    with pytest.raises(ConfigError, match=rf"in use by another process \(pid {os.getpid()}\)"):
        await reopen(wal_dir)
    await log.close()
    await log.close()  # idempotent
    log, _ = await reopen(wal_dir)
    await log.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from memsdk.wal.log import WalOptions, WriteAheadLog

    async def main():
        log, _ = await WriteAheadLog.open(sys.argv[1], WalOptions())
        await log.append(b"from-child")
        print("ready", flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
    """
)


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(wal_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(ConfigError, match=rf"pid {child.pid}\)"):
            asyncio.run(recover(wal_dir))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    report = asyncio.run(recover(wal_dir))
    assert [r.payload for r in report.pending] == [b"from-child"]


# ------------------------------------------------------------------ group commit


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path / "wal")
    for round_ in range(5):
        lsns = await asyncio.gather(*(log.append(b"%d-%d" % (round_, i)) for i in range(64)))
        assert len(set(lsns)) == 64
    stats = log.stats()
    assert stats.appends == 320
    assert stats.fsyncs / stats.appends <= 0.2
    assert stats.batches <= 10
    await log.close()


async def test_batches_are_capped(tmp_path: Path) -> None:
    options = WalOptions(segment_bytes=1 << 20, max_bytes=1 << 24, group_commit_max_records=8)
    log, _ = await reopen(tmp_path / "wal", options)
    lsns = await asyncio.gather(*(log.append(b"x") for _ in range(64)))
    assert sorted(lsns) == lsns
    assert log.stats().batches >= 8
    await log.close()


async def test_linger_lets_later_appends_join_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's linger ends when the test says, not on the clock: a stall of this
    # process could otherwise outlast it before the second append arrives.
    interval = 0.3
    lingering, linger_over = asyncio.Event(), asyncio.Event()
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        if delay != interval:
            return await real_sleep(delay, result)
        lingering.set()
        await linger_over.wait()
        return result

    monkeypatch.setattr(asyncio, "sleep", sleep)
    log, _ = await reopen(tmp_path / "wal", WalOptions(group_commit_interval_s=interval))
    first = asyncio.create_task(log.append(b"first"))
    async with asyncio.timeout(30):  # only turns a writer that never lingers into a failure
        await lingering.wait()  # the writer has taken the wake-up and is lingering
    second = asyncio.create_task(log.append(b"second"))
    await real_sleep(0)  # queued behind the one the writer holds
    linger_over.set()
    assert await first < await second
    assert log.stats().batches == 1
    await log.close()


# ------------------------------------------------------------------ deletion and budget


async def test_confirmed_prefix_segments_are_deleted(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    # Header 20 + one 35-byte frame fills a segment: one record per segment.
    options = WalOptions(segment_bytes=HEADER + OVERHEAD + 10, max_bytes=1 << 20)
    log, _ = await reopen(wal_dir, options)
    lsns = [await log.append(b"%010d" % i) for i in range(6)]
    assert segments(wal_dir) == [f"wal-{lsn:020d}.seg" for lsn in lsns]

    log.confirm([lsns[0], *lsns[2:]])  # lsns[1] holds its segment and every newer one
    await log.flush()
    names = segments(wal_dir)
    assert f"wal-{lsns[0]:020d}.seg" not in names
    assert all(f"wal-{lsn:020d}.seg" in names for lsn in lsns[1:])

    log.confirm([lsns[1]])
    await log.flush()
    assert len(segments(wal_dir)) == 1 == log.stats().segments  # only the active one
    assert log.stats().pending_records == 0
    await log.close()
    assert (await recover(wal_dir, options)).pending == []


async def test_budget_blocks_then_frees(tmp_path: Path) -> None:
    options = WalOptions(segment_bytes=200, max_bytes=1_000)
    log, _ = await reopen(tmp_path / "wal", options)
    acked = []
    with pytest.raises(WalFullError):
        for i in range(100):
            acked.append(await log.append(b"%050d" % i, timeout=0.05))
    assert 5 <= len(acked) < 100
    assert log.stats().bytes_on_disk <= options.max_bytes

    waiting = asyncio.create_task(log.append(b"w" * 50, timeout=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    log.confirm(acked)  # sealed segments go, the waiter gets in
    lsn = await waiting
    assert lsn > max(acked)
    for _ in range(5):
        await log.append(b"z" * 50, timeout=0.05)
    # CONFIRM frames and segment headers may exceed the budget by a little, never more.
    assert log.stats().bytes_on_disk <= options.max_bytes + 100
    await log.close()


async def test_full_active_segment_is_sealed_when_an_append_waits(tmp_path: Path) -> None:
    options = WalOptions(segment_bytes=1 << 20, max_bytes=600)
    log, _ = await reopen(tmp_path / "wal", options)
    acked = []
    with pytest.raises(WalFullError):
        for _ in range(100):
            acked.append(await log.append(b"p" * 75, timeout=0.05))
    assert log.stats().segments == 1
    waiting = asyncio.create_task(log.append(b"w" * 75, timeout=30))
    await asyncio.sleep(0)
    log.confirm(acked)
    await waiting
    assert log.stats().pending_records == 1
    await log.close()


async def test_oversized_record_fails_at_once(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path / "wal", WalOptions(segment_bytes=256, max_bytes=1_000))
    async with asyncio.timeout(10):
        with pytest.raises(WalFullError):
            await log.append(b"x" * 1_000, timeout=None)
    # A record bigger than a segment (but within the budget) goes into a segment alone.
    await log.append(b"y" * 500)
    await log.close()


async def test_close_wakes_budget_waiters(tmp_path: Path) -> None:
    options = WalOptions(segment_bytes=200, max_bytes=300)
    log, _ = await reopen(tmp_path / "wal", options)
    with pytest.raises(WalFullError):
        for _ in range(10):
            await log.append(b"x" * 50, timeout=0.05)
    waiting = asyncio.create_task(log.append(b"x" * 50, timeout=None))
    await asyncio.sleep(0)
    await log.close()
    with pytest.raises(WalClosedError):
        await waiting
    with pytest.raises(WalClosedError):
        await log.append(b"late")
    log.confirm([1])  # after close: ignored, no error


# ------------------------------------------------------------------ injected I/O faults


@pytest.mark.parametrize(
    ("op", "code"),
    [
        ("write", errno.ENOSPC),
        ("write", errno.EIO),
        ("fsync", errno.EIO),
        ("fsync", errno.ENOSPC),
    ],
)
async def test_failed_batch_is_not_acked_and_the_log_moves_on(
    tmp_path: Path, op: str, code: int
) -> None:
    wal_dir = tmp_path / "wal"
    ops = FaultyOps()
    log, _ = await reopen(wal_dir, file_ops=ops)
    first = await log.append(b"first")
    old = segments(wal_dir)

    ops.faults[op] = code
    results = await asyncio.gather(
        *(log.append(b"doomed-%d" % i) for i in range(5)), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, WalIOError)
        assert isinstance(result.__cause__, OSError) and result.__cause__.errno == code
    stats = log.stats()
    assert stats.pending_records == 1 and stats.failed and stats.io_errors == 1
    sealed_size = (wal_dir / old[0]).stat().st_size

    later = [await log.append(b"later-%d" % i) for i in range(3)]
    assert not log.stats().failed
    assert len(segments(wal_dir)) == 2  # the next batch went to a fresh segment
    assert (wal_dir / old[0]).stat().st_size == sealed_size  # the sealed one is never written
    await log.close()

    report = await recover(wal_dir)
    got = pairs(report)
    acked = [(first, b"first"), *zip(later, [b"later-0", b"later-1", b"later-2"], strict=True)]
    assert all(item in got for item in acked)
    extra = [payload for lsn, payload in got if (lsn, payload) not in acked]
    assert len(extra) == len(set(extra)) and all(p.startswith(b"doomed-") for p in extra)
    assert [lsn for lsn, _ in got] == sorted({lsn for lsn, _ in got})


async def test_segment_creation_failure_fails_the_batch(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    ops = FaultyOps()
    log, _ = await reopen(wal_dir, file_ops=ops)
    keep = await log.append(b"keep")
    ops.faults["fsync"] = errno.EIO
    with pytest.raises(WalIOError):
        await log.append(b"lost-1")  # seals the segment
    ops.faults["open"] = errno.ENOSPC
    with pytest.raises(WalIOError):
        await log.append(b"lost-2")  # no segment could be made
    ops.faults["write"] = errno.ENOSPC  # the new segment's header
    with pytest.raises(WalIOError):
        await log.append(b"lost-3")
    after = await log.append(b"after")
    log.confirm([keep])
    await log.close()
    got = [r.payload for r in (await recover(wal_dir)).pending]
    assert b"after" in got and b"keep" not in got
    assert b"lost-2" not in got and b"lost-3" not in got
    assert after > keep


async def test_confirms_of_a_failed_batch_are_retried(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    ops = FaultyOps()
    log, _ = await reopen(wal_dir, file_ops=ops)
    lsns = [await log.append(p) for p in PAYLOADS]
    ops.faults["write"] = errno.EIO  # nothing of the CONFIRM frame reaches the file
    log.confirm(lsns[:2])
    await log.flush()
    assert log.stats().failed
    await log.append(b"next")  # carries the confirms again
    await log.close()
    assert [r.payload for r in (await recover(wal_dir)).pending] == [PAYLOADS[2], b"next"]


async def test_cancelled_appends_are_not_tracked(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    ops = FaultyOps()
    log, _ = await reopen(wal_dir, file_ops=ops)
    ops.gate = threading.Event()
    in_flight = asyncio.create_task(log.append(b"in-flight"))
    assert await asyncio.to_thread(ops.entered.wait, 10)
    queued = asyncio.create_task(log.append(b"queued"))
    await asyncio.sleep(0)
    in_flight.cancel()
    queued.cancel()
    await asyncio.gather(in_flight, queued, return_exceptions=True)
    ops.gate.set()
    await log.flush()
    assert log.stats().pending_records == 0 and log.stats().appends == 0
    await log.close()
    # Written before the caller gave up: replayed at most once; the queued one never.
    assert [r.payload for r in (await recover(wal_dir)).pending] == [b"in-flight"]


# ------------------------------------------------------------------ inspect, options


async def test_inspect_reads_a_locked_log_without_changing_it(
    tmp_path: Path, template: Path
) -> None:
    wal_dir = tmp_path / "wal"
    log, _ = await reopen(wal_dir, clock_ms=lambda: 5_000)
    lsns = [await log.append(p) for p in PAYLOADS]
    log.confirm(lsns[:1])
    await log.flush()
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in wal_dir.iterdir()}
    snap = inspect_wal(wal_dir)
    assert before == {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in wal_dir.iterdir()}
    assert snap.pending_records == 2 == log.stats().pending_records
    assert snap.pending_bytes == sum(map(len, PAYLOADS[1:]))
    assert snap.oldest_pending_ms == 5_000
    assert snap.segments == 1 and snap.bytes_on_disk == log.stats().bytes_on_disk
    assert snap.quarantined == 0 and snap.torn_tail_bytes == 0
    await log.close()

    torn = tmp_path / "torn"
    shutil.copytree(template, torn)
    size = frame_bounds(PAYLOADS)[-1][1] - 3
    os.truncate(only_segment(torn), size)
    snap = inspect_wal(torn)
    assert snap.torn_tail_bytes == size - frame_bounds(PAYLOADS)[-1][0]
    assert snap.pending_records == 2 and only_segment(torn).stat().st_size == size

    corrupt = tmp_path / "corrupt"
    shutil.copytree(template, corrupt)
    data = bytearray(only_segment(corrupt).read_bytes())
    data[frame_bounds(PAYLOADS)[1][0] + 20] ^= 1
    only_segment(corrupt).write_bytes(data)
    name = only_segment(corrupt).name
    assert inspect_wal(corrupt).corrupt_segments == [name]
    await recover(corrupt)
    snap = inspect_wal(corrupt)
    assert snap.quarantined == 1 and snap.quarantined_files == [name]
    assert snap.corrupt_segments == [] and snap.pending_records == 1

    with pytest.raises(ConfigError):
        inspect_wal(tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_bytes": 16},
        {"max_bytes": 0},
        {"group_commit_interval_s": -0.1},
        {"group_commit_max_records": 0},
    ],
)
def test_options_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        WalOptions(**kwargs)  # type: ignore[arg-type]


async def test_flush_and_close_after_close(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path / "wal")
    await asyncio.gather(log.close(), log.close())
    await log.flush()


async def test_confirmations_alone_cost_no_fsync_and_survive_a_clean_close(
    tmp_path: Path,
) -> None:
    wal_dir = tmp_path / "wal"
    log, _ = await reopen(wal_dir)
    lsns = [await log.append(p) for p in PAYLOADS]
    fsyncs = log.stats().fsyncs
    for lsn in lsns:
        log.confirm([lsn])
        await log.flush()
    assert log.stats().fsyncs == fsyncs  # written, not fsync'd: a loss only means a replay
    await log.close()
    assert (await recover(wal_dir)).pending == []


# ------------------------------------------------------------------ cancellation


async def test_an_open_cancelled_mid_recovery_releases_the_lock(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 2 (issue 13): the lock taken by a recovery whose open() was cancelled was
    never released: every later open in the process said "wal_dir is in use"."""
    import memsdk.wal.log as wal_log

    wal_dir = tmp_path / "wal"
    shutil.copytree(template, wal_dir)
    started = threading.Event()
    recover_for_real = wal_log._recover

    def slow_recover(path: str, lock_fd: int) -> Any:
        started.set()
        threading.Event().wait(0.3)  # a long recovery, on the worker thread
        return recover_for_real(path, lock_fd)

    monkeypatch.setattr(wal_log, "_recover", slow_recover)
    opening = asyncio.ensure_future(WriteAheadLog.open(wal_dir, OPTS))
    assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    assert opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert not [t for t in threading.enumerate() if t.name.startswith("memsdk-wal")]
    monkeypatch.setattr(wal_log, "_recover", recover_for_real)
    log, report = await WriteAheadLog.open(wal_dir, OPTS)  # free at once, nothing lost
    try:
        assert [p for _, p in pairs(report)] == PAYLOADS
    finally:
        await log.close()


async def test_an_append_cancelled_after_its_write_is_still_handed_over(tmp_path: Path) -> None:
    """A record written to disk whose caller was cancelled meanwhile is not left untracked:
    on_durable takes it (the client then flushes it), in lsn order."""
    ops = FaultyOps()
    log, _ = await WriteAheadLog.open(tmp_path / "wal", OPTS, file_ops=ops)
    try:
        ops.gate = threading.Event()  # the next fsync waits for it
        taken: list[int] = []
        first = asyncio.ensure_future(log.append(b"one", on_durable=taken.append))
        second = asyncio.ensure_future(log.append(b"two", on_durable=taken.append))
        await asyncio.get_running_loop().run_in_executor(None, ops.entered.wait, 10)
        first.cancel()  # while its fsync is in progress
        ops.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        lsn = await second
        assert taken == [lsn - 1, lsn]
        assert log.stats().pending_records == 2
    finally:
        ops.gate.set()
        await log.close()
