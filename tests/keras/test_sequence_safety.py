"""Sequences and workers without a model: no hangs, no silent wrong batches (issues 10 and 11).

Locks across fork, exceptions and batches that cannot travel back from a
worker process, what a transform returns, epoch and seed checks, the parts of
``split`` (contiguous and drawn at random), views taking the options of the
sequence as it is, empty sequences, and the start method of worker processes.
The same failures through a real ``fit`` are in tests/keras/test_fit_safety.py.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import re
import sys
import threading
import time
import types

import numpy as np
import pytest

import npyseq
from npyseq import (EmptySequenceError, InvalidArgumentError, ShardSequence, TransformError, WorkerError,
                    order)
from npyseq.format import npy
from npyseq.keras import start_method, watchdog
from npyseq.keras.ragged_sequence import RaggedSequence

import _safety_transforms as t
from _failing_transforms import TransformFailed, raise_on_row

N = 300
MODES = [False, "batches", "blocks", "global"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.random((N, 4), dtype=np.float32)
    x[:, 0] = np.arange(N)  # the transforms recognise a batch by its first row
    arrays = {"x": x, "y": np.arange(N, dtype=np.int64)}
    root = tmp_path_factory.mktemp("safety") / "data"
    return npyseq.write_shards(root, arrays, rows=70, progress=False), arrays


def rows_of(seq, epoch=None) -> list[np.ndarray]:
    """The dataset rows of every batch of ``seq`` (column y holds the row index), checked against batch_rows."""
    out = []
    for i in range(len(seq)):
        batch = seq[i]
        assert np.array_equal(batch[1], seq.batch_rows(i)), i
        out.append(batch[1])
    return out


# --- locks across fork ---------------------------------------------------------------


def _child_result(hold, action, timeout: float = 20.0):
    """Run ``action`` in a child forked while another thread holds the lock ``hold()`` returns."""
    lock = hold()
    held, release = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(10)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        try:
            send.send(("ok", action()))
        except BaseException as e:  # report anything, never hang the parent
            send.send(("error", repr(e)))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    try:
        if not recv.poll(timeout):
            pytest.fail(f"the forked child is still blocked after {timeout} s (a lock held at fork)")
        return recv.recv()
    finally:
        release.set()
        thread.join(10)
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


class _Owner:
    """Something the watchdog can hold a weak reference to."""


@pytest.mark.timeout(120)
def test_child_forked_while_a_thread_parses_a_header_reads_headers(ds):
    d, _ = ds
    shard = os.path.join(d.path, "x", "000000.npy")
    result = _child_result(lambda: npy._HEADER_LOCK, lambda: npy.read_header(shard)[:2])
    assert result == ("ok", (np.dtype("float32"), (70, 4)))


@pytest.mark.timeout(120)
def test_child_forked_while_a_thread_holds_the_watchdog_lock_can_watch(ds):
    def watch_and_unwatch():
        owner = _Owner()
        watchdog.watch(owner)
        watchdog.unwatch(owner)
        return "watched"

    assert _child_result(lambda: watchdog._WATCHDOG._lock, watch_and_unwatch) == ("ok", "watched")


@pytest.mark.timeout(120)
def test_child_forked_while_a_thread_holds_a_dataset_or_buffer_lock_reads(ds, tmp_path):
    d, src = ds
    fresh = npyseq.open_shards(d.path)
    assert _child_result(lambda: fresh._lock, lambda: fresh["x"][65:75].tobytes()) == (
        "ok", src["x"][65:75].tobytes())
    seq = ShardSequence(d, x="x", y="y", batch_size=10)
    assert _child_result(lambda: seq._pool._lock, lambda: seq[7][1].tolist()) == ("ok", list(range(70, 80)))


# --- what a worker process sends back ------------------------------------------------


def _batch_in_worker(seq, i):
    return seq[i]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_exception_that_cannot_be_unpickled_comes_back_as_a_worker_error(ds, method):
    """Before: the pool's result thread died unpickling it, and get() waited forever."""
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, transform=t.raise_two_arg, workers=2,
                        use_multiprocessing=True)
    with multiprocessing.get_context(method).Pool(1) as pool:
        fine = pool.apply_async(_batch_in_worker, (seq, 6))
        bad = pool.apply_async(_batch_in_worker, (seq, 7))
        assert np.array_equal(fine.get(timeout=120)[1], np.arange(192, 224))
        with pytest.raises(WorkerError) as info:
            bad.get(timeout=60)
    message = str(info.value)
    assert message.startswith("_safety_transforms.TwoArgError: row 224: bad batch\n"
                              "(raised in a Keras worker process, pid ")
    assert "reading batch 7 of <npyseq.ShardSequence rows [0, 300) of" in message
    assert ("that exception cannot be sent to the trainer as itself (TypeError: TwoArgError.__init__() "
            "missing 1 required positional argument: 'reason')") in message
    assert "give it an __init__ that takes the message alone" in message
    assert re.search(r"Traceback in the worker:\n.*in raise_two_arg\n.*raise TwoArgError", message, re.S)
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args


