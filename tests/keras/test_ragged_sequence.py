"""RaggedSequence: padding, masks and lengths, bucketing, views, workers, fit, errors."""

import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import npyseq
from npyseq import InvalidArgumentError, order
from npyseq.order import bucketing
from npyseq.keras.ragged_sequence import RaggedSequence

from _helpers import BACKENDS, run_backend_script

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")  # scripts, helpers
N = 203
MODES = [False, "batches", "blocks", "global"]


def make_tokens(rng, n, longest=20, empty=()):
    lengths = rng.integers(0, longest + 1, n)
    lengths[list(empty)] = 0
    return [rng.integers(1, 50, k).astype(np.int32) for k in lengths]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    rng = np.random.default_rng(0)
    tokens = make_tokens(rng, N, empty=range(8, 16))  # batch 1 of 8 rows is all empty samples
    arrays = {
        "tokens": tokens,
        "vectors": [rng.random((k, 3), dtype=np.float32) for k in rng.integers(0, 9, N)],
        "tags": [t % 5 for t in tokens],  # per-token labels, same lengths as tokens
        "id": np.arange(N, dtype=np.int64),
        "label": rng.random(N, dtype=np.float32),
    }
    root = tmp_path_factory.mktemp("ragged") / "data"
    return npyseq.write_shards(root, arrays, rows=37, progress=False), arrays


def pad_by_hand(samples, padding="post", truncating="post", max_length=None, multiple=None, pad_value=0):
    """What a padded batch must be: (batch, kept lengths, mask), computed one sample at a time."""
    length = max(max(len(s) for s in samples), 1)
    if multiple:
        length = -(-length // multiple) * multiple
    if max_length:
        length = min(length, max_length)
    element = samples[0].shape[1:]
    batch = np.full((len(samples), length) + element, pad_value, dtype=samples[0].dtype)
    mask = np.zeros((len(samples), length), bool)
    kept = []
    for i, s in enumerate(samples):
        if len(s) > length:
            s = s[:length] if truncating == "post" else s[len(s) - length:]
        where = slice(0, len(s)) if padding == "post" else slice(length - len(s), length)
        batch[i, where] = s
        mask[i, where] = True
        kept.append(len(s))
    return batch, np.array(kept), mask


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("truncating", ["post", "pre"])
@pytest.mark.parametrize("max_length,multiple", [(None, None), (7, None), (None, 8), (12, 8), (1, None)])
def test_batches_equal_padding_by_hand(ds, padding, truncating, max_length, multiple):
    d, src = ds
    seq = RaggedSequence(d, x="tokens", y="id", batch_size=16, shuffle="global", seed=1, padding=padding,
                         truncating=truncating, max_length=max_length, pad_to_multiple=multiple,
                         pad_value=-1, return_mask=True, return_lengths=True)
    for i in range(len(seq)):
        (tokens, mask, lengths), ids = seq[i]
        assert np.array_equal(ids, seq.batch_rows(i))
        batch, kept, hand_mask = pad_by_hand([src["tokens"][r] for r in ids], padding, truncating,
                                             max_length, multiple, pad_value=-1)
        assert tokens.dtype == np.int32 and np.array_equal(tokens, batch)
        assert mask.dtype == bool and np.array_equal(mask, hand_mask)
        assert lengths.dtype == np.int32 and np.array_equal(lengths, kept)
        if multiple and not max_length:
            assert tokens.shape[1] % multiple == 0


def test_a_batch_of_empty_samples_is_one_column_of_padding(ds):
    d, src = ds
    seq = RaggedSequence(d, x="tokens", y="id", batch_size=8, return_mask=True, pad_value=7)
    (tokens, mask), ids = seq[1]
    assert np.array_equal(ids, np.arange(8, 16)) and all(len(src["tokens"][r]) == 0 for r in ids)
    assert np.array_equal(tokens, np.full((8, 1), 7, np.int32))
    assert not mask.any()


def test_element_shape_pad_values_per_array_and_dtype_casts(ds):
    d, src = ds
    seq = RaggedSequence(d, x={"v": "vectors", "t": "tokens"}, y="tags", batch_size=10, shuffle="blocks",
                         pad_value={"vectors": -2.0, "tags": -1}, dtype={"vectors": "float16"})
    x, tags = seq[3]
    rows = seq.batch_rows(3)
    vectors, _, _ = pad_by_hand([src["vectors"][r] for r in rows], pad_value=-2.0)
    assert x["v"].dtype == np.float16 and x["v"].shape[2] == 3
    assert np.array_equal(x["v"], vectors.astype(np.float16))
    assert np.array_equal(x["t"], pad_by_hand([src["tokens"][r] for r in rows])[0])  # tokens pad with 0
    assert np.array_equal(tags, pad_by_hand([src["tags"][r] for r in rows], pad_value=-1)[0])


def test_fixed_arrays_come_out_as_from_shard_sequence(ds):
    d, _ = ds
    ours = RaggedSequence(d, x=["tokens", "label"], y="id", sample_weight="label", batch_size=32,
                          shuffle="global", seed=4)
    theirs = npyseq.ShardSequence(d, x="label", y="id", sample_weight="label", batch_size=32,
                                  shuffle="global", seed=4)
    for i in range(len(ours)):
        (_, label), ids, w = ours[i]
        label2, ids2, w2 = theirs[i]
        assert np.array_equal(label, label2) and np.array_equal(ids, ids2) and np.array_equal(w, w2)


def test_shard_sequence_refuses_ragged_arrays(ds):
    d, _ = ds
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "arrays ['tokens'] are ragged (rows of different lengths); ShardSequence batches fixed-size "
            "rows only: use npyseq.RaggedSequence, which pads each batch")):
        npyseq.ShardSequence(d, x={"t": "tokens", "l": "label"}, y="id")


