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
# mosaicml-streaming is not in the bench extra: its metadata pins numpy<2.2 (and torchvision, transformers and
# every cloud SDK), which would downgrade numpy under everything else. So it is installed with --no-deps, plus
# the few packages its local MDS reader and writer import (benchmarks/suite/peers.py imports only those parts);
# torch and numpy come from the venv. The suite skips streaming, saying so, where this fails.
STREAMING_DEPS := 'catalogue>=2,<3' 'Brotli>=1.0.9' 'python-snappy>=0.6.1,<1' 'zstd>=1.5.2.5,<2' \
	'xxhash>=3,<4' 'tqdm>=4.64,<5' pillow filelock
$(BENCH_STAMP): $(STAMP) setup.cfg Makefile
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet grain || echo "grain is not installable here: the suite will skip it"
	( $(BIN)/python -m pip install --quiet --no-deps 'mosaicml-streaming==0.13.0' && \
	  $(BIN)/python -m pip install --quiet $(STREAMING_DEPS) ) || \
	  echo "mosaicml-streaming is not installable here: the suite will skip it"
	touch $(BENCH_STAMP)

# Quick run: 1 GB and 4 GB datasets, and the 1 GB image dataset of the augmentation workload.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.suite --plan quick

# Full run: 2 GB and 8 GB datasets, every setting, longer timings.
bench-full: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.suite --plan full

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
