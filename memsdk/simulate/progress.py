"""A progress bar on stderr: redrawn in place on a terminal, a plain line now and then if not.

No dependency: one line of text, `\\r` and an erase-to-end-of-line on a TTY; on a pipe or a
CI log a full line every few seconds, so logs stay readable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Progress", "ProgressLogHandler", "ProgressStatus", "render_status"]

_BAR_WIDTH = 20


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    """What the bar shows."""

    phase: str  # "seeding", "load", "flush", "verify"
    done: float  # seconds elapsed, or items done
    total: float  # seconds planned, or items in all
    messages_per_s: float = 0.0
    errors: int = 0
    degraded: int = 0
    wal_pending: int = 0
    chaos: str = "off"


def render_status(status: ProgressStatus) -> str:
    """The status as one line of text (no control characters)."""
    fraction = 0.0 if status.total <= 0 else min(1.0, max(0.0, status.done / status.total))
    filled = round(fraction * _BAR_WIDTH)
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    if status.phase == "load":
        where = f"{status.done:5.1f}/{status.total:.0f}s"
        return (
            f"[{bar}] {where}  {status.messages_per_s:6.1f} msg/s  errors {status.errors}  "
            f"degraded {status.degraded}  WAL {status.wal_pending}  chaos: {status.chaos}"
        )
    return f"[{bar}] {status.phase} {status.done:.0f}/{status.total:.0f}"


class Progress:
    """Draws statuses on `stream`: in place on a TTY (at most every `interval_s`), else a
    line every `line_interval_s` and at each phase change."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval_s: float = 0.2,
        line_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval = interval_s if self._tty else line_interval_s
        self._clock = clock
        self._last_draw: float | None = None
        self._last_phase: str | None = None
        self._last_line = ""
        self._drawn = False

    def update(self, status: ProgressStatus, *, force: bool = False) -> None:
        """Show `status` if it is time to (always on a phase change or with force)."""
        now = self._clock()
        changed = status.phase != self._last_phase
        due = self._last_draw is None or now - self._last_draw >= self._interval
        if not (force or changed or due):
            return
        if changed and self._tty and self._drawn:
            self._stream.write("\n")  # keep the finished phase's last state on screen
        self._last_phase = status.phase
        self._last_draw = now
        line = self._last_line = render_status(status)
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._drawn = True

    def message(self, text: str) -> None:
        """Print a line of text above the bar without garbling it (the bar is redrawn)."""
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K" + text + "\n\r" + self._last_line + "\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self, status: ProgressStatus | None = None) -> None:
        """Draw a last status (if given) and end the line."""
        if status is not None:
            self.update(status, force=True)
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
        self._drawn = False


class ProgressLogHandler(logging.Handler):
    """Shows log records (memsdk's warnings: degraded reads, breakers) above the bar."""

    def __init__(self, progress: Progress, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and print it through the progress bar."""
        try:
            self._progress.message(self.format(record))
        except Exception:
            self.handleError(record)
