"""A real full disk under the WAL (docs/durability.md): ENOSPC from the kernel, not a mock.

The WAL sits on a 192 KiB tmpfs while its budget (`wal_max_bytes`) is far larger, so the
filesystem fills first. Appends that cannot reach the disk raise BackpressureError and are
never acknowledged; everything acknowledged before reaches the store once it answers; and
appends work again once the flusher has freed space.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import BackpressureError
from memsdk.testing import FaultyStore
from memsdk.wiring import build_store


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def pair(i: int) -> list[Turn]:
    return [
        Turn(role="user", content=f"q{i}-" + "x" * 2_000),
        Turn(role="assistant", content=f"a{i}"),
    ]


async def test_enospc_refuses_appends_loses_nothing_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    config = Config(
        store=f"sqlite:///{tmp_path / 'memory.db'}",
        wal_dir=str(small_disk / "wal"),
        wal_max_bytes=64 << 20,  # the filesystem, not the budget, runs out
        wal_segment_bytes=16 << 10,
        write_timeout=2.0,
    )
    store = FaultyStore(build_store(config))
    store.down = True
    acked: list[str] = []
    async with MemoryClient(config, store=store) as mem:
        with pytest.raises(BackpressureError, match="disk full or I/O error"):
            for i in range(1_000):
                await mem.append_turns("s1", pair(i))
                acked.append(f"q{i}-")
        assert 10 < len(acked) < 1_000
        assert mem.health().wal_pending_records == len(acked)
        # Still full: refused again, nothing acknowledged.
        with pytest.raises(BackpressureError):
            await mem.append_turns("s1", pair(10_000))
        store.down = False
        await mem.flush(timeout=60)
        # The flusher confirmed everything and deleted the segments: there is room again.
        await mem.append_turns("s1", pair(20_000))
        acked.append("q20000-")
        await mem.flush(timeout=60)
    async with MemoryClient(Config(store=config.store)) as reader:
        ctx = await reader.load_context("s1", last_n=10_000)
    stored = [t.content.split("x")[0] for t in ctx.turns if t.role == "user"]
    assert stored == acked  # every acknowledged append, once, in order; nothing refused
    assert ctx.meta is not None and ctx.meta.turn_count == 2 * len(acked)
