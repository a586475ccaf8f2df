"""Real ``fit`` runs that used to hang: each error reaches fit's caller in seconds, naming what went wrong.

Each backend runs its scenarios in a fresh process (tests/support/fit_safety_script.py)
so that a hang is a timeout here, with the scenario that hung named, rather
than a stuck test run. What each guards against (issue 11):

- a transform in a process worker raising an exception that cannot be
  unpickled killed the pool's result thread, and fit waited forever;
- a batch the trainer cannot unpickle did the same;
- a transform returning ``None`` made Keras skip the batch and wait for it;
- a worker forked while another thread of the trainer parsed a ``.npy``
  header inherited the held header lock and blocked on its first shard;
- on JAX, Keras' fork of the workers made JAX warn of a likely deadlock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npyseq

from _safety_transforms import FAIL_ROW

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")  # scripts, helpers
N = 600

CONFIGS = {
    "tensorflow": ["two-arg exception, processes", "unloadable batch, processes", "none, main process",
                   "none, threads", "none, processes", "reader thread, fork"],
    "jax": ["two-arg exception, processes", "two-arg exception, spawn", "none, processes",
            "train, processes"],
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit-safety")
    x = np.random.default_rng(0).random((N, 4), dtype=np.float32)
    x[:, 0] = np.arange(N)  # the transforms recognise a batch by its first row
    main = npyseq.write_shards(root / "data", {"x": x, "y": np.arange(N, dtype=np.float32)}, rows=100,
                               progress=False)
    # Many small shards with long headers: the reader thread parses headers almost all the time.
    fields = np.dtype([(f"field_{i:02d}", "<f4") for i in range(48)])
    other = npyseq.write_shards(root / "other", {"x": np.zeros(80, fields)}, rows=2, progress=False)
    return main.path, other.path


def _run_script(backend: str, datasets) -> dict:
    if importlib.util.find_spec(backend) is None:
        if os.environ.get("CI"):
            pytest.fail(f"backend {backend} is not installed; `make test` installs it")
        pytest.skip(f"{backend} is not installed")
    cmd = [sys.executable, os.path.join(HERE, "fit_safety_script.py"), *datasets, "default",
           ";".join(CONFIGS[backend])]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        started = [line for line in out.splitlines() if line.startswith("START ")]
        pytest.fail(f"{backend}: fit hung in scenario {started[-1][6:] if started else '?'!r}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    results["_stderr"] = proc.stderr
    return results


@pytest.fixture(scope="module")
def outcomes(datasets):
    """``outcomes(backend)``: what each scenario of that backend gave; one script run per backend."""
    runs: dict = {}

    def get(backend: str) -> dict:
        if backend not in runs:
            runs[backend] = _run_script(backend, datasets)
        return runs[backend]

    return get


def _cases(*scenarios):
    """``(backend, scenario)`` for every backend that runs one of ``scenarios``."""
    return [(b, s) for b, names in CONFIGS.items() for s in scenarios if s in names]


def _assert_raised(outcome: dict, backend: str, cls: str, message: str) -> None:
    """fit's caller got ``cls`` whose message starts with ``message``.

    On TensorFlow, tf.data wraps an exception of the batch generator in a
    ``tf.errors`` error whose message holds ``TypeName: message``; batches 0
    and 1, read in the main process to infer the signature, raise as they are.
    """
    assert outcome["seconds"] < 30, outcome  # includes starting the pool (spawn: a fresh interpreter)
    if backend == "tensorflow" and outcome["type"] != cls:
        assert outcome["type"].startswith("tensorflow.python.framework.errors_impl."), outcome
        assert f"{cls.rsplit('.', 1)[1]}: {message}" in outcome["message"], outcome["message"][:3000]
    else:
        assert outcome["type"] == cls, outcome
        assert outcome["message"].startswith(message), outcome["message"][:3000]


@pytest.mark.slow
@pytest.mark.timeout(500)
@pytest.mark.parametrize("backend, scenario", _cases("two-arg exception, processes", "two-arg exception, spawn"))
def test_exception_that_cannot_be_unpickled_reaches_fit_as_a_worker_error(outcomes, backend, scenario):
    outcome = outcomes(backend)[scenario]
    _assert_raised(outcome, backend, "npyseq.errors.WorkerError",
                   f"_safety_transforms.TwoArgError: row {FAIL_ROW}: bad batch\n(raised in a Keras worker process")
    message = outcome["message"]
    assert "cannot be sent to the trainer as itself (TypeError: TwoArgError.__init__() missing 1 required" \
        in message
    assert "Traceback in the worker:" in message and "in raise_two_arg" in message
    assert "give it an __init__ that takes the message alone" in message
    assert outcome["leftover_workers"] == []


@pytest.mark.slow
@pytest.mark.timeout(500)
@pytest.mark.parametrize("backend, scenario", _cases("unloadable batch, processes"))
def test_batch_that_cannot_be_unpickled_ends_fit_with_a_worker_error(outcomes, backend, scenario):
    outcome = outcomes(backend)[scenario]
    # npyseq's pool fails that batch alone, with the reason (Keras' pool loses its result thread).
    _assert_raised(outcome, backend, "npyseq.errors.WorkerError",
                   f"batch {FAIL_ROW // 32} sent by a worker process could not be unpickled in the trainer "
                   "(TypeError: this object cannot be rebuilt in the trainer)")
    assert outcome["leftover_workers"] == []


@pytest.mark.slow
@pytest.mark.timeout(500)
@pytest.mark.parametrize("backend, scenario", _cases("none, main process", "none, threads", "none, processes"))
def test_transform_returning_none_reaches_fit_as_a_transform_error(outcomes, backend, scenario):
    outcome = outcomes(backend)[scenario]
    name, batch = ("_safety_transforms.forget_return", 0) if scenario == "none, main process" else (
        "_safety_transforms.none_on_row", FAIL_ROW // 32)
    _assert_raised(outcome, backend, "npyseq.errors.TransformError",
                   f"transform {name} returned None of type NoneType for batch {batch} of epoch 0 "
                   "(a missing `return batch`?")


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_fork_workers_while_a_thread_parses_headers_train_every_epoch(outcomes):
    outcome = outcomes("tensorflow")["reader thread, fork"]
    assert outcome["type"] is None, outcome
    assert outcome["epochs"] == 12
    assert outcome["start_methods"] == ["fork"]
    assert outcome["reader_passes"] > 12  # the reader really ran through the epochs


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_jax_process_workers_start_without_fork_and_without_its_warning(outcomes):
    outcome = outcomes("jax")["train, processes"]
    assert outcome["type"] is None, outcome
    assert outcome["epochs"] == 2
    assert outcome["start_methods"] == ["forkserver"]
    stderr = outcomes("jax")["_stderr"]  # of every jax scenario: none forked
    assert "os.fork() was called" not in stderr
    assert "will likely lead to a deadlock" not in stderr
