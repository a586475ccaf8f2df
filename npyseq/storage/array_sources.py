"""Array-like sources of :func:`npyseq.write_shards`: ``h5py.Dataset``, ``zarr.Array``,
``dask.array.Array`` and anything alike (a ``shape``, a ``dtype`` and row slicing).

Such a source is read in *pieces* of rows, never whole. A piece follows the
source's own chunking: it is made of whole source chunks (HDF5 and Zarr
``chunks``, Dask blocks) up to :data:`PIECE_BYTES` of rows, cut at the
shard's ends; a source chunk bigger than that is read in parts. A writing job
reads ahead (:func:`read_ahead`): a thread reads the next piece of half that
size while the job hashes and writes this one, so a job holds about one
:data:`PIECE_BYTES` (and its source library's own chunk cache), and the memory
of a conversion is about ``jobs`` of them, whatever the source's size.

HDF5 serialises every call under one global lock, so threads on one handle
read one at a time. An unfiltered dataset costs little CPU under that lock
(h5py releases the GIL while the disk reads) and is read by threads; a
compressed (filtered) one opened read-only from a file is decoded in worker
*processes* that each open the file by its path (:class:`Hdf5Path`, what an
``h5py.Dataset`` handle becomes for a worker).
Zarr and Dask release the GIL and are read by the writer's threads; a Dask
array is computed piece by piece with the synchronous scheduler (on a Dask
cluster each job computes its own pieces on its worker).
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
from typing import Any, Iterator

import numpy as np

from npyseq.errors import InvalidArgumentError
from npyseq.format.npy import row_bytes

__all__ = ["PIECE_BYTES", "Hdf5Path", "ArrayLikeSource", "is_array_like", "open_array_like", "missing_extra"]

PIECE_BYTES = 16 * 2**20  # the rows one job reads at a time from an array-like source, at most
# Read ahead: a job's reader thread reads the next piece while its writer hashes and writes
# this one; the two pieces of half the size hold what one piece held before.
AHEAD_PIECE_BYTES = PIECE_BYTES // 2


@dataclasses.dataclass(frozen=True)
class Hdf5Path:
    """One dataset of an HDF5 file, by path: what a worker opens itself (h5py handles do not pickle)."""

    path: str
    name: str


def missing_extra(package: str, extra: str, what: str) -> InvalidArgumentError:
    """The error for an optional package that is not installed."""
    return InvalidArgumentError(
        f"{what} needs the {package} package, which is not installed; install it with "
        f"pip install 'npyseq[{extra}]'")


def is_array_like(value: Any) -> bool:
    """Not a numpy array, but something with a shape, a dtype and slicing (h5py, Zarr, Dask ...)."""
    if isinstance(value, (np.ndarray, str, bytes, os.PathLike, list, tuple)):
        return False
    if isinstance(value, type) or not all(hasattr(value, a) for a in ("shape", "dtype", "__getitem__")):
        return False
    try:
        np.dtype(value.dtype)
    except TypeError:  # a torch tensor: read it through __array__ instead
        return False
    return True


def _kind(value: Any) -> str:
    module = type(value).__module__.split(".")[0]
    return module if module in ("h5py", "zarr", "dask") else "array"


def open_array_like(name: str, value: Any) -> "ArrayLikeSource":
    """An array-like ``value`` (or an :class:`Hdf5Path`) as a source of rows."""
    if isinstance(value, Hdf5Path):
        try:
            import h5py
        except ImportError:
            raise missing_extra("h5py", "hdf5", f"array {name!r}: {value.path}") from None
        try:
            f = h5py.File(value.path, "r")
        except OSError as e:
            raise InvalidArgumentError(f"array {name!r}: {value.path}: cannot open it as HDF5 ({e})") from None
        if value.name not in f or not isinstance(f[value.name], h5py.Dataset):
            f.close()
            raise InvalidArgumentError(f"array {name!r}: {value.path} has no dataset {value.name!r}")
        return ArrayLikeSource(name, f[value.name], owner=f)
    return ArrayLikeSource(name, value)


class ArrayLikeSource:
    """Rows of an array-like object, read piece by piece (see the module docstring).

    ``portable``: what a worker process reopens it from (an :class:`Hdf5Path`),
    or None where the object itself is sent (Zarr, Dask) or nothing can be.
    """

    seekable = True

    def __init__(self, name: str, array: Any, owner: Any = None):
        self.name, self.array, self.owner = name, array, owner
        self.kind = _kind(array)
        try:
            self.dtype = np.dtype(array.dtype)
            self.shape = tuple(int(d) for d in array.shape)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(
                f"array {name!r}: a {type(array).__name__} with shape {getattr(array, 'shape', None)} and "
                f"dtype {getattr(array, 'dtype', None)} is not an array npyseq can read ({e}); for a Dask "
                "array of unknown chunk sizes call .compute_chunk_sizes() first") from None
        self.blocks = self._row_blocks()
        self.portable = self._portable()

    def _row_blocks(self) -> list[int] | None:
        """The row ends of the source's chunks along the first axis (None: not chunked)."""
        chunks = getattr(self.array, "chunks", None)
        if not self.shape or not chunks:
            return None
        first = chunks[0]
        if isinstance(first, tuple):  # Dask: the size of every block
            ends = np.cumsum(first).tolist()
        else:  # HDF5 / Zarr: one chunk size
            step = max(1, int(first))
            ends = list(range(step, self.shape[0], step)) + [self.shape[0]]
        return [int(e) for e in ends] if ends else None

    def _portable(self) -> Hdf5Path | None:
        if self.kind != "h5py":
            return None
        f = self.array.file
        if f.mode != "r" or f.driver != "sec2" or not self.array.name:
            return None  # being written, or in memory: the caller's handle is the only view of it
        return Hdf5Path(os.path.abspath(f.filename), self.array.name)

    def pieces(self, start: int, stop: int, target_rows: int) -> Iterator[tuple[int, int]]:
        """``(a, b)`` row ranges covering [start, stop): whole source chunks up to ``target_rows``."""
        target_rows = max(1, target_rows)
        if self.blocks is None:
            for a in range(start, stop, target_rows):
                yield a, min(stop, a + target_rows)
            return
        i = int(np.searchsorted(self.blocks, start, side="right"))
        a = start
        while a < stop:
            block_end = min(stop, self.blocks[i])
            if block_end - a > target_rows:  # a chunk bigger than a piece: read it in parts
                parts = math.ceil((block_end - a) / target_rows)
                step = math.ceil((block_end - a) / parts)
                for p in range(a, block_end, step):
                    yield p, min(block_end, p + step)
                a, i = block_end, i + 1
                continue
            b = block_end
            while i + 1 < len(self.blocks) and b < stop and min(stop, self.blocks[i + 1]) - a <= target_rows:
                i += 1
                b = min(stop, self.blocks[i])
            if b > a:
                yield a, b
            a, i = b, i + 1

    def rows(self, start: int, stop: int) -> np.ndarray:
        part = self.array[start:stop]
        if self.kind == "dask" or hasattr(part, "compute"):
            part = part.compute(scheduler="synchronous")
        out = np.ascontiguousarray(np.asarray(part))
        expected = (stop - start,) + self.shape[1:]
        if out.shape != expected or out.dtype != self.dtype:
            raise InvalidArgumentError(
                f"array {self.name!r}: rows {start}:{stop} of the {type(self.array).__name__} came back with "
                f"shape {out.shape} and dtype {out.dtype}, not {expected} and {self.dtype}; give an array "
                "whose row slices are numpy arrays of its shape and dtype")
        return out

    @property
    def filtered(self) -> bool:
        """An HDF5 dataset with filters (compression ...): reading it costs CPU under HDF5's lock."""
        if self.kind != "h5py":
            return False
        return self.array.id.get_create_plist().get_nfilters() > 0

    def chunks(self, start: int, stop: int, chunk_rows: int) -> Iterator[np.ndarray]:
        size = row_bytes(self.dtype, self.shape[1:])
        target = max(1, min(chunk_rows, PIECE_BYTES // max(1, size)))
        spans = list(self.pieces(start, stop, target))
        if len(spans) < 2:
            for a, b in spans:
                yield self.rows(a, b)
            return
        ahead = max(1, min(chunk_rows, AHEAD_PIECE_BYTES // max(1, size)))
        yield from read_ahead(self.rows, list(self.pieces(start, stop, ahead)))

    def close(self) -> None:
        if self.owner is not None:
            self.owner.close()
            self.owner = None


def read_ahead(read, spans: list[tuple[int, int]]) -> Iterator[np.ndarray]:
    """``read(a, b)`` of every span, in order; a thread reads the next span while the caller uses
    this one (at most two pieces alive), so that reading overlaps hashing, writing and fsync."""
    ready: queue.Queue = queue.Queue()
    slots = threading.Semaphore(2)  # the caller's piece and the one being read
    stop = threading.Event()

    def reader():
        try:
            for a, b in spans:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                ready.put((True, read(a, b)))
        except BaseException as e:  # noqa: B036 - handed to the caller, who raises it
            ready.put((False, e))

    thread = threading.Thread(target=reader, name="npyseq-read-ahead", daemon=True)
    thread.start()
    try:
        for _ in spans:
            ok, value = ready.get()
            if not ok:
                raise value
            yield value
            del value
            slots.release()
    finally:
        stop.set()
        thread.join()
