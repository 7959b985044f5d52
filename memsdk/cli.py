"""The `memsdk` command: simulate, create-table, inspect, wal status|replay."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence

from memsdk.config import Config, DynamoDBStoreSpec
from memsdk.errors import MemsdkError

__all__ = ["main"]

_DEFAULT_SIM_STORE = "sqlite:///memsdk-simulate.db"


def _store_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("MEMSDK_STORE", default),
        help="store URL (default: $MEMSDK_STORE" + (f" or {default})" if default else ")"),
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memsdk", description="Conversation memory SDK tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run the seed workload and verify every turn")
    _store_arg(sim, _DEFAULT_SIM_STORE)
    sim.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    sim.add_argument("--sessions", type=int, default=50, help="concurrent sessions (default 50)")
    sim.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    sim.add_argument(
        "--wal-dir",
        default=os.environ.get("MEMSDK_WAL_DIR"),
        help="buffer appends in a write-ahead log in this directory (default: synchronous)",
    )

    table = sub.add_parser("create-table", help="create the DynamoDB table (idempotent)")
    _store_arg(table, None)

    inspect = sub.add_parser("inspect", help="show a session's META and newest turns")
    _store_arg(inspect, None)
    inspect.add_argument("session_id")
    inspect.add_argument("--last-n", type=int, default=20)
    inspect.add_argument(
        "--show-content", action="store_true", help="print turn text (off by default: privacy)"
    )

    wal = sub.add_parser("wal", help="inspect or drain a write-ahead log directory")
    wal_sub = wal.add_subparsers(dest="wal_command", required=True)
    status = wal_sub.add_parser("status", help="segments, pending records and bytes, oldest age")
    status.add_argument("--wal-dir", default=os.environ.get("MEMSDK_WAL_DIR"))
    replay = wal_sub.add_parser("replay", help="drain the log to the store and report")
    replay.add_argument("--wal-dir", default=os.environ.get("MEMSDK_WAL_DIR"))
    _store_arg(replay, None)
    replay.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `memsdk` console script; returns the exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "wal" and not args.wal_dir:
        print("memsdk: --wal-dir DIR (or MEMSDK_WAL_DIR) is required", file=sys.stderr)
        return 2
    if args.command == "wal" and args.wal_command == "status":
        return _wal_status(args.wal_dir)
    if not args.store:
        print("memsdk: --store URL (or MEMSDK_STORE) is required", file=sys.stderr)
        return 2
    try:
        if args.command == "simulate":
            return asyncio.run(_simulate(args))
        if args.command == "create-table":
            return asyncio.run(_create_table(args))
        if args.command == "wal":
            return asyncio.run(_wal_replay(args))
        return asyncio.run(_inspect(args))
    except MemsdkError as exc:
        print(f"memsdk: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _simulate(args: argparse.Namespace) -> int:
    from memsdk.simulate import run_simulation

    if args.duration <= 0 or args.sessions < 1:
        print("memsdk: --duration must be > 0 and --sessions >= 1", file=sys.stderr)
        return 2
    config = Config.from_env(store=args.store, wal_dir=args.wal_dir)
    print(
        f"simulating {args.sessions} sessions for {args.duration:.0f}s "
        f"on {config.store.split('?')[0].split('://')[0]} ...",
        flush=True,
    )
    result = await run_simulation(
        config, duration_s=args.duration, sessions=args.sessions, seed=args.seed
    )
    print(result.render())
    return 0 if result.ok else 1


async def _create_table(args: argparse.Namespace) -> int:
    config = Config(store=args.store)
    spec = config.store_spec
    if not isinstance(spec, DynamoDBStoreSpec):
        print("memsdk: create-table needs a dynamodb:// store URL", file=sys.stderr)
        return 2
    from memsdk.store.dynamodb_aioboto3 import create_table

    created = await create_table(spec)
    state = "created" if created else "already existed"
    print(f"table {spec.table} {state}; TTL enabled on expires_at")
    return 0


async def _inspect(args: argparse.Namespace) -> int:
    from memsdk.client import MemoryClient

    config = Config.from_env(store=args.store, read_timeout=10.0)
    async with MemoryClient(config) as mem:
        ctx = await mem.load_context(args.session_id, last_n=args.last_n)
    if ctx.meta is None:
        print(f"session {args.session_id}: absent (expired, deleted or never written)")
        return 1
    m = ctx.meta
    print(f"session {m.session_id}")
    print(f"  customer_id   {m.customer_id}")
    print(f"  turn_count    {m.turn_count}")
    print(f"  last_turn_id  {m.last_turn_id}")
    print(f"  created_at_ms {m.created_at_ms}")
    print(f"  updated_at_ms {m.updated_at_ms}")
    print(f"  expires_at    {m.expires_at}")
    print(f"  page_context  {len(m.page_context)} keys; attributes {len(m.attributes)} keys")
    if ctx.summary is not None:
        print(f"  summary       through {ctx.summary.through_turn_id}")
    for t in ctx.turns:
        text = f"  {t.content!r}" if args.show_content else f"  {len(t.content.encode())} bytes"
        print(f"  {t.turn_id}  {t.role:<9} {t.intent or '-':<20}{text}")
    return 0


def _wal_status(wal_dir: str) -> int:
    """Print what a WAL directory holds, without taking its lock; 1 if segments are quarantined."""
    from memsdk.wal.log import inspect_wal

    if not os.path.isdir(wal_dir):
        print("memsdk: the WAL directory does not exist", file=sys.stderr)
        return 2
    stats = inspect_wal(wal_dir)
    age = "-"
    if stats.oldest_pending_ms is not None:
        age = f"{max(0.0, time.time() - stats.oldest_pending_ms / 1000):.1f}s"
    print(f"segments            {stats.segments} ({stats.bytes_on_disk} bytes on disk)")
    print(f"pending records     {stats.pending_records}")
    print(f"pending bytes       {stats.pending_bytes}")
    print(f"oldest pending age  {age}")
    print(f"quarantined         {stats.quarantined}")
    if stats.quarantined:
        print("memsdk: quarantined segments need an operator: see docs/durability.md")
        return 1
    return 0


async def _wal_replay(args: argparse.Namespace) -> int:
    from memsdk.client import MemoryClient

    config = Config.from_env(store=args.store, wal_dir=args.wal_dir)
    started = time.monotonic()
    async with MemoryClient(config) as mem:
        before = mem.health()
        await mem.flush(timeout=args.timeout)
        after = mem.health()
    print(
        f"replayed {before.wal_pending_records} records ({before.wal_pending_bytes} bytes) "
        f"in {time.monotonic() - started:.1f}s; {after.wal_pending_records} pending, "
        f"{after.wal_rejected_records} rejected, {after.wal_dropped_turns} turns dropped"
    )
    return 0
