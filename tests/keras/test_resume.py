"""Exact resume (npyseq.BackupAndRestore) and a sequence's steps_per_epoch.

The kill tests run a real ``fit`` in a subprocess (tests/support/resume_script.py)
that SIGKILLs itself at a chosen step; each run appends, per step trained, the
optimizer step and the row ids of the batch. The runs put together (a step
trained again after a kill counts as its last run) must equal an uninterrupted
run step for step, and the final weights must match it.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import keras

import npyseq
from npyseq.order import position

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")
N = 40  # rows; batch_size 8: 5 batches per pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 4)).astype(np.float32)
    x[:, 0] = np.arange(N) * 0.01  # the row id, as resume_script.py reads it
    y = (x @ np.array([1, 2, -1, 0.5], dtype=np.float32))[:, None]
    tokens = [rng.integers(1, 9, size=int(rng.integers(1, 12))).astype(np.int32) for _ in range(N)]
    root = tmp_path_factory.mktemp("resume") / "data"
    npyseq.write_shards(root, {"x": x, "y": y, "tokens": tokens}, rows=16, progress=False)
    return root


# --- kill and resume in subprocesses ------------------------------------------------

def run(config, backend, kill):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run([sys.executable, os.path.join(HERE, "resume_script.py"), json.dumps(dict(config, kill=kill))],
                         capture_output=True, text=True, timeout=240, env=env)
    if kill == "none":
        assert out.returncode == 0, out.stderr[-4000:]
    else:
        assert out.returncode == -9, f"expected a SIGKILL at {kill}, got {out.returncode}: {out.stderr[-4000:]}"


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def scenario(tmp_path, data, backend, kills, **options):
    """Run with each kill in turn, then to the end with a reference run; return (logs, reference)."""
    config = dict(dict(data=str(data), backup=str(tmp_path / "backup"), log=str(tmp_path / "log"),
                       weights=str(tmp_path / "w.npz"), epochs=3, save_freq=2), **options)
    for kill in kills:
        run(config, backend, kill)
    run(dict(config, reference=True), backend, "none")
    assert not (tmp_path / "backup").exists()  # delete_checkpoint=True, as Keras does
    got, ref = read_log(config["log"]), read_log(config["log"] + ".ref")
    a, b = np.load(tmp_path / "w.npz"), np.load(tmp_path / "w.ref.npz")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    return got, ref


def assert_resumed(got, ref, resumed_at):
    """``got`` is runs that restarted at the steps ``resumed_at``; together they equal ``ref``."""
    assert [r["step"] for r in ref] == list(range(len(ref)))
    steps = [g["step"] for g in got]
    restarts = [s for prev, s in zip(steps, steps[1:]) if s != prev + 1]
    assert restarts == resumed_at  # each run began right after its last checkpoint
    last = {g["step"]: g["rows"] for g in got}
    assert [last[s] for s in range(len(ref))] == [r["rows"] for r in ref]


def assert_each_pass_whole(ref, per_pass=5):
    for p in range(len(ref) // per_pass):
        rows = sorted(r for step in ref[p * per_pass:(p + 1) * per_pass] for r in step["rows"])
        assert rows == list(range(N)), f"pass {p}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_three_times_in_and_at_the_end_of_epoch_1_resumes_step_for_step(tmp_path, data):
    # 5 steps an epoch, a checkpoint every 2 steps. Killed at step 7 (epoch 1, checkpoint 6), in
    # the resumed epoch 1 at step 9 (checkpoint 8: Keras alone would restart at epoch 0), and at
    # the end of epoch 1 (checkpoint 10): the last run resumes at epoch 2, batch 0.
    got, ref = scenario(tmp_path, data, "tensorflow", ["step:7", "step:9", "epoch_end:1"])
    assert_resumed(got, ref, resumed_at=[6, 8])
    assert len(ref) == 15
    assert_each_pass_whole(ref)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_steps_per_epoch_with_threads_killed_before_the_first_checkpoint_and_mid_pass(tmp_path, data):
    # Keras epochs of 3 steps over passes of 5 batches: 15 steps are 5 Keras epochs and 3 passes.
    # Killed at step 1 (no checkpoint yet: starts afresh) and at step 7 (Keras epoch 2, pass 1).
    got, ref = scenario(tmp_path, data, "tensorflow", ["step:1", "step:7"], steps_per_epoch=3, workers=2,
                        epochs=5)
    assert_resumed(got, ref, resumed_at=[0, 6])
    assert len(ref) == 15
    assert_each_pass_whole(ref)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_jax_process_workers_ragged_bucketing_resume(tmp_path, data):
    got, ref = scenario(tmp_path, data, "jax", ["step:7"], ragged=True, workers=2, processes=True)
    assert_resumed(got, ref, resumed_at=[6])
    assert_each_pass_whole(ref)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torch_threads_steps_per_epoch_resume(tmp_path, data):
    got, ref = scenario(tmp_path, data, "torch", ["step:9"], workers=2, steps_per_epoch=4, epochs=4)
    assert_resumed(got, ref, resumed_at=[8])
    assert_each_pass_whole(ref)


# --- in this process: the errors, the warning, the epoch from Keras -------------------

class Stop(keras.callbacks.Callback):
    """Raise after ``k`` steps (an interruption that leaves the checkpoint in place)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == self.k:
            raise KeyboardInterrupt("stop")


