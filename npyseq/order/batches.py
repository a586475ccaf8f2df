"""Batch ``b`` of epoch ``e`` is these rows: the shuffle modes of :mod:`npyseq.order`.

:func:`batch_indices` maps ``(rows, batch_size, batch, shuffle, seed, epoch,
block_size, drop_remainder)`` to the batch's row indices, sorted, by way of
the keyed permutations of :mod:`~npyseq.order.permutation`: ``"batches"``
permutes the batches, ``"blocks"`` the blocks of rows, ``"global"`` the rows.
Beside it: the checks of its arguments and :func:`split_rows` (the rows ``ShardSequence.split(shuffle_rows=True)``
draws). See :mod:`npyseq.order` for what each shuffle mode costs.

>>> batch_indices(10, 4, 2)
array([8, 9])
>>> batch_indices(10, 4, 0, shuffle="batches", seed=1, epoch=0).tolist()
[4, 5, 6, 7]
"""

from __future__ import annotations

import numpy as np

from npyseq.arguments import is_int, positive_int
from npyseq.errors import InvalidArgumentError
from npyseq.order.permutation import (
    BATCHES_TAG,
    BLOCKS_TAG,
    GLOBAL_TAG,
    ROW_TABLE_MAX,
    SHIFT_TAG,
    SPLIT_TAG,
    TABLE_MAX,
    check_epoch,
    check_seed,
    permute,
    permute_one,
    row_table,
    table,
    unpermute_one,
)

__all__ = [
    "SHUFFLE_MODES",
    "check_shuffle",
    "check_batch",
    "num_batches",
    "batch_indices",
    "default_block_size",
    "split_rows",
]

SHUFFLE_MODES = (False, "batches", "blocks", "global")


def check_shuffle(shuffle) -> str | bool:
    """Normalize ``shuffle``: ``True`` means ``"global"``, ``None`` means ``False``.

    Bools are taken as bools only (numpy's too): ``0`` is not ``False``.
    """
    if shuffle is None:
        return False
    if isinstance(shuffle, (bool, np.bool_)):
        return "global" if shuffle else False
    if isinstance(shuffle, str) and shuffle in SHUFFLE_MODES:
        return shuffle
    raise InvalidArgumentError(
        f"shuffle must be False, 'batches', 'blocks' or 'global' (True means 'global'), got {shuffle!r}"
    )


def num_batches(rows: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches per epoch."""
    if drop_remainder:
        return rows // batch_size
    return -(-rows // batch_size)


def check_batch(batch, count: int) -> int:
    """``batch`` as an int, or an IndexError unless it is an int (not a bool) in ``[0, count)``."""
    if not is_int(batch) or not 0 <= batch < count:
        raise IndexError(f"batch index {batch!r} is out of range: this epoch has {count} batches")
    return int(batch)


def split_rows(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows at ``positions`` of the permutation of ``[0, n)`` keyed by ``seed`` that
    ``ShardSequence.split(shuffle_rows=True)`` cuts in two: the construction of
    ``"global"``, under a key of its own (it does not depend on an epoch)."""
    return permute(positions, n, seed, 0, SPLIT_TAG)


# --- batches -----------------------------------------------------------------------


def batch_indices(
    rows: int,
    batch_size: int,
    batch: int,
    *,
    shuffle: str | bool = False,
    seed: int = 0,
    epoch: int = 0,
    block_size: int | None = None,
    drop_remainder: bool = False,
) -> np.ndarray:
    """Row indices (int64, in ``[0, rows)``) of batch ``batch`` of epoch ``epoch``.

    A pure function: the same arguments always give the same rows. ``seed``
    is an int in ``[0, 2**64)``, ``epoch`` a non-negative int.
    """
    shuffle = check_shuffle(shuffle)
    seed, epoch = check_seed(seed), check_epoch(epoch)
    batch_size = positive_int(batch_size, "batch_size")
    count = num_batches(rows, batch_size, drop_remainder)
    batch = check_batch(batch, count)
    if shuffle is False:
        start = batch * batch_size
        return np.arange(start, min(rows, start + batch_size), dtype=np.int64)
    if shuffle == "batches":
        if drop_remainder:
            # Shift the grid by a per-epoch offset so a different remainder is dropped.
            spare = rows - count * batch_size
            shift = permute_one(0, spare + 1, seed, epoch, SHIFT_TAG)
            b = permute_one(batch, count, seed, epoch, BATCHES_TAG)
            start = shift + b * batch_size
            return np.arange(start, start + batch_size, dtype=np.int64)
        b = permute_one(batch, count, seed, epoch, BATCHES_TAG)
        start = b * batch_size
        return np.arange(start, min(rows, start + batch_size), dtype=np.int64)
    start, stop = batch * batch_size, min(rows, (batch + 1) * batch_size)
    if shuffle == "global" and rows <= ROW_TABLE_MAX:
        out = row_table(rows, seed, epoch, GLOBAL_TAG)[start:stop].astype(np.int64)
    elif shuffle == "global":
        out = permute(np.arange(start, stop), rows, seed, epoch, GLOBAL_TAG)
    else:
        out = _blocks(np.arange(start, stop), rows, block_size or default_block_size(batch_size), seed, epoch)
    out.sort()
    return out


def default_block_size(batch_size: int) -> int:
    """Rows per block in ``"blocks"`` mode: a batch draws from about 16 blocks."""
    return max(1, batch_size // 16)


def _blocks(positions: np.ndarray, rows: int, block: int, seed: int, epoch: int) -> np.ndarray:
    """Map stream positions to rows when whole blocks of rows are shuffled."""
    n_blocks = -(-rows // block)
    last = n_blocks - 1
    tail = rows - last * block  # rows of the last block, 1..block
    # Slot of the stream that holds the short last block; positions after it
    # are shifted by the rows it lacks.
    slot_last = unpermute_one(last, n_blocks, seed, epoch, BLOCKS_TAG)
    boundary = slot_last * block
    p = positions + np.where(positions >= boundary + tail, block - tail, 0)
    slots, offsets = np.divmod(p, block)
    if n_blocks <= TABLE_MAX:
        return table(n_blocks, seed, epoch, BLOCKS_TAG)[slots] * block + offsets
    return permute(slots, n_blocks, seed, epoch, BLOCKS_TAG) * block + offsets