def test_mask_and_lengths_go_where_the_docstring_says(ds):
    d, src = ds
    rows = np.arange(16)
    padded, kept, mask = pad_by_hand([src["tokens"][r] for r in rows])
    vectors, vkept, vmask = pad_by_hand([src["vectors"][r] for r in rows])
    x, _ = RaggedSequence(d, x="tokens", y="id", batch_size=16, return_lengths=True)[0]
    assert len(x) == 2 and np.array_equal(x[0], padded) and np.array_equal(x[1], kept)
    x, _ = RaggedSequence(d, x=["tokens", "label", "vectors"], y="id", batch_size=16, return_mask=True,
                          return_lengths=True)[0]
    assert len(x) == 7
    assert np.array_equal(x[1], src["label"][rows]) and np.array_equal(x[2], vectors)
    for got, want in zip(x[3:], [mask, vmask, kept, vkept]):
        assert np.array_equal(got, want)
    x, _ = RaggedSequence(d, x={"t": "tokens", "l": "label"}, y="id", batch_size=16, return_mask=True)[0]
    assert sorted(x) == ["l", "t", "t_mask"] and np.array_equal(x["t_mask"], mask)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("drop", [False, True])
def test_bucketing_every_row_once_and_batches_follow_batch_rows(ds, mode, drop):
    d, src = ds
    seq = RaggedSequence(d, x="tokens", y="id", batch_size=8, shuffle=mode, seed=3, bucket=True,
                         bucket_pool=5, drop_remainder=drop)
    lengths = np.array([len(t) for t in src["tokens"]])
    epochs = []
    for epoch in range(3):
        seq.on_epoch_begin()
        batches = [seq[i] for i in range(len(seq))]
        seq.on_epoch_end()
        ids = [b[1] for b in batches]
        assert all(np.array_equal(r, seq.batch_rows(i, epoch)) for i, r in enumerate(ids))
        assert all(np.array_equal(r, bucketing.batch_indices(N, 8, i, lengths, bucket_pool=5, shuffle=mode,
                                                             seed=3, epoch=epoch, drop_remainder=drop))
                   for i, r in enumerate(ids))
        rows = np.concatenate(ids)
        if drop:
            assert len(rows) == N // 8 * 8 and len(np.unique(rows)) == len(rows)
        else:
            assert np.array_equal(np.sort(rows), np.arange(N))
        # Each batch is padded to its own longest sample.
        assert all(b[0].shape[1] == max(lengths[r].max(), 1) for b, r in zip(batches, ids))
        epochs.append(ids)
    same = all(np.array_equal(a, b) for a, b in zip(epochs[0], epochs[1]))
    assert same == (mode is False)


