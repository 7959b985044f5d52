"""L1: an in-process LRU of session context windows, bounded in bytes.

An entry holds decoded objects (the public Meta, Turns and Summary, plus the internal
MetaRecord) so that a hit costs a dict lookup and a slice, not a decode. Its size is
the encoded size of what it holds (turns as stored, META as stored); Python objects take
roughly two to three times that in memory, which docs/caching.md accounts for.

An entry is tied to one META version stamp: `meta.floor_turn_id` (the incarnation) and
`meta.last_turn_id` (the newest turn). Whoever serves it checks that stamp against a META
it trusts; this module only stores, bounds and counts.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from memsdk.models import Meta, Summary, Turn
from memsdk.records import MetaRecord

__all__ = ["CacheStats", "CachedWindow", "ContextCache"]

_ENTRY_OVERHEAD = 256  # keys, tuple headers, bookkeeping: keeps tiny entries from being free
_encoder = msgspec.json.Encoder()


class CachedWindow(msgspec.Struct, frozen=True, kw_only=True):
    """What L1 knows about one session.

    `newest_first` is None when only META is known (a write-path hint). `complete` is True
    when the turns are every visible turn of the incarnation, so a window may be served
    even if it is shorter than asked.
    """

    meta: MetaRecord
    public_meta: Meta
    summary: Summary | None
    newest_first: tuple[Turn, ...] | None
    complete: bool
    turn_bytes: tuple[int, ...] = ()
    size: int = 0

    def same_stamp(self, meta: MetaRecord) -> bool:
        """True when this entry's turns are exactly the turns `meta` describes, and `meta`
        names the same owner.

        The count too: a buffered turn from a writer whose clock is behind can land below
        the newest id, leaving `last_turn_id` as it was. The owner too: this entry's came
        from the store (or this process's own write), and a META from Redis that names
        another owner must never decide who may read these turns.
        """
        return (
            self.meta.floor_turn_id == meta.floor_turn_id
            and self.meta.last_turn_id == meta.last_turn_id
            and self.meta.turn_count == meta.turn_count
            and self.meta.customer_id == meta.customer_id
            and self.meta.session_id == meta.session_id
        )


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """L1 counters since the client opened."""

    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


def turn_size(turn: Turn) -> int:
    """The encoded size of one cached turn."""
    return len(_encoder.encode(turn))


def meta_size(meta: MetaRecord) -> int:
    """The encoded size of a cached META."""
    return len(_encoder.encode(meta))


class ContextCache:
    """A byte-bounded LRU of CachedWindow entries keyed by session id."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedWindow] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def get(self, session_id: str) -> CachedWindow | None:
        """The entry (marked most recently used), or None; does not count hits or misses."""
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def put(
        self,
        session_id: str,
        meta: MetaRecord,
        public_meta: Meta,
        summary: Summary | None,
        newest_first: tuple[Turn, ...] | None,
        *,
        complete: bool,
        depth: int,
        turn_bytes: tuple[int, ...] | None = None,
    ) -> CachedWindow | None:
        """Store a window trimmed to `depth` turns; None if it alone exceeds the budget, or
        if L1 holds a newer META for the session (a read that began before a write this
        process made since must not put its older answer over that write's window)."""
        held = self._entries.get(session_id)
        if held is not None and held.meta.version > meta.version:
            return None
        sizes: tuple[int, ...] = ()
        if newest_first is not None:
            if len(newest_first) > depth:
                newest_first, complete = newest_first[:depth], False
            if turn_bytes is None or len(turn_bytes) < len(newest_first):
                sizes = tuple(turn_size(t) for t in newest_first)
            else:
                sizes = turn_bytes[: len(newest_first)]
        size = _ENTRY_OVERHEAD + meta_size(meta) + sum(sizes)
        entry = CachedWindow(
            meta=meta,
            public_meta=public_meta,
            summary=summary,
            newest_first=newest_first,
            complete=complete,
            turn_bytes=sizes,
            size=size,
        )
        self.pop(session_id)
        if size > self._max_bytes:
            return None
        self._entries[session_id] = entry
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self.evictions += 1
        return entry

    def pop(self, session_id: str) -> None:
        """Forget a session."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= entry.size

    def stats(self, *, hits: int = 0, misses: int = 0) -> CacheStats:
        """Sizes and evictions; `hits` and `misses` are counted by the owner, which alone
        knows whether a window it got was served (memsdk.session_cache)."""
        return CacheStats(
            entries=len(self._entries),
            bytes=self._bytes,
            max_bytes=self._max_bytes,
            hits=hits,
            misses=misses,
            evictions=self.evictions,
        )
