"""SQLiteStore: the embedded store, one SQLite file holding the single-table model.

Every sqlite3 call runs on one dedicated worker thread: the event loop never waits on the
disk, and one thread serialises this process's transactions, so it never contends with
itself (other processes may still hold the lock: that is what busy_timeout is for). The
price: while a write waits up to busy_timeout for another process's lock, this process's
reads queue behind it.

Trust: the database file and its -wal/-shm companions are refused (StoreError at open) when
one is a symbolic link, is owned by another user or is writable by group/others: whoever can
write them can forge any session, owner included. One readable by others is only warned
about (without its path). A stored body that does not decode as a memsdk record, whatever
the bytes, is a StoreError too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import msgspec

from memsdk.errors import StoreError, StoreUnavailableError
from memsdk.jsonshape import too_few_brackets_to_nest, within_depth
from memsdk.records import (
    META_SK,
    PK_PREFIX,
    SUMMARY_PREFIX,
    TURN_PREFIX,
    CommitOutcome,
    MetaRecord,
    SessionWrite,
    SummaryRecord,
    TurnRecord,
    same_turn,
    stamp_of,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

logger = logging.getLogger(__name__)

# Stored in PRAGMA user_version so that a future migration can tell what it opens.
SCHEMA_VERSION = 1
# Long enough to ride out another process's commit, short enough to report an outage.
_BUSY_TIMEOUT_MS = 5000

# '$' is the character after '#': [TURN#, TURN$) holds exactly the keys starting with TURN#.
_TURN_END = "TURN$"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID
"""
_UPSERT = (
    "INSERT INTO items (pk, sk, expires_at, body) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pk, sk) DO UPDATE SET expires_at = excluded.expires_at, body = excluded.body"
)
# Plain INSERT for turns: a turn is written once, never replaced.
_INSERT = "INSERT INTO items (pk, sk, expires_at, body) VALUES (?, ?, ?, ?)"

_encoder = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(type=MetaRecord)
_turn_decoder = msgspec.json.Decoder(type=TurnRecord)

_T = TypeVar("_T")
_D = TypeVar("_D", MetaRecord, TurnRecord)


class _UndecodableItemError(Exception):
    """A stored body is not a valid memsdk record; the message says where, never what."""


# The only exceptions the worker thread may raise besides StoreError; all are translated.
_FOREIGN_ERRORS = (sqlite3.Error, OSError, _UndecodableItemError)


