"""SIGKILL a buffered writer at random moments: no acknowledged turn is lost or doubled.

docs/durability.md (the crash window) and guarantees 1, 2, 4. A child process
(tests/integration/wal_child.py) appends at full speed from 12 concurrent tasks (8 sessions of
their own, 2 sessions shared by 2 tasks each) through a MemoryClient with a WAL, and prints
each receipt after `append_turns` returns. The parent kills it with SIGKILL at a seeded random
moment, opens a client on the same WAL directory (replay), flushes, and reads the store with
a client that has no WAL (so no overlay can hide a loss). Then, per session:

- every acknowledged turn id is stored exactly once, with the content it was appended with;
- no content marker is stored twice (a replay that minted new ids would show here);
- an append's turns are all there or none (acked or not: a torn record is dropped whole);
- turns are in turn-id order, and each task's appends and turns are in its own order;
- an append that was not acknowledged is the task's next one at most (no phantom appends);
- META.turn_count equals the turns stored (replays never count twice);
- no turn of another session.

Some trials crash twice (the second child replays the first one's WAL while appending and is
killed too), two trials run on SQLite instead of DynamoDB Local, and segment sizes vary so
that kills land in rotation too. Recovery must find at most a torn tail (no quarantined
segment: SIGKILL does not corrupt what was written). Every trial also checks that a second
client cannot open the WAL directory while the child holds it, that a later reopen replays
nothing twice, and that the directory and files are private (0700 / 0600). A `slow` variant
kills later (bigger backlogs).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import stat
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from memsdk import Config, Context, MemoryClient, errors
from tests.conftest import TEST_TIMEOUTS, new_dynamodb_table
from tests.harness.dynamodb_local import REPO_ROOT, DynamoDBLocal, aws_test_env
from tests.integration.wal_child import CUSTOMER, session_of

pytestmark = pytest.mark.dynamodb

TRIALS = 20
OWNED, TASKS = 8, 12  # 8 sessions of their own, 2 shared by 2 tasks each
SESSIONS = sorted({session_of(t, OWNED) for t in range(TASKS)})
SQLITE_SEEDS = {9, 12}  # one double-crash trial, one single
# Seconds after READY. The child acknowledges ~3,000 appends/s from its WAL, several times
# what DynamoDB Local absorbs, so the backlog (and the replay time) grows with the window.
KILL_WINDOW = (0.2, 0.8)
SLOW_KILL_WINDOW = (1.5, 3.0)  # the `slow` variant: bigger backlogs, more segment rotations
SLOW_SEEDS = (100, 101, 102)
SEGMENT_BYTES = (8 * 1024, 64 * 1024, 64 * 1024 * 1024)
MARKER = re.compile(r"r(\d+):t(\d+):s(\d+):(\d+)/(\d+)")
READY_TIMEOUT = 60.0


def crash_rounds(seed: int) -> int:
    """Two kills in a row (the second one during replay) for every fifth trial."""
    return 2 if seed % 5 == 4 else 1


@dataclass(frozen=True, slots=True)
class Ack:
    """One receipt the child printed: the append is acknowledged."""

    round: int
    session: str
    task: int
    seq: int
    turn_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Marker:
    """What a stored turn's content says about where it came from."""

    round: int
    task: int
    seq: int
    k: int
    n: int


def parse_marker(content: str) -> Marker:
    match = MARKER.fullmatch(content)
    assert match is not None, "a stored turn has content the child never wrote"
    return Marker(*(int(g) for g in match.groups()))


def parse_acks(stdout: bytes, round_: int) -> list[Ack]:
    acks: list[Ack] = []
    lines = stdout.split(b"\n")
    # Each line is one write(2) of a few dozen bytes: SIGKILL cannot tear it, so the text
    # after the last newline must be empty.
    assert lines[-1] == b"", f"torn output line from the child: {lines[-1]!r}"
    for raw in lines[:-1]:
        word, sid, task, seq, n, ids = raw.decode().split(" ")
        assert word == "ACK", raw
        turn_ids = tuple(ids.split(","))
        assert len(turn_ids) == int(n), raw
        acks.append(Ack(round_, sid, int(task), int(seq), turn_ids))
    return acks


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(aws_test_env())
    env.pop("PYTHONWARNINGS", None)
    return env


async def assert_wal_dir_locked(scratch_store: str, wal_dir: Path) -> None:
    """While the child holds the WAL directory, another client must refuse to open it.

    The refused client uses a scratch SQLite store: the lock is the WAL directory's, and
    test_wal_outage.py::test_one_client_per_wal_directory covers the refused open itself.
    """
    with pytest.raises(errors.ConfigError):
        async with MemoryClient(Config(store=scratch_store, wal_dir=str(wal_dir))):
            pass


