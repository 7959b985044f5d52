"""One base for Store wrappers: a wrapper writes `around(call)`, not seven forwarding methods.

The guard (memsdk.guard), the telemetry observer (memsdk.observed) and the test kit's stores
(memsdk.testing) each add one thing around every store call: a breaker, a span, a count, a
fault. Written by hand, each forwarded description, open, aclose and the four data methods
with their keyword arguments, so a change to the Store protocol meant the same edit in
every wrapper, and a forgotten one failed only at run time. StoreWrapper forwards the whole
protocol once and routes every data call through a single hook, as an httpx transport
implements one method: a wrapper overrides `around`, which receives a StoreCall (the
operation, the session it is about and `run()`, which starts the inner call) and decides
when, whether and how to run it.

Cost, per call, against a hand-written wrapper: the data methods are plain functions that
return around()'s coroutine, so a call still runs one coroutine frame of the wrapper, and
the call is one small slotted object per operation that holds the arguments and is its own
factory: one allocation, where a lambda in a call object would be two (the guard built
one lambda per call before; a wrapper with no closure now builds one object).

Wrapper (description, open and aclose only) also serves wrappers of other resources with
that lifecycle, such as memsdk.observed.ObservedDataPath around a DynamoDB DataPath.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

from memsdk.records import CommitOutcome, MetaRecord, SessionWrite, TurnRecord
from memsdk.store.base import Store

__all__ = ["Operation", "Resource", "StoreCall", "StoreWrapper", "Wrapper"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Operation = Literal["get_meta", "query_turns", "commit", "purge_session"]


class Resource(Protocol):
    """What Wrapper forwards: a description and an idempotent open/aclose."""

    @property
    def description(self) -> str:
        """A short, secret-free name."""
        ...

    async def open(self) -> None:
        """Acquire connections; idempotent."""
        ...

    async def aclose(self) -> None:
        """Release them; idempotent."""
        ...


R = TypeVar("R", bound=Resource)


class Wrapper(Generic[R]):
    """Holds `inner` and forwards description, open and aclose to it."""

    def __init__(self, inner: R) -> None:
        """Wrap `inner`."""
        self.inner = inner

    @property
    def description(self) -> str:
        """The wrapped resource's description."""
        return self.inner.description

    async def open(self) -> None:
        """Open the wrapped resource."""
        await self.inner.open()

    async def aclose(self) -> None:
        """Close the wrapped resource."""
        await self.inner.aclose()


class StoreCall(Protocol[T_co]):
    """One data call on its way to the wrapped store."""

    @property
    def operation(self) -> Operation:
        """The Store method called, e.g. "get_meta"."""
        ...

    @property
    def session_id(self) -> str:
        """The session the call is about (a commit's: its META's)."""
        ...

    def run(self) -> Awaitable[T_co]:
        """Start the inner call: a new coroutine each time (a wrapper may retry)."""
        ...


def _describe(call: StoreCall[object]) -> str:
    # The operation and session only: the arguments may hold user content (turns).
    return f"StoreCall({call.operation!r}, {call.session_id!r})"


# One class per operation, each its own zero-argument factory (see the module docstring).


class _GetMeta:
    __slots__ = ("_consistent", "_inner", "session_id")
    operation: Final = "get_meta"

    def __init__(self, inner: Store, session_id: str, consistent: bool) -> None:
        self._inner = inner
        self.session_id = session_id
        self._consistent = consistent

    def run(self) -> Coroutine[Any, Any, MetaRecord | None]:
        return self._inner.get_meta(self.session_id, consistent=self._consistent)

    __repr__ = _describe


class _QueryTurns:
    __slots__ = ("_before_turn_id", "_consistent", "_inner", "_limit", "session_id")
    operation: Final = "query_turns"

    def __init__(
        self,
        inner: Store,
        session_id: str,
        before_turn_id: str | None,
        limit: int,
        consistent: bool,
    ) -> None:
        self._inner = inner
        self.session_id = session_id
        self._before_turn_id = before_turn_id
        self._limit = limit
        self._consistent = consistent

    def run(self) -> Coroutine[Any, Any, list[TurnRecord]]:
        return self._inner.query_turns(
            self.session_id,
            before_turn_id=self._before_turn_id,
            limit=self._limit,
            consistent=self._consistent,
        )

    __repr__ = _describe


class _Commit:
    __slots__ = ("_inner", "_write", "session_id")
    operation: Final = "commit"

    def __init__(self, inner: Store, write: SessionWrite) -> None:
        self._inner = inner
        self.session_id = write.meta.session_id
        self._write = write

    def run(self) -> Coroutine[Any, Any, CommitOutcome]:
        return self._inner.commit(self._write)

    __repr__ = _describe


class _PurgeSession:
    __slots__ = ("_inner", "_through_turn_id", "session_id")
    operation: Final = "purge_session"

    def __init__(self, inner: Store, session_id: str, through_turn_id: str) -> None:
        self._inner = inner
        self.session_id = session_id
        self._through_turn_id = through_turn_id

    def run(self) -> Coroutine[Any, Any, None]:
        return self._inner.purge_session(self.session_id, through_turn_id=self._through_turn_id)

    __repr__ = _describe


class StoreWrapper(Wrapper[Store]):
    """A Store around another: every data call goes through `around`.

    Subclasses override `around` (and may add a constructor and methods of their own);
    the default runs the call unchanged.
    """

    async def around(self, call: StoreCall[T]) -> T:
        """Run `call`; a wrapper's one hook (what it adds before, after or instead)."""
        return await call.run()

    def get_meta(
        self, session_id: str, *, consistent: bool
    ) -> Coroutine[Any, Any, MetaRecord | None]:
        """The wrapped get_meta, through around()."""
        return self.around(_GetMeta(self.inner, session_id, consistent))

    def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> Coroutine[Any, Any, list[TurnRecord]]:
        """The wrapped query_turns, through around()."""
        return self.around(_QueryTurns(self.inner, session_id, before_turn_id, limit, consistent))

    def commit(self, write: SessionWrite) -> Coroutine[Any, Any, CommitOutcome]:
        """The wrapped commit, through around()."""
        return self.around(_Commit(self.inner, write))

    def purge_session(self, session_id: str, *, through_turn_id: str) -> Coroutine[Any, Any, None]:
        """The wrapped purge_session, through around()."""
        return self.around(_PurgeSession(self.inner, session_id, through_turn_id))
