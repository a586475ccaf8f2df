"""Writing a dataset from whole arrays: :func:`write_shards`.

Rows stream into ``.npy`` shards with memory bounded by a chunk (16 MB per
array), never by the data, following the writing protocol
(:mod:`npyseq.storage.protocol`): shards under temporary names, fsync,
rename, the manifest last. Shards are written by a pool of threads; an
iterable of rows (a generator) streams through a
:class:`~npyseq.ShardWriter` instead. A rerun of an interrupted
:func:`write_shards` keeps the shards already complete and correct.

When the disk fills up (``ENOSPC``, or ``EDQUOT`` for a quota), writing stops
everywhere, every ``.partial`` file of the run is removed, no manifest is
written, and :class:`~npyseq.errors.DiskFullError` says how much space was
free. Complete shards stay, so the same conversion run again after freeing
space finishes the dataset (an existing dataset being replaced with
``overwrite=True`` is left untouched).
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from typing import Any, Mapping

import numpy as np

from npyseq.format import npy
from npyseq.errors import InvalidArgumentError
from npyseq.format.dtypes import storable
from npyseq.format.manifest import MANIFEST_NAME, OFFSETS_DTYPE, ArrayInfo, Manifest, ShardInfo
from npyseq.format.npy import row_bytes
from npyseq.storage.dataset import Dataset, open_shards
from npyseq.storage.output import Output, check_sources
from npyseq.storage.protocol import (DEFAULT_SHARD_SIZE, Cancelled, check_count, check_names, disk_full_error,
                                     is_disk_full, offsets_path, rows_per_shard, shard_header_bytes, shard_limit,
                                     shard_path, write_file)
from npyseq.storage.ragged_sources import RaggedInput, RaggedSource, shard_bounds
from npyseq.storage.array_sources import ArrayLikeSource, Hdf5Path, is_array_like
from npyseq.storage.cluster import dask_backend_active, run_on_cluster
from npyseq.storage.jobs import ShardJob, in_process, portable, process_pool, write_ragged_shard, write_shard
from npyseq.storage.shard_writer import ShardWriter, interrupted_message, plan_first_batch
from npyseq.storage.sources import NpzMember, RawSource, Source, open_source

__all__ = ["write_shards"]

MAX_JOBS = 1024  # threads writing shards at once
PROCESSES_FROM = 64 * 2**20  # an HDF5 source this big is read by worker processes (starting them takes ~1 s)
_write_shard = write_shard  # what a thread runs for one shard (tests replace it)
PROCESS_PIECE_BYTES = 4 * 2**20  # what a worker process reads at a time: it holds its own interpreter too


def write_shards(
    out_dir: str | os.PathLike,
    arrays: Mapping[str, Any],
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    *,
    rows: int | None = None,
    jobs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Dataset:
    """Split arrays into ``.npy`` shards plus a manifest; return the opened dataset.

    Args:
        out_dir: the dataset folder to create.
        arrays: ``{name: source}``; each source is an in-memory array, a
            memmap (``np.load(..., mmap_mode="r")``), a path to a ``.npy``
            file, a :class:`RawSource`, an :class:`NpzMember`, or an array-like
            object (``h5py.Dataset``, ``zarr.Array``, ``dask.array.Array``,
            anything with ``shape``, ``dtype`` and row slicing: read in pieces
            that follow its chunks, see :mod:`npyseq.storage.array_sources`).
            All must have the same number of rows. Sources are read in chunks,
            never whole.
            A *ragged* array (rows of different lengths) is a list of
            arrays, one per row (``[np.array([3, 1, 4]), np.array([1, 5])]``),
            a :class:`RaggedSource` (flat values plus offsets or lengths), or
            any other iterable of row arrays, such as a generator; an
            iterable is consumed once, in order, by one thread, and cannot be
            resumed after an interruption.
        shard_size: the largest shard file of any array, in bytes or as
            ``"256MB"`` / ``"1GiB"``.
        rows: rows per shard instead of ``shard_size``.
        jobs: shards written at once (threads; numpy, file I/O and hashing
            release the GIL), at most 1024. ``None``: one per CPU, at most 4.
        progress: show a tqdm progress bar.
        overwrite: replace an existing dataset, one that npyseq wrote: the
            folder may hold nothing but the dataset's files (its manifest, the
            shards it names, their folders, npyseq's lock and temporary
            files), else :class:`~npyseq.errors.ForeignFilesError` names what
            else is there and nothing is written. The new dataset is built
            beside the old one (in ``<out_dir>.npyseq-new``) and swapped in at
            the end; then exactly the old dataset's files are deleted.

    ``out_dir`` is resolved once, at the start: when it is (or passes through)
    a symbolic link, the dataset is written into the folder the link points
    to, and the link stays. Inside the dataset no link is followed: an array
    folder, shard or temporary file that is a link is refused. An output path
    that is a source of this call, or a folder holding one, is refused, and so
    is an empty path.

    Under ``joblib.parallel_config(backend="dask")`` (a ``dask.distributed.Client``
    connected) the shards are written by the cluster's workers, straight into
    ``out_dir``, which must be on a file system they share; sources travel as
    paths and handles, never rows (:mod:`npyseq.storage.cluster`).

    Interrupted (Ctrl-C), a disk full or any other error: nothing is
    published, the ``.partial`` files this call created are deleted, and the
    complete shards stay, so that the same call run again resumes the work.

    Example:

    >>> import numpy as np, npyseq
    >>> x = np.random.rand(1000, 8).astype("float32")
    >>> y = np.arange(1000)
    >>> ds = npyseq.write_shards(tmp / "train", {"x": x, "y": y}, shard_size="16KB",
    ...                          progress=False)
    >>> len(ds), ds.names, ds.num_shards
    (1000, ['x', 'y'], 3)
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise InvalidArgumentError(f"arrays must be a non-empty dict of name -> array, got {arrays!r:.80}")
    if jobs is None:
        jobs = max(1, min(4, os.cpu_count() or 1))
    jobs = check_count(jobs, "jobs", maximum=MAX_JOBS, what="a positive int or None")
    limit = shard_limit(shard_size, rows)
    check_names(arrays)
    if any(_is_row_iterable(v) for v in arrays.values()):
        return _write_streamed(out_dir, arrays, shard_size, rows, progress, overwrite)
    sources = {n: open_source(n, v) for n, v in arrays.items()}
    try:
        total, stores, bounds = _plan(sources, shard_size, rows, limit)
        # On a Dask cluster the workers reopen the sources: refuse what cannot travel, before writing.
        specs = ({n: portable(n, v, sources[n]) for n, v in arrays.items()} if dask_backend_active()
                 else None)
        output = Output(out_dir, overwrite, _source_files(arrays.values()))
    except BaseException:
        _close(sources)
        raise
    try:
        manifest = _write_all(output, sources, stores, bounds, jobs, progress, total, specs)
        root = output.publish(manifest)
    except BaseException as e:
        _close(sources)
        output.release()
        if output.published:  # interrupted while deleting the old dataset: the new one is in place
            raise
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(output.interrupted_message(
                "run the same conversion again (the same command or call) to resume it")) from None
        if is_disk_full(e):
            raise disk_full_error(output.root, e, output.replacing) from None
        raise
    _close(sources)
    return open_shards(root)


