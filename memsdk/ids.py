"""Turn ids: sortable as strings, unique without coordination, monotonic per session.

Format (25 chars): 13-digit epoch milliseconds, 4 hex digits of logical counter, 8 hex
digits of node id. Plain string order is time order. The node id (random per generator)
makes two processes that pick the same millisecond and counter still produce different ids.

The generator is a hybrid logical clock: it never issues an id <= the newest id it has
issued, nor <= the `after` bound the caller passes (the newest id seen for the session), so
a turn sorts after the context it answered even when the wall clocks of the writers differ.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

__all__ = ["TURN_ID_PATTERN", "TurnIdGenerator", "is_turn_id", "turn_id_ms"]

TURN_ID_PATTERN = re.compile(r"\d{13}[0-9a-f]{4}[0-9a-f]{8}")
_MAX_LOGICAL = 0xFFFF


def is_turn_id(value: object) -> bool:
    """True when `value` is a well-formed turn id."""
    return isinstance(value, str) and TURN_ID_PATTERN.fullmatch(value) is not None


def turn_id_ms(turn_id: str) -> int:
    """The millisecond part of a turn id."""
    return int(turn_id[:13])


class TurnIdGenerator:
    """Issues strictly increasing turn ids from a wall clock in milliseconds."""

    def __init__(self, clock_ms: Callable[[], int], *, node: str | None = None) -> None:
        self._clock_ms = clock_ms
        self._node = node if node is not None else secrets.token_hex(4)
        if not re.fullmatch(r"[0-9a-f]{8}", self._node):
            raise ValueError("node must be 8 lowercase hex digits")
        self._last_ms = 0
        self._last_logical = -1

    def next_ids(self, count: int, *, after: str | None = None) -> list[str]:
        """Return `count` increasing ids, all greater than `after` and than any issued before."""
        ms, logical = self._last_ms, self._last_logical
        if after:
            after_ms, after_logical = int(after[:13]), int(after[13:17], 16)
            # Equal (ms, logical) with a smaller node would sort below `after`: step past it.
            if (after_ms, after_logical) >= (ms, logical):
                ms, logical = after_ms, after_logical
        wall = self._clock_ms()
        ids: list[str] = []
        for _ in range(count):
            if wall > ms:
                ms, logical = wall, 0
            else:
                logical += 1
                if logical > _MAX_LOGICAL:
                    ms, logical = ms + 1, 0
            ids.append(f"{ms:013d}{logical:04x}{self._node}")
        self._last_ms, self._last_logical = ms, logical
        return ids
