"""`python -m benchmarks [--quick | --smoke] [--suite S] [--json PATH] [--markdown PATH]`.

Run from the repo root. Starts its own DynamoDB Local (tests.harness), runs the suites asked
for (benchmarks.micro, core, data_path, which starts its own instant server, cache, wal,
resilience, peer), prints Markdown tables on stdout (progress goes to stderr) and writes the
full results, raw samples included, as JSON (default benchmarks/results/latest.json).
`--check` then judges the report's ratios against benchmarks/expected.json (benchmarks.check)
and exits 1 on a regression; `--smoke` is CI's run: quick mode, the smoke subset, checked.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "latest.json"
EXPECTED = REPO_ROOT / "benchmarks" / "expected.json"
SUITES = (
    "all", "smoke", "micro", "core", "data-path", "cache", "wal", "resilience", "telemetry", "peer"
)
_PEER = "peer: append as the session grows (DynamoDB Local)"
# The figures quoted first (benchmark, start of the ratio's name), when the run has them.
HEADLINES = (
    (_PEER, "append latency LangChain / memsdk, last"),
    (_PEER, "capacity units LangChain / memsdk"),
    (_PEER, "append latency memsdk at 600 turns"),
    (_PEER, "append latency memsdk at 300 turns"),
    ("sdk overhead", "wall memsdk lean / raw"),
    ("SDK CPU per seed message (instant server)", "CPU memsdk lean / raw"),
    ("session length (DynamoDB Local)", "wall 1,000 / 10 turns"),
    ("cache: warm validated read", "wall raw / memsdk (l1+redis)"),
    ("wal append c=64", "append latency buffered / sync"),
    ("micro: codec: Query reply (20 TURN items -> TurnRecords)", "memsdk / "),
    ("micro: L1: put (window of 20 turns after an append)", "memsdk / "),
    ("micro: turn ids: 2 ids for an append", "memsdk / uuid"),
)


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _environment(jar_dir: Path | None) -> dict[str, Any]:
    status = _git("status", "--porcelain", "--", "memsdk")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "memsdk_dirty": bool(status) if status is not None else None,
        "packages": {
            p: _version(p)
            for p in (
                "memsdk",
                "aioboto3",
                "aiobotocore",
                "botocore",
                "msgspec",
                "langchain-community",
                "langchain-core",
            )
        },
        "dynamodb_local": jar_dir.name if jar_dir is not None else None,
    }


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _per_call_table(benchmarks: list[dict[str, Any]]) -> list[str]:
    """Data-path benchmarks measured per DynamoDB call (kind "per call")."""
    lines = [
        "| benchmark | operation | candidate | calls | CPU ms/call median | CPU p90 "
        "| wall ms/call median | wall p90 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bench in benchmarks:
        for op, per in bench["operations"].items():
            for name, c in per.items():
                cpu, wall = c["cpu_ms_per_call"], c["wall_ms"]
                lines.append(
                    f"| {bench['name']} | {op} | {name} | {c['calls']} "
                    f"| {_fmt(cpu['median'], 3)} | {_fmt(cpu['p90'], 3)} "
                    f"| {_fmt(wall['median'], 3)} | {_fmt(wall['p90'], 3)} |"
                )
    return [*lines, ""]


def _latency_table(benchmarks: list[dict[str, Any]]) -> list[str]:
    """Latency distributions of concurrent calls (kind "latency": pool starvation)."""
    lines = [
        "| benchmark | candidate | pool | calls | p50 ms | p90 ms | p99 ms | max ms | p99 / p50 "
        "| in-wave p99 / p50 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bench in benchmarks:
        for name, c in bench["candidates"].items():
            lat = c["latency_ms"]
            lines.append(
                f"| {bench['name']} | {name} | {c['pool']} | {c['calls']} "
                f"| {_fmt(lat['p50'])} | {_fmt(lat['p90'])} | {_fmt(lat['p99'])} "
                f"| {_fmt(lat['max'])} | {_fmt(c['p99_over_p50'])} "
                f"| {_fmt(c['wave_p99_over_p50'])} |"
            )
    return [*lines, ""]


def _resilience_table(benchmarks: list[dict[str, Any]]) -> list[str]:
    """A store outage, candidates side by side (kind "resilience")."""
    lines = [
        "| benchmark | candidate | calls healthy / outage / after | store req/call healthy "
        "| outage store requests | amplification | outage load p50 / p99 ms "
        "| outage append p50 / p99 ms | outage errors | recovery s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for bench in benchmarks:
        for name, c in bench["candidates"].items():
            calls, lat = c["offered_calls"], c["outage_latency_ms"]
            errors = {
                f"{op} {kind}": n
                for op, per in c["outcomes"]["outage"].items()
                for kind, n in per.items()
                if kind != "ok"
            }
            recovery = ", ".join("-" if v is None else _fmt(v) for v in c["recovery_s"])
            lines.append(
                f"| {bench['name']} | {name} "
                f"| {calls['healthy']} / {calls['outage']} / {calls['after']} "
                f"| {_fmt(c['healthy_requests_per_call'])} | {c['outage_requests']} "
                f"| {_fmt(c['amplification'])} "
                f"| {_fmt(lat['load']['p50'], 1)} / {_fmt(lat['load']['p99'], 1)} "
                f"| {_fmt(lat['append']['p50'], 1)} / {_fmt(lat['append']['p99'], 1)} "
                f"| {', '.join(f'{k}: {v}' for k, v in errors.items()) or '-'} | {recovery} |"
            )
    return [*lines, ""]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table, every column but the first two right-aligned, and a blank line."""
    align = ["---", "---", *["---:"] * (len(header) - 2)]
    return [
        f"| {' | '.join(header)} |",
        f"| {' | '.join(align)} |",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
    ]