def small_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def seq_of(data, **options):
    return npyseq.ShardSequence(data, x="x", y="y", **dict(dict(batch_size=8, shuffle="global", seed=5), **options))


def interrupted(tmp_path, data, k=3, **options):
    backup = str(tmp_path / "backup")
    model = small_model()
    seq = seq_of(data, **options)
    with pytest.raises(KeyboardInterrupt):
        model.fit(seq, epochs=2, shuffle=False, verbose=0,
                  callbacks=[npyseq.BackupAndRestore(backup, seq, save_freq=1), Stop(k)])
    return backup


def test_a_changed_order_is_refused_naming_each_change(tmp_path, data):
    backup = interrupted(tmp_path, data)
    seq = seq_of(data, batch_size=10, seed=6)
    model = small_model()
    with pytest.raises(npyseq.ResumeMismatchError,
                       match=r"batch_size: 8 in the checkpoint, 10 now; seed: 5 in the checkpoint, 6 now\. "
                             r"Resume with the checkpoint's settings, or delete .*backup to start afresh"):
        model.fit(seq, epochs=2, shuffle=False, verbose=0, callbacks=[npyseq.BackupAndRestore(backup, seq)])
    moved = tmp_path / "moved"  # the same settings resume, on the same data in another folder
    shutil.copytree(data, moved)
    model = small_model()
    seq = seq_of(moved)
    model.fit(seq, epochs=2, shuffle=False, verbose=0, callbacks=[npyseq.BackupAndRestore(backup, seq)])
    # 3 restored + the 7 left of 2 epochs (on TF the shortened epoch's end adds a phantom 1: put back)
    assert int(model.optimizer.iterations) == 10
    reference = small_model()
    reference.fit(seq_of(data), epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_fingerprint_of_views_and_bucketing(data):
    seq = seq_of(data)
    assert seq.order_fingerprint() != seq.subset(0, 32).order_fingerprint()
    assert seq.order_fingerprint()["rows"] == "rows [0, 40)"
    ragged = npyseq.RaggedSequence(data, x="tokens", y="y", batch_size=8, bucket=True, bucket_pool=2)
    assert ragged.order_fingerprint()["bucket_pool"] == 2


def test_fit_steps_per_epoch_below_the_epoch_is_refused_before_the_first_step(tmp_path, data):
    seq = seq_of(data)
    model = small_model()
    with pytest.raises(npyseq.InvalidArgumentError,
                       match=r"fit\(steps_per_epoch=2\) with a sequence of 5 batches per epoch .* repeat and skip "
                             r"rows\. .*ShardSequence\(\.\.\., steps_per_epoch=2\)"):
        model.fit(seq, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0,
                  callbacks=[npyseq.BackupAndRestore(str(tmp_path / "b"), seq)])
    assert int(model.optimizer.iterations) == 0


def test_fit_steps_per_epoch_below_the_epoch_is_refused_without_the_callback_too(data):
    seq, model = seq_of(data), small_model()
    with pytest.raises(npyseq.InvalidArgumentError, match=r"fit\(steps_per_epoch=3\) with a sequence of 5 batches"):
        model.fit(seq, epochs=2, steps_per_epoch=3, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 0
    # Not refused: the sequence's own steps_per_epoch, the whole epoch, and evaluate on a part
    # (also as validation inside fit).
    model.fit(seq_of(data, steps_per_epoch=3), epochs=1, shuffle=False, verbose=0,
              validation_data=seq_of(data), validation_steps=2)
    model.fit(seq, epochs=1, steps_per_epoch=5, shuffle=False, verbose=0)
    model.evaluate(seq, steps=2, verbose=0)
    assert int(model.optimizer.iterations) == 8


def test_fit_shuffle_true_is_warned_about(tmp_path, data):
    seq = seq_of(data)
    with pytest.warns(UserWarning, match=r"fit\(shuffle=True\), Keras' default, .* call fit\(seq, shuffle=False\)"):
        small_model().fit(seq, epochs=1, verbose=0, callbacks=[npyseq.BackupAndRestore(str(tmp_path / "b"), seq)])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*shuffle=True")
        small_model().fit(seq, epochs=1, verbose=0, shuffle=False,
                          callbacks=[npyseq.BackupAndRestore(str(tmp_path / "b"), seq)])


class Epochs(keras.callbacks.Callback):
    def __init__(self, seq):
        super().__init__()
        self.seq, self.seen = seq, []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(self.seq.epoch)


def test_the_epoch_comes_from_keras_initial_epoch(tmp_path, data):
    seq = seq_of(data)
    seen = Epochs(seq)
    small_model().fit(seq, initial_epoch=2, epochs=4, shuffle=False, verbose=0,
                      callbacks=[npyseq.BackupAndRestore(str(tmp_path / "b"), seq), seen])
    assert seen.seen == [2] * 5 + [3] * 5


def test_a_checkpoint_without_a_position_is_refused(tmp_path, data):
    backup = interrupted(tmp_path, data)
    os.remove(os.path.join(backup, "npyseq_position.json"))
    seq = seq_of(data)
    with pytest.raises(npyseq.ResumeMismatchError, match="no npyseq_position.json: it was not written by npyseq"):
        small_model().fit(seq, epochs=2, shuffle=False, verbose=0, callbacks=[npyseq.BackupAndRestore(backup, seq)])


def test_the_callback_is_exported_lazily_and_is_keras_callback():
    from npyseq.keras import resume

    assert npyseq.BackupAndRestore is resume.BackupAndRestore
    assert issubclass(npyseq.BackupAndRestore, keras.callbacks.BackupAndRestore)
    assert "BackupAndRestore" in dir(npyseq) and "ResumeMismatchError" in npyseq.__all__


def test_the_callback_needs_an_npyseq_sequence(tmp_path):
    with pytest.raises(npyseq.InvalidArgumentError, match="needs the npyseq.ShardSequence .* got list"):
        npyseq.BackupAndRestore(str(tmp_path), [1, 2])


# --- a sequence's steps_per_epoch -------------------------------------------------------

def test_steps_per_epoch_spans_passes_and_uses_every_row_once_per_pass(data):
    seq = seq_of(data, steps_per_epoch=3)
    assert len(seq) == 3 and seq.batches_per_pass == 5
    stream = [seq.batch_rows(i, epoch=e) for e in range(10) for i in range(3)]  # 30 steps: 6 passes
    plain = seq_of(data)
    for s, rows in enumerate(stream):
        np.testing.assert_array_equal(rows, plain.batch_rows(s % 5, epoch=s // 5))
    with pytest.raises(IndexError, match="this epoch has 3 batches"):
        seq.batch_rows(3)
    assert "steps_per_epoch=3" in repr(seq)
    train, val = seq.split(0.5)
    assert train.steps_per_epoch == 3 and val.steps_per_epoch is None
    assert seq.with_options(steps_per_epoch=None).steps_per_epoch is None


def test_steps_per_epoch_of_a_bucketing_ragged_sequence(data):
    seq = npyseq.RaggedSequence(data, x="tokens", y="y", batch_size=8, shuffle="global", seed=1, bucket=True,
                                bucket_pool=2, steps_per_epoch=2)
    stream = [np.sort(seq.batch_rows(i, epoch=e)) for e in range(5) for i in range(2)]  # 2 passes
    for p in range(2):
        assert sorted(np.concatenate(stream[5 * p:5 * p + 5]).tolist()) == list(range(N))


def test_resume_at_serves_the_rest_of_the_epoch(data):
    seq = seq_of(data)
    seq.resume_at(3, 2)
    assert len(seq) == 3
    plain = seq_of(data)
    plain.epoch = 3
    np.testing.assert_array_equal(seq[0][0], plain[2][0])
    np.testing.assert_array_equal(seq[-1][0], plain[4][0])
    seq.on_epoch_begin()
    seq.on_epoch_end()
    assert (seq.epoch, len(seq)) == (4, 5)
    with pytest.raises(IndexError, match="this epoch has 5 batches"):
        seq.resume_at(0, 5)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 50), k=st.one_of(st.none(), st.integers(1, 50)), step=st.integers(0, 10_000))
def test_position_arithmetic(n, k, step):
    epoch, index = position.position_of_step(n, k, step)
    length = position.epoch_length(n, k)
    assert 0 <= index < length and length == (n if k is None else k)
    assert position.global_step(n, k, epoch, index) == step
    assert position.locate(n, k, epoch, index) == divmod(step, n)
