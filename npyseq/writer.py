"""Writing sharded datasets: :func:`write_shards` and :class:`ShardWriter`.

Both stream rows into ``.npy`` shards with memory bounded by a chunk (16 MB per
array), never by the data, and follow the writing protocol of
:mod:`npyseq.manifest`: shards under temporary names, fsync, rename, the
manifest last. A rerun of an interrupted :func:`write_shards` keeps the shards
already complete and correct.

When the disk fills up (``ENOSPC``, or ``EDQUOT`` for a quota), writing stops
everywhere, every ``.partial`` file of the run is removed, no manifest is
written, and :class:`~npyseq.errors.DiskFullError` says how much space was
free. Complete shards stay, so the same conversion run again after freeing
space finishes the dataset (an existing dataset being replaced with
``overwrite=True`` is left untouched).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import re
import shutil
import sys
import threading
from typing import Any, Iterator, Mapping

import numpy as np
import xxhash

from npyseq import _npy
from npyseq.errors import DatasetExistsError, DiskFullError, InvalidArgumentError, NpyseqError
from npyseq.manifest import (
    MANIFEST_NAME,
    OFFSETS_DTYPE,
    PARTIAL_SUFFIX,
    ArrayInfo,
    Manifest,
    ShardInfo,
    fsync_dir,
    storage_dtype,
    write_manifest,
)
from npyseq.ragged import RaggedInput, RaggedSource, shard_bounds
from npyseq.sources import NpzMember, RawSource, _open_source, _Source

__all__ = ["write_shards", "parse_size", "RawSource", "NpzMember", "RaggedSource"]

DEFAULT_SHARD_SIZE = "256MB"
_LOCK_NAME = ".npyseq.lock"
_SHARD_FILE_RE = re.compile(r"^\d{6,}(\.offsets)?\.npy(\.partial)?$")
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like ``"64MB"``, ``"1GiB"``, ``"512k"``.

    >>> parse_size("64MB"), parse_size("1GiB"), parse_size(4096)
    (64000000, 1073741824, 4096)
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(
                f"shard_size must be a number of bytes such as 268435456, '256MB' or '1GiB', "
                f"got {value!r}"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise InvalidArgumentError(f"shard_size must be an int or a string like '256MB', got {value!r}")
    if n <= 0:
        raise InvalidArgumentError(f"shard_size must be positive, got {value!r}")
    return n


# --- planning -----------------------------------------------------------------


def _rows_per_shard(
    shard_size: int | str | None, rows: int | None, dtypes: Mapping[str, np.dtype],
    shapes: Mapping[str, tuple[int, ...]],
) -> int:
    if rows is not None:
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows <= 0:
            raise InvalidArgumentError(f"rows must be a positive int, got {rows!r}")
        return int(rows)
    limit = parse_size(shard_size if shard_size is not None else DEFAULT_SHARD_SIZE)
    best = None
    for name, dtype in dtypes.items():
        row_bytes = dtype.itemsize * int(np.prod(shapes[name], dtype=np.int64))
        if row_bytes == 0:
            continue
        header = len(_npy.header_bytes(dtype, (2**40,) + tuple(shapes[name])))
        n = (limit - header) // row_bytes
        if n < 1:
            raise InvalidArgumentError(
                f"shard_size {limit} bytes is smaller than one row of array {name!r} "
                f"({row_bytes} bytes plus a {header}-byte header); raise shard_size"
            )
        best = n if best is None else min(best, n)
    return best if best is not None else 2**20


def _shard_path(name: str, k: int) -> str:
    return f"{name}/{k:06d}.npy"


def _offsets_path(name: str, k: int) -> str:
    """The offsets file of shard ``k`` of a ragged array."""
    return f"{name}/{k:06d}.offsets.npy"


def _check_name(name: Any) -> str:
    from npyseq.manifest import _NAME_RE

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgumentError(
            f"array names must be 1-128 letters, digits, '_', '-' or '.', not starting with '.'; "
            f"got {name!r}"
        )
    return name


# --- the writing protocol ------------------------------------------------------


@contextlib.contextmanager
def _locked(root: str) -> Iterator[None]:
    path = os.path.join(root, _LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NpyseqError(
                f"{root}: another npyseq process is writing this dataset (lock {path} is held)"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.close(fd)


# --- disk full ------------------------------------------------------------------


class _Cancelled(Exception):
    """Another shard of the same run failed: stop writing this one."""


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _remove_partials(root: str) -> None:
    """Delete every temporary file of a run: ``.partial`` shards, manifest, header copies."""
    folders = [root] + [os.path.join(root, e) for e in _listdir(root)
                        if os.path.isdir(os.path.join(root, e))]
    for folder in folders:
        for entry in _listdir(folder):
            if entry.endswith((PARTIAL_SUFFIX, PARTIAL_SUFFIX + ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, entry))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _disk_full_error(root: str, e: OSError, replaces: str | None,
                     again: str = "run the same conversion again to finish it") -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(root).free} bytes are free"
    except OSError:
        free = "the free space is unknown"
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    kept = (f"{replaces} still holds the dataset it had; " if replaces is not None else "")
    return DiskFullError(
        f"{root}: the disk is full ({errno.errorcode.get(e.errno, e.errno)}: {e.strerror}){where}; "
        f"{free}. Nothing was published: no manifest was written and the temporary .partial "
        f"files were removed; {kept}complete shards were kept. Free some space (or write "
        f"elsewhere) and {again}."
    )


def _prepare_output(out_dir: str, overwrite: bool) -> tuple[str, str | None]:
    """Return (folder to write into, folder it replaces at the end or None)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, MANIFEST_NAME)):
        if not overwrite:
            raise DatasetExistsError(
                f"{out_dir} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
            )
        # Build the new dataset beside the old one, then swap folders, so a
        # reader never sees old and new shards under one manifest.
        staging = out_dir.rstrip("/") + ".npyseq-new"
        os.makedirs(staging, exist_ok=True)
        return staging, out_dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InvalidArgumentError(f"{out_dir} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir, None


def _swap_in(staging: str, target: str) -> None:
    """Put the new dataset at ``target``; the old one is deleted.

    On Linux the two folders are exchanged in one atomic step
    (``renameat2(RENAME_EXCHANGE)``), so ``target`` always holds a complete
    dataset, old or new. Elsewhere (or on a file system without it) two
    renames leave ``target`` missing for an instant, and a reader opening it
    then gets DatasetNotFoundError.
    """
    if _exchange(staging, target):
        fsync_dir(os.path.dirname(target) or ".")
        shutil.rmtree(staging)  # now the old dataset
        return
    old = target.rstrip("/") + ".npyseq-old"
    if os.path.exists(old):
        shutil.rmtree(old)
    os.rename(target, old)
    os.rename(staging, target)
    fsync_dir(os.path.dirname(target) or ".")
    shutil.rmtree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no glibc 2.28+ symbol
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):  # fs or kernel without it
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _remove_strays(root: str, manifest: Manifest) -> None:
    """Delete shard files of earlier, different runs that the manifest does not list."""
    listed = {s.path for a in manifest.arrays.values() for s in a.files}
    for name in manifest.arrays:
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            rel = f"{name}/{entry}"
            if _SHARD_FILE_RE.match(entry) and rel not in listed:
                os.unlink(os.path.join(folder, entry))


