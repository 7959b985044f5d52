"""How deep a JSON value nests: the one limit every tier checks values against.

memsdk refuses values nested deeper than MAX_DEPTH on the way in (memsdk.session), so a
deeper value read back from Redis, a store or the WAL was not written by memsdk: each tier
treats it as its ordinary failure (a miss, a StoreError, rejected/) rather than let it
reach code that walks values recursively.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_DEPTH", "too_few_brackets_to_nest", "within_depth"]

MAX_DEPTH = 32


def within_depth(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if no dict or list in `value` nests deeper than `limit` levels (any depth is
    safe to ask about: the recursion stops at `limit`)."""
    children: Iterable[Any]
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return True
    if limit < 0:
        return False
    # Scalars are checked inline: most values memsdk reads are flat, and a call per leaf
    # would double the cost of decoding a window.
    return all(
        not isinstance(child, (dict, list)) or within_depth(child, limit - 1) for child in children
    )


def too_few_brackets_to_nest(text: str | bytes) -> bool:
    """True if JSON `text` has too few brackets to nest deeper than MAX_DEPTH, whatever
    decodes from it: a scan in C that spares the walk for the flat values memsdk mostly reads
    (brackets inside strings only make it answer False, and the caller then walks)."""
    if isinstance(text, str):
        return text.count("{") + text.count("[") <= MAX_DEPTH
    return text.count(b"{") + text.count(b"[") <= MAX_DEPTH