class SQLiteStore:
    """The Store protocol on one SQLite file (or ':memory:'), WAL mode, synchronous=FULL."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def description(self) -> str:
        """Always 'sqlite': the path is a machine detail and stays out of health() and logs."""
        return "sqlite"

    async def open(self) -> None:
        """Open the file (created 0600 if missing), its connection and worker thread; idempotent."""
        async with self._lock:
            if self._conn is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memsdk-sqlite")
            opening = executor.submit(_connect, self._path)
            try:
                conn = await asyncio.wrap_future(opening)
            except BaseException as exc:
                # Cancelled mid-connect, _connect may still finish: the single worker runs
                # this cleanup after it, so the connection it opens does not leak. Wait
                # for it (a second cancel stops waiting): no thread outlives this call.
                cleanup = executor.submit(_close_if_opened, opening)
                executor.shutdown(wait=False)
                await asyncio.wait([asyncio.wrap_future(cleanup)])
                executor.shutdown(wait=True)  # idle now: joining takes no time
                if isinstance(exc, _FOREIGN_ERRORS):
                    raise _translate(exc, "open the database", None) from exc
                raise
            self._executor, self._conn = executor, conn

    async def aclose(self) -> None:
        """Close the connection on its thread and let the thread exit; idempotent."""
        async with self._lock:
            executor, conn = self._executor, self._conn
            if executor is None or conn is None:
                return
            self._executor, self._conn = None, None
            closed = False
            try:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
                closed = True
            except _FOREIGN_ERRORS as exc:
                raise _translate(exc, "close the database", None) from exc
            finally:
                # Once the close ran, the worker is idle: joining it takes no time, and no
                # thread of this store outlives aclose().
                executor.shutdown(wait=closed)

    async def get_meta(self, session_id: str, *, consistent: bool) -> MetaRecord | None:
        """Return the stored META item, expired or not, or None."""
        return await self._run(
            "read META", session_id, functools.partial(_get_meta_sync, session_id=session_id)
        )

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> list[TurnRecord]:
        """Return up to `limit` TURN items newest first, ids < `before_turn_id` if given."""
        query = functools.partial(
            _query_turns_sync, session_id=session_id, before_turn_id=before_turn_id, limit=limit
        )
        return await self._run("query turns", session_id, query)

    async def commit(self, write: SessionWrite) -> CommitOutcome:
        """Apply `write` in one transaction if the stored META matches its expectation."""
        session_id = write.meta.session_id
        return await self._run(
            "commit a write", session_id, functools.partial(_commit_sync, write=write)
        )

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        """Delete TURN/SUMMARY items with ids <= `through_turn_id`; never META."""
        purge = functools.partial(
            _purge_sync, session_id=session_id, through_turn_id=through_turn_id
        )
        await self._run("purge a session", session_id, purge)

    async def _run(
        self, action: str, session_id: str, call: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        # No await between the check and the submission: aclose() cannot slip in between,
        # and the FIFO worker runs this call before the close that aclose() queues later.
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise StoreError(
                "store is not open: call open() first (or it was closed)", session_id=session_id
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call, conn)
        except _FOREIGN_ERRORS as exc:
            raise _translate(exc, action, session_id) from exc


def _translate(exc: BaseException, action: str, session_id: str | None) -> StoreError:
    """Map an exception from the worker thread to the store error contract."""
    if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
        # The transaction rolled back (or never began): nothing of a write was applied.
        return StoreUnavailableError(
            f"sqlite store could not {action}: the database is locked by another connection;"
            " retry later",
            session_id=session_id,
            maybe_applied=False,
        )
    if isinstance(exc, sqlite3.Error):
        return StoreError(
            f"sqlite store could not {action}: {exc}; check the database file's permissions,"
            " free disk space and integrity",
            session_id=session_id,
        )
    if isinstance(exc, OSError):
        return StoreError(
            f"sqlite store could not {action}: {exc.strerror or exc}; check the database file"
            " and its directory (permissions, free disk space)",
            session_id=session_id,
        )
    # What remains is a stored body that does not decode (encoding is checked earlier).
    return StoreError(
        f"sqlite store could not {action}: a stored item is not a valid memsdk record"
        f" ({exc}); the database is corrupt, was changed by something other than memsdk,"
        " or was written by a newer memsdk",
        session_id=session_id,
    )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        # Extended codes (e.g. SQLITE_BUSY_SNAPSHOT) carry the primary code in the low byte.
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


# --- everything below runs on the worker thread ---------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    on_disk = path != ":memory:"
    readable = False  # by group or others: warned about once the checks passed
    if on_disk:
        readable = _create_private_file(path)
        readable |= _check_companions(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _prepare(conn)
        if on_disk:
            # WAL mode has now created the -wal and -shm files: check what sqlite opened.
            readable |= _check_companions(path)
    except BaseException:
        conn.close()
        raise
    if readable:
        # Not refused: nobody else can change the files. But conversations are private.
        logger.warning(
            "sqlite store: the database (or its -wal/-shm file) is readable by group or "
            "others; chmod 600 it (conversations are private)"
        )
    return conn


def _create_private_file(path: str) -> bool:
    """Create the file 0600 if absent, check it; True if others can read it."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise StoreError(
            f"sqlite store directory {directory!r} does not exist: create it first"
            " (memsdk does not create directories)"
        )
    # Created here rather than by sqlite so that the file is private from its first byte;
    # sqlite gives the -wal and -shm files the same mode. An existing file keeps its mode,
    # and is checked on the opened descriptor, never through a symbolic link.
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _untrusted("the database file", "is a symbolic link") from None
        raise
    try:
        return _check_trusted(os.fstat(fd), "the database file")
    finally:
        os.close(fd)


