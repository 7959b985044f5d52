"""scripts/check_doc_refs.py: a reference to a file the repository lacks fails `make docs`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_doc_refs.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_doc_refs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


refs = _load()


def write(root: Path, files: dict[str, str]) -> Path:
    """Create each file under root; return root."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# A small repository whose every reference resolves.
GOOD = {
    "README.md": "See [the docs](docs/index.md) and [the method](benchmarks/README.md).\n",
    "docs/index.md": (
        "# Home\n"
        "[Other](other.md#a-heading), [site](https://example.com/x.md), [top](#home).\n"
        "The client is memsdk/client.py; its log is in wal/log.py; tests in tests/unit/.\n"
        "`make demo` writes .cache/demo-report.json; `make bench` benchmarks/results/latest.md.\n"
        "Turns set aside go to `wal_dir/rejected/rejected.jsonl`; see ../benchmarks/README.md.\n"
        "msgspec.json.Encoder is code, not a file.\n"
    ),
    "docs/other.md": "# A heading\n",
    "benchmarks/README.md": "# Method\n",
    "mkdocs.yml": "nav:\n  - Home: index.md\n  - Method: ../benchmarks/README.md\n",
    "pyproject.toml": "# The peer benchmark (benchmarks/peer.py) needs LangChain.\n",
    "benchmarks/peer.py": '"""Peer benchmark; see docs/other.md."""\n',
    "memsdk/__init__.py": "",
    "memsdk/client.py": (
        '"""The client (docs/index.md)."""\n'
        "# Records go through wal/log.py (memsdk/wal/log.py).\n"
        'NOT_PROSE = "a string that names DESIGN.md is code, not a reference"\n'
    ),
    "memsdk/wal/log.py": "# The log; its confirmed records are replayed by ../client.py.\n",
    "tests/unit/test_x.py": '"""Needs conftest.py and property/machine.py."""\n',
    "tests/conftest.py": "",
    "tests/property/machine.py": "",
}


def test_a_repository_whose_references_all_resolve_passes(tmp_path: Path) -> None:
    root = write(tmp_path, GOOD)
    assert refs.check(root) == []
    assert refs.main(["check_doc_refs.py", str(root)]) == 0


@pytest.mark.parametrize(
    ("name", "text", "line", "ref"),
    [
        ("docs/index.md", "# Home\n\nRead [the design](../DESIGN.md).\n", 3, "../DESIGN.md"),
        ("docs/index.md", "# Home\n[Gone](gone.md#x)\n", 2, "gone.md#x"),
        ("README.md", "Faults: see FAULTS.md, row 7.\n", 1, "FAULTS.md"),
        ("docs/other.md", "# A heading\nCopied from ../shared/STYLE.md\n", 2, "../shared/STYLE.md"),
        ("CHANGELOG.md", "- moved to docs/xyz.md\n", 1, "docs/xyz.md"),
        ("pyproject.toml", "# see memsdk/foo.py\n", 1, "memsdk/foo.py"),
        ("mkdocs.yml", "nav:\n  - Gone: gone.md\n", 2, "gone.md"),
        (
            "memsdk/client.py",
            '"""The client.\n\nThe contract: DESIGN.md section 6.\n"""\n',
            3,
            "DESIGN.md",
        ),
        (
            "memsdk/wal/log.py",
            "x = 1\n# as in tests/unit/test_gone.py\n",
            2,
            "tests/unit/test_gone.py",
        ),
        (
            "benchmarks/peer.py",
            "def f() -> None:\n    '''See ../shared/ for it.'''\n",
            2,
            "../shared/",
        ),
    ],
)
def test_a_dangling_reference_fails_with_its_file_and_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    line: int,
    ref: str,
) -> None:
    root = write(tmp_path, {**GOOD, name: text})
    assert [str(miss) for miss in refs.check(root)] == [f"{name}:{line}: {ref}"]
    assert refs.main(["check_doc_refs.py", str(root)]) == 1
    assert f"{name}:{line}: {ref}" in capsys.readouterr().err


def test_the_repository_itself_has_no_dangling_reference() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
