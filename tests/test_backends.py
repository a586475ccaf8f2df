"""ShardSequence end to end on each Keras backend (tensorflow, jax, torch), in subprocesses."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@pytest.fixture(scope="module", params=list(BACKEND_MODULES))
def facts(request, tmp_path_factory):
    backend = request.param
    if importlib.util.find_spec(BACKEND_MODULES[backend]) is None:
        if os.environ.get("CI"):
            pytest.fail(f"backend {backend} is not installed; `make test` installs it")
        pytest.skip(f"{backend} is not installed (make test installs it)")
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run([sys.executable, os.path.join(HERE, "backend_script.py"),
                          str(tmp_path_factory.mktemp(backend))],
                         capture_output=True, text=True, timeout=500, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    return result


@pytest.mark.slow
def test_weights_equal_training_on_arrays_in_ram(facts):
    assert facts["max_weight_diff"] <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_workers_train_and_loss_falls(facts, kind):
    loss = facts[f"loss_{kind}"]
    assert len(loss) == 3 and all(np.isfinite(loss)) and loss[-1] < loss[0]


@pytest.mark.slow
def test_multi_input_multi_output_model_trains(facts):
    loss = facts["loss_multi"]
    assert all(np.isfinite(loss)) and loss[-1] < loss[0]


@pytest.mark.slow
def test_sample_weights_reach_the_loss(facts):
    assert facts["weight_change_zeros"] == 0.0
    assert facts["weight_change_ones"] > 1e-4


@pytest.mark.slow
def test_predict_returns_rows_in_dataset_order(facts):
    assert facts["predict_shape"] == [300, 1]
    assert facts["predict_max_diff"] <= 1e-5
