"""`python -m benchmarks [--quick] [--json PATH] [--markdown PATH]`, from the repo root.

Starts its own DynamoDB Local (tests.harness), runs every benchmark of benchmarks.core,
prints a Markdown table on stdout (progress goes to stderr) and writes the full results,
raw samples included, as JSON (default benchmarks/results/latest.json).
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
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "latest.json"


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
        "packages": {p: _version(p) for p in ("memsdk", "aioboto3", "aiobotocore", "botocore")},
        "dynamodb_local": jar_dir.name if jar_dir is not None else None,
    }


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The measurements and the ratios as two Markdown tables."""
    env = report["environment"]
    lines = [
        f"### memsdk benchmarks ({report['mode']} mode, {report['finished_at']})",
        "",
        f"Python {env['python']}, {env['cpus']} CPUs, {env['dynamodb_local']}, "
        f"aioboto3 {env['packages']['aioboto3']}, commit {env['git_commit']}"
        + (" + uncommitted memsdk changes" if env["memsdk_dirty"] else "")
        + f"; {report['elapsed_s']:.0f} s in all.",
        "",
        "| benchmark | candidate | n | median ms | p90 ms | write / read median ms "
        "| CPU ms/msg median | CPU p90 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bench in report["benchmarks"]:
        for name, c in bench["candidates"].items():
            lines.append(
                f"| {bench['name']} | {name} | {bench['samples']} "
                f"| {_fmt(c['wall_ms']['median'])} | {_fmt(c['wall_ms']['p90'])} "
                f"| {_fmt(c['write_ms']['median'])} / {_fmt(c['read_ms']['median'])} "
                f"| {_fmt(c['cpu_ms_per_message']['median'])} "
                f"| {_fmt(c['cpu_ms_per_message']['p90'])} |"
            )
    lines += [
        "",
        "| benchmark | ratio of medians | value | 95% CI | goal | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for bench in report["benchmarks"]:
        for r in bench["ratios"]:
            goal = "-" if r["goal"] is None else f"<= {r['goal']:.2f}"
            low, high = r["ci95"]
            lines.append(
                f"| {bench['name']} | {r['name']} | {r['value']:.3f} "
                f"| {low:.3f}-{high:.3f} | {goal} | {r['verdict']} |"
            )
    lines.append("")
    for bench in report["benchmarks"]:
        lines += [f"- {bench['name']}: {note}" for note in bench["notes"]]
    lines += [
        "",
        "Wall and CPU per message (append of a user + assistant pair, then load of the newest "
        "20 turns), candidates interleaved round by round; CPU is this process only (not the "
        "DynamoDB Local JVM), per message, over batches of rounds. DynamoDB Local on a shared "
        "machine: ratios of client overhead plus an emulator, not AWS latencies.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="memsdk benchmarks (ratios, medians)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode for CI: few samples, well under 60 s"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})"
    )
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--samples", type=int, help="override measured rounds per benchmark")
    parser.add_argument("--warmup", type=int, help="override warm-up rounds per benchmark")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `tests` is a package at the repo root; make it importable from anywhere.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.harness.dynamodb_local import DynamoDBLocal, aws_test_env, ensure_jar

    # DynamoDB Local accepts any credentials; botocore needs some, and never real ones here.
    os.environ.update(aws_test_env())
    from benchmarks import core

    settings = core.QUICK if args.quick else core.FULL
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
        benchmarks = asyncio.run(core.run_all(server.endpoint, settings, _progress))
    finally:
        server.stop()
    report = {
        "mode": settings.mode,
        "settings": dataclasses.asdict(settings),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
