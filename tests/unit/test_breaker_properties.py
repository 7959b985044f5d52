"""Hypothesis state machine over the circuit breaker: random calls, outcomes and clock jumps.

The model follows the breaker through its on_change callback and checks it against the
promises of memsdk.resilience.breaker: when it may open, how long it stays open, how many
probes it lets through, and that it always comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from memsdk.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker

BUCKETS = 10  # the breaker's window is ten buckets of window_s / 10


class Clock:
    """Monotonic seconds that only move on advance()."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Outcome:
    at: float
    failed: bool
    slow: bool
    timeout: bool = False  # given up by the caller: slow, and no verdict on the run


class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker; the model holds what its contract lets us predict."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.policy = BreakerPolicy()
        self.breaker = CircuitBreaker("prop", self.policy, clock=self.clock)
        self.state: BreakerState = "closed"
        self.outstanding = 0  # acquired calls that have not reported yet
        self.probes = 0  # half-open probes out, as the contract counts them
        self.probes_ok = 0  # probes that succeeded in this half-open spell
        self.opened_at = 0.0
        self.open_period = 0.0
        self.closed_outcomes: list[Outcome] = []  # recorded since the last close
        self.rejected = 0
        self.resetting = False

    @initialize(
        min_calls=st.integers(1, 5),
        failure_rate=st.sampled_from([0.25, 0.5, 1.0]),
        slow_rate=st.sampled_from([0.5, 0.8, 1.0]),
        open_s=st.sampled_from([0.5, 1.0, 5.0]),
        growth=st.sampled_from([1.0, 2.0, 12.0]),
        half_open_probes=st.integers(1, 3),
        consecutive_failures=st.sampled_from([1, 3, 6, 1000]),
    )
    def setup(
        self,
        min_calls: int,
        failure_rate: float,
        slow_rate: float,
        open_s: float,
        growth: float,
        half_open_probes: int,
        consecutive_failures: int,
    ) -> None:
        self.policy = BreakerPolicy(
            window_s=10.0,
            min_calls=min_calls,
            failure_rate=failure_rate,
            slow_call_s=0.25,
            slow_rate=slow_rate,
            open_s=open_s,
            max_open_s=open_s * growth,
            half_open_probes=half_open_probes,
            consecutive_failures=consecutive_failures,
        )
        self.breaker = CircuitBreaker(
            "prop", self.policy, clock=self.clock, on_change=self.on_change
        )

    def on_change(self, name: str, old: BreakerState, new: BreakerState) -> None:
        assert (name, old) == ("prop", self.state)
        assert new != old
        if new == "open":
            if old == "closed":
                # Invariant: closed never opens with fewer than min_calls in its window
                # (which lies inside the last window_s seconds), unless the newest
                # consecutive_failures outcomes all failed.
                recent = [o for o in self.closed_outcomes if o.at > self.clock.now - 10.0]
                assert (
                    len(recent) >= self.policy.min_calls
                    or self.streak() >= self.policy.consecutive_failures
                )
                self.open_period = self.policy.open_s
            else:
                self.open_period = min(self.open_period * 2, self.policy.max_open_s)
            self.opened_at = self.clock.now
        if new == "half_open":
            assert self.clock.now >= self.opened_at + self.open_period
        if old == "half_open" and new == "closed" and not self.resetting:
            # Closing takes exactly half_open_probes successes (this call's is the last).
            assert self.probes_ok == self.policy.half_open_probes - 1
        if new == "closed":
            self.closed_outcomes = []
        self.probes = self.probes_ok = 0
        self.state = new

    @rule()
    def acquire(self) -> None:
        was_open = self.state == "open"
        was_half_open = self.state == "half_open"
        room = self.probes + self.probes_ok < self.policy.half_open_probes
        ok = self.breaker.try_acquire()
        if was_half_open:
            assert ok == room
        if was_open:
            # No call goes through before the open period is over, and one always may after.
            assert ok == (self.clock.now >= self.opened_at + self.open_period)
        if self.state == "closed":
            assert ok
        if ok:
            self.outstanding += 1
            if self.state == "half_open":
                self.probes += 1
        else:
            self.rejected += 1

    def record(self, kind: str, slow: bool) -> None:
        state_before = self.breaker.state
        duration = 1.0 if slow else 0.01
        self.outstanding -= 1
        if state_before == "closed" and kind != "neutral":
            self.closed_outcomes.append(
                Outcome(self.clock.now, kind == "failure", slow, timeout=kind == "timeout")
            )
        if kind == "success":
            self.breaker.record_success(duration)
        elif kind == "failure":
            self.breaker.record_failure(duration)
        elif kind == "timeout":
            self.breaker.record_timeout(duration)
        else:
            self.breaker.record_neutral()
        if state_before == "half_open" and self.probes and self.state == "half_open":
            # A verdict-free result, or a success short of closing.
            self.probes -= 1
            self.probes_ok += kind == "success"
        if state_before == "closed" and kind != "neutral":
            self.check_verdict()

    def streak(self) -> int:
        """Failures in a row at the end of the closed-state outcomes (neutral ones skipped)."""
        count = 0
        for outcome in reversed(self.closed_outcomes):
            if outcome.timeout:
                continue
            if not outcome.failed:
                break
            count += 1
        return count

    def check_verdict(self) -> None:
        """Right after a closed-state record: open exactly when the window is over a rate."""
        per_bucket = BUCKETS / self.policy.window_s
        now_bucket = int(self.clock.now * per_bucket)
        window = [o for o in self.closed_outcomes if int(o.at * per_bucket) > now_bucket - BUCKETS]
        calls = len(window)
        failures = sum(o.failed for o in window)
        slow = sum(o.slow for o in window)
        over = self.streak() >= self.policy.consecutive_failures or (
            calls >= self.policy.min_calls
            and (
                failures / calls >= self.policy.failure_rate
                or slow / calls >= self.policy.slow_rate
            )
        )
        assert (self.state == "open") == over
        if not over:
            stats = self.breaker.stats()
            assert (stats.calls_in_window, stats.failures_in_window, stats.slow_in_window) == (
                calls,
                failures,
                slow,
            )

    @precondition(lambda self: self.outstanding > 0)
    @rule(slow=st.booleans())
    def success(self, slow: bool) -> None:
        self.record("success", slow)

    @precondition(lambda self: self.outstanding > 0)
    @rule(slow=st.booleans())
    def failure(self, slow: bool) -> None:
        self.record("failure", slow)

    @precondition(lambda self: self.outstanding > 0)
    @rule(slow=st.booleans())
    def timeout(self, slow: bool) -> None:
        self.record("timeout", slow)

    @precondition(lambda self: self.outstanding > 0)
    @rule()
    def neutral(self) -> None:
        self.record("neutral", False)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.5, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def wait_out_max_open(self) -> None:
        # Never open forever: after max_open_s an open breaker has turned half_open.
        self.clock.advance(self.policy.max_open_s)
        assert self.breaker.state != "open"
        if self.state == "half_open" and self.probes == 0:
            self.acquire()
            assert self.probes == 1

    @rule()
    def reset(self) -> None:
        self.resetting = True
        self.breaker.reset()
        self.resetting = False
        assert self.state == "closed"
        self.outstanding = 0  # results of calls from before a reset would be noise
        self.closed_outcomes = []  # a reset of a closed breaker fires no on_change

    @invariant()
    def state_is_known(self) -> None:
        assert self.breaker.state in ("closed", "open", "half_open")
        assert self.breaker.state == self.state

    @invariant()
    def probes_are_bounded(self) -> None:
        assert 0 <= self.probes <= self.policy.half_open_probes
        assert self.state == "half_open" or self.probes == 0

    @invariant()
    def open_period_is_bounded(self) -> None:
        if self.breaker.state == "open":
            assert self.policy.open_s <= self.open_period <= self.policy.max_open_s
            assert self.clock.now < self.opened_at + self.open_period

    @invariant()
    def open_lasts_exactly_its_period(self) -> None:
        if self.state == "open":
            expired = self.clock.now >= self.opened_at + self.open_period
            assert (self.breaker.state == "half_open") == expired

    @invariant()
    def rejections_are_counted(self) -> None:
        assert self.breaker.stats().rejected == self.rejected


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase
