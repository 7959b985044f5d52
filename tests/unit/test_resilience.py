"""Unit tests of the resilience primitives: circuit breaker, retry budget, bulkhead.

Timers are never waited out: the breaker and the budget take a fake clock, and the bulkhead
tests only yield to the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsdk.errors import BackpressureError, ConfigError
from memsdk.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from memsdk.resilience.budget import RetryBudget
from memsdk.resilience.bulkhead import Bulkhead, BulkheadFullError


class Clock:
    """Monotonic seconds that only move on advance(); starts away from zero like the real one."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


POLICY = BreakerPolicy(
    window_s=10.0,
    min_calls=50,
    failure_rate=0.5,
    slow_call_s=0.25,
    slow_rate=0.8,
    open_s=5.0,
    max_open_s=12.0,
    half_open_probes=3,
    consecutive_failures=1_000,  # these tests judge the rate rule; the run rule has its own
)


def make_breaker(
    policy: BreakerPolicy = POLICY, **kwargs: Any
) -> tuple[CircuitBreaker, Clock, list[tuple[str, BreakerState, BreakerState]]]:
    clock = Clock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    kwargs.setdefault("on_change", lambda *change: changes.append(change))
    return CircuitBreaker("dep", policy, clock=clock, **kwargs), clock, changes


def feed(
    breaker: CircuitBreaker, *, ok: int = 0, failed: int = 0, duration_s: float = 0.01
) -> None:
    """Run `ok` successes then `failed` failures through the breaker."""
    for _ in range(ok):
        assert breaker.try_acquire()
        breaker.record_success(duration_s)
    for _ in range(failed):
        assert breaker.try_acquire()
        breaker.record_failure(duration_s)


def trip(breaker: CircuitBreaker) -> None:
    feed(breaker, failed=breaker.policy.min_calls)
    assert breaker.state == "open"


# -- circuit breaker: closed --------------------------------------------------------------


def test_breaker_stays_closed_below_min_calls_even_at_100_percent_failures() -> None:
    breaker, _, changes = make_breaker()
    feed(breaker, failed=49)
    stats = breaker.stats()
    assert (stats.state, stats.calls_in_window, stats.failures_in_window) == ("closed", 49, 49)
    assert changes == []


@pytest.mark.parametrize(("failures", "state"), [(24, "closed"), (25, "open")])
def test_breaker_opens_at_the_failure_rate_exactly(failures: int, state: str) -> None:
    breaker, _, _ = make_breaker()
    # Successes first, so the 50th call is the first one with a verdict.
    feed(breaker, ok=50 - failures, failed=failures)
    assert breaker.state == state


def test_breaker_rate_uses_exact_fractions() -> None:
    # 0.1 * 30 == 3.0000000000000004 in floats: 3 failures of 30 must still open.
    policy = BreakerPolicy(min_calls=30, failure_rate=0.1)
    breaker, _, _ = make_breaker(policy)
    feed(breaker, ok=27, failed=3)
    assert breaker.state == "open"


@pytest.mark.parametrize(("slow", "state"), [(39, "closed"), (40, "open")])
def test_breaker_opens_at_the_slow_call_rate(slow: int, state: str) -> None:
    breaker, _, _ = make_breaker()
    feed(breaker, ok=50 - slow, duration_s=0.25)  # exactly slow_call_s is not slow
    feed(breaker, ok=slow, duration_s=0.2501)
    stats = breaker.stats()
    assert (stats.state, stats.slow_in_window, stats.failures_in_window) == (state, slow, 0)


def test_slow_failures_count_as_failures_and_as_slow() -> None:
    breaker, _, _ = make_breaker()
    feed(breaker, failed=3, duration_s=1.0)
    stats = breaker.stats()
    assert (stats.calls_in_window, stats.failures_in_window, stats.slow_in_window) == (3, 3, 3)


def test_breaker_forgets_outcomes_older_than_the_window() -> None:
    breaker, clock, _ = make_breaker()
    feed(breaker, failed=49)
    clock.advance(11.0)
    feed(breaker, failed=1)
    stats = breaker.stats()
    assert (stats.state, stats.calls_in_window) == ("closed", 1)


