"""The results table, the JSON and HTML reports, and the progress bar, from known figures."""

from __future__ import annotations

import io
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from memsdk.models import Health
from memsdk.simulate.chaos import AppliedChaos, parse_chaos
from memsdk.simulate.progress import Progress, ProgressLogHandler, ProgressStatus
from memsdk.simulate.report import render_html, render_table, write_reports
from memsdk.simulate.result import Series, SimulationResult
from memsdk.simulate.stats import LatencyRecorder, OpSeries, OpSummary, percentile
from memsdk.simulate.verify import Verification


def result(**changes: object) -> SimulationResult:
    outage, kill = parse_chaos("store-outage@2s+3s,redis-kill@4s")
    r = SimulationResult(
        store_kind="sqlite",
        wal=True,
        redis=True,
        consistency="validated",
        sessions=50,
        seed=7,
        planned_s=10.0,
        duration_s=10.0,
        operations={
            "load_context": OpSummary(100, 0, 1.0, 5.0, 9.0, 12.0),
            "append_turns": OpSummary(98, 2, 2.0, 6.0, 150.0, 300.0),
            "seed_history": OpSummary(8, 0, 3.0, 4.0, 4.0, 4.0),
        },
        errors={"append_turns": {"StoreUnavailableError": 2}},
        messages=98,
        messages_failed=2,
        sessions_started=60,
        power_sessions=2,
        power_history_turns=[300, 1_200],
        reads={"l1": 70, "store": 20, "degraded": 10, "store_found": 60, "store_absent": 15},
        ledger={"acked_turns": 200, "acked_turns_wal": 200, "refused_turns": 4},
        health=Health(
            store="sqlite",
            store_breaker="closed",
            redis_breaker="closed",
            l1_entries=10,
            l1_bytes=1_000,
            l1_max_bytes=10_000,
            wal_pending_records=0,
            wal_pending_bytes=0,
            wal_oldest_pending_age_s=None,
            open=True,
            consistency="validated",
            l1_hits=70,
            l1_misses=30,
            redis_hits=40,
            redis_misses=50,
            redis_errors=10,
        ),
        wal_peak_records=42,
        wal_peak_bytes=3 * 1024 * 1024,
        chaos=[
            AppliedChaos(outage, "FaultyStore around SQLite", 2.0, 5.0),
            AppliedChaos(kill, "TCP relay before Redis cut", 4.01, 10.0),
        ],
        verification=Verification(sessions=60, acknowledged=200, refused=4),
        series=Series(
            seconds=10,
            operations={
                "load_context": OpSeries(
                    [10] * 10, [1.0] * 9 + [None], [3.0, 4.0, 300.0] + [5.0] * 7
                ),
                "append_turns": OpSeries([9] * 10, [2.0] * 10, [9.0] * 10),
            },
            messages=[10] * 10,
            errors=[0, 0, 2] + [0] * 7,
            degraded=[0, 0, 5, 5] + [0] * 6,
            wal_pending=[0, 0, 20, 42, 30] + [0] * 5,
            store_breaker=["closed"] * 2 + ["open"] * 3 + ["closed"] * 5,
            redis_breaker=["closed"] * 10,
        ),
    )
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def test_table_shows_every_figure_and_the_verdict() -> None:
    text = render_table(result())
    lines = text.splitlines()
    assert lines[0].startswith("memsdk simulate: 50 sessions, 10.0 s of load on sqlite")
    header = next(line for line in lines if line.startswith("operation"))
    assert " ".join(header.split()) == "operation calls ops/s p50 ms p95 ms p99 ms max ms errors"
    # Load operations first, with their rate; set-up (seed_history) last, without one.
    rows = [
        line.split()
        for line in lines
        if line.split()[:1] and line.split()[0] in ("load_context", "append_turns", "seed_history")
    ]
    assert [r[0] for r in rows] == ["append_turns", "load_context", "seed_history"]
    assert rows[0][1:] == ["98", "9.8", "2.00", "6.00", "150", "300", "2"]
    assert rows[2][2] == "-"
    assert "L1         100    70     70.0%" in text
    assert "Redis      100    40     40.0%  errors 10, bypassed 0" in text
    assert "store       75    60     80.0%" in text
    assert "backlog peak 42 records (3.0 MB)" in text
    assert "append_turns: StoreUnavailableError 2" in text
    assert "store-outage@2s+3s: applied at 2.00 s, lifted at 5.00 s (FaultyStore" in text
    assert "2 power users (300-1200 turns of history" in text
    assert "verification OK: 200 acknowledged turns in 60 sessions" in text
    assert " 0 missing" in text and "4 refused (0 stored)" in text


def test_a_failed_verification_lists_its_problems() -> None:
    v = Verification(sessions=1, acknowledged=3, missing=1, problems=["s-1: turn t1 is missing"])
    r = result(verification=v, stale_reads=1, stale_examples=["s-2: read ended at a"])
    assert not r.ok and r.exit_code == 1
    text = render_table(r)
    assert "verification FAILED: 3 acknowledged turns in 1 sessions" in text
    assert "  s-1: turn t1 is missing" in text
    assert "1 reads were neither current nor flagged degraded" in text
    # Nothing acknowledged: nothing verified, and that is a failure too.
    empty = result(verification=Verification())
    assert empty.exit_code == 1 and "nothing was acknowledged" in render_table(empty)