async def run_and_kill(
    *,
    store: str,
    wal_dir: Path,
    seed: int,
    round_: int,
    delay: float,
    segment_bytes: int,
    check_lock: bool,
) -> list[Ack]:
    """Start a child writer, SIGKILL it `delay` s after READY; return what it acknowledged."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.wal_child",
        "--store",
        store,
        "--wal-dir",
        str(wal_dir),
        "--seed",
        str(seed),
        "--round",
        str(round_),
        "--owned",
        str(OWNED),
        "--tasks",
        str(TASKS),
        "--segment-bytes",
        str(segment_bytes),
        cwd=REPO_ROOT,
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors_out = asyncio.create_task(proc.stderr.read())
    alive = False
    try:
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            first = b"(no READY within the timeout)"
        if first == b"READY\n":
            # Drain stdout while the child runs: a full pipe would throttle its writers.
            reader = asyncio.create_task(proc.stdout.read())
            loop = asyncio.get_running_loop()
            ready_at = loop.time()
            if check_lock:
                await assert_wal_dir_locked(f"sqlite:///{wal_dir.parent / 'scratch.db'}", wal_dir)
            await asyncio.sleep(max(0.0, delay - (loop.time() - ready_at)))
            alive = proc.returncode is None
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            out = await reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr = (await errors_out).decode(errors="replace")[-3000:]
    assert first == b"READY\n", f"child did not start: {first!r}\n{stderr}"
    assert alive and proc.returncode == -signal.SIGKILL, (
        f"child exited on its own (code {proc.returncode}) before the kill:\n{stderr}"
    )
    acks = parse_acks(out, round_)
    assert acks, "the child acknowledged nothing before the kill: the trial tested nothing"
    return acks


def check_session(sid: str, ctx: Context, acks: list[Ack]) -> None:
    """Every property the module docstring lists, for one session."""
    turns = ctx.turns
    if ctx.meta is None:
        assert not turns
        assert not acks, f"{sid}: {len(acks)} acknowledged appends, session absent"
        return
    ids = [t.turn_id for t in turns]
    assert ctx.meta.turn_count < 10_000, "session too long to read whole: shorten the trial"
    assert ctx.meta.turn_count == len(turns), (
        f"{sid}: META.turn_count={ctx.meta.turn_count} but {len(turns)} turns stored"
    )
    assert len(set(ids)) == len(ids), f"{sid}: a turn id is stored twice"
    assert ids == sorted(ids), f"{sid}: turns not in turn-id order"

    markers = [parse_marker(t.content) for t in turns]
    doubled = [m for m, c in Counter(markers).items() if c > 1]
    assert not doubled, f"{sid}: turns stored twice under different ids: {doubled[:5]}"
    for turn, m in zip(turns, markers, strict=True):
        assert session_of(m.task, OWNED) == sid, f"{sid}: holds a turn of another session: {m}"
        assert turn.role == ("user" if m.k % 2 == 0 else "assistant"), f"{sid}: role of {m}"

    # An append's turns are all stored or none, acknowledged or not.
    by_append: dict[tuple[int, int, int], list[Marker]] = defaultdict(list)
    for m in markers:
        by_append[(m.round, m.task, m.seq)].append(m)
    for key, parts in by_append.items():
        n = parts[0].n
        assert [p.k for p in parts] == list(range(n)), (
            f"{sid}: append (round, task, seq)={key} stored partly or out of order: "
            f"{[(p.k, p.n) for p in parts]}"
        )

    # Every acknowledged turn is there, once, with the content it was appended with.
    position = {turn_id: i for i, turn_id in enumerate(ids)}
    last_acked: dict[tuple[int, int], int] = {}
    for ack in acks:
        for k, turn_id in enumerate(ack.turn_ids):
            assert turn_id in position, (
                f"{sid}: LOST acknowledged turn {turn_id} (round {ack.round}, task {ack.task}, "
                f"seq {ack.seq}, turn {k + 1}/{len(ack.turn_ids)}); {len(turns)} turns stored"
            )
            m = markers[position[turn_id]]
            assert (m.round, m.task, m.seq, m.k) == (ack.round, ack.task, ack.seq, k), (
                f"{sid}: turn {turn_id} holds {m}, acknowledged as "
                f"(round {ack.round}, task {ack.task}, seq {ack.seq}, k {k})"
            )
        writer = (ack.round, ack.task)
        last_acked[writer] = max(last_acked.get(writer, -1), ack.seq)

    # Each task's appends are stored in its own order, and only the one in flight at the
    # kill may be there unacknowledged.
    seqs: dict[tuple[int, int], list[int]] = defaultdict(list)
    for m in markers:
        if m.k == 0:
            seqs[(m.round, m.task)].append(m.seq)
    for writer, stored in seqs.items():
        assert stored == sorted(stored), f"{sid}: task {writer} appends out of order: {stored}"
        top = last_acked.get(writer, -1)
        assert stored == list(range(len(stored))), (
            f"{sid}: task {writer} has gaps: stored seqs {stored[:10]}..{stored[-10:]}"
        )
        assert stored[-1] <= top + 1, (
            f"{sid}: task {writer} stored seq {stored[-1]}, last acknowledged {top}: "
            "more than the one append in flight at the kill"
        )


def assert_private(wal_dir: Path) -> None:
    """DESIGN section 4: directory 0700, files 0600."""
    assert stat.S_IMODE(wal_dir.stat().st_mode) == 0o700, oct(wal_dir.stat().st_mode)
    for path in wal_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path}: {oct(mode)}"
        else:
            assert mode == 0o600, f"{path}: {oct(mode)}"


async def read_store(store: str) -> dict[str, Context]:
    """Every session, from a client without a WAL (no overlay)."""
    async with MemoryClient(Config(store=store, **TEST_TIMEOUTS)) as plain:
        return {
            sid: await plain.load_context(sid, customer_id=CUSTOMER, last_n=10_000)
            for sid in SESSIONS
        }


@pytest.mark.parametrize("seed", range(TRIALS))
async def test_sigkill_loses_no_acknowledged_turn(
    seed: int, dynamodb_local: DynamoDBLocal, tmp_path: Path
) -> None:
    await crash_trial(seed, KILL_WINDOW, dynamodb_local, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
async def test_sigkill_after_a_long_run_loses_no_acknowledged_turn(
    seed: int, dynamodb_local: DynamoDBLocal, tmp_path: Path
) -> None:
    await crash_trial(seed, SLOW_KILL_WINDOW, dynamodb_local, tmp_path)


async def crash_trial(
    seed: int, window: tuple[float, float], dynamodb_local: DynamoDBLocal, tmp_path: Path
) -> None:
    """One trial: kill the child (once or twice), replay, check every session."""
    rng = random.Random(seed)
    if seed in SQLITE_SEEDS:
        store = f"sqlite:///{tmp_path / 'memory.db'}"  # tmp_path is absolute: sqlite:////...
    else:
        store = new_dynamodb_table(dynamodb_local)
    wal_dir = tmp_path / "wal"  # created by memsdk
    segment_bytes = SEGMENT_BYTES[seed % len(SEGMENT_BYTES)]

    acks: list[Ack] = []
    for round_ in range(crash_rounds(seed)):
        acks += await run_and_kill(
            store=store,
            wal_dir=wal_dir,
            seed=seed,
            round_=round_,
            delay=rng.uniform(*window),
            segment_bytes=segment_bytes,
            check_lock=round_ == 0,
        )

    # Replay: a new client on the same WAL directory drains what the child left.
    async with MemoryClient(Config(store=store, wal_dir=str(wal_dir), **TEST_TIMEOUTS)) as mem:
        await mem.flush(timeout=60)
        health = mem.health()
        assert health.wal_pending_records == 0, health
        assert health.wal_pending_bytes == 0, health
        # SIGKILL loses no written byte (the page cache keeps it): only the tail record can
        # be torn, which recovery truncates. Mid-log corruption here would be memsdk's own.
        assert health.wal_quarantined_segments == 0, health

    by_session: dict[str, list[Ack]] = defaultdict(list)
    for ack in acks:
        by_session[ack.session].append(ack)
    assert set(by_session) <= set(SESSIONS)
    stored = await read_store(store)
    for sid in SESSIONS:
        check_session(sid, stored[sid], by_session[sid])

    # Reopening the drained WAL replays nothing a second time.
    async with MemoryClient(Config(store=store, wal_dir=str(wal_dir), **TEST_TIMEOUTS)) as mem:
        await mem.flush(timeout=60)
    again = await read_store(store)
    for sid in SESSIONS:
        before, after = stored[sid], again[sid]
        assert [t.turn_id for t in after.turns] == [t.turn_id for t in before.turns], sid
        assert (after.meta is None) == (before.meta is None), sid
        if after.meta is not None and before.meta is not None:
            assert after.meta.turn_count == before.meta.turn_count, sid

    assert_private(wal_dir)
