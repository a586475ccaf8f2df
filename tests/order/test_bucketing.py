"""Property tests of the pure length-bucketing functions in npyseq.order.bucketing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npyseq import InvalidArgumentError, order
from npyseq.order import bucketing

MODES = [False, "batches", "blocks", "global"]


def epoch_batches(lengths, bs, pool, mode, seed, epoch, block=None, drop=False):
    n = len(lengths)
    return [bucketing.batch_indices(n, bs, b, lengths, bucket_pool=pool, shuffle=mode, seed=seed,
                                    epoch=epoch, block_size=block, drop_remainder=drop)
            for b in range(order.num_batches(n, bs, drop))]


lengths_st = st.integers(0, 800).flatmap(
    lambda n: st.lists(st.integers(0, 50), min_size=n, max_size=n).map(lambda v: np.array(v, np.int64)))
common = dict(bs=st.integers(1, 40), pool=st.integers(1, 12), mode=st.sampled_from(MODES),
              seed=st.integers(0, 2**63), epoch=st.integers(0, 10**6))


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st, block=st.one_of(st.none(), st.integers(1, 16)), **common)
def test_each_row_exactly_once_and_only_the_last_slot_is_short(lengths, bs, pool, mode, seed, epoch, block):
    n = len(lengths)
    parts = epoch_batches(lengths, bs, pool, mode, seed, epoch, block)
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert np.array_equal(np.sort(rows), np.arange(n))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    sizes = sorted((len(p) for p in parts), reverse=True)
    assert sizes == [bs] * (n // bs) + ([n % bs] if n % bs else [])


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st.filter(len), **common)
def test_drop_remainder_gives_full_distinct_batches(lengths, bs, pool, mode, seed, epoch):
    n = len(lengths)
    parts = epoch_batches(lengths, bs, pool, mode, seed, epoch, drop=True)
    assert len(parts) == n // bs and all(len(p) == bs for p in parts)
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert len(np.unique(rows)) == len(rows) and np.all((rows >= 0) & (rows < n))


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, drop=st.booleans(), **common)
def test_pools_are_sorted_by_length_and_hold_the_rows_of_consecutive_order_batches(
        lengths, bs, pool, mode, seed, epoch, drop):
    n = len(lengths)
    parts = epoch_batches(lengths, bs, pool, mode, seed, epoch, drop=drop)
    for p in range(bucketing.num_pools(n, bs, pool, drop)):
        # Slot j of pool p, whichever batch index it landed at.
        slots = {}
        for b in range(p * pool, min((p + 1) * pool, len(parts))):
            q, j = bucketing.locate(n, bs, b, bucket_pool=pool, shuffle=mode, seed=seed, epoch=epoch,
                                    drop_remainder=drop)
            assert q == p and j not in slots
            slots[j] = parts[b]
        assert sorted(slots) == list(range(len(slots)))
        for j in range(len(slots) - 1):
            assert lengths[slots[j]].max() <= lengths[slots[j + 1]].min()
        members = np.concatenate([slots[j] for j in range(len(slots))])
        expected = np.concatenate([
            order.batch_indices(n, bs, b, shuffle=mode, seed=seed, epoch=epoch, drop_remainder=drop)
            for b in range(p * pool, min((p + 1) * pool, len(parts)))])
        assert np.array_equal(np.sort(members), np.sort(expected))


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, block=st.one_of(st.none(), st.integers(1, 16)), drop=st.booleans(),
       bs=common["bs"], mode=common["mode"], seed=common["seed"], epoch=common["epoch"])
def test_a_pool_of_one_batch_is_the_order_of_shard_sequence(lengths, bs, mode, seed, epoch, block, drop):
    n = len(lengths)
    ours = epoch_batches(lengths, bs, 1, mode, seed, epoch, block, drop)
    theirs = [order.batch_indices(n, bs, b, shuffle=mode, seed=seed, epoch=epoch, block_size=block,
                                  drop_remainder=drop) for b in range(order.num_batches(n, bs, drop))]
    assert len(ours) == len(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("mode", MODES)
def test_order_depends_on_seed_and_epoch_only(mode):
    lengths = np.random.default_rng(0).integers(0, 100, 2000)
    a = epoch_batches(lengths, 16, 8, mode, seed=5, epoch=3)
    again = epoch_batches(lengths.copy(), 16, 8, mode, seed=5, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    other_epoch = epoch_batches(lengths, 16, 8, mode, seed=5, epoch=4)
    other_seed = epoch_batches(lengths, 16, 8, mode, seed=6, epoch=3)
    same = lambda p, q: all(np.array_equal(x, y) for x, y in zip(p, q))
    assert same(a, other_epoch) == (mode is False)
    assert same(a, other_seed) == (mode is False)
    if mode in ("blocks", "global"):  # the batches themselves change, not only their order
        as_set = lambda parts: sorted(tuple(p) for p in parts)
        assert as_set(a) != as_set(other_epoch)


def test_bucketing_cuts_padding_on_long_tailed_lengths():
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.lognormal(5, 1, 20_000).astype(np.int64), 1, 2000)
    padded = lambda parts: sum(len(p) * lengths[p].max() for p in parts)
    bucketed = epoch_batches(lengths, 64, 100, "global", seed=0, epoch=0)
    plain = [order.batch_indices(len(lengths), 64, b, shuffle="global") for b in range(len(bucketed))]
    real = lengths.sum()
    assert padded(bucketed) <= 1.1 * real < 2 * real <= padded(plain)


def test_lengths_as_a_function_or_an_array_agree():
    lengths = np.random.default_rng(2).integers(0, 30, 500)
    calls = []

    def length_of(rows):
        calls.append(len(rows))
        return lengths[rows]

    for b in range(order.num_batches(500, 7)):
        kw = dict(bucket_pool=5, shuffle="global", seed=1, epoch=2)
        assert np.array_equal(bucketing.batch_indices(500, 7, b, length_of, **kw),
                              bucketing.batch_indices(500, 7, b, lengths, **kw))
    assert max(calls) == 35  # one pool's lengths, never the whole dataset's


def test_bad_arguments():
    lengths = np.ones(10, np.int64)
    with pytest.raises(InvalidArgumentError, match=r"bucket_pool must be a positive int .* got 0"):
        bucketing.batch_indices(10, 2, 0, lengths, bucket_pool=0)
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive int, got 0"):
        bucketing.locate(10, 0, 0)
    with pytest.raises(IndexError, match="this epoch has 5 batches"):
        bucketing.batch_indices(10, 2, 5, lengths)
    with pytest.raises(IndexError, match="this epoch has 2 pools"):
        bucketing.pool_rows(10, 2, 2, bucket_pool=3)
    with pytest.raises(InvalidArgumentError, match=r"one value per row \(\(10,\)\), got shape \(9,\)"):
        bucketing.batch_indices(10, 2, 0, lambda rows: lengths[rows][1:], bucket_pool=5)
