"""End to end: real ``model.fit`` through ShardSequence, every worker kind and start method.

Each configuration runs in a fresh process (tests/support/fit_order_script.py) so that
the multiprocessing start method is set before Keras starts. A recording
layer stores the row index (column 0 of x) of every row the model consumed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npyseq

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")  # scripts, helpers
N = 150
MODES = ["False", "batches", "blocks", "global"]
CONFIGS = {
    "1 worker": ("default", 1, 0),
    "2 threads": ("default", 2, 0),
    "2 processes fork": ("fork", 2, 1),
    "2 processes spawn": ("spawn", 2, 1),
    "2 processes forkserver": ("forkserver", 2, 1),
}


def run_fit(path, method, workers, processes, modes, epochs, initial=0):
    cmd = [sys.executable, os.path.join(HERE, "fit_order_script.py"), str(path), method,
           str(workers), str(processes), ",".join(modes), str(epochs), str(initial)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    x = np.random.default_rng(0).random((N, 4), dtype=np.float32)
    x[:, 0] = np.arange(N)  # the recording layer reads the row index here
    root = tmp_path_factory.mktemp("fit") / "data"
    return npyseq.write_shards(root, {"x": x, "y": np.arange(N, dtype=np.float32)}, rows=40,
                               progress=False)


@pytest.fixture(scope="module")
def runs(dataset):
    return {name: run_fit(dataset.path, *cfg, MODES, epochs=3) for name, cfg in CONFIGS.items()}


def batch_set(batches):
    return sorted(tuple(b) for b in batches)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_epoch_consumes_every_row_exactly_once(runs, config, mode):
    result = runs[config][mode]
    assert sorted(result["epochs"]) == ["0", "1", "2"]
    for epoch, batches in result["epochs"].items():
        rows = np.concatenate(batches)
        assert np.array_equal(np.sort(rows), np.arange(N)), (config, mode, epoch)
    assert result["final_epoch"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_same_batches_whatever_the_workers_and_start_method(runs, mode):
    reference = runs["1 worker"][mode]["epochs"]
    for config in CONFIGS:
        for epoch in ("0", "1", "2"):
            assert batch_set(runs[config][mode]["epochs"][epoch]) == batch_set(reference[epoch]), (config, epoch)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["blocks", "global"])
def test_shuffled_batches_differ_between_epochs(runs, mode):
    # ("batches" keeps the same contiguous batches and shuffles their order,
    # which test_sequence.py checks; Keras shuffles batch order on top.)
    epochs = runs["1 worker"][mode]["epochs"]
    assert batch_set(epochs["0"]) != batch_set(epochs["1"]) != batch_set(epochs["2"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_first_training_epoch_uses_the_order_of_epoch_0(runs, dataset, mode):
    seq = npyseq.ShardSequence(dataset, x="x", y="y", batch_size=16,
                               shuffle=False if mode == "False" else mode, seed=7)
    for epoch in (0, 1, 2):
        expected = batch_set(seq.batch_rows(i, epoch=epoch).tolist() for i in range(len(seq)))
        assert batch_set(runs["1 worker"][mode]["epochs"][str(epoch)]) == expected


@pytest.mark.slow
def test_setting_epoch_then_initial_epoch_replays_that_epoch(runs, dataset):
    resumed = run_fit(dataset.path, "fork", 2, 1, ["global", "blocks"], epochs=3, initial=2)
    for mode in ("global", "blocks"):
        assert list(resumed[mode]["epochs"]) == ["2"]
        full = runs["2 processes fork"][mode]["epochs"]["2"]
        assert batch_set(resumed[mode]["epochs"]["2"]) == batch_set(full)
        assert resumed[mode]["final_epoch"] == 3
