"""Wall-clock time, injected: tests move it to expire sessions and order turn ids."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock time in epoch milliseconds; injected so tests control TTL and turn ids."""

    def time_ms(self) -> int:
        """Return the current epoch time in milliseconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def time_ms(self) -> int:
        """Return time.time_ns() in milliseconds."""
        return time.time_ns() // 1_000_000
