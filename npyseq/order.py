"""Row order: pure functions from ``(rows, batch_size, seed, epoch, batch)`` to row indices.

Nothing here holds state, so any batch of any epoch can be computed in any
process, in any order, and resuming mid-epoch is arithmetic. No function
allocates memory proportional to the dataset: shuffles are keyed bijections
(a Feistel network with cycle walking) evaluated only at the positions a batch
needs, so shuffling a billion rows costs nothing up front (the network's
round functions are tabulated once per epoch: under 1 MB for a billion rows).

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

Example:

>>> from npyseq import order
>>> order.num_batches(10, 4)
3
>>> order.batch_indices(10, 4, 2)
array([8, 9])
>>> sorted(np.concatenate([order.batch_indices(10, 4, b, shuffle="global", seed=1)
...                        for b in range(3)]).tolist())
[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from npyseq.errors import InvalidArgumentError

__all__ = [
    "SHUFFLE_MODES",
    "SEED_LIMIT",
    "HostShard",
    "check_seed",
    "check_epoch",
    "num_batches",
    "batch_indices",
    "permute",
    "unpermute",
    "split_rows",
    "host_rows",
]

SHUFFLE_MODES = (False, "batches", "blocks", "global")
_ROUNDS = 6
_MODE_TAGS = {"batches": 1, "blocks": 2, "global": 3, "shift": 4, "split": 5}
# Seeds are 64-bit: every seed in [0, SEED_LIMIT) gives its own orders; seeds
# outside are refused rather than folded onto one inside.
SEED_LIMIT = 1 << 64
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def check_shuffle(shuffle) -> str | bool:
    """Normalize ``shuffle``: ``True`` means ``"global"``."""
    if shuffle is True:
        return "global"
    if shuffle is None or shuffle is False:
        return False
    if shuffle not in SHUFFLE_MODES:
        raise InvalidArgumentError(
            f"shuffle must be False, 'batches', 'blocks' or 'global' (True means 'global'), got {shuffle!r}"
        )
    return shuffle


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, refused unless ``0 <= seed < 2**64`` (an int or numpy integer, not a bool)."""
    if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
        raise InvalidArgumentError(f"{name} must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def check_epoch(epoch, name: str = "epoch") -> int:
    """``epoch`` as an int, refused unless it is a non-negative int (or numpy integer, not a bool)."""
    if not _is_int(epoch) or epoch < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative int, got {epoch!r}")
    return int(epoch)


def num_batches(rows: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches per epoch."""
    if drop_remainder:
        return rows // batch_size
    return -(-rows // batch_size)


# --- keyed bijections on [0, n) ------------------------------------------------


@functools.lru_cache(maxsize=64)
def _keys(seed: int, epoch: int, tag: int) -> np.ndarray:
    return np.random.SeedSequence([int(seed), int(epoch), tag]).generate_state(
        _ROUNDS, dtype=np.uint64
    )


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer: a cheap, well-tested 64-bit mixer.
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _bits(n: int) -> int:
    # The smallest power-of-two domain holding [0, n): fewer than half its
    # values are out of range, so cycle walking stays short.
    return max(2, int(n - 1).bit_length())


def _feistel(x: np.ndarray, keys: np.ndarray, bits: int, inverse: bool) -> np.ndarray:
    """An unbalanced Feistel network: a keyed permutation of ``[0, 2**bits)``.

    ``x`` is split into a high part of ``a`` bits and a low part of ``b``
    bits; a round maps ``(hi, lo)`` to ``(lo, hi ^ F(lo))`` and the two widths
    swap, so an even number of rounds ends with the split it began with.
    """
    a, b = bits // 2, bits - bits // 2
    if not inverse:
        for k in keys:
            hi, lo = x >> np.uint64(b), x & np.uint64((1 << b) - 1)
            x = (lo << np.uint64(a)) | (hi ^ (_mix(lo ^ k) & np.uint64((1 << a) - 1)))
            a, b = b, a
    else:
        for k in keys[::-1]:
            a, b = b, a  # undo the swap of the round being inverted
            lo, r = x >> np.uint64(a), x & np.uint64((1 << a) - 1)
            x = ((r ^ (_mix(lo ^ k) & np.uint64((1 << a) - 1))) << np.uint64(b)) | lo
    return x


def _mix_int(x: int) -> int:
    """:func:`_mix` on one Python int (identical results, no numpy call overhead)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _feistel_int(x: int, keys: list[int], bits: int, inverse: bool) -> int:
    """:func:`_feistel` on one Python int."""
    a, b = bits // 2, bits - bits // 2
    if not inverse:
        for k in keys:
            hi, lo = x >> b, x & ((1 << b) - 1)
            x = (lo << a) | (hi ^ (_mix_int(lo ^ k) & ((1 << a) - 1)))
            a, b = b, a
    else:
        for k in reversed(keys):
            a, b = b, a
            lo, r = x >> a, x & ((1 << a) - 1)
            x = ((r ^ (_mix_int(lo ^ k) & ((1 << a) - 1))) << b) | lo
    return x


# Domains of up to 2**32 values get their round functions tabulated (see
# _TabulatedFeistel); larger ones compute them.
_TABULATED_BITS = 32


class _TabulatedFeistel:
    """:func:`_feistel` (and :func:`_feistel_int`) for one key and domain, rounds tabulated.

    A round's function only ever sees the round's low part, at most
    ``ceil(bits / 2)`` bits, so it can be evaluated once over all its inputs
    (6 tables of at most 2**16 entries: 1.5 MB for a domain of 2**32, 12 KB
    for 10**5 rows). The table also folds in the round's shifts: with ``F``
    below ``2**a``, a forward round ``(lo << a) | (hi ^ F(lo))`` is
    ``U[lo] ^ hi`` with ``U[v] = (v << a) | F(v)``, and an inverse round
    ``((r ^ F(lo)) << b) | lo`` is ``V[lo] ^ (r << b)`` with
    ``V[v] = (F(v) << b) | v``. A round is then 4 numpy operations on 32-bit
    values instead of 15 on 64-bit ones: the same permutation, about 4x
    faster on a batch of indices.
    """

    dtype = np.uint32

    def __init__(self, keys: np.ndarray, bits: int, inverse: bool):
        self.inverse = inverse
        self.rounds = []  # (table, shift of the part it reads, shift of the other part), in order
        a, b = bits // 2, bits - bits // 2
        for k in keys:
            v = np.arange(1 << b, dtype=np.uint64)
            f = _mix(v ^ k) & np.uint64((1 << a) - 1)
            if inverse:  # V reads x >> a; the other part, x & (2**a - 1), moves up by b
                table, shifts = (f << np.uint64(b)) | v, (a, b)
            else:  # U reads x & (2**b - 1); the other part, x >> b, stays
                table, shifts = (v << np.uint64(a)) | f, (b, 0)
            self.rounds.append((table.astype(np.uint32), *shifts))
            a, b = b, a
        if inverse:
            self.rounds.reverse()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The permutation of ``x`` (uint32)."""
        if self.inverse:
            for table, a, b in self.rounds:
                x = table[x >> a] ^ ((x & ((1 << a) - 1)) << b)
        else:
            for table, b, _ in self.rounds:
                x = table[x & ((1 << b) - 1)] ^ (x >> b)
        return x

    def one(self, x: int) -> int:
        """The permutation of one Python int."""
        if self.inverse:
            for table, a, b in self.rounds:
                x = int(table[x >> a]) ^ ((x & ((1 << a) - 1)) << b)
        else:
            for table, b, _ in self.rounds:
                x = int(table[x & ((1 << b) - 1)]) ^ (x >> b)
        return x


class _ComputedFeistel:
    """:func:`_feistel` for one key and domain: domains too large to tabulate."""

    dtype = np.uint64

    def __init__(self, keys: np.ndarray, bits: int, inverse: bool):
        self.keys, self.int_keys, self.bits, self.inverse = keys, [int(k) for k in keys], bits, inverse

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _feistel(x, self.keys, self.bits, self.inverse)

    def one(self, x: int) -> int:
        return _feistel_int(x, self.int_keys, self.bits, self.inverse)


# An epoch uses one or two networks (a forward one, and an inverse one in
# "blocks" mode); a few are kept for workers that lag an epoch behind.
@functools.lru_cache(maxsize=4)
def _network(n: int, seed: int, epoch: int, tag: int, inverse: bool):
    bits = _bits(n)
    kind = _TabulatedFeistel if bits <= _TABULATED_BITS else _ComputedFeistel
    return kind(_keys(seed, epoch, tag), bits, inverse)


def _walk(x: np.ndarray, n: int, seed: int, epoch: int, tag: int, inverse: bool) -> np.ndarray:
    """Cycle walking: apply the Feistel permutation until every value is < n."""
    network = _network(n, seed, epoch, tag, inverse)
    out = network(x.astype(network.dtype))
    todo = np.flatnonzero(out >= n)
    # The domain is < 2n, so each value needs 2 steps on average; the few that
    # need many are finished one by one, cheaper than more numpy passes.
    while len(todo) > 16:
        out[todo] = network(out[todo])
        todo = todo[out[todo] >= n]
    for i in todo.tolist():
        v = int(out[i])
        while v >= n:
            v = network.one(v)
        out[i] = v
    return out.astype(np.int64)


def permute(positions: np.ndarray, n: int, seed: int, epoch: int, tag: int = 3) -> np.ndarray:
    """Image of ``positions`` under the permutation of ``[0, n)`` keyed by ``(seed, epoch)``."""
    seed, epoch = check_seed(seed), check_epoch(epoch)
    positions = np.asarray(positions, dtype=np.int64)
    if n <= 1 or len(positions) == 0:
        return positions.copy()
    return _walk(positions, n, int(seed), int(epoch), tag, inverse=False)


def unpermute(values: np.ndarray, n: int, seed: int, epoch: int, tag: int = 3) -> np.ndarray:
    """Inverse of :func:`permute`: the positions that map to ``values``."""
    seed, epoch = check_seed(seed), check_epoch(epoch)
    values = np.asarray(values, dtype=np.int64)
    if n <= 1 or len(values) == 0:
        return values.copy()
    return _walk(values, n, int(seed), int(epoch), tag, inverse=True)


def split_rows(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows at ``positions`` of the permutation of ``[0, n)`` keyed by ``seed`` that
    ``ShardSequence.split(shuffle_rows=True)`` cuts in two: the construction of
    ``"global"``, under a key of its own (it does not depend on an epoch)."""
    return permute(positions, n, seed, 0, _MODE_TAGS["split"])


# Permutations of at most this many items (batch orders, block orders of
# small datasets) are computed whole, once per epoch and process, and cached.
_TABLE_MAX = 1 << 16


@functools.lru_cache(maxsize=16)
def _table(n: int, seed: int, epoch: int, tag: int) -> np.ndarray:
    return permute(np.arange(n), n, seed, epoch, tag)


# "global" mode permutes the rows of datasets of up to this many rows whole,
# once per epoch and process: 4 bytes a row (4 MB at most), computed in about
# a tenth of the time that permuting each batch on its own takes.
_ROW_TABLE_MAX = 1 << 20
_ROW_TABLE_CHUNK = 1 << 16  # rows permuted per numpy pass (bounds the temporaries)


@functools.lru_cache(maxsize=2)  # the current epoch, and the last for lagging workers
def _row_table(n: int, seed: int, epoch: int, tag: int) -> np.ndarray:
    table = np.empty(n, np.int32)
    for a in range(0, n, _ROW_TABLE_CHUNK):
        b = min(n, a + _ROW_TABLE_CHUNK)
        table[a:b] = permute(np.arange(a, b), n, seed, epoch, tag)
    return table


def _permute_one(i: int, n: int, seed: int, epoch: int, tag: int) -> int:
    if n <= _TABLE_MAX:
        return int(_table(n, seed, epoch, tag)[i])
    return int(permute(np.array([i]), n, seed, epoch, tag)[0])


@functools.lru_cache(maxsize=16)
def _unpermute_one(value: int, n: int, seed: int, epoch: int, tag: int) -> int:
    return int(unpermute(np.array([value]), n, seed, epoch, tag)[0])


# --- batches -----------------------------------------------------------------------


def _check(rows, batch_size, batch, drop_remainder) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    count = num_batches(rows, batch_size, drop_remainder)
    if not isinstance(batch, (int, np.integer)) or not 0 <= batch < count:
        raise IndexError(f"batch index {batch!r} is out of range: this epoch has {count} batches")
    return count


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
    count = _check(rows, batch_size, batch, drop_remainder)
    batch = int(batch)
    if shuffle is False:
        start = batch * batch_size
        return np.arange(start, min(rows, start + batch_size), dtype=np.int64)
    if shuffle == "batches":
        if drop_remainder:
            # Shift the grid by a per-epoch offset so a different remainder is dropped.
            spare = rows - count * batch_size
            shift = _permute_one(0, spare + 1, seed, epoch, _MODE_TAGS["shift"])
            b = _permute_one(batch, count, seed, epoch, _MODE_TAGS["batches"])
            start = shift + b * batch_size
            return np.arange(start, start + batch_size, dtype=np.int64)
        b = _permute_one(batch, count, seed, epoch, _MODE_TAGS["batches"])
        start = b * batch_size
        return np.arange(start, min(rows, start + batch_size), dtype=np.int64)
    start, stop = batch * batch_size, min(rows, (batch + 1) * batch_size)
    if shuffle == "global" and rows <= _ROW_TABLE_MAX:
        out = _row_table(rows, seed, epoch, _MODE_TAGS["global"])[start:stop].astype(np.int64)
    elif shuffle == "global":
        out = permute(np.arange(start, stop), rows, seed, epoch, _MODE_TAGS["global"])
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
    tag = _MODE_TAGS["blocks"]
    # Slot of the stream that holds the short last block; positions after it
    # are shifted by the rows it lacks.
    slot_last = _unpermute_one(last, n_blocks, seed, epoch, tag)
    boundary = slot_last * block
    p = positions + np.where(positions >= boundary + tail, block - tail, 0)
    slots, offsets = np.divmod(p, block)
    if n_blocks <= _TABLE_MAX:
        return _table(n_blocks, seed, epoch, tag)[slots] * block + offsets
    return permute(slots, n_blocks, seed, epoch, tag) * block + offsets


# --- multi-host --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostShard:
    """Which part of the rows one of several hosts (or processes) reads.

    Every host gets ``rows // num_shards`` contiguous rows, so all hosts run
    the same number of batches; the last ``rows % num_shards`` rows (fewer
    than ``num_shards``) are left out.
    """

    num_shards: int
    index: int

    def __post_init__(self):
        for name in ("num_shards", "index"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidArgumentError(f"{name} must be an int, got {v!r}")
        if self.num_shards < 1:
            raise InvalidArgumentError(f"num_shards must be a positive int, got {self.num_shards}")
        if not 0 <= self.index < self.num_shards:
            raise InvalidArgumentError(
                f"index must be in [0, {self.num_shards}) for num_shards={self.num_shards}, got {self.index}"
            )


def host_rows(rows: int, shard: HostShard) -> tuple[int, int]:
    """``(start, stop)`` of the rows that host ``shard.index`` reads."""
    per = rows // shard.num_shards
    return shard.index * per, (shard.index + 1) * per
