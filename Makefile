# Two commands do all set-up on a fresh machine (Python 3.11+, package registry):
#   make demo   runs the real job on sample_data/ against the embedded simulator
#   make test   runs ruff, mypy and every test (interop tests included)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NODE_DIR := tests/interop

.PHONY: demo test test-fast lint typecheck bench clean venv npm airflow-test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

npm: $(NODE_DIR)/node_modules/.installed

demo: venv
	$(BIN)/batch-cancel demo

lint: venv
	$(BIN)/ruff check batch_cancel tests benchmarks
	$(BIN)/mypy

# Chromium (for the evidence-page test) is installed by scripts/ensure-chromium.sh, which
# says so first; where it cannot be (no apt, no root) the test is skipped with its reason
# (-rs prints it), except in CI, where it fails. Three xdist workers: most tests wait on
# the simulator's clock, not the CPU (measured on 2 cores: 595 tests in 194 s, 432 s serially).
test: venv npm lint
	bash scripts/ensure-chromium.sh || echo "make test: WARNING: no Chromium; the evidence-page test will be skipped (fails in CI)" >&2
	$(BIN)/python -m pytest -q -rs -n 3

# the inner loop: unit tests and quick in-process runs against the simulator; no
# subprocess, interop or slow tests (make test runs those too); 4 workers, as these
# tests mostly wait on the simulator's clock, not on the CPU
test-fast: venv
	$(BIN)/python -m pytest -q -n 4 -m "not slow and not interop and not subprocess"

bench: venv
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.fleet
	$(BIN)/python -m benchmarks.gws_throttles
	$(BIN)/python -m benchmarks.journal_writes
	$(BIN)/python -m benchmarks.http_clients
	$(BIN)/python -m benchmarks.object_storage
	$(BIN)/python -m benchmarks.workbooks

clean:
	rm -rf .venv-airflow
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache

# The Airflow DAG (jobs/airflow/) under real Apache Airflow, in a venv of its own
# so the main suite never needs Airflow. Measured: ~95 s to build the venv from
# an empty pip cache, ~40 s for the dag.test() tests and ~75 s for the fleet DAG under a
# real scheduler (API server, DAG processor, scheduler with the LocalExecutor, on PostgreSQL).
AIRFLOW_VERSION := 3.3.2
AF_VENV := .venv-airflow

$(AF_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AF_VENV)
	$(AF_VENV)/bin/python -m pip install -q --upgrade pip
	$(AF_VENV)/bin/python -m pip install -q "apache-airflow==$(AIRFLOW_VERSION)" -e '.[s3]' \
		pytest pytest-timeout pytest-asyncio 'moto[server]>=5,<6'
	touch $@

airflow-test: $(AF_VENV)/.installed
	$(AF_VENV)/bin/python -m pytest -q -p no:cacheprovider jobs/airflow/tests