def _close(sources) -> None:
    """Close the files that opening the sources opened (HDF5 files opened by path)."""
    for src in sources.values():
        if isinstance(src, ArrayLikeSource):
            src.close()


def _plan(sources: Mapping[str, Source | RaggedInput], shard_size: int | str, rows: int | None,
          limit: int | None) -> tuple[int, dict[str, tuple[np.dtype, str | None]], list[tuple[int, int]]]:
    """Check the sources against each other and the format; return the rows, each array's
    ``storable`` dtypes and the ``(start, stop)`` rows of each shard."""
    for src in sources.values():
        if len(src.shape) == 0:
            raise InvalidArgumentError(f"array {src.name!r} is a scalar; arrays need a first axis of rows")
    n_rows = {n: s.shape[0] for n, s in sources.items()}
    if len(set(n_rows.values())) > 1:
        raise InvalidArgumentError(f"all arrays must have the same number of rows, got {n_rows}")
    total = next(iter(n_rows.values()))
    ragged = [s for s in sources.values() if isinstance(s, RaggedInput)]
    row_shapes = {n: s.element_shape if isinstance(s, RaggedInput) else s.shape[1:] for n, s in sources.items()}
    stores = {n: storable(n, s.dtype, row_shapes[n]) for n, s in sources.items()}
    per_shard = rows_per_shard(shard_size, rows, {n: (stores[n][0], row_shapes[n], isinstance(s, RaggedInput))
                                                  for n, s in sources.items()})
    # A ragged array's values files also bound a shard's rows: cut where they fill.
    header = max((shard_header_bytes(stores[s.name][0], s.element_shape) for s in ragged), default=0)
    return total, stores, shard_bounds(total, per_shard, ragged, limit, header)


