"""What the state machine runs on: the store, Redis, the fault switches, a simulated disk.

One `Env` per test function (one event loop, one redis-server, for DynamoDB one table and
one fault proxy); each example of the machine gets fresh session ids, WAL directories and,
on SQLite, a fresh database file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from memsdk import Config, MemoryClient
from memsdk.faultproxy import FaultProxy
from memsdk.testing import FakeClock, FaultyStore, crash
from memsdk.wal import log as wal_log
from memsdk.wiring import build_store
from tests.harness.redis_server import RedisServer

# Generous where timing is not the point (a busy 2-core machine, a cold JVM): an outage
# here fails fast (refused connection, 503, FaultyStore), it never waits out a timeout.
# The breaker is scaled to a test: judged on 4 calls in 2 s, open 0.2-0.4 s, one probe.
TIMEOUTS: dict[str, Any] = {
    "read_timeout": 10.0,
    "write_timeout": 10.0,
    "breaker_slow_call": 15.0,
    "breaker_window": 2.0,
    "breaker_min_calls": 4,
    "breaker_open_seconds": 0.2,
    "breaker_max_open_seconds": 0.4,
    "breaker_half_open_probes": 1,
    "wal_close_timeout": 0.5,
}
TTL_S = 3_600
LAST_N = 4


class SimulatedDisk(wal_log.FileOps):
    """The WAL's file calls, tracking what each fsync made durable; fsync itself is a no-op.

    `power_cut(dir)` then leaves every segment as a power loss would: the bytes fsync'd,
    plus an arbitrary part of what was written after (a torn tail). The real fsync is not
    called: the machine simulates the disk, and a tmpfs fsync would prove nothing anyway.
    """

    synced: ClassVar[dict[str, tuple[int, int]]] = {}  # path -> (inode, durable bytes)

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int) -> int:
        """Open and remember which file the descriptor names."""
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        SimulatedDisk.synced[path] = (os.fstat(fd).st_ino, 0)
        return fd

    def fsync(self, fd: int) -> None:
        """Record the file's size as durable (directories are not tracked)."""
        path = self._paths.get(fd)
        if path is None or path not in SimulatedDisk.synced:
            return
        st = os.fstat(fd)
        inode, _ = SimulatedDisk.synced[path]
        if st.st_ino == inode:  # a reused descriptor number names another file now
            SimulatedDisk.synced[path] = (inode, st.st_size)

    @staticmethod
    def power_cut(wal_dir: str, keep: float) -> int:
        """Cut each segment to its durable size plus `keep` of the rest; bytes dropped."""
        dropped = 0
        for path, (inode, durable) in list(SimulatedDisk.synced.items()):
            if not path.startswith(wal_dir + os.sep):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                del SimulatedDisk.synced[path]
                continue
            if st.st_ino != inode or st.st_size <= durable:
                continue
            size = durable + int((st.st_size - durable) * keep)
            os.truncate(path, size)
            dropped += st.st_size - size
        return dropped


@contextmanager
def simulated_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every WriteAheadLog opened inside writes through a SimulatedDisk."""
    monkeypatch.setattr(wal_log, "FileOps", SimulatedDisk)
    try:
        yield
    finally:
        SimulatedDisk.synced.clear()


def cap_flush_backoff(client: MemoryClient, cap_s: float) -> None:
    """Cap the WAL flusher's backoff (a test outage lasts milliseconds, not minutes)."""
    writer = client._writer
    if writer is not None:
        writer.flusher.backoff = writer.flusher.backoff.with_cap(cap_s)


async def abandon(client: MemoryClient, *, write_queued: bool = False) -> None:
    """Stop a client the way kill -9 would: no drain, no last confirms, connections dropped.

    `write_queued`: let the log writer write what it had queued first (confirmations), as
    a kill a moment later would.
    """
    await crash(client, write_queued=write_queued)


@dataclass
class Env:
    """The services one test function's examples share."""

    kind: str  # "sqlite" | "dynamodb"
    loop: asyncio.AbstractEventLoop
    redis: RedisServer
    tmp: str
    table_url: str | None = None  # dynamodb: direct to DynamoDB Local
    proxied_url: str | None = None  # dynamodb: through the fault proxy
    proxy: FaultProxy | None = None
    examples: int = 0
    started: float = field(default_factory=time.monotonic)
    first_failure: str | None = None  # "example N after S s": how fast a bug was found

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the machine's loop."""
        return self.loop.run_until_complete(coro)

    def new_example(self) -> Example:
        """Fresh ids and directories for one example."""
        self.examples += 1
        root = tempfile.mkdtemp(dir=self.tmp, prefix="ex-")
        return Example(self, root, uuid.uuid4().hex[:8])


@dataclass
class Example:
    """Per-example resources: WAL dirs, the SQLite file, session ids."""

    env: Env
    root: str
    uid: str
    clock: FakeClock = field(default_factory=FakeClock)
    stores: dict[int, FaultyStore] = field(default_factory=dict)

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.root}/memory.db"

    def config(self, slot: int, *, wal: bool, consistency: str) -> Config:
        """The Config of a machine client in `slot`."""
        store = self.sqlite_url if self.env.kind == "sqlite" else self.env.proxied_url
        assert store is not None
        return Config(
            store=store,
            # Named even while Redis is down: it comes back on the same port.
            redis_url=self.env.redis.url,
            wal_dir=f"{self.root}/wal-{slot}" if wal else None,
            ttl_seconds=TTL_S,
            last_n=LAST_N,
            consistency=consistency,  # type: ignore[arg-type]
            **TIMEOUTS,
        )

    def open_client(self, slot: int, *, wal: bool, consistency: str) -> MemoryClient:
        """Build and open a client; on SQLite behind a FaultyStore (the outage switch)."""
        config = self.config(slot, wal=wal, consistency=consistency)
        store = None
        if self.env.kind == "sqlite":
            store = FaultyStore(build_store(config))
            self.stores[slot] = store
        client = MemoryClient(config, clock=self.clock, store=store)
        self.env.run(client.open())
        # The flusher backs off up to 5 s while the store fails; a test outage lasts
        # milliseconds, so cap the wait (how long it waits is not what is checked here).
        cap_flush_backoff(client, 0.2)
        return client

    def verifier(self) -> MemoryClient:
        """A client that reads the store directly: strong, no L1, no Redis, no faults."""
        store = self.sqlite_url if self.env.kind == "sqlite" else self.env.table_url
        assert store is not None
        config = Config(
            store=store,
            ttl_seconds=TTL_S,
            last_n=LAST_N,
            consistency="strong",
            l1_max_bytes=0,
            **TIMEOUTS,
        )
        client = MemoryClient(config, clock=self.clock)
        self.env.run(client.open())
        return client

    def set_outage(self, mode: str | None) -> None:
        """Store outage on (mode) or off (None) for every machine client."""
        if self.env.kind == "sqlite":
            for store in self.stores.values():
                store.down = mode is not None
        else:
            proxy = self.env.proxy
            assert proxy is not None

            async def switch() -> None:  # set_mode listens again: it needs the running loop
                if mode is None:
                    proxy.set_mode("pass")
                elif mode == "http5xx":
                    proxy.set_mode("http5xx", status=503)
                else:
                    proxy.set_mode("down")

            self.env.run(switch())

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
