"""Fail on a reference to a file that is not in the repository (run by `make docs`).

The docs, the project metadata and the code's comments must stand on their own: a link to,
or a mention of, a file the repository does not hold sends a reader nowhere. Scanned: the
Markdown pages (docs/, README.md, benchmarks/README.md, CHANGELOG.md), pyproject.toml,
mkdocs.yml, and the comments and docstrings of the Python files under memsdk/, tests/,
benchmarks/ and scripts/.

How a reference resolves:
- a relative Markdown link: against the linking file, as a forge or MkDocs resolves it;
- a mention that starts with ./ or ../: against the mentioning file's folder;
- a mention whose first segment is a top-level entry of the repository (docs/quickstart.md,
  memsdk/client.py): against the repository root;
- any other mention (breaker.py, wal/log.py, property/machine.py): it names some file or
  folder of the repository whose path ends with it.
mkdocs.yml's paths are relative to docs/, its docs_dir. URLs and absolute paths are not
checked; paths a run creates are allowed by RUNTIME_PATHS and RUNTIME_NAMES below.

Usage: python scripts/check_doc_refs.py [ROOT]   (exit 0: all found; 1: each miss listed)
Standard library only: it runs before anything but Python is installed.
"""

from __future__ import annotations

import ast
import io
import os
import re
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MARKDOWN = ("docs/*.md", "README.md", "benchmarks/README.md", "CHANGELOG.md")
TEXT = ("pyproject.toml", "mkdocs.yml")
PYTHON_DIRS = ("memsdk", "tests", "benchmarks", "scripts")
# Folders that are not the repository's content (tools' caches, build output, the venv).
SKIP_DIRS = {
    ".git",
    ".venv",
    ".cache",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
    "site",
    "build",
    "dist",
}

# Paths a run creates, not the repository: naming one is not a dangling reference.
# A prefix matches a mention that starts with it or contains it after a slash.
RUNTIME_PATHS: dict[str, str] = {
    ".cache/": "make demo's database, WAL and reports (git-ignored)",
    ".venv/": "the virtualenv `make install` creates",
    "site/": "the documentation site `make docs` builds (git-ignored)",
    "build/": "setuptools' build folder (git-ignored)",
    "dist/": "built wheels and sdists (git-ignored)",
    "benchmarks/results/": "the benchmark tables `make bench` writes (git-ignored)",
    "wal_dir/": "the folder the wal_dir setting names, created by the client",
    "DIR/": "the runbook's placeholder for the wal_dir folder",
    "rejected/": "the WAL's folder for turns set aside, created on the first one",
    "quarantine/": "the WAL's folder for unreadable segments, created on the first one",
    "out/": "an example output folder in a command line (--report out/run.json)",
    ".hypothesis/": "Hypothesis's example database, written by the property tests",
}

# File names only a run creates, named where the docs and comments describe them.
RUNTIME_NAMES: dict[str, str] = {
    "rejected.jsonl": "the WAL's log of turns set aside (inside rejected/)",
    "out.json": "an example --json output in a command line",
    "out.md": "an example --markdown output in a command line",
}

# A Markdown link or image: [text](target) or ![alt](target "title"); and [label]: target.
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+|\bmailto:\S+")
# A file-like name: optional ./ or ../ steps, then segments, ending in a known extension,
# not followed by .attr (msgspec.json.Encoder is code) nor by a glob or a <placeholder>.
_EXT = r"(?:md|py|pyi|toml|ya?ml|json|jsonl|sh|txt|cfg|ini|html|lock|typed)"
_FILE = re.compile(
    r"(?<![\w/.@$~-])((?:\.{1,2}/)*[A-Za-z0-9_][\w.-]*(?:/[\w.-]+)*\." + _EXT + r")"
    r"(?![\w/*{<-]|\.\w)"
)
# A folder-like path: ./ or ../ steps then segments, or segments ending in a slash.
_DIR = re.compile(
    r"(?<![\w/.@$~-])((?:\.{1,2}/)+[\w.-]+(?:/[\w.-]+)*/?|[\w.-]+(?:/[\w.-]+)*/)(?![\w*{<-])"
)


@dataclass(frozen=True)
class Miss:
    """One reference that resolves to nothing in the repository."""

    path: str
    line: int
    ref: str

    def __str__(self) -> str:
        """file:line: reference, as a compiler prints an error."""
        return f"{self.path}:{self.line}: {self.ref}"


