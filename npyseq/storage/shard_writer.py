"""Writing a dataset batch by batch: :class:`ShardWriter`.

Rows are streamed into shards as they are appended, following the writing
protocol of :mod:`npyseq.manifest` (temporary names, fsync, rename, the
manifest last), with memory bounded by the batch being appended.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Iterator, Mapping

import numpy as np
import xxhash

from npyseq import _npy
from npyseq.storage.output import TMP_SUFFIX, Output, create_file
from npyseq.errors import InvalidArgumentError, WriteFailedError
from npyseq.manifest import (
    OFFSETS_DTYPE,
    PARTIAL_SUFFIX,
    ArrayInfo,
    Manifest,
    ShardInfo,
    fsync_dir,
)
from npyseq.ragged import check_rows, concat_rows, is_row_list
from npyseq.storage.writer import (
    DEFAULT_SHARD_SIZE,
    _check_count,
    _check_names,
    _disk_full_error,
    _is_disk_full,
    _offsets_path,
    _rows_per_shard,
    _shard_path,
    _storable,
    _write_file,
    parse_size,
)

__all__ = ["ShardWriter"]


class _Spec:
    """What one array of a ShardWriter holds: dtypes, row (or element) shape, raggedness."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], ragged: bool, name: str):
        self.dtype, self.shape, self.ragged = dtype, shape, ragged
        self.store, self.logical = _storable(name, dtype, shape)
        self.item_bytes = self.store.itemsize * int(np.prod(shape, dtype=np.int64))


