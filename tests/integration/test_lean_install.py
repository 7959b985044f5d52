"""`pip install memsdk` without extras: the SQLite store, the client and the `memsdk` command
work, and nothing of the DynamoDB or Redis backends is installed (a fresh venv, ~30 s)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What the DynamoDB and Redis extras bring; none may be importable in the bare install.
EXTRA_MODULES = ("aioboto3", "aiobotocore", "botocore", "aiohttp", "redis", "tenacity")


@dataclass(frozen=True)
class LeanVenv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def memsdk(self) -> Path:
        return self.root / "venv" / "bin" / "memsdk"

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command outside the repository, so only the installed memsdk is importable."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**env, "PYTHONNOUSERSITE": "1"},
        )

    def script(self, source: str) -> subprocess.CompletedProcess[str]:
        """Run a Python script in the venv."""
        return self.run(self.python, "-c", textwrap.dedent(source))


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeanVenv]:
    """One venv per module with `pip install <working tree>`: no extras, not editable."""
    root = tmp_path_factory.mktemp("lean")
    # Build from a copy: pip builds in the source tree, and setuptools' build/ directory
    # there can keep modules the tree no longer has (and other runs may share the tree).
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "memsdk", src / "memsdk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    venv = LeanVenv(root)
    made = venv.run(sys.executable, "-m", "venv", root / "venv")
    assert made.returncode == 0, made.stderr
    installed = venv.run(
        venv.python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-input",
        "--disable-pip-version-check",
        src,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield venv


def test_bare_install_has_no_backend_extras(lean: LeanVenv) -> None:
    out = lean.script(
        f"""
        import importlib, json, sys
        present = []
        for name in {EXTRA_MODULES!r}:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
            present.append(name)
        import memsdk
        loaded = sorted(m for m in sys.modules if m.startswith("memsdk."))
        print(json.dumps({{"present": present, "file": memsdk.__file__, "loaded": loaded}}))
        """
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["present"] == []
    assert Path(found["file"]).is_relative_to(lean.root / "venv"), found["file"]
    # The command's tools stay out of `import memsdk`.
    heavy = {"memsdk.cli", "memsdk.simulate", "memsdk.faultproxy", "memsdk.relay"}
    assert [m for m in found["loaded"] if ".".join(m.split(".")[:2]) in heavy] == []


def test_sqlite_quickstart_runs_in_the_bare_install(lean: LeanVenv, tmp_path: Path) -> None:
    out = lean.script(
        f"""
        import asyncio
        from memsdk import Config, MemoryClient, Turn

        async def main() -> None:
            config = Config(store="sqlite:///{tmp_path}/memory.db")
            async with MemoryClient(config) as mem:
                ctx = await mem.load_context("sess-abc123", customer_id="C123")
                assert ctx.meta is None and ctx.turns == [], ctx
                await mem.append_turns("sess-abc123", [
                    Turn(role="user", content="Show me horror manga"),
                    Turn(role="assistant", content="Here are 3..."),
                ], customer_id="C123")
            async with MemoryClient(config) as mem:  # a new client: read from the file
                ctx = await mem.load_context("sess-abc123", last_n=5, expect_existing=True)
            got = [(t.role, t.content) for t in ctx.turns]
            assert got == [("user", "Show me horror manga"), ("assistant", "Here are 3...")], got
            assert ctx.meta is not None and ctx.meta.turn_count == 2, ctx.meta
            print("quickstart ok")

        asyncio.run(main())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "quickstart ok"


def test_memsdk_command_simulates_on_sqlite_in_the_bare_install(
    lean: LeanVenv, tmp_path: Path
) -> None:
    helped = lean.run(lean.memsdk, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "simulate" in helped.stdout
    out = lean.run(
        lean.memsdk,
        "simulate",
        "--store",
        f"sqlite:///{tmp_path}/sim.db",
        "--duration",
        "2",
        "--sessions",
        "5",
        "--no-progress",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verification OK" in out.stdout


REFUSAL = """
import asyncio
from memsdk import Config, MemoryClient

async def main(config: Config) -> None:
    try:
        async with MemoryClient(config):
            print("opened")
    except Exception as exc:
        print(type(exc).__name__ + ": " + str(exc))
"""


def refusal(lean: LeanVenv, config: str) -> str:
    """What opening a MemoryClient on `config` (Config keyword arguments, as Python) says."""
    out = lean.script(REFUSAL + f"\nasyncio.run(main(Config({config})))\n")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_dynamodb_without_its_extra_is_a_config_error(lean: LeanVenv) -> None:
    said = refusal(
        lean, "store='dynamodb://memsdk-lean?region=us-east-1&endpoint=http://127.0.0.1:9'"
    )
    assert said.startswith("ConfigError: ") and "memsdk[dynamodb]" in said, said


def test_redis_without_its_extra_is_a_config_error(lean: LeanVenv, tmp_path: Path) -> None:
    said = refusal(lean, f"store='sqlite:///{tmp_path}/r.db', redis_url='redis://127.0.0.1:9'")
    assert said.startswith("ConfigError: ") and "memsdk[redis]" in said, said


def test_create_table_without_the_dynamodb_extra_names_it(lean: LeanVenv) -> None:
    out = lean.run(
        lean.memsdk, "create-table", "--store", "dynamodb://memsdk-lean?region=us-east-1"
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ConfigError" in out.stderr and "memsdk[dynamodb]" in out.stderr, out.stderr
