"""A buffered writer for the crash test: `python -m tests.integration.wal_child ...` (repo root).

Opens a MemoryClient with a WAL, prints `READY`, then runs concurrent writers at full speed
until it is killed (or `--max-seconds` pass). Each writer owns a task number and appends
1-3 turns per call to its session; some sessions are shared by two writers. After every
append returns, it prints one line (one `write(2)`: a SIGKILL cannot tear it):

    ACK <session> <task> <seq> <n> <turn_id>,<turn_id>,...

Turn content is `r<round>:t<task>:s<seq>:<k>/<n>`: no user text, only what the checker needs
to find an append's turns (acked or not) and their order. Nothing else goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

from memsdk import Config, MemoryClient, Turn

CUSTOMER = "C1"


def session_of(task: int, owned: int) -> str:
    """Tasks 0..owned-1 own a session each; the others share `shared-<k>` two by two."""
    if task < owned:
        return f"own-{task}"
    return f"shared-{(task - owned) // 2}"


def content(round_: int, task: int, seq: int, k: int, n: int) -> str:
    """The marker the parent parses back (see tests/integration/test_wal_crash.py)."""
    return f"r{round_}:t{task}:s{seq}:{k}/{n}"


def emit(line: str) -> None:
    """One unbuffered write: a line is on the pipe whole or not at all."""
    os.write(sys.stdout.fileno(), (line + "\n").encode())


async def writer(mem: MemoryClient, args: argparse.Namespace, task: int) -> None:
    rng = random.Random(f"{args.seed}:{args.round}:{task}")
    sid = session_of(task, args.owned)
    seq = 0
    while True:
        n = rng.randint(1, 3)
        turns = [
            Turn(
                role="user" if k % 2 == 0 else "assistant",
                content=content(args.round, task, seq, k, n),
            )
            for k in range(n)
        ]
        receipt = await mem.append_turns(sid, turns, customer_id=CUSTOMER)
        emit(f"ACK {sid} {task} {seq} {n} {','.join(receipt.turn_ids)}")
        seq += 1


async def main(args: argparse.Namespace) -> None:
    config = Config(
        store=args.store,
        wal_dir=args.wal_dir,
        read_timeout=15.0,
        write_timeout=15.0,
        wal_segment_bytes=args.segment_bytes,
    )
    async with MemoryClient(config) as mem:
        emit("READY")
        tasks = [asyncio.create_task(writer(mem, args, t)) for t in range(args.tasks)]
        done, _ = await asyncio.wait(
            tasks, timeout=args.max_seconds, return_when=asyncio.FIRST_EXCEPTION
        )
        for t in tasks:
            t.cancel()
        for t in done:
            t.result()  # a writer that failed fails the child: the parent sees the traceback


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.wal_child")
    parser.add_argument("--store", required=True)
    parser.add_argument("--wal-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round", type=int, default=0, help="crash round, in the content")
    parser.add_argument("--owned", type=int, default=8, help="tasks with a session of their own")
    parser.add_argument("--tasks", type=int, default=12, help="owned + 2 per shared session")
    parser.add_argument("--segment-bytes", type=int, default=64 * 1024)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="safety stop")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
