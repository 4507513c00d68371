# vaebench: `make bench` installs everything and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned to the CPU build installed first, so nothing pulls CUDA wheels here.
TORCH  ?= torch==2.13.0

.PHONY: install test bench reproduce baseline regress track profile microbench mutants lint data clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv with torch (CPU) and vaebench[dev]

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

test: install  ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q --durations=15  # the slowest, to keep CI well under 15 min

SUITE  ?= bench
BUDGET ?= cpu

bench: install  ## the main job: suites/bench.toml at budget cpu through Ray, then its report
	@$(MAKE) --no-print-directory reproduce SUITE=bench BUDGET=cpu

reproduce: install  ## run SUITE at BUDGET (e.g. make reproduce SUITE=iwae_table1 BUDGET=paper), then report it
	$(VENV)/bin/vaebench run $(SUITE) --budget $(BUDGET); status=$$?; \
	$(VENV)/bin/vaebench report --suite $(SUITE) && exit $$status

# Baselines: results/baselines/<suite>.parquet, committed. Refresh one only when a change is
# meant to move the numbers (a fixed bug, a new default, a new torch), never to make a
# regression go away, and say why in the commit message.
baseline: install  ## rerun SUITE at BUDGET (default bench/cpu) and refresh results/baselines/SUITE.parquet
	rm -rf results/baseline-run
	$(VENV)/bin/vaebench run $(SUITE) --budget $(BUDGET) --results results/baseline-run
	$(VENV)/bin/vaebench baseline $(SUITE) --budget $(BUDGET) --results results/baseline-run

regress: install  ## run SUITE at BUDGET and compare with its committed baseline (exit 1 on a regression)
	rm -rf results/regress
	$(VENV)/bin/vaebench run $(SUITE) --budget $(BUDGET) --results results/regress
	$(VENV)/bin/vaebench compare results/baselines/$(SUITE).parquet results/regress

track: install  ## run SUITE at BUDGET at this commit, add it to results/history (MACHINE= names this machine), list the steps
	$(VENV)/bin/vaebench track $(SUITE) --budget $(BUDGET) $(if $(MACHINE),--machine $(MACHINE))
	$(VENV)/bin/vaebench steps $(SUITE) $(if $(MACHINE),--machine $(MACHINE))

profile: install  ## profile the default variant (bench suite, iwae-k50, budget smoke) on this machine
	$(VENV)/bin/vaebench profile bench --variant iwae-k50 --budget smoke --steps 20

microbench: install  ## pytest-benchmark: training step vs a plain PyTorch step (not in `make test`)
	$(PY) -m pytest -q benchmarks --benchmark-autosave --benchmark-columns=min,median,max,rounds $(ARGS)

mutants: install  ## run the mutation check (not in make test; ~10 min on 2 cores)
	$(PY) tools/mutants.py $(ARGS)

lint: install  ## ruff
	$(VENV)/bin/ruff check bench tests benchmarks tools examples

data: install  ## fetch and verify MNIST, generate the shapes grids, into $$VAEBENCH_DATA (default ~/.cache/vaebench)
	$(VENV)/bin/vaebench data fetch mnist
	$(VENV)/bin/vaebench data fetch shapes_small

clean:  ## remove the virtual environment and caches (results are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
