# `make test` and `make demo` create (or reuse) .venv and install everything
# they need from scratch; nothing has to be installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.npyseq-installed
BENCH_STAMP := $(VENV)/.npyseq-bench-installed

.PHONY: test test-fast demo bench bench-full venv clean

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

# The development loop: everything but the tests marked slow (CI runs `make test`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

# The main job: a dataset bigger than the training's memory cap, converted and trained on.
demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The benchmark suite (benchmarks/suite/, see benchmarks/README.md): the bench extra, and Grain where it installs
# (the suite skips it, saying so, where it does not).
$(BENCH_STAMP): $(STAMP) setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet grain || echo "grain is not installable here: the suite will skip it"
	touch $(BENCH_STAMP)

# Quick run (under 10 minutes on 2 cores, datasets included): 1 GB and 4 GB datasets.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.suite --plan quick

# Full run: 2 GB and 8 GB datasets, every setting, longer timings.
bench-full: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.suite --plan full

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
