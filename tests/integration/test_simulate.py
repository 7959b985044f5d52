"""`memsdk simulate` end to end: real stores, a real Redis, real faults, a few seconds each.

Runs as a user runs it (a subprocess on the installed entry point), except the test that
corrupts the store behind simulate's back, which needs the test-only hook in-process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import memsdk.simulate
from memsdk import cli
from memsdk.simulate.verify import Ledger
from tests.conftest import new_dynamodb_table
from tests.harness.dynamodb_local import DynamoDBLocal
from tests.harness.redis_server import RedisServer

# A breaker scaled to a run of a few seconds (judged over 2 s, open 0.5-1 s) that does not
# count a slow emulator on a busy machine as an outage.
FAST_BREAKER = {
    "MEMSDK_BREAKER_WINDOW": "2",
    "MEMSDK_BREAKER_MIN_CALLS": "20",
    "MEMSDK_BREAKER_OPEN_SECONDS": "0.5",
    "MEMSDK_BREAKER_MAX_OPEN_SECONDS": "1",
    "MEMSDK_BREAKER_SLOW_CALL": "10",
}


def simulate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memsdk", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def assert_every_turn_accounted_for(data: dict[str, Any]) -> None:
    v, turns = data["verification"], data["turns"]
    assert v["ok"] and data["ok"] and data["stale_reads"] == 0
    assert v["acknowledged"] == turns["acked_turns"] > 0
    assert v["refused"] == turns.get("refused_turns", 0)
    assert v["ambiguous"] == turns.get("ambiguous_turns", 0)
    for key in ("missing", "duplicated", "out_of_order", "changed", "unexpected"):
        assert v[key] == 0, key
    assert v["refused_landed"] == v["ambiguous_broken"] == v["unreadable_sessions"] == 0


def test_sqlite_run_reports_json_and_html_without_content(tmp_path: Path) -> None:
    db = tmp_path / "sim.db"
    out = simulate(
        "--store",
        f"sqlite:///{db}",
        "--duration",
        "3",
        "--sessions",
        "15",
        "--report",
        str(tmp_path / "r.json"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verification OK" in out.stdout and "msg/s" in out.stderr  # progress lines on a pipe
    data = report(tmp_path / "r.json")
    assert_every_turn_accounted_for(data)
    assert data["run"] == data["run"] | {"store": "sqlite", "wal": False, "sessions": 15}
    assert data["throughput"]["power_sessions"] == 1
    assert 200 <= data["throughput"]["power_history_turns"][0] <= 2_000
    assert data["operations"]["load_context"]["count"] > 0
    assert data["operations"]["append_turns"]["p99_ms"] > 0
    assert data["series"]["seconds"] == 3
    assert len(data["series"]["operations"]["append_turns"]["p99_ms"]) == 3
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "append_turns: latency per second" in page
    # Reports hold figures and ids, never what a user wrote (nor the store's path).
    with closing(sqlite3.connect(db)) as conn:
        contents = [
            json.loads(body)["content"]
            for (body,) in conn.execute("SELECT body FROM items WHERE sk LIKE 'TURN#%' LIMIT 50")
        ]
    raw = (tmp_path / "r.json").read_text()
    for content in contents:
        assert content[:40] not in raw and content[:40] not in page
    assert str(tmp_path) not in raw and str(tmp_path) not in page


def test_store_outage_without_a_wal_refuses_appends_and_none_of_them_lands(
    tmp_path: Path,
) -> None:
    out = simulate(
        "--store",
        f"sqlite:///{tmp_path}/sim.db",
        "--duration",
        "4",
        "--sessions",
        "20",
        "--power-share",
        "0",
        "--chaos",
        "store-outage@1s+1.5s",
        "--report",
        str(tmp_path / "r.json"),
        "--no-progress",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    data = report(tmp_path / "r.json")
    assert_every_turn_accounted_for(data)
    # Appends during the outage raised: counted apart, never as acknowledged, and absent.
    assert data["errors"]["append_turns"]["StoreUnavailableError"] > 0
    assert data["verification"]["refused"] > 0
    assert data["degraded_replies"] > 0
    (chaos,) = data["chaos"]
    assert chaos["event"] == "store-outage@1s+1.5s"
    assert chaos["mechanism"] == "FaultyStore around SQLite"
    assert 1.0 <= chaos["applied_at_s"] < 2.0  # on time, give or take a busy event loop
    assert chaos["lifted_at_s"] - chaos["applied_at_s"] == pytest.approx(1.5, abs=0.5)
    assert "store-outage@1s+1.5s: applied at" in out.stdout


@pytest.mark.dynamodb
def test_dynamodb_outage_with_a_wal_loses_no_acknowledged_turn(
    dynamodb_local: DynamoDBLocal, tmp_path: Path
) -> None:
    url = new_dynamodb_table(dynamodb_local)
    out = simulate(
        "--store",
        url,
        "--wal-dir",
        str(tmp_path / "wal"),
        "--duration",
        "4",
        "--sessions",
        "15",
        "--power-share",
        "0",
        "--chaos",
        "store-outage@1s+1.5s,store-throttle:0.5@3s+0.5s",
        "--report",
        str(tmp_path / "r.json"),
        "--no-progress",
        env=FAST_BREAKER,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    data = report(tmp_path / "r.json")
    assert_every_turn_accounted_for(data)
    # The WAL acknowledged every append through the outage; all of them reached the store.
    assert "append_turns" not in data["errors"]
    assert data["turns"]["acked_turns_wal"] == data["turns"]["acked_turns"]
    assert data["wal_backlog_peak"]["records"] > 0
    assert data["run"]["flush_error"] is None
    assert data["degraded_replies"] > 0
    assert [c["mechanism"] for c in data["chaos"]] == ["fault proxy before DynamoDB"] * 2
    assert all(c["lifted_at_s"] is not None for c in data["chaos"])


@pytest.mark.dynamodb
def test_a_missing_table_fails_at_once(
    dynamodb_local: DynamoDBLocal, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"dynamodb://memsdk-no-such-table?region=us-east-1&endpoint={dynamodb_local.endpoint}"
    argv = ["simulate", "--store", url, "--duration", "30", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "StoreError" in err and "memsdk create-table" in err


def test_redis_kill_costs_misses_not_errors_and_spares_the_server(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    out = simulate(
        "--store",
        f"sqlite:///{tmp_path}/sim.db",
        "--redis-url",
        redis_server.url,
        "--duration",
        "4",
        "--sessions",
        "15",
        "--power-share",
        "0",
        "--chaos",
        "redis-kill@1s+1.5s",
        "--report",
        str(tmp_path / "r.json"),
        "--no-progress",
        # A slow fsync on a busy machine must not pass for a Redis-caused error.
        env={"MEMSDK_WRITE_TIMEOUT": "15"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    data = report(tmp_path / "r.json")
    assert_every_turn_accounted_for(data)
    assert data["errors"] == {}  # Redis trouble is a miss, never an error
    health = data["health"]
    assert health["redis"] == "redis"
    assert health["redis_errors"] + health["redis_bypassed"] > 0
    redis_row = next(t for t in data["tiers"] if t["tier"] == "Redis")
    assert redis_row["hits"] > 0  # Redis served before and after the cut
    (chaos,) = data["chaos"]
    assert chaos["mechanism"] == "TCP relay before Redis cut" and chaos["lifted_at_s"]
    # The cut was our relay's: the user's server never went down.
    assert redis_server.running
    with redis_server.client() as client:
        assert client.ping()


def test_a_turn_lost_behind_simulates_back_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sim.db"
    damaged: list[str] = []

    async def lose_one_turn_and_edit_another(ledger: Ledger) -> None:
        acked = [
            (sid, a.turn_ids)
            for sid, entry in ledger.sessions.items()
            for a in entry.appends
            if a.outcome == "acked"
        ]
        (lost_sid, lost_ids), (edited_sid, edited_ids) = acked[0], acked[-1]
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(
                "DELETE FROM items WHERE pk = ? AND sk = ?",
                (f"SESSION#{lost_sid}", f"TURN#{lost_ids[0]}"),
            )
            key = (f"SESSION#{edited_sid}", f"TURN#{edited_ids[-1]}")
            (body,) = conn.execute("SELECT body FROM items WHERE pk = ? AND sk = ?", key).fetchone()
            item = json.loads(body)
            item["content"] += " (edited)"
            conn.execute(
                "UPDATE items SET body = ? WHERE pk = ? AND sk = ?", (json.dumps(item), *key)
            )
            conn.commit()
        damaged.extend([lost_ids[0], edited_ids[-1]])

    real = memsdk.simulate.run_simulation

    async def with_hook(*args: Any, **kwargs: Any) -> Any:
        return await real(*args, before_verify=lose_one_turn_and_edit_another, **kwargs)

    monkeypatch.setattr(memsdk.simulate, "run_simulation", with_hook)
    argv = ["simulate", "--store", f"sqlite:///{db}", "--duration", "2", "--sessions", "5"]
    assert cli.main([*argv, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "verification FAILED" in out
    assert ": 1 missing, 0 duplicated, 0 out of order, 1 changed, 0 unexpected" in out
    assert f"acknowledged turn {damaged[0]} is missing" in out
    assert f"acknowledged turn {damaged[1]} came back changed" in out
    assert "(edited)" not in out


def test_usage_errors_exit_2_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEMSDK_REDIS_URL", raising=False)
    store = f"sqlite:///{tmp_path}/never.db"

    def run(*args: str) -> tuple[int, str]:
        code = cli.main(["simulate", "--store", store, "--no-progress", *args])
        return code, capsys.readouterr().err

    code, err = run("--chaos", "store-outag@1s+2s")
    assert (
        code == 2 and "--chaos: unknown chaos event" in err and "did you mean store-outage?" in err
    )
    code, err = run("--chaos", "store-throttle@1s+1s")
    assert code == 2 and "SQLite store has no throttling" in err
    code, err = run("--duration", "2", "--chaos", "store-outage@5s+1s")
    assert code == 2 and "starts after the run ends (--duration 2s)" in err
    code, err = run("--chaos", "redis-kill@1s")
    assert code == 2 and "pass --redis-url" in err
    code, err = run("--report-html", str(tmp_path / "x.html"))
    assert code == 2 and "--report-html needs --report" in err
    code, err = run("--sessions", "0")
    assert code == 2
    assert not (tmp_path / "never.db").exists()