def test_bucketing_pads_less_than_random_batches(tmp_path):
    rng = np.random.default_rng(5)
    lengths = np.clip(rng.lognormal(4, 1, 3000).astype(np.int64), 1, 400)
    d = npyseq.write_shards(tmp_path / "d", {"tokens": [np.ones(k, np.int32) for k in lengths]}, progress=False)
    padded = {}
    for bucket in (False, True):
        seq = RaggedSequence(d, x="tokens", batch_size=32, shuffle="global", bucket=bucket)
        padded[bucket] = sum(seq[i][0].size for i in range(len(seq)))
    assert padded[True] <= 1.1 * lengths.sum() < 2 * lengths.sum() <= padded[False]


def test_bucket_by_another_array_and_views_keep_every_option(ds):
    d, src = ds
    seq = RaggedSequence(d, x="tokens", y="id", batch_size=8, shuffle="global", bucket=True, bucket_pool=4,
                         bucket_by="vectors", max_length=9, padding="pre")
    vlen = np.array([len(v) for v in src["vectors"]])
    train, val = seq.split(0.75)
    assert (train.num_rows, val.num_rows) == (152, 51)
    # The validation part of split reads in order (shuffle=False), still bucketed.
    for part, start, shuffle in ((train, 0, "global"), (val, 152, False)):
        assert (part.max_length, part.padding, part.bucket_pool, part.bucket) == (9, "pre", 4, True)
        assert part.shuffle == shuffle
        ids = [part[i][1] for i in range(len(part))]
        assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(start, start + part.num_rows))
        expected = [bucketing.batch_indices(part.num_rows, 8, i, vlen[start:start + part.num_rows],
                                            bucket_pool=4, shuffle=shuffle) + start for i in range(len(part))]
        assert all(np.array_equal(a, b) for a, b in zip(ids, expected))
    host = seq.with_options(drop_remainder=True).shard(2, 1)
    whole = seq.with_options(drop_remainder=True)
    assert len(host) == len(whole) == 25
    assert all(np.array_equal(host[i][1], whole[i][1][4:]) for i in range(len(host)))
    assert "RaggedSequence" in repr(host) and "bucket_by='vectors'" in repr(host)


def _batch_in_worker(seq, i):
    return seq[i]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_same_batches_in_worker_processes(ds, method):
    d, _ = ds
    seq = RaggedSequence(d, x={"t": "tokens", "v": "vectors"}, y="id", batch_size=16, shuffle="blocks", seed=4,
                         bucket=True, bucket_pool=3, return_mask=True, workers=2, use_multiprocessing=True)
    seq.epoch = 2
    assert len(pickle.dumps(seq)) < 4000  # paths and options, no data
    here = [seq[i] for i in range(len(seq))]
    with multiprocessing.get_context(method).Pool(2) as pool:
        there = pool.starmap(_batch_in_worker, [(seq, i) for i in range(len(seq))])
    for (x1, y1), (x2, y2) in zip(here, there):
        assert sorted(x1) == sorted(x2) == ["t", "t_mask", "v", "v_mask"]
        assert all(np.array_equal(x1[k], x2[k]) for k in x1) and np.array_equal(y1, y2)


# --- through model.fit, in fresh processes (tests/support/ragged_fit_script.py)

FIT_CONFIGS = {
    "1 worker": ("default", 1, 0),
    "2 threads": ("default", 2, 0),
    "2 processes fork": ("fork", 2, 1),
    "2 processes spawn": ("spawn", 2, 1),
}
FIT_N, FIT_BATCH, FIT_POOL, FIT_SEED = 150, 16, 3, 7


@pytest.fixture(scope="module")
def fit_dataset(tmp_path_factory):
    rng = np.random.default_rng(1)
    arrays = {"tokens": make_tokens(rng, FIT_N, longest=30, empty=[5, 77]),
              "id": np.arange(FIT_N, dtype=np.float32)[:, None]}
    return npyseq.write_shards(tmp_path_factory.mktemp("fit") / "data", arrays, rows=40, progress=False)


