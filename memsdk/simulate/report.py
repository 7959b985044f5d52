"""The results of a simulation as a text table, a JSON file and a self-contained HTML page.

The HTML page draws its latency-over-time plots as inline SVG written here (no plotting
library, no script, nothing fetched): p50 and p99 per operation per second, chaos windows
shaded. Neither format ever holds turn content: only figures, event specs, session and turn
ids.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from memsdk.simulate.chaos import format_seconds
from memsdk.simulate.result import SimulationResult

__all__ = ["render_html", "render_table", "write_reports"]


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _columns(rows: Sequence[Sequence[str]], *, note: bool = False) -> list[str]:
    """Rows as aligned text: the first column (and a last `note` one) left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    last = len(widths) - 1
    return [
        "  ".join(
            c.ljust(w) if i == 0 or (note and i == last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def _operation_rows(result: SimulationResult) -> list[list[str]]:
    rows = [["operation", "calls", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"]]
    order = sorted(result.operations, key=lambda op: (op == "seed_history", op))
    for op in order:
        s = result.operations[op]
        rate = result.ops_per_s(op)
        rows.append(
            [
                op,
                str(s.count),
                "-" if rate is None else f"{rate:.1f}",
                _ms(s.p50_ms),
                _ms(s.p95_ms),
                _ms(s.p99_ms),
                _ms(s.max_ms),
                str(s.errors),
            ]
        )
    return rows


def _tier_rows(result: SimulationResult) -> list[list[str]]:
    rows = [["tier", "lookups", "hits", "hit rate", ""]]
    for t in result.tiers():
        rate = t.hit_rate
        rows.append(
            [
                t.tier,
                "-" if t.lookups is None else str(t.lookups),
                "-" if t.hits is None else str(t.hits),
                "-" if rate is None else f"{rate:.1%}",
                t.note,
            ]
        )
    return rows


def _headline(result: SimulationResult) -> str:
    return (
        f"memsdk simulate: {result.sessions} sessions, {result.duration_s:.1f} s of load on "
        f"{result.store_kind} (WAL {'on' if result.wal else 'off'}, Redis "
        f"{'on' if result.redis else 'off'}, {result.consistency} reads), seed {result.seed}"
    )


def _facts(result: SimulationResult) -> list[tuple[str, str]]:
    """The lines under the tables: label, text."""
    h = result.health
    rate = result.messages / result.duration_s if result.duration_s else 0.0
    power = ""
    if result.power_sessions:
        turns = result.power_history_turns
        span = f"{turns[0]}" if turns[0] == turns[-1] else f"{turns[0]}-{turns[-1]}"
        users = "power user" if result.power_sessions == 1 else "power users"
        power = (
            f", {result.power_sessions} {users} ({span} turns of history written in "
            f"{result.seeding_s:.1f} s)"
        )
    reads = result.reads
    total_reads = reads.get("l1", 0) + reads.get("store", 0) + reads.get("degraded", 0)
    lines = [
        (
            "throughput",
            f"{result.messages} messages ({rate:.1f}/s), {result.messages_failed} not "
            f"acknowledged; {result.sessions_started} sessions{power}",
        ),
        (
            "reads",
            f"{total_reads} answers: {reads.get('l1', 0)} from L1, {reads.get('store', 0)} from "
            "the store, "
            f"{reads.get('degraded', 0)} degraded; {result.stale_reads} stale",
        ),
    ]
    if h is not None:
        lines.append(
            (
                "resilience",
                f"retries {h.store_retries} ({h.store_retries_refused} refused by the budget), "
                f"degraded replies {h.degraded_replies}, store breaker opened "
                f"{h.store_breaker_opened}x, Redis breaker opened {h.redis_breaker_opened}x",
            )
        )
    wal = "off"
    if result.wal:
        wal = f"backlog peak {result.wal_peak_records} records ({_bytes(result.wal_peak_bytes)})"
        if result.flush_s is not None:
            wal += f"; flushed in {result.flush_s:.1f} s"
        if result.flush_error:
            wal += "; FLUSH TIMED OUT"
    lines.append(("WAL", wal))
    errors = "; ".join(
        f"{op}: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        for op, kinds in result.errors.items()
    )
    lines.append(("errors", errors or "none"))
    c = result.ledger
    lines.append(
        (
            "turns",
            f"{c.get('acked_turns', 0)} acknowledged ({c.get('acked_turns_durable', 0)} in the "
            f"store at once, {c.get('acked_turns_wal', 0)} through the WAL); "
            f"{c.get('refused_turns', 0) + c.get('ambiguous_turns', 0)} not acknowledged "
            f"({c.get('refused_turns', 0)} refused, {c.get('ambiguous_turns', 0)} with an "
            "unknown outcome)",
        )
    )
    for i, a in enumerate(result.chaos):
        when = "not applied"
        if a.applied_at_s is not None:
            lifted = "-" if a.lifted_at_s is None else f"{a.lifted_at_s:.2f} s"
            when = f"applied at {a.applied_at_s:.2f} s, lifted at {lifted}"
        lines.append(("chaos" if i == 0 else "", f"{a.event}: {when} ({a.mechanism})"))
    if not result.chaos:
        lines.append(("chaos", "none"))
    return lines


def _verdict(result: SimulationResult) -> list[str]:
    v = result.verification
    word = "OK" if v.ok else "FAILED"
    lines = [
        f"verification {word}: {v.acknowledged} acknowledged turns in {v.sessions} sessions "
        f"read back from the store: {v.missing} missing, {v.duplicated} duplicated, "
        f"{v.out_of_order} out of order, {v.changed} changed, {v.unexpected} unexpected"
        + (f", {v.unreadable_sessions} sessions unreadable" if v.unreadable_sessions else ""),
        f"not acknowledged: {v.refused} refused ({v.refused_landed} stored), {v.ambiguous} with "
        f"an unknown outcome ({v.ambiguous_landed} stored once, {v.ambiguous_absent} absent, "
        f"{v.ambiguous_broken} broken)",
    ]
    if v.acknowledged == 0:
        lines.append("nothing was acknowledged: there was nothing to verify")
    lines += [f"  {p}" for p in v.problems]
    if result.stale_reads:
        lines.append(f"{result.stale_reads} reads were neither current nor flagged degraded, e.g.:")
        lines += [f"  {e}" for e in result.stale_examples]
    if result.flush_error:
        lines.append(f"the WAL did not drain: {result.flush_error}")
    return lines


def render_table(result: SimulationResult) -> str:
    """The results as text: tables, then the facts, then the verdict."""
    out = [_headline(result), ""]
    out += _columns(_operation_rows(result))
    out.append("")
    out += _columns(_tier_rows(result), note=True)
    out.append("")
    facts = _facts(result)
    width = max(len(label) for label, _ in facts)
    out += [f"{label.ljust(width)}  {text}" for label, text in facts]
    out.append("")
    out += _verdict(result)
    return "\n".join(out)


def write_reports(result: SimulationResult, json_path: Path, html_path: Path) -> None:
    """Write the JSON report and the HTML page (both 0644, no turn content)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render_html(result), encoding="utf-8")


# ---------------------------------------------------------------------- HTML and SVG

_W, _H = 760, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 34
_COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700")
_SHADE = {"store": "#ff8182", "redis": "#f2cc60"}
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:820px;color:#1f2328}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f6f8fa}
.ok{color:#1a7f37}.bad{color:#d1242f}pre{background:#f6f8fa;padding:8px;white-space:pre-wrap}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
"""


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp: float = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _svg_chart(
    title: str,
    lines: Sequence[tuple[str, Sequence[float | None]]],
    *,
    seconds: int,
    windows: Sequence[tuple[float, float, str, str]],
    log: bool,
    unit: str,
) -> str:
    """One line chart as an <svg> element; windows are (start s, end s, label, target)."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    values = [v for _, series in lines for v in series if v is not None and v > 0]
    if log:
        low = 10 ** math.floor(math.log10(min(values))) if values else 0.1
        high = 10 ** math.ceil(math.log10(max(values))) if values else 10.0
        high = max(high, low * 10)
        ticks = [low * 10**i for i in range(round(math.log10(high / low)) + 1)]

        def y(v: float) -> float:
            v = max(v, low)
            return _TOP + plot_h * (1 - math.log10(v / low) / math.log10(high / low))

    else:
        top = _nice_max(max(values) if values else 1.0)
        ticks = [top * i / 4 for i in range(5)]

        def y(v: float) -> float:
            return _TOP + plot_h * (1 - v / top)

    span = max(seconds, 1)

    def x(t: float) -> float:
        return _LEFT + plot_w * min(max(t, 0.0), span) / span

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_LEFT}" y="16" style="font-weight:600;fill:#1f2328">'
        f"{html.escape(title)}</text>",
    ]
    for start, end, label, target in windows:
        parts.append(
            f'<rect x="{x(start):.1f}" y="{_TOP}" width="{max(x(end) - x(start), 1):.1f}" '
            f'height="{plot_h}" fill="{_SHADE.get(target, "#ccc")}" fill-opacity="0.3">'
            f"<title>{html.escape(label)}</title></rect>"
            f'<text x="{x(start) + 3:.1f}" y="{_TOP + 12}">{html.escape(label)}</text>'
        )
    for tick in ticks:
        ty = y(tick)
        text = f"{tick:g}"
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" '
            'stroke="#d0d7de" stroke-width="0.5"/>'
            f'<text x="{_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{text}</text>'
        )
    step = max(1, math.ceil(span / 10))
    for t in range(0, span + 1, step):
        parts.append(
            f'<text x="{x(t):.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{t}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 4}" text-anchor="middle">'
        "seconds since the load started</text>"
        f'<text transform="translate(14 {_TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{html.escape(unit)}</text>'
    )
    parts.append(
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#8c959f" stroke-width="0.8"/>'
    )
    for i, (label, series) in enumerate(lines):
        colour = _COLOURS[i % len(_COLOURS)]
        path: list[str] = []
        pen_up = True
        for second, v in enumerate(series):
            if v is None or (log and v <= 0):
                pen_up = True
                continue
            path.append(f"{'M' if pen_up else 'L'}{x(second + 0.5):.1f},{y(v):.1f}")
            pen_up = False
        if path:
            parts.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
            )
        lx = _W - _RIGHT - 110 * (len(lines) - i)
        parts.append(
            f'<rect x="{lx}" y="8" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="17">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(result: SimulationResult) -> str:
    """A self-contained page: verdict, tables, and latency-over-time plots with chaos shaded."""
    ok = result.ok
    verdict = _verdict(result)
    windows = [
        (
            a.applied_at_s,
            a.lifted_at_s if a.lifted_at_s is not None else result.duration_s,
            str(a.event),
            a.event.target,
        )
        for a in result.chaos
        if a.applied_at_s is not None
    ]
    charts: list[str] = []
    series = result.series
    if series is not None:
        for op, s in series.operations.items():
            charts.append(
                _svg_chart(
                    f"{op}: latency per second",
                    [("p50", s.p50_ms), ("p99", s.p99_ms)],
                    seconds=series.seconds,
                    windows=windows,
                    log=True,
                    unit="ms, log scale",
                )
            )
        charts.append(
            _svg_chart(
                "messages, errors and degraded replies per second",
                [
                    ("messages", [float(v) for v in series.messages]),
                    ("errors", [float(v) for v in series.errors]),
                    ("degraded", [float(v) for v in series.degraded]),
                ],
                seconds=series.seconds,
                windows=windows,
                log=False,
                unit="per second",
            )
        )
        charts.append(
            _svg_chart(
                "WAL backlog (records, the peak of each second)",
                [("WAL records", [float(v) for v in series.wal_pending])],
                seconds=series.seconds,
                windows=windows,
                log=False,
                unit="records",
            )
        )
        opened = [i for i, s in enumerate(series.store_breaker) if s in ("open", "half_open")]
        if opened:
            charts.append(
                "<p>Store circuit breaker not closed during seconds "
                + html.escape(_spans(opened))
                + ".</p>"
            )
    facts = "".join(
        f"<tr><td>{html.escape(label)}</td><td style='text-align:left'>{html.escape(text)}</td>"
        "</tr>"
        for label, text in _facts(result)
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>memsdk simulate report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(_headline(result))}</h1>"
        f"<p class='{'ok' if ok else 'bad'}'><strong>{html.escape(verdict[0])}</strong></p>"
        f"<pre>{html.escape(chr(10).join(verdict[1:]))}</pre>"
        "<h2>Latency per operation</h2>"
        f"{_html_table(_operation_rows(result))}"
        "<h2>Hit rate per tier</h2>"
        f"{_html_table(_tier_rows(result))}"
        f"<h2>Run</h2><table>{facts}</table>"
        "<h2>Over time</h2>"
        f"<p>Planned load {format_seconds(result.planned_s)}; shaded: chaos windows as "
        "applied.</p>" + "".join(f"<div>{c}</div>" for c in charts) + "</body></html>\n"
    )


def _spans(seconds: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    spans: list[str] = []
    start = prev = None
    for s in seconds:
        if start is None:
            start = prev = s
        elif prev is not None and s == prev + 1:
            prev = s
        else:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = s
    if start is not None:
        spans.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(spans)
