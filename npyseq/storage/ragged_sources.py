"""What the writers read for ragged arrays (rows of different lengths), and ``.npy`` inputs.

A ragged array is written per shard as a *values* file and an *offsets* file
(see :mod:`npyseq.format.manifest`, "Ragged arrays"); the read side is
:mod:`npyseq.storage.ragged_array`. Here: :class:`RaggedSource` (flat values
plus offsets or lengths, e.g. two ``.npy`` files), the inputs that
:func:`npyseq.write_shards` and :class:`npyseq.ShardWriter` build from it or
from a list of arrays (:class:`RaggedInput`), their checks, and how a write
cuts them into shards (:func:`shard_bounds`). :func:`map_npy` opens a ``.npy``
input of either kind (:mod:`npyseq.storage.sources` uses it for fixed arrays).

Nothing is ever pickled: values and offsets are plain numeric ``.npy`` data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

from npyseq.errors import InvalidArgumentError
from npyseq.format import npy
from npyseq.format.dtypes import cast_problem
from npyseq.storage.ragged_array import CHECK_CHUNK, offsets_problem
from npyseq.storage.signatures import not_npy_message, sniff

__all__ = ["RaggedSource", "RaggedInput", "map_npy", "open_ragged", "check_rows", "concat_rows", "is_row_list",
           "shard_bounds"]

def map_npy(path: str, name: str, what: str = "source", npz_hint: str = "") -> np.ndarray:
    """The ``.npy`` file ``path`` memory-mapped read-only (never unpickled) for array ``name``.

    Errors name the array, what the file is for (``what``) and the file; a
    ``.npz`` archive is refused, with ``npz_hint`` saying what to pass instead.
    """
    if not os.path.exists(path):
        raise InvalidArgumentError(f"array {name!r}: {what} file {path!r} does not exist")
    fmt = sniff(path)
    if fmt not in ("npy", "npz", "zip"):
        # numpy would try to unpickle it, and say so: name what the file looks like instead.
        raise InvalidArgumentError(not_npy_message(name, path, fmt))
    try:
        with npy.header_lock():  # numpy parses the header as npyseq's reader does
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InvalidArgumentError(f"array {name!r}: {path}: cannot be read as .npy ({e})") from None
    if not isinstance(array, np.ndarray):
        raise InvalidArgumentError(f"array {name!r}: {path} is a .npz archive{npz_hint}")
    return array


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
        return map_npy(path, name, what, ", not a .npy file"), path
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
    problem = offsets_problem(offsets, total, values_label)
    if problem is not None:
        raise InvalidArgumentError(f"{label}: {problem}")


def _offsets_from_lengths(lengths: np.ndarray, total: int, label: str, values_label: str) -> np.ndarray:
    offsets = np.empty(len(lengths) + 1, dtype=np.int64)
    offsets[0] = 0
    for a in range(0, len(lengths), CHECK_CHUNK):
        chunk = np.asarray(lengths[a:a + CHECK_CHUNK])
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