class Repo:
    """The repository's files and folders, by path relative to its root."""

    def __init__(self, root: Path) -> None:
        """Index every file and folder under root outside SKIP_DIRS."""
        self.root = root.resolve()
        self.paths: set[str] = set()
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            rel = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else f"{rel}/"
            self.paths.update(f"{prefix}{name}" for name in (*dirs, *files))

    def has(self, path: Path) -> bool:
        """Whether path (absolute) is a file or folder of the repository."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            return False
        rel = resolved.relative_to(self.root).as_posix()
        return rel == "." or rel in self.paths

    def has_suffix(self, ref: str) -> bool:
        """Whether some file or folder's path is ref or ends with /ref."""
        ref = ref.strip("/")
        return ref in self.paths or any(p.endswith(f"/{ref}") for p in self.paths)


def runtime(ref: str) -> bool:
    """Whether ref names a path a run creates (RUNTIME_PATHS, RUNTIME_NAMES)."""
    ref = ref.removeprefix("./")
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    return name in RUNTIME_NAMES or any(
        ref.startswith(prefix) or f"/{prefix}" in f"/{ref}" for prefix in RUNTIME_PATHS
    )


def sources(root: Path) -> Iterator[Path]:
    """Each file the check scans: Markdown and text first, then Python."""
    for pattern in (*MARKDOWN, *TEXT):
        yield from (p for p in sorted(root.glob(pattern)) if p.is_file())
    for folder in PYTHON_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            if not SKIP_DIRS.intersection(path.relative_to(root).parts):
                yield path


def python_prose(text: str) -> Iterator[tuple[int, str]]:
    """The comment and docstring lines of a Python source, each with its line number."""
    lines = text.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                for number in range(first.lineno, (first.end_lineno or first.lineno) + 1):
                    yield number, lines[number - 1]


def mentions(line: str) -> Iterator[str]:
    """The file-like and folder-like paths a line of prose names (URLs removed)."""
    line = _URL.sub(" ", line)
    for match in _FILE.finditer(line):
        ref = match.group(1)
        stem = ref.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        # A dotted name with a data extension is code (policy_document.memsdk_runtime.json).
        if "/" not in ref and "." in stem and not ref.endswith((".md", ".py")):
            continue
        yield ref
    for match in _DIR.finditer(_FILE.sub(" ", line)):
        yield match.group(1)


def _link_ok(repo: Repo, base: Path, target: str) -> bool:
    """Whether a Markdown link target is a URL, an anchor, or a path of the repository."""
    if _URL.fullmatch(target) or target.startswith(("#", "/")) or ":" in target.split("/")[0]:
        return True
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return True
    resolved = (base / path).resolve()
    inside = resolved.is_relative_to(repo.root)
    return inside and (repo.has(resolved) or runtime(resolved.relative_to(repo.root).as_posix()))


def _mention_ok(repo: Repo, base: Path, ref: str) -> bool:
    """Whether a bare mention names a path of the repository (see the module docstring)."""
    if runtime(ref):
        return True
    if ref.startswith(("./", "../")):
        return repo.has(base / ref)
    if "/" in ref.strip("/") and ref.split("/", 1)[0] in repo.paths:
        return repo.has(repo.root / ref)
    return repo.has_suffix(ref)


def check_file(repo: Repo, source: Path) -> list[Miss]:
    """Each reference in one file that names nothing in the repository."""
    text = source.read_text(encoding="utf-8")
    rel = source.resolve().relative_to(repo.root).as_posix()
    base = repo.root / "docs" if rel == "mkdocs.yml" else source.resolve().parent
    if source.suffix == ".py":
        prose: Iterator[tuple[int, str]] = python_prose(text)
    else:
        prose = enumerate(text.splitlines(), start=1)
    misses: set[Miss] = set()
    for number, line in prose:
        if source.suffix == ".md":
            for pattern in (_LINK, _REF_DEF):
                for match in pattern.finditer(line):
                    if not _link_ok(repo, base, match.group(1)):
                        misses.add(Miss(rel, number, match.group(1)))
            line = _LINK.sub(" ", line)
        for ref in mentions(line):
            if not _mention_ok(repo, base, ref):
                misses.add(Miss(rel, number, ref))
    return sorted(misses, key=lambda m: (m.line, m.ref))


def check(root: Path) -> list[Miss]:
    """Every dangling reference under root, file by file."""
    repo = Repo(root)
    return [miss for source in sources(repo.root) for miss in check_file(repo, source)]


def main(argv: list[str]) -> int:
    """Print each dangling reference to stderr; 1 if there is one, else 0."""
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    misses = check(root)
    for miss in misses:
        print(miss, file=sys.stderr)
    if misses:
        print(f"{len(misses)} reference(s) to files not in the repository", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
