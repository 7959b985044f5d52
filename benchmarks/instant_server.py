"""A loopback DynamoDB that answers instantly: canned JSON-protocol replies, in another process.

The data-path benchmarks (benchmarks.data_path) measure the CPU a client spends per call.
Against DynamoDB Local, the JVM answers in milliseconds and shares the machine's cores, so
the client's cost is diluted and disturbed; this server answers every request at once with
precomputed bytes, chosen by the X-Amz-Target header:

- GetItem -> a META item (`canned_items`: a live 20-turn session, SESSION_ID / CUSTOMER_ID);
- Query -> the 20 TURN items of that session, newest first, ~0.8 KB (user) and ~2 KB
  (assistant, with attributes) of content each, ids between META's floor_turn_id and its
  last_turn_id so that memsdk's validated read needs no second query;
- PutItem, UpdateItem, DeleteItem, TransactWriteItems -> {};
- BatchWriteItem -> {"UnprocessedItems": {}};
- anything else -> HTTP 400 UnknownOperationException.

The server ignores request bodies: every GetItem returns the same META, whatever its key.
Replies carry x-amz-crc32 (both botocore and memsdk's lean path check it when present) and
connections are kept alive (HTTP/1.1), for aiohttp (the lean path) and aiobotocore alike.

It runs in a separate process (`start` / `stop`, or `running()`), so its CPU never counts in
the benchmark's time.process_time. With 2+ CPUs, `start` pins the server to one CPU, and
`pinned()` pins the calling thread (the client's event loop) to another.

Run by hand: `python benchmarks/instant_server.py` reads the replies as JSON on stdin
({"replies": {"GetItem": "<body>", ...}, "cpu": 1 or null}) and prints its port.
This file imports only the standard library at module level: the child process needs
nothing else; `canned_replies` (parent side) imports memsdk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SESSION_ID",
    "TURNS",
    "InstantServer",
    "canned_items",
    "canned_replies",
    "cpu_plan",
    "pinned",
    "running",
    "start",
    "stop",
]

SESSION_ID = "bench-instant-0001"
TURNS = 20  # TURN items in the Query reply: memsdk's default window
_TARGET_PREFIX = "DynamoDB_20120810."
_NODE = "0be0c4a1"  # the node part of the canned turn ids (8 hex digits)
_STARTUP_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------- replies


def canned_items(now_ms: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The META item and the TURN items (newest first) the server answers with.

    Built with memsdk.store.dynamodb_items (the store's own layout) and the seed workload's
    user / assistant turns (benchmarks.core.message_turns): a live session of TURNS turns,
    floor < every turn id <= last_turn_id, expiring in 30 days.
    """
    from benchmarks.core import CUSTOMER_ID, message_turns
    from memsdk.records import MetaRecord, TurnRecord
    from memsdk.store.dynamodb_items import meta_to_item, turn_to_item

    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    base_ms = now_ms - 3_600_000  # an hour ago: ids memsdk issues now sort after these
    expires = now_ms // 1000 + 30 * 86_400
    floor = f"{base_ms:013d}{0:04x}{_NODE}"
    ids = [f"{base_ms:013d}{i:04x}{_NODE}" for i in range(1, TURNS + 1)]
    pair = message_turns()
    turns = [
        TurnRecord(
            turn_id=turn_id,
            role=pair[i % 2].role,
            content=pair[i % 2].content,
            intent=pair[i % 2].intent,
            attributes=pair[i % 2].attributes,
            created_at_ms=base_ms,
            expires_at=expires + 7 * 86_400,
        )
        for i, turn_id in enumerate(ids)
    ]
    meta = MetaRecord(
        session_id=SESSION_ID,
        customer_id=CUSTOMER_ID,
        created_at_ms=base_ms,
        updated_at_ms=base_ms,
        turn_count=TURNS,
        last_turn_id=ids[-1],
        floor_turn_id=floor,
        page_context={},
        attributes={},
        expires_at=expires,
        version=(base_ms << 20) | 0x5A5A5,
    )
    newest_first = [turn_to_item(SESSION_ID, t) for t in reversed(turns)]
    return meta_to_item(meta), newest_first


