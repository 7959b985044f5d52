"""The `memsdk` command, run as a user runs it (a subprocess on the installed entry point)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.harness.dynamodb_local import DynamoDBLocal


def memsdk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memsdk", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_simulate_on_embedded_store_verifies_every_turn(tmp_path: Path) -> None:
    out = memsdk(
        "simulate", "--store", f"sqlite:///{tmp_path}/sim.db", "--duration", "2", "--sessions", "10"
    )
    assert out.returncode == 0, out.stderr
    assert "verification OK" in out.stdout
    assert "append_turns" in out.stdout and "load_context" in out.stdout


def test_simulate_with_a_wal_verifies_the_store_not_the_overlay(tmp_path: Path) -> None:
    out = memsdk(
        "simulate",
        "--store",
        f"sqlite:///{tmp_path}/sim.db",
        "--wal-dir",
        str(tmp_path / "wal"),
        "--duration",
        "2",
        "--sessions",
        "10",
    )
    assert out.returncode == 0, out.stderr
    assert "verification OK" in out.stdout and " 0 missing" in out.stdout


def test_inspect_hides_content_unless_asked(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/sim.db"
    assert memsdk("simulate", "--store", db, "--duration", "1", "--sessions", "1").returncode == 0
    with closing(sqlite3.connect(tmp_path / "sim.db")) as conn:
        pk, body = conn.execute(
            "SELECT pk, body FROM items WHERE sk LIKE 'TURN#%' LIMIT 1"
        ).fetchone()
    sid = pk.removeprefix("SESSION#")
    content = json.loads(body)["content"]
    assert len(content) > 20
    hidden = memsdk("inspect", "--store", db, sid)
    assert hidden.returncode == 0, hidden.stderr
    assert "turn_count" in hidden.stdout and " bytes" in hidden.stdout
    assert content not in hidden.stdout
    shown = memsdk("inspect", "--store", db, sid, "--show-content")
    assert content in shown.stdout
    assert memsdk("inspect", "--store", db, "no-such-session").returncode == 1


def test_store_from_environment_and_errors(tmp_path: Path) -> None:
    out = memsdk("inspect", "x", env={"MEMSDK_STORE": "nosuch://x"})
    assert out.returncode == 1 and "ConfigError" in out.stderr
    out = memsdk("create-table", "--store", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2 and "dynamodb" in out.stderr


@pytest.mark.dynamodb
def test_create_table_is_idempotent(dynamodb_local: DynamoDBLocal) -> None:
    url = f"dynamodb://memsdk-cli-table?region=us-east-1&endpoint={dynamodb_local.endpoint}"
    first = memsdk("create-table", "--store", url)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    second = memsdk("create-table", "--store", url)
    assert second.returncode == 0 and "already existed" in second.stdout


def test_wal_status_and_replay(tmp_path: Path) -> None:
    import asyncio

    from memsdk import Config, MemoryClient, Turn
    from memsdk.testing import FaultyStore
    from memsdk.wiring import build_store

    db, wal = f"sqlite:///{tmp_path}/mem.db", str(tmp_path / "wal")

    async def leave_records_behind() -> None:
        # The store is down for this client: its appends stay in the WAL when it closes.
        config = Config(store=db, wal_dir=wal, wal_close_timeout=0.05)
        store = FaultyStore(build_store(config))
        store.down = True
        async with MemoryClient(config, store=store) as mem:
            for i in range(3):
                await mem.append_turns("s1", [Turn(role="user", content=f"secret-{i}")])

    asyncio.run(leave_records_behind())
    status = memsdk("wal", "status", "--wal-dir", wal)
    assert status.returncode == 0, status.stderr
    assert "pending records     3" in status.stdout
    assert "secret" not in status.stdout and str(tmp_path) not in status.stdout
    replay = memsdk("wal", "replay", "--wal-dir", wal, "--store", db)
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.startswith("replayed 3 records") and "0 pending" in replay.stdout
    assert "pending records     0" in memsdk("wal", "status", "--wal-dir", wal).stdout
    shown = memsdk("inspect", "--store", db, "s1", "--show-content")
    assert [f"secret-{i}" in shown.stdout for i in range(3)] == [True] * 3
    assert "turn_count    3" in shown.stdout
    assert memsdk("wal", "status").returncode == 2  # no --wal-dir, no MEMSDK_WAL_DIR
