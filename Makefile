# Two entry points: `make demo` and `make test`. Each builds .venv first if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all chromium clean

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

# The report test opens report.html in Debian's chromium. Installed when missing and we are root
# (as in CI); otherwise that one test skips, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "note: chromium is not installed; the browser test will skip (apt-get install chromium)"

clean:
	rm -rf $(VENV) featinv-demo .pytest_cache
