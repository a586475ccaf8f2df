"""Writing a dataset batch by batch: :class:`ShardWriter`.

Rows are streamed into shards as they are appended, following the writing
protocol (:mod:`npyseq.storage.protocol`: temporary names, fsync, rename, the
manifest last), with memory bounded by the batch being appended.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import IO, Any, Iterator, Mapping

import numpy as np
import xxhash

from npyseq.format import npy
from npyseq.errors import InvalidArgumentError, WriteFailedError
from npyseq.format.dtypes import cast_problem, storable
from npyseq.format.manifest import OFFSETS_DTYPE, PARTIAL_SUFFIX, TMP_SUFFIX, ArrayInfo, Manifest, ShardInfo
from npyseq.format.npy import row_bytes
from npyseq.storage.dataset import Dataset, open_shards
from npyseq.storage.output import Output
from npyseq.storage.ownership import create_file
from npyseq.storage.protocol import (DEFAULT_SHARD_SIZE, check_names, disk_full_error, drop_from_cache, is_disk_full,
                                     offsets_path,
                                     rows_per_shard, shard_header_bytes, shard_limit, shard_path, write_file)
from npyseq.storage.ragged_sources import check_rows, concat_rows, is_row_list

__all__ = ["ShardWriter"]


class ArraySpec:
    """What one array of a ShardWriter holds: dtypes, row (or element) shape, raggedness."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], ragged: bool, name: str):
        self.dtype, self.shape, self.ragged = dtype, shape, ragged
        self.store, self.logical = storable(name, dtype, shape)
        self.item_bytes = row_bytes(self.store, shape)