def _micro_table(benchmarks: list[dict[str, Any]]) -> list[str]:
    """In-process operations, CPU ns per call (kind "micro")."""
    header = ["benchmark", "candidate", "calls per batch", "batches", "CPU ns/call median", "p90"]
    return _table(
        header,
        (
            [
                bench["name"],
                name,
                f"{c['ops_per_batch']:,}",
                str(c["batches"]),
                f"{c['ns_per_op']['median']:,.0f}",
                f"{c['ns_per_op']['p90']:,.0f}",
            ]
            for bench in benchmarks
            for name, c in bench["candidates"].items()
        ),
    )


def _peer_rows(bench: dict[str, Any]) -> Iterator[list[str]]:
    limit = bench["limit"]
    for point in bench["checkpoints"]:
        low, high = point["range"]
        for name, c in point["candidates"].items():
            yield [
                f"{low}-{high}",
                name,
                str(c["appends"]),
                _fmt(c["latency_ms"]["median"]),
                _fmt(c["latency_ms"]["p90"]),
                _fmt(c["cpu_ms"]["median"]),
                _fmt(c["sent_bytes"] / 1024, 1),
                _fmt(c["received_bytes"] / 1024, 1),
                _fmt(c["capacity_units"], 1),
            ]
        if limit is not None and limit["stored_turns"] <= low:
            refused = f"refused: the item passed 400 KB at {limit['stored_turns']} turns"
            yield [f"{low}-{high}", "LangChain DynamoDBChatMessageHistory", refused, *[""] * 6]


def _peer_table(benchmarks: list[dict[str, Any]]) -> list[str]:
    """Append cost by session length, candidates side by side (kind "peer")."""
    header = [
        "session length (turns before the append)",
        "candidate",
        "appends",
        "median ms",
        "p90 ms",
        "client CPU ms",
        "request KB",
        "reply KB",
        "capacity units",
    ]
    return _table(header, (row for bench in benchmarks for row in _peer_rows(bench)))


def _headline(report: dict[str, Any]) -> list[str]:
    """The figures of HEADLINES this run measured, and LangChain's limit."""
    rows = {b["name"]: b["ratios"] for b in report["benchmarks"]}
    lines = ["| headline figure | value | 95% CI |", "| --- | ---: | ---: |"]
    for bench in report["benchmarks"]:
        limit = bench.get("limit") if bench.get("kind") == "peer" else None
        if limit is not None:
            lines.append(
                f"| {bench['name']}: LangChain's append refused (400 KB item limit) at "
                f"| {limit['stored_turns']} turns | - |"
            )
    for name, prefix in HEADLINES:
        row = next((r for r in rows.get(name, []) if r["name"].startswith(prefix)), None)
        if row is not None:
            low, high = row["ci95"]
            lines.append(f"| {name}: {row['name']} | {row['value']:.3f} | {low:.3f}-{high:.3f} |")
    return [*lines, ""] if len(lines) > 2 else []


