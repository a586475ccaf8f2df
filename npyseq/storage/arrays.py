"""Indexing the arrays of a dataset: :class:`ShardedArray`, and what it shares with ragged arrays.

Indexing returns ordinary in-memory arrays (copies), never with a Python loop
per row: when the data fits in memory, rows are gathered out of read-only
memory maps with one ``np.take`` per shard touched; otherwise each run of
consecutive rows is one ``pread`` straight into the output array (and
scattered tiny rows are gathered through a memory map).

What :class:`ShardedArray` and :class:`~npyseq.RaggedArray` share is here
once: the dataset, name and pickling (:class:`DatasetArray`), turning a key
into rows (:func:`row_index`, :func:`as_index_array`, with numpy's rules and
one "out of bounds" message) and the check of an ``out=`` array
(:func:`check_out`). An array reads through its :class:`~npyseq.Dataset`
(``shard``, ``shard_starts``, ``map_reads``, ``locate``), which it needs here
only as a type: the dataset module imports this one.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

import numpy as np

from npyseq.errors import InvalidArgumentError
from npyseq.format.manifest import ArrayInfo

if TYPE_CHECKING:
    from npyseq.storage.dataset import Dataset, Located

__all__ = ["ShardedArray", "DatasetArray", "array_of", "as_index_array", "check_out", "is_int",
           "out_of_bounds", "row_index"]

# Runs of rows shorter than this on average are gathered through a memmap
# (one vectorized copy) rather than one pread each.
_MIN_RUN_BYTES = 4096


def is_int(key: Any) -> bool:
    """Whether ``key`` indexes one row: an int or a numpy integer, not a bool."""
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))


def out_of_bounds(index: int, n: int, name: str) -> IndexError:
    """The error for a row index outside an array of ``n`` rows."""
    return IndexError(f"index {index} is out of bounds for {n} rows of {name!r}")


def row_index(key: Any, n: int, name: str) -> int:
    """The row an int ``key`` stands for (a negative one counts from the end)."""
    i = int(key)
    if not -n <= i < n:
        raise out_of_bounds(i, n, name)
    return i % n


def as_index_array(key: Any, n: int, name: str = "array") -> np.ndarray:
    """Row indices (int64, flat, in ``[0, n)``) of an index array or a mask, checked as numpy does.

    Negative indices count from the end; an index out of range, a mask of
    another length or a non-integer array raises ``IndexError``.
    """
    idx = np.asarray(key)
    if idx.dtype == bool:
        # numpy takes an empty mask of any length as an empty index (no rows).
        if idx.shape != (n,) and idx.shape != (0,):
            raise IndexError(f"boolean index must have shape ({n},), got {idx.shape}: "
                             f"{name!r} has {n} rows")
        return np.flatnonzero(idx)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"only integers, slices, and integer or boolean arrays are valid indices, got {key!r:.80}")
    idx = idx.reshape(-1)
    # Compared in the index's own dtype: uint64 beyond int64 must not wrap to
    # negative (numpy's own indexing wraps 2**64 - 1 to -1, the last row).
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -n or hi >= n:
        raise out_of_bounds(lo if lo < -n else hi, n, name)
    idx = idx.astype(np.int64, copy=False)
    if lo < 0:
        idx = np.where(idx < 0, idx + n, idx)
    return idx


def check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an ``out=`` array that is not C-contiguous of ``shape`` and ``dtype``."""
    if isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous:
        return
    found = (f"shape {out.shape}, dtype {out.dtype}" + ("" if out.flags.c_contiguous else ", not C-contiguous")
             if isinstance(out, np.ndarray) else f"a {type(out).__name__}")
    raise InvalidArgumentError(f"out must be a C-contiguous array of shape {shape} and dtype {dtype}, got {found}")


def _shaped_like_key(out: np.ndarray, key: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
    """Rows read for the flattened ``key``, in the key's shape as numpy gives them."""
    if key.dtype == bool or key.ndim == 1:
        return out
    out = out.reshape(key.shape + row_shape)
    return out[()] if key.ndim == 0 else out  # a scalar row is a numpy scalar, as for an int key


def array_of(dataset: Dataset, name: str) -> DatasetArray:
    """``dataset[name]``: how an array is unpickled (its dataset reopens by path)."""
    return dataset[name]


class DatasetArray:
    """One array of a :class:`~npyseq.Dataset`: what fixed and ragged arrays share."""

    ragged = False

    def __init__(self, dataset: Dataset, name: str, info: ArrayInfo, dtype: np.dtype):
        """``info``: the array's manifest entry; ``dtype``: the dtype rows are returned in."""
        self._ds, self.name, self._info, self.dtype = dataset, name, info, dtype

    @property
    def dataset(self) -> Dataset:
        return self._ds

    def __len__(self) -> int:
        return self._ds.manifest.rows

    def __reduce__(self):
        return (array_of, (self._ds, self.name))


class ShardedArray(DatasetArray):
    """One array of a :class:`Dataset`, indexed like a read-only numpy array.

    Indexing by an int, a slice (any step) or an integer/boolean index array
    (any order, duplicates allowed) returns an ordinary in-memory ``ndarray``.

    Example:

    >>> x = npyseq.open_shards("data/train")["x"]
    >>> x[10:20].shape, x[[3, 1, 3]].shape
    ((10, 8), (3, 8))
    """

    def __init__(self, dataset: Dataset, name: str, info: ArrayInfo, dtype: np.dtype):
        super().__init__(dataset, name, info, dtype)
        self.shape = (dataset.manifest.rows,) + info.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return self._info.row_bytes

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._info.row_bytes

    def __repr__(self) -> str:
        return f"<npyseq.ShardedArray {self.name!r} shape={self.shape} dtype={self.dtype} in {self._ds.path!r}>"

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return self[:]
            first, rest = key[0], key[1:]
            if first is Ellipsis or first is None:  # the key does not start at the row axis
                return self[:][key]
            if isinstance(first, slice):
                return self[first][(slice(None),) + rest]
            if is_int(first):
                return self[first][rest]
            # An index array: read each row once, then let numpy combine the
            # positions with the rest of the key (several index arrays broadcast).
            first = np.asarray(first)
            flat = as_index_array(first, self.shape[0], self.name)
            unique, inverse = np.unique(flat, return_inverse=True)
            positions = inverse.reshape(flat.shape if first.dtype == bool else first.shape)
            return self._take(unique)[(positions,) + rest]
        n = self.shape[0]
        if is_int(key):
            return self._take(np.array([row_index(key, n, self.name)], np.int64))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self.read(start, max(start, stop))
            rows = range(start, stop, step)
            if rows:  # before the index array is made: the manifest may lie about rows
                self._check_rows(min(rows[0], rows[-1]), max(rows[0], rows[-1]) + 1)
            return self._take(np.arange(start, stop, step, dtype=np.int64))
        if key is Ellipsis:
            return self[:]
        return self.take(key)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start`` to ``stop`` (contiguous, ``0 <= start <= stop <= len``), copied.

        ``out``: an optional C-contiguous array to read into (see :meth:`take`).
        """
        n = self.shape[0]
        if not (is_int(start) and is_int(stop)):
            raise IndexError(f"read needs int start and stop, got {start!r:.40} and {stop!r:.40}")
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"rows [{start}, {stop}) are out of bounds for {n} rows of {self.name!r}: "
                             f"read needs 0 <= start <= stop <= {n} (index with a slice for numpy's clipping)")
        self._check_rows(start, stop)
        out, _ = self._empty(stop - start, out)
        if self._info.row_bytes == 0:
            return out.view(self.dtype)
        starts = self._ds.shard_starts
        k = bisect.bisect_right(starts, start) - 1
        pos = start
        while pos < stop:
            hi, first = min(stop, starts[k + 1]), starts[k]
            self._ds.shard(self.name, k).copier()(pos - first, hi - first, out[pos - start:hi - start])
            pos, k = hi, k + 1
        return out.view(self.dtype)

    def take(self, indices: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``indices``, copied, in that order: ``x.take(i)`` is ``x[i]`` for an index array.

        ``indices``: integers (any order, duplicates allowed; negative ones
        count from the end) or a boolean mask of ``len(x)`` rows; an index out
        of range raises ``IndexError``, as numpy does. An index array of
        several dimensions gives rows in its shape.

        When the data fits in memory (``read="mmap"``, or ``"auto"``), rows
        are gathered out of the shards' memory maps, one ``np.take`` per shard
        touched. Otherwise (``read="pread"``) indices are sorted and grouped
        by shard, and each run of consecutive rows is one ``pread`` (with a
        read-ahead hint for all the runs of a shard first); scattered tiny
        rows are still gathered through a memory map.

        ``out``: an optional C-contiguous array of ``len(indices)`` rows of
        this array's dtype and row shape to read into (and return), to reuse
        buffers across batches.
        """
        key = np.asarray(indices)
        rows = self._take(as_index_array(key, self.shape[0], self.name), out)
        return _shaped_like_key(rows, key, self._info.shape)

    def gather(self, rows: Any, out: np.ndarray | None = None, located: dict | None = None) -> np.ndarray:
        """The rows of a batch, copied into ``out`` (and returned): how a
        :class:`~npyseq.ShardSequence` reads.

        ``rows``: a 1-d array of row indices (checked as by :meth:`take`),
        usually ascending. Consecutive rows (dataset order, ``"batches"``
        mode) are one slice: a single copy out of a memory map when they lie
        in one mapped shard. ``out``: as for :meth:`take` (a pooled buffer).
        ``located``: a dict that the arrays of one batch share, so that the
        rows are located in the shards once per dataset (the arrays of a
        dataset share their shard boundaries); a new one for each batch.
        """
        rows, n, ds = np.asarray(rows), len(self), self._ds
        first = last = None
        if rows.dtype == np.int64 and rows.ndim == 1 and rows.size:
            first, last = int(rows[0]), int(rows[-1])
            if 0 <= first and last < n and last - first + 1 == rows.size and (
                    rows.size < 3 or bool((rows[1:] > rows[:-1]).all())):
                return self._read_span(first, last + 1, out)
        # Ascending rows in range need no other check (a batch's are ascending).
        if first is None or not (0 <= first and last < n) or not bool((rows[1:] >= rows[:-1]).all()):
            rows = as_index_array(rows, n, self.name)
        where = None
        if located is not None and len(rows) and ds.map_reads:
            where = located.get(id(ds))
            if where is None:
                where = located[id(ds)] = ds.locate(rows)
        return self._take(rows, out, where)

    def _read_span(self, start: int, stop: int, out: np.ndarray | None) -> np.ndarray:
        """Rows ``start`` to ``stop`` (in range): :meth:`read`, or for rows of one
        mapped shard (dataset order, ``"batches"`` mode) a single copy with none
        of its general steps."""
        ds = self._ds
        k = bisect.bisect_right(ds.shard_starts, start) - 1
        if not (ds.map_reads and self._info.row_bytes and stop <= ds.shard_starts[k + 1]):
            return self.read(start, stop, out)
        stored, _ = self._empty(stop - start, out)
        first = ds.shard_starts[k]
        np.copyto(stored, ds.shard(self.name, k).array[start - first:stop - first])
        return stored.view(self.dtype)

    # -- internals

    def _empty(self, n: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """An array of ``n`` rows (stored dtype) and the flat bytes under it.

        ``out``, if given, is used instead of a new array: a C-contiguous
        array of ``n`` rows of this array's dtype and row shape.
        """
        shape = (n,) + self._info.shape
        if out is None:
            raw = np.empty(n * self._info.row_bytes, np.uint8)
            return raw.view(self._info.dtype).reshape(shape), raw
        check_out(out, shape, self.dtype)
        raw = out.reshape(-1).view(np.uint8) if out.size else np.empty(0, np.uint8)
        return out.view(self._info.dtype), raw

    def _check_rows(self, start: int, stop: int) -> None:
        """With ``verify="none"``, check the shards of rows [start, stop) (see Dataset.check_shards)."""
        if not self._ds.headers_checked and stop > start:
            starts = self._ds.shard_starts
            first = bisect.bisect_right(starts, start) - 1
            self._ds.check_shards(self.name, range(first, bisect.bisect_left(starts, stop)))

    def _take(self, indices: np.ndarray, out: np.ndarray | None = None,
              located: Located | None = None) -> np.ndarray:
        """:meth:`take` of int64 ``indices``, already checked to be in ``[0, len)``;
        ``located``: ``dataset.locate(indices)`` if known."""
        n = len(indices)
        if n and not self._ds.headers_checked:  # check the shards before allocating (see Dataset)
            located = located if located is not None else self._ds.locate(indices)
            self._ds.check_shards(self.name, [k for k, _, _, _ in located.parts])
        out, raw = self._empty(n, out)
        if n == 0 or self._info.row_bytes == 0:
            return out.view(self.dtype)
        if self._ds.map_reads:
            self._gather_mapped(located if located is not None else self._ds.locate(indices), out)
        else:
            self._pread_rows(indices, out, raw)
        return out.view(self.dtype)

    def _gather_mapped(self, located: Located, out: np.ndarray) -> None:
        """Copy the rows ``located`` into ``out`` out of the shards' memory maps."""
        target = out if located.order is None else np.empty_like(out)
        for k, a, b, local in located.parts:
            # mode="clip": the indices are known to be in range, and with the
            # default "raise" numpy gathers into a temporary, then copies it.
            np.take(self._ds.shard(self.name, k).array, local, axis=0, out=target[a:b], mode="clip")
        if located.order is not None:
            out[located.order] = target

    def _pread_rows(self, indices: np.ndarray, out: np.ndarray, raw: np.ndarray) -> None:
        """Read the rows at ``indices`` into ``out`` (flat bytes ``raw``), one ``pread`` per run."""
        n, row_bytes = len(indices), self._info.row_bytes
        is_sorted = bool(np.all(indices[1:] >= indices[:-1]))
        order = None if is_sorted else np.argsort(indices, kind="stable")
        sorted_idx = indices if order is None else indices[order]
        target, buf = (out, raw) if order is None else self._empty(n)
        for k, lo, hi, local in self._ds.locate(sorted_idx).parts:
            shard = self._ds.shard(self.name, k)
            breaks = np.flatnonzero(np.diff(local) != 1) + 1
            runs = len(breaks) + 1
            if runs > 8 and (hi - lo) * row_bytes < runs * _MIN_RUN_BYTES:
                # Many tiny runs: one vectorized gather out of a memory map.
                np.take(shard.array, local, axis=0, out=target[lo:hi], mode="clip")
                continue
            starts = np.concatenate(([0], breaks))
            counts = np.diff(np.concatenate((starts, [hi - lo])))
            if runs > 1:
                shard.will_need(local[starts], counts, row_bytes)
            for a, c in zip(starts.tolist(), counts.tolist()):
                shard.pread(buf[(lo + a) * row_bytes:(lo + a + c) * row_bytes], int(local[a]), row_bytes)
        if order is not None:
            out[order] = target