class _ArrayState:
    """One array of a ShardWriter: what it holds, its complete shards and its open shard."""

    def __init__(self, spec: ArraySpec):
        self.spec = spec
        self.shards: list[ShardInfo] = []  # complete shards (of a ragged array: its values files)
        self.values: list[int] = []  # ragged: the values count of each complete shard
        self.offset_files: list[ShardInfo] = []  # ragged: the offsets file of each complete shard
        # The open shard: its .partial file, the hash of what it holds, and
        # (ragged) the ends of its rows so far.
        self.file: IO[bytes] | None = None
        self.hasher: Any = None
        self.ends: list[np.ndarray] = []

    def values_in_shard(self) -> int:
        return int(self.ends[-1][-1]) if self.ends and len(self.ends[-1]) else 0

    def info(self) -> ArrayInfo:
        spec = self.spec
        return ArrayInfo(dtype=spec.store, shape=spec.shape, shards=tuple(self.shards),
                         logical_dtype=spec.logical, ragged=spec.ragged, values=tuple(self.values),
                         offsets=tuple(self.offset_files))


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
    (:func:`npyseq.format.dtypes.cast_problem` states the rule in full.)

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
        self._limit = shard_limit(shard_size, rows)
        self._shard_size, self._rows_arg = shard_size, rows
        # Resolves out_dir once, takes the lock, decides in place or beside (see npyseq.storage.output).
        self._output = Output(out_dir, overwrite)
        self._root, self._replaces = self._output.root, self._output.replacing
        self._closed = False
        self._failure: str | None = None  # why an append or close failed part-way
        self._writing = ""  # the file being written, to name it when a write fails
        self._per_shard = 0
        self._arrays: dict[str, _ArrayState] = {}  # set by the first append with rows
        self._shard_rows: list[int] = []
        self._rows_in_shard = 0
        self.rows = 0
        self.dataset: Dataset | None = None

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
        specs, per_shard = {n: a.spec for n, a in self._arrays.items()}, self._per_shard
        if not specs:
            if all(isinstance(v, (list, tuple)) and len(v) == 0 for v in arrays.values()):
                return  # no rows: nothing tells yet which arrays are ragged
            arrays, specs, per_shard = plan_first_batch(arrays, self._shard_size, self._rows_arg)
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
            if not self._arrays:
                self._start(specs, per_shard)
            row_lengths = {name: np.fromiter((len(r) for r in a), np.int64, count=len(a))
                           for name, a in arrays.items() if specs[name].ragged}
            pos = 0
            while pos < n:
                if not self._shard_open():
                    self._open_shard()
                take = self._rows_that_fit(row_lengths, pos, min(n - pos, self._per_shard - self._rows_in_shard))
                if take == 0:
                    self._finish_shard()
                    continue
                for name, a in arrays.items():
                    ragged = row_lengths.get(name)
                    self._write_rows(self._arrays[name], a[pos:pos + take],
                                     None if ragged is None else ragged[pos:pos + take])
                self._rows_in_shard += take
                pos += take
                if self._rows_in_shard == self._per_shard:
                    self._finish_shard()
        self.rows += n

    def close(self) -> Dataset:
        """Finish the last shard and write the manifest; return the dataset.

        Raises :class:`~npyseq.WriteFailedError`, and publishes nothing, if an
        ``append`` failed part-way (see the class docstring).
        """
        self._refuse_if_failed("close()")
        if self._closed:
            return self.dataset
        if not self._arrays:
            self.abort()
            raise InvalidArgumentError("ShardWriter closed before any append(); nothing to write")
        with self._stop_on_failure("close()"):
            if self._shard_open():
                self._finish_shard()
            manifest = Manifest(rows=self.rows, shard_rows=tuple(self._shard_rows),
                                arrays={n: a.info() for n, a in self._arrays.items()})
            root = self._output.publish(manifest)  # writes the manifest, swaps, unlocks
        self._closed = True
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
        created = [(n, a) for n, a in self._arrays.items() if a.file is not None]
        for _, a in created:
            with contextlib.suppress(OSError):  # flushing may fail again on a full disk
                a.file.close()
            a.file = None
        for name, _ in created:  # only what this writer created: a refused link stays
            for suffix in (PARTIAL_SUFFIX, TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._root, shard_path(name, k)) + suffix)
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
            if is_disk_full(e):
                raise disk_full_error(self._root, e, self._replaces,
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

    def _start(self, specs: Mapping[str, ArraySpec], per_shard: int) -> None:
        for name in specs:
            self._output.array_folder(name)  # refuses a link there
        self._arrays = {name: _ArrayState(spec) for name, spec in specs.items()}
        self._per_shard = per_shard

    def _shard_open(self) -> bool:
        return any(a.file is not None for a in self._arrays.values())

    def _rows_that_fit(self, row_lengths: dict[str, np.ndarray], pos: int, take: int) -> int:
        """How many of the next ``take`` rows fit in the open shard's values files
        (at least one in an empty shard)."""
        if self._limit is None:
            return take
        for name, lengths in row_lengths.items():
            state = self._arrays[name]
            if state.spec.item_bytes == 0:
                continue
            header = shard_header_bytes(state.spec.store, state.spec.shape)
            room = (self._limit - header) // state.spec.item_bytes - state.values_in_shard()
            fit = int(np.searchsorted(np.cumsum(lengths[pos:pos + take]), room, side="right"))
            take = min(take, fit if self._rows_in_shard or fit else 1)
        return take

    def _open_shard(self) -> None:
        k = len(self._shard_rows)
        for name, state in self._arrays.items():
            spec = state.spec
            path = os.path.join(self._root, shard_path(name, k)) + PARTIAL_SUFFIX
            self._writing = path
            state.file = create_file(path, self._root)  # never through a link
            # A ragged array's values count is known at the end: its header is rewritten then.
            header = npy.header_bytes(spec.store, ((0 if spec.ragged else self._per_shard),) + spec.shape)
            state.file.write(header)
            state.hasher, state.ends = xxhash.xxh3_64(header), []
        self._rows_in_shard = 0

    def _write_rows(self, state: _ArrayState, rows: Any, lengths: np.ndarray | None) -> None:
        """Append ``rows`` of one array to its open shard (``lengths``: a ragged array's row lengths)."""
        spec = state.spec
        if spec.ragged:
            data = concat_rows(rows, spec.dtype)
            state.ends.append(np.cumsum(lengths) + state.values_in_shard())
        else:
            data = rows
        self._writing = state.file.name
        state.file.write(npy.hash_array_rows(state.hasher, data.view(spec.store)))

    def _finish_shard(self) -> None:
        k, rows = len(self._shard_rows), self._rows_in_shard
        for name, state in self._arrays.items():
            self._finish_file(name, state, k, rows)
        self._shard_rows.append(rows)
        for state in self._arrays.values():
            state.file = state.hasher = None
        self._rows_in_shard = 0

    def _finish_file(self, name: str, state: _ArrayState, k: int, rows: int) -> None:
        """Complete shard ``k`` of one array: header, fsync, rename; a ragged array's offsets file."""
        spec = state.spec
        rel = shard_path(name, k)
        partial = os.path.join(self._root, rel) + PARTIAL_SUFFIX
        self._writing = partial
        count = state.values_in_shard() if spec.ragged else rows
        if spec.ragged or rows != self._per_shard:
            written = 0 if spec.ragged else self._per_shard
            state.file = _fix_header(state.file, partial, npy.header_bytes(spec.store, (written,) + spec.shape),
                                     npy.header_bytes(spec.store, (count,) + spec.shape), count * spec.item_bytes)
            checksum = None
        else:
            checksum = npy.checksum_string(state.hasher)
        f = state.file
        f.flush()
        os.fsync(f.fileno())
        f.close()
        if checksum is None:
            checksum = npy.file_checksum(partial)
        final = os.path.join(self._root, rel)
        os.replace(partial, final)
        drop_from_cache(final)
        state.shards.append(ShardInfo(path=rel, bytes=os.path.getsize(final), checksum=checksum))
        if spec.ragged:
            self._writing = os.path.join(self._root, offsets_path(name, k))
            offsets = np.concatenate([np.zeros(1, OFFSETS_DTYPE)] + state.ends).astype(OFFSETS_DTYPE)
            state.values.append(count)
            state.offset_files.append(write_file(
                self._root, offsets_path(name, k), npy.header_bytes(OFFSETS_DTYPE, offsets.shape),
                offsets.nbytes, lambda: iter([offsets]), False, None))
            state.ends = []


_STOPPED = ("The writer stopped and publishes nothing: no manifest was written and its .partial files "
            "were removed; complete shards stay on disk, and the folder is an incomplete dataset.")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def plan_first_batch(arrays: Mapping[str, Any], shard_size: int | str | None, rows: int | None,
                     ) -> tuple[dict[str, Any], dict[str, ArraySpec], int]:
    """The first batch of a writer: its arrays (lists of row arrays stay lists: ragged; the rest
    become arrays), what each makes the writer hold, and the rows per shard. Raises, before
    anything is written, for what the reader could not open."""
    arrays = {n: (list(v) if is_row_list(v) else _asarray(n, v)) for n, v in arrays.items()}
    check_names(arrays)
    specs = {}
    for n, a in arrays.items():
        if isinstance(a, list):
            rows_of = check_rows(n, a)
            specs[n] = ArraySpec(rows_of[0].dtype, tuple(rows_of[0].shape[1:]), True, n)
        else:
            if a.ndim == 0:
                raise InvalidArgumentError(
                    f"append(): array {n!r} is a scalar; arrays need a first axis of rows")
            specs[n] = ArraySpec(a.dtype, tuple(a.shape[1:]), False, n)
    per_shard = rows_per_shard(shard_size, rows, {n: (s.store, s.shape, s.ragged) for n, s in specs.items()})
    return arrays, specs, per_shard


def interrupted_message(writer: ShardWriter, again: str) -> str | None:
    """What a Ctrl-C that stopped ``writer`` says (``again``: how to finish), or None once the
    dataset was published (for write_shards, which streams an iterable through a writer)."""
    output = writer._output
    return None if output.published else output.interrupted_message(again)


def _check(spec: ArraySpec, name: str, value: Any) -> Any:
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
        problem = cast_problem(a, spec.dtype)
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
            block = src.read(min(remaining, npy.CHUNK_BYTES))
            dst.write(block)
            remaining -= len(block)
    os.replace(tmp, partial)
    return open(partial, "r+b")
