"""wal_dir/rejected/: acknowledged appends that memsdk set aside instead of the store.

Never silent (guarantee 11): each set-aside append is one JSON line in
`rejected/rejected.jsonl` with the reason, the time and the WAL record as it was, written
and fsync'd before the log confirms the record (a crash in between writes it again: at
least once, never lost). The file holds conversation content: 0600, in a 0700 directory
that must be this user's and writable by nobody else; the file is never reached through a
symbolic link (see memsdk.wal.log.ensure_private_dir).
"""

from __future__ import annotations

import base64
import os

import msgspec

from memsdk.wal.log import ensure_private_dir, open_nofollow

__all__ = ["rejected_line", "write_rejected"]


class _RejectedLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of rejected/rejected.jsonl: why, when, and the WAL record itself."""

    reason: str
    rejected_at_ms: int
    record: msgspec.Raw | None = None  # the append's JSON payload, as the WAL held it
    record_base64: str | None = None  # a payload that is not JSON (undecodable records)


def rejected_line(reason: str, now_ms: int, payload: bytes) -> bytes:
    """The line for one set-aside record: its JSON as is, or base64 if it is not JSON."""
    try:
        msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):  # hostile nesting is not JSON we embed
        line = _RejectedLine(
            reason=reason, rejected_at_ms=now_ms, record_base64=base64.b64encode(payload).decode()
        )
    else:
        line = _RejectedLine(reason=reason, rejected_at_ms=now_ms, record=msgspec.Raw(payload))
    return msgspec.json.encode(line)


def write_rejected(wal_dir: str, lines: list[bytes]) -> None:
    """Append lines to rejected/rejected.jsonl (0600, fsync'd) before the log confirms them:
    a crash in between writes them again (at least once), never loses them. ConfigError if
    rejected/ or the file cannot be trusted (another owner, writable by others, a link)."""
    folder = os.path.join(wal_dir, "rejected")
    ensure_private_dir(folder, "wal_dir/rejected")
    fd = open_nofollow(
        os.path.join(folder, "rejected.jsonl"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        "wal_dir/rejected/rejected.jsonl",
    )
    try:
        os.write(fd, b"".join(line + b"\n" for line in lines))
        os.fsync(fd)
    finally:
        os.close(fd)