def test_json_and_html_reports(tmp_path: Path) -> None:
    r = result()
    write_reports(r, tmp_path / "out" / "r.json", tmp_path / "out" / "r.html")
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    assert data["ok"] is True and data["format"] == "memsdk-simulate/1"
    assert data["operations"]["append_turns"]["p99_ms"] == 150.0
    assert data["operations"]["seed_history"]["ops_per_s"] is None
    assert data["wal_backlog_peak"] == {"records": 42, "bytes": 3 * 1024 * 1024}
    assert data["chaos"][0]["event"] == "store-outage@2s+3s"
    assert data["series"]["operations"]["load_context"]["p50_ms"][-1] is None
    assert data["tiers"][1] == {
        "tier": "Redis",
        "lookups": 100,
        "hits": 40,
        "hit_rate": 0.4,
        "note": "errors 10, bypassed 0",
    }
    page = (tmp_path / "out" / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "src=" not in page and "href=" not in page
    svgs = [page[i : page.index("</svg>", i) + 6] for i in _find_all(page, "<svg")]
    # One latency chart per load operation, then messages and the WAL backlog.
    assert len(svgs) == 4
    for svg in svgs:
        ET.fromstring(svg)  # well-formed on its own
    latency = ET.fromstring(svgs[0])
    ns = "{http://www.w3.org/2000/svg}"
    shaded = [
        rect.find(f"{ns}title").text  # type: ignore[union-attr]
        for rect in latency.iter(f"{ns}rect")
        if rect.find(f"{ns}title") is not None
    ]
    assert shaded == ["store-outage@2s+3s", "redis-kill@4s"]
    paths = list(latency.iter(f"{ns}path"))
    assert len(paths) == 2  # p50 and p99
    # The idle last second of p50 leaves a gap: the p50 path has 9 points, not 10.
    assert paths[0].get("d", "").count("L") == 8
    assert "Store circuit breaker not closed during seconds 2-4." in page


def _find_all(text: str, needle: str) -> list[int]:
    out, i = [], text.find(needle)
    while i != -1:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def test_html_escapes_what_it_shows() -> None:
    v = Verification(acknowledged=1, missing=1, problems=["s-<b>: missing"])
    page = render_html(result(verification=v))
    assert "s-&lt;b&gt;" in page and "s-<b>" not in page


def test_percentiles_and_series() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 99) == 99.0
    now = [0.0]
    rec = LatencyRecorder(clock=lambda: now[0])
    rec.start()
    for at, ms in [(0.2, 1.0), (0.7, 3.0), (1.5, 10.0), (3.2, 2.0)]:
        now[0] = at
        rec.ok("op", at - ms / 1000)
    rec.error("op", "StoreUnavailableError")
    summary = rec.summary("op")
    assert (summary.count, summary.errors) == (4, 1)
    assert summary.max_ms == pytest.approx(10.0)
    series = rec.series("op", 4)
    assert series.count == [2, 1, 0, 1]
    assert series.p50_ms[0] == pytest.approx(2.0) and series.p50_ms[2] is None
    assert rec.errors() == {"op": {"StoreUnavailableError": 1}}


def test_progress_redraws_in_place_on_a_terminal() -> None:
    out, now = io.StringIO(), [0.0]
    bar = Progress(out, tty=True, interval_s=0.2, clock=lambda: now[0])
    status = ProgressStatus(phase="load", done=2.5, total=10, messages_per_s=88.0, chaos="x")
    bar.update(status)
    bar.update(status)  # too soon: not drawn
    now[0] = 0.3
    bar.update(ProgressStatus(phase="load", done=3.0, total=10, errors=4, wal_pending=7))
    text = out.getvalue()
    assert text.count("\r") == 2 and text.count("\x1b[K") == 2 and "\n" not in text
    assert "[#####---------------]   2.5/10s    88.0 msg/s" in text
    assert "errors 4  degraded 0  WAL 7  chaos: off" in text
    bar.message("memsdk WARNING: something")
    last = text.split("\r")[-1]  # the bar as drawn, erase-to-end included
    assert out.getvalue() == text + "\r\x1b[Kmemsdk WARNING: something\n\r" + last
    bar.update(ProgressStatus(phase="verify", done=1, total=4))  # a new phase: new line
    bar.close(ProgressStatus(phase="verify", done=4, total=4))
    assert out.getvalue().endswith("verify 4/4\x1b[K\n")


def test_progress_prints_lines_now_and_then_on_a_pipe() -> None:
    out, now = io.StringIO(), [0.0]
    bar = Progress(out, tty=False, line_interval_s=5.0, clock=lambda: now[0])
    for step in range(100):  # 10 s in 0.1 s ticks
        now[0] = step / 10
        bar.update(ProgressStatus(phase="load", done=now[0], total=10))
    bar.update(ProgressStatus(phase="verify", done=0, total=3))  # phase change: at once
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0].startswith("[--------------------]   0.0/10s")
    assert lines[1].startswith("[##########----------]   5.0/10s")
    assert lines[2] == "[--------------------] verify 0/3"


def test_log_records_go_above_the_bar() -> None:
    out = io.StringIO()
    bar = Progress(out, tty=False)
    handler = ProgressLogHandler(bar)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("memsdk.test_progress")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.info("not shown")
        log.warning("store breaker: closed -> open")
    finally:
        log.removeHandler(handler)
    assert out.getvalue() == "WARNING store breaker: closed -> open\n"
