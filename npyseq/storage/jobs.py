"""One shard of :func:`npyseq.write_shards` as a job: written by a thread, a worker process,
or a Dask cluster's worker.

A job writes its shard under the shard's own name through a ``.partial`` file
and a rename (:func:`npyseq.storage.protocol.write_file`), so it is
idempotent and deterministic: run again (a task rescheduled after its worker
was lost) it rewrites the same bytes under the same name, or keeps the
complete shard it finds. A job for another process (:class:`ShardJob`)
carries its source as something that worker reopens (a path, a
:class:`~npyseq.RawSource`, an :class:`~npyseq.storage.array_sources.Hdf5Path`,
a Zarr or Dask array handle), never as the rows themselves
(:func:`portable`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import numpy as np

from npyseq.errors import InvalidArgumentError
from npyseq.format import npy
from npyseq.format.manifest import OFFSETS_DTYPE, ShardInfo
from npyseq.format.npy import row_bytes
from npyseq.storage.array_sources import ArrayLikeSource, Hdf5Path, is_array_like
from npyseq.storage.protocol import Cancelled, offsets_path, shard_path, write_file
from npyseq.storage.ragged_sources import RaggedInput, RaggedSource
from npyseq.storage.sources import NpzMember, RawSource, open_source

__all__ = ["ShardJob", "write_shard", "write_ragged_shard", "run_job", "portable", "in_process"]


def write_shard(root: str, path: str, source, start: int, stop: int, store: np.dtype, chunk_rows: int,
                progress, cancel: threading.Event | None = None) -> ShardInfo:
    """Write rows [start, stop) of ``source`` as the shard ``path``; reuse it if correct."""
    header = npy.header_bytes(store, (stop - start,) + source.shape[1:])
    data_bytes = (stop - start) * row_bytes(store, source.shape[1:])
    return write_file(root, path, header, data_bytes,
                      lambda: (c.view(store) for c in source.chunks(start, stop, chunk_rows)),
                      source.seekable, progress, cancel)


def write_ragged_shard(root: str, name: str, k: int, source: RaggedInput, start: int, stop: int,
                       store: np.dtype, progress,
                       cancel: threading.Event | None = None) -> tuple[ShardInfo, int, ShardInfo]:
    """Write rows [start, stop) of a ragged source: values file, then offsets file.

    Returns ``(values file, number of values, offsets file)``.
    """
    first = int(source.offsets[start])
    offsets = np.asarray(source.offsets[start:stop + 1], dtype=OFFSETS_DTYPE) - first
    n_values = int(offsets[-1])
    values = write_file(
        root, shard_path(name, k), npy.header_bytes(store, (n_values,) + source.element_shape),
        n_values * row_bytes(store, source.element_shape),
        lambda: (c.view(store) for c in source.chunks(start, stop, npy.CHUNK_BYTES)),
        True, progress, cancel)
    index = write_file(
        root, offsets_path(name, k), npy.header_bytes(OFFSETS_DTYPE, offsets.shape), offsets.nbytes,
        lambda: iter([offsets]), True, progress, cancel)
    return values, n_values, index


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Shard ``k`` (rows [start, stop)) of array ``name``, for a worker that opens ``source`` itself."""

    root: str
    name: str
    source: Any
    k: int
    start: int
    stop: int
    store: np.dtype
    chunk_rows: int
    ragged: bool = False

    def data_bytes(self, shape: tuple[int, ...]) -> int:
        return (self.stop - self.start) * row_bytes(self.store, shape)


def run_job(job: ShardJob, progress=None, cancel: threading.Event | None = None):
    """Open the job's source (in this process) and write its shard."""
    source = open_source(job.name, job.source)
    try:
        if job.ragged:
            return write_ragged_shard(job.root, job.name, job.k, source, job.start, job.stop, job.store,
                                      progress, cancel)
        return write_shard(job.root, shard_path(job.name, job.k), source, job.start, job.stop, job.store,
                           job.chunk_rows, progress, cancel)
    finally:
        if isinstance(source, ArrayLikeSource):
            source.close()


def in_process(executor, job: ShardJob, data_bytes: int, progress, cancel: threading.Event | None = None):
    """Run ``job`` in a worker process of ``executor``; count its bytes when it is done."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    info = executor.submit(run_job, job).result()
    if progress is not None:
        progress.update(data_bytes)
    return info


def process_pool(workers: int):
    """Worker processes that read HDF5 sources: forked from a fresh server process that has
    imported this module and h5py once (``forkserver``), so that they share its memory."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["npyseq.storage.jobs", "h5py"])
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)


# --- what a job sends to another machine ------------------------------------------------


def _path(value: Any) -> str:
    return os.path.abspath(os.fsdecode(os.fspath(value)))


def _not_portable(name: str, what: str, fix: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"array {name!r}: {what} cannot be sent to the Dask cluster's workers: npyseq sends them paths "
        f"and array handles, never the rows themselves. {fix}, or convert without the dask backend")


def portable(name: str, value: Any, opened: Any) -> Any:
    """``value`` (a source of write_shards; ``opened``: its open source) as what a cluster worker
    reopens: absolute paths, an HDF5 dataset by path, a Zarr or Dask array handle."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return _path(value)
    if isinstance(value, (RawSource, NpzMember, Hdf5Path)):
        return dataclasses.replace(value, path=_path(value.path))
    if isinstance(value, RaggedSource):
        parts = {}
        for field in ("values", "offsets", "lengths"):
            part = getattr(value, field)
            if part is not None and not isinstance(part, (str, bytes, os.PathLike)):
                raise _not_portable(name, f"a RaggedSource whose {field} is a {type(part).__name__}",
                                    "Save it with np.save and give the RaggedSource its path")
            parts[field] = None if part is None else _path(part)
        return RaggedSource(**parts)
    if isinstance(value, np.ndarray):
        return _refuse_array(name, value)
    if is_array_like(value) and isinstance(opened, ArrayLikeSource):
        if opened.kind == "h5py":
            if opened.portable is None:
                raise _not_portable(name, "an h5py dataset of a file open for writing (or in memory)",
                                    "Open the file read-only (h5py.File(path, 'r'))")
            return opened.portable
        if opened.kind == "zarr" and type(getattr(value, "store", None)).__name__ == "MemoryStore":
            raise _not_portable(name, "a Zarr array in memory (a MemoryStore)", "Save it to a store on disk")
        return value  # Zarr (its store's path) and Dask (its task graph) pickle as handles
    raise _not_portable(name, f"a {type(value).__name__} in memory",
                        "Save it as a .npy file (np.save) and pass the path")


def _refuse_array(name: str, value: np.ndarray):
    what = "a memory-mapped array" if isinstance(value, np.memmap) else "an in-memory numpy array"
    raise _not_portable(name, what, "Pass the path of its .npy file instead (np.save it first)")