def _source_files(values) -> list[str]:
    """The files the sources of a write read: paths, and the files behind memmaps."""
    out = []

    def add(value: Any) -> None:
        if isinstance(value, (str, bytes, os.PathLike)):
            out.append(os.fsdecode(value))
        elif isinstance(value, (RawSource, NpzMember, Hdf5Path)):
            out.append(os.fsdecode(value.path))
        elif is_array_like(value):  # an h5py dataset's file, a Zarr array's folder
            for where in (getattr(getattr(value, "file", None), "filename", None),
                          getattr(getattr(value, "store", None), "root", None)):
                if isinstance(where, (str, os.PathLike)):
                    out.append(os.fsdecode(where))
        elif isinstance(value, RaggedSource):
            for part in (value.values, value.offsets, value.lengths):
                add(part)
        elif isinstance(value, (list, tuple)):
            for row in value:
                if isinstance(row, np.ndarray):
                    add(row)
        elif isinstance(value, np.ndarray):
            while value is not None:  # a view of a memmap has it as a base
                if isinstance(value, np.memmap) and getattr(value, "filename", None):
                    out.append(value.filename)
                    break
                value = value.base if isinstance(value.base, np.ndarray) else None

    for value in values:
        add(value)
    return list(dict.fromkeys(out))


def _write_all(output: Output, sources, stores, bounds, jobs, progress, total, specs=None) -> Manifest:
    """Write every shard into ``output.root`` (holding its lock); return the manifest to publish."""
    root = output.root
    files = [MANIFEST_NAME]
    for name, src in sources.items():
        output.array_folder(name)
        for k in range(len(bounds)):
            files.append(shard_path(name, k))
            if isinstance(src, RaggedInput):
                files.append(offsets_path(name, k))
    output.check_files(files)
    tasks, nbytes, sizes, cluster_tasks = [], 0, {}, []
    pool = None
    for name, src in sources.items():
        store = stores[name][0]
        ragged = isinstance(src, RaggedInput)
        if ragged:
            # The progress counts data bytes: every value, and rows + 1 offsets per shard.
            for k, (a, b) in enumerate(bounds):
                sizes[(name, k)] = (int(src.offsets[b] - src.offsets[a]) * src.element_bytes
                                    + (b - a + 1) * OFFSETS_DTYPE.itemsize)
            jobs_of_source = [((name, k), functools.partial(write_ragged_shard, root, name, k, src, a, b, store))
                              for k, (a, b) in enumerate(bounds)]
            chunk_rows = 0
        else:
            size = row_bytes(store, src.shape[1:])
            chunk_rows = max(1, npy.CHUNK_BYTES // max(1, size))
            jobs_of_source = []
            for k, (a, b) in enumerate(bounds):
                sizes[(name, k)] = (b - a) * size
                if (getattr(src, "portable", None) is not None and src.filtered and jobs > 1
                        and len(bounds) > 1 and total * size >= PROCESSES_FROM):
                    # Compressed HDF5: decoded in worker processes that open the file themselves (one
                    # lock per process); an unfiltered one is read by threads, reading ahead.
                    pool = pool or process_pool(min(jobs, len(bounds)))
                    job = ShardJob(root, name, src.portable, k, a, b, store,
                                   max(1, PROCESS_PIECE_BYTES // max(1, size)))
                    fn = functools.partial(in_process, pool, job, sizes[(name, k)])
                else:
                    fn = functools.partial(_write_shard, root, shard_path(name, k), src, a, b, store, chunk_rows)
                jobs_of_source.append(((name, k), fn))
        if specs is not None:
            jobs_of_source = [((name, k), ShardJob(root, name, specs[name], k, a, b, store, chunk_rows, ragged))
                              for k, (a, b) in enumerate(bounds)]
        if src.seekable:
            (cluster_tasks if specs is not None else tasks).extend([j] for j in jobs_of_source)
        else:
            (cluster_tasks if specs is not None else tasks).append(jobs_of_source)  # one sequential stream
    nbytes = sum(sizes.values())
    try:
        if specs is not None:
            results = _run_on_cluster(output, cluster_tasks, progress, nbytes, sizes)
        else:
            results = _run_tasks(tasks, jobs, progress, nbytes)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    infos = {}
    for name, src in sources.items():
        done = [results[(name, k)] for k in range(len(bounds))]
        if isinstance(src, RaggedInput):
            infos[name] = ArrayInfo(
                dtype=stores[name][0], shape=src.element_shape, logical_dtype=stores[name][1],
                ragged=True, shards=tuple(d[0] for d in done), values=tuple(d[1] for d in done),
                offsets=tuple(d[2] for d in done),
            )
        else:
            infos[name] = ArrayInfo(dtype=stores[name][0], shape=src.shape[1:], shards=tuple(done),
                                    logical_dtype=stores[name][1])
    return Manifest(rows=total, shard_rows=tuple(b - a for a, b in bounds), arrays=infos)


def _run_on_cluster(output, tasks, progress, nbytes, sizes) -> dict:
    from tqdm.auto import tqdm

    with tqdm(total=nbytes, unit="B", unit_scale=True, desc="npyseq write (dask)",
              disable=not progress, dynamic_ncols=True) as bar:
        return run_on_cluster(output, tasks, bar, sizes)


def _run_tasks(tasks, jobs, progress, nbytes) -> dict:
    """Run tasks (lists of ``(key, fn(progress, cancel))`` run in order) on threads."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    bar = tqdm(total=nbytes, unit="B", unit_scale=True, desc="npyseq write",
               disable=not progress, dynamic_ncols=True)

    # A failing shard (a full disk) cancels the others, and no task raises:
    # joblib would return at the first error while the other threads still
    # write, leaving .partial files behind after the caller cleaned up.
    cancel = threading.Event()
    running, idle = [0], threading.Condition()

    def run(task):
        with idle:
            running[0] += 1
        try:
            return run_task(task)
        finally:
            with idle:
                running[0] -= 1
                idle.notify_all()

    def run_task(task):
        out = []
        for key, fn in task:
            if cancel.is_set():
                return None, out
            try:
                out.append((key, fn(bar, cancel)))
            except Cancelled:
                return None, out
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
                cancel.set()
                return e, out
        return None, out

    with bar:
        try:
            done = Parallel(n_jobs=jobs, backend="threading")(delayed(run)(t) for t in tasks)
        except KeyboardInterrupt:
            # Ctrl-C reaches this thread only: stop the writing threads and wait
            # for them to delete their .partial files, which they would
            # otherwise leave behind at the exit of the process.
            cancel.set()
            with idle:
                idle.wait_for(lambda: running[0] == 0, timeout=_STOP_TIMEOUT)
            raise
    failures = [e for e, _ in done if e is not None]
    if failures:
        raise next((e for e in failures if is_disk_full(e)), failures[0])
    return dict(pair for _, batch in done for pair in batch)


_STOP_TIMEOUT = 60.0  # seconds a writing thread may take to stop after Ctrl-C (one chunk)


def _is_row_iterable(value: Any) -> bool:
    """An iterable of row arrays that is not an array, a path, a list or a source object."""
    if isinstance(value, (np.ndarray, str, bytes, os.PathLike, list, tuple, RawSource, NpzMember,
                          RaggedSource)) or hasattr(value, "__array__"):
        return False
    return hasattr(value, "__iter__")


def _write_streamed(out_dir, arrays, shard_size, rows, progress, overwrite) -> Dataset:
    """write_shards with an iterable of ragged rows: stream everything through a ShardWriter."""
    iterators = {n: iter(v) for n, v in arrays.items() if _is_row_iterable(v)}
    fixed = {}
    for n, v in arrays.items():
        if n not in iterators:
            src = open_source(n, v)
            if isinstance(src, RaggedInput) or not src.seekable:
                raise InvalidArgumentError(
                    f"array {n!r}: when another array is an iterable of rows, the others must be arrays, "
                    ".npy paths or RawSources (a ragged list or a compressed .npz member cannot be "
                    "streamed alongside it)")
            fixed[n] = src
    fixed_rows = {src.shape[0] for src in fixed.values()}
    if len(fixed_rows) > 1:
        raise InvalidArgumentError(
            f"all arrays must have the same number of rows, got { {n: s.shape[0] for n, s in fixed.items()} }")
    total = next(iter(fixed_rows), None)
    check_sources(out_dir, _source_files(arrays.values()))
    chunk = 1024

    def next_batch(pos: int) -> dict | None:
        """The next rows of every array, or None at the end."""
        batch = {n: list(itertools.islice(it, chunk)) for n, it in iterators.items()}
        counts = {n: len(b) for n, b in batch.items()}
        n = max(counts.values())
        if len(set(counts.values())) > 1 or (total is not None and n > total - pos):
            given = dict(counts, **{name: total - pos for name in fixed})
            raise InvalidArgumentError(
                f"all arrays must have the same number of rows; after row {pos} the next rows "
                f"were {given} (at most {chunk} read at a time)")
        if n == 0:
            return None
        batch.update({name: src.rows(pos, pos + n) for name, src in fixed.items()})
        return batch

    # The first rows decide every array's dtype and shape: check them before
    # the writer makes the folder, so that what it would refuse writes nothing.
    batch = next_batch(0)
    if batch is not None:
        plan_first_batch(batch, shard_size, rows)
    writer = ShardWriter(out_dir, shard_size, rows=rows, overwrite=overwrite)
    try:
        _stream(writer, batch, next_batch, total, progress)
    except KeyboardInterrupt:
        message = interrupted_message(writer, "run it again to write the dataset (an iterable of rows "
                                      "is read again from its start)")
        if message is None:  # published
            raise
        raise KeyboardInterrupt(message) from None
    return writer.dataset


def _stream(writer, batch, next_batch, total, progress) -> None:
    """Append ``batch`` and the batches ``next_batch(pos)`` gives to ``writer``, then close it."""
    from tqdm.auto import tqdm

    pos = 0
    with writer, tqdm(unit=" rows", desc="npyseq write", disable=not progress) as bar:
        while batch is not None:
            n = len(next(iter(batch.values())))
            writer.append(**batch)
            pos += n
            bar.update(n)
            batch = next_batch(pos)
        if total is not None and pos != total:
            raise InvalidArgumentError(
                f"all arrays must have the same number of rows: the iterables ended after {pos} rows, "
                f"the arrays have {total}")
