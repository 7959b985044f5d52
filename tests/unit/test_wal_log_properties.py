"""Hypothesis on the WAL file layer: garbage never misparses; crash/replay keeps every ack."""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from memsdk.wal.log import WalOptions, WriteAheadLog, inspect_wal

OPTS = WalOptions(segment_bytes=1 << 20, max_bytes=1 << 24)
RECORDS = [b"r%d-" % i + bytes([i]) * (i * 7 % 23) for i in range(8)]


@functools.cache
def base_segment() -> tuple[str, bytes, tuple[int, ...]]:
    """One segment holding RECORDS, written by the real log: (file name, bytes, lsns)."""

    async def write(wal_dir: str) -> list[int]:
        log, _ = await WriteAheadLog.open(wal_dir, OPTS)
        lsns = [await log.append(p) for p in RECORDS]
        await log.close()
        return lsns

    with tempfile.TemporaryDirectory() as tmp:
        lsns = asyncio.run(write(tmp))
        (segment,) = Path(tmp).glob("wal-*.seg")
        return segment.name, segment.read_bytes(), tuple(lsns)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """The base segment after a crash or bit rot: cut, flipped, grown or spliced."""
    data = bytearray(base_segment()[1])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "flip", "insert", "append", "dup-tail", "overwrite"]))
        at = draw(st.integers(0, len(data)))
        if kind == "cut":
            del data[at:]
        elif kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40))
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=80))
        elif kind == "dup-tail":
            data += data[at:]
        else:
            junk = draw(st.binary(min_size=1, max_size=40))
            data[at : at + len(junk)] = junk
    return bytes(data)


async def open_and_close(wal_dir: str) -> list[tuple[int, bytes]]:
    log, report = await WriteAheadLog.open(wal_dir, OPTS)
    await log.append(b"after-recovery")
    await log.close()
    event("quarantined" if report.quarantined else "cut" if report.truncated_bytes else "clean")
    return [(r.lsn, r.payload) for r in report.pending]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_segment_never_yields_a_wrong_record(data: bytes) -> None:
    name, _, lsns = base_segment()
    appended = list(zip(lsns, RECORDS, strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_bytes(data)
        snapshot = inspect_wal(tmp)  # read-only view first: it must agree with recovery
        assert (Path(tmp) / name).read_bytes() == data
        got = asyncio.run(open_and_close(tmp))
        # Only records that were appended, with their own lsn, in order: a prefix.
        assert got == appended[: len(got)]
        assert snapshot.pending_records == len(got)
        # Recovery left a log that reopens cleanly and kept the record appended after it.
        again = asyncio.run(open_and_close(tmp))
        assert again[:-1] == got and again[-1][1] == b"after-recovery"


class CrashReplay(RuleBasedStateMachine):
    """Appends, confirms, clean reopens and crashes against a dict model of unconfirmed acks."""

    acked = Bundle("acked")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.mkdtemp()
        self.generation = 0
        self.options = WalOptions(segment_bytes=160, max_bytes=1 << 20)
        self.model: dict[int, bytes] = {}  # acknowledged and not confirmed
        self.seen: dict[int, bytes] = {}  # every acknowledged record
        self.last_lsn = 0
        self.log: WriteAheadLog | None = None

    def _dir(self) -> str:
        return f"{self.tmp}/gen-{self.generation}"

    def _open(self) -> list[tuple[int, bytes]]:
        self.log, report = self.loop.run_until_complete(
            WriteAheadLog.open(self._dir(), self.options)
        )
        return [(r.lsn, r.payload) for r in report.pending]

    @initialize()
    def start(self) -> None:
        assert self._open() == []

    @rule(target=acked, payloads=st.lists(st.binary(max_size=60), min_size=1, max_size=6))
    def append(self, payloads: list[bytes]) -> object:
        assert self.log is not None
        log = self.log

        async def run() -> list[int]:
            return list(await asyncio.gather(*(log.append(p) for p in payloads)))

        lsns = self.loop.run_until_complete(run())
        assert len(set(lsns)) == len(lsns) and min(lsns) > self.last_lsn
        self.last_lsn = max(lsns)
        for lsn, payload in zip(lsns, payloads, strict=True):
            self.model[lsn] = payload
            self.seen[lsn] = payload
        return multiple(*lsns)

    @rule(lsn=consumes(acked))
    def confirm(self, lsn: int) -> None:
        assert self.log is not None
        self.log.confirm([lsn])
        self.model.pop(lsn, None)

    @rule()
    def reopen(self) -> None:
        assert self.log is not None
        self.loop.run_until_complete(self.log.close())
        assert self._open() == sorted(self.model.items())

    @rule(flush=st.booleans())
    def crash(self, flush: bool) -> None:
        """Copy the files as a kill -9 would leave them: every ack is already fsync'd."""
        assert self.log is not None
        if flush:
            self.loop.run_until_complete(self.log.flush())
        old = self._dir()
        self.generation += 1
        shutil.copytree(old, self._dir(), ignore=shutil.ignore_patterns("LOCK"))
        self.loop.run_until_complete(self.log.close())
        pending = dict(self._open())
        # Every unconfirmed ack is back; a confirm not yet persisted may replay it again.
        assert self.model.items() <= pending.items()
        assert pending.items() <= self.seen.items()
        if flush:
            assert pending == self.model
        self.model = pending

    @invariant()
    def stats_match_model(self) -> None:
        if self.log is not None:
            stats = self.log.stats()
            assert stats.pending_records == len(self.model)
            assert stats.pending_bytes == sum(map(len, self.model.values()))

    def teardown(self) -> None:
        try:
            if self.log is not None:
                self.loop.run_until_complete(self.log.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


CrashReplay.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
TestCrashReplay = CrashReplay.TestCase
