# pke-vsphere: `make demo` runs the whole system on this machine, `make test` checks it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo down test test-unit lint imports typecheck pytest reliability bench venv system-deps simulator cloud-init-schema clean

demo: venv system-deps simulator
	$(BIN)/python -m sim.demo up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m sim.demo down; fi

test: lint imports typecheck pytest

# The fast tier: every test that needs no server (planning, validation, rendering,
# protocol, ...), in seconds. `make test` runs these too.
test-unit: venv system-deps cloud-init-schema
	$(BIN)/pytest -q -m unit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The layers (pyproject.toml, [tool.importlinter]): each imports only from those below it.
imports: venv
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

# Every test, in PYTEST_WORKERS processes (pytest-xdist), each with a stack of its own
# (Temporal, the simulator, etcd, the node API, simulated nodes); a file's tests stay
# in one process, as its module fixtures expect.
PYTEST_WORKERS ?= 2
pytest: venv system-deps simulator cloud-init-schema
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

# The fault-injection tests, RUNS times with a different fault seed each, and their figures.
RUNS ?= 3
FAULT_TESTS := tests/test_kill_points.py tests/test_crash_resume.py tests/test_clone_resume.py \
	tests/test_vcenter_faults.py tests/test_temporal_restart.py
reliability: venv system-deps simulator
	rm -f .state/reliability.jsonl
	for seed in $$(seq 1 $(RUNS)); do \
		PKE_VSPHERE_FAULT_SEED=$$seed PKE_VSPHERE_RELIABILITY_LOG=.state/reliability.jsonl \
			$(BIN)/pytest -q -o addopts= $(FAULT_TESTS) || exit 1; \
	done
	$(BIN)/python scripts/reliability_report.py .state/reliability.jsonl

# Create and delete clusters of 3 + 20 and 3 + 200 nodes on a stack of their own,
# with realistic simulator durations, and print the figures (sim/bench.py).
# BENCH_ARGS="--thousand" adds 3 + 997; "--kill-worker 200" a create whose worker is killed;
# "--split" runs the worker as two processes (--role workflows, --role vcenter).
BENCH_ARGS ?=
bench: venv system-deps simulator
	$(BIN)/python -m sim.bench $(BENCH_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	./scripts/install-system-deps.sh

cloud-init-schema: system-deps
	./scripts/fetch-cloud-init-schema.sh

simulator: venv system-deps
	$(BIN)/python -c 'from pathlib import Path; from sim import vcenter; print("vCenter simulator:", vcenter.build(Path(".state")))'

clean: down
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache *.egg-info
