"""OpenTelemetry traces and metrics for memsdk: the only module that imports opentelemetry.

memsdk depends on opentelemetry-api alone. Until the application installs an SDK, every
tracer and meter here is the API's no-op, and this module keeps the cost of that to a
couple of attribute lookups per call: spans that do not record are never made current and
get no attributes. `Config(telemetry_enabled=False)` removes even that (the benchmark's
baseline).

What is emitted (docs/observability.md lists it with the attributes):
- a span per public call (`memsdk.load_context`, `memsdk.append_turns`, ...) and per
  background WAL flush batch (`memsdk.wal.flush`);
- a child span per store request and per Redis command, named and attributed after the
  OpenTelemetry database semantic conventions (`db.system.name`, `db.operation.name`,
  `aws.dynamodb.table_names`, `server.address`, `server.port`);
- span events for every degradation (`memsdk.degraded`), `memsdk.context_lost`,
  `memsdk.backpressure`, `memsdk.retry`, `memsdk.redis.bypassed`, `memsdk.wal.replay`;
- metrics: latency histograms per operation and per dependency call, cache lookups per
  tier and result, retries and refused retries, breaker transitions and state, WAL backlog
  gauges, degraded replies, lost contexts, and the turn count of loaded sessions (a spike
  of one-turn sessions means memory was lost).

Privacy: no turn content, customer id, page context or foreign exception text is ever put
in a span, event or metric here. A failure is recorded by `Telemetry.fail_span` alone (the
SDK's own exception recording is off for every span memsdk starts): its `exception` event
holds the type and memsdk's own message, no stacktrace. Session and customer ids are added
to spans only when named in `Config.telemetry_attributes`; never to metrics (unbounded
cardinality).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

__all__ = [
    "MeterProvider",
    "Scope",
    "Telemetry",
    "TelemetrySnapshot",
    "TracerProvider",
    "UnrecordedScope",
]

_SCOPE = "memsdk"
try:
    _VERSION = version("memsdk")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0"

# Latency buckets in seconds: memsdk's calls live between ~50 µs (an L1 hit) and seconds.
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
# Turn counts of loaded sessions, as a label: the low end is where lost memory shows.
_TURN_BUCKETS: Final = ((0, "0"), (1, "1"), (2, "2"), (5, "3-5"), (10, "6-10"), (20, "11-20"),
                        (50, "21-50"), (200, "51-200"))  # fmt: skip


def _turns_label(turn_count: int) -> str:
    for bound, label in _TURN_BUCKETS:
        if turn_count <= bound:
            return label
    return "201+"


# Every label up to the last bound, precomputed: a load pays a list index, not a loop.
_TURN_LABELS: Final = tuple(_turns_label(n) for n in range(_TURN_BUCKETS[-1][0] + 1))


def _turns_bucket(turn_count: int) -> str:
    return _TURN_LABELS[turn_count] if 0 <= turn_count < len(_TURN_LABELS) else "201+"


# Observable counters: name, unit, description. Each reports every live client's ints.
_COUNTERS: Final = (
    ("memsdk.cache.lookups", "{lookup}",
     "Cache lookups by tier (l1, redis) and result (hit, miss, error, bypassed)."),
    ("memsdk.store.retries", "{retry}",
     "Store retries asked for, by outcome (sent, refused_budget, refused_breaker)."),
    ("memsdk.retry_budget.exhausted", "{retry}",
     "Retries refused because the retry budget was empty."),
    ("memsdk.breaker.transitions", "{transition}",
     "Circuit breaker state changes, by dependency and new state."),
    ("memsdk.degraded_replies", "{reply}", "load_context answers flagged degraded, by reason."),
    ("memsdk.context_lost", "{call}",
     "Calls that expected a session and found it absent (expired, deleted)."),
    ("memsdk.backpressure", "{call}",
     "Calls refused by a full local bound (WAL budget, bulkhead), by reason."),
    ("memsdk.redis.bypassed", "{call}",
     "Redis commands skipped because Redis's circuit breaker was open."),
    ("memsdk.wal.replayed_records", "{record}",
     "Unconfirmed WAL records queued for replay when a client opened."),
    ("memsdk.wal.rejected_turns", "{turn}",
     "Acknowledged turns kept in the WAL's rejected/ folder instead of the store, by reason."),
    ("memsdk.context.loads", "{call}",
     "Non-degraded load_context answers, by the session's turn count (0: absent)."),
)  # fmt: skip
_BREAKER_LEVEL: Final = {"closed": 0, "half_open": 1, "open": 2}

_NO_ATTRIBUTES: Final[Mapping[str, Any]] = {}
_LISTENER_CHECK_S: Final = 1.0
# Providers under which no span ever records: skip building spans entirely.
_NO_TRACING: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_ContextToken = contextvars.Token[otel_context.Context]


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """What the observable gauges report for one client (read from health(), no I/O)."""

    store_breaker: str
    redis_breaker: str
    l1_entries: int
    l1_bytes: int
    wal_pending_records: int | None
    wal_pending_bytes: int | None
    wal_oldest_pending_age_s: float | None


class _CallStats:
    """One public call or dependency call as its children see it (shared with child tasks):
    the retries they made, and whether its span records (a sampled-out trace)."""

    __slots__ = ("recording", "retries")

    def __init__(self, recording: bool) -> None:
        self.retries = 0
        self.recording = recording


# The innermost public operation and dependency call of the running task; asyncio copies
# the context into tasks it spawns, so a concurrent GetItem and Query both count into the
# load_context that started them.
_operation: contextvars.ContextVar[_CallStats | None] = contextvars.ContextVar(
    "memsdk_operation", default=None
)
_dependency: contextvars.ContextVar[_CallStats | None] = contextvars.ContextVar(
    "memsdk_dependency", default=None
)


class Scope:
    """One public call or dependency call: its span (if recording) and its latency."""

    __slots__ = (
        "_attrs",
        "_histogram",
        "_pending",
        "_span",
        "_started",
        "_stats",
        "_telemetry",
        "_tokens",
        "_var",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        span: Span | None,
        attrs: dict[str, Any],
        histogram: Histogram,
        var: contextvars.ContextVar[_CallStats | None],
    ) -> None:
        self._telemetry = telemetry
        self._span = span
        self._attrs = attrs
        self._histogram = histogram
        self._var = var
        self._stats = _CallStats(span is not None)
        self._started = 0.0
        self._tokens: tuple[contextvars.Token[_CallStats | None], _ContextToken | None] | None
        self._tokens = None
        # Span attributes set during the call, given to the span in one call at its end:
        # each set_attribute on an SDK span takes its lock and validates on its own.
        self._pending: dict[str, Any] = {}

    @property
    def recording(self) -> bool:
        """True when a span records: only then is it worth computing attributes."""
        return self._span is not None

    def identify(self, session_id: str | None, customer_id: str | None) -> None:
        """Add the identifying attributes the deployment allowed (none by default)."""
        if self._span is not None:
            self._pending.update(self._telemetry.identity(session_id, customer_id))

    def set(self, key: str, value: Any) -> None:
        """Set a span attribute (no-op when not recording)."""
        if self._span is not None:
            self._pending[key] = value

    def set_metric_attribute(self, key: str, value: str | bool) -> None:
        """An attribute of the latency metric, and of the span: keep it low-cardinality."""
        self._attrs[key] = value
        if self._span is not None:
            self._pending[key] = value

    def __enter__(self) -> Scope:
        token = self._var.set(self._stats)
        ctx_token = None
        if self._span is not None:
            ctx_token = otel_context.attach(trace.set_span_in_context(self._span))
        self._tokens = (token, ctx_token)
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        elapsed = time.perf_counter() - self._started
        assert self._tokens is not None
        token, ctx_token = self._tokens
        self._var.reset(token)
        if exc is not None:
            self._attrs["error.type"] = type(exc).__name__
        span = self._span
        if span is not None:
            if self._stats.retries:
                self._pending["memsdk.retry_count"] = self._stats.retries
            if self._pending:
                span.set_attributes(self._pending)
            if exc is not None:
                self._telemetry.fail_span(span, exc)
            span.end()
            if ctx_token is not None:
                otel_context.detach(ctx_token)
        self._histogram.record(elapsed, self._attrs)


class UnrecordedScope:
    """The scope of a disabled Telemetry: every method does nothing."""

    __slots__ = ()
    recording = False

    def identify(self, session_id: str | None, customer_id: str | None) -> None:
        """Do nothing."""

    def set(self, key: str, value: Any) -> None:
        """Do nothing."""

    def set_metric_attribute(self, key: str, value: str | bool) -> None:
        """Do nothing."""

    def __enter__(self) -> UnrecordedScope:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        return None


_UNRECORDED: Final = UnrecordedScope()


class Telemetry:
    """Spans, metrics and events for one MemoryClient; cheap when nobody listens."""

    _client_ids = itertools.count(1)

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        allowed: Iterable[str] = (),
        enabled: bool = True,
    ) -> None:
        """Use the given providers, else the global ones (the API's no-ops until an SDK)."""
        self.enabled = enabled
        self._allowed = frozenset(allowed)
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracing_now = self._metering_now = False
        self._listeners_checked_until = 0.0
        self.client_id = str(next(self._client_ids))
        self._tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider=meter_provider)
        self._meter = meter
        self.operation_duration = meter.create_histogram(
            "memsdk.operation.duration",
            unit="s",
            description="Duration of memsdk's public calls, by operation and answering tier.",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self.dependency_duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of store requests and Redis commands (retries included).",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        # Counters are plain ints here, read by observable counters at collection time:
        # a call pays a dict increment, not an SDK measurement (~10-20 us each).
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.snapshot_source: Callable[[], TelemetrySnapshot] | None = None

    # ------------------------------------------------------------------ privacy

    def identity(self, session_id: str | None, customer_id: str | None) -> dict[str, str]:
        """The identifying span attributes this deployment allowed (none by default)."""
        attrs: dict[str, str] = {}
        if session_id is not None and "session_id" in self._allowed:
            attrs["memsdk.session_id"] = session_id
        if customer_id is not None and "customer_id" in self._allowed:
            attrs["memsdk.customer_id"] = customer_id
        return attrs

    def fail_span(self, span: Span, exc: BaseException) -> None:
        """Mark a span failed: status ERROR with the type, and a scrubbed `exception` event."""
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        # Never the SDK's record_exception: its `exception.stacktrace` holds str(exc) (with
        # the session id suffix), the messages of chained foreign exceptions and this
        # machine's file paths, whatever `exception.message` is overridden with.
        span.add_event("exception", self._exception_attributes(exc))

    def _exception_attributes(self, exc: BaseException) -> dict[str, str]:
        """The `exception` event's only fields: `exception.type` and `exception.message`.

        The type is the fully-qualified class name (semantic conventions). The message is
        memsdk's own (what happened and what to do, never caller data), with the session
        id suffix only when allowed; a foreign exception's message could hold anything (a
        server's echo of a request), so it is left empty.
        """
        from memsdk.errors import MemsdkError  # errors.py imports nothing of ours

        cls = type(exc)
        module = cls.__module__
        name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        message = ""
        if isinstance(exc, MemsdkError):
            message = exc.message
            if exc.session_id is not None and "session_id" in self._allowed:
                message = f"{message} [session_id={exc.session_id}]"
        return {"exception.type": name, "exception.message": message}

    # ------------------------------------------------------------------ spans

    def _tracing(self) -> bool:
        """False while nobody traces: no SDK installed (the API's proxy) or a no-op provider."""
        if time.monotonic() >= self._listeners_checked_until:
            self._check_listeners()
        return self._tracing_now

    def listening(self) -> bool:
        """True when an SDK collects spans or metrics (checked at most once a second)."""
        return self.enabled and (self._tracing() or self._metering())

    def _tracing_below(self) -> bool:
        """Whether a child span could record: someone traces, and the public call this
        child belongs to (if any) was not sampled out. A child of a sampled-out trace
        would be sampled out too: building it only costs time."""
        if not self._tracing():
            return False
        parent = _operation.get()
        return parent is None or parent.recording

    def _metering(self) -> bool:
        """False while nobody collects metrics (the API's proxy or no-op meter provider)."""
        if time.monotonic() >= self._listeners_checked_until:
            self._check_listeners()
        return self._metering_now

    def _check_listeners(self) -> None:
        # Looking the global providers up costs a few microseconds (os.environ is read each
        # time), so the answer is kept for a second: an SDK installed after the client was
        # built is picked up within that second.
        tracer_provider = self._tracer_provider or trace.get_tracer_provider()
        meter_provider = self._meter_provider or metrics.get_meter_provider()
        self._tracing_now = not isinstance(tracer_provider, _NO_TRACING)
        self._metering_now = not isinstance(meter_provider, metrics.NoOpMeterProvider) and (
            type(meter_provider).__name__ != "_ProxyMeterProvider"
        )
        self._listeners_checked_until = time.monotonic() + _LISTENER_CHECK_S

    def operation(self, name: str) -> Scope | UnrecordedScope:
        """A public call's scope: `with telemetry.operation("memsdk.load_context") as op:`."""
        if not self.enabled:
            return _UNRECORDED
        span: Span | None = None
        if self._tracing():
            # Every span memsdk starts has the SDK's exception recording and status off:
            # it would attach a stacktrace and str(exc). fail_span does both, scrubbed.
            span = self._tracer.start_span(
                name, record_exception=False, set_status_on_exception=False
            )
            if not span.is_recording():
                span = None  # a sampled-out span is never made current: nothing to carry
        elif not self._metering():
            return _UNRECORDED  # nobody listens: the cost of a disabled client
        return Scope(self, span, {"memsdk.operation": name}, self.operation_duration, _operation)

    def dependency(
        self,
        system: str,
        operation: str,
        *,
        target: str | None = None,
        attributes: Mapping[str, Any] = _NO_ATTRIBUTES,
    ) -> Scope | UnrecordedScope:
        """A store request or Redis command's client span, named `{operation} {target}`."""
        if not self.enabled:
            return _UNRECORDED
        metric_attrs = {"db.system.name": system, "db.operation.name": operation}
        span: Span | None = None
        if self._tracing_below():
            name = operation if target is None else f"{operation} {target}"
            span = self._tracer.start_span(
                name,
                kind=SpanKind.CLIENT,
                attributes={**metric_attrs, **attributes},
                record_exception=False,
                set_status_on_exception=False,
            )
            if not span.is_recording():
                span = None
        elif not self._metering():
            return _UNRECORDED
        return Scope(self, span, metric_attrs, self.dependency_duration, _dependency)

    def finished_dependency_call(
        self,
        system: str,
        operation: str,
        *,
        started_ns: int,
        ended_ns: int,
        error_type: str | None,
        attributes: Mapping[str, Any] = _NO_ATTRIBUTES,
    ) -> None:
        """Report a dependency call after the fact (Redis: the cache layer only reports)."""
        if not self.enabled:
            return
        metric_attrs: dict[str, Any] = {"db.system.name": system, "db.operation.name": operation}
        if error_type is not None:
            metric_attrs["error.type"] = error_type
        if self._metering():
            self.dependency_duration.record((ended_ns - started_ns) / 1e9, metric_attrs)
        if not self._tracing_below():
            return
        span = self._tracer.start_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={**metric_attrs, **attributes},
            start_time=started_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        if not span.is_recording():
            return
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=ended_ns)

    @contextlib.contextmanager
    def background(self, name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
        """A root span for background work (a WAL flush batch), not tied to any caller."""
        if not self.enabled:
            yield
            return
        # Left on, the SDK would record the escaping exception with its stacktrace and set
        # the status to "Type: message" (session id included): fail_span does both, scrubbed.
        with self._tracer.start_as_current_span(
            name,
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            # Background tasks inherit the context of whatever call started them (open()):
            # this work is its own root, with its own children and retry count.
            token = _operation.set(_CallStats(span.is_recording()))
            try:
                yield
            except BaseException as exc:
                if span.is_recording():
                    self.fail_span(span, exc)
                raise
            finally:
                _operation.reset(token)

    def event(self, name: str, attributes: Mapping[str, Any] = _NO_ATTRIBUTES) -> None:
        """Add an event to the current span, if it records."""
        if not self.enabled or not self._tracing():
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)

    # ------------------------------------------------------------------ signals

    def _count(self, metric: str, *attributes: tuple[str, str], amount: int = 1) -> None:
        key = (metric, attributes)
        self._counts[key] = self._counts.get(key, 0) + amount

    def counts(self) -> list[tuple[str, dict[str, str], int]]:
        """Every counter of this client: (metric, attributes, value) since it was created."""
        return [(metric, dict(attrs), value) for (metric, attrs), value in self._counts.items()]

    def retry(self, outcome: str) -> None:
        """A store retry was asked for: `sent`, `refused_budget` or `refused_breaker`."""
        if not self.enabled:
            return
        self._count("memsdk.store.retries", ("memsdk.retry.outcome", outcome))
        if outcome == "refused_budget":
            self._count("memsdk.retry_budget.exhausted")
        if outcome == "sent":
            for holder in (_operation.get(), _dependency.get()):
                if holder is not None:
                    holder.retries += 1
        self.event("memsdk.retry", {"memsdk.retry.outcome": outcome})

    def cache_lookup(self, tier: str, result: str) -> None:
        """One cache lookup: tier l1 or redis; result hit, miss, error or bypassed."""
        if self.enabled:
            key = (
                "memsdk.cache.lookups",
                (("memsdk.cache.tier", tier), ("memsdk.cache.result", result)),
            )
            self._counts[key] = self._counts.get(key, 0) + 1

    def redis_bypassed(self, operation: str) -> None:
        """A Redis operation (get, put, fill, invalidate) was skipped: the breaker is open."""
        if self.enabled:
            self._count("memsdk.redis.bypassed", ("memsdk.cache.operation", operation))
            self.event("memsdk.redis.bypassed", {"memsdk.cache.operation": operation})

    def breaker_changed(self, dependency: str, old: str, new: str) -> None:
        """A circuit breaker changed state."""
        if self.enabled:
            self._count(
                "memsdk.breaker.transitions",
                ("memsdk.dependency", dependency),
                ("memsdk.breaker.state", new),
            )
            self.event(
                "memsdk.breaker",
                {"memsdk.dependency": dependency, "memsdk.breaker.from": old,
                 "memsdk.breaker.to": new},
            )  # fmt: skip

    def degraded(self, reason: str) -> None:
        """A reply flagged degraded; `reason` is a short fixed code."""
        if self.enabled:
            self._count("memsdk.degraded_replies", ("memsdk.degraded.reason", reason))
            self.event("memsdk.degraded", {"memsdk.degraded.reason": reason})

    def context_lost(self, operation: str) -> None:
        """A call expected a session and found it absent."""
        if self.enabled:
            self._count("memsdk.context_lost", ("memsdk.operation", operation))
            self.event("memsdk.context_lost")

    def backpressure(self, reason: str) -> None:
        """A call was refused by a full local bound; `reason` is a short fixed code."""
        if self.enabled:
            self._count("memsdk.backpressure", ("memsdk.backpressure.reason", reason))
            self.event("memsdk.backpressure", {"memsdk.backpressure.reason": reason})

    def wal_replay(self, records: int) -> None:
        """Unconfirmed records were queued for replay at open."""
        if self.enabled:
            self._count("memsdk.wal.replayed_records", amount=records)
            self.event("memsdk.wal.replay", {"memsdk.wal.records": records})

    def wal_rejected(self, reason: str, records: int, turns: int) -> None:
        """Acknowledged appends were set aside in rejected/; `reason` is a short fixed code."""
        if self.enabled:
            self._count("memsdk.wal.rejected_turns", ("memsdk.wal.reason", reason), amount=turns)
            self.event(
                "memsdk.wal.rejected",
                {"memsdk.wal.reason": reason, "memsdk.wal.records": records, "memsdk.turns": turns},
            )

    def loaded_turn_count(self, turn_count: int) -> None:
        """The session load_context returned has this many turns (0: absent)."""
        if self.enabled:
            key = ("memsdk.context.loads", (("memsdk.context.turns", _turns_bucket(turn_count)),))
            self._counts[key] = self._counts.get(key, 0) + 1

    # ------------------------------------------------------------------ gauges

    def observe(self, snapshot: Callable[[], TelemetrySnapshot]) -> None:
        """Report this client's counters, and its breaker, L1 and WAL state as gauges."""
        if self.enabled:
            self.snapshot_source = snapshot
            _instruments_for(self._meter).clients[self.client_id] = self

    def forget(self) -> None:
        """Stop reporting this client's gauges (it closed); its counters stay reported."""
        if self.enabled:
            self.snapshot_source = None


class _Instruments:
    """The observable instruments of one Meter, shared by every client that uses it.

    An SDK Meter keeps the callbacks of the first registration of a name and silently
    drops later ones, so each instrument is created once per meter and reports every live
    client, labelled `memsdk.client.id`. Clients are held weakly: a client that is gone
    stops being reported.
    """

    def __init__(self, meter: Meter) -> None:
        self.clients: weakref.WeakValueDictionary[str, Telemetry] = weakref.WeakValueDictionary()
        gauges = (
            ("memsdk.breaker.state", self._breakers, "1",
             "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open."),
            ("memsdk.l1.entries", self._l1_entries, "{session}",
             "Sessions held in this client's L1."),
            ("memsdk.l1.bytes", self._l1_bytes, "By",
             "Bytes held in this client's L1 (encoded size)."),
            ("memsdk.wal.pending_records", self._wal_records, "{record}",
             "Acknowledged appends not yet confirmed in the store."),
            ("memsdk.wal.pending_bytes", self._wal_bytes, "By",
             "Bytes of acknowledged appends not yet in the store."),
            ("memsdk.wal.oldest_pending_age", self._wal_age, "s",
             "Age of the oldest acknowledged append not yet in the store."),
        )  # fmt: skip
        for name, callback, unit, description in gauges:
            meter.create_observable_gauge(name, [callback], unit=unit, description=description)
        for name, unit, description in _COUNTERS:
            meter.create_observable_counter(
                name, [self._counter(name)], unit=unit, description=description
            )

    def _counter(self, metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for client_id, telemetry in list(self.clients.items()):
                for name, attrs, value in telemetry.counts():
                    if name == metric:
                        out.append(Observation(value, {**attrs, "memsdk.client.id": client_id}))
            return out

        return observe

    def _snapshots(self) -> list[tuple[dict[str, str], TelemetrySnapshot]]:
        out = []
        for client_id, telemetry in list(self.clients.items()):
            source = telemetry.snapshot_source
            if source is None:
                continue
            try:
                out.append(({"memsdk.client.id": client_id}, source()))
            except Exception:  # a closing client must not break the collection of others
                continue
        return out

    def _breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        for attrs, snap in self._snapshots():
            for dependency, state in (("store", snap.store_breaker), ("redis", snap.redis_breaker)):
                if state in _BREAKER_LEVEL:
                    yield Observation(
                        _BREAKER_LEVEL[state], {**attrs, "memsdk.dependency": dependency}
                    )

    def _l1_entries(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.l1_entries, a) for a, s in self._snapshots()]

    def _l1_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.l1_bytes, a) for a, s in self._snapshots()]

    def _wal_records(self, options: CallbackOptions) -> Iterable[Observation]:
        return _present([(a, s.wal_pending_records) for a, s in self._snapshots()])

    def _wal_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return _present([(a, s.wal_pending_bytes) for a, s in self._snapshots()])

    def _wal_age(self, options: CallbackOptions) -> Iterable[Observation]:
        # No pending record: age 0, so a dashboard shows a flat line rather than a gap.
        return [
            Observation(s.wal_oldest_pending_age_s or 0.0, a)
            for a, s in self._snapshots()
            if s.wal_pending_records is not None
        ]


def _present(values: Sequence[tuple[dict[str, str], int | None]]) -> list[Observation]:
    return [Observation(v, a) for a, v in values if v is not None]


_INSTRUMENTS: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_for(meter: Meter) -> _Instruments:
    instruments = _INSTRUMENTS.get(meter)
    if instruments is None:
        instruments = _INSTRUMENTS[meter] = _Instruments(meter)
    return instruments
