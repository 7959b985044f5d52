"""What telemetry costs on the warm read path (issue 7), as ratios against it switched off.

Three clients serve the same warm session (validated mode: L1 checked by one Redis GET,
no store call), differing only in telemetry:

- baseline: `Config(telemetry_enabled=False)`: no telemetry call at all;
- the API only: the default, with no OpenTelemetry SDK installed (the global providers are
  the API's no-ops): what every user pays who does not trace;
- the SDK: a TracerProvider with a SimpleSpanProcessor into an InMemorySpanExporter and a
  MeterProvider with an InMemoryMetricReader, so every span and metric is really built;
  then the same with 10% of traces sampled, with the tracer provider only and with the
  meter provider only (where the SDK's cost goes).

Batches of calls are timed call by call (benchmarks.cache's L1-hit machinery), candidates
interleaved batch by batch; each figure is the median over batches of the per-call median.
Goals: API only <= 1.03x the baseline, the SDK <= 1.15x.
"""

from __future__ import annotations

import gc
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from benchmarks.cache import (
    HitCandidate,
    HitSamples,
    _fill,
    _hit_batch,
    _hit_verifier,
    _median_interval,
    _rotated,
    _row,
    cache_config,
    describe_hit_samples,
)
from benchmarks.core import (
    CUSTOMER_ID,
    TURNS_PER_MESSAGE,
    WINDOW,
    Progress,
    Settings,
    ratio_interval,
)
from memsdk import MemoryClient
from memsdk.models import Context
from tests.harness.redis_server import RedisServer

API_ONLY_GOAL = 1.03
SDK_GOAL = 1.15


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Sample counts per mode."""

    warmup: int
    rounds: int
    batch: int


QUICK = TelemetrySettings(warmup=3, rounds=15, batch=100)
FULL = TelemetrySettings(warmup=5, rounds=61, batch=200)


async def run_telemetry(
    endpoint: str, settings: Settings, progress: Progress
) -> list[dict[str, Any]]:
    """The telemetry-overhead benchmark (`endpoint` unused: the store here is SQLite)."""
    ts = QUICK if settings.mode == "quick" else FULL
    started = time.perf_counter()
    progress("telemetry: starting redis-server")
    redis_server = RedisServer().start()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    # What a production deployment usually runs: 10% of traces sampled (at the root).
    sampled_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
    sampled_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    sid = f"warm-{secrets.token_hex(4)}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = f"sqlite:///{Path(tmp) / 'telemetry.db'}"
            config = cache_config(store, redis_url=redis_server.url)
            off = MemoryClient(
                cache_config(store, redis_url=redis_server.url, telemetry_enabled=False)
            )
            api = MemoryClient(config)
            sdk = MemoryClient(
                config, tracer_provider=tracer_provider, meter_provider=meter_provider
            )
            sampled = MemoryClient(
                config, tracer_provider=sampled_provider, meter_provider=meter_provider
            )
            # The SDK's cost split in two: spans only, and metrics only.
            tracing = MemoryClient(config, tracer_provider=tracer_provider)
            metering = MemoryClient(config, meter_provider=meter_provider)
            names = {
                "telemetry disabled (baseline)": off,
                "API only, no SDK (default)": api,
                "SDK, in-memory exporter": sdk,
                "SDK, 10% of traces sampled": sampled,
                "SDK tracing only (no meter provider)": tracing,
                "SDK metrics only (no tracer provider)": metering,
            }
            for client in names.values():
                await client.open()
            try:
                await _fill(off, sid, WINDOW // TURNS_PER_MESSAGE)
                for client in names.values():
                    await client.load_context(sid, customer_id=CUSTOMER_ID)  # fill each L1
                results = await _measure(names, sid, ts, exporter, progress)
            finally:
                for client in names.values():
                    await client.aclose()
    finally:
        redis_server.stop()
        tracer_provider.shutdown()
        sampled_provider.shutdown()
        meter_provider.shutdown()
    return [
        _describe(
            results, ts, settings, time.perf_counter() - started, len(exporter.get_finished_spans())
        )
    ]


async def _measure(
    clients: dict[str, MemoryClient],
    sid: str,
    ts: TelemetrySettings,
    exporter: InMemorySpanExporter,
    progress: Progress,
) -> dict[str, HitSamples]:
    def load(client: MemoryClient) -> Callable[[], Awaitable[Context]]:
        return lambda: client.load_context(sid, customer_id=CUSTOMER_ID)

    candidates = [
        HitCandidate(
            name, load(mem), ts.batch, _hit_verifier(name, mem, "l1+redis", redis=True), mem=mem
        )
        for name, mem in clients.items()
    ]
    progress(
        f"telemetry: warm validated read: {ts.warmup} warm-up + {ts.rounds} rounds of "
        f"{ts.batch} calls per candidate"
    )
    for r in range(ts.warmup):
        for c in _rotated(candidates, r):
            await _hit_batch(c)
    exporter.clear()
    gc.collect()
    results = {c.name: HitSamples() for c in candidates}
    for r in range(ts.rounds):
        for c in _rotated(candidates, r):
            times, cpu = await _hit_batch(c)
            results[c.name].calls.append(times)
            results[c.name].cpu.append(cpu)
        exporter.clear()  # untimed: the SDK's in-memory spans must not pile up
    return results


def _describe(
    results: dict[str, HitSamples],
    ts: TelemetrySettings,
    settings: Settings,
    elapsed_s: float,
    spans_left: int,
) -> dict[str, Any]:
    reps = settings.bootstrap
    (_, base_samples), *others = results.items()
    base, base_cpu = base_samples.batch_medians_us(), base_samples.cpu_per_call_us()
    goals = {"API only, no SDK (default)": API_ONLY_GOAL, "SDK, in-memory exporter": SDK_GOAL}
    rows = [
        _row(
            "baseline (telemetry disabled): median us per call",
            statistics.median(base),
            _median_interval(base, reps),
            None,
        )
    ]
    for name, samples in others:
        wall, cpu = samples.batch_medians_us(), samples.cpu_per_call_us()
        rows.append(
            _row(
                f"{name} / disabled, per call",
                statistics.median(wall) / statistics.median(base),
                ratio_interval(wall, base, reps=reps),
                goals.get(name),
            )
        )
        rows.append(
            _row(
                f"{name} / disabled, CPU per call",
                statistics.median(cpu) / statistics.median(base_cpu),
                ratio_interval(cpu, base_cpu, reps=reps),
                None,
            )
        )
    candidates = describe_hit_samples(results)
    return {
        "name": "telemetry: warm validated read",
        "backend": "SQLite (untouched) + redis-server",
        "samples": ts.rounds,
        "warmup": ts.warmup,
        "elapsed_s": elapsed_s,
        "notes": [
            f"load_context(last_n={WINDOW}) of one warm session, validated mode: the L1 "
            "window checked by one Redis GET (no store call); each call asserted (after its "
            "batch, untimed) to be an L1 hit served as 'l1+redis'",
            f"batches of {ts.batch} calls per candidate, interleaved round by round; the "
            "figure is the median over batches of the per-call median; intervals resample "
            "batches",
            "the SDK candidates build 2 spans per call (memsdk.load_context and "
            "its Redis GET) and records 3 metric points (operation latency, Redis latency, "
            "cache lookup counts); its exporter is cleared between rounds, untimed",
            f"spans left in the exporter at the end: {spans_left}",
        ],
        "candidates": candidates,
        "ratios": rows,
    }
