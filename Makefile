# Two entry points: `make demo` and `make test`. Each builds .venv first if it is missing.
# `make docs` builds the documentation site strictly; `make dist` builds and checks the wheel and sdist
# and runs the demo from the wheel installed in a fresh virtual environment (CI runs all three).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all docs tables dist mutants chromium clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featinv demo

test: $(STAMP) chromium
	$(BIN)/python -m pytest

test-all: $(STAMP) chromium
	$(BIN)/python -m pytest -m ""

# mkdocs build --strict: a broken link, a missing page or a bad API reference fails the build.
docs: $(STAMP)
	$(BIN)/python bench/tables.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# Plant each bug of mutants/mutants.yaml in turn, run the tests that must catch it, restore the
# tree; prints caught / not caught (not part of make test: a few minutes).
mutants: $(STAMP)
	$(BIN)/python mutants/run.py

# Rewrite the documentation's result tables from the committed result files (bench/results/).
tables: $(STAMP)
	$(BIN)/python bench/tables.py

# The wheel is what users install: build it, check it, install it (not editable) into a fresh
# virtual environment outside the checkout and run the demo from there.
DIST_VENV ?= /tmp/featinv-dist-venv
dist: $(STAMP)
	rm -rf dist $(DIST_VENV)
	$(BIN)/python -m build --sdist --wheel --outdir dist . >/dev/null
	$(BIN)/python -m twine check --strict dist/*
	$(BIN)/check-wheel-contents dist/*.whl
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c requirements/constraints.txt "$$(ls dist/*.whl)[offline]"
	cd $(DIST_VENV) && bin/featinv demo --out $(DIST_VENV)/demo-out

# The report test opens report.html in Debian's chromium. Installed when missing and we are root
# (as in CI); otherwise that one test skips, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "note: chromium is not installed; the browser test will skip (apt-get install chromium)"

clean:
	rm -rf $(VENV) featinv-demo .pytest_cache site dist
