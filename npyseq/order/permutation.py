"""A keyed bijection on ``[0, n)``: the permutation under every shuffle of :mod:`npyseq.order`.

:func:`permute` maps positions to their images under the permutation of
``[0, n)`` keyed by ``(seed, epoch, tag)``; :func:`unpermute` is its inverse.
Nothing is stored: the permutation is an unbalanced Feistel network on the
smallest power-of-two domain holding ``[0, n)``, with cycle walking (a value
that lands at ``n`` or above goes round again until it is below ``n``), so
any position can be mapped alone, in any process, at any time.

The network exists in four equal forms, held equal by property tests
(tests/order/test_order.py): :func:`feistel` on a numpy array, :func:`feistel_int`
on one Python int, and :class:`TabulatedFeistel` (its ``__call__`` and
``one``), which tabulates the round functions of domains up to
``2**TABULATED_BITS``: about 4x faster on a batch of indices.
:class:`ComputedFeistel` wraps the first two for larger domains.

Permutations that are asked for again and again are cached whole, once per
epoch and process: the small ones (:func:`table`: batch orders, block orders)
and the rows of ``"global"`` shuffles up to :data:`ROW_TABLE_MAX` rows
(:func:`row_table`).

Example:

>>> import numpy as np
>>> from npyseq.order import permutation
>>> images = permutation.permute(np.arange(10), 10, seed=1, epoch=0)
>>> sorted(images.tolist()) == list(range(10))
True
>>> permutation.unpermute(images, 10, seed=1, epoch=0).tolist()
[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import functools

import numpy as np

from npyseq.arguments import integer, non_negative_int, short_repr
from npyseq.errors import InvalidArgumentError

__all__ = [
    "SEED_LIMIT",
    "BATCHES_TAG",
    "BLOCKS_TAG",
    "GLOBAL_TAG",
    "SHIFT_TAG",
    "SPLIT_TAG",
    "check_seed",
    "check_epoch",
    "permute",
    "unpermute",
    "permute_one",
    "unpermute_one",
    "table",
    "row_table",
    "TABLE_MAX",
    "ROW_TABLE_MAX",
    "round_keys",
    "feistel",
    "feistel_int",
    "TABULATED_BITS",
    "TabulatedFeistel",
    "ComputedFeistel",
]

# Seeds are 64-bit: every seed in [0, SEED_LIMIT) gives its own orders; seeds
# outside are refused rather than folded onto one inside.
SEED_LIMIT = 1 << 64
_SEED_IS = "an int in [0, 2**64)"

# Tags key the permutations of different uses apart: the same (seed, epoch)
# gives unrelated permutations under different tags. Fixed forever, like the
# network itself: changing one changes every order pinned by a seed.
BATCHES_TAG = 1  # the order of the batches, shuffle="batches"
BLOCKS_TAG = 2  # the order of the blocks, shuffle="blocks"
GLOBAL_TAG = 3  # the order of the rows, shuffle="global" (permute's default)
SHIFT_TAG = 4  # the offset of the batch grid, shuffle="batches" with drop_remainder
SPLIT_TAG = 5  # the rows split(shuffle_rows=True) cuts in two (always epoch 0)

_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, refused unless ``0 <= seed < 2**64`` (an int or numpy integer, not a bool)."""
    value = integer(seed, name, 0, None, what=_SEED_IS)
    if value >= SEED_LIMIT:
        raise InvalidArgumentError(f"{name} must be {_SEED_IS}, got {short_repr(seed)}")
    return value


def check_epoch(epoch, name: str = "epoch") -> int:
    """``epoch`` as an int, refused unless it is a non-negative int (or numpy integer, not a bool)."""
    return non_negative_int(epoch, name, maximum=None)


# --- the network ----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def round_keys(seed: int, epoch: int, tag: int) -> np.ndarray:
    """The network's round keys for ``(seed, epoch, tag)``: one uint64 per round."""
    return np.random.SeedSequence([int(seed), int(epoch), tag]).generate_state(_ROUNDS, dtype=np.uint64)


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


def feistel(x: np.ndarray, keys: np.ndarray, bits: int, inverse: bool) -> np.ndarray:
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


def feistel_int(x: int, keys: list[int], bits: int, inverse: bool) -> int:
    """:func:`feistel` on one Python int."""
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
# TabulatedFeistel); larger ones compute them.
TABULATED_BITS = 32


