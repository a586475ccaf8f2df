"""ShardSequence end to end on each Keras backend (tensorflow, jax, torch), in subprocesses."""

import numpy as np
import pytest

from _helpers import BACKENDS, run_backend_script


@pytest.fixture(scope="module", params=BACKENDS)
def facts(request, tmp_path_factory):
    return run_backend_script("backend_script.py", request.param, tmp_path_factory.mktemp(request.param), 500)


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
