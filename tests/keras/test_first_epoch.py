"""The first epoch of ``fit`` is epoch 0, on every backend, with and without workers.

Keras 3.15 on JAX and torch reads one batch to build a fresh model before
training, and ends that read as if it were an epoch (``EpochIterator.reset``):
the sequence does not count it (npyseq/keras/fit_frame.py). With workers Keras
also keeps the batches that were in flight then and serves them first in epoch
0; ``npyseq.BackupAndRestore`` drops them (tests/keras/test_resume.py), a bare
``fit`` does not yet (dropping them there grew the trainer's descriptors).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npyseq

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "support", "first_epoch_script.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("first_epoch") / "data"
    x = np.zeros((96, 4), np.float32)
    x[:, 0] = np.arange(96)
    npyseq.write_shards(out, {"x": x, "y": np.ones((96, 1), np.float32)}, shard_size="1KB")
    return str(out)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend, workers, processes", [
    ("jax", 0, False), ("torch", 0, False), ("tensorflow", 2, False),
])
def test_fit_trains_epoch_0_then_epoch_1_step_for_step(data, backend, workers, processes):
    env = dict(os.environ, KERAS_BACKEND=backend)
    run = subprocess.run([sys.executable, SCRIPT, data, str(workers), "1" if processes else "0"],
                         capture_output=True, text=True, timeout=150, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["trained"] == result["expected"]  # epoch 0's batches, then epoch 1's, no batch twice
    assert result["epoch"] == 2
