# Two commands do all set-up on a fresh machine with Python >= 3.11 and pip:
#   make demo   create .venv, install, run the demo
#   make test   same set-up, then lint and the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHARED ?= ../shared

.PHONY: demo test notebooks conformance bench lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/twinrx demo --out demo-output.zarr

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two pytest runs, each printing its summary line: the fits (large XLA programs, Bayesian
# samplers) apart from the rest. Two workers each (pytest-xdist): on 2 cores the suite
# takes 0.6x the time of one process (XLA compiles on one thread).
test: lint
	$(BIN)/python -m pytest -m "not fitting" -n 2
	$(BIN)/python -m pytest -m fitting -n 2

# The worked analyses (notebooks/*.py, jupytext percent format), each run as a script in a
# fresh process; a table of run times; exit 1 if one fails or takes over 5 minutes.
notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py

conformance: $(STAMP)
	$(BIN)/python -m twinrx.testing.conformance --shared $(SHARED) --report conformance-report.json

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/simulate_cohort.py

clean:
	rm -rf $(VENV) demo-output.zarr conformance-report.json .pytest_cache .ruff_cache
