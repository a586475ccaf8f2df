"""Ragged arrays: rows of different lengths (token ids, time series).

A ragged array is stored per shard as a *values* file (the rows one after
another) and an *offsets* file (where each row starts), both plain ``.npy``
(see :mod:`npyseq.format.manifest`, "Ragged arrays"). This module holds both sides:

* writing: :class:`RaggedSource` (flat values plus offsets or lengths, e.g. two
  ``.npy`` files) and the internal sources that :func:`npyseq.write_shards` and
  :class:`npyseq.ShardWriter` build from it or from a list of arrays;
* reading: :class:`RaggedArray`, what ``ds["tokens"]`` returns for a ragged
  array: ``arr[i]`` is one row's array, ``arr[a:b]`` a list of arrays, and
  :meth:`RaggedArray.padded` a padded batch plus the lengths.

Nothing is ever pickled: values and offsets are plain numeric ``.npy`` data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

from npyseq.format import npy
from npyseq.errors import CorruptShardError, InvalidArgumentError
from npyseq.format.dtypes import cast_problem
from npyseq.format.manifest import ArrayInfo

__all__ = ["RaggedSource", "RaggedArray"]

# Offsets and lengths are checked in chunks of this many entries, so that
# checking a memory-mapped offsets file of a billion rows takes constant memory.
_CHECK_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class RaggedSource:
    """A ragged array given flat: all rows' values one after another, and where rows start.

    ``values`` has shape ``(total,) + element_shape``; row ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``. Give either ``offsets`` (``rows + 1``
    non-decreasing integers from 0 to ``total``) or ``lengths`` (``rows``
    non-negative integers summing to ``total``). Each of the three may be an
    array, a memmap or the path of a ``.npy`` file (read through a memory map,
    never loaded whole).

    >>> src = npyseq.RaggedSource("tokens.npy", offsets="offsets.npy")
    >>> npyseq.write_shards("data/text", {"tokens": src, "label": "labels.npy"})
    """

    values: Any
    offsets: Any = None
    lengths: Any = None


# --- writing ------------------------------------------------------------------------


class RaggedInput:
    """Rows of one ragged input, for the writers.

    ``offsets`` (int64, ``rows + 1``) may be a memmap; :meth:`chunks` yields
    the values of a range of rows in pieces of bounded size.
    """

    name: str
    dtype: np.dtype
    element_shape: tuple[int, ...]
    offsets: np.ndarray
    seekable = True
    ragged = True

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows,) + element_shape``: the writers read rows and row shape from it."""
        return (len(self.offsets) - 1,) + self.element_shape

    @property
    def element_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.element_shape, dtype=np.int64))

    def chunks(self, start: int, stop: int, chunk_bytes: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _FlatInput(RaggedInput):
    def __init__(self, name: str, values: np.ndarray, offsets: np.ndarray):
        self.name, self.values, self.offsets = name, values, offsets
        self.dtype, self.element_shape = values.dtype, tuple(values.shape[1:])

    def chunks(self, start: int, stop: int, chunk_bytes: int) -> Iterator[np.ndarray]:
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        step = max(1, chunk_bytes // max(1, self.element_bytes))
        for lo in range(a, b, step):
            yield self.values[lo:min(b, lo + step)]


class _ListInput(RaggedInput):
    def __init__(self, name: str, rows: list[np.ndarray]):
        self.name, self.rows = name, rows
        self.dtype, self.element_shape = rows[0].dtype, tuple(rows[0].shape[1:])
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        self.offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)

    def chunks(self, start: int, stop: int, chunk_bytes: int) -> Iterator[np.ndarray]:
        a = start
        while a < stop:
            # Rows up to chunk_bytes of values (at least one), concatenated.
            limit = self.offsets[a] + max(1, chunk_bytes // max(1, self.element_bytes))
            b = max(a + 1, min(stop, int(np.searchsorted(self.offsets, limit, side="right")) - 1))
            yield concat_rows(self.rows[a:b], self.dtype)
            a = b


def concat_rows(rows: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The rows one after another, in ``dtype`` (``np.concatenate`` returns a
    native byte order for big-endian or structured inputs)."""
    data = np.concatenate(rows) if len(rows) > 1 else rows[0]
    return data.astype(dtype, copy=False)


def check_pad_value(value: Any, dtype: np.dtype, name: str) -> None:
    """Refuse a pad value that ``dtype`` cannot hold (e.g. -1 for uint8)."""
    if not np.isscalar(value) or isinstance(value, (str, bytes)):
        raise InvalidArgumentError(f"pad_value of {name!r} must be a number, got {value!r:.80}")
    try:
        np.array(value, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgumentError(
            f"pad_value {value!r} of {name!r} does not fit its dtype {dtype} ({e})") from None


def is_row_list(value: Any) -> bool:
    """A list or tuple of ndarrays: the rows of a ragged array."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], np.ndarray)


def check_rows(name: str, rows: Any, dtype: np.dtype | None = None,
               element_shape: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """Check a list of row arrays: ndarrays of one dtype and element shape."""
    rows = list(rows)
    for i, r in enumerate(rows):
        if not isinstance(r, np.ndarray):
            raise InvalidArgumentError(
                f"array {name!r}: row {i} is a {type(r).__name__}, not a numpy array; a ragged "
                "array is given as a list of numpy arrays, one per row"
            )
        if r.ndim == 0:
            raise InvalidArgumentError(
                f"array {name!r}: row {i} is a scalar; each row of a ragged array is an array "
                "of shape (length,) + element shape"
            )
    if not rows:
        return rows
    dtype = rows[0].dtype if dtype is None else dtype
    element_shape = tuple(rows[0].shape[1:]) if element_shape is None else element_shape
    for i, r in enumerate(rows):
        if tuple(r.shape[1:]) != element_shape:
            raise InvalidArgumentError(
                f"array {name!r}: row {i} has shape {r.shape}, expected (length,) + {element_shape} "
                "like the rows before it"
            )
        if r.dtype != dtype:
            problem = cast_problem(r, dtype)
            if problem is not None:
                raise InvalidArgumentError(
                    f"array {name!r}: row {i} has dtype {r.dtype}, expected {dtype} like the rows before "
                    f"it: {problem}. Rows are cast only when no value can change; cast them yourself "
                    f"(.astype({str(dtype)!r})) if that is what you mean"
                )
            rows[i] = r.astype(dtype)
    return rows


def open_ragged(name: str, value: Any) -> RaggedInput | None:
    """The ragged input ``value`` stands for, or None if it is not ragged."""
    if isinstance(value, RaggedSource):
        return _open_flat(name, value)
    if is_row_list(value):
        return _ListInput(name, check_rows(name, value))
    return None


def _load(name: str, what: str, value: Any) -> tuple[np.ndarray, str]:
    """An array (memory-mapped if a path) and how to name it in errors."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return npy.map_npy(path, name, what, ", not a .npy file"), path
    return np.asarray(value), f"array {name!r} {what}"


def _open_flat(name: str, src: RaggedSource) -> RaggedInput:
    values, values_label = _load(name, "values", src.values)
    if values.ndim == 0:
        raise InvalidArgumentError(f"{values_label}: values must have a first axis, got a scalar")
    if (src.offsets is None) == (src.lengths is None):
        raise InvalidArgumentError(
            f"array {name!r}: RaggedSource needs either offsets or lengths (exactly one of them)"
        )
    what = "offsets" if src.offsets is not None else "lengths"
    bounds, label = _load(name, what, src.offsets if src.offsets is not None else src.lengths)
    if bounds.ndim != 1 or bounds.dtype.kind not in "iu":
        raise InvalidArgumentError(
            f"{label}: {what} must be a 1-d integer array, found dtype {bounds.dtype} and shape {bounds.shape}"
        )
    total = len(values)
    if what == "offsets":
        _check_offsets(bounds, total, label, values_label)
        offsets = bounds if bounds.dtype == np.int64 else bounds.astype(np.int64)
    else:
        offsets = _offsets_from_lengths(bounds, total, label, values_label)
    return _FlatInput(name, values, offsets)


def _check_offsets(offsets: np.ndarray, total: int, label: str, values_label: str) -> None:
    if len(offsets) == 0:
        raise InvalidArgumentError(f"{label}: offsets are empty; {len(offsets)} rows need rows + 1 offsets starting at 0")
    if int(offsets[0]) != 0:
        raise InvalidArgumentError(f"{label}: offsets must start at 0, found {int(offsets[0])}")
    last = int(offsets[0])
    for a in range(0, len(offsets), _CHECK_CHUNK):
        chunk = np.asarray(offsets[a:a + _CHECK_CHUNK], dtype=np.int64)
        # Compared, not subtracted: differences of hostile values can wrap around.
        decreasing = np.flatnonzero(chunk < np.concatenate(([last], chunk[:-1])))
        past = np.flatnonzero(chunk > total)
        if past.size and (not decreasing.size or past[0] <= decreasing[0]):
            i = a + int(past[0])
            raise InvalidArgumentError(
                f"{label}: offset {i} is {int(offsets[i])}, past the end of the values "
                f"({values_label} holds {total})"
            )
        if decreasing.size:
            i = a + int(decreasing[0])
            raise InvalidArgumentError(
                f"{label}: offsets must not decrease, but offset {i} is {int(offsets[i])} after "
                f"{int(offsets[i - 1])} at {i - 1}"
            )
        last = int(chunk[-1])
    if last != total:
        raise InvalidArgumentError(
            f"{label}: the last offset is {last}, but the values ({values_label}) hold {total}; "
            "offsets must end at the number of values"
        )


def _offsets_from_lengths(lengths: np.ndarray, total: int, label: str, values_label: str) -> np.ndarray:
    offsets = np.empty(len(lengths) + 1, dtype=np.int64)
    offsets[0] = 0
    for a in range(0, len(lengths), _CHECK_CHUNK):
        chunk = np.asarray(lengths[a:a + _CHECK_CHUNK])
        bad = np.flatnonzero((chunk < 0) | (chunk > total))
        if bad.size:
            i = a + int(bad[0])
            raise InvalidArgumentError(
                f"{label}: length {i} is {int(lengths[i])}; lengths must be >= 0 and at most the "
                f"number of values ({values_label} holds {total})")
        ends = offsets[a + 1:a + 1 + len(chunk)]
        np.cumsum(chunk, dtype=np.int64, out=ends)
        ends += offsets[a]
        # Each length is below 2**62, so int64 wrapping around shows as a decrease.
        if len(ends) and (ends[0] < offsets[a] or np.any(ends[1:] < ends[:-1])):
            raise InvalidArgumentError(
                f"{label}: lengths add up to more than the {total} values ({values_label}) hold")
    if int(offsets[-1]) != total:
        raise InvalidArgumentError(
            f"{label}: lengths add up to {int(offsets[-1])}, but the values ({values_label}) hold {total}"
        )
    return offsets


def shard_bounds(total: int, per_shard: int, inputs: list[RaggedInput], limit: int | None,
                 header_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of the shards: at most ``per_shard`` rows, and (``limit`` given) values
    files of at most ``limit`` bytes, except a single row bigger than that."""
    bounds, a = [], 0
    while a < total:
        b = min(total, a + per_shard)
        if limit is not None:
            for src in inputs:
                if src.element_bytes == 0:
                    continue
                room = max(0, (limit - header_bytes) // src.element_bytes)
                end = int(np.searchsorted(src.offsets, int(src.offsets[a]) + room, side="right")) - 1
                b = min(b, max(a + 1, end))
        bounds.append((a, b))
        a = b
    return bounds


# --- reading ------------------------------------------------------------------------


class OpenRagged:
    """Shard ``k`` of a ragged array: its values file, opened, and its offsets, in memory."""

    def __init__(self, values, offsets: np.ndarray):
        self.values, self.offsets = values, offsets


def check_offsets_data(offsets: np.ndarray, rows: int, values: int, path: str) -> None:
    """The content of an offsets file: ``rows + 1`` offsets from 0 to ``values``, never decreasing."""
    if int(offsets[0]) != 0:
        raise CorruptShardError(f"{path}: offsets must start at 0, found {int(offsets[0])}")
    # Compared, not subtracted: differences of hostile values can wrap around.
    bad = np.flatnonzero(offsets[1:] < offsets[:-1])
    if bad.size:
        i = int(bad[0]) + 1
        raise CorruptShardError(
            f"{path}: offsets must not decrease, but offset {i} is {int(offsets[i])} after {int(offsets[i - 1])}"
        )
    if int(offsets[-1]) != values:
        raise CorruptShardError(
            f"{path}: the last offset is {int(offsets[-1])}, but the values file holds {values} values"
        )


_SIDES = ("post", "pre")


class RaggedArray:
    """A ragged array of a :class:`npyseq.Dataset`: rows of different lengths.

    ``arr[i]`` is row ``i``, an array of shape ``(length_i,) + element_shape``;
    a slice, an index array or a boolean mask gives a list of such arrays;
    :meth:`padded` gives them as one padded array plus their lengths.

    >>> tokens = npyseq.open_shards("data/text")["tokens"]
    >>> tokens[0]                       # array([ 12, 845,   7], dtype=int32)
    >>> tokens.lengths([0, 1])          # array([3, 5])
    >>> batch, lengths = tokens.padded([0, 1])
    >>> batch                           # array([[ 12, 845, 7, 0, 0], [...]])
    """

    ragged = True

    def __init__(self, dataset, name: str, info: ArrayInfo):
        self._ds, self.name, self._info = dataset, name, info
        self.dtype = dataset._dtypes[name]
        self.element_shape = tuple(info.shape)
        self.shape = (dataset.manifest.rows,)

    @property
    def dataset(self):
        return self._ds

    @property
    def ndim(self) -> int:
        return 1

    @property
    def num_values(self) -> int:
        """Elements of all rows together."""
        return sum(self._info.values)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"<npyseq.RaggedArray {self.name!r} rows={len(self)} element_shape={self.element_shape} "
                f"dtype={self.dtype} in {self._ds.path!r}>")

    def __reduce__(self):
        from npyseq.reader import _array_of

        return (_array_of, (self._ds, self.name))

    # -- lengths

    def lengths(self, indices: Any = None) -> np.ndarray:
        """Lengths (int64) of the rows at ``indices``, or of every row if ``None``.

        The first call reads every shard's offsets file (8 bytes per row) and
        keeps the lengths, 8 bytes per row, for the life of the process.
        """
        # Kept by the dataset, which arrays refer to (never the other way round).
        pid, lengths = self._ds._ragged_lengths.get(self.name, (None, None))
        if lengths is None or pid != os.getpid():
            parts = [np.diff(self._ds._shard(self.name, k).offsets) for k in range(self._ds.num_shards)]
            lengths = np.concatenate(parts) if parts else np.empty(0, np.int64)
            self._ds._ragged_lengths[self.name] = (os.getpid(), lengths)
        if indices is None:
            return lengths.copy()
        return lengths[self._indices(indices)]

    # -- rows

    def _indices(self, key: Any) -> np.ndarray:
        from npyseq.reader import _as_index_array

        n = len(self)
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        return _as_index_array(key, n, self.name)

    def __getitem__(self, key: Any):
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i, n = int(key), len(self)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for {self.name!r} with {n} rows")
            return self.take(np.array([i % n]))[0]
        if isinstance(key, tuple) or key is Ellipsis:
            raise IndexError(f"{self.name!r} is ragged: index it by row (an int, a slice or an index array) only")
        return self.take(self._indices(key))

    def take(self, indices: Any) -> list[np.ndarray]:
        """The rows at ``indices`` (any order, duplicates allowed), a list of arrays."""
        indices = self._indices(indices)
        out: list[np.ndarray] = [None] * len(indices)  # type: ignore[list-item]
        for k, positions, local in self._by_shard(indices):
            shard = self._ds._shard(self.name, k)
            starts, stops = shard.offsets[local], shard.offsets[local + 1]
            values = self._values(shard)
            for p, a, b in zip(positions.tolist(), starts.tolist(), stops.tolist()):
                row = np.empty((b - a,) + self.element_shape, self._info.dtype)
                self._read_values(values, a, b, row)
                out[p] = row.view(self.dtype)
        return out

    def padded(self, indices: Any, *, length: int | None = None, pad_value: Any = 0,
               padding: str = "post", truncating: str = "post",
               out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The rows at ``indices`` as one array padded to a common length, and their lengths.

        Args:
            indices: row indices (any order, duplicates allowed).
            length: the padded length ``L``; ``None``: the longest of these rows.
            pad_value: what fills the padding.
            padding: ``"post"`` pads after each row, ``"pre"`` before it.
            truncating: rows longer than ``L`` keep their first (``"post"``)
                or last (``"pre"``) ``L`` elements.
            out: a C-contiguous array of shape ``(len(indices), L) + element_shape``
                and this array's dtype to fill instead of a new one.

        Returns:
            ``(batch, lengths)``: ``batch`` of shape ``(n, L) + element_shape``,
            ``lengths`` (int64) the length each row kept, ``min(length_i, L)``.
        """
        if padding not in _SIDES:
            raise InvalidArgumentError(f"padding must be 'post' or 'pre', got {padding!r}")
        if truncating not in _SIDES:
            raise InvalidArgumentError(f"truncating must be 'post' or 'pre', got {truncating!r}")
        check_pad_value(pad_value, self.dtype, self.name)
        indices = self._indices(indices)
        groups = list(self._by_shard(indices))
        spans = []  # per shard: (positions, starts, stops)
        full = np.zeros(len(indices), np.int64)
        for k, positions, local in groups:
            offsets = self._ds._shard(self.name, k).offsets
            starts, stops = offsets[local], offsets[local + 1]
            full[positions] = stops - starts
            spans.append((k, positions, starts, stops))
        if length is None:
            length = int(full.max()) if len(full) else 0
        elif isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise InvalidArgumentError(f"length must be a non-negative int or None, got {length!r}")
        length = int(length)
        shape = (len(indices), length) + self.element_shape
        if out is None:
            out = np.empty(shape, self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise InvalidArgumentError(
                f"out must be a C-contiguous array of shape {shape} and dtype {self.dtype}, "
                f"got shape {out.shape}, dtype {out.dtype}"
            )
        kept = np.minimum(full, length)
        out[...] = pad_value
        stored = out.view(self._info.dtype)
        for k, positions, starts, stops in spans:
            values = self._values(self._ds._shard(self.name, k))
            for p, a, b in zip(positions.tolist(), starts.tolist(), stops.tolist()):
                n = min(b - a, length)
                if n == 0:
                    continue
                if truncating == "pre":
                    a = b - n
                dest = stored[p, :n] if padding == "post" else stored[p, length - n:]
                self._read_values(values, a, a + n, dest)
        return out, kept

    # -- internals

    def _by_shard(self, indices: np.ndarray):
        """``(shard, positions in indices, rows within the shard)`` for each shard touched."""
        n = len(self)
        if len(indices) and (indices.min() < 0 or indices.max() >= n):
            bad = indices.min() if indices.min() < 0 else indices.max()
            raise IndexError(f"index {bad} is out of bounds for {n} rows of {self.name!r}")
        offsets = self._ds._offsets
        shard_of = np.searchsorted(offsets, indices, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        cuts = np.flatnonzero(np.diff(shard_of[order])) + 1
        for positions in np.split(order, cuts) if len(order) else []:
            k = int(shard_of[positions[0]])
            yield k, positions, indices[positions] - offsets[k]

    def _values(self, shard: OpenRagged):
        """Where a shard's values are read from: its memory map (checked once per
        batch, see :class:`npyseq._files.OpenShard`), or the open file for ``pread``."""
        if self._ds._map_reads or self._info.row_bytes == 0:
            return shard.values.array
        return shard.values

    def _read_values(self, values, a: int, b: int, dest: np.ndarray) -> None:
        """Copy values ``[a, b)`` of a shard (``_values(shard)``) into ``dest`` (contiguous, stored dtype)."""
        if b <= a:
            return
        if isinstance(values, np.ndarray):
            dest[...] = values[a:b]
        else:
            values.pread(dest.reshape(-1).view(np.uint8), a, self._info.row_bytes)
