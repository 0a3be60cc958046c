# One place for the setup and the commands the README quotes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: setup lint test test-all demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU-sized install: the local torch 2.13.0 CPU wheel is pinned by constraints-cpu.txt.
setup: $(BIN)/python
	$(BIN)/pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
# TAO's schema for tests/test_tao_schema.py; --no-deps: the wheel declares TAO's whole service stack, the schema needs only omegaconf.
	$(BIN)/pip install -q --no-deps nvidia-tao-core==7.3.0

# The CI suite: the linter, then the tests on two pytest-xdist workers (one per core; an idle worker takes
# queued tests from the busy one), slowest 30 listed. Tests marked slow run in test-all.
PYTEST = $(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=30

lint: setup
	$(BIN)/ruff check changenet tests scripts

test: lint
	$(PYTEST) -m "not slow" tests

test-all: lint
	$(PYTEST) tests

demo: setup
	bash scripts/demo.sh $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache
