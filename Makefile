# The two commands of the README: `make install` (everything, from a fresh clone) and `make test`.
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip

.PHONY: install test lint bench

install:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch pinned to the CPU wheel: an open range would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0 -e '.[dev]'

test:
	$(VENV)/bin/pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
