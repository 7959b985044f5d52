"""The chaos schedule of `memsdk simulate --chaos`: parsed into typed events, then applied.

Grammar (times are seconds from the start of the load; `10`, `10s`, `500ms`, `1.5m`):

    schedule := event ("," event)*
    event    := kind [":" level] "@" start ["+" duration]      no duration: until the end
    kind     := store-outage | store-slow | store-throttle | redis-kill

    store-outage@10s+5s          the store refuses every connection for 5 s
    store-slow:300ms@5s+10s      every store request takes 300 ms longer (default 500ms)
    store-throttle:0.3@5s+5s     30% of store requests are throttled (default 1 = all);
                                 DynamoDB only
    redis-kill@20s               Redis connections reset and refused until the end

Faults are applied by what simulate puts in front of a dependency, never to the dependency
itself: a FaultProxy before a DynamoDB endpoint, a FaultyStore around the SQLite store, a
TcpRelay before Redis. One fault per dependency at a time: overlapping windows on the same
dependency are refused at parse time.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, get_args
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from memsdk.faultproxy import FaultProxy
    from memsdk.relay import TcpRelay
    from memsdk.testing import FaultyStore

__all__ = [
    "AppliedChaos",
    "ChaosEvent",
    "ChaosKind",
    "ChaosSchedule",
    "ChaosSpecError",
    "FaultTarget",
    "FaultyStoreTarget",
    "ProxyStoreTarget",
    "RelayTarget",
    "Target",
    "check_chaos",
    "format_seconds",
    "parse_chaos",
]

ChaosKind = Literal["store-outage", "store-slow", "store-throttle", "redis-kill"]
Target = Literal["store", "redis"]

_KINDS: tuple[ChaosKind, ...] = get_args(ChaosKind)
_TARGET: dict[ChaosKind, Target] = {
    "store-outage": "store",
    "store-slow": "store",
    "store-throttle": "store",
    "redis-kill": "redis",
}
# What `kind:level` means per kind, and its default.
_DEFAULT_SLOW_S = 0.5
_DEFAULT_THROTTLE_SHARE = 1.0
_TIME = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
_MAX_SECONDS = 7 * 86_400.0
_TIME_HINT = "use seconds like 10, 10s, 500ms or 1.5m"


class ChaosSpecError(ValueError):
    """A --chaos schedule is malformed or does not fit this run; the message says which part."""


@dataclass(frozen=True, slots=True)
class ChaosEvent:
    """One fault: what, when (seconds from the start of the load), for how long, how hard."""

    kind: ChaosKind
    start_s: float
    duration_s: float | None = None  # None: until the end of the run
    # store-slow: added latency in seconds; store-throttle: share of requests; else None.
    level: float | None = None

    @property
    def target(self) -> Target:
        """The dependency this event hits."""
        return _TARGET[self.kind]

    def end_s(self, run_s: float) -> float:
        """When the fault is lifted in a run of `run_s` seconds."""
        if self.duration_s is None:
            return run_s
        return min(self.start_s + self.duration_s, run_s)

    def __str__(self) -> str:
        level = ""
        if self.kind == "store-slow" and self.level is not None:
            level = ":" + format_seconds(self.level)
        elif self.kind == "store-throttle" and self.level is not None:
            level = f":{self.level:g}"
        text = f"{self.kind}{level}@{format_seconds(self.start_s)}"
        if self.duration_s is not None:
            text += "+" + format_seconds(self.duration_s)
        return text


def format_seconds(value: float) -> str:
    """A duration as the grammar writes it: 500ms, 10s, 1.25s."""
    if 0 < value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _parse_time(text: str, what: str, event: str) -> float:
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ChaosSpecError(f"bad {what} {text.strip()!r} in {event!r}: {_TIME_HINT}")
    value = float(match.group(1)) * _UNIT_S[match.group(2)]
    if value > _MAX_SECONDS:
        raise ChaosSpecError(f"{what} {text.strip()!r} in {event!r} is over a week")
    return value


def _parse_kind(text: str, event: str) -> ChaosKind:
    for kind in _KINDS:
        if text == kind:
            return kind
    close = difflib.get_close_matches(text, _KINDS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ChaosSpecError(
        f"unknown chaos event {text!r} in {event!r}: {hint}known: {', '.join(_KINDS)}"
    )


def _parse_level(kind: ChaosKind, text: str | None, event: str) -> float | None:
    if kind == "store-slow":
        if text is None:
            return _DEFAULT_SLOW_S
        latency = _parse_time(text, "latency", event)
        if latency <= 0:
            raise ChaosSpecError(f"store-slow needs a latency above 0 in {event!r}")
        return latency
    if kind == "store-throttle":
        if text is None:
            return _DEFAULT_THROTTLE_SHARE
        raw = text.strip()
        try:
            share = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise ChaosSpecError(
                f"bad throttle share {raw!r} in {event!r}: a fraction in (0, 1] such as 0.3 "
                "or a percentage such as 30%"
            )
        return share
    if text is not None:
        raise ChaosSpecError(f"{kind} takes no level (':{text}') in {event!r}")
    return None


def _parse_event(text: str) -> ChaosEvent:
    event = text.strip()
    head, at, when = event.partition("@")
    if not at:
        raise ChaosSpecError(
            f"chaos event {event!r} has no start time: write KIND@START[+DURATION], "
            "e.g. store-outage@10s+5s"
        )
    name, colon, level_text = head.strip().partition(":")
    kind = _parse_kind(name.strip(), event)
    level = _parse_level(kind, level_text if colon else None, event)
    start_text, plus, duration_text = when.partition("+")
    start = _parse_time(start_text, "start", event)
    duration: float | None = None
    if plus:
        duration = _parse_time(duration_text, "duration", event)
        if duration <= 0:
            raise ChaosSpecError(f"duration must be above 0 in {event!r}")
    return ChaosEvent(kind=kind, start_s=start, duration_s=duration, level=level)


def parse_chaos(spec: str) -> tuple[ChaosEvent, ...]:
    """Parse a --chaos schedule into events ordered by start; ChaosSpecError says what is wrong."""
    if not spec.strip():
        raise ChaosSpecError("the chaos schedule is empty: e.g. store-outage@10s+5s,redis-kill@20s")
    parts = spec.split(",")
    if any(not part.strip() for part in parts):
        raise ChaosSpecError(f"empty event in chaos schedule {spec!r} (two commas in a row?)")
    events = sorted((_parse_event(part) for part in parts), key=lambda e: e.start_s)
    for target in ("store", "redis"):
        same = [e for e in events if e.target == target]
        for earlier, later in itertools.pairwise(same):
            ends = None if earlier.duration_s is None else earlier.start_s + earlier.duration_s
            if ends is None or later.start_s < ends:
                raise ChaosSpecError(
                    f"{earlier} and {later} overlap: one {target} fault at a time"
                    + (" (an event without +DURATION lasts until the end)" if ends is None else "")
                )
    return tuple(events)


def check_chaos(
    events: tuple[ChaosEvent, ...],
    *,
    duration_s: float,
    store_url: str,
    redis_url: str | None,
) -> None:
    """Refuse events this run cannot apply (after the end, no Redis, throttling on SQLite...)."""
    for event in events:
        if event.start_s >= duration_s:
            raise ChaosSpecError(
                f"{event} starts after the run ends (--duration {format_seconds(duration_s)})"
            )
        if event.target == "store" and store_url.startswith("sqlite:"):
            if event.kind == "store-throttle":
                raise ChaosSpecError(
                    f"{event}: the embedded SQLite store has no throttling; use a dynamodb:// "
                    "store, or store-outage / store-slow"
                )
        elif event.target == "store":
            endpoint = _dynamodb_endpoint(store_url)
            if endpoint is None or urlsplit(endpoint).scheme != "http":
                raise ChaosSpecError(
                    f"{event}: store faults on DynamoDB go through a local fault proxy, which "
                    "needs an http:// endpoint (DynamoDB Local); AWS endpoints use TLS"
                )
        if event.target == "redis":
            if redis_url is None:
                raise ChaosSpecError(f"{event}: no Redis to kill; pass --redis-url")
            if not redis_url.startswith("redis://"):
                raise ChaosSpecError(
                    f"{event}: redis-kill cuts a local relay in front of Redis, which needs a "
                    "standalone redis:// URL (TLS certificates name the server, and a cluster "
                    "announces its nodes' own addresses)"
                )


def _dynamodb_endpoint(store_url: str) -> str | None:
    from memsdk.config import DynamoDBStoreSpec, parse_store_url

    spec = parse_store_url(store_url)
    return spec.endpoint if isinstance(spec, DynamoDBStoreSpec) else None


# ---------------------------------------------------------------------- applying


class FaultTarget(Protocol):
    """Something in front of a dependency that can fail it on command."""

    @property
    def mechanism(self) -> str:
        """How the fault is made, for the report."""
        ...

    def apply(self, event: ChaosEvent) -> None:
        """Start the event's fault."""
        ...

    def lift(self) -> None:
        """Back to normal."""
        ...


class ProxyStoreTarget:
    """Store faults through a FaultProxy in front of a DynamoDB endpoint."""

    mechanism = "fault proxy before DynamoDB"

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy

    def apply(self, event: ChaosEvent) -> None:
        """outage: stop listening, reset connections; slow: latency; throttle: HTTP 400s."""
        level = event.level if event.level is not None else 1.0
        if event.kind == "store-outage":
            self._proxy.set_mode("down")
        elif event.kind == "store-slow":
            self._proxy.set_mode("latency", delay_s=level)
        elif event.kind == "store-throttle" and level >= 1.0:
            self._proxy.set_mode("throttle")
        elif event.kind == "store-throttle":
            self._proxy.set_mode("pass", probability=level, fault="throttle")
        else:
            raise ValueError(f"not a store event: {event}")

    def lift(self) -> None:
        """Pass every request through again."""
        self._proxy.set_mode("pass")


class FaultyStoreTarget:
    """Store faults through a FaultyStore around the embedded store."""

    mechanism = "FaultyStore around SQLite"

    def __init__(self, store: FaultyStore) -> None:
        self._store = store

    def apply(self, event: ChaosEvent) -> None:
        """outage: every call refused; slow: every call delayed."""
        if event.kind == "store-outage":
            self._store.down = True
        elif event.kind == "store-slow":
            self._store.delay_s = event.level if event.level is not None else _DEFAULT_SLOW_S
        else:
            raise ValueError(f"FaultyStore cannot apply {event}")

    def lift(self) -> None:
        """Healthy and fast again."""
        self._store.down = False
        self._store.delay_s = 0.0


class RelayTarget:
    """Redis faults through a TcpRelay in front of the server."""

    mechanism = "TCP relay before Redis cut"

    def __init__(self, relay: TcpRelay) -> None:
        self._relay = relay

    def apply(self, event: ChaosEvent) -> None:
        """Reset every connection and refuse new ones."""
        self._relay.cut()

    def lift(self) -> None:
        """Accept connections again."""
        self._relay.restore()


@dataclass(slots=True)
class AppliedChaos:
    """An event as it happened: when it was applied and lifted (seconds from the start)."""

    event: ChaosEvent
    mechanism: str
    applied_at_s: float | None = None
    lifted_at_s: float | None = None


class ChaosSchedule:
    """Applies events at their times, relative to the start of the load."""

    def __init__(
        self,
        events: tuple[ChaosEvent, ...],
        targets: Mapping[Target, FaultTarget],
        *,
        run_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        missing = {e.target for e in events} - set(targets)
        if missing:
            raise ValueError(f"no fault target for {', '.join(sorted(missing))}")
        self._targets = targets
        self._run_s = run_s
        self._clock = clock
        self._t0: float | None = None
        self.applied = [AppliedChaos(e, targets[e.target].mechanism) for e in events]

    def elapsed(self) -> float:
        """Seconds since run() started (0 before)."""
        return 0.0 if self._t0 is None else self._clock() - self._t0

    async def run(self) -> None:
        """Apply and lift each event on time; returns after the last transition."""
        self._t0 = self._clock()
        # Ends before starts at the same instant: back-to-back windows on one target work.
        # A fault that lasts until the end is lifted by lift_all() once the load has stopped.
        steps = sorted(
            [(a.event.start_s, 1, i) for i, a in enumerate(self.applied)]
            + [
                (end, 0, i)
                for i, a in enumerate(self.applied)
                if (end := a.event.end_s(self._run_s)) < self._run_s
            ]
        )
        for at, is_start, index in steps:
            delay = at - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            item = self.applied[index]
            if is_start:
                self._targets[item.event.target].apply(item.event)
                item.applied_at_s = self.elapsed()
            elif item.applied_at_s is not None and item.lifted_at_s is None:
                self._targets[item.event.target].lift()
                item.lifted_at_s = self.elapsed()

    def lift_all(self) -> None:
        """Lift every fault still applied (the load has stopped); idempotent."""
        for item in self.applied:
            if item.applied_at_s is not None and item.lifted_at_s is None:
                self._targets[item.event.target].lift()
                item.lifted_at_s = self.elapsed()

    def status(self) -> str:
        """What is going on now, for the progress bar: active faults, else the next one."""
        now = self.elapsed()
        active = [a for a in self.applied if a.applied_at_s is not None and a.lifted_at_s is None]
        if active:
            return ", ".join(
                f"{a.event.kind} {_left(a.event.end_s(self._run_s) - now)} left" for a in active
            )
        upcoming = [a for a in self.applied if a.applied_at_s is None]
        if upcoming:
            nxt = upcoming[0].event
            return f"{nxt.kind} in {_left(nxt.start_s - now)}"
        return "done" if self.applied else "off"


def _left(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
