"""Reading sharded datasets: :func:`open_shards`, :class:`Dataset`, :class:`ShardedArray`.

Shards are opened lazily (read-only) and kept in a bounded LRU cache, so a
dataset of ten thousand shards never runs out of file descriptors. Indexing
returns ordinary in-memory arrays (copies), never with a Python loop per row:
when the data fits in memory, rows are gathered out of read-only memory maps
with one ``np.take`` per shard touched; otherwise each run of consecutive rows
is one ``pread`` straight into the output array (and scattered tiny rows are
gathered through a memory map).

A dataset pickles as its path and the checksum of its manifest (a few hundred
bytes whatever its size, never its data) and reopens lazily in the receiving
process, like joblib's memmap reducer: safe to send to fork, spawn and
forkserver workers.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import math
import os
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import numpy as np
import xxhash

from npyseq.format import npy
from npyseq._files import Folder, OpenShard, memory_budget
from npyseq.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    DatasetChangedError,
    DatasetNotFoundError,
    IncompleteDatasetError,
    InvalidArgumentError,
    ManifestError,
    MissingShardError,
    NpyseqError,
)
from npyseq.format.manifest import (
    MANIFEST_NAME,
    OFFSETS_DTYPE,
    ArrayInfo,
    Manifest,
    read_manifest,
    shard_offsets,
)
from npyseq.format.dtypes import logical_dtype

if TYPE_CHECKING:
    from npyseq.ragged import RaggedArray

__all__ = ["open_shards", "Dataset", "ShardedArray"]

_VERIFY_MODES = ("none", "headers", "checksums")
# Runs of rows shorter than this on average are gathered through a memmap
# (one vectorized copy) rather than one pread each.
_MIN_RUN_BYTES = 4096
_READ_MODES = ("auto", "pread", "mmap")


def open_shards(path: str | os.PathLike, *, verify: str = "headers", max_open: int = 128,
                read: str = "auto") -> "Dataset":
    """Open a sharded dataset folder written by :func:`npyseq.write_shards`.

    Args:
        path: the dataset folder (holding ``manifest.json``).
        verify: what is checked. ``"headers"`` (default): at open, every
            shard's size and ``.npy`` header against the manifest (one small
            read per shard). ``"checksums"``: also hash each shard in full the
            first time a process maps it, catching flipped bytes at the cost
            of reading each shard once more (xxh3, ~30 GB/s from page cache).
            ``"none"``: trust the manifest; each shard's header is still
            checked when it is first mapped.
        read: how rows are copied out of shards. ``"pread"``: one ``pread``
            per run of rows into the output array; the pages read stay
            unmapped, which keeps shuffled reads fast when the data is bigger
            than the memory the process may use. ``"mmap"``: copies out of
            read-only memory maps, up to twice as fast on a warm page cache,
            but 20-100x slower for shuffled rows under memory pressure (the
            kernel must unmap pages to reclaim them). ``"auto"`` (default):
            ``"mmap"`` when the dataset takes at most half of the memory this
            process may use (RAM, or its cgroup's limit), else ``"pread"``.
        max_open: shards kept mapped at once per process (each holds a file
            descriptor).

    Example:

    >>> ds = npyseq.open_shards("data/train")
    >>> x = ds["x"]
    >>> x.shape, x.dtype
    ((100000, 32, 32, 3), dtype('float32'))
    >>> batch = x[np.array([5, 99_999, 5])]   # any rows, in any order
    """
    if verify not in _VERIFY_MODES:
        raise InvalidArgumentError(f"verify must be one of {_VERIFY_MODES}, got {verify!r}")
    if isinstance(max_open, bool) or not isinstance(max_open, int) or max_open < 1:
        raise InvalidArgumentError(f"max_open must be a positive int, got {max_open!r}")
    if read not in _READ_MODES:
        raise InvalidArgumentError(f"read must be one of {_READ_MODES}, got {read!r}")
    root = os.path.abspath(os.fspath(path))
    for attempt in range(3):
        try:
            folder = Folder(root, max_open)
        except DatasetNotFoundError:
            if os.path.exists(root):  # a file, not a folder
                raise _not_a_folder_error(root) from None
            raise
        try:
            manifest, raw = _load_manifest(folder)
            ds = Dataset(folder, manifest, xxhash.xxh3_64_hexdigest(raw), verify, max_open, read)
            if verify != "none":
                ds.check_headers()
            return ds
        except NpyseqError:
            # The folder was swapped out (overwrite=True) and deleted while we
            # read it: open the dataset now at the path.
            if attempt == 2 or not folder.replaced():
                raise
    raise AssertionError("unreachable")


def _load_manifest(folder: Folder) -> tuple[Manifest, bytes]:
    root = folder.root
    path = os.path.join(root, MANIFEST_NAME)
    try:
        fd = folder.open(MANIFEST_NAME, path, ManifestError,
                         "the manifest of a dataset is a regular JSON file written by npyseq")
    except FileNotFoundError:
        raise _no_manifest_error(folder) from None
    except NpyseqError:
        raise
    except OSError as e:  # permissions, a loop of symbolic links, I/O errors...
        raise ManifestError(f"{path}: cannot be opened ({e.strerror or e}); check that it is a readable file") from None
    try:
        return read_manifest(root, fd=fd)
    except OSError as e:
        raise ManifestError(f"{path}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


# What a write that did not finish leaves in a dataset folder (see writer.py):
# its lock file and temporary files at the top, shard files in array folders.
_WRITE_TRACE_RE = re.compile(r"^(\.npyseq\.lock|.*\.partial(\.tmp)?)$")
_SHARD_FILE_RE = re.compile(r"^\d{6,}(\.offsets)?\.npy(\.partial)?$")
_MAX_NAMED = 5  # dataset folders named in an error message
_MAX_SCANNED = 1000  # folders looked into when searching for datasets inside a folder


def _no_manifest_error(folder: Folder) -> DatasetNotFoundError:
    """The error for a folder without a manifest, saying what the folder holds instead.

    A write that did not finish (its lock or temporary files are there, or
    shard files, or only empty array folders), a folder above dataset
    folders (named, up to two levels deep), or neither.
    """
    root = folder.root
    top = list(os.scandir(folder.fd))
    subfolders = sorted(e.name for e in top if e.is_dir())
    if subfolders and any(_WRITE_TRACE_RE.match(e.name) for e in top if not e.is_dir()):
        return _incomplete(root)
    inside = _datasets_inside(root, subfolders)
    if inside:
        named = ", ".join(inside[:_MAX_NAMED])
        if len(inside) > _MAX_NAMED:
            named += f" and {len(inside) - _MAX_NAMED} more"
        return DatasetNotFoundError(
            f"{root}: not an npyseq dataset ({MANIFEST_NAME} not found), but dataset folders are "
            f"inside it: {named}. Open one of those, e.g. {os.path.join(root, inside[0])}"
        )
    shards, empty = False, True
    for name in subfolders[:_MAX_SCANNED]:
        with _scandir(os.path.join(root, name)) as entries:
            for e in itertools.islice(entries, 16):
                empty = False
                shards = shards or bool(_SHARD_FILE_RE.match(e.name))
        if shards:
            break
    if subfolders and (shards or empty):
        return _incomplete(root)
    return DatasetNotFoundError(
        f"{root}: not an npyseq dataset ({MANIFEST_NAME} not found"
        + (", nor in the folders inside it, two levels down" if subfolders else "")
        + f"); give the folder that holds {MANIFEST_NAME}, or make a dataset with "
        "npyseq.write_shards or `npyseq convert`"
    )


def _not_a_folder_error(root: str) -> DatasetNotFoundError:
    what = "is a file, not a dataset folder" if os.path.isfile(root) else "is not a folder"
    return DatasetNotFoundError(
        f"{root}: {what}; open_shards takes the folder that holds "
        f"{MANIFEST_NAME}. A .npy file becomes a dataset with npyseq.write_shards(folder, "
        "{name: path}) or `npyseq convert FILE -o FOLDER`"
    )


def _incomplete(root: str) -> IncompleteDatasetError:
    return IncompleteDatasetError(
        f"{root}: incomplete dataset: shard folders exist but {MANIFEST_NAME} does not. "
        "A conversion was interrupted; run it again to finish it (complete shards are kept)."
    )


def _datasets_inside(root: str, subfolders: list[str]) -> list[str]:
    """Folders one or two levels below ``root`` that hold a manifest, relative to it, sorted."""
    found, scanned = [], 0
    level = [name for name in subfolders if ".npyseq-" not in name]  # not a writer's staging folder
    for depth in (1, 2):
        below = []
        for rel in level:
            scanned += 1
            if scanned > _MAX_SCANNED:
                return sorted(found)
            path = os.path.join(root, rel)
            if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
                found.append(rel)
            elif depth == 1:
                with _scandir(path) as entries:
                    below.extend(os.path.join(rel, e.name) for e in entries
                                 if e.is_dir() and ".npyseq-" not in e.name)
        level = sorted(below)
    return sorted(found)


def _scandir(path: str):
    """``os.scandir(path)``, or nothing for a folder that cannot be read."""
    try:
        return os.scandir(path)
    except OSError:
        return contextlib.nullcontext(iter(()))


def _reopen(root: str, checksum: str, verify: str, max_open: int, read: str = "auto") -> "Dataset":
    folder = Folder(root, max_open)
    try:
        manifest, raw = _load_manifest(folder)
    except NpyseqError:
        if folder.replaced():
            raise DatasetChangedError(
                f"{root}: the dataset folder was replaced since the dataset was opened; reopen it"
            ) from None
        raise
    found = xxhash.xxh3_64_hexdigest(raw)
    if found != checksum:
        raise DatasetChangedError(
            f"{root}: {MANIFEST_NAME} changed since the dataset was opened "
            f"(manifest checksum {checksum} expected, {found} found); reopen the dataset"
        )
    return Dataset(folder, manifest, checksum, verify, max_open, read)


class Dataset:
    """A sharded dataset: a set of arrays with the same rows. Use :func:`open_shards`.

    ``len(ds)`` is the number of rows, ``ds.names`` the array names and
    ``ds["x"]`` a :class:`ShardedArray`.
    """

    def __init__(self, folder: Folder, manifest: Manifest, checksum: str,
                 verify: str = "headers", max_open: int = 128, read: str = "auto"):
        root = folder.root
        self.path = root
        self.manifest = manifest
        self.checksum = checksum
        self._folder = folder
        self._verify = verify
        self._max_open = max_open
        self._read = read
        # Decided per process: a worker may run under another memory limit.
        self._map_reads = read == "mmap" or (
            read == "auto" and manifest.nbytes <= memory_budget() // 2)
        self._offsets = shard_offsets(manifest.shard_rows)
        self._starts = self._offsets.tolist()  # the same, to bisect per batch without numpy
        self._dtypes = {}  # array name -> the dtype its rows are returned in
        for n, info in manifest.arrays.items():
            try:
                self._dtypes[n] = logical_dtype(info.dtype, info.logical_dtype)
            except ManifestError as e:  # say which file and array
                raise ManifestError(f"{os.path.join(root, MANIFEST_NAME)}: array {n!r}: {e}") from None
        # Arrays refer to their dataset, never the other way round: a dataset
        # in a reference cycle would keep its open shards (a descriptor each)
        # until a cyclic garbage collection. ds["x"] is the same object while
        # anyone holds it.
        self._arrays: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._ragged_lengths: dict = {}  # ragged array name -> (pid, lengths of every row)
        self._reset_cache()

    # -- public

    @property
    def names(self) -> list[str]:
        return list(self.manifest.arrays)

    @property
    def num_shards(self) -> int:
        return self.manifest.num_shards

    @property
    def nbytes(self) -> int:
        return self.manifest.nbytes

    def __len__(self) -> int:
        return self.manifest.rows

    def __getitem__(self, name: str) -> "ShardedArray | RaggedArray":
        try:
            array = self._arrays.get(name)
        except TypeError:  # unhashable: no such array (said below)
            array = None
        if array is None:
            try:
                info = self.manifest.arrays[name]
            except (KeyError, TypeError):
                raise KeyError(f"{self.path}: no array named {name!r}; arrays are {self.names}") from None
            if info.ragged:
                from npyseq.ragged import RaggedArray

                array = RaggedArray(self, name, info)
            else:
                array = ShardedArray(self, name, info)
            self._arrays[name] = array
        return array

    def __contains__(self, name: object) -> bool:
        return name in self.manifest.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest.arrays)

    def __repr__(self) -> str:
        arrays = ", ".join(
            f"{n}: {self._dtypes[n]} " + (f"ragged (n,) + {info.shape}" if info.ragged else f"{info.shape}")
            for n, info in self.manifest.arrays.items())
        return (f"<npyseq.Dataset {self.path!r} rows={len(self)} shards={self.num_shards} "
                f"manifest=xxh3_64:{self.checksum} {{{arrays}}}>")

    def __reduce__(self):
        return (_reopen, (self.path, self.checksum, self._verify, self._max_open, self._read))

    def check_headers(self) -> None:
        """Check every shard's size and ``.npy`` header against the manifest."""
        for name, info in self.manifest.arrays.items():
            for k in range(len(info.shards)):
                os.close(self._check_shard(name, info, k)[1])
                if info.ragged:
                    os.close(self._check_offsets(info, k)[1])

    def close(self) -> None:
        """Unmap every open shard (they reopen on the next read)."""
        self._reset_cache()

    # -- shard cache

    def _reset_cache(self) -> None:
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._hashed: set = set()
        self._checked: set = set()

    def _check_shard(self, name: str, info: ArrayInfo, k: int) -> tuple[str, int, int]:
        """Open shard ``k`` of ``name`` and check it against the manifest.

        Returns ``(file path, open descriptor, data offset)``; the caller
        closes the descriptor.
        """
        shard = info.shards[k]
        rows = info.values[k] if info.ragged else self.manifest.shard_rows[k]
        path, fd, offset = self._check_file(shard.path, shard.bytes, info.dtype, (rows,) + info.shape)
        self._checked.add((name, k))
        return path, fd, offset

    def _check_offsets(self, info: ArrayInfo, k: int) -> tuple[str, int, int]:
        """Open a ragged array's offsets file of shard ``k`` and check its header."""
        entry = info.offsets[k]
        return self._check_file(entry.path, entry.bytes, OFFSETS_DTYPE, (self.manifest.shard_rows[k] + 1,))

    def _check_file(self, relative: str, nbytes: int, dtype: np.dtype,
                    shape: tuple[int, ...]) -> tuple[str, int, int]:
        """Open a ``.npy`` file of the folder; check size, header and place."""
        path = os.path.join(self.path, *relative.split("/"))
        # Where the path leads is checked before it is opened (a FIFO or a
        # device outside the folder is never opened), and again after (a
        # symbolic link swapped in between).
        root = self._folder.real_root()
        if root.endswith(" (deleted)"):
            raise self._changed()
        target = self._folder.resolve(relative)
        if target is not None:
            self._check_inside(relative, target, root)
        try:
            fd = self._folder.open(relative, path, CorruptShardError,
                                   "a shard is a regular .npy file: restore it, or convert the dataset again")
        except FileNotFoundError:
            if self._folder.replaced():
                raise self._changed() from None
            raise MissingShardError(f"{path}: shard file is missing") from None
        except NpyseqError:
            raise
        except OSError as e:
            raise CorruptShardError(f"{path}: cannot be opened ({e.strerror or e})") from None
        try:
            real = self._folder.real_path(fd, path)
            if root != self._folder.real_root() or real.endswith(" (deleted)"):
                raise self._changed()  # moved or deleted while we looked: swapped out
            self._check_inside(relative, real, root)
            found_dtype, found_shape, fortran, offset = npy.read_header(path, fd=fd)
            if found_dtype != dtype:
                raise CorruptShardError(f"{path}: dtype {found_dtype} found, the manifest says {dtype}")
            if found_shape != shape:
                raise CorruptShardError(f"{path}: shape {found_shape} found, the manifest says {shape}")
            if fortran and len(shape) > 1:
                raise CorruptShardError(f"{path}: stored in Fortran order; npyseq shards are C order")
            size = os.fstat(fd).st_size
            if size != nbytes:
                raise CorruptShardError(f"{path}: {size} bytes found, the manifest says {nbytes}")
            data = dtype.itemsize * math.prod(shape)
            if offset + data != size:
                raise CorruptShardError(
                    f"{path}: header ({offset} bytes) plus data ({data} bytes) does not equal the "
                    f"file size {size}"
                )
        except BaseException:
            os.close(fd)
            raise
        return path, fd, offset

    def _check_inside(self, relative: str, real: str, root: str) -> None:
        if os.path.commonpath([real, root]) != root:
            raise ManifestError(
                f"{os.path.join(self.path, MANIFEST_NAME)}: shard path {relative!r} resolves to "
                f"{real}, outside the dataset folder; refusing to read it"
            )

    def _changed(self) -> DatasetChangedError:
        return DatasetChangedError(
            f"{self.path}: the dataset folder was replaced after it was opened "
            "(e.g. converted again with --overwrite); reopen it with npyseq.open_shards"
        )

    def _locate(self, indices: np.ndarray) -> "_Located":
        """Which shard holds each of ``indices`` (non-negative int64, in range, not empty)."""
        is_sorted = bool(np.all(indices[1:] >= indices[:-1]))
        lo, hi = (indices[0], indices[-1]) if is_sorted else (indices.min(), indices.max())
        first = bisect.bisect_right(self._starts, int(lo)) - 1
        last = bisect.bisect_right(self._starts, int(hi)) - 1
        if first == last:  # one shard: all but the batches that straddle two
            return _Located(None, [(first, 0, len(indices), indices - self._starts[first])])
        offsets, order = self._offsets, None
        if is_sorted:
            # Where the rows of each shard after the first start.
            cuts = np.searchsorted(indices, offsets[first + 1:last + 1]).tolist()
        else:
            # Group the rows by shard, keeping their order within each; they
            # are gathered shard by shard, then put back in the requested order.
            shard_of = np.searchsorted(offsets, indices, side="right") - 1
            order = np.argsort(shard_of, kind="stable")
            indices = indices[order]
            cuts = np.searchsorted(shard_of[order], np.arange(first + 1, last + 1)).tolist()
        parts = [(k, a, b, indices[a:b] - self._starts[k])
                 for k, a, b in zip(range(first, last + 1), [0] + cuts, cuts + [len(indices)]) if a < b]
        return _Located(order, parts)

    def _shard(self, name: str, k: int) -> "OpenShard":
        """Shard ``k`` of array ``name``, opened (and checked) on first use."""
        if self._pid != os.getpid():  # forked: locks may be held by dead threads
            self._reset_cache()
        key = (name, k)
        with self._lock:
            shard = self._cache.get(key)
            if shard is not None:
                self._cache.move_to_end(key)
                return shard
        shard = self._open_shard(name, k)
        with self._lock:
            self._cache[key] = shard
            while len(self._cache) > self._max_open:
                # Dropping the cache's reference closes the file once no
                # reader in another thread still holds the shard.
                self._cache.popitem(last=False)
        return shard

    def _open_shard(self, name: str, k: int) -> "OpenShard":
        # Shards are read from the folder pinned at open, so they always match
        # the manifest; still, say so early when the path now holds another one.
        if self._folder.replaced():
            raise self._changed()
        info = self.manifest.arrays[name]
        offsets = self._read_offsets(name, info, k) if info.ragged else None
        path, fd, offset = self._check_shard(name, info, k)
        try:
            self._verify_checksum(name, k, path, fd, info.shards[k].checksum)
        except BaseException:
            os.close(fd)
            raise
        rows = info.values[k] if info.ragged else self.manifest.shard_rows[k]
        # OpenShard owns fd from here on, and closes it itself if it fails.
        shard = OpenShard(path, fd, offset, (rows,) + info.shape, info.dtype, mapped=self._map_reads,
                          max_open=self._max_open)
        if info.ragged:
            from npyseq.ragged import OpenRagged

            return OpenRagged(shard, offsets)
        return shard

    def _verify_checksum(self, name: str, k: Any, path: str, fd: int, expected: str) -> None:
        if self._verify == "checksums" and (name, k) not in self._hashed:
            found = npy.file_checksum(path, fd=fd)
            if found != expected:
                raise ChecksumMismatchError(
                    f"{path}: checksum {found} found, the manifest says {expected}; the shard is corrupt"
                )
            self._hashed.add((name, k))

    def _read_offsets(self, name: str, info: ArrayInfo, k: int) -> np.ndarray:
        """A ragged array's offsets of shard ``k``, read whole and checked."""
        from npyseq.ragged import check_offsets_data

        path, fd, offset = self._check_offsets(info, k)
        try:
            self._verify_checksum(name, (k, "offsets"), path, fd, info.offsets[k].checksum)
            offsets = np.empty(self.manifest.shard_rows[k] + 1, OFFSETS_DTYPE)
            OpenShard.pread_fd(fd, path, offset, offsets.view(np.uint8))
        finally:
            os.close(fd)
        check_offsets_data(offsets, self.manifest.shard_rows[k], info.values[k], path)
        return offsets

    def _check_touched(self, name: str, shards) -> None:
        """With ``verify="none"``: check the headers of these shards before a read
        allocates memory for them, so a lying manifest fails as a corrupt shard
        rather than with a huge allocation."""
        if self._verify != "none":
            return
        if self._pid != os.getpid():
            self._reset_cache()
        info = self.manifest.arrays[name]
        for k in shards:
            if (name, k) not in self._checked:
                os.close(self._check_shard(name, info, k)[1])


class _Located(NamedTuple):
    """Rows located in shards: ``parts`` of ``(shard, a, b, local indices)``.

    Rows ``a:b`` of the (grouped) result come from shard ``shard``; ``order``,
    if not None, is where each grouped row goes in the requested order.
    """

    order: np.ndarray | None
    parts: list[tuple[int, int, int, np.ndarray]]


def _as_index_array(key: Any, n: int, name: str = "array") -> np.ndarray:
    """Row indices (int64, flat, in ``[0, n)``) of an index array or a mask, checked as numpy does.

    Negative indices count from the end; an index out of range, a mask of
    another length or a non-integer array raises ``IndexError``.
    """
    idx = np.asarray(key)
    if idx.dtype == bool:
        # numpy takes an empty mask of any length as an empty index (no rows).
        if idx.shape != (n,) and idx.shape != (0,):
            raise IndexError(f"boolean index must have shape ({n},), got {idx.shape}: "
                             f"{name!r} has {n} rows")
        return np.flatnonzero(idx)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"only integers, slices, and integer or boolean arrays are valid indices, got {key!r:.80}")
    idx = idx.reshape(-1)
    # Compared in the index's own dtype: uint64 beyond int64 must not wrap to
    # negative (numpy's own indexing wraps 2**64 - 1 to -1, the last row).
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -n or hi >= n:
        bad = lo if lo < -n else hi
        raise IndexError(f"index {bad} is out of bounds for {n} rows of {name!r}")
    idx = idx.astype(np.int64, copy=False)
    if lo < 0:
        idx = np.where(idx < 0, idx + n, idx)
    return idx


