# `make test` and `make demo` create (or reuse) .venv and install everything
# they need from scratch; nothing has to be installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.npyseq-installed

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The other Keras backends, for the backend tests (torch 2.13.0: the CPU build).
	$(BIN)/python -m pip install --quiet jax torch==2.13.0
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

# The main job: a dataset bigger than the training's memory cap, converted and trained on.
demo: $(STAMP)
	$(BIN)/python benchmarks/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