@pytest.fixture(scope="module")
def fit_runs(fit_dataset):
    runs = {}
    for name, (method, workers, processes) in FIT_CONFIGS.items():
        cmd = [sys.executable, os.path.join(HERE, "ragged_fit_script.py"), fit_dataset.path, method,
               str(workers), str(processes), ",".join(map(str, MODES)), "3"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", list(FIT_CONFIGS))
def test_fit_consumes_every_row_once_in_the_bucketed_order(fit_runs, fit_dataset, config, mode):
    seq = RaggedSequence(fit_dataset, x={"tokens": "tokens", "id": "id"}, y="id", batch_size=FIT_BATCH,
                         shuffle=mode, seed=FIT_SEED, bucket=True, bucket_pool=FIT_POOL)
    result = fit_runs[config][str(mode)]
    assert sorted(result["epochs"]) == ["0", "1", "2"] and result["final_epoch"] == 3
    for epoch, batches in result["epochs"].items():
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(FIT_N)), (config, mode, epoch)
        # The same order for the same seed, whatever the workers: the order batch_rows gives.
        assert batches == [seq.batch_rows(i, int(epoch)).tolist() for i in range(len(seq))]
    # Padded to each batch's longest sample: the model saw the widths bucketing promises.
    lengths = fit_dataset["tokens"].lengths()
    for epoch, widths in result["widths"].items():
        assert widths == [max(int(lengths[b].max()), 1) for b in result["epochs"][epoch]]


# --- errors


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_length=0), "max_length must be a positive int, got 0"),
    (dict(pad_to_multiple=-8), "pad_to_multiple must be a positive int, got -8"),
    (dict(padding="middle"), "padding must be 'post' or 'pre', got 'middle'"),
    (dict(truncating="left"), "truncating must be 'post' or 'pre', got 'left'"),
    (dict(bucket=True, bucket_pool=0), "bucket_pool must be a positive int, got 0"),
    (dict(bucket="yes"), "bucket must be True or False, got 'yes'"),
    (dict(bucket_by="tokens"), "bucket_by='tokens' needs bucket=True"),
    (dict(bucket=True, bucket_by="label"),
     r"bucket_by='label' is a fixed-size array \(every row has shape \(\)\); bucketing needs a ragged array"),
    (dict(bucket=True, bucket_by="nope"), r"bucket_by must name a ragged array of the dataset at .*got 'nope'"),
    (dict(pad_value={"label": 1}), r"pad_value: \['label'\] are not ragged arrays this sequence reads"),
    (dict(pad_value="0"), "pad_value of 'tokens' must be a number, got '0'"),
    (dict(x="label"), r"RaggedSequence needs a ragged array among x, y and sample_weight, got only fixed-size"),
    (dict(x="label", y="tokens", return_mask=True), r"return_mask=True but no array of x is ragged"),
    (dict(x={"t": "tokens", "t_mask": "label"}, return_mask=True),
     "x already has an input named 't_mask', where the mask of 't' would go"),
    (dict(x={"t": ["tokens"]}, return_lengths=True), "return_lengths needs x to be an array name, a list"),
])
def test_bad_options_say_what_was_received(ds, kwargs, message):
    d, _ = ds
    kwargs = {"x": "tokens", "y": "id", **kwargs}
    with pytest.raises(InvalidArgumentError, match=message) as info:
        RaggedSequence(d, **kwargs)
    err = pickle.loads(pickle.dumps(info.value))
    assert type(err) is InvalidArgumentError and str(err) == str(info.value)


def test_out_of_range_batches_raise_index_error(ds):
    d, _ = ds
    seq = RaggedSequence(d, x="tokens", batch_size=50, bucket=True)
    assert len(seq) == order.num_batches(N, 50) == 5
    with pytest.raises(IndexError, match="this epoch has 5 batches"):
        seq[5]
    assert np.array_equal(seq[-1][0], seq[4][0])


# --- Embedding + LSTM/GRU on each backend, in subprocesses (tests/support/ragged_backend_script.py)

@pytest.fixture(scope="module", params=BACKENDS)
def backend_facts(request, tmp_path_factory):
    return run_backend_script("ragged_backend_script.py", request.param,
                              tmp_path_factory.mktemp(request.param), 300)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mask_zero", "explicit_mask"])
def test_embedding_and_recurrent_layer_learn_through_masked_padding(backend_facts, model):
    loss = backend_facts[f"loss_{model}"]
    assert len(loss) == 5 and all(np.isfinite(loss)) and loss[-1] < 0.8 * loss[0]