def _shaped_like_key(out: np.ndarray, key: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
    """Rows read for the flattened ``key``, in the key's shape as numpy gives them."""
    if key.dtype == bool or key.ndim == 1:
        return out
    out = out.reshape(key.shape + row_shape)
    return out[()] if key.ndim == 0 else out  # a scalar row is a numpy scalar, as for an int key


class ShardedArray:
    """One array of a :class:`Dataset`, indexed like a read-only numpy array.

    Indexing by an int, a slice (any step) or an integer/boolean index array
    (any order, duplicates allowed) returns an ordinary in-memory ``ndarray``.

    Example:

    >>> x = npyseq.open_shards("data/train")["x"]
    >>> x[10:20].shape, x[[3, 1, 3]].shape
    ((10, 8), (3, 8))
    """

    ragged = False

    def __init__(self, dataset: Dataset, name: str, info: ArrayInfo):
        self._ds, self.name, self._info = dataset, name, info
        self.dtype = dataset._dtypes[name]
        self.shape = (dataset.manifest.rows,) + info.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._info.row_bytes

    @property
    def dataset(self) -> Dataset:
        return self._ds

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<npyseq.ShardedArray {self.name!r} shape={self.shape} dtype={self.dtype} in {self._ds.path!r}>"

    def __reduce__(self):
        return (_array_of, (self._ds, self.name))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return self[:]
            first, rest = key[0], key[1:]
            if first is Ellipsis or first is None:  # the key does not start at the row axis
                return self[:][key]
            if isinstance(first, slice):
                return self[first][(slice(None),) + rest]
            if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
                return self[first][rest]
            # An index array: read each row once, then let numpy combine the
            # positions with the rest of the key (several index arrays broadcast).
            first = np.asarray(first)
            flat = _as_index_array(first, self.shape[0], self.name)
            unique, inverse = np.unique(flat, return_inverse=True)
            positions = inverse.reshape(flat.shape if first.dtype == bool else first.shape)
            return self._take(unique)[(positions,) + rest]
        n = self.shape[0]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for {self.name!r} with {n} rows")
            return self._take(np.array([i % n]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self.read(start, max(start, stop))
            rows = range(start, stop, step)
            if rows:  # before the index array is made: the manifest may lie about rows
                self._check_rows(min(rows[0], rows[-1]), max(rows[0], rows[-1]) + 1)
            return self._take(np.arange(start, stop, step, dtype=np.int64))
        if key is Ellipsis:
            return self[:]
        return self.take(key)

    def _empty(self, n: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """An array of ``n`` rows (stored dtype) and the flat bytes under it.

        ``out``, if given, is used instead of a new array: a C-contiguous
        array of ``n`` rows of this array's dtype and row shape.
        """
        shape = (n,) + self._info.shape
        if out is None:
            raw = np.empty(n * self._info.row_bytes, np.uint8)
            return raw.view(self._info.dtype).reshape(shape), raw
        if out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise InvalidArgumentError(
                f"out must be a C-contiguous array of shape {shape} and dtype {self.dtype}, "
                f"got shape {out.shape}, dtype {out.dtype}"
            )
        raw = out.reshape(-1).view(np.uint8) if out.size else np.empty(0, np.uint8)
        return out.view(self._info.dtype), raw

    def _check_rows(self, start: int, stop: int) -> None:
        """With ``verify="none"``, check the shards of rows [start, stop) (see Dataset)."""
        if self._ds._verify == "none" and stop > start:
            offsets = self._ds._offsets
            first = int(np.searchsorted(offsets, start, side="right")) - 1
            self._ds._check_touched(self.name, range(first, int(np.searchsorted(offsets, stop, side="left"))))

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start`` to ``stop`` (contiguous, ``0 <= start <= stop <= len``), copied.

        ``out``: an optional C-contiguous array to read into (see :meth:`take`).
        """
        n = self.shape[0]
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop)):
            raise IndexError(f"read needs int start and stop, got {start!r:.40} and {stop!r:.40}")
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"rows [{start}, {stop}) are out of bounds for {n} rows of {self.name!r}: "
                             f"read needs 0 <= start <= stop <= {n} (index with a slice for numpy's clipping)")
        self._check_rows(start, stop)
        out, raw = self._empty(stop - start, out)
        row_bytes = self._info.row_bytes
        if row_bytes == 0:
            return out.view(self.dtype)
        offsets = self._ds._starts
        k = bisect.bisect_right(offsets, start) - 1
        pos = start
        while pos < stop:
            hi, first = min(stop, offsets[k + 1]), offsets[k]
            shard = self._ds._shard(self.name, k)
            if self._ds._map_reads:
                out[pos - start:hi - start] = shard.array[pos - first:hi - first]
            else:
                shard.pread(raw[(pos - start) * row_bytes:(hi - start) * row_bytes], pos - first, row_bytes)
            pos, k = hi, k + 1
        return out.view(self.dtype)

    def take(self, indices: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``indices``, copied, in that order: ``x.take(i)`` is ``x[i]`` for an index array.

        ``indices``: integers (any order, duplicates allowed; negative ones
        count from the end) or a boolean mask of ``len(x)`` rows; an index out
        of range raises ``IndexError``, as numpy does. An index array of
        several dimensions gives rows in its shape.

        When the data fits in memory (``read="mmap"``, or ``"auto"``), rows
        are gathered out of the shards' memory maps, one ``np.take`` per shard
        touched. Otherwise (``read="pread"``) indices are sorted and grouped
        by shard, and each run of consecutive rows is one ``pread`` (with a
        read-ahead hint for all the runs of a shard first); scattered tiny
        rows are still gathered through a memory map.

        ``out``: an optional C-contiguous array of ``len(indices)`` rows of
        this array's dtype and row shape to read into (and return), to reuse
        buffers across batches.
        """
        key = np.asarray(indices)
        rows = self._take(_as_index_array(key, self.shape[0], self.name), out)
        return _shaped_like_key(rows, key, self._info.shape)

    def _take(self, indices: np.ndarray, out: np.ndarray | None = None,
              located: "_Located | None" = None) -> np.ndarray:
        """:meth:`take` of int64 ``indices``, already checked to be in ``[0, len)``;
        ``located``: ``dataset._locate(indices)`` if known.

        Arrays of one dataset share their shard boundaries, so the batches of
        a :class:`~npyseq.ShardSequence` locate their rows once for all arrays.
        """
        n = len(indices)
        if n and self._ds._verify == "none":  # check the shards before allocating (see Dataset)
            located = located or self._ds._locate(indices)
            self._ds._check_touched(self.name, [k for k, _, _, _ in located.parts])
        out, raw = self._empty(n, out)
        if n == 0 or self._info.row_bytes == 0:
            return out.view(self.dtype)
        if self._ds._map_reads:
            self._gather(located or self._ds._locate(indices), out)
        else:
            self._pread_rows(indices, out, raw)
        return out.view(self.dtype)

    def _gather(self, located: "_Located", out: np.ndarray) -> None:
        """Copy the rows ``located`` into ``out`` out of the shards' memory maps."""
        target = out if located.order is None else np.empty_like(out)
        for k, a, b, local in located.parts:
            # mode="clip": the indices are known to be in range, and with the
            # default "raise" numpy gathers into a temporary, then copies it.
            np.take(self._ds._shard(self.name, k).array, local, axis=0, out=target[a:b], mode="clip")
        if located.order is not None:
            out[located.order] = target

    def _pread_rows(self, indices: np.ndarray, out: np.ndarray, raw: np.ndarray) -> None:
        """Read the rows at ``indices`` into ``out`` (flat bytes ``raw``), one ``pread`` per run."""
        n, row_bytes = len(indices), self._info.row_bytes
        offsets = self._ds._offsets
        is_sorted = bool(np.all(indices[1:] >= indices[:-1]))
        order = None if is_sorted else np.argsort(indices, kind="stable")
        sorted_idx = indices if order is None else indices[order]
        target, buf = (out, raw) if order is None else self._empty(n)
        # Position in sorted_idx where each shard's rows start.
        cuts = np.searchsorted(sorted_idx, offsets)
        for k in np.flatnonzero(cuts[1:] > cuts[:-1]).tolist():
            lo, hi = int(cuts[k]), int(cuts[k + 1])
            local = sorted_idx[lo:hi] - offsets[k]
            shard = self._ds._shard(self.name, k)
            breaks = np.flatnonzero(np.diff(local) != 1) + 1
            runs = len(breaks) + 1
            if runs > 8 and (hi - lo) * row_bytes < runs * _MIN_RUN_BYTES:
                # Many tiny runs: one vectorized gather out of a memory map.
                np.take(shard.array, local, axis=0, out=target[lo:hi], mode="clip")
                continue
            starts = np.concatenate(([0], breaks))
            counts = np.diff(np.concatenate((starts, [hi - lo])))
            if runs > 1:
                shard.will_need(local[starts], counts, row_bytes)
            for a, c in zip(starts.tolist(), counts.tolist()):
                shard.pread(buf[(lo + a) * row_bytes:(lo + a + c) * row_bytes], int(local[a]), row_bytes)
        if order is not None:
            out[order] = target


def _array_of(dataset: Dataset, name: str) -> ShardedArray:
    return dataset[name]