def render_markdown(report: dict[str, Any]) -> str:
    """The measurements (one table per kind of benchmark), then every ratio."""
    env = report["environment"]
    messages = [b for b in report["benchmarks"] if b.get("kind", "message") == "message"]
    per_call = [b for b in report["benchmarks"] if b.get("kind") == "per call"]
    latency = [b for b in report["benchmarks"] if b.get("kind") == "latency"]
    resilience = [b for b in report["benchmarks"] if b.get("kind") == "resilience"]
    micro = [b for b in report["benchmarks"] if b.get("kind") == "micro"]
    peer = [b for b in report["benchmarks"] if b.get("kind") == "peer"]
    lines = [
        f"### memsdk benchmarks ({report['mode']} mode, {report['finished_at']})",
        "",
        f"Python {env['python']}, {env['cpus']} CPUs, {env['dynamodb_local']}, "
        f"aioboto3 {env['packages']['aioboto3']}, commit {env['git_commit']}"
        + (" + uncommitted memsdk changes" if env["memsdk_dirty"] else "")
        + f"; {report['elapsed_s']:.0f} s in all.",
        "",
        *_headline(report),
    ]
    if messages:
        lines += [
            "| benchmark | candidate | n | median ms | p90 ms | write / read median ms "
            "| CPU ms/msg median | CPU p90 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    for bench in messages:
        for name, c in bench["candidates"].items():
            lines.append(
                f"| {bench['name']} | {name} | {bench['samples']} "
                f"| {_fmt(c['wall_ms']['median'])} | {_fmt(c['wall_ms']['p90'])} "
                f"| {_fmt(c['write_ms']['median'])} / {_fmt(c['read_ms']['median'])} "
                f"| {_fmt(c['cpu_ms_per_message']['median'])} "
                f"| {_fmt(c['cpu_ms_per_message']['p90'])} |"
            )
    if messages:
        lines.append("")
    if per_call:
        lines += _per_call_table(per_call)
    if latency:
        lines += _latency_table(latency)
    if resilience:
        lines += _resilience_table(resilience)
    if micro:
        lines += _micro_table(micro)
    if peer:
        lines += _peer_table(peer)
    lines += [
        "| benchmark | ratio (of medians unless named) | value | 95% CI | goal | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for bench in report["benchmarks"]:
        for r in bench["ratios"]:
            goal = "-" if r["goal"] is None else f"<= {r['goal']:.2f}"
            if r.get("goal_min") is not None:
                goal = f">= {r['goal_min']:.2f}"
            low, high = r["ci95"]
            lines.append(
                f"| {bench['name']} | {r['name']} | {r['value']:.3f} "
                f"| {low:.3f}-{high:.3f} | {goal} | {r['verdict']} |"
            )
    lines.append("")
    for bench in report["benchmarks"]:
        lines += [f"- {bench['name']}: {note}" for note in bench["notes"]]
    if messages:
        lines += [
            "",
            "Wall and CPU per message (append of a user + assistant pair, then load of the "
            "newest 20 turns), candidates interleaved round by round; CPU is this process only "
            "(not the DynamoDB Local JVM), per message, over batches of rounds. DynamoDB Local "
            "on a shared machine: ratios of client overhead plus an emulator, not AWS latencies.",
        ]
    if per_call or latency:
        lines += [
            "",
            "Per call: CPU per call is this process's CPU over a batch of sequential calls, "
            "median of the batches; candidates interleaved batch by batch. The instant server "
            "answers at once from another process: its figures are the client's CPU and "
            "queueing only, not a DynamoDB latency. Pool starvation: waves of concurrent "
            "GetItem, latency of every call.",
        ]
    return "\n".join(lines) + "\n"


async def _run(suite: str, endpoint: str, settings: Any) -> list[dict[str, Any]]:
    """The benchmarks of `suite`, in order; a suite that raises is recorded and skipped."""
    from benchmarks import cache, core, data_path, micro, peer, resilience, telemetry, wal

    smoke = suite == "smoke"
    plan: list[tuple[str, Callable[[], Awaitable[list[dict[str, Any]]]]]] = [
        ("micro", lambda: micro.run_micro(settings, _progress)),
        ("core", lambda: core.run_all(endpoint, settings, _progress)),
        ("data-path", lambda: data_path.run_all(endpoint, settings, _progress)),
        ("cache", lambda: cache.run_cache(endpoint, settings, _progress)),
        ("wal", lambda: wal.run_wal(endpoint, settings, _progress)),
        ("resilience", lambda: resilience.run_resilience(endpoint, settings, _progress)),
        ("telemetry", lambda: telemetry.run_telemetry(endpoint, settings, _progress)),
        ("peer", lambda: peer.run_peer(endpoint, settings, _progress, smoke=smoke)),
    ]
    if smoke:
        plan = [
            plan[0],
            ("data-path", lambda: data_path.run_smoke(settings, _progress)),
            ("core", lambda: core.run_smoke(endpoint, settings, _progress)),
            plan[-1],
        ]
    results: list[dict[str, Any]] = []
    for name, run in plan:
        if suite not in ("all", "smoke", name):
            continue
        try:
            results += await run()
        except Exception as exc:
            # One broken suite must not throw away the others' results (a full run is long).
            _progress(f"suite {name} FAILED:\n{traceback.format_exc()}")
            results.append(
                {
                    "name": f"suite {name}",
                    "kind": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "ratios": [],
                    "notes": [f"FAILED: {type(exc).__name__}: {exc}"],
                }
            )
    return results


def _check(report: dict[str, Any], expected_path: Path) -> int:
    """Print the ratio check on stderr; 1 when a figure regressed or is missing."""
    from benchmarks.check import check, load_expected

    outcomes = check(report, load_expected(expected_path))
    failed = [o for o in outcomes if o.status in ("regression", "missing")]
    for o in outcomes:
        if o.status != "skipped":
            print(f"[check] {o.status}: {o.benchmark} / {o.ratio}: {o.message}", file=sys.stderr)
    if failed:
        print(
            f"[check] FAILED: {len(failed)} ratio(s) regressed or missing, bounds in "
            f"{expected_path} (ratios only: absolute times are never checked)",
            file=sys.stderr,
        )
    skipped = sum(o.status == "skipped" for o in outcomes)
    passed = len(outcomes) - len(failed) - skipped
    # The plain closing line CI logs are read for: "N passed, N failed".
    print(f"ratios: {passed} passed, {len(failed)} failed, {skipped} skipped", file=sys.stderr)
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="memsdk benchmarks (ratios, medians)"
    )
    parser.add_argument("--quick", action="store_true", help="few samples (every suite)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: --quick --suite smoke --check benchmarks/expected.json (1-2 minutes)",
    )
    parser.add_argument(
        "--check",
        type=Path,
        help="judge the ratios against this file of expected ratios (exit 1 on a regression)",
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})"
    )
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--samples", type=int, help="override measured rounds per benchmark")
    parser.add_argument("--warmup", type=int, help="override warm-up rounds per benchmark")
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="all",
        help="micro: codec, WAL record, L1 and turn ids in process; core: the message "
        "benchmarks; data-path: the per-call ones; cache: L1 and Redis; wal: buffered "
        "(wal_dir) against synchronous appends; resilience: a naive client against memsdk "
        "under a store outage; peer: memsdk against LangChain's DynamoDBChatMessageHistory; "
        "smoke: micro, CPU per call, sdk overhead and peer (default: all)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick, args.suite = True, "smoke"
        args.check = args.check or EXPECTED
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `tests` is a package at the repo root; make it importable from anywhere.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.harness.dynamodb_local import DynamoDBLocal, aws_test_env, ensure_jar

    # DynamoDB Local accepts any credentials; botocore needs some, and never real ones here.
    os.environ.update(aws_test_env())
    from benchmarks import core, data_path

    settings = core.QUICK if args.quick else core.FULL
    if args.suite == "smoke":
        settings = core.SMOKE
    overrides = {
        k: v for k, v in (("samples", args.samples), ("warmup", args.warmup)) if v is not None
    }
    if any(v < 0 for v in overrides.values()) or overrides.get("samples") == 0:
        print("--samples must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    settings = dataclasses.replace(settings, **overrides)

    started = time.perf_counter()
    _progress(f"{settings.mode} mode: starting DynamoDB Local")
    server = DynamoDBLocal()
    server.start()
    try:
        benchmarks = asyncio.run(_run(args.suite, server.endpoint, settings))
    finally:
        server.stop()
    report = {
        "mode": settings.mode,
        "suite": args.suite,
        "settings": dataclasses.asdict(settings),
        "data_path_settings": dataclasses.asdict(data_path.settings_for(settings)),
        "finished_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.perf_counter() - started,
        "environment": _environment(ensure_jar()),
        "benchmarks": benchmarks,
    }
    markdown = render_markdown(report)
    print(markdown, end="")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _progress(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown, encoding="utf-8")
        _progress(f"wrote {args.markdown}")
    failed = [b["name"] for b in benchmarks if b.get("kind") == "failed"]
    if failed:
        _progress(f"FAILED: {', '.join(failed)} (the report holds the rest)")
    checked = 0 if args.check is None else _check(report, args.check)
    return 1 if failed or checked else 0


if __name__ == "__main__":
    sys.exit(main())