def _write_file(root: str, path: str, header: bytes, data_bytes: int, chunks, reuse: bool,
                progress, cancel: threading.Event | None = None) -> ShardInfo:
    """Write ``header`` and the arrays ``chunks()`` yields as the file ``path``; reuse it if equal.

    With ``reuse``, an existing file at ``path`` of the right size whose
    checksum equals that of the bytes to write is kept (a rerun after an
    interruption). On any error (or once ``cancel`` is set by a failing
    sibling) the ``.partial`` file is removed before the error propagates.
    """
    final = os.path.join(root, path)
    nbytes = len(header) + data_bytes
    if reuse and os.path.isfile(final) and os.path.getsize(final) == nbytes:
        expected = xxhash.xxh3_64(header)
        for chunk in chunks():
            _npy.hash_array_rows(expected, chunk)
        if _npy.checksum_string(expected) == _npy.file_checksum(final):
            if progress is not None:
                progress.update(data_bytes)  # the bar counts data bytes, headers left out
            return ShardInfo(path=path, bytes=nbytes, checksum=_npy.checksum_string(expected))
    partial = final + PARTIAL_SUFFIX
    h = xxhash.xxh3_64(header)
    try:
        with open(partial, "wb") as f:
            f.write(header)
            for chunk in chunks():
                if cancel is not None and cancel.is_set():
                    raise _Cancelled()
                f.write(_npy.hash_array_rows(h, chunk))
                if progress is not None:
                    progress.update(chunk.nbytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _npy.drop_from_cache(final)
    return ShardInfo(path=path, bytes=nbytes, checksum=_npy.checksum_string(h))


def _write_shard(root: str, path: str, source: _Source, start: int, stop: int,
                 store: np.dtype, chunk_rows: int, progress,
                 cancel: threading.Event | None = None) -> ShardInfo:
    """Write rows [start, stop) of ``source`` as the shard ``path``; reuse it if correct."""
    header = _npy.header_bytes(store, (stop - start,) + source.shape[1:])
    data_bytes = (stop - start) * store.itemsize * int(np.prod(source.shape[1:], dtype=np.int64))
    return _write_file(root, path, header, data_bytes,
                       lambda: (c.view(store) for c in source.chunks(start, stop, chunk_rows)),
                       source.seekable, progress, cancel)


def _write_ragged_shard(root: str, name: str, k: int, source: RaggedInput, start: int, stop: int,
                        store: np.dtype, progress,
                        cancel: threading.Event | None = None) -> tuple[ShardInfo, int, ShardInfo]:
    """Write rows [start, stop) of a ragged source: values file, then offsets file.

    Returns ``(values file, number of values, offsets file)``.
    """
    first = int(source.offsets[start])
    offsets = np.asarray(source.offsets[start:stop + 1], dtype=OFFSETS_DTYPE) - first
    n_values = int(offsets[-1])
    values = _write_file(
        root, _shard_path(name, k), _npy.header_bytes(store, (n_values,) + source.element_shape),
        n_values * store.itemsize * int(np.prod(source.element_shape, dtype=np.int64)),
        lambda: (c.view(store) for c in source.chunks(start, stop, _npy.CHUNK_BYTES)),
        True, progress, cancel)
    index = _write_file(
        root, _offsets_path(name, k), _npy.header_bytes(OFFSETS_DTYPE, offsets.shape), offsets.nbytes,
        lambda: iter([offsets]), True, progress, cancel)
    return values, n_values, index


def write_shards(
    out_dir: str | os.PathLike,
    arrays: Mapping[str, Any],
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    *,
    rows: int | None = None,
    jobs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
):
    """Split arrays into ``.npy`` shards plus a manifest; return the opened dataset.

    Args:
        out_dir: the dataset folder to create.
        arrays: ``{name: source}``; each source is an in-memory array, a
            memmap (``np.load(..., mmap_mode="r")``), a path to a ``.npy``
            file, a :class:`RawSource` or an :class:`NpzMember`. All must have
            the same number of rows. Sources are read in chunks, never whole.
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
            release the GIL). ``None``: one per CPU, at most 4.
        progress: show a tqdm progress bar.
        overwrite: replace an existing dataset. The new dataset is built beside
            the old one and swapped in at the end.

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
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidArgumentError(f"jobs must be a positive int or None, got {jobs!r}")
    for n in arrays:
        _check_name(n)
    if any(_is_row_iterable(v) for v in arrays.values()):
        return _write_streamed(out_dir, arrays, shard_size, rows, progress, overwrite)
    sources = {n: _open_source(n, v) for n, v in arrays.items()}
    for src in sources.values():
        if len(src.shape) == 0:
            raise InvalidArgumentError(f"array {src.name!r} is a scalar; arrays need a first axis of rows")
    n_rows = {n: s.shape[0] for n, s in sources.items()}
    if len(set(n_rows.values())) > 1:
        raise InvalidArgumentError(f"all arrays must have the same number of rows, got {n_rows}")
    total = next(iter(n_rows.values()))
    stores = {n: storage_dtype(s.dtype, n) for n, s in sources.items()}
    ragged = [s for s in sources.values() if isinstance(s, RaggedInput)]
    # Fixed arrays bound the rows of a shard by their row size; a ragged
    # array by its offsets (8 bytes a row) and, below, by its values.
    row_dtypes = {n: st[0] for n, st in stores.items()}
    row_shapes = {n: s.shape[1:] for n, s in sources.items()}
    for src in ragged:
        row_dtypes[src.name], row_shapes[src.name] = OFFSETS_DTYPE, ()
    per_shard = _rows_per_shard(shard_size, rows, row_dtypes, row_shapes)
    limit = None if rows is not None else parse_size(shard_size)
    header = max((len(_npy.header_bytes(stores[s.name][0], (2**40,) + s.element_shape)) for s in ragged),
                 default=0)
    bounds = shard_bounds(total, per_shard, ragged, limit, header)

    root, replaces = _prepare_output(os.fspath(out_dir), overwrite)
    try:
        _write_locked(root, sources, stores, bounds, jobs, progress, total)
    except OSError as e:
        if not _is_disk_full(e):
            raise
        _remove_partials(root)
        raise _disk_full_error(root, e, replaces) from None
    if replaces is not None:
        _swap_in(root, replaces)
        root = replaces
    from npyseq.reader import open_shards

    return open_shards(root)


def _write_locked(root, sources, stores, bounds, jobs, progress, total) -> None:
    """Write every shard, then the manifest, holding the folder's lock."""
    with _locked(root):
        for name in sources:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        tasks, nbytes = [], 0
        for name, src in sources.items():
            store = stores[name][0]
            if isinstance(src, RaggedInput):
                # The progress counts data bytes: every value, and rows + 1 offsets per shard.
                n_values = int(src.offsets[-1]) if len(src.offsets) else 0
                nbytes += n_values * src.element_bytes + (total + len(bounds)) * OFFSETS_DTYPE.itemsize
                tasks.extend([((name, k), functools.partial(_write_ragged_shard, root, name, k, src, a, b, store))]
                             for k, (a, b) in enumerate(bounds))
                continue
            row_bytes = store.itemsize * int(np.prod(src.shape[1:], dtype=np.int64))
            nbytes += total * row_bytes
            chunk_rows = max(1, _npy.CHUNK_BYTES // max(1, row_bytes))
            jobs_of_source = [
                ((name, k), functools.partial(_write_shard, root, _shard_path(name, k), src, a, b, store,
                                              chunk_rows))
                for k, (a, b) in enumerate(bounds)
            ]
            if src.seekable:
                tasks.extend([j] for j in jobs_of_source)
            else:
                tasks.append(jobs_of_source)  # one sequential stream
        results = _run_tasks(tasks, jobs, progress, nbytes)
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
        manifest = Manifest(rows=total, shard_rows=tuple(b - a for a, b in bounds), arrays=infos)
        for name in sources:
            fsync_dir(os.path.join(root, name))
        _remove_strays(root, manifest)
        write_manifest(root, manifest)


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

    def run(task):
        out = []
        for key, fn in task:
            if cancel.is_set():
                return None, out
            try:
                out.append((key, fn(bar, cancel)))
            except _Cancelled:
                return None, out
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
                cancel.set()
                return e, out
        return None, out

    with bar:
        done = Parallel(n_jobs=jobs, backend="threading")(delayed(run)(t) for t in tasks)
    failures = [e for e, _ in done if e is not None]
    if failures:
        raise next((e for e in failures if _is_disk_full(e)), failures[0])
    return dict(pair for _, batch in done for pair in batch)


def _is_row_iterable(value: Any) -> bool:
    """An iterable of row arrays that is not an array, a path, a list or a source object."""
    if isinstance(value, (np.ndarray, str, bytes, os.PathLike, list, tuple, RawSource, NpzMember,
                          RaggedSource)) or hasattr(value, "__array__"):
        return False
    return hasattr(value, "__iter__")


def _write_streamed(out_dir, arrays, shard_size, rows, progress, overwrite):
    """write_shards with an iterable of ragged rows: stream everything through a ShardWriter."""
    from npyseq.shard_writer import ShardWriter

    iterators = {n: iter(v) for n, v in arrays.items() if _is_row_iterable(v)}
    fixed = {}
    for n, v in arrays.items():
        if n not in iterators:
            src = _open_source(n, v)
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
    from tqdm.auto import tqdm

    total = next(iter(fixed_rows), None)
    pos, chunk = 0, 1024
    with ShardWriter(out_dir, shard_size, rows=rows, overwrite=overwrite) as writer, \
            tqdm(unit=" rows", desc="npyseq write", disable=not progress) as bar:
        while True:
            batch = {n: list(itertools.islice(it, chunk)) for n, it in iterators.items()}
            counts = {n: len(b) for n, b in batch.items()}
            n = max(counts.values())
            if len(set(counts.values())) > 1 or (total is not None and n > total - pos):
                given = dict(counts, **{name: total - pos for name in fixed})
                raise InvalidArgumentError(
                    f"all arrays must have the same number of rows; after row {pos} the next rows "
                    f"were {given} (at most {chunk} read at a time)")
            if n == 0:
                break
            batch.update({name: src.rows(pos, pos + n) for name, src in fixed.items()})
            writer.append(**batch)
            pos += n
            bar.update(n)
        if total is not None and pos != total:
            raise InvalidArgumentError(
                f"all arrays must have the same number of rows: the iterables ended after {pos} rows, "
                f"the arrays have {total}")
    return writer.dataset
