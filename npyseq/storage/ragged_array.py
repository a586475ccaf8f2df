"""Reading ragged arrays (rows of different lengths): :class:`RaggedArray`.

A ragged array is stored per shard as a *values* file (the rows one after
another) and an *offsets* file (where each row starts), both plain ``.npy``
(see :mod:`npyseq.format.manifest`, "Ragged arrays"). ``ds["tokens"]`` of a
ragged array is a :class:`RaggedArray`: ``arr[i]`` is one row's array,
``arr[a:b]`` a list of arrays, and :meth:`RaggedArray.padded` a padded batch
plus the lengths. A shard of it, opened, is an :class:`OpenRagged`.

The offsets invariant (``rows + 1`` offsets from 0 to the number of values,
never decreasing) is one predicate, :func:`offsets_problem`: the offsets
files read here and the offsets a writer is given
(:mod:`npyseq.storage.ragged_sources`) are both checked with it.

Nothing is ever pickled: values and offsets are plain numeric ``.npy`` data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from npyseq.arguments import integer, short_repr
from npyseq.errors import CorruptShardError, InvalidArgumentError
from npyseq.format.manifest import ArrayInfo
from npyseq.storage.arrays import DatasetArray, as_index_array, check_out, is_int, row_index

if TYPE_CHECKING:
    from npyseq.storage.dataset import Dataset
    from npyseq.storage.files import OpenShard

__all__ = ["RaggedArray", "OpenRagged", "CHECK_CHUNK", "SIDES", "check_offsets_data", "check_pad_value",
           "check_side", "offsets_problem"]

# Offsets and lengths are checked in chunks of this many entries, so that
# checking a memory-mapped offsets file of a billion rows takes constant memory.
CHECK_CHUNK = 1 << 22

SIDES = ("post", "pre")  # where padding goes, and which end truncating keeps


def offsets_problem(offsets: np.ndarray, total: int, values: str) -> str | None:
    """What breaks the offsets invariant in ``offsets``, in words; None if nothing does.

    The invariant: ``rows + 1`` offsets into ``total`` values, starting at 0,
    never decreasing, never past ``total`` and ending at it. ``values`` names
    the values in the text (a file, or an array's input). Checked in chunks
    (constant memory for a memory-mapped input); offsets are compared, never
    subtracted: differences of hostile values can wrap around.
    """
    if len(offsets) == 0:
        return "offsets are empty; n rows need n + 1 offsets starting at 0 (a single 0 for no rows)"
    if int(offsets[0]) != 0:
        return f"offsets must start at 0, found {int(offsets[0])}"
    last = 0
    for a in range(0, len(offsets), CHECK_CHUNK):
        chunk = np.asarray(offsets[a:a + CHECK_CHUNK], dtype=np.int64)
        decreasing = np.flatnonzero(chunk < np.concatenate(([last], chunk[:-1])))
        past = np.flatnonzero(chunk > total)
        if past.size and (not decreasing.size or past[0] <= decreasing[0]):
            i = a + int(past[0])
            return f"offset {i} is {int(offsets[i])}, past the end of the values ({values} holds {total})"
        if decreasing.size:
            i = a + int(decreasing[0])
            return (f"offsets must not decrease, but offset {i} is {int(offsets[i])} after "
                    f"{int(offsets[i - 1])} at {i - 1}")
        last = int(chunk[-1])
    if last != total:
        return (f"the last offset is {last}, but the values ({values}) hold {total}; "
                "offsets must end at the number of values")
    return None


def check_offsets_data(offsets: np.ndarray, values: int, path: str, values_path: str) -> None:
    """The content of the offsets file ``path``: offsets into the ``values`` values of ``values_path``."""
    problem = offsets_problem(offsets, values, values_path)
    if problem is not None:
        raise CorruptShardError(f"{path}: {problem}")


def check_side(value: Any, argument: str) -> str:
    """``value`` if it is ``"post"`` or ``"pre"`` (see :data:`SIDES`)."""
    if isinstance(value, str) and value in SIDES:
        return value
    raise InvalidArgumentError(f"{argument} must be 'post' or 'pre', got {short_repr(value)}")


def check_pad_value(value: Any, dtype: np.dtype, name: str) -> None:
    """Refuse a pad value that ``dtype`` cannot hold (e.g. -1 for uint8)."""
    if not np.isscalar(value) or isinstance(value, (str, bytes)):
        raise InvalidArgumentError(f"pad_value of {name!r} must be a number, got {value!r:.80}")
    try:
        np.array(value, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgumentError(
            f"pad_value {value!r} of {name!r} does not fit its dtype {dtype} ({e})") from None


class OpenRagged:
    """Shard ``k`` of a ragged array: its values file, opened, and its offsets, in memory."""

    def __init__(self, values: OpenShard, offsets: np.ndarray):
        self.values, self.offsets = values, offsets


class RaggedArray(DatasetArray):
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

    def __init__(self, dataset: Dataset, name: str, info: ArrayInfo, dtype: np.dtype):
        super().__init__(dataset, name, info, dtype)
        self.element_shape = tuple(info.shape)
        self.shape = (dataset.manifest.rows,)

    @property
    def ndim(self) -> int:
        return 1

    @property
    def num_values(self) -> int:
        """Elements of all rows together."""
        return sum(self._info.values)

    def __repr__(self) -> str:
        return (f"<npyseq.RaggedArray {self.name!r} rows={len(self)} element_shape={self.element_shape} "
                f"dtype={self.dtype} in {self._ds.path!r}>")

    # -- lengths

    def lengths(self, indices: Any = None) -> np.ndarray:
        """Lengths (int64) of the rows at ``indices``, or of every row if ``None``.

        The first call reads every shard's offsets file (8 bytes per row) and
        the dataset keeps the lengths, 8 bytes per row, for its life.
        """
        lengths = self._ds.row_lengths(self.name)
        if indices is None:
            return lengths.copy()
        return lengths[self._indices(indices)]

    # -- rows

    def _indices(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        return as_index_array(key, n, self.name)

    def __getitem__(self, key: Any):
        if is_int(key):
            return self.take(np.array([row_index(key, len(self), self.name)], np.int64))[0]
        if isinstance(key, tuple) or key is Ellipsis:
            raise IndexError(f"{self.name!r} is ragged: index it by row (an int, a slice or an index array) only")
        return self.take(self._indices(key))

    def take(self, indices: Any) -> list[np.ndarray]:
        """The rows at ``indices`` (any order, duplicates allowed), a list of arrays."""
        indices = self._indices(indices)
        out: list[np.ndarray] = [None] * len(indices)  # type: ignore[list-item]
        for k, positions, local in self._by_shard(indices):
            shard = self._ds.shard(self.name, k)
            starts, stops = shard.offsets[local], shard.offsets[local + 1]
            copy = shard.values.copier()
            for p, a, b in zip(positions.tolist(), starts.tolist(), stops.tolist()):
                row = np.empty((b - a,) + self.element_shape, self._info.dtype)
                copy(a, b, row)
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
        check_side(padding, "padding")
        check_side(truncating, "truncating")
        check_pad_value(pad_value, self.dtype, self.name)
        indices = self._indices(indices)
        spans = []  # per shard: (shard, positions, starts, stops)
        full = np.zeros(len(indices), np.int64)
        for k, positions, local in self._by_shard(indices):
            shard = self._ds.shard(self.name, k)
            starts, stops = shard.offsets[local], shard.offsets[local + 1]
            full[positions] = stops - starts
            spans.append((shard, positions, starts, stops))
        if length is None:
            length = int(full.max()) if len(full) else 0
        else:
            length = integer(length, "length", 0, what="a non-negative int or None")
        shape = (len(indices), length) + self.element_shape
        if out is None:
            out = np.empty(shape, self.dtype)
        else:
            check_out(out, shape, self.dtype)
        kept = np.minimum(full, length)
        out[...] = pad_value
        stored = out.view(self._info.dtype)
        for shard, positions, starts, stops in spans:
            copy = shard.values.copier()
            for p, a, b in zip(positions.tolist(), starts.tolist(), stops.tolist()):
                n = min(b - a, length)
                if n == 0:
                    continue
                if truncating == "pre":
                    a = b - n
                copy(a, a + n, stored[p, :n] if padding == "post" else stored[p, length - n:])
        return out, kept

    def _by_shard(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(shard, positions in indices, rows within the shard)`` for each shard touched."""
        located = self._ds.locate(indices)
        for k, a, b, local in located.parts:
            yield k, (np.arange(a, b) if located.order is None else located.order[a:b]), local
