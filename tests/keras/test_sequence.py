"""ShardSequence without a model: batches, structures, dtypes, transforms, views, errors."""

import functools
import json
import multiprocessing
import os
import pickle

import ml_dtypes
import numpy as np
import pytest

import npyseq
from npyseq import InvalidArgumentError, ShardSequence
from npyseq.format import npy
from npyseq.format.manifest import MANIFEST_NAME

from _fit_helpers import add_noise

N = 203


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("seq") / "data"
    arrays = {
        "x": rng.random((N, 6), dtype=np.float32),
        "img": rng.random((N, 4, 4), dtype=np.float32).astype(np.float16),
        "bf": rng.random((N, 3), dtype=np.float32).astype(ml_dtypes.bfloat16),
        "y": np.arange(N, dtype=np.int64),
        "w": rng.random(N, dtype=np.float32),
    }
    return npyseq.write_shards(root, arrays, rows=37, progress=False), arrays


def all_batches(seq):
    return [seq[i] for i in range(len(seq))]


def test_batches_are_real_copies_with_the_right_rows(ds):
    d, src = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=50)
    assert len(seq) == 5 and seq.num_rows == N
    x, y = seq[4]
    assert np.array_equal(y, np.arange(200, N))
    assert np.array_equal(x, src["x"][200:])
    assert type(x) is np.ndarray and x.flags.owndata or x.base is not None and not isinstance(x.base, np.memmap)
    assert not isinstance(x, np.memmap)


def test_structures_list_dict_and_sample_weight(ds):
    d, src = ds
    seq = ShardSequence(d, x={"a": "x", "b": "img"}, y=["y", "x"], sample_weight="w", batch_size=64)
    x, y, w = seq[1]
    assert set(x) == {"a", "b"}
    assert np.array_equal(x["b"], src["img"][64:128])
    assert isinstance(y, tuple) and np.array_equal(y[0], np.arange(64, 128))
    assert np.array_equal(w, src["w"][64:128])
    only_x = ShardSequence(d, x="x", batch_size=64)[0]
    assert isinstance(only_x, tuple) and len(only_x) == 1


def test_dtype_casts_per_batch(ds):
    d, src = ds
    seq = ShardSequence(d, x=["img", "bf"], y="y", batch_size=10, dtype="float32")
    (img, bf), y = seq[2]
    assert img.dtype == np.float32 and bf.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(img, src["img"][20:30].astype(np.float32))
    assert np.array_equal(bf, src["bf"][20:30].astype(np.float32))
    per_array = ShardSequence(d, x="bf", y="y", batch_size=10, dtype={"y": "int32"})
    bf, y = per_array[0]
    assert bf.dtype == ml_dtypes.bfloat16 and y.dtype == np.int32


@pytest.mark.parametrize("mode", [False, "batches", "blocks", "global"])
def test_every_row_once_and_order_depends_on_epoch(ds, mode):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle=mode, seed=3)
    epochs = []
    for e in range(3):
        seq.on_epoch_begin()
        rows = np.concatenate([seq[i][1] for i in range(len(seq))])
        seq.on_epoch_end()
        assert np.array_equal(np.sort(rows), np.arange(N))
        epochs.append(rows)
    assert seq.epoch == 3
    if mode:
        assert not np.array_equal(epochs[0], epochs[1])
    else:
        assert np.array_equal(epochs[0], epochs[1])


def test_epoch_advances_only_after_an_epoch_began(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global")
    seq.on_epoch_end()  # what fit() does before its first epoch
    assert seq.epoch == 0
    seq.on_epoch_begin()
    seq.on_epoch_end()
    seq.on_epoch_end()  # a second end (validation passes do this)
    assert seq.epoch == 1


def test_batches_do_not_depend_on_the_order_they_are_asked_in(ds):
    d, _ = ds
    a = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global", seed=9)
    b = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global", seed=9)
    forward = [a[i][1] for i in range(len(a))]
    backward = [b[i][1] for i in reversed(range(len(b)))][::-1]
    assert all(np.array_equal(p, q) for p, q in zip(forward, backward))


def test_transform_gets_a_reproducible_per_batch_generator(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global", transform=add_noise)
    first = seq[3][0]
    again = seq[3][0]
    other = seq[4][0]
    assert np.array_equal(first, again)
    clean = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global")[3][0]
    noise3, noise4 = first - clean, other - ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global")[4][0]
    assert not np.allclose(noise3, noise4[: len(noise3)])
    seq.epoch = 1
    assert not np.array_equal(seq[3][0], first)


def _batch_in_worker(seq, i):
    return seq[i]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_transform_same_in_worker_processes(ds, method):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="blocks", seed=4,
                        transform=functools.partial(add_noise), workers=2, use_multiprocessing=True)
    seq.epoch = 2
    here = [seq[i] for i in range(len(seq))]
    with multiprocessing.get_context(method).Pool(2) as pool:
        there = pool.starmap(_batch_in_worker, [(seq, i) for i in range(len(seq))])
    for (x1, y1), (x2, y2) in zip(here, there):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_split_subset_and_shard_are_disjoint_views(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=10)
    train, val = seq.split(0.9)
    assert (train.num_rows, val.num_rows) == (183, 20)
    rows = lambda s: np.concatenate([s[i][1] for i in range(len(s))])
    assert np.array_equal(np.concatenate([rows(train), rows(val)]), np.arange(N))
    assert np.array_equal(rows(seq.subset(5, 17)), np.arange(5, 17))
    assert seq.split(100)[0].num_rows == 100
    # shard(n, i): host i's part of every global batch; together the hosts' parts are the global batch.
    whole = seq.with_options(drop_remainder=True)
    hosts = [whole.shard(2, i) for i in range(2)]
    assert {len(h) for h in hosts} == {len(whole)} == {20} and {h.num_rows for h in hosts} == {N}
    for b in range(len(whole)):
        assert np.array_equal(np.concatenate([h[b][1] for h in hosts]), whole[b][1])
    assert np.array_equal(hosts[1][3][1], np.arange(35, 40))  # one contiguous read in dataset order
    # Shuffling stays inside a view.
    sh = ShardSequence(d, x="x", y="y", batch_size=10, shuffle="global").subset(50, 150)
    assert np.array_equal(np.sort(rows(sh)), np.arange(50, 150))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(x="nope"), InvalidArgumentError, r"x: unknown array 'nope'; the dataset at .* has \['x', 'img', 'bf', 'y', 'w'\]"),
    (dict(x="x", y="zz"), InvalidArgumentError, "y: unknown array 'zz'"),
    (dict(x="x", batch_size=0), InvalidArgumentError, "batch_size must be a positive int, got 0"),
    (dict(x="x", batch_size=2.5), InvalidArgumentError, "batch_size must be a positive int, got 2.5"),
    (dict(x="x", shuffle="rows"), InvalidArgumentError, "shuffle must be False, 'batches', 'blocks' or 'global'"),
    (dict(x="x", sample_weight="w"), InvalidArgumentError, "sample_weight needs y"),
    (dict(x="x", transform=lambda b, r: b, workers=2, use_multiprocessing=True),
     InvalidArgumentError, "cannot be pickled .* use_multiprocessing=True sends it to worker processes"),
    (dict(x="x", transform=3), InvalidArgumentError, "transform must be callable, got 3"),
    (dict(x="x", dtype="float99"), InvalidArgumentError, "dtype 'float99' is not a numpy dtype"),
    (dict(x="x", dtype={"q": "float32"}), InvalidArgumentError, "dtype: 'q' is not an array this sequence reads"),
    (dict(x="x", workers=-1), InvalidArgumentError, "workers must be a non-negative int, got -1"),
])
def test_bad_arguments_raise_at_construction(ds, kwargs, error, message):
    d, _ = ds
    with pytest.raises(error, match=message):
        ShardSequence(d, **kwargs)


def test_lambda_transform_is_fine_with_threads(ds):
    d, _ = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=10, transform=lambda b, r: (b[0] * 0, b[1]), workers=2)
    assert np.all(seq[0][0] == 0)


def test_arrays_of_different_lengths_are_refused(ds, tmp_path):
    d, _ = ds
    other = npyseq.write_shards(tmp_path / "o", {"y": np.arange(10)}, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"all arrays must have the same number of rows, got .*203.*10"):
        ShardSequence(d, x="x", y=other["y"])


def test_split_and_dataset_path_errors(ds, tmp_path):
    d, _ = ds
    seq = ShardSequence(d, x="x", batch_size=10)
    with pytest.raises(InvalidArgumentError, match=r"split takes a fraction in \(0, 1\) or a row count in \[0, 203\], got 1.5"):
        seq.split(1.5)
    with pytest.raises(InvalidArgumentError, match="subset needs 0 <= start <= stop <= 203, got start=5, stop=300"):
        seq.subset(5, 300)
    with pytest.raises(npyseq.DatasetNotFoundError, match="no such dataset folder"):
        ShardSequence(tmp_path / "missing", x="x")
    assert len(ShardSequence(d.path, x="x", batch_size=100)) == 3


def _fake_big_dataset(root, shards=40, rows=100_000, row_shape=(256,)):
    """A multi-GB dataset of sparse shard files (valid headers and sizes, no data written)."""
    dtype = np.dtype("float32")
    arrays = {}
    for name in ("x", "y"):
        os.makedirs(root / name)
        shape = row_shape if name == "x" else ()
        entries = []
        for k in range(shards):
            header = npy.header_bytes(dtype, (rows,) + shape)
            size = len(header) + rows * dtype.itemsize * int(np.prod(shape))
            path = root / name / f"{k:06d}.npy"
            with open(path, "wb") as f:
                f.write(header)
                f.truncate(size)
            entries.append({"path": f"{name}/{k:06d}.npy", "bytes": size, "checksum": "xxh3_64:0"})
        arrays[name] = {"dtype": "<f4", "logical_dtype": None, "shape": list(shape), "shards": entries}
    doc = {"format": "npyseq", "version": 1, "rows": shards * rows,
           "shard_rows": [rows] * shards, "arrays": arrays}
    (root / MANIFEST_NAME).write_text(json.dumps(doc))


def test_pickling_a_sequence_over_gigabytes_costs_a_few_kilobytes(tmp_path):
    _fake_big_dataset(tmp_path / "big")
    seq = ShardSequence(tmp_path / "big", x="x", y="y", batch_size=256, shuffle="global",
                        workers=2, use_multiprocessing=True)
    assert seq.dataset.nbytes > 4 * 10**9
    blob = pickle.dumps(seq)
    assert len(blob) < 4096, len(blob)
    copy = pickle.loads(blob)
    assert np.array_equal(copy[7][1], seq[7][1]) and copy[7][0].shape == (256, 256)


def test_batch_buffers_are_reused_only_once_released(ds):
    d, src = ds
    seq = ShardSequence(d, x="x", y="y", batch_size=16, shuffle="global", seed=2)
    held = [seq[i] for i in range(len(seq))]  # every batch alive at once: no reuse possible
    view = seq[0][0][:, :2]  # a view keeps its batch's buffer alive too
    for i, (x, y) in enumerate(held):
        assert np.array_equal(x, src["x"][y]), i
    assert np.array_equal(view, src["x"][seq.batch_rows(0)][:, :2])
    del held, x, y
    fresh = [seq[3][0] for _ in range(3)]
    # Released buffers are handed out again instead of allocating new ones.
    assert len({a.__array_interface__["data"][0] for a in fresh}) == 3
    del fresh
    reused = {seq[3][0].__array_interface__["data"][0] for _ in range(5)}
    assert len(reused) == 1
    assert np.array_equal(view, src["x"][seq.batch_rows(0)][:, :2])
