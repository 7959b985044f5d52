# One task runner for people and CI. `make demo` and `make test` are the README's commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The benchmarks' peer packages (LangChain) come on top, only where a benchmark runs.
BENCH_STAMP := $(VENV)/.installed-bench
# The documentation tools (MkDocs, mkdocstrings), only where the site is built.
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install demo test chaos lint typecheck docs bench bench-smoke clean dynamodb-local tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,dynamodb,redis,otel]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,dynamodb,redis,otel,bench]'
	touch $(BENCH_STAMP)

install: $(STAMP)

# The docs extra, on top of what the install stamp installs (one resolution for all of it).
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,dynamodb,redis,otel,docs]'
	touch $(DOCS_STAMP)

tools:
	scripts/ensure-tools.sh

dynamodb-local: tools
	scripts/fetch-dynamodb-local.sh

# The seed workload on the embedded store, through a WAL, with a 3 s store outage; every
# acknowledged turn is read back. Report: .cache/demo-report.json and .html.
demo: $(STAMP)
	mkdir -p .cache
	$(BIN)/memsdk simulate --store sqlite:///.cache/demo.db --duration 10 --sessions 50 \
		--wal-dir .cache/demo-wal --chaos store-outage@3s+3s --report .cache/demo-report.json

lint: $(STAMP)
	$(BIN)/ruff check memsdk tests benchmarks
	$(BIN)/ruff format --check memsdk

typecheck: $(STAMP)
	$(BIN)/mypy --strict memsdk

# The documentation site into site/ (git-ignored). First, no page, comment or docstring may
# name a file the repository does not hold (scripts/check_doc_refs.py). --strict: a broken
# link or anchor, or a docstring mkdocstrings cannot render, fails the build.
# NO_MKDOCS_2_WARNING silences Material's banner about MkDocs 2.0 (printed, not a warning).
docs: $(DOCS_STAMP)
	$(BIN)/python scripts/check_doc_refs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(STAMP) dynamodb-local lint typecheck docs
	$(BIN)/pytest -q -p no:cacheprovider
	$(MAKE) bench-smoke

# The full-length chaos runs (e.g. issue 6's 30 s outage); `make test` runs short versions.
chaos: $(STAMP) dynamodb-local
	$(BIN)/pytest -q -p no:cacheprovider -m long -s

bench: $(BENCH_STAMP) dynamodb-local
	$(BIN)/python -m benchmarks --markdown benchmarks/results/latest.md

# CI's benchmark smoke (~1-2 min): fails on a ratio regression against benchmarks/expected.json,
# never on absolute times. The tables go to benchmarks/results/smoke.md, the check to stderr.
bench-smoke: $(BENCH_STAMP) dynamodb-local
	$(BIN)/python -m benchmarks --smoke --json benchmarks/results/smoke.json \
		--markdown benchmarks/results/smoke.md > /dev/null

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache site
