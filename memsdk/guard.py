"""A Store behind a circuit breaker and a bulkhead: fail fast while the store is down.

This is where the resilience primitives (memsdk.resilience, which know nothing of stores)
meet the Store protocol (memsdk.store.base, which knows nothing of breakers). Every store
call first asks the breaker; a refused call raises StoreUnavailableError at once, nothing
sent, so a dead store costs microseconds instead of a timeout per call. Admitted calls wait
for a bulkhead slot (the wait counts against the caller's own deadline) and report their
outcome and duration to the breaker:

- StoreUnavailableError (connection, timeout, 5xx after the data path's retries): failure;
  but a throttle is about one hot key or the table's capacity, not the store's health:
  neutral, so one hot session cannot open a table-wide breaker;
- the caller's deadline cancelling a call that was already slow: a timeout (a slow call,
  not a failure: the first calls of a cold process may all wait on new connections at
  once); cancelled early: neutral;
- StoreError other than unavailability (validation, auth, a missing table): neutral; a
  breaker cannot fix a deployment error and must not hide it behind "unavailable";
- anything returned: success, slow if it took longer than the policy's slow_call_s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.resilience.breaker import CircuitBreaker
from memsdk.resilience.budget import RetryBudget
from memsdk.resilience.bulkhead import Bulkhead, BulkheadFullError
from memsdk.store.base import Store
from memsdk.store.wrapper import StoreCall, StoreWrapper

__all__ = ["GuardedStore", "RetryGateWhileClosed"]

T = TypeVar("T")


class GuardedStore(StoreWrapper):
    """Wraps a Store with a circuit breaker and a bound on calls in flight."""

    def __init__(
        self,
        inner: Store,
        breaker: CircuitBreaker,
        bulkhead: Bulkhead,
        *,
        slow_call_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        on_shed: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_shed` is told of each call the bulkhead refused (a full queue)."""
        super().__init__(inner)
        self._on_shed = on_shed
        self.breaker = breaker
        self.bulkhead = bulkhead
        self._slow_call_s = slow_call_s
        self._monotonic = monotonic

    async def around(self, call: StoreCall[T]) -> T:
        """The wrapped call, guarded: refused while the breaker is open, else in a slot."""
        session_id = call.session_id
        breaker = self.breaker
        if not breaker.try_acquire():
            raise StoreUnavailableError(
                "the store's circuit breaker is open after repeated failures: the call was "
                "not sent; memsdk probes the store again on its own, retry later",
                session_id=session_id,
                retry_after=breaker.retry_after_s(),
            )
        # Measured from the slot: time queued in our own bulkhead is not the store's slowness.
        started = float("inf")
        try:
            async with self.bulkhead.slot():
                started = self._monotonic()
                result = await call.run()
        except StoreUnavailableError as exc:
            if exc.throttled:
                breaker.record_neutral()
            else:
                breaker.record_failure(self._monotonic() - started)
            raise
        except BulkheadFullError:
            breaker.record_neutral()
            self._on_shed()
            raise StoreUnavailableError(
                "too many store calls are in flight or waiting in this process: the call "
                "was not sent; shed load or retry later",
                session_id=session_id,
            ) from None
        except asyncio.CancelledError:
            elapsed = self._monotonic() - started  # -inf while still waiting for a slot
            if elapsed >= self._slow_call_s:
                breaker.record_timeout(elapsed)
            else:
                breaker.record_neutral()
            raise
        except StoreError:
            breaker.record_neutral()  # validation, auth, a missing table: not its health
            raise
        except Exception as exc:
            # A store that broke its contract (a user-supplied Store, or a bug): its text
            # may hold anything, so it stays in the chain, out of the message.
            breaker.record_neutral()
            raise StoreError(
                f"the store raised {type(exc).__name__}, which the Store protocol does not "
                "allow: this is a bug in the store implementation; report it",
                session_id=session_id,
            ) from exc
        except BaseException:
            breaker.record_neutral()  # KeyboardInterrupt and the like: not the store's fault
            raise
        breaker.record_success(self._monotonic() - started)
        return result


class RetryGateWhileClosed:
    """The data path's retry gate: a budget token, and only while the breaker is closed.

    A half-open probe is one question to the store ("are you back?"): retrying it only
    makes the answer slower and the load higher. While closed, the budget keeps retries a
    small share of the calls.
    """

    def __init__(
        self,
        budget: RetryBudget,
        breaker: CircuitBreaker,
        on_retry: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        """`on_retry` hears every decision: sent, refused_breaker or refused_budget."""
        self.budget = budget
        self.breaker = breaker
        self._on_retry = on_retry

    def record_call(self) -> None:
        """A first attempt is being made."""
        self.budget.record_call()

    def try_spend(self) -> bool:
        """True when the breaker is closed and the budget has a token for one retry."""
        if self.breaker.state != "closed":
            self._on_retry("refused_breaker")
            return False
        if not self.budget.try_spend():
            self._on_retry("refused_budget")
            return False
        self._on_retry("sent")
        return True