def test_breaker_counts_outcomes_inside_the_window() -> None:
    breaker, clock, _ = make_breaker()
    feed(breaker, failed=30)
    clock.advance(8.0)
    feed(breaker, failed=19)
    assert breaker.stats().calls_in_window == 49
    feed(breaker, failed=1)
    assert breaker.state == "open"


def test_breaker_window_slides_one_bucket_at_a_time() -> None:
    breaker, clock, _ = make_breaker()
    for _ in range(10):
        feed(breaker, ok=1)
        clock.advance(1.0)
    # Ten buckets of one second: the oldest call has just aged out.
    assert breaker.stats().calls_in_window == 9
    clock.advance(4.5)
    assert breaker.stats().calls_in_window == 5
    assert breaker.stats().failures_in_window == 0


def test_neutral_results_count_nothing_while_closed() -> None:
    breaker, _, _ = make_breaker()
    for _ in range(100):
        assert breaker.try_acquire()
        breaker.record_neutral()
    assert breaker.stats().calls_in_window == 0


# -- circuit breaker: open and half-open --------------------------------------------------


def test_open_rejects_and_counts_until_the_open_period_ends() -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    opened_at = clock.now
    assert breaker.stats().last_change_s == opened_at
    for _ in range(7):
        assert not breaker.try_acquire()
    clock.advance(4.999)
    assert not breaker.try_acquire()
    assert breaker.stats().rejected == 8
    assert breaker.state == "open"
    clock.advance(0.001)
    assert breaker.state == "half_open"
    assert breaker.stats().last_change_s == opened_at + 5.0


def test_retry_after_is_the_rest_of_the_open_period() -> None:
    breaker, clock, _ = make_breaker()
    assert breaker.retry_after_s() == 0.0  # closed
    trip(breaker)
    assert breaker.retry_after_s() == pytest.approx(5.0)
    clock.advance(3.5)
    assert breaker.retry_after_s() == pytest.approx(1.5)
    clock.advance(1.5)
    assert breaker.retry_after_s() == 0.0 and breaker.state == "half_open"


def test_results_arriving_while_open_are_dropped() -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    breaker.record_success(0.01)  # calls admitted before the trip, finishing late
    breaker.record_failure(0.01)
    breaker.record_neutral()
    clock.advance(5.0)
    breaker.record_failure(0.01)  # half_open, but no probe outstanding: not a verdict
    assert breaker.state == "half_open"
    assert [breaker.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_half_open_admits_exactly_the_probe_count_and_closes_after_that_many_successes() -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    clock.advance(5.0)
    assert [breaker.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.stats().rejected == 2
    breaker.record_success(0.01)
    breaker.record_success(9.0)  # slow, but a success: keep it simple
    assert breaker.state == "half_open"
    assert not breaker.try_acquire()  # two succeeded, one still out: no fourth probe
    breaker.record_success(0.01)
    stats = breaker.stats()
    assert (stats.state, stats.calls_in_window, stats.last_change_s) == ("closed", 0, clock.now)


def test_probe_failure_reopens_with_doubled_period_capped_at_max_open() -> None:
    breaker, clock, _ = make_breaker()  # open_s=5, max_open_s=12
    trip(breaker)
    periods = []
    for _ in range(5):
        opened_at = breaker.stats().last_change_s
        while not breaker.try_acquire():
            clock.advance(0.25)
        periods.append(clock.now - opened_at)
        breaker.record_failure(0.01)
    assert periods == [5.0, 10.0, 12.0, 12.0, 12.0]


def test_open_period_resets_after_a_clean_close() -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.try_acquire()
    breaker.record_failure(0.01)  # re-open for 10 s
    clock.advance(10.0)
    feed(breaker, ok=3)
    assert breaker.state == "closed"
    trip(breaker)
    clock.advance(4.999)
    assert breaker.state == "open"
    clock.advance(0.001)
    assert breaker.state == "half_open"


def test_neutral_frees_a_probe_slot_without_counting_towards_closing() -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    clock.advance(5.0)
    assert [breaker.try_acquire() for _ in range(4)] == [True, True, True, False]
    breaker.record_neutral()
    assert breaker.try_acquire()
    breaker.record_success(0.01)
    breaker.record_success(0.01)
    breaker.record_neutral()
    assert breaker.state == "half_open"
    assert breaker.try_acquire()
    breaker.record_success(0.01)
    assert breaker.state == "closed"


def test_on_change_sees_every_transition_in_order() -> None:
    breaker, clock, changes = make_breaker()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.try_acquire()
    breaker.record_failure(0.01)
    clock.advance(10.0)
    feed(breaker, ok=3)
    trip(breaker)
    breaker.reset()
    assert changes == [
        ("dep", "closed", "open"),
        ("dep", "open", "half_open"),
        ("dep", "half_open", "open"),
        ("dep", "open", "half_open"),
        ("dep", "half_open", "closed"),
        ("dep", "closed", "open"),
        ("dep", "open", "closed"),
    ]
    assert breaker.stats().opened == 3


def test_a_raising_on_change_is_logged_and_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics backend down")

    breaker, clock, _ = make_breaker(on_change=broken)
    with caplog.at_level(logging.ERROR, logger="memsdk.resilience.breaker"):
        trip(breaker)
        assert not breaker.try_acquire()
        clock.advance(5.0)
        feed(breaker, ok=3)
    assert breaker.state == "closed"
    assert [r.getMessage() for r in caplog.records] == [
        "on_change callback of circuit breaker 'dep' raised on closed -> open",
        "on_change callback of circuit breaker 'dep' raised on open -> half_open",
        "on_change callback of circuit breaker 'dep' raised on half_open -> closed",
    ]
    assert all(r.exc_info is not None for r in caplog.records)


def test_reset_closes_clears_the_window_and_keeps_totals() -> None:
    breaker, _, _ = make_breaker()
    trip(breaker)
    assert not breaker.try_acquire()
    breaker.reset()
    stats = breaker.stats()
    assert (stats.state, stats.calls_in_window, stats.rejected, stats.opened) == ("closed", 0, 1, 1)
    feed(breaker, ok=10)
    assert breaker.stats().calls_in_window == 10


def test_a_run_of_failures_opens_before_the_rate_could() -> None:
    # A hard outage after a healthy spell: 100 successes fill the window, so the rate rule
    # would need 100 more failures; the run rule opens on the 20th failure in a row.
    breaker, _, changes = make_breaker(dataclasses.replace(POLICY, consecutive_failures=20))
    feed(breaker, ok=100, failed=19)
    assert breaker.state == "closed"
    feed(breaker, failed=1)
    assert breaker.state == "open" and changes == [("dep", "closed", "open")]


def test_a_success_or_a_close_ends_the_run_and_neutral_does_not() -> None:
    breaker, clock, _ = make_breaker(dataclasses.replace(POLICY, consecutive_failures=5))
    feed(breaker, ok=100, failed=4)
    feed(breaker, ok=1)
    feed(breaker, failed=4)  # 4 + 1 success + 4: no run of 5
    assert breaker.state == "closed"
    assert breaker.try_acquire()
    breaker.record_neutral()  # a throttle says nothing: the run goes on
    feed(breaker, failed=1)
    assert breaker.state == "open"
    # After a clean close the run starts from zero again.
    clock.advance(POLICY.open_s)
    for _ in range(POLICY.half_open_probes):
        assert breaker.try_acquire()
        breaker.record_success(0.01)
    assert breaker.state == "closed"
    feed(breaker, ok=100, failed=4)
    assert breaker.state == "closed"


def test_timeouts_are_slow_calls_not_a_run_of_failures() -> None:
    # A cold start: the first 30 calls all time out together (new connections). That is
    # not an outage: the run rule ignores timeouts, the slow-call rate needs min_calls.
    breaker, _, _ = make_breaker(dataclasses.replace(POLICY, consecutive_failures=20))
    for _ in range(30):
        assert breaker.try_acquire()
        breaker.record_timeout(0.3)
    assert breaker.state == "closed"
    assert breaker.stats().slow_in_window == 30 and breaker.stats().failures_in_window == 0
    # Timeouts neither end nor extend a run of real failures.
    feed(breaker, failed=19)
    assert breaker.try_acquire()
    breaker.record_timeout(0.3)
    assert breaker.state == "closed"
    feed(breaker, failed=1)
    assert breaker.state == "open"


def test_a_probe_that_times_out_reopens() -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    clock.advance(POLICY.open_s)
    assert breaker.try_acquire()
    breaker.record_timeout(1.0)
    assert breaker.state == "open"


def test_the_run_is_not_timed() -> None:
    # Twenty failures in a row are an outage even at one call a minute.
    breaker, clock, _ = make_breaker(dataclasses.replace(POLICY, consecutive_failures=20))
    for _ in range(19):
        feed(breaker, failed=1)
        clock.advance(60.0)
    assert breaker.state == "closed"
    feed(breaker, failed=1)
    assert breaker.state == "open"


def test_default_policy_matches_the_proposed_defaults() -> None:
    assert BreakerPolicy() == BreakerPolicy(
        window_s=10.0,
        min_calls=50,
        failure_rate=0.5,
        slow_call_s=0.25,
        slow_rate=0.8,
        open_s=5.0,
        max_open_s=15.0,
        half_open_probes=3,
        consecutive_failures=20,
    )
    assert BreakerPolicy(slow_call_s=float("inf")).slow_call_s == float("inf")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window_s", 0),
        ("window_s", -1.0),
        ("window_s", float("inf")),
        ("window_s", float("nan")),
        ("min_calls", 0),
        ("min_calls", 2.5),
        ("min_calls", True),
        ("failure_rate", 0.0),
        ("failure_rate", 1.01),
        ("failure_rate", float("nan")),
        ("slow_call_s", 0.0),
        ("slow_call_s", float("nan")),
        ("slow_rate", 0.0),
        ("slow_rate", 2.0),
        ("open_s", 0.0),
        ("max_open_s", 1.0),  # below open_s
        ("max_open_s", float("inf")),
        ("half_open_probes", 0),
        ("half_open_probes", "3"),
        ("consecutive_failures", 0),
        ("consecutive_failures", 2.0),
    ],
)
def test_policy_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        BreakerPolicy(**{field: value})