class ShardWriter:
    """Write a dataset batch by batch, e.g. from a preprocessing loop.

    Rows are streamed to disk as they are appended; memory stays bounded by
    the batch being appended. The manifest is written when the ``with`` block
    ends without an exception; until then the folder is an incomplete
    dataset that :func:`npyseq.open_shards` refuses.

    A ragged array (rows of different lengths) is appended as a list of
    arrays, one per row; its values files stay under ``shard_size`` (a row
    bigger than that gets a shard of its own).

    The first ``append`` decides each array's dtype. A later batch of another
    dtype is cast to it only when no value can change (``int32 -> int64``,
    ``float32 -> float64``, ``'S3' -> 'S5'``; integers of another range when
    every value fits, such as int64 labels 0-9 into an int8 array); any other
    cast (``float64 -> float32``, floats to integers, 300 into int8, -1 into
    uint8, ``int64 -> float64``) raises :class:`~npyseq.InvalidArgumentError`:
    cast the batch yourself if the change is meant.
    (:func:`npyseq._npy.cast_problem` states the rule in full.)

    An ``append`` that fails while writing (an ``OSError`` such as ``EFBIG``
    from a file-size limit, ``KeyboardInterrupt``, any exception) may leave
    some arrays holding rows of that batch and others not. The writer then
    stops: it removes its ``.partial`` files, every later ``append`` and
    ``close`` raise :class:`~npyseq.WriteFailedError`, and no manifest is
    ever written (complete shards stay on disk, as after :meth:`abort`).
    An ``OSError`` is raised as ``WriteFailedError`` (``DiskFullError`` for a
    full disk); other exceptions propagate as they are. An append refused for
    its arguments (shape, dtype, names, row counts) writes nothing and leaves
    the writer usable.

    ``out_dir`` and ``overwrite`` work as in :func:`npyseq.write_shards`: the
    path is resolved once (a symbolic link is followed to its folder, and
    stays), no link inside the dataset is followed, and ``overwrite=True``
    replaces only a dataset npyseq wrote (else
    :class:`~npyseq.errors.ForeignFilesError`).

    Example:

    >>> with npyseq.ShardWriter(tmp / "features", shard_size="64MB") as writer:
    ...     for i in range(10):
    ...         writer.append(x=np.full((100, 4), i, "float32"), y=np.full(100, i))
    >>> len(writer.dataset)
    1000
    >>> with npyseq.ShardWriter(tmp / "text") as writer:
    ...     writer.append(tokens=[np.array([5, 3, 9]), np.array([7])], label=np.array([0, 1]))
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int | str = DEFAULT_SHARD_SIZE,
                 *, rows: int | None = None, overwrite: bool = False):
        # Validated now, before the folder is made, not at the first append.
        self._limit = parse_size(shard_size) if rows is None else None
        if rows is not None:
            _check_count(rows, "rows")
        self._shard_size, self._rows_arg = shard_size, rows
        # Resolves out_dir once, takes the lock, decides in place or beside (see npyseq.storage.output).
        self._output = Output(out_dir, overwrite)
        self._root, self._replaces = self._output.root, self._output.replacing
        self._closed = False
        self._failure: str | None = None  # why an append or close failed part-way
        self._writing = ""  # the file being written, to name it when a write fails
        self._per_shard = 0
        self._specs: dict[str, _Spec] = {}
        self._files: dict[str, Any] = {}
        self._hashers: dict[str, Any] = {}
        self._shards: dict[str, list[ShardInfo]] = {}
        # Ragged arrays: per shard, the values count and offsets file; in the
        # open shard, the row ends so far.
        self._values: dict[str, list[int]] = {}
        self._offset_files: dict[str, list[ShardInfo]] = {}
        self._ends: dict[str, list[np.ndarray]] = {}
        self._shard_rows: list[int] = []
        self._rows_in_shard = 0
        self.rows = 0
        self.dataset = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def append(self, **arrays: Any) -> None:
        """Append rows: one keyword per array, each with the same number of rows.

        A fixed array is an array of rows; a ragged array a list of arrays,
        one per row (the first ``append`` decides which an array is).
        """
        self._refuse_if_failed("append()")
        if self._closed:
            raise InvalidArgumentError("append() called on a closed ShardWriter")
        if not arrays:
            raise InvalidArgumentError("append() needs at least one array, e.g. append(x=..., y=...)")
        specs, per_shard = self._specs, self._per_shard
        if not specs:
            if all(isinstance(v, (list, tuple)) and len(v) == 0 for v in arrays.values()):
                return  # no rows: nothing tells yet which arrays are ragged
            arrays = _first_batch(arrays)
            specs = _plan(arrays)
            per_shard = _per_shard(specs, self._shard_size, self._rows_arg)
        if set(arrays) != set(specs):
            raise InvalidArgumentError(
                f"append() got arrays {sorted(arrays)}, but this writer holds {sorted(specs)}"
            )
        arrays = {n: _check(specs[n], n, v) for n, v in arrays.items()}
        lengths = {n: len(a) for n, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise InvalidArgumentError(f"append() arrays must have the same number of rows, got {lengths}")
        # Everything is checked: from here on, a failure stops the writer.
        n = next(iter(lengths.values()))
        with self._stop_on_failure(f"append() of rows {self.rows} to {self.rows + n}"):
            if not self._specs:
                self._start(specs, per_shard)
            row_lengths = {name: np.fromiter((len(r) for r in a), np.int64, count=len(a))
                           for name, a in arrays.items() if self._specs[name].ragged}
            pos = 0
            while pos < n:
                if not self._files:
                    self._open_shard()
                take = self._rows_that_fit(row_lengths, pos, min(n - pos, self._per_shard - self._rows_in_shard))
                if take == 0:
                    self._finish_shard()
                    continue
                for name, a in arrays.items():
                    spec = self._specs[name]
                    if spec.ragged:
                        rows = a[pos:pos + take]
                        data = concat_rows(rows, spec.dtype)
                        ends = np.cumsum(row_lengths[name][pos:pos + take]) + self._values_in_shard(name)
                        self._ends[name].append(ends)
                    else:
                        data = a[pos:pos + take]
                    self._writing = self._files[name].name
                    self._files[name].write(_npy.hash_array_rows(self._hashers[name], data.view(spec.store)))
                self._rows_in_shard += take
                pos += take
                if self._rows_in_shard == self._per_shard:
                    self._finish_shard()
        self.rows += n

    def close(self):
        """Finish the last shard and write the manifest; return the dataset.

        Raises :class:`~npyseq.WriteFailedError`, and publishes nothing, if an
        ``append`` failed part-way (see the class docstring).
        """
        self._refuse_if_failed("close()")
        if self._closed:
            return self.dataset
        if not self._specs:
            self.abort()
            raise InvalidArgumentError("ShardWriter closed before any append(); nothing to write")
        with self._stop_on_failure("close()"):
            if self._files:
                self._finish_shard()
            infos = {}
            for n, spec in self._specs.items():
                infos[n] = ArrayInfo(dtype=spec.store, shape=spec.shape, shards=tuple(self._shards[n]),
                                     logical_dtype=spec.logical, ragged=spec.ragged,
                                     values=tuple(self._values.get(n, ())),
                                     offsets=tuple(self._offset_files.get(n, ())))
            manifest = Manifest(rows=self.rows, shard_rows=tuple(self._shard_rows), arrays=infos)
            for name in self._specs:
                fsync_dir(os.path.join(self._root, name))
            root = self._output.publish(manifest)  # writes the manifest, swaps, unlocks
        self._closed = True
        from npyseq.reader import open_shards

        self.dataset = open_shards(root)
        return self.dataset

    def abort(self) -> None:
        """Stop without writing a manifest.

        The shard being written (its ``.partial`` files, the only temporary
        files this writer has) is deleted; complete shards stay on disk, and
        the folder is an incomplete dataset that :func:`npyseq.open_shards`
        refuses. Nothing else in the folder is touched.
        """
        if self._closed:
            return
        k = len(self._shard_rows)
        for f in self._files.values():
            with contextlib.suppress(OSError):  # flushing may fail again on a full disk
                f.close()
        for name in self._files:  # only what this writer created: a refused link stays
            for suffix in (PARTIAL_SUFFIX, TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._root, _shard_path(name, k)) + suffix)
        self._files.clear()
        self._closed = True
        self._output.release()

    @contextlib.contextmanager
    def _stop_on_failure(self, doing: str) -> Iterator[None]:
        """On any exception, stop the writer for good: it may hold a batch in
        some arrays and not in others. Abort (no .partial left), and raise an
        OSError as DiskFullError or WriteFailedError, anything else as it is."""
        try:
            yield
        except BaseException as e:
            where = getattr(e, "filename", None) or self._writing
            self._failure = f"{doing} failed" + (f" writing {where}" if where else "") + f" ({_reason(e)})"
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.abort()
            if _is_disk_full(e):
                raise _disk_full_error(self._root, e, self._replaces,
                                       again="write the dataset again") from None
            if isinstance(e, OSError):
                raise WriteFailedError(
                    f"{self._root}: {self._failure}. {_STOPPED} Fix the cause (for EFBIG, a file-size "
                    "limit such as `ulimit -f`: lower shard_size) and write the dataset again."
                ) from e
            raise

    def _refuse_if_failed(self, what: str) -> None:
        if self._failure is not None:
            raise WriteFailedError(
                f"{self._root}: {what} refused: an earlier {self._failure}, so the arrays may not hold "
                f"the same rows. {_STOPPED} Write the dataset again with a new ShardWriter."
            )

    # -- internals

    def _start(self, specs: Mapping[str, "_Spec"], per_shard: int) -> None:
        for name, spec in specs.items():
            self._output.array_folder(name)  # refuses a link there
            self._shards[name] = []
            if spec.ragged:
                self._values[name], self._offset_files[name], self._ends[name] = [], [], []
        self._specs, self._per_shard = dict(specs), per_shard

    def _values_in_shard(self, name: str) -> int:
        ends = self._ends[name]
        return int(ends[-1][-1]) if ends and len(ends[-1]) else 0

    def _rows_that_fit(self, row_lengths: dict[str, np.ndarray], pos: int, take: int) -> int:
        """How many of the next ``take`` rows fit in the open shard's values files
        (at least one in an empty shard)."""
        if self._limit is None:
            return take
        for name, lengths in row_lengths.items():
            spec = self._specs[name]
            if spec.item_bytes == 0:
                continue
            header = len(_npy.header_bytes(spec.store, (2**40,) + spec.shape))
            room = (self._limit - header) // spec.item_bytes - self._values_in_shard(name)
            fit = int(np.searchsorted(np.cumsum(lengths[pos:pos + take]), room, side="right"))
            take = min(take, fit if self._rows_in_shard or fit else 1)
        return take

    def _open_shard(self) -> None:
        k = len(self._shard_rows)
        for name, spec in self._specs.items():
            path = os.path.join(self._root, _shard_path(name, k)) + PARTIAL_SUFFIX
            self._writing = path
            f = create_file(path, self._root)  # never through a link
            self._files[name] = f
            # A ragged array's values count is known at the end: its header is rewritten then.
            header = _npy.header_bytes(spec.store, ((0 if spec.ragged else self._per_shard),) + spec.shape)
            f.write(header)
            self._files[name], self._hashers[name] = f, xxhash.xxh3_64(header)
            if spec.ragged:
                self._ends[name] = []
        self._rows_in_shard = 0

    def _finish_shard(self) -> None:
        k, rows = len(self._shard_rows), self._rows_in_shard
        for name, spec in self._specs.items():
            f = self._files[name]
            rel = _shard_path(name, k)
            partial = os.path.join(self._root, rel) + PARTIAL_SUFFIX
            self._writing = partial
            count = self._values_in_shard(name) if spec.ragged else rows
            if spec.ragged or rows != self._per_shard:
                written = 0 if spec.ragged else self._per_shard
                f = _fix_header(f, partial, _npy.header_bytes(spec.store, (written,) + spec.shape),
                                _npy.header_bytes(spec.store, (count,) + spec.shape), count * spec.item_bytes)
                checksum = None
            else:
                checksum = _npy.checksum_string(self._hashers[name])
            f.flush()
            os.fsync(f.fileno())
            f.close()
            if checksum is None:
                checksum = _npy.file_checksum(partial)
            final = os.path.join(self._root, rel)
            os.replace(partial, final)
            _npy.drop_from_cache(final)
            self._shards[name].append(ShardInfo(path=rel, bytes=os.path.getsize(final), checksum=checksum))
            if spec.ragged:
                self._writing = os.path.join(self._root, _offsets_path(name, k))
                offsets = np.concatenate([np.zeros(1, OFFSETS_DTYPE)] + self._ends[name]).astype(OFFSETS_DTYPE)
                self._values[name].append(count)
                self._offset_files[name].append(_write_file(
                    self._root, _offsets_path(name, k), _npy.header_bytes(OFFSETS_DTYPE, offsets.shape),
                    offsets.nbytes, lambda offsets=offsets: iter([offsets]), False, None))
                self._ends[name] = []
        self._shard_rows.append(rows)
        self._files.clear()
        self._hashers.clear()
        self._rows_in_shard = 0


_STOPPED = ("The writer stopped and publishes nothing: no manifest was written and its .partial files "
            "were removed; complete shards stay on disk, and the folder is an incomplete dataset.")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _first_batch(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """The first batch's arrays: lists of row arrays stay lists (ragged), the rest become arrays."""
    return {n: (list(v) if is_row_list(v) else _asarray(n, v)) for n, v in arrays.items()}


def _plan(arrays: Mapping[str, Any]) -> dict[str, "_Spec"]:
    """What each array of a first batch (from :func:`_first_batch`) makes the writer hold;
    raises, before anything is written, for what the reader could not open."""
    _check_names(arrays)
    specs = {}
    for n, a in arrays.items():
        if isinstance(a, list):
            rows = check_rows(n, a)
            specs[n] = _Spec(rows[0].dtype, tuple(rows[0].shape[1:]), True, n)
        else:
            if a.ndim == 0:
                raise InvalidArgumentError(
                    f"append(): array {n!r} is a scalar; arrays need a first axis of rows")
            specs[n] = _Spec(a.dtype, tuple(a.shape[1:]), False, n)
    return specs


def _per_shard(specs: Mapping[str, "_Spec"], shard_size: int | str, rows: int | None) -> int:
    """Rows per shard; offsets files take 8 bytes a row: they bound a shard's rows like a fixed array."""
    dtypes = {n: (OFFSETS_DTYPE if s.ragged else s.store) for n, s in specs.items()}
    shapes = {n: (() if s.ragged else s.shape) for n, s in specs.items()}
    return _rows_per_shard(shard_size, rows, dtypes, shapes)


def _check(spec: "_Spec", name: str, value: Any) -> Any:
    """``value`` as the rows of array ``name``: cast, with the shape checked."""
    if spec.ragged:
        if isinstance(value, np.ndarray) or not isinstance(value, (list, tuple)):
            raise InvalidArgumentError(
                f"append(): array {name!r} is ragged: give its rows as a list of arrays, "
                f"got {type(value).__name__}")
        return check_rows(name, value, spec.dtype, spec.shape)
    a = _asarray(name, value)
    if a.ndim == 0:
        raise InvalidArgumentError(f"append(): array {name!r} is a scalar; arrays need a first axis of rows")
    if a.shape[1:] != spec.shape:
        raise InvalidArgumentError(
            f"append(): array {name!r} rows must have shape {spec.shape}, got {a.shape[1:]}"
        )
    if a.dtype != spec.dtype:
        problem = _npy.cast_problem(a, spec.dtype)
        if problem is not None:
            raise InvalidArgumentError(
                f"append(): array {name!r} must have dtype {spec.dtype}, got {a.dtype}: {problem}. "
                f"The writer casts a batch only when no value can change; cast it yourself "
                f"(.astype({str(spec.dtype)!r})) if that is what you mean, or give the first "
                "batch a dtype that holds every batch"
            )
        a = a.astype(spec.dtype)
    return a


def _asarray(name: str, value: Any) -> np.ndarray:
    """``value`` as the rows of a fixed-size array, or a clear error (rows of different lengths)."""
    try:
        return np.asarray(value)
    except ValueError as e:
        raise InvalidArgumentError(
            f"append(): array {name!r} is fixed-size (its first append was an array), but these rows "
            f"do not make one array ({e}); a ragged array must start as a list of arrays") from None


def _fix_header(f, partial: str, old: bytes, new: bytes, data_bytes: int):
    """Replace a shard's header (the rows or values count changed); return the open file."""
    f.flush()
    if len(new) == len(old):
        f.seek(0)
        f.write(new)
        f.truncate(len(new) + data_bytes)
        return f
    # The header changed length across a 64-byte boundary: copy the data once.
    f.close()
    tmp = partial + ".tmp"
    with open(partial, "rb") as src, create_file(tmp, os.path.dirname(os.path.dirname(partial))) as dst:
        dst.write(new)
        src.seek(len(old))
        remaining = data_bytes
        while remaining:
            block = src.read(min(remaining, _npy.CHUNK_BYTES))
            dst.write(block)
            remaining -= len(block)
    os.replace(tmp, partial)
    return open(partial, "r+b")