def _check_companions(path: str) -> bool:
    """Check the -wal and -shm files that exist; True if others can read one."""
    readable = False
    for suffix in ("-wal", "-shm"):
        try:
            st = os.lstat(path + suffix)
        except FileNotFoundError:
            continue
        readable |= _check_trusted(st, f"the database's {suffix} file")
    return readable


def _check_trusted(st: os.stat_result, what: str) -> bool:
    """StoreError unless `st` is a regular file of this user that no other user can write;
    True if group or others can read it."""
    if stat.S_ISLNK(st.st_mode):
        raise _untrusted(what, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _untrusted(what, "is not a regular file")
    if st.st_uid != os.geteuid():
        raise _untrusted(what, f"is owned by another user (uid {st.st_uid})")
    if st.st_mode & 0o022:
        raise _untrusted(what, "is writable by group or others")
    return bool(st.st_mode & 0o044)


def _untrusted(what: str, problem: str) -> StoreError:
    # Whoever can write the file (or change a link) can forge any session, owner included.
    return StoreError(
        f"sqlite store refuses to open: {what} {problem}; it must be a regular file owned by"
        f" this process's user (uid {os.geteuid()}) that only that user can write (chmod 600),"
        " in a directory no other user can write"
    )


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_MS)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    with _transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"sqlite store schema version {version} is newer than this memsdk supports"
                f" ({SCHEMA_VERSION}): upgrade memsdk"
            )
        if version < SCHEMA_VERSION:
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _close_if_opened(opening: Future[sqlite3.Connection]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE; COMMIT on exit unless the body already rolled back; ROLLBACK on error."""
    # IMMEDIATE takes the write lock up front: a read-then-write transaction can then never
    # fail halfway with SQLITE_BUSY after reading state that another writer changes.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        if conn.in_transaction:
            conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # The error that brought us here is the one to report; should ROLLBACK fail too, sqlite
    # still discards the uncommitted transaction when the connection closes.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _pk(session_id: str) -> str:
    return PK_PREFIX + session_id


def _decode(decoder: msgspec.json.Decoder[_D], body: object) -> _D:
    """Decode a stored body, or raise _UndecodableItemError whatever is wrong with it."""
    # The bytes at rest may be anything (a bug, a disk, another program): deep nesting
    # raises RecursionError, a number or NULL in the column TypeError. None may escape.
    try:
        record = decoder.decode(body)  # type: ignore[arg-type]  # the column may hold anything
    except msgspec.ValidationError as exc:
        raise _UndecodableItemError(f"wrong shape{_where(exc)}") from None
    except msgspec.DecodeError:
        raise _UndecodableItemError("not JSON") from None
    except RecursionError:
        raise _UndecodableItemError("nested too deeply") from None
    except Exception as exc:
        raise _UndecodableItemError(f"{type(exc).__name__}") from None
    # Deeper than memsdk ever writes, within msgspec's own limit: not ours either.
    if isinstance(body, str | bytes) and too_few_brackets_to_nest(body):
        return record
    if not all(within_depth(getattr(record, name, None)) for name in _JSON_FIELDS):
        raise _UndecodableItemError("nested too deeply")
    return record


# The fields of stored records that hold caller JSON.
_JSON_FIELDS = ("attributes", "page_context")


def _where(exc: msgspec.ValidationError) -> str:
    # msgspec ends its messages with " - at `$.path`": keep the path, drop the rest, which
    # may quote a stored value (user content).
    _, sep, path = str(exc).rpartition(" - at ")
    return f" at {path}" if sep else ""


def _read_meta(conn: sqlite3.Connection, pk: str) -> MetaRecord | None:
    row = conn.execute("SELECT body FROM items WHERE pk = ? AND sk = ?", (pk, META_SK)).fetchone()
    return None if row is None else _decode(_meta_decoder, row[0])


def _get_meta_sync(conn: sqlite3.Connection, *, session_id: str) -> MetaRecord | None:
    return _read_meta(conn, _pk(session_id))


def _query_turns_sync(
    conn: sqlite3.Connection, *, session_id: str, before_turn_id: str | None, limit: int
) -> list[TurnRecord]:
    upper = _TURN_END if before_turn_id is None else TURN_PREFIX + before_turn_id
    rows = conn.execute(
        "SELECT body FROM items WHERE pk = ? AND sk >= ? AND sk < ? ORDER BY sk DESC LIMIT ?",
        # A negative LIMIT means "no limit" to sqlite: clamp so it means "nothing" instead.
        (_pk(session_id), TURN_PREFIX, upper, max(limit, 0)),
    ).fetchall()
    return [_decode(_turn_decoder, body) for (body,) in rows]


def _expectation_holds(current: MetaRecord | None, write: SessionWrite) -> bool:
    if write.expected_version is None:
        # A delete's tombstone (kept, unexpired) refuses this: see plan_delete.
        return current is None or current.expires_at <= write.now_s
    return (
        current is not None
        and current.version == write.expected_version
        and (write.expected_stamp is None or stamp_of(current) == write.expected_stamp)
    )


def _encode(record: MetaRecord | TurnRecord | SummaryRecord, write: SessionWrite) -> bytes:
    try:
        return _encoder.encode(record)
    except (TypeError, msgspec.EncodeError) as exc:
        # msgspec reports an unsupported value (an object, a tuple key) as TypeError.
        raise StoreError(
            f"sqlite store could not commit a write: it does not encode as JSON ({exc});"
            " attribute values must be JSON types",
            session_id=write.meta.session_id,
            permanent=True,
        ) from exc


def _commit_sync(conn: sqlite3.Connection, *, write: SessionWrite) -> CommitOutcome:
    pk = _pk(write.meta.session_id)
    # Encoded before BEGIN: the write lock is held no longer than the statements need.
    turn_rows = [
        (pk, TURN_PREFIX + turn.turn_id, turn.expires_at, _encode(turn, write))
        for turn in write.turns
    ]
    upserts = [(pk, META_SK, write.meta.expires_at, _encode(write.meta, write))]
    if write.summary is not None:
        summary = write.summary
        sk = SUMMARY_PREFIX + summary.through_turn_id
        upserts.append((pk, sk, summary.expires_at, _encode(summary, write)))

    with _transaction(conn):
        current = _read_meta(conn, pk)
        landed: set[str] = set()
        for _, sk, _, body in turn_rows:
            row = conn.execute(
                "SELECT body FROM items WHERE pk = ? AND sk = ?", (pk, sk)
            ).fetchone()
            if row is None:
                continue
            # Compared as decoded records, so a JSON round trip of our own turn (a tuple
            # becoming a list, key order) does not count as different content.
            if not same_turn(_decode(_turn_decoder, row[0]), _decode(_turn_decoder, body)):
                raise StoreError(
                    f"turn id {sk[len(TURN_PREFIX) :]} already exists with different content;"
                    " turn ids must be unique: this is a memsdk bug, please report it",
                    session_id=write.meta.session_id,
                    permanent=True,
                )
            landed.add(sk[len(TURN_PREFIX) :])
        if turn_rows and len(landed) == len(turn_rows):
            # An earlier attempt of these turns landed and only its reply was lost. Its META
            # may not be this attempt's (planned on another base, e.g. by a client that
            # replays a crashed one's log): say which META the store holds.
            conn.execute("ROLLBACK")
            return CommitOutcome(applied=True, current=current, already_applied=True)
        if landed or not _expectation_holds(current, write):
            conn.execute("ROLLBACK")
            return CommitOutcome(
                applied=False, current=current, existing_turn_ids=frozenset(landed)
            )
        conn.executemany(_UPSERT, upserts)
        conn.executemany(_INSERT, turn_rows)
    return CommitOutcome(applied=True)


def _purge_sync(conn: sqlite3.Connection, *, session_id: str, through_turn_id: str) -> None:
    pk = _pk(session_id)
    delete_range = "DELETE FROM items WHERE pk = ? AND sk >= ? AND sk <= ?"
    with _transaction(conn):
        conn.execute(delete_range, (pk, TURN_PREFIX, TURN_PREFIX + through_turn_id))
        conn.execute(delete_range, (pk, SUMMARY_PREFIX, SUMMARY_PREFIX + through_turn_id))
