"""Every error memsdk raises, grouped by what the caller can do about it.

    MemsdkError                      base: catch this to catch everything from memsdk
    ├── ConfigError                  the Config (or the environment) is wrong: fix it, do not retry
    ├── InvalidInputError            the call's arguments are wrong: fix the call, do not retry
    │   ├── InvalidSessionIdError    session id breaks the 1-128 chars of [A-Za-z0-9._:-] rule
    │   ├── InvalidTurnError         a Turn (or summary) is malformed: role, attributes, turn id
    │   └── TurnTooLargeError        an encoded item (or the whole append) is over its cap
    ├── SessionOwnershipError        the session belongs to another customer: never retry
    ├── ContextLostError             a session you expected to exist is gone (expired or deleted)
    ├── ClientClosedError            the MemoryClient is used outside `async with` or after aclose()
    ├── StoreError                   the store refused the request (table missing, access denied)
    │   └── StoreUnavailableError    the store failed transiently: retry later; see `maybe_applied`
    └── BackpressureError            a local bound (WAL budget, in-flight calls) is full: shed load

Every error carries `session_id` (None when no session is involved) and says in its
message what to do next. `message` is that text alone; `str(error)` appends
`[session_id=...]` for people reading logs. Messages name what is wrong by a field and a
position memsdk chose (`turns[2].attributes[entry 0] holds a set`), never by a key, id or
value the caller passed, so `message` is safe to put in telemetry. Errors raised for bad
input are raised before any I/O: nothing was written, no other session was touched.
"""

from __future__ import annotations

__all__ = [
    "BackpressureError",
    "ClientClosedError",
    "ConfigError",
    "ContextLostError",
    "InvalidInputError",
    "InvalidSessionIdError",
    "InvalidTurnError",
    "MemsdkError",
    "SessionOwnershipError",
    "StoreError",
    "StoreUnavailableError",
    "TurnTooLargeError",
]


class MemsdkError(Exception):
    """Base of every memsdk error; `session_id` names the session involved, if any."""

    retryable: bool = False

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id

    @property
    def message(self) -> str:
        """memsdk's own message (what happened, what to do), without the session id suffix."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        if self.session_id is None:
            return self.message
        return f"{self.message} [session_id={self.session_id}]"


class ConfigError(MemsdkError, ValueError):
    """A configuration value is malformed or unsupported."""


class InvalidInputError(MemsdkError, ValueError):
    """The arguments of a call are invalid; raised before any I/O."""


class InvalidSessionIdError(InvalidInputError):
    """A session id is not 1-128 characters of [A-Za-z0-9._:-]."""


class InvalidTurnError(InvalidInputError):
    """A turn, summary or turn id is malformed (role, attributes, encoding)."""


class TurnTooLargeError(InvalidInputError):
    """An encoded turn or append exceeds its size cap; the session is unchanged."""


class SessionOwnershipError(MemsdkError):
    """The session exists and belongs to a different customer_id."""


class ContextLostError(MemsdkError):
    """A session the caller expected to exist is absent (expired, deleted or never written)."""


class ClientClosedError(MemsdkError, RuntimeError):
    """The client is not open: use it inside `async with MemoryClient(...)`."""


class StoreError(MemsdkError):
    """The durable store refused the request; retrying the same call will not help.

    `permanent` is True when this request itself can never succeed (a turn-id collision,
    an item the store will never accept). False, the default, when the cause lies outside
    the request (a missing table, credentials, permissions, a full disk): the same request
    succeeds once an operator fixes that, so the write-ahead log keeps such records
    pending instead of setting them aside.
    """

    def __init__(
        self, message: str, *, session_id: str | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.permanent = permanent


class StoreUnavailableError(StoreError):
    """The store could not be reached or failed transiently; retry later.

    `maybe_applied` is True only when the request may have reached the store (a timeout or
    a lost response after sending): the write is then either absent or present exactly once.
    `throttled` is True when the store refused for capacity (one hot key or a table limit),
    which says nothing about its health: circuit breakers do not count it as a failure.
    `retry_after` is set when memsdk itself refused to send (the circuit breaker is open):
    the seconds until it will let a call through again; retrying sooner is refused too.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        session_id: str | None = None,
        maybe_applied: bool = False,
        throttled: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.maybe_applied = maybe_applied
        self.throttled = throttled
        self.retry_after = retry_after


class BackpressureError(MemsdkError):
    """A local bound is full (write-ahead log budget, in-flight calls); shed or delay load."""

    retryable = True
