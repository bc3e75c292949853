# Two commands on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first so pip never resolves a multi-GB CUDA build (DESIGN §8).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: demo test setup setup-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

demo: setup
	$(BIN)/prefcurate demo $(ARGS)

test: setup-dev
	$(BIN)/python -m pytest -q $(ARGS)

bench: setup-dev
	$(BIN)/python -m benchmarks.scoring $(ARGS)

clean:
	rm -rf runs .prefcurate-cache mlflow.db mlruns
