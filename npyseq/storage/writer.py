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
import fractions
import functools
import io
import itertools
import json
import math
import os
import re
import shutil
import threading
from typing import Any, Mapping

import numpy as np
import xxhash
from numpy.lib import format as npy_format

from npyseq import _npy
from npyseq.storage.output import (
    OLD_SUFFIX,
    STAGING_SUFFIX,
    TMP_SUFFIX,
    Output,
    check_file,
    check_sources,
    create_file,
)
from npyseq.errors import (
    DiskFullError,
    InvalidArgumentError,
    NpyseqError,
    UnsupportedDtypeError,
)
from npyseq.manifest import (
    MANIFEST_NAME,
    MAX_COUNT,
    OFFSETS_DTYPE,
    PARTIAL_SUFFIX,
    ArrayInfo,
    Manifest,
    ShardInfo,
    fsync_dir,
    storage_dtype,
)
from npyseq.ragged import RaggedInput, RaggedSource, shard_bounds
from npyseq.storage.sources import NpzMember, RawSource, _open_source, _Source

__all__ = ["write_shards", "parse_size", "RawSource", "NpzMember", "RaggedSource"]

DEFAULT_SHARD_SIZE = "256MB"
MAX_JOBS = 1024  # threads writing shards at once
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(value: int | str, argument: str = "shard_size") -> int:
    """Bytes from an int or a string like ``"64MB"``, ``"1GiB"``, ``"512k"``.

    At most 2**62 bytes; ``argument`` names the value in errors.

    >>> parse_size("64MB"), parse_size("1GiB"), parse_size(4096)
    (64000000, 1073741824, 4096)
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(
                f"{argument} must be a number of bytes such as 268435456, '256MB' or '1GiB', "
                f"got {_short(value)}"
            )
        # Exact (a float would turn a 400-digit number into inf), rounded down.
        n = int(fractions.Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise InvalidArgumentError(f"{argument} must be an int or a string like '256MB', got {_short(value)}")
    if n <= 0:
        raise InvalidArgumentError(f"{argument} must be positive, got {_short(value)}")
    if n > MAX_COUNT:
        raise InvalidArgumentError(
            f"{argument} must be at most 2**62 bytes (4.6 EB; the largest size a manifest records), "
            f"got {_short(value)}")
    return n


def _short(value: Any) -> str:
    """``repr(value)`` for a message, shortened if long (a 400-digit number)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _check_count(value: Any, argument: str, minimum: int = 1, maximum: int = MAX_COUNT,
                 what: str = "a positive int") -> int:
    """``value`` as an int in ``[minimum, maximum]``, or an error naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{argument} must be {what}, got {_short(value)}")
    if value > maximum:
        limit = "2**62" if maximum == MAX_COUNT else str(maximum)
        raise InvalidArgumentError(f"{argument} must be at most {limit}, got {_short(value)}")
    return int(value)


# --- planning -----------------------------------------------------------------


def _rows_per_shard(
    shard_size: int | str | None, rows: int | None, dtypes: Mapping[str, np.dtype],
    shapes: Mapping[str, tuple[int, ...]],
) -> int:
    if rows is not None:
        return _check_count(rows, "rows")
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


_RESERVED_SUFFIXES = {
    PARTIAL_SUFFIX: "its temporary files", TMP_SUFFIX: "its temporary files",
    STAGING_SUFFIX: "the folders it builds and replaces datasets in", OLD_SUFFIX: "the folders it "
    "builds and replaces datasets in",
}


def _check_name(name: Any) -> str:
    """Refuse an array name the format does not allow, or one npyseq's own files use."""
    from npyseq.manifest import _NAME_RE

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgumentError(
            f"array names must be 1-128 letters, digits, '_', '-' or '.', not starting with '.'; "
            f"got {name!r}"
        )
    lower = name.lower()  # file systems that ignore case (macOS, Windows) make Manifest.json one
    use = next((what for suffix, what in _RESERVED_SUFFIXES.items() if lower.endswith(suffix)), None)
    if lower == MANIFEST_NAME or lower.startswith(MANIFEST_NAME + "."):
        use = "its manifest and the manifest's temporary file"
    if use is not None:
        raise InvalidArgumentError(
            f"array name {name!r} is reserved: an array's folder has the array's name, and npyseq "
            f"uses such names for {use} in the dataset folder; choose another name "
            f"(e.g. {name.replace('.', '_')!r})"
        )
    return name


def _storable(name: str, dtype: np.dtype, row_shape: tuple[int, ...]) -> tuple[np.dtype, str | None]:
    """``storage_dtype`` of an array whose rows have ``row_shape`` (a ragged
    array's element shape), once sure that the reader opens what the writers
    would write for it; else an error, raised before anything is written.

    The checks replay the reader's: the dtype description must come back
    from the manifest's JSON as the same dtype, and a shard's ``.npy`` header
    (for the largest row count a shard can have) must be writable in format
    1.0 or 2.0 (latin-1 field names) and parse back, within numpy's
    ``max_header_size``, as the same dtype and shape.
    """
    from npyseq.manifest import MAX_ROW_DIMS, _parse_dtype, logical_dtype

    store, logical = storage_dtype(dtype, name)
    row_shape = tuple(row_shape)
    if len(row_shape) > MAX_ROW_DIMS:
        raise InvalidArgumentError(
            f"array {name!r}: rows of shape {row_shape} have {len(row_shape)} dimensions; npyseq "
            f"stores rows of at most {MAX_ROW_DIMS} dimensions (its reader refuses more). "
            "Reshape the rows (e.g. merge axes) before writing them")
    if store.itemsize * math.prod(row_shape) > MAX_COUNT:
        raise InvalidArgumentError(
            f"array {name!r}: one row of shape {row_shape} and dtype {_describe(dtype)} would take "
            f"{store.itemsize * math.prod(row_shape)} bytes, more than the 2**62 a manifest records")
    refused = f"array {name!r} has dtype {_describe(dtype)}, which npyseq cannot store so that it reads it back"
    if _has_titles(store):
        # The manifest's JSON would hold [title, name] lists where numpy needs
        # tuples: a reader working from the format's specification would fail.
        raise UnsupportedDtypeError(
            f"{refused}: its fields have titles, which npyseq does not store; drop them "
            "(np.dtype({'names': ..., 'formats': ...}) without 'titles') before writing")
    try:
        descr = json.loads(json.dumps(npy_format.dtype_to_descr(store)))
        same = _parse_dtype(descr, "dtype", "manifest.json") == store
    except (TypeError, ValueError):  # not JSON, or a ManifestError
        same = False
    if not same:
        raise UnsupportedDtypeError(
            f"{refused}: its description does not survive manifest.json (JSON) unchanged; "
            "use plain field names and formats")
    shape = (MAX_COUNT,) + row_shape
    try:
        header = _npy.header_bytes(store, shape)
    except UnicodeEncodeError as e:
        raise UnsupportedDtypeError(
            f"{refused}: a .npy header (format 1.0 and 2.0, which np.load and npyseq read) holds "
            f"only latin-1 text, and {e.object[e.start:e.end]!r} in its field names is not latin-1; "
            "rename the fields") from None
    try:
        found_shape, fortran, found = _npy.read_header_from(io.BytesIO(header))
    except ValueError as e:
        limit = _max_header_size()
        text = len(header) - (10 if header[6] == 1 else 12)  # magic, version and length come first
        raise UnsupportedDtypeError(
            f"{refused}: its shards' .npy header "
            + (f"would hold {text} characters, more than the {limit} that np.load and npyseq read "
               "(numpy's max_header_size); use fewer or shorter-named fields, or split the "
               "struct into several arrays" if text > limit else f"does not parse back ({e})")) from None
    if found != store or tuple(found_shape) != shape or fortran:
        raise UnsupportedDtypeError(f"{refused}: its .npy header reads back as dtype {found}")
    if logical is not None:
        try:
            logical_dtype(store, logical)
        except NpyseqError as e:
            raise UnsupportedDtypeError(f"{refused}: the reader refuses its logical dtype ({e})") from None
    return store, logical


def _has_titles(dtype: np.dtype) -> bool:
    """Whether a field of ``dtype`` (or of a struct nested in it) has a title."""
    if dtype.subdtype is not None:
        return _has_titles(dtype.subdtype[0])
    if dtype.fields is None:
        return False
    return any(len(spec) > 2 or _has_titles(spec[0]) for spec in dtype.fields.values())


def _describe(dtype: np.dtype) -> str:
    """A dtype as a message names it: in full unless it is a long struct."""
    text = str(dtype)
    if len(text) <= 120:
        return text
    return f"{text[:80]}... (a struct of {len(dtype.names or ())} fields)"


def _max_header_size() -> int:
    """The longest ``.npy`` header numpy reads by default (10000 in numpy 1.24 to 2.x)."""
    import inspect

    return inspect.signature(npy_format.read_array_header_1_0).parameters["max_header_size"].default


def _check_names(names) -> None:
    """Every name allowed, and no two that one folder would hold on a case-insensitive file system."""
    seen: dict[str, str] = {}
    for name in names:
        _check_name(name)
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise InvalidArgumentError(
                f"array names {other!r} and {name!r} differ only in case: on a file system that "
                "ignores case (macOS, Windows) their folders would be one; rename one of them"
            )


