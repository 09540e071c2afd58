# make install — create .venv if missing and install clozelab with the dev extra into it
# make demo  — create .venv if missing, install, and run the main job (clozelab pretrain)
# make test  — create .venv if missing, install with the dev extra, and run the tests
# TORCH=... overrides the pinned CPU build (e.g. TORCH="torch==2.13.0 --index-url <cuda index>").

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clozelab-installed

.PHONY: demo test install lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/clozelab pretrain

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