# -- retry budget -------------------------------------------------------------------------


def test_budget_refuses_nothing_at_a_normal_retry_rate() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, clock=clock)
    for second in range(60):
        for call in range(100):
            budget.record_call()
            if second > 0 and call % 20 == 0:  # 5 % of calls retried once
                assert budget.try_spend()
        clock.advance(1.0)
    stats = budget.stats()
    assert (stats.calls, stats.retries, stats.refused) == (6000, 295, 0)


def test_budget_caps_retries_under_total_failure() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_s=10.0, window_s=10.0, clock=clock)
    retried: list[int] = []  # retries granted per quarter second
    for _ in range(240):  # 60 s at 100 calls/s, and every call wants a retry
        granted = 0
        for _ in range(25):
            budget.record_call()
            granted += budget.try_spend()
        retried.append(granted)
        clock.advance(0.25)
    stats = budget.stats()
    # Over every 10 s window: at most 10 % of its 1,000 calls plus the 100-token reserve.
    windows = [sum(retried[start : start + 40]) for start in range(len(retried) - 40 + 1)]
    assert max(windows) <= 0.1 * 1000 + 10.0 * 10.0
    # Over the run: 10 % of the calls plus 10/s, no more, and not much less either.
    assert 0.9 * 1200 <= stats.retries <= 0.1 * stats.calls + 10.0 * 60
    assert stats.refused == stats.calls - stats.retries


def test_budget_reserve_lets_a_trickle_of_low_traffic_retries_through() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_s=10.0, clock=clock)
    for _ in range(120):  # 2 calls/s for 60 s, each retried 5 times: 10 retries/s
        for _ in range(2):
            budget.record_call()
            assert all(budget.try_spend() for _ in range(5))
        clock.advance(1.0)
    assert budget.stats().refused == 0
    # Without the reserve, the same traffic may only retry 10 % of it.
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, clock=clock)
    for _ in range(10):
        budget.record_call()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_budget_stats_and_token_expiry() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_s=1.0, window_s=10.0, clock=clock)
    assert budget.stats().balance == 10.0
    for _ in range(4):
        budget.record_call()
    assert budget.stats().balance == 12.0
    assert all(budget.try_spend() for _ in range(12))
    assert not budget.try_spend()
    stats = budget.stats()
    assert (stats.calls, stats.retries, stats.refused, stats.balance) == (4, 12, 1, 0.0)
    clock.advance(9.0)
    assert not budget.try_spend()
    clock.advance(1.0)  # deposits and withdrawals have both aged out
    assert budget.stats().balance == 10.0
    assert budget.try_spend()


def test_budget_forgives_float_rounding_of_the_ratio() -> None:
    # 0.29 * 100 == 28.999999999999996: the 29th retry is still within the budget.
    budget = RetryBudget(ratio=0.29, min_per_s=0.0, clock=Clock())
    for _ in range(100):
        budget.record_call()
    assert sum(budget.try_spend() for _ in range(30)) == 29


@pytest.mark.parametrize(
    "kwargs",
    [{"ratio": -0.1}, {"ratio": float("nan")}, {"min_per_s": -1.0}, {"window_s": 0.0}],
)
def test_budget_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        RetryBudget(**kwargs)


# Each step: a call, a retry attempt, or a clock advance (in quarters of a second, so float
# sums stay exact and bucket edges are hit on the nose).
budget_steps = st.lists(
    st.one_of(
        st.just("call"),
        st.just("retry"),
        st.integers(min_value=1, max_value=60).map(lambda quarters: quarters / 4),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
    min_per_s=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
    steps=budget_steps,
)
def test_budget_never_exceeds_ratio_plus_reserve_over_any_window(
    ratio: float, min_per_s: float, steps: list[str | float]
) -> None:
    window, bucket = 10.0, 1.0
    clock = Clock()
    budget = RetryBudget(ratio=ratio, min_per_s=min_per_s, window_s=window, clock=clock)
    calls: list[float] = []
    retries: list[float] = []
    for step in steps:
        if step == "call":
            budget.record_call()
            calls.append(clock.now)
        elif step == "retry":
            if budget.try_spend():
                retries.append(clock.now)
        else:
            assert isinstance(step, float)
            clock.advance(step)
    # A token lives between window - bucket and window seconds, so: the retries of any
    # span of window - bucket seconds ending at a retry are covered by the calls of the
    # window ending there, plus the reserve.
    for t in retries:
        spent = sum(1 for r in retries if t - (window - bucket) <= r <= t)
        deposits = ratio * sum(1 for c in calls if t - window < c <= t)
        assert spent <= deposits + min_per_s * window + 1e-9
    stats = budget.stats()
    assert (stats.calls, stats.retries) == (len(calls), len(retries))
    assert stats.refused == steps.count("retry") - len(retries)


# -- bulkhead -----------------------------------------------------------------------------


async def finish(*tasks: asyncio.Future[Any], return_exceptions: bool = False) -> list[Any]:
    """Gather `tasks`; a leaked slot makes them hang, so fail after a minute instead (they
    need a few loop turns: no stall of a busy machine comes near it)."""
    async with asyncio.timeout(60):
        return await asyncio.gather(*tasks, return_exceptions=return_exceptions)


async def test_bulkhead_never_exceeds_its_limit() -> None:
    bulkhead = Bulkhead(5)
    running = peak = 0

    async def call() -> None:
        nonlocal running, peak
        async with bulkhead.slot():
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await asyncio.sleep(0)
            running -= 1

    await finish(*(asyncio.ensure_future(call()) for _ in range(50)))
    stats = bulkhead.stats()
    assert peak == 5
    assert (stats.in_flight, stats.waiting, stats.peak_in_flight, stats.rejected) == (0, 0, 5, 0)


async def test_bulkhead_serves_waiters_first_in_first_out() -> None:
    bulkhead = Bulkhead(1)
    order: list[int] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with bulkhead.slot():
            await gate.wait()

    async def call(n: int) -> None:
        async with bulkhead.slot():
            order.append(n)
            await asyncio.sleep(0)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(call(n)) for n in range(10)]
    await asyncio.sleep(0)
    assert bulkhead.stats().waiting == 10
    gate.set()
    await first
    # A newcomer after the release must queue behind the ten, not take the freed slot.
    tasks.append(asyncio.create_task(call(10)))
    await finish(*tasks)
    assert order == list(range(11))


