"""Length bucketing: pure functions from ``(rows, batch_size, seed, epoch, batch)`` to row indices.

Padding a batch of variable-length samples to its longest sample wastes the
difference; random batches of a long-tailed length distribution waste most of
it. Bucketing groups samples of similar lengths into batches while keeping
the guarantees of :mod:`npyseq.order`: every row exactly once per epoch, an
order that depends on ``(seed, epoch)`` only, and any batch computable alone
in any process.

The algorithm (``B`` = ``batch_size``, ``K`` = ``bucket_pool``):

1. The epoch's row order is :mod:`npyseq.order`'s, for the same shuffle mode,
   seed and ``drop_remainder``: a **pool** is ``K`` consecutive batches of it
   (``B * K`` rows; the last pool may be shorter). Pool ``p`` holds exactly
   the rows of batches ``[p*K, (p+1)*K)`` of ``order.batch_indices``.
2. Each pool is stable-sorted by length (ties keep their order, ascending
   row index) and cut into batches of ``B`` rows: slot ``j`` of the pool is
   its ``j``-th shortest batch. Only the very last slot of the epoch can be
   short (never with ``drop_remainder``).
3. Batch ``b`` of the epoch is slot ``permute(b % K)`` of pool ``b // K``,
   the permutation keyed by ``(seed, epoch, pool)`` when shuffling (identity
   when ``shuffle=False``): long and short batches interleave, and the
   batches of one pool stay together, so a process that computes a pool once
   serves its ``K`` batches from a cache.

Computing one batch costs one pool: ``O(B * K)`` row indices and lengths,
whatever the size of the dataset. Larger pools pad less and mix less; with
``K = 1`` bucketing changes nothing (the batches are ``order.batch_indices``).

Lengths come from a function ``lengths(rows) -> int array`` (for a
:class:`npyseq.RaggedArray`, its ``lengths`` method), or an array of
every row's length.

Example:

>>> import numpy as np
>>> from npyseq.order import bucketing
>>> lengths = np.array([5, 1, 4, 2, 3, 6])
>>> [bucketing.batch_indices(6, 2, b, lengths, bucket_pool=3).tolist() for b in range(3)]
[[1, 3], [2, 4], [0, 5]]
>>> [lengths[bucketing.batch_indices(6, 2, b, lengths, bucket_pool=3)].tolist() for b in range(3)]
[[1, 2], [4, 3], [5, 6]]
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from npyseq.arguments import integer, positive_int
from npyseq.errors import InvalidArgumentError
from npyseq.order import batches
from npyseq.order.permutation import permute

__all__ = ["DEFAULT_BUCKET_POOL", "num_pools", "locate", "pool_rows", "sort_by_length", "batch_indices"]

DEFAULT_BUCKET_POOL = 100
# Keys the permutation of the slots of pool p apart from npyseq.order's shuffles
# (the tags of npyseq.order.permutation, 1 to 5): tag = _SLOT_TAG * 2**32 + p.
_SLOT_TAG = 0xB0C4E7

Lengths = Callable[[np.ndarray], np.ndarray] | np.ndarray


def _check_pool(bucket_pool: int) -> int:
    return integer(bucket_pool, "bucket_pool", 1, what="a positive int (batches per pool)")


def num_pools(rows: int, batch_size: int, bucket_pool: int, drop_remainder: bool = False) -> int:
    """Pools per epoch: ``ceil(num_batches / bucket_pool)``.

    >>> num_pools(1000, 10, 30)
    4
    """
    return -(-batches.num_batches(rows, batch_size, drop_remainder) // _check_pool(bucket_pool))


def locate(
    rows: int,
    batch_size: int,
    batch: int,
    *,
    bucket_pool: int = DEFAULT_BUCKET_POOL,
    shuffle: str | bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
) -> tuple[int, int]:
    """``(pool, slot)``: batch ``batch`` of the epoch is the ``slot``-th shortest batch of ``pool``.

    >>> locate(1000, 10, 35, bucket_pool=30)
    (1, 5)
    """
    shuffle = batches.check_shuffle(shuffle)
    bucket_pool = _check_pool(bucket_pool)
    batch_size = positive_int(batch_size, "batch_size")
    count = batches.num_batches(rows, batch_size, drop_remainder)
    pool, slot = divmod(batches.check_batch(batch, count), bucket_pool)
    if shuffle is not False:
        slots = min(bucket_pool, count - pool * bucket_pool)
        slot = int(permute(np.array([slot]), slots, seed, epoch, _SLOT_TAG * 2**32 + pool)[0])
    return pool, slot


def pool_rows(
    rows: int,
    batch_size: int,
    pool: int,
    *,
    bucket_pool: int = DEFAULT_BUCKET_POOL,
    shuffle: str | bool = False,
    seed: int = 0,
    epoch: int = 0,
    block_size: int | None = None,
    drop_remainder: bool = False,
) -> np.ndarray:
    """Row indices of pool ``pool``: batches ``[pool*K, (pool+1)*K)`` of :func:`npyseq.order.batch_indices`.

    Ascending within each of those batches; not sorted by length.

    >>> pool_rows(10, 2, 1, bucket_pool=3).tolist()
    [6, 7, 8, 9]
    """
    shuffle = batches.check_shuffle(shuffle)
    bucket_pool = _check_pool(bucket_pool)
    count = batches.num_batches(rows, batch_size, drop_remainder)
    first, stop = pool * bucket_pool, min((pool + 1) * bucket_pool, count)
    if not 0 <= first < count:
        raise IndexError(f"pool index {pool!r} is out of range: this epoch has "
                         f"{num_pools(rows, batch_size, bucket_pool, drop_remainder)} pools")
    block_size = block_size or batches.default_block_size(batch_size)
    kwargs = dict(shuffle=shuffle, seed=seed, epoch=epoch, block_size=block_size)
    if shuffle == "batches" or (drop_remainder and stop == count):
        # Batches of contiguous rows in shuffled order, or a pool that ends
        # where drop_remainder cuts: batch by batch (cheap for "batches").
        return np.concatenate([batches.batch_indices(rows, batch_size, b, drop_remainder=drop_remainder,
                                                     **kwargs) for b in range(first, stop)])
    # Otherwise batches map consecutive positions of one row stream, whatever
    # the batch size: the pool is one batch of B*K rows, one vectorized call.
    return batches.batch_indices(rows, batch_size * bucket_pool, pool, **kwargs)


def sort_by_length(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``rows`` stable-sorted by ``lengths`` (ties keep their order).

    >>> sort_by_length(np.array([7, 8, 9]), np.array([3, 1, 3])).tolist()
    [8, 7, 9]
    """
    lengths = np.asarray(lengths)
    if lengths.shape != rows.shape:
        raise InvalidArgumentError(
            f"lengths must have one value per row ({rows.shape}), got shape {lengths.shape}")
    return rows[np.argsort(lengths, kind="stable")]


def batch_indices(
    rows: int,
    batch_size: int,
    batch: int,
    lengths: Lengths,
    *,
    bucket_pool: int = DEFAULT_BUCKET_POOL,
    shuffle: str | bool = False,
    seed: int = 0,
    epoch: int = 0,
    block_size: int | None = None,
    drop_remainder: bool = False,
) -> np.ndarray:
    """Row indices (int64, ascending) of batch ``batch`` of epoch ``epoch`` with length bucketing.

    ``lengths`` maps an int64 array of row indices to their lengths, or is
    an array of every row's length. The arguments shared with
    :func:`npyseq.order.batch_indices` mean the same; the same arguments
    always give the same rows.
    """
    length_of = lengths if callable(lengths) else np.asarray(lengths).__getitem__
    pool, slot = locate(rows, batch_size, batch, bucket_pool=bucket_pool, shuffle=shuffle, seed=seed,
                        epoch=epoch, drop_remainder=drop_remainder)
    members = pool_rows(rows, batch_size, pool, bucket_pool=bucket_pool, shuffle=shuffle, seed=seed,
                        epoch=epoch, block_size=block_size, drop_remainder=drop_remainder)
    ordered = sort_by_length(members, length_of(members))
    return np.sort(ordered[slot * batch_size:(slot + 1) * batch_size])
