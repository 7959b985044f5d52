"""The `memsdk` command: simulate, create-table, inspect, wal status|replay."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from memsdk.config import Config, DynamoDBStoreSpec
from memsdk.errors import ConfigError, MemsdkError

__all__ = ["main"]

_DEFAULT_SIM_STORE = "sqlite:///memsdk-simulate.db"


def _printable(value: object) -> str:
    """`value` as text with every non-printable character written as a Python escape.

    Stored strings and error messages may come from anyone who could write the store: raw,
    their control characters (C0, DEL, C1, bidi overrides, line separators) would drive the
    operator's terminal. str.isprintable() is False for all of those (and for other
    invisible or unassigned characters, which are escaped too).
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _store_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("MEMSDK_STORE", default),
        help="store URL (default: $MEMSDK_STORE" + (f" or {default})" if default else ")"),
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memsdk", description="Conversation memory SDK tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="run the seed workload (optionally with chaos) and verify every turn",
        description="Run the seed workload against a store, optionally with faults, print a "
        "results table and read every acknowledged turn back. Exit code 0: every turn "
        "verified; 1: something is missing, duplicated, out of order or changed; 2: usage.",
    )
    _store_arg(sim, _DEFAULT_SIM_STORE)
    sim.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    sim.add_argument("--sessions", type=int, default=50, help="concurrent sessions (default 50)")
    sim.add_argument("--seed", type=int, default=7, help="random seed of the workload (default 7)")
    sim.add_argument(
        "--wal-dir",
        default=os.environ.get("MEMSDK_WAL_DIR"),
        help="buffer appends in a write-ahead log in this directory (default: synchronous)",
    )
    sim.add_argument(
        "--redis-url",
        default=os.environ.get("MEMSDK_REDIS_URL"),
        help="use a Redis META cache (default: $MEMSDK_REDIS_URL, else none; needs memsdk[redis])",
    )
    sim.add_argument(
        "--chaos",
        metavar="SPEC",
        help="faults to inject, e.g. store-outage@10s+5s,redis-kill@20s "
        "(kinds: store-outage, store-slow[:LATENCY], store-throttle[:SHARE], redis-kill)",
    )
    sim.add_argument(
        "--report",
        metavar="PATH",
        help="write the results as JSON to PATH and an HTML page with plots beside it",
    )
    sim.add_argument(
        "--report-html", metavar="PATH", help="where the HTML page goes (default: PATH.html)"
    )
    sim.add_argument(
        "--think", type=float, default=1.0, help="mean think time between bursts (default 1 s)"
    )
    sim.add_argument(
        "--power-share",
        type=float,
        default=0.05,
        help="share of sessions that are power users with hundreds of turns (default 0.05)",
    )
    sim.add_argument(
        "--flush-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the WAL to drain after the load (default 120)",
    )
    sim.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    table = sub.add_parser(
        "create-table", help="create the DynamoDB table (idempotent; needs memsdk[dynamodb])"
    )
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
    wal_status = args.command == "wal" and args.wal_command == "status"  # needs no store
    if not wal_status and not args.store:
        print("memsdk: --store URL (or MEMSDK_STORE) is required", file=sys.stderr)
        return 2
    try:
        if wal_status:
            return _wal_status(args.wal_dir)
        if args.command == "simulate":
            return asyncio.run(_simulate(args))
        if args.command == "create-table":
            return asyncio.run(_create_table(args))
        if args.command == "wal":
            return asyncio.run(_wal_replay(args))
        return asyncio.run(_inspect(args))
    except MemsdkError as exc:
        print(f"memsdk: {type(exc).__name__}: {_printable(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # asyncio.run cancelled the command's task first: clients and proxies are closed.
        print("\nmemsdk: interrupted", file=sys.stderr)
        return 130


async def _simulate(args: argparse.Namespace) -> int:
    from memsdk.simulate import (
        ChaosSpecError,
        Progress,
        ProgressLogHandler,
        SimulationOptions,
        parse_chaos,
        render_table,
        run_simulation,
        write_reports,
    )

    if args.duration <= 0 or args.sessions < 1 or args.think < 0:
        print("memsdk: --duration must be > 0, --sessions >= 1, --think >= 0", file=sys.stderr)
        return 2
    if not 0 <= args.power_share <= 1 or args.flush_timeout <= 0:
        print("memsdk: --power-share must be in [0, 1], --flush-timeout > 0", file=sys.stderr)
        return 2
    if args.report_html and not args.report:
        print("memsdk: --report-html needs --report PATH", file=sys.stderr)
        return 2
    try:
        chaos = parse_chaos(args.chaos) if args.chaos is not None else ()
    except ChaosSpecError as exc:
        print(f"memsdk: --chaos: {exc}", file=sys.stderr)
        return 2
    config = Config.from_env(store=args.store, wal_dir=args.wal_dir)
    if args.redis_url:
        config = dataclasses.replace(config, redis_url=args.redis_url)
    options = SimulationOptions(
        duration_s=args.duration,
        sessions=args.sessions,
        seed=args.seed,
        chaos=chaos,
        think_s=args.think,
        power_share=args.power_share,
        flush_timeout_s=args.flush_timeout,
    )
    chaos_text = ", chaos " + ",".join(str(e) for e in chaos) if chaos else ""
    print(
        f"simulating {args.sessions} sessions for {args.duration:g}s on "
        f"{config.store.split('?')[0].split('://')[0]}{chaos_text} ...",
        flush=True,
    )
    progress = None if args.no_progress else Progress(sys.stderr)
    # memsdk's own warnings (degraded answers, breaker trips) are part of what a user should
    # see; shown above the bar rather than through it.
    handler: logging.Handler = (
        ProgressLogHandler(progress) if progress is not None else logging.StreamHandler()
    )
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("memsdk %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("memsdk")
    package_logger.addHandler(handler)
    try:
        result = await run_simulation(config, options, progress=progress)
    except ChaosSpecError as exc:
        print(f"memsdk: --chaos: {exc}", file=sys.stderr)
        return 2
    finally:
        package_logger.removeHandler(handler)
    print(render_table(result))
    if args.report:
        json_path = Path(args.report)
        html_path = Path(args.report_html or f"{args.report}.html")
        if not args.report_html and json_path.suffix == ".json":
            html_path = json_path.with_suffix(".html")
        write_reports(result, json_path, html_path)
        print(f"report: {json_path} and {html_path}")
    return result.exit_code


async def _create_table(args: argparse.Namespace) -> int:
    config = Config(store=args.store)
    spec = config.store_spec
    if not isinstance(spec, DynamoDBStoreSpec):
        print("memsdk: create-table needs a dynamodb:// store URL", file=sys.stderr)
        return 2
    try:
        from memsdk.store.dynamodb_aioboto3 import create_table
    except ImportError as exc:  # the `dynamodb` extra is not installed
        raise ConfigError("create-table needs aioboto3: pip install 'memsdk[dynamodb]'") from exc

    created = await create_table(spec)
    state = "created" if created else "already existed"
    print(f"table {spec.table} {state}; TTL enabled on expires_at")
    return 0


async def _inspect(args: argparse.Namespace) -> int:
    from memsdk.client import MemoryClient

    config = Config.from_env(store=args.store, read_timeout=10.0)
    async with MemoryClient(config) as mem:
        ctx = await mem.load_context(args.session_id, last_n=args.last_n)
    # Every string below was read from the store: escaped, never printed raw.
    p = _printable
    if ctx.meta is None:
        print(f"session {p(args.session_id)}: absent (expired, deleted or never written)")
        return 1
    m = ctx.meta
    print(f"session {p(m.session_id)}")
    print(f"  customer_id   {p(m.customer_id)}")
    print(f"  turn_count    {m.turn_count}")
    print(f"  last_turn_id  {p(m.last_turn_id)}")
    print(f"  created_at_ms {m.created_at_ms}")
    print(f"  updated_at_ms {m.updated_at_ms}")
    print(f"  expires_at    {m.expires_at}")
    print(f"  page_context  {len(m.page_context)} keys; attributes {len(m.attributes)} keys")
    if ctx.summary is not None:
        print(f"  summary       through {p(ctx.summary.through_turn_id)}")
    for t in ctx.turns:
        text = (
            f"  {p(repr(t.content))}" if args.show_content else f"  {len(t.content.encode())} bytes"
        )
        print(f"  {p(t.turn_id)}  {p(t.role):<9} {p(t.intent or '-'):<20}{text}")
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
        f"{after.wal_rejected_records} set aside in rejected/ ({after.wal_rejected_turns} turns)"
    )
    return 0