@pytest.mark.timeout(120)
def test_exception_that_survives_pickle_keeps_its_type_from_a_worker(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, transform=raise_on_row, workers=2,
                        use_multiprocessing=True)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        with pytest.raises(TransformFailed, match=r"^bad batch starting at row 224$"):
            pool.apply_async(_batch_in_worker, (seq, 7)).get(timeout=60)
    # In the main process nothing is wrapped, whatever the exception.
    two = ShardSequence(d, x="x", y="y", batch_size=32, transform=t.raise_two_arg)
    with pytest.raises(t.TwoArgError, match="row 224: bad batch"):
        two[7]


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_watchdog_reports_a_result_thread_that_died(ds):
    """A result the pool cannot unpickle kills its result thread; before, get() waited forever."""
    from keras.src.trainers.data_adapters import py_dataset_adapter

    watchdog.install()
    owner = _Owner()
    pool = multiprocessing.get_context("fork").Pool(2)
    py_dataset_adapter._DATA_POOLS.add(pool)  # as Keras registers its pools
    watchdog.watch(owner)
    try:
        workers = list(pool._pool)
        start = time.monotonic()
        with pytest.raises(WorkerError, match=re.escape(
                "the thread of Keras' worker pool that receives batches from the worker processes died "
                "during fit")) as info:
            pool.apply_async(t.unloadable).get(timeout=60)
        assert time.monotonic() - start < 10
        assert "A transform must return NumPy arrays" in str(info.value)
        # The broken pool is torn down: its workers end.
        deadline = time.monotonic() + 20
        while any(p.exitcode is None for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.pid for p in workers if p.exitcode is None] == []
    finally:
        watchdog.unwatch(owner)


# --- what a transform returns ----------------------------------------------------------


@pytest.mark.parametrize("transform, name, found", [
    (t.forget_return, "_safety_transforms.forget_return", "None of type NoneType"),
    (functools.partial(t.forget_return), "_safety_transforms.forget_return", "None of type NoneType"),
    (t.ReturnsThree(), "_safety_transforms.ReturnsThree", "3 of type int"),
    (lambda b, r: (b[0], b[1], b[1], b[1]), "test_sequence_safety.<lambda>", r"\(array\(.* of type tuple of 4 items"),
])
def test_transform_that_returns_no_batch_is_refused_naming_it(ds, transform, name, found):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, transform=transform)
    seq.epoch = 2
    with pytest.raises(TransformError, match=(
            f"^transform {re.escape(name)} returned {found} for batch 3 of epoch 2.*; it must return the "
            r"batch: a tuple \(x,\), \(x, y\) or \(x, y, sample_weight\) of arrays")):
        seq[3]