# --- disk full ------------------------------------------------------------------


class _Cancelled(Exception):
    """Another shard of the same run failed: stop writing this one."""


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


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
    if reuse and check_file(root, path) == nbytes:  # a link or folder there is refused
        expected = xxhash.xxh3_64(header)
        for chunk in chunks():
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            _npy.hash_array_rows(expected, chunk)
        if _npy.checksum_string(expected) == _npy.file_checksum(final):
            if progress is not None:
                progress.update(data_bytes)  # the bar counts data bytes, headers left out
            return ShardInfo(path=path, bytes=nbytes, checksum=_npy.checksum_string(expected))
    partial = final + PARTIAL_SUFFIX
    h = xxhash.xxh3_64(header)
    f = create_file(partial, root)  # never through a link; this run's from now on
    try:
        with f:
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
    jobs = _check_count(jobs, "jobs", maximum=MAX_JOBS, what="a positive int or None")
    if rows is not None:
        _check_count(rows, "rows")
    if rows is None:
        parse_size(shard_size)
    _check_names(arrays)
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
    stores = {n: _storable(n, s.dtype, s.element_shape if isinstance(s, RaggedInput) else s.shape[1:])
              for n, s in sources.items()}
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

    output = Output(out_dir, overwrite, _source_files(arrays.values()))
    try:
        manifest = _write_all(output, sources, stores, bounds, jobs, progress, total)
        root = output.publish(manifest)
    except BaseException as e:
        output.release()
        if output.published:  # interrupted while deleting the old dataset: the new one is in place
            raise
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(_interrupted_message(output)) from None
        if _is_disk_full(e):
            raise _disk_full_error(output.root, e, output.replacing) from None
        raise
    from npyseq.reader import open_shards

    return open_shards(root)


def _interrupted_message(output: Output, again: str = "run the same conversion again (the same "
                         "command or call) to resume it") -> str:
    kept = f"{output.replacing} still holds the dataset it had; " if output.replacing else ""
    return (f"{output.root}: writing was interrupted. Nothing was published: no manifest was written "
            f"and the .partial files of this run were removed; {kept}the complete shards were kept: "
            f"{again}.")


def _source_files(values) -> list[str]:
    """The files the sources of a write read: paths, and the files behind memmaps."""
    out = []

    def add(value: Any) -> None:
        if isinstance(value, (str, bytes, os.PathLike)):
            out.append(os.fsdecode(value))
        elif isinstance(value, (RawSource, NpzMember)):
            out.append(os.fsdecode(value.path))
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


def _write_all(output: Output, sources, stores, bounds, jobs, progress, total) -> Manifest:
    """Write every shard into ``output.root`` (holding its lock); return the manifest to publish."""
    root = output.root
    files = [MANIFEST_NAME]
    for name, src in sources.items():
        output.array_folder(name)
        for k in range(len(bounds)):
            files.append(_shard_path(name, k))
            if isinstance(src, RaggedInput):
                files.append(_offsets_path(name, k))
    output.check_files(files)
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
    return manifest


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
            except _Cancelled:
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
        raise next((e for e in failures if _is_disk_full(e)), failures[0])
    return dict(pair for _, batch in done for pair in batch)


_STOP_TIMEOUT = 60.0  # seconds a writing thread may take to stop after Ctrl-C (one chunk)


def _is_row_iterable(value: Any) -> bool:
    """An iterable of row arrays that is not an array, a path, a list or a source object."""
    if isinstance(value, (np.ndarray, str, bytes, os.PathLike, list, tuple, RawSource, NpzMember,
                          RaggedSource)) or hasattr(value, "__array__"):
        return False
    return hasattr(value, "__iter__")


def _write_streamed(out_dir, arrays, shard_size, rows, progress, overwrite):
    """write_shards with an iterable of ragged rows: stream everything through a ShardWriter."""
    from npyseq.storage.shard_writer import ShardWriter

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
        from npyseq.storage.shard_writer import _first_batch, _per_shard, _plan

        _per_shard(_plan(_first_batch(batch)), shard_size, rows)
    writer = ShardWriter(out_dir, shard_size, rows=rows, overwrite=overwrite)
    try:
        _stream(writer, batch, next_batch, total, progress)
    except KeyboardInterrupt:
        if writer._output.published:
            raise
        raise KeyboardInterrupt(_interrupted_message(
            writer._output, again="run it again to write the dataset (an iterable of rows is read "
            "again from its start)")) from None
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
