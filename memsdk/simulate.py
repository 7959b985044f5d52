"""The seed workload: concurrent sessions that read their context and append turns.

Each simulated session loops: load_context (the read before intent classification), then
append the user + assistant pair (the write after the response), then waits a think time.
At the end every acknowledged turn is read back and checked: present, once, in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import statistics
import time
from dataclasses import dataclass, field

from memsdk.client import MemoryClient
from memsdk.config import Config
from memsdk.errors import MemsdkError
from memsdk.models import Turn

__all__ = ["SimulationResult", "run_simulation"]

_WORDS = ("manga", "horror", "cover", "price", "shipping", "volume", "author", "review", "gift")


@dataclass
class SimulationResult:
    """What a simulation did and whether every acknowledged turn was found again."""

    duration_s: float
    sessions: int
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    acked_turns: int = 0
    missing: int = 0
    duplicated: int = 0
    out_of_order: int = 0

    @property
    def ok(self) -> bool:
        """True when turns were acknowledged, none failed, and all came back once, in order."""
        intact = self.missing == 0 and self.duplicated == 0 and self.out_of_order == 0
        return intact and self.acked_turns > 0 and not self.errors

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """One row per operation: name, count, ops/s, p50, p95, p99 (ms)."""
        out = []
        for op, values in sorted(self.latencies_ms.items()):
            ordered = sorted(values)
            out.append(
                (
                    op,
                    str(len(values)),
                    f"{len(values) / self.duration_s:.1f}",
                    f"{_pct(ordered, 50):.2f}",
                    f"{_pct(ordered, 95):.2f}",
                    f"{_pct(ordered, 99):.2f}",
                )
            )
        return out

    def render(self) -> str:
        """The results table and the verification verdict as text."""
        header = ("operation", "count", "ops/s", "p50 ms", "p95 ms", "p99 ms")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        lines.append("")
        lines.append(f"sessions={self.sessions} duration={self.duration_s:.1f}s errors: {errors}")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"verification {verdict}: {self.acked_turns} acknowledged turns, {self.missing} "
            f"missing, {self.duplicated} duplicated, {self.out_of_order} out of order"
        )
        return "\n".join(lines)


def _pct(ordered: list[float], pct: int) -> float:
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[pct - 1]


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


async def run_simulation(
    config: Config, *, duration_s: float, sessions: int, seed: int = 7, think_s: float = 0.33
) -> SimulationResult:
    """Run the seed workload for `duration_s`, then verify every acknowledged turn."""
    result = SimulationResult(duration_s=duration_s, sessions=sessions)
    acked: dict[str, list[str]] = {}
    rng = random.Random(seed)
    run_tag = f"{int(time.time())}-{rng.randrange(16**6):06x}"
    deadline = time.monotonic() + duration_s

    def record(op: str, started: float) -> None:
        result.latencies_ms.setdefault(op, []).append((time.perf_counter() - started) * 1000)

    async with MemoryClient(config) as mem:

        async def session_loop(index: int) -> None:
            local = random.Random(seed * 1_000_003 + index)
            sid = f"sim-{run_tag}-{index}"
            ids = acked.setdefault(sid, [])
            # Power users (1 in 20) write long assistant turns with product cards.
            power = local.random() < 0.05
            await asyncio.sleep(local.random() * think_s)
            while time.monotonic() < deadline:
                try:
                    started = time.perf_counter()
                    await mem.load_context(sid, customer_id=f"cust-{index}")
                    record("load_context", started)
                    reply_size = local.choice((800, 800, 2_000)) * (4 if power else 1)
                    turns = [
                        Turn(role="user", content=_text(local, 120), intent="product_discovery"),
                        Turn(
                            role="assistant",
                            content=_text(local, reply_size),
                            attributes={"cards": [{"asin": f"B{local.randrange(10**8):08d}"}]},
                        ),
                    ]
                    started = time.perf_counter()
                    receipt = await mem.append_turns(sid, turns, customer_id=f"cust-{index}")
                    record("append_turns", started)
                    ids.extend(receipt.turn_ids)
                except MemsdkError as exc:
                    name = type(exc).__name__
                    result.errors[name] = result.errors.get(name, 0) + 1
                await asyncio.sleep(local.uniform(0.5, 1.5) * think_s)

        started_at = time.monotonic()
        await asyncio.gather(*(session_loop(i) for i in range(sessions)))
        result.duration_s = time.monotonic() - started_at
        if config.wal_dir is not None:
            await mem.flush(timeout=60)
    # Verified by a client without the WAL: the store itself must hold every acked turn.
    async with MemoryClient(dataclasses.replace(config, wal_dir=None)) as reader:
        await _verify(reader, acked, result)
    return result


async def _verify(mem: MemoryClient, acked: dict[str, list[str]], result: SimulationResult) -> None:
    """Read every session back; count acknowledged turns missing, duplicated or out of order."""
    for sid, ids in acked.items():
        result.acked_turns += len(ids)
        if not ids:
            continue
        ctx = await _load_all(mem, sid, len(ids))
        got = [t.turn_id for t in ctx]
        result.duplicated += len(got) - len(set(got))
        result.missing += len(set(ids) - set(got))
        where = {turn_id: i for i, turn_id in enumerate(got)}
        positions = [where[i] for i in ids if i in where]
        result.out_of_order += sum(1 for a, b in itertools.pairwise(positions) if b < a)


async def _load_all(mem: MemoryClient, sid: str, expected: int) -> list[Turn]:
    for attempt in range(5):
        try:
            ctx = await mem.load_context(sid, last_n=min(max(expected, 1), 10_000))
            return ctx.turns
        except MemsdkError:
            await asyncio.sleep(0.2 * (attempt + 1))
    return []
