# sortrl — `make help` lists the targets. Every target installs what it needs first.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULTS ?= results
GRIDS := $(wildcard experiments/*.toml)
export MPLBACKEND := Agg

.PHONY: help install test ablations report lint bench lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,dask]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ and install sortrl with the exact pins of constraints.txt (torch 2.13.0 CPU)

test: $(STAMP) ## Run the test suite (includes lecture parity and the notebooks)
	$(PY) -m pytest -n 2 --dist loadgroup -q

ablations: $(STAMP) ## Sweep every grid in experiments/ (real training, all seeds), then write the report
	$(VENV)/bin/sortrl sweep $(GRIDS) --results $(RESULTS)
	$(VENV)/bin/sortrl report --results $(RESULTS) --readme README.md

report: $(STAMP) ## Regenerate figures, tables and REPORT.md from the stored runs
	$(VENV)/bin/sortrl report --results $(RESULTS) --readme README.md

lint: $(STAMP) ## Check style with ruff
	$(VENV)/bin/ruff check sortrl tests benchmarks
	$(VENV)/bin/ruff format --check sortrl tests benchmarks

$(VENV)/.installed-bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench ## Measure engine throughput and sweep wall time (writes results/bench.csv)
	$(PY) benchmarks/bench.py --results $(RESULTS) --readme README.md

lock: $(STAMP) ## Rewrite constraints.txt from the current environment
	@{ echo "# Exact pins for a reproducible study (pip constraints); ranges live in pyproject.toml."; \
	   echo "# Regenerate: make lock"; \
	   $(PY) -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; } > constraints.txt

clean: ## Remove raw run data (results/runs/) and caches; figures and tables stay
	rm -rf $(RESULTS)/runs .pytest_cache .ruff_cache
