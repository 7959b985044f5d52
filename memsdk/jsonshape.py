"""How deep a JSON value nests: the one limit every tier checks values against.

memsdk refuses values nested deeper than MAX_DEPTH on the way in (memsdk.session), so a
deeper value read back from Redis, a store or the WAL was not written by memsdk: each tier
treats it as its ordinary failure (a miss, a StoreError, rejected/) rather than let it
reach code that walks values recursively.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_DEPTH", "within_depth"]

MAX_DEPTH = 32


def within_depth(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if no dict or list in `value` nests deeper than `limit` levels (iterative: any
    depth is safe to ask about)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True
