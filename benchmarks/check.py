"""Ratio regression check: a report's ratios against the bounds in benchmarks/expected.json.

Only ratios are checked, never absolute times. Each expected figure names a benchmark and a
ratio row of the report, the value measured when the bound was set (`measured`, for
people), and a bound: `max` for figures where lower is better (memsdk / baseline), `min`
where higher is better (a peer / memsdk, a speed-up). A figure whose benchmark did not run
(another suite) is skipped; a figure whose benchmark ran without that row is a failure, so
that renaming a row cannot silently switch its check off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Outcome", "check", "load_expected"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The check of one expected figure."""

    benchmark: str
    ratio: str
    status: str  # "ok" | "regression" | "missing" | "skipped"
    message: str


def load_expected(path: Path) -> list[dict[str, Any]]:
    """The expected figures of `path`; ValueError naming the entry if one is malformed."""
    figures: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["figures"]
    for n, fig in enumerate(figures):
        bounds = ("max" in fig) + ("min" in fig)
        if not fig.get("benchmark") or not fig.get("ratio") or bounds != 1:
            raise ValueError(
                f"{path}: figure {n} needs 'benchmark', 'ratio' and exactly one of 'max' / 'min'"
            )
    return figures


def check(report: dict[str, Any], expected: list[dict[str, Any]]) -> list[Outcome]:
    """Judge every expected figure against the report's ratio rows."""
    rows = {
        bench["name"]: {r["name"]: r["value"] for r in bench.get("ratios", [])}
        for bench in report["benchmarks"]
    }
    outcomes = []
    for fig in expected:
        bench, ratio = fig["benchmark"], fig["ratio"]
        if bench not in rows:
            outcomes.append(Outcome(bench, ratio, "skipped", "benchmark not run"))
            continue
        value = rows[bench].get(ratio)
        if value is None:
            outcomes.append(
                Outcome(bench, ratio, "missing", "the report has no such ratio (renamed?)")
            )
            continue
        if "max" in fig:
            bad, bound = value > fig["max"], f"<= {fig['max']:.3f}"
        else:
            bad, bound = value < fig["min"], f">= {fig['min']:.3f}"
        was = f"set when it measured {fig['measured']:.3f}" if "measured" in fig else ""
        outcomes.append(
            Outcome(
                bench,
                ratio,
                "regression" if bad else "ok",
                f"{value:.3f} (bound {bound}{'; ' + was if was else ''})",
            )
        )
    return outcomes
