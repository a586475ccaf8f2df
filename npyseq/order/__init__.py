"""Row order: pure functions from ``(rows, batch_size, seed, epoch, batch)`` to row indices.

Nothing here holds state, so any batch of any epoch can be computed in any
process, in any order, and resuming mid-epoch is arithmetic. No function
allocates memory proportional to the dataset: shuffles are keyed bijections
(:mod:`~npyseq.order.permutation`, a Feistel network with cycle walking)
evaluated only at the positions a batch needs, so shuffling a billion rows
costs nothing up front (the network's round functions are tabulated once per
epoch: under 1 MB for a billion rows).

Shuffle modes (``shuffle=`` of :class:`npyseq.ShardSequence`):

``False``
    Rows in dataset order. Batch ``b`` is rows ``[b*B, (b+1)*B)``.
``"batches"``
    Contiguous batches, their order shuffled each epoch: the cheapest I/O
    (one contiguous read per batch), the weakest mixing (the same rows always
    share a batch).
``"blocks"``
    The rows are cut into contiguous blocks of ``block_size`` rows; the blocks
    are shuffled and batches are drawn from the shuffled stream, so a batch
    holds ``batch_size / block_size`` random blocks. Reads are short
    contiguous runs.
``"global"``
    A full permutation of the rows: every batch is a uniform random sample.
    Reads are random rows (sorted within the batch for locality).

Seeds are ints in ``[0, 2**64)`` and epochs non-negative ints (numpy
integers too, bools never); anything else is refused with an
:class:`~npyseq.errors.InvalidArgumentError`, so no two seeds share an order.

In every mode each row is used exactly once per epoch (unless
``drop_remainder`` drops up to ``batch_size - 1`` rows, a different set each
epoch when shuffling), and rows within a shuffled batch come sorted, since
order inside a batch does not matter to SGD but sorted reads are faster.

The package: :mod:`~npyseq.order.permutation` (a keyed bijection on
``[0, n)``), :mod:`~npyseq.order.batches` (batch ``b`` of epoch ``e`` is
these rows: the shuffle modes, the rows ``split`` draws),
:mod:`~npyseq.order.bucketing` (length bucketing on top of them),
:mod:`~npyseq.order.hosts` (each host's part of every global batch) and
:mod:`~npyseq.order.position` (global step <-> Keras epoch and batch <->
pass and batch, for ``steps_per_epoch`` and resuming). It imports
nothing of npyseq but :mod:`npyseq.errors` and :mod:`npyseq.arguments`. The
functions below are re-exported here; import them from ``npyseq.order``.

Example:

>>> from npyseq import order
>>> order.num_batches(10, 4)
3
>>> order.batch_indices(10, 4, 2)
array([8, 9])
>>> import numpy as np
>>> sorted(np.concatenate([order.batch_indices(10, 4, b, shuffle="global", seed=1)
...                        for b in range(3)]).tolist())
[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from npyseq.order import bucketing, hosts, position
from npyseq.order.batches import (
    SHUFFLE_MODES,
    batch_indices,
    check_batch,
    check_shuffle,
    default_block_size,
    num_batches,
    split_rows,
)
from npyseq.order.hosts import HostSlice
from npyseq.order.permutation import SEED_LIMIT, check_epoch, check_seed, permute, unpermute

__all__ = [
    "SHUFFLE_MODES",
    "SEED_LIMIT",
    "HostSlice",
    "check_shuffle",
    "check_seed",
    "check_epoch",
    "check_batch",
    "num_batches",
    "batch_indices",
    "default_block_size",
    "permute",
    "unpermute",
    "split_rows",
    "bucketing",
    "position",
    "hosts",
]
