"""Property tests of the pure index functions in npyseq.order (batches and permutation)."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npyseq import InvalidArgumentError, order
from npyseq.order import permutation

MODES = [False, "batches", "blocks", "global"]


def epoch_rows(n, bs, mode, seed, epoch, block=None, drop=False):
    count = order.num_batches(n, bs, drop)
    parts = [order.batch_indices(n, bs, b, shuffle=mode, seed=seed, epoch=epoch,
                                 block_size=block, drop_remainder=drop) for b in range(count)]
    return parts


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), bs=st.integers(1, 300), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**63), epoch=st.integers(0, 10**6),
       block=st.one_of(st.none(), st.integers(1, 64)))
def test_each_row_exactly_once_per_epoch(n, bs, mode, seed, epoch, block):
    parts = epoch_rows(n, bs, mode, seed, epoch, block)
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert np.array_equal(np.sort(rows), np.arange(n))
    # Every batch but the last is full (batches mode: the short one may be anywhere).
    sizes = sorted((len(p) for p in parts), reverse=True)
    assert sizes == [bs] * (n // bs) + ([n % bs] if n % bs else [])


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), bs=st.integers(1, 300), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**32), epoch=st.integers(0, 1000))
def test_drop_remainder_gives_full_distinct_batches(n, bs, mode, seed, epoch):
    parts = epoch_rows(n, bs, mode, seed, epoch, drop=True)
    assert len(parts) == n // bs
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert all(len(p) == bs for p in parts)
    assert len(np.unique(rows)) == len(rows)
    assert rows.min(initial=0) >= 0 and rows.max(initial=0) < n


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 10**12), seed=st.integers(0, 2**63), epoch=st.integers(0, 10**9),
       data=st.data())
def test_permute_is_a_bijection_with_an_inverse(n, seed, epoch, data):
    k = min(n, 200)
    positions = np.array(data.draw(st.lists(st.integers(0, max(0, n - 1)), min_size=k, max_size=k,
                                            unique=True)), dtype=np.int64) if n else np.empty(0, np.int64)
    images = order.permute(positions, n, seed, epoch)
    assert len(np.unique(images)) == len(images)  # injective on the sample
    assert np.all((images >= 0) & (images < max(n, 1)))
    assert np.array_equal(order.unpermute(images, n, seed, epoch), positions)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32))
def test_permute_of_everything_is_a_permutation(n, seed):
    images = order.permute(np.arange(n), n, seed, 3)
    assert np.array_equal(np.sort(images), np.arange(n))


@pytest.mark.parametrize("mode", ["batches", "blocks", "global"])
def test_order_depends_on_seed_and_epoch_only(mode):
    a = epoch_rows(1000, 32, mode, seed=5, epoch=3)
    b = epoch_rows(1000, 32, mode, seed=5, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other_epoch = epoch_rows(1000, 32, mode, seed=5, epoch=4)
    other_seed = epoch_rows(1000, 32, mode, seed=6, epoch=3)
    assert not all(np.array_equal(x, y) for x, y in zip(a, other_epoch))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other_seed))


def test_sequential_order_is_dataset_order():
    parts = epoch_rows(10, 4, False, 0, 9)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batches_mode_keeps_batches_contiguous():
    for p in epoch_rows(1000, 32, "batches", 1, 1):
        assert np.array_equal(p, np.arange(p[0], p[0] + len(p)))
        assert p[0] % 32 == 0


def test_blocks_mode_reads_whole_blocks():
    for p in epoch_rows(1000, 64, "blocks", 1, 2, block=8):
        runs = np.split(p, np.flatnonzero(np.diff(p) != 1) + 1)
        # Every run is made of whole aligned blocks (the last block has 1000 % 8 = 0 spare).
        assert all(r[0] % 8 == 0 and len(r) % 8 == 0 for r in runs)
        assert len(runs) > 1  # a batch draws from several blocks


def test_global_shuffle_mixes_rows():
    first = epoch_rows(10000, 100, "global", 0, 0)[0]
    # A uniform sample of 100 rows out of 10000 spans most of the range.
    assert first.max() - first.min() > 8000
    assert np.all(np.diff(first) > 0)  # sorted within the batch for locality


def test_shuffling_a_billion_rows_costs_nothing_up_front():
    rows = order.batch_indices(10**9, 256, 1_000_000, shuffle="global", seed=1, epoch=2)
    assert len(rows) == 256 and rows.max() < 10**9
    blocks = order.batch_indices(10**9 + 7, 256, 5, shuffle="blocks", seed=1, epoch=2)
    assert len(blocks) == 256 and blocks.max() < 10**9 + 7


def test_shuffle_takes_bools_as_bools():
    """Before, 0 and np.False_ compared equal to False, passed the check, and then shuffled by blocks."""
    assert order.check_shuffle(np.False_) is False and order.check_shuffle(None) is False
    assert order.check_shuffle(np.True_) == "global"
    assert np.array_equal(order.batch_indices(20, 4, 0, shuffle=np.False_, seed=1), np.arange(4))
    assert np.array_equal(order.batch_indices(20, 4, 0, shuffle=np.True_, seed=1),
                          order.batch_indices(20, 4, 0, shuffle="global", seed=1))
    for value in (0, 1, 0.0, "Global"):
        with pytest.raises(InvalidArgumentError, match=(
                r"^shuffle must be False, 'batches', 'blocks' or 'global' \(True means 'global'\), "
                f"got {re.escape(repr(value))}$")):
            order.batch_indices(20, 4, 0, shuffle=value)


def test_a_batch_index_is_an_int_not_a_bool():
    with pytest.raises(IndexError, match=r"^batch index True is out of range: this epoch has 3 batches$"):
        order.batch_indices(10, 4, True)
    assert np.array_equal(order.batch_indices(10, 4, np.int64(1)), np.arange(4, 8))


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive int, got 0"):
        order.batch_indices(10, 0, 0)
    with pytest.raises(IndexError, match="batch index 3 is out of range: this epoch has 3 batches"):
        order.batch_indices(10, 4, 3)
    with pytest.raises(InvalidArgumentError, match="shuffle must be False, 'batches', 'blocks' or 'global'"):
        order.batch_indices(10, 4, 0, shuffle="rows")


@settings(max_examples=200, deadline=None)
@given(x=st.integers(0, 2**40 - 1), bits=st.integers(2, 40), seed=st.integers(0, 2**32),
       inverse=st.booleans())
def test_scalar_and_vector_feistel_agree(x, bits, seed, inverse):
    x %= 1 << bits
    keys = permutation.round_keys(seed, 0, permutation.GLOBAL_TAG)
    vector = int(permutation.feistel(np.array([x], dtype=np.uint64), keys, bits, inverse)[0])
    assert permutation.feistel_int(x, [int(k) for k in keys], bits, inverse) == vector


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(2, permutation.TABULATED_BITS), seed=st.integers(0, 2**64 - 1),
       inverse=st.booleans(), data=st.data())
def test_tabulated_and_computed_feistel_agree(bits, seed, inverse, data):
    xs = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=1, max_size=50)), dtype=np.uint64)
    keys = permutation.round_keys(seed, 0, permutation.GLOBAL_TAG)
    expected = permutation.feistel(xs, keys, bits, inverse)
    network = permutation.TabulatedFeistel(keys, bits, inverse)
    assert np.array_equal(network(xs.astype(network.dtype)), expected)
    assert [network.one(int(x)) for x in xs] == expected.tolist()


@pytest.mark.parametrize("n", [5000, permutation.ROW_TABLE_MAX])
def test_global_batches_from_the_row_table_equal_permute(n):
    bs = 256
    for b in (0, 7, order.num_batches(n, bs) - 1):
        positions = np.arange(b * bs, min(n, (b + 1) * bs))
        expected = np.sort(order.permute(positions, n, 3, 2, permutation.GLOBAL_TAG))
        assert np.array_equal(order.batch_indices(n, bs, b, shuffle="global", seed=3, epoch=2), expected)