def test_none_from_a_transform_says_return_is_missing(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, transform=t.forget_return)
    with pytest.raises(TransformError, match=re.escape("(a missing `return batch`? A transform that changes "
                                                       "the batch in place must still return it)")):
        seq[0]


@pytest.mark.parametrize("result", [
    lambda b: b[0],  # an array alone: Keras makes it (x,)
    lambda b: [b[0], b[1]],  # a list is made a tuple
    lambda b: {"x": b[0]},  # a dict of inputs
    lambda b: (b[0], b[1], np.ones(len(b[1]))),
])
def test_transform_results_keras_takes_pass(ds, result):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, transform=lambda b, rng: result(b))
    out = seq[1]
    first = out["x"] if isinstance(out, dict) else out if isinstance(out, np.ndarray) else out[0]
    assert np.array_equal(first[:, 0], np.arange(32, 64))


# --- epoch and seed --------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 1.9, True, "1", None, np.float64(2.0)])
def test_bad_epochs_are_refused_naming_the_value(ds, value):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, shuffle="global")
    with pytest.raises(InvalidArgumentError, match=f"^epoch must be a non-negative int, got {re.escape(repr(value))}$"):
        seq.epoch = value
    assert seq.epoch == 0
    if value is not None:  # batch_rows(epoch=None) means the current epoch
        with pytest.raises(InvalidArgumentError, match="^epoch must be a non-negative int"):
            seq.batch_rows(0, epoch=value)


def test_numpy_integer_epochs_are_taken(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, shuffle="global")
    seq.epoch = np.int64(2)
    assert seq.epoch == 2 and type(seq.epoch) is int
    assert np.array_equal(seq.batch_rows(0), order.batch_indices(N, 32, 0, shuffle="global", epoch=2))


@pytest.mark.parametrize("value", [-1, 2**64, 2**64 + 5, True, 1.5, "3"])
def test_seeds_outside_0_to_2_64_are_refused(ds, value):
    d, _ = ds
    message = f"^seed must be an int in \\[0, 2\\*\\*64\\), got {re.escape(repr(value))}$"
    with pytest.raises(InvalidArgumentError, match=message):
        ShardSequence(d, x="x", y="y", shuffle="global", seed=value)
    seq = ShardSequence(d, x="x", y="y", shuffle="global", seed=5)
    with pytest.raises(InvalidArgumentError, match=message):
        seq.seed = value
    assert seq.seed == 5
    with pytest.raises(InvalidArgumentError, match=message):
        order.batch_indices(N, 32, 0, shuffle="global", seed=value)


def test_seeds_s_and_s_plus_2_64_no_longer_share_an_order():
    """Before, 2**64 + 5 was folded onto 5 and gave its order silently."""
    assert np.array_equal(order.batch_indices(N, 32, 0, shuffle="global", seed=np.uint64(2**64 - 1)),
                          order.batch_indices(N, 32, 0, shuffle="global", seed=2**64 - 1))
    with pytest.raises(InvalidArgumentError, match="got 18446744073709551621"):
        order.permute(np.arange(3), 10, 2**64 + 5, 0)
    with pytest.raises(InvalidArgumentError, match="^epoch must be a non-negative int, got -1$"):
        order.unpermute(np.arange(3), 10, 0, -1)


# --- split: the validation part, and a split drawn at random ----------------------------


def test_validation_part_of_split_is_in_order_whole_and_untransformed(ds):
    d, src = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global", drop_remainder=True,
                        transform=t.plus_100, seed=1)
    train, val = seq.split(0.9)
    assert (train.num_rows, val.num_rows) == (270, 30)
    assert (val.shuffle, val.drop_remainder, val.transform) == (False, False, None)
    assert len(val) == 2  # 16 + 14: the last partial batch is kept
    x, y = val[1]
    assert np.array_equal(y, np.arange(286, 300))
    assert np.array_equal(x, src["x"][286:300])  # untransformed
    assert np.array_equal(np.concatenate(rows_of(val)), np.arange(270, 300))  # in order, whole
    # The training part keeps every setting of the sequence.
    assert (train.shuffle, train.drop_remainder, train.transform, train.seed) == ("global", True, t.plus_100, 1)
    assert len(train) == 270 // 16
    x, y = train[0]
    assert np.array_equal(x, src["x"][y] + 100)
    assert not np.array_equal(y, np.arange(16))