def canned_replies(now_ms: int | None = None) -> dict[str, bytes]:
    """Reply body per operation name (GetItem, Query, ...), as DynamoDB would send it."""
    meta, turns = canned_items(now_ms)

    def body(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    empty = b"{}"
    return {
        "GetItem": body({"Item": meta}),
        "Query": body({"Items": turns, "Count": len(turns), "ScannedCount": len(turns)}),
        "PutItem": empty,
        "UpdateItem": empty,
        "DeleteItem": empty,
        "TransactWriteItems": empty,
        "BatchWriteItem": body({"UnprocessedItems": {}}),
    }


def _http_reply(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Server: memsdk-instant\r\n"
        "Content-Type: application/x-amz-json-1.0\r\n"
        "x-amzn-RequestId: 0000000000000000000000000000000000000000000000000000\r\n"
        f"x-amz-crc32: {zlib.crc32(body)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


# ---------------------------------------------------------------------------- child process

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_TARGET = re.compile(rb"\r\nx-amz-target:[ \t]*([^\r]*)")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parse heads, skip bodies, write the precomputed reply."""

    def __init__(self, replies: dict[bytes, bytes], unknown: bytes) -> None:
        self._replies = replies
        self._unknown = unknown
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            length = _LENGTH.search(head)
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < total:
                return
            del buffer[:total]
            target = _TARGET.search(head)
            reply = self._replies.get(target.group(1).strip() if target else b"", self._unknown)
            assert self._transport is not None
            self._transport.write(reply)


async def _serve(replies: dict[str, str], announce: Any) -> None:
    table = {
        (_TARGET_PREFIX + op).lower().encode(): _http_reply("200 OK", body.encode())
        for op, body in replies.items()
    }
    unknown = _http_reply(
        "400 Bad Request",
        b'{"__type":"com.amazon.coral.service#UnknownOperationException"}',
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(table, unknown), "127.0.0.1", 0, backlog=512
    )
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _child_main() -> None:
    spec = json.loads(sys.stdin.readline())
    cpu = spec.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})

    def announce(port: int) -> None:
        print(port, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(spec["replies"], announce))


# ---------------------------------------------------------------------------- parent side


def _available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return []


def cpu_plan() -> tuple[int | None, int | None]:
    """(client CPU, server CPU) when 2+ CPUs are usable, else (None, None): no pinning."""
    cpus = _available_cpus()
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[-1]


@dataclass(slots=True)
class InstantServer:
    """A running instant server: its endpoint, its process and where it is pinned."""

    endpoint: str
    process: subprocess.Popen[bytes]
    server_cpu: int | None
    client_cpu: int | None

    def describe(self) -> str:
        """Where the server and the client run, for the benchmark notes."""
        if self.server_cpu is None:
            return "instant server in its own process, not pinned (fewer than 2 usable CPUs)"
        return (
            f"instant server in its own process pinned to CPU {self.server_cpu}, the client "
            f"(this process's event loop thread) pinned to CPU {self.client_cpu} while "
            "measuring against it"
        )


def start(replies: dict[str, bytes] | None = None, *, pin: bool = True) -> InstantServer:
    """Start the server in a child process; returns once it listens."""
    bodies = canned_replies() if replies is None else replies
    client_cpu, server_cpu = cpu_plan() if pin else (None, None)
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        spec = {"replies": {k: v.decode() for k, v in bodies.items()}, "cpu": server_cpu}
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        process.stdin.flush()
        line = _read_line(process, _STARTUP_TIMEOUT_S)
        port = int(line)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return InstantServer(f"http://127.0.0.1:{port}", process, server_cpu, client_cpu)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"the instant server did not start within {timeout:.0f} s")
    line = process.stdout.readline()
    if not line.strip():
        raise RuntimeError(f"the instant server exited at start (code {process.poll()})")
    return line


def stop(server: InstantServer) -> None:
    """Stop the server process (SIGTERM, then SIGKILL); idempotent."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def running(
    replies: dict[str, bytes] | None = None, *, pin: bool = True
) -> Iterator[InstantServer]:
    """`with running() as server:` start the server, stop it on the way out."""
    server = start(replies, pin=pin)
    try:
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Pin the calling thread (the event loop's) to `cpu`; None: leave it. Restored after."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    # pid 0 = the calling thread on Linux; threads it starts later inherit the mask.
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


if __name__ == "__main__":
    _child_main()
