"""`memsdk simulate`: the seed workload with optional chaos, a results table, a verdict.

    from memsdk.simulate import SimulationOptions, parse_chaos, run_simulation
    result = await run_simulation(Config(store="sqlite:///sim.db"), SimulationOptions(
        duration_s=10, sessions=50, chaos=parse_chaos("store-outage@3s+3s")))
    print(render_table(result)); result.exit_code

Modules: workload (the seeded model), chaos (the schedule: grammar, faults), stats
(latencies, per-second counts, health samples), verify (the ledger and the read-back pass),
progress (the bar), result and report (table, JSON, HTML), runner (run_simulation).
"""

from memsdk.simulate.chaos import ChaosEvent, ChaosSpecError, parse_chaos
from memsdk.simulate.progress import Progress, ProgressLogHandler
from memsdk.simulate.report import render_html, render_table, write_reports
from memsdk.simulate.result import SimulationResult
from memsdk.simulate.runner import SimulationOptions, run_simulation

__all__ = [
    "ChaosEvent",
    "ChaosSpecError",
    "Progress",
    "ProgressLogHandler",
    "SimulationOptions",
    "SimulationResult",
    "parse_chaos",
    "render_html",
    "render_table",
    "run_simulation",
    "write_reports",
]