async def test_bulkhead_cancelled_waiter_leaves_no_trace() -> None:
    bulkhead = Bulkhead(1)
    ran: list[str] = []
    held = bulkhead.slot()
    await held.__aenter__()

    async def call(name: str) -> None:
        async with bulkhead.slot():
            ran.append(name)

    a, b, c = (asyncio.create_task(call(n)) for n in "abc")
    await asyncio.sleep(0)
    b.cancel()
    await asyncio.sleep(0)
    assert bulkhead.stats().waiting == 2
    await held.__aexit__(None, None, None)
    await finish(a, c)
    assert b.cancelled()
    assert ran == ["a", "c"]
    assert (bulkhead.stats().in_flight, bulkhead.stats().waiting) == (0, 0)


async def test_bulkhead_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    bulkhead = Bulkhead(1)
    ran: list[str] = []
    held = bulkhead.slot()
    await held.__aenter__()

    async def call(name: str) -> None:
        async with bulkhead.slot():
            ran.append(name)

    a, b = asyncio.create_task(call("a")), asyncio.create_task(call("b"))
    await asyncio.sleep(0)
    await held.__aexit__(None, None, None)  # hands the slot to a ...
    a.cancel()  # ... which is cancelled before it runs
    results = await finish(a, b, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert ran == ["b"]
    assert (bulkhead.stats().in_flight, bulkhead.stats().waiting) == (0, 0)
    async with bulkhead.slot():  # and the slot is really free
        assert bulkhead.stats().in_flight == 1


async def test_bulkhead_skips_a_waiter_cancelled_in_the_same_loop_turn() -> None:
    bulkhead = Bulkhead(1)
    ran: list[str] = []
    held = bulkhead.slot()
    await held.__aenter__()

    async def call(name: str) -> None:
        async with bulkhead.slot():
            ran.append(name)

    a, b = asyncio.create_task(call("a")), asyncio.create_task(call("b"))
    await asyncio.sleep(0)
    a.cancel()  # a's future is cancelled now, its cleanup only runs on a later turn
    await held.__aexit__(None, None, None)
    results = await finish(a, b, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert ran == ["b"]
    assert (bulkhead.stats().in_flight, bulkhead.stats().waiting) == (0, 0)


async def test_bulkhead_sheds_beyond_max_waiting() -> None:
    bulkhead = Bulkhead(1, max_waiting=2)
    held = bulkhead.slot()
    await held.__aenter__()
    waiters = [asyncio.create_task(bulkhead.slot().__aenter__()) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError, match="bulkhead full") as info:
        # Shedding never waits; the 5 s deadline only turns a regression into a failure.
        async with asyncio.timeout(5), bulkhead.slot():
            pass
    assert isinstance(info.value, BackpressureError)
    assert bulkhead.stats().rejected == 1
    await held.__aexit__(None, None, None)
    for waiter in waiters:
        await finish(waiter)
        await bulkhead.slot().__aexit__(None, None, None)
    assert bulkhead.stats().in_flight == 0

    no_queue = Bulkhead(1, max_waiting=0)
    async with no_queue.slot():
        with pytest.raises(BulkheadFullError):
            async with asyncio.timeout(5):
                await no_queue.slot().__aenter__()


async def test_bulkhead_wait_counts_against_the_callers_deadline() -> None:
    bulkhead = Bulkhead(1)
    held = bulkhead.slot()
    await held.__aenter__()
    entered = False
    # An already-expired deadline: the wait is cancelled on the next loop turn, no sleeping.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0), bulkhead.slot():
            entered = True
    assert not entered
    assert (bulkhead.stats().in_flight, bulkhead.stats().waiting) == (1, 0)
    await held.__aexit__(None, None, None)
    assert bulkhead.stats().in_flight == 0


async def test_bulkhead_releases_when_the_body_raises() -> None:
    bulkhead = Bulkhead(2)
    with pytest.raises(ValueError, match="boom"):
        async with bulkhead.slot():
            raise ValueError("boom")
    assert bulkhead.stats().in_flight == 0


@pytest.mark.parametrize(
    ("limit", "max_waiting"), [(0, None), (-1, None), (1.5, None), (True, None), (1, -1)]
)
def test_bulkhead_validation(limit: Any, max_waiting: Any) -> None:
    with pytest.raises(ConfigError):
        Bulkhead(limit, max_waiting=max_waiting)
