"""Opening a sharded dataset: :func:`open_shards` and :class:`Dataset`.

A :class:`Dataset` pins its folder (:class:`~npyseq.storage.files.Folder`),
holds its manifest, checks its files (headers at open, checksums on demand or
in full with :meth:`Dataset.verify`) and keeps its open shards in a bounded
LRU cache, so a dataset of ten thousand shards never runs out of file
descriptors. ``ds["x"]`` is one of its arrays (:mod:`npyseq.storage.arrays`,
:mod:`npyseq.storage.ragged_array`), which read through these members:

* :meth:`Dataset.shard`: shard ``k`` of an array, opened and checked on first use;
* :attr:`Dataset.shard_starts`: the first row of each shard;
* :attr:`Dataset.map_reads`: whether rows are copied out of memory maps or read by ``pread``;
* :meth:`Dataset.locate`: which shard holds each of a batch's rows, computed
  once for all the arrays of the batch.

A dataset pickles as its path and the checksum of its manifest (a few hundred
bytes whatever its size, never its data) and reopens lazily in the receiving
process (:func:`reopen`), like joblib's memmap reducer: safe to send to fork,
spawn and forkserver workers.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
import weakref
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import xxhash

from npyseq import forks
from npyseq.arguments import one_of, positive_int
from npyseq.errors import (
    ChecksumMismatchError,
    DatasetChangedError,
    DatasetNotFoundError,
    ManifestError,
    NpyseqError,
    ShardError,
)
from npyseq.format import npy
from npyseq.format.dtypes import logical_dtype
from npyseq.format.manifest import (
    MANIFEST_NAME,
    OFFSETS_DTYPE,
    ArrayInfo,
    Manifest,
    ShardInfo,
    read_manifest,
    shard_offsets,
)
from npyseq.storage.arrays import ShardedArray
from npyseq.storage.files import Folder, OpenShard, memory_budget
from npyseq.storage.not_found import no_manifest_error, not_a_folder_error
from npyseq.storage.ragged_array import OpenRagged, RaggedArray, check_offsets_data

__all__ = ["open_shards", "Dataset", "Located", "reopen"]

_VERIFY_MODES = ("none", "headers", "checksums")
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
    verify = one_of(verify, "verify", _VERIFY_MODES)
    max_open = positive_int(max_open, "max_open")
    read = one_of(read, "read", _READ_MODES)
    root = os.path.abspath(os.fspath(path))
    for attempt in range(3):
        try:
            folder = Folder(root, max_open)
        except DatasetNotFoundError:
            if os.path.exists(root):  # a file, not a folder
                raise not_a_folder_error(root) from None
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
        raise no_manifest_error(folder) from None
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


def reopen(root: str, checksum: str, verify: str, max_open: int, read: str = "auto") -> "Dataset":
    """The dataset a pickled :class:`Dataset` stands for, opened again in this process.

    Refused (:class:`DatasetChangedError`) if the folder or its manifest
    changed since the dataset was pickled: its arrays would not be the same.
    """
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
    key = (root, checksum, verify, max_open, read)
    with _REOPENED_LOCK:
        same = _REOPENED.get(key)
        if same is not None and not same._folder.replaced() and same._folder.inode == folder.inode:
            # Still open here (a worker of npyseq's pool gets the sequence again each epoch):
            # the same folder and manifest, so its shards, already mapped, serve again.
            return same
        dataset = _REOPENED[key] = Dataset(folder, manifest, checksum, verify, max_open, read)
    return dataset


# Datasets :func:`reopen` opened in this process and still in use, by what it was asked for.
_REOPENED: "weakref.WeakValueDictionary[tuple, Dataset]" = weakref.WeakValueDictionary()
_REOPENED_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):  # a child forked while a thread held it must not wait for it
    os.register_at_fork(after_in_child=lambda: globals().update(_REOPENED_LOCK=threading.Lock()))


class Located(NamedTuple):
    """Rows located in shards (see :meth:`Dataset.locate`): ``parts`` of ``(shard, a, b, local rows)``.

    Rows ``a:b`` of the rows grouped by shard come from shard ``shard``, at
    ``local rows`` within it; ``order``, if not None, is where each grouped
    row goes in the requested order (None: the grouped order is the requested one).
    """

    order: np.ndarray | None
    parts: list[tuple[int, int, int, np.ndarray]]


class Dataset:
    """A sharded dataset: a set of arrays with the same rows. Use :func:`open_shards`.

    ``len(ds)`` is the number of rows, ``ds.names`` the array names and
    ``ds["x"]`` a :class:`~npyseq.ShardedArray` (a
    :class:`~npyseq.RaggedArray` for a ragged array).
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
        #: Whether rows are copied out of read-only memory maps (else read by
        #: ``pread``). Decided per process: a worker may run under another memory limit.
        self.map_reads = read == "mmap" or (read == "auto" and manifest.nbytes <= memory_budget() // 2)
        self._offsets = shard_offsets(manifest.shard_rows)
        #: The first row of each shard, then the number of rows: shard ``k``
        #: holds rows ``shard_starts[k]`` to ``shard_starts[k + 1]`` (ints, to
        #: bisect per batch without numpy).
        self.shard_starts: list[int] = self._offsets.tolist()
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
        self._lengths: dict[str, np.ndarray] = {}  # ragged array name -> the lengths of all its rows
        self._reset_cache()
        forks.after_fork(self)

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

    def __getitem__(self, name: str) -> ShardedArray | RaggedArray:
        try:
            array = self._arrays.get(name)
        except TypeError:  # unhashable: no such array (said below)
            array = None
        if array is None:
            try:
                info = self.manifest.arrays[name]
            except (KeyError, TypeError):
                raise KeyError(f"{self.path}: no array named {name!r}; arrays are {self.names}") from None
            kind = RaggedArray if info.ragged else ShardedArray
            array = kind(self, name, info, self._dtypes[name])
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
                f"manifest={npy.CHECKSUM_ALGORITHM}:{self.checksum} {{{arrays}}}>")

    def __reduce__(self):
        return (reopen, (self.path, self.checksum, self._verify, self._max_open, self._read))

    def check_headers(self) -> None:
        """Check every file's place, size and ``.npy`` header against the manifest."""
        for name, k, entry, dtype, shape in self._all_files():
            os.close(self._open_file(entry, dtype, shape)[1])
            self._checked.add((name, k))

    def verify(self, progress: Any = None) -> list[str]:
        """Check every file in full: its place, size and header, then its checksum.

        Reads every byte of the dataset once and keeps no file open. Returns
        one message per bad file, in the manifest's order (none: every file is
        as the manifest says). ``progress``: an object told of the bytes read
        by ``progress.update(n)``, such as a ``tqdm`` bar.

        >>> for problem in npyseq.open_shards("data/train", verify="none").verify():
        ...     print("BAD", problem)
        """
        problems = []
        for _, _, entry, dtype, shape in self._all_files():
            try:
                path, fd, _ = self._open_file(entry, dtype, shape)
                try:
                    problem = _checksum_problem(path, fd, entry.checksum, progress)
                finally:
                    os.close(fd)
            except ShardError as e:
                problem = str(e)
            if problem is not None:
                problems.append(problem)
        return problems

    def close(self) -> None:
        """Unmap every open shard (they reopen on the next read)."""
        self._reset_cache()

    # -- what the arrays read through

    def shard(self, name: str, k: int) -> OpenShard | OpenRagged:
        """Shard ``k`` of array ``name``, opened (and checked) on first use and
        kept in the cache of at most ``max_open`` shards."""
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

    def locate(self, rows: np.ndarray) -> Located:
        """Which shard holds each of ``rows`` (int64, in ``[0, len)``, any order).

        Arrays of one dataset share their shard boundaries, so the arrays of
        a batch locate its rows once (see :meth:`ShardedArray.gather`).
        """
        if not len(rows):
            return Located(None, [])
        starts = self.shard_starts
        is_sorted = bool(np.all(rows[1:] >= rows[:-1]))
        lo, hi = (rows[0], rows[-1]) if is_sorted else (rows.min(), rows.max())
        first = bisect.bisect_right(starts, int(lo)) - 1
        last = bisect.bisect_right(starts, int(hi)) - 1
        if first == last:  # one shard: all but the batches that straddle two
            return Located(None, [(first, 0, len(rows), rows - starts[first])])
        order = None
        if is_sorted:
            # Where the rows of each shard after the first start.
            cuts = np.searchsorted(rows, self._offsets[first + 1:last + 1]).tolist()
        else:
            # Group the rows by shard, keeping their order within each; they
            # are read shard by shard, then put back in the requested order.
            shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
            order = np.argsort(shard_of, kind="stable")
            rows = rows[order]
            cuts = np.searchsorted(shard_of[order], np.arange(first + 1, last + 1)).tolist()
        parts = [(k, a, b, rows[a:b] - starts[k])
                 for k, a, b in zip(range(first, last + 1), [0] + cuts, cuts + [len(rows)]) if a < b]
        return Located(order, parts)

    @property
    def headers_checked(self) -> bool:
        """Whether every header was checked at open (not with ``verify="none"``)."""
        return self._verify != "none"

    def check_shards(self, name: str, shards: Iterable[int]) -> None:
        """With ``verify="none"``: check the headers of these shards of ``name``
        (once each) before a read allocates memory for them, so that a lying
        manifest fails as a corrupt shard rather than with a huge allocation."""
        if self.headers_checked:
            return
        info = self.manifest.arrays[name]
        for k in shards:
            if (name, k) not in self._checked:
                os.close(self._check_shard(name, info, k)[1])

    def row_lengths(self, name: str) -> np.ndarray:
        """The length of every row of the ragged array ``name`` (int64, not to be
        written to), read from its offsets files on first use and kept (8 bytes a row)."""
        lengths = self._lengths.get(name)
        if lengths is None:
            parts = [np.diff(self.shard(name, k).offsets) for k in range(self.num_shards)]
            lengths = np.concatenate(parts) if parts else np.empty(0, np.int64)
            self._lengths[name] = lengths
        return lengths

    # -- the shard cache and the checks

    def _reset_cache(self) -> None:
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._hashed: set = set()
        self._checked: set = set()

    def reset_after_fork(self) -> None:
        """In a forked child (see :mod:`npyseq.forks`): a new lock (the parent's may
        be held by a thread the child does not have), and shards reopened on first use."""
        self._reset_cache()

    def _files(self, info: ArrayInfo, k: int) -> list[tuple[ShardInfo, np.dtype, tuple[int, ...]]]:
        """The files of shard ``k`` of an array, as ``(manifest entry, dtype, shape)``:
        its rows (a ragged array's values), then a ragged array's offsets."""
        rows = self.manifest.shard_rows[k]
        files = [(info.shards[k], info.dtype, ((info.values[k] if info.ragged else rows),) + info.shape)]
        if info.ragged:
            files.append((info.offsets[k], OFFSETS_DTYPE, (rows + 1,)))
        return files

    def _all_files(self) -> Iterator[tuple[str, int, ShardInfo, np.dtype, tuple[int, ...]]]:
        for name, info in self.manifest.arrays.items():
            for k in range(len(info.shards)):
                for entry, dtype, shape in self._files(info, k):
                    yield name, k, entry, dtype, shape

    def _open_file(self, entry: ShardInfo, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[str, int, int]:
        return self._folder.open_npy(entry.path, entry.bytes, dtype, shape)

    def _check_shard(self, name: str, info: ArrayInfo, k: int) -> tuple[str, int, int]:
        """Open shard ``k`` of ``name``, checked: ``(path, descriptor, data offset)``;
        the caller closes the descriptor."""
        opened = self._open_file(*self._files(info, k)[0])
        self._checked.add((name, k))
        return opened

    def _open_shard(self, name: str, k: int) -> OpenShard | OpenRagged:
        # Shards are read from the folder pinned at open, so they always match
        # the manifest; still, say so early when the path now holds another one.
        if self._folder.replaced():
            raise self._folder.changed_error()
        info = self.manifest.arrays[name]
        path, fd, offset = self._check_shard(name, info, k)
        try:
            self._verify_checksum((name, k), path, fd, info.shards[k].checksum)
            # A ragged array's offsets, checked against its values file (checked just now).
            offsets = self._read_offsets(name, info, k, path) if info.ragged else None
        except BaseException:
            os.close(fd)
            raise
        _, dtype, shape = self._files(info, k)[0]
        # OpenShard owns fd from here on, and closes it itself if it fails.
        shard = OpenShard(path, fd, offset, shape, dtype, mapped=self.map_reads, max_open=self._max_open)
        return shard if offsets is None else OpenRagged(shard, offsets)

    def _verify_checksum(self, key: Any, path: str, fd: int, expected: str) -> None:
        if self._verify == "checksums" and key not in self._hashed:
            problem = _checksum_problem(path, fd, expected)
            if problem is not None and not npy.can_verify(expected):
                raise ShardError(f"{problem}; open it with verify='headers' to read it unverified")
            if problem is not None:
                raise ChecksumMismatchError(f"{problem}; the shard is corrupt")
            self._hashed.add(key)

    def _read_offsets(self, name: str, info: ArrayInfo, k: int, values_path: str) -> np.ndarray:
        """A ragged array's offsets of shard ``k``, read whole and checked (values file: ``values_path``)."""
        entry, dtype, shape = self._files(info, k)[1]
        path, fd, offset = self._open_file(entry, dtype, shape)
        try:
            self._verify_checksum((name, k, "offsets"), path, fd, entry.checksum)
            offsets = np.empty(shape, dtype)
            OpenShard.pread_fd(fd, path, offset, offsets.view(np.uint8))
        finally:
            os.close(fd)
        check_offsets_data(offsets, info.values[k], path, values_path)
        return offsets


def _checksum_problem(path: str, fd: int, expected: str, progress: Any = None) -> str | None:
    """What is wrong with the checksum of the open file ``fd``, or None."""
    if not npy.can_verify(expected):  # a manifest may record another algorithm (see the spec)
        algorithm = expected.partition(":")[0]
        return (f"{path}: checksum {expected} cannot be verified: npyseq computes "
                f"{npy.CHECKSUM_ALGORITHM} checksums, not {algorithm}")
    found = npy.file_checksum(path, progress=progress, fd=fd)
    return None if found == expected else f"{path}: checksum {found} found, the manifest says {expected}"
