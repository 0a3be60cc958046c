# One place for the setup and the commands the README quotes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: setup test test-all demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU-sized install: the local torch 2.13.0 CPU wheel is pinned by constraints-cpu.txt.
setup: $(BIN)/python
	$(BIN)/pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
# TAO's schema for tests/test_tao_schema.py; --no-deps: the wheel declares TAO's whole service stack, the schema needs only omegaconf.
	$(BIN)/pip install -q --no-deps nvidia-tao-core==7.3.0

# The CI suite; tests marked slow (large-model integration builds) run in test-all.
test: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	bash scripts/demo.sh $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache
