# pke-vsphere: `make demo` runs the whole system on this machine, `make test` checks it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo down test lint typecheck pytest venv system-deps simulator clean

demo: venv system-deps simulator
	$(BIN)/python -m sim.demo up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m sim.demo down; fi

test: lint typecheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv system-deps simulator
	$(BIN)/pytest

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	./scripts/install-system-deps.sh

simulator: venv system-deps
	$(BIN)/python -c 'from pathlib import Path; from sim import vcenter; print("vCenter simulator:", vcenter.build(Path(".state")))'

clean: down
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache *.egg-info
