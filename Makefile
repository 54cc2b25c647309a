# transferlab. `make repro` runs the pipeline, `make test` runs the tests; both create the
# virtual environment (.venv) first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
# The pipeline's stages call `python`: make it the environment's.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast lint clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

repro: setup
	@git rev-parse --verify -q HEAD >/dev/null || { \
	  echo "make repro: needs a git repository with at least one commit (DVC tracks runs by commit)"; exit 1; }
	$(BIN)/dvc repro
	@echo "Report: reports/report.md"

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src stages tests

clean-venv:
	rm -rf $(VENV)
