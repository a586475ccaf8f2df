"""The Keras layer as a package (npyseq.keras) and the order package (npyseq.order), seen from outside.

``import npyseq`` stays cheap and complete (``dir`` and type checkers see the
lazily loaded classes), the classes come from ``npyseq.keras``, their flags
are bools, and ``RaggedSequence`` takes ``ShardSequence``'s arguments as its
own without retyping them.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import numpy as np
import pytest

import npyseq
from npyseq import InvalidArgumentError, RaggedSequence, ShardSequence, order
from npyseq.order import permutation

N = 60


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.random((N, 3), dtype=np.float32),
        "id": np.arange(N, dtype=np.int64),
        "tokens": [rng.integers(1, 9, k).astype(np.int32) for k in rng.integers(0, 7, N)],
    }
    return npyseq.write_shards(tmp_path_factory.mktemp("pkg") / "data", arrays, rows=25, progress=False)


@pytest.mark.timeout(120)
def test_import_npyseq_lists_the_lazy_classes_and_imports_no_keras():
    code = ("import sys, npyseq\n"
            "print(dir(npyseq) == sorted(npyseq.__all__), 'ShardSequence' in dir(npyseq),\n"
            "      'RaggedSequence' in dir(npyseq),\n"
            "      sorted(m for m in sys.modules if m.split('.')[0] == 'keras' or m.startswith('npyseq.keras')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True True True []"


def test_the_sequence_classes_are_those_of_npyseq_keras():
    from npyseq.keras import ragged_sequence, sequence

    assert npyseq.ShardSequence is sequence.ShardSequence and ShardSequence.__module__ == "npyseq.keras.sequence"
    assert npyseq.RaggedSequence is ragged_sequence.RaggedSequence
    assert issubclass(RaggedSequence, ShardSequence)


def test_the_order_package_keeps_its_functions_and_names_permutes_tag():
    for name in ("SHUFFLE_MODES", "SEED_LIMIT", "HostSlice", "check_shuffle", "check_seed", "check_epoch",
                 "num_batches", "batch_indices", "default_block_size", "permute", "unpermute", "split_rows",
                 "hosts"):
        assert name in order.__all__ and hasattr(order, name), name
    assert order.bucketing.DEFAULT_BUCKET_POOL == 100
    assert inspect.signature(order.permute).parameters["tag"].default == permutation.GLOBAL_TAG
    # The named tags are the numbers every pinned order was made with.
    assert (permutation.BATCHES_TAG, permutation.BLOCKS_TAG, permutation.GLOBAL_TAG, permutation.SHIFT_TAG,
            permutation.SPLIT_TAG) == (1, 2, 3, 4, 5)
    positions = np.arange(7, 19)
    assert np.array_equal(order.split_rows(positions, 100, 9), order.permute(positions, 100, 9, 0, 5))


@pytest.mark.parametrize("kwargs, message", [
    (dict(drop_remainder="no"), "drop_remainder must be True or False, got 'no'"),
    (dict(drop_remainder=1), "drop_remainder must be True or False, got 1"),
    (dict(use_multiprocessing=1), "use_multiprocessing must be True or False, got 1"),
    (dict(workers=np.float64(2)), "workers must be a non-negative int, got np.float64(2.0)"),
    (dict(max_queue_size=0), "max_queue_size must be a positive int, got 0"),
])
def test_flags_and_counts_of_a_sequence_are_checked(ds, kwargs, message):
    """Before, drop_remainder and use_multiprocessing took anything truthy: "no" dropped the remainder."""
    with pytest.raises(InvalidArgumentError, match=f"^{re.escape(message)}$"):
        ShardSequence(ds, x="x", y="id", **kwargs)


def test_a_flag_set_later_is_checked_and_numpy_bools_are_bools(ds):
    seq = ShardSequence(ds, x="x", y="id", batch_size=7, drop_remainder=np.True_)
    assert seq.drop_remainder is True and len(seq) == N // 7
    with pytest.raises(InvalidArgumentError, match=r"^drop_remainder must be True or False, got 'False'$"):
        seq.drop_remainder = "False"
    assert seq.drop_remainder is True


def test_ragged_sequence_takes_the_options_of_shard_sequence(ds):
    seq = RaggedSequence(ds, x="tokens", y="id", batch_size=8, shuffle="global", seed=3, drop_remainder=True,
                         workers=0, max_queue_size=2, bucket=True, bucket_pool=4)
    assert (seq.batch_size, seq.shuffle, seq.seed, seq.drop_remainder) == (8, "global", 3, True)
    assert (seq.workers, seq.max_queue_size, seq.bucket_pool) == (0, 2, 4)
    assert len(seq) == N // 8
    assert sorted(np.concatenate([seq[i][1] for i in range(len(seq))]).tolist()) == sorted(
        np.concatenate([seq.batch_rows(i) for i in range(len(seq))]).tolist())
    assert repr(seq) == (f"<npyseq.RaggedSequence rows [0, {N}) of {ds.path!r} batch_size=8 shuffle='global' "
                         f"seed=3 epoch=0 batches={N // 8} bucket_pool=4 bucket_by='tokens'>")
    with pytest.raises(InvalidArgumentError, match="^batch_size must be a positive int, got 0$"):
        RaggedSequence(ds, x="tokens", batch_size=0)


def test_ragged_sequence_refuses_an_unknown_keyword_naming_itself(ds):
    with pytest.raises(TypeError, match=r"^RaggedSequence\(\) got an unexpected keyword argument 'paddng'$"):
        RaggedSequence(ds, x="tokens", paddng="pre")


def test_the_signature_of_ragged_sequence_spells_out_shard_sequences_arguments():
    ragged = inspect.signature(RaggedSequence).parameters
    shard = inspect.signature(ShardSequence).parameters
    assert list(ragged)[:len(shard)] == list(shard)
    assert all(ragged[name].default == p.default for name, p in shard.items())
    assert list(ragged)[len(shard):] == ["padding", "truncating", "pad_value", "max_length", "pad_to_multiple",
                                         "return_mask", "return_lengths", "bucket", "bucket_pool", "bucket_by"]
    assert not any(p.kind is p.VAR_KEYWORD for p in ragged.values())