def test_subset_shard_and_with_options_keep_or_change_settings_as_asked(ds):
    d, src = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="blocks", drop_remainder=True,
                        transform=t.plus_100, seed=4, block_size=2)
    for view in (seq.subset(10, 200), seq.shard(4, 1)):
        assert (view.shuffle, view.drop_remainder, view.transform, view.seed, view.block_size) == (
            "blocks", True, t.plus_100, 4, 2)
    _, val = seq.split(0.5)
    augmented = val.with_options(transform=t.plus_100, shuffle="global")
    assert (augmented.transform, augmented.shuffle, augmented.drop_remainder) == (t.plus_100, "global", False)
    x, y = augmented[0]
    assert np.array_equal(x, src["x"][y] + 100) and y.min() >= 150
    assert val.transform is None  # the view it came from is unchanged
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "with_options takes ['batch_size', 'shuffle', 'seed', 'block_size', 'drop_remainder', "
            "'transform', 'steps_per_epoch'], got ['padding', 'workers']")):
        val.with_options(workers=3, padding="pre")
    with pytest.raises(InvalidArgumentError, match="^batch_size must be a positive int, got 0$"):
        val.with_options(batch_size=0)


def test_views_take_the_options_the_sequence_has_when_they_are_made(ds):
    """Before, views were made from a copy of the constructor's arguments."""
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, shuffle="global")
    seq.batch_size = 64
    seq.shuffle = "batches"
    seq.epoch = 3
    train, val = seq.split(0.9)
    assert (train.batch_size, train.shuffle, train.epoch) == (64, "batches", 0)
    assert (val.batch_size, val.shuffle) == (64, False)
    assert seq.subset(0, 128).batch_size == 64 and len(seq.subset(0, 128)) == 2
    with pytest.raises(InvalidArgumentError, match="^shuffle must be False, 'batches', 'blocks' or 'global'"):
        seq.shuffle = "rows"
    with pytest.raises(InvalidArgumentError, match="^batch_size must be a positive int, got 0$"):
        seq.batch_size = 0
    assert (seq.batch_size, seq.shuffle) == (64, "batches")


def test_ragged_sequence_views_keep_their_own_settings_too(tmp_path):
    rng = np.random.default_rng(1)
    tokens = [rng.integers(1, 9, k).astype(np.int32) for k in rng.integers(1, 12, 120)]
    d = npyseq.write_shards(tmp_path / "r", {"tokens": tokens, "id": np.arange(120)}, rows=50, progress=False)
    seq = RaggedSequence(d, x="tokens", y="id", batch_size=8, max_length=5, padding="pre", shuffle="global")
    seq.batch_size = 10
    train, val = seq.split(0.75, shuffle_rows=True, seed=2)
    for part in (train, val):
        assert (part.batch_size, part.max_length, part.padding) == (10, 5, "pre")
        assert all(part[i][0].shape[1] <= 5 for i in range(len(part)))
    ids = [np.concatenate([part[i][1] for i in range(len(part))]) for part in (train, val)]
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(120))
    assert "RaggedSequence 30 rows drawn by split(shuffle_rows=True)" in repr(val)


