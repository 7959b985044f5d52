"""Rate-limited log lines: an outage must cost a few lines a minute, not one per call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs at most one line per key per `interval_s`; the next says how many were dropped."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Write to `logger`; `clock` is monotonic seconds (injected by tests)."""
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(
        self,
        level: int,
        key: str,
        message: str,
        *args: object,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Log `message % args` unless `key` logged within the interval; True if logged.

        `extra` gets `suppressed` (lines of this key dropped since the last one) added, so
        structured log pipelines can count what the text no longer shows.
        """
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        fields = {**(extra or {}), "suppressed": suppressed}
        if suppressed:
            message += " (%d similar suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args, extra=fields)
        return True