class TabulatedFeistel:
    """:func:`feistel` (and :func:`feistel_int`) for one key and domain, rounds tabulated.

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
                values, shifts = (f << np.uint64(b)) | v, (a, b)
            else:  # U reads x & (2**b - 1); the other part, x >> b, stays
                values, shifts = (v << np.uint64(a)) | f, (b, 0)
            self.rounds.append((values.astype(np.uint32), *shifts))
            a, b = b, a
        if inverse:
            self.rounds.reverse()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The permutation of ``x`` (uint32)."""
        if self.inverse:
            for values, a, b in self.rounds:
                x = values[x >> a] ^ ((x & ((1 << a) - 1)) << b)
        else:
            for values, b, _ in self.rounds:
                x = values[x & ((1 << b) - 1)] ^ (x >> b)
        return x

    def one(self, x: int) -> int:
        """The permutation of one Python int."""
        if self.inverse:
            for values, a, b in self.rounds:
                x = int(values[x >> a]) ^ ((x & ((1 << a) - 1)) << b)
        else:
            for values, b, _ in self.rounds:
                x = int(values[x & ((1 << b) - 1)]) ^ (x >> b)
        return x


class ComputedFeistel:
    """:func:`feistel` for one key and domain: domains too large to tabulate."""

    dtype = np.uint64

    def __init__(self, keys: np.ndarray, bits: int, inverse: bool):
        self.keys, self.int_keys, self.bits, self.inverse = keys, [int(k) for k in keys], bits, inverse

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return feistel(x, self.keys, self.bits, self.inverse)

    def one(self, x: int) -> int:
        return feistel_int(x, self.int_keys, self.bits, self.inverse)


# An epoch uses one or two networks (a forward one, and an inverse one in
# "blocks" mode); a few are kept for workers that lag an epoch behind.
@functools.lru_cache(maxsize=4)
def _network(n: int, seed: int, epoch: int, tag: int, inverse: bool):
    bits = _bits(n)
    kind = TabulatedFeistel if bits <= TABULATED_BITS else ComputedFeistel
    return kind(round_keys(seed, epoch, tag), bits, inverse)


def _walk(x, n: int, seed, epoch, tag: int, inverse: bool) -> np.ndarray:
    """Cycle walking: apply the Feistel permutation (or its inverse) until every value is < n."""
    seed, epoch = check_seed(seed), check_epoch(epoch)
    x = np.asarray(x, dtype=np.int64)
    if n <= 1 or len(x) == 0:
        return x.copy()
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


# --- the bijection ----------------------------------------------------------------


def permute(positions: np.ndarray, n: int, seed: int, epoch: int, tag: int = GLOBAL_TAG) -> np.ndarray:
    """Image of ``positions`` under the permutation of ``[0, n)`` keyed by ``(seed, epoch, tag)``."""
    return _walk(positions, n, seed, epoch, tag, inverse=False)


def unpermute(values: np.ndarray, n: int, seed: int, epoch: int, tag: int = GLOBAL_TAG) -> np.ndarray:
    """Inverse of :func:`permute`: the positions that map to ``values``."""
    return _walk(values, n, seed, epoch, tag, inverse=True)


# --- whole permutations, cached -----------------------------------------------------

# Permutations of at most this many items (batch orders, block orders of
# small datasets) are computed whole, once per epoch and process, and cached.
TABLE_MAX = 1 << 16


@functools.lru_cache(maxsize=16)
def table(n: int, seed: int, epoch: int, tag: int) -> np.ndarray:
    """The whole permutation of ``[0, n)`` (``n <= TABLE_MAX``): ``table(...)[i] == permute([i], ...)[0]``."""
    return permute(np.arange(n), n, seed, epoch, tag)


# "global" mode permutes the rows of datasets of up to this many rows whole,
# once per epoch and process: 4 bytes a row (4 MB at most), computed in about
# a tenth of the time that permuting each batch on its own takes.
ROW_TABLE_MAX = 1 << 20
_ROW_TABLE_CHUNK = 1 << 16  # rows permuted per numpy pass (bounds the temporaries)


@functools.lru_cache(maxsize=2)  # the current epoch, and the last for lagging workers
def row_table(n: int, seed: int, epoch: int, tag: int) -> np.ndarray:
    """:func:`table` as int32, for up to :data:`ROW_TABLE_MAX` rows, computed in chunks."""
    rows = np.empty(n, np.int32)
    for a in range(0, n, _ROW_TABLE_CHUNK):
        b = min(n, a + _ROW_TABLE_CHUNK)
        rows[a:b] = permute(np.arange(a, b), n, seed, epoch, tag)
    return rows


def permute_one(i: int, n: int, seed: int, epoch: int, tag: int) -> int:
    """The image of one position ``i`` (from the cached :func:`table` where ``n`` is small)."""
    if n <= TABLE_MAX:
        return int(table(n, seed, epoch, tag)[i])
    return int(permute(np.array([i]), n, seed, epoch, tag)[0])


@functools.lru_cache(maxsize=16)
def unpermute_one(value: int, n: int, seed: int, epoch: int, tag: int) -> int:
    """The position that maps to one ``value``."""
    return int(unpermute(np.array([value]), n, seed, epoch, tag)[0])