def test_split_with_shuffled_rows_is_disjoint_complete_and_deterministic(ds):
    d, src = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global", seed=9)
    train, val = seq.split(0.8, shuffle_rows=True, seed=3)
    assert (train.num_rows, val.num_rows) == (240, 60)
    train_rows, val_rows = np.concatenate(rows_of(train)), np.concatenate(rows_of(val))
    assert len(np.intersect1d(train_rows, val_rows)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(N))
    assert not np.array_equal(np.sort(val_rows), np.arange(240, 300))  # not a contiguous range
    assert val_rows.min() < 100  # drawn from everywhere
    x, y = val[0]
    assert np.array_equal(x, src["x"][y])
    # The same split again, whatever the sequence's own seed; another split seed, other rows.
    other_seed = ShardSequence(d, x="x", y="y", batch_size=16, seed=1234).split(0.8, shuffle_rows=True, seed=3)[1]
    assert np.array_equal(np.concatenate(rows_of(other_seed)), val_rows)
    assert not np.array_equal(np.concatenate(rows_of(seq.split(0.8, shuffle_rows=True, seed=4)[1])), val_rows)
    # Batches of the validation part ascend within each batch.
    assert all(np.all(np.diff(b) > 0) for b in rows_of(val))
    assert "60 rows drawn by split(shuffle_rows=True)" in repr(val)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_every_shuffle_mode_works_on_a_randomly_drawn_part(ds, mode, drop_remainder):
    d, src = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, seed=5)
    train, _ = seq.split(0.7, shuffle_rows=True, seed=1)
    part = train.with_options(shuffle=mode, drop_remainder=drop_remainder, block_size=3)
    members = np.sort(np.concatenate(rows_of(train.with_options(shuffle=False))))
    epochs = []
    for epoch in range(2):
        part.epoch = epoch
        batches = rows_of(part)
        rows = np.concatenate(batches)
        assert len(np.unique(rows)) == len(rows)  # each row at most once per epoch
        assert np.isin(rows, members).all()
        if drop_remainder:
            assert len(rows) == (210 // 16) * 16
        else:
            assert np.array_equal(np.sort(rows), members)
        x, y = part[len(part) - 1]
        assert np.array_equal(x, src["x"][y])
        epochs.append(rows)
    if mode:
        assert not np.array_equal(epochs[0], epochs[1])


def test_views_of_randomly_drawn_parts_stay_inside_them(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=10)
    train, val = seq.split(0.6, shuffle_rows=True, seed=7)
    members = np.concatenate(rows_of(train))
    a, b = train.split(0.5, shuffle_rows=True, seed=8)
    assert np.array_equal(np.sort(np.concatenate(rows_of(a) + rows_of(b))), np.sort(members))
    sub = train.subset(20, 60)
    assert np.array_equal(np.sort(np.concatenate(rows_of(sub))), np.sort(members[20:60]))
    hosts = [train.shard(2, i) for i in range(2)]  # 180 rows, batches of 10: 5 rows of each per host
    seen = np.concatenate([np.concatenate(rows_of(h)) for h in hosts])
    assert np.array_equal(np.sort(seen), np.sort(members)) and {h.num_rows for h in hosts} == {180}
    assert all(np.array_equal(np.concatenate([h.batch_rows(b) for h in hosts]), train.batch_rows(b))
               for b in range(len(train)))
    # A drawn part pickles (for process workers) and reads the same there.
    copy = pickle.loads(pickle.dumps(val))
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(rows_of(copy), rows_of(val)))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_split_shuffle_rows_must_be_a_bool(ds, value):
    d, _ = ds
    with pytest.raises(InvalidArgumentError, match=f"^shuffle_rows must be True or False, got {value!r}$"):
        ShardSequence(d, x="x", y="y").split(0.5, shuffle_rows=value)


# --- empty sequences -----------------------------------------------------------------


def test_empty_sequences_are_refused_naming_rows_batch_size_and_drop_remainder(ds):
    d, _ = ds
    with pytest.raises(EmptySequenceError, match=re.escape(
            f"ShardSequence: the sequence would have no batch: 300 rows (rows [0, 300) of the dataset at "
            f"{d.path}), batch_size=5000, drop_remainder=True; Keras refuses a dataset of length 0: use "
            "batch_size <= 300 or drop_remainder=False")):
        ShardSequence(d, x="x", y="y", batch_size=5000, drop_remainder=True)
    assert len(ShardSequence(d, x="x", y="y", batch_size=5000)) == 1


@pytest.mark.parametrize("make, what", [
    (lambda s: s.split(0.9999), "split(0.9999) of 300 rows, second part: the sequence would have no batch: "
                                "0 rows (rows [300, 300)"),
    (lambda s: s.split(300), "split(300) of 300 rows, second part"),
    (lambda s: s.split(0), "split(0) of 300 rows, first part: the sequence would have no batch: 0 rows"),
    (lambda s: s.split(0.001, shuffle_rows=True), "split(0.001) of 300 rows, first part: the sequence would "
                                                  "have no batch: 0 rows (0 rows drawn by split"),
    (lambda s: s.subset(5, 5), "subset(5, 5): the sequence would have no batch: 0 rows (rows [5, 5)"),
    (lambda s: s.subset(0, 20).with_options(drop_remainder=True),
     "with_options(drop_remainder): the sequence would have no batch: 20 rows (rows [0, 20) of the dataset at "),
])
def test_empty_views_are_refused_naming_the_view(ds, make, what):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32)
    with pytest.raises(EmptySequenceError, match="^" + re.escape(what)) as info:
        make(seq)
    assert "batch_size=32, drop_remainder=" in str(info.value)


def test_settings_that_would_empty_a_sequence_are_refused(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, drop_remainder=True)
    with pytest.raises(EmptySequenceError, match=re.escape(
            "setting batch_size=301: the sequence would have no batch: 300 rows")):
        seq.batch_size = 301
    assert seq.batch_size == 32 and len(seq) == 9


# --- the start method of worker processes ------------------------------------------------


@pytest.fixture
def default_fork(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "fork")


def test_jax_gets_forkserver_instead_of_fork_and_explicit_methods_win(default_fork, monkeypatch):
    assert start_method.choose(None, "jax") == "forkserver"
    assert start_method.choose(None, "tensorflow") is None  # Keras' default (fork) stays
    assert start_method.choose(None, "torch") is None
    assert start_method.choose("fork", "jax") == "fork"
    assert start_method.choose("spawn", "tensorflow") == "spawn"
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # interactive: no file
    assert start_method.choose(None, "jax") is None


def test_jax_keeps_a_start_method_that_is_not_fork(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    assert start_method.choose(None, "jax") is None


def test_bad_start_method_is_refused(ds):
    d, _ = ds
    methods = multiprocessing.get_all_start_methods()
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"start_method must be None or one of {methods}, got 'thread'")):
        ShardSequence(d, x="x", y="y", start_method="thread")


@pytest.mark.timeout(180)
def test_keras_pool_of_a_sequence_starts_with_its_start_method(ds):
    """The wrapped enqueuer makes a spawn pool for a sequence that asks for one; others get Keras' pool."""
    from keras.src.trainers.data_adapters import py_dataset_adapter as adapter

    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=32, workers=1, use_multiprocessing=True,
                        start_method="spawn")
    enqueuer = adapter.OrderedEnqueuer(seq, workers=1, use_multiprocessing=True)
    enqueuer._send_py_dataset()
    pool = enqueuer.executor_fn(adapter._SHARED_SEQUENCES)
    try:
        assert pool._ctx.get_start_method() == "spawn"
        assert pool in list(adapter._DATA_POOLS)
        x, y = pool.apply_async(adapter.get_index, (enqueuer.uid, 3)).get(timeout=120)
        assert np.array_equal(y, np.arange(96, 128))
    finally:
        pool.terminate()
        pool.join()
        adapter._SHARED_SEQUENCES[enqueuer.uid] = None

    class Plain(adapter.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return np.zeros((1, 1)), np.zeros(1)

    plain = adapter.OrderedEnqueuer(Plain(workers=1, use_multiprocessing=True), workers=1,
                                    use_multiprocessing=True)
    assert plain.executor_fn.__qualname__.startswith("OrderedEnqueuer._get_executor_init")
