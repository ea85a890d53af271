# Two commands matter: `make demo` and `make test`. Everything installs from this repo's files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# torch first, pinned: a CPU build on local disk. A bare `torch` would pull a CUDA build.
TORCH_PIN := torch==2.13.0
# `make test` on two processes: most integration time is spent waiting on real brokers,
# databases and child processes, so two workers on two cores keep CI under 30 minutes.
# Each worker starts its own broker; every test has its own topics and databases.
TEST_WORKERS ?= 2

.PHONY: setup tools test test-unit test-integration lint bench demo clean schema

setup: $(STAMP) tools

# System tools the tests need (promtool, wrk, stunnel4); installed as root with apt, else named.
tools:
	.ci/install-tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist worksteal

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/ingest.py

demo: $(STAMP)  # the demo needs no system tools
	$(PY) -m dispatchloop.cli demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

schema: $(STAMP)
	$(PY) -c "import json; from dispatchloop.events import outcome_json_schema; print(json.dumps(outcome_json_schema(), indent=2))" > docs/schema/dispatch-outcome-v1.json
	$(PY) -c "import json; from dispatchloop.events import promotion_json_schema; print(json.dumps(promotion_json_schema(), indent=2))" > docs/schema/model-promoted-v1.json
