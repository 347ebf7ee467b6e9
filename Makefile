# cxrkit — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== creating $(VENV) and installing cxrkit (editable, dev extras); takes a few minutes"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(BIN)/cxrkit demo --out runs/demo --overwrite

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_prepare.py
	bash benchmarks/fresh_clone_demo.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
