"""MkDocs hook: publish the repository's Markdown files that docs/ pages link to.

docs/ pages link to a few files elsewhere in the repository (e.g. docs/benchmarks.md ->
../benchmarks/README.md) so that the links work when the pages are read on a forge. The site
publishes those files as pages too, registered under the path such a link resolves to, so
the links work on the site as well and `mkdocs build --strict` checks them like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

# Repository path (relative to the repo root) -> where the page is published in the site.
REPO_PAGES = {
    "benchmarks/README.md": "benchmarks/method/index.html",
}


def on_files(files: Files, config: Any) -> Files:
    """Add each REPO_PAGES file, reachable as ../<path> from a page at the top of docs/."""
    root = Path(config.config_file_path).parent
    for repo_path, dest_uri in REPO_PAGES.items():
        # INCLUDED explicitly: the default exclude_docs rules drop paths that start with '.'.
        page = File.generated(
            config,
            f"../{repo_path}",
            abs_src_path=str(root / repo_path),
            inclusion=InclusionLevel.INCLUDED,
        )
        page.dest_uri = dest_uri
        files.append(page)
    return files
