# sortrl — `make help` lists the targets. Every target installs what it needs first.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.notebooks-installed
BENCH_STAMP := $(VENV)/.bench-installed
RESULTS ?= results
GRIDS := $(wildcard experiments/pilot/*.toml experiments/*.toml experiments/claims/*.toml)
JUPYTER_ARGS ?=
# executed copies of notebooks/ with their outputs, for a reader (byte-reproducible; see the script's docstring)
EXECUTE_NOTEBOOKS := $(PY) tools/execute_notebooks.py --results $(RESULTS)
export MPLBACKEND := Agg

.PHONY: help install test ablations report verify notebooks lint bench lock clean grids

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,dask]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ and install sortrl with the exact pins of constraints.txt (torch 2.13.0 CPU)
	@echo "sortrl is installed in $(VENV)/: 'source $(VENV)/bin/activate' puts the sortrl command on your PATH"

# JupyterLab is the `notebooks` extra, installed on demand so that `make install` stays lean
$(NOTEBOOKS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[notebooks]"
	touch $(NOTEBOOKS_STAMP)

test: $(STAMP) $(NOTEBOOKS_STAMP) ## Run the test suite (includes lecture parity, the notebooks and JupyterLab)
	$(PY) -m pytest -n 2 --dist loadgroup -q

ablations: $(STAMP) ## Sweep every grid in experiments/ (real training, all seeds), write the report, run the notebooks
	@echo "== make ablations 1/3: training every grid of experiments/ in one queue (about 7 minutes on 2 cores) =="
	$(VENV)/bin/sortrl sweep $(GRIDS) --results $(RESULTS)
	@echo "== make ablations 2/3: the report (figures, REPORT.md, CLAIMS.md, README headline; about 1 minute, seconds for experiments unchanged since the last report) =="
	$(VENV)/bin/sortrl report --results $(RESULTS) --readme README.md
	@echo "== make ablations 3/3: executing the notebooks into $(RESULTS)/notebooks/ (about a minute) =="
	$(EXECUTE_NOTEBOOKS)

# the grid files make ablations sweeps, in its order (benchmarks/ablations_time.py reads them here)
grids:
	@echo $(GRIDS)

verify: $(STAMP) ## Retrain 64 stored runs (seeded sample) and check they equal the stored ones bit for bit
	$(VENV)/bin/sortrl verify $(RESULTS) --sample 64

report: $(STAMP) ## Regenerate figures, tables, REPORT.md and the executed notebooks from the stored runs
	$(VENV)/bin/sortrl report --results $(RESULTS) --readme README.md
	$(EXECUTE_NOTEBOOKS)

# --allow-root: refused as root otherwise (CI runs as root); no effect for other users
notebooks: $(NOTEBOOKS_STAMP) ## Install JupyterLab and open notebooks/ on the runs in results/ (prints the URL)
	@test -d $(RESULTS)/runs || echo "note: no stored runs in $(RESULTS)/runs: run 'make ablations' first (executed copies: $(RESULTS)/notebooks/)"
	@echo "JupyterLab on notebooks/ with SORTRL_RESULTS=$(abspath $(RESULTS)); open the URL it prints below; Ctrl-C stops it"
	SORTRL_RESULTS=$(abspath $(RESULTS)) $(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR)/notebooks \
	  --ServerApp.allow_root=True $(JUPYTER_ARGS)

lint: $(STAMP) ## Check style with ruff
	$(VENV)/bin/ruff check sortrl tests benchmarks tools
	$(VENV)/bin/ruff format --check sortrl tests benchmarks tools

# psutil (the benchmark's process-tree memory) is the `bench` extra, installed on demand
$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Measure engine throughput and sweep wall time (writes results/bench.csv)
	$(PY) benchmarks/bench.py --results $(RESULTS) --readme docs/engine.md

lock: $(STAMP) $(NOTEBOOKS_STAMP) ## Rewrite constraints.txt from the current environment
	@{ echo "# Exact pins for a reproducible study (pip constraints); ranges live in pyproject.toml."; \
	   echo "# Regenerate: make lock"; \
	   $(PY) -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; } > constraints.txt

clean: ## Remove raw run data (results/runs/) and caches; figures and tables stay
	rm -rf $(RESULTS)/runs .pytest_cache .ruff_cache
