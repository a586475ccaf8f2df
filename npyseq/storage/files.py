"""Files under a reader: the pinned dataset folder, open shards, the memory budget.

:class:`Folder` holds a directory descriptor of the dataset folder that every
file is opened relative to, and opens a ``.npy`` file of the manifest only once
it is checked (:meth:`Folder.open_npy`); :class:`OpenShard` is one open shard
file, read by ``pread`` or copied out of a read-only memory map;
:func:`memory_budget` is what decides between the two.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import resource
import stat
from typing import Callable

import numpy as np

from npyseq.errors import (
    CorruptShardError,
    DatasetChangedError,
    DatasetNotFoundError,
    ManifestError,
    MissingShardError,
    NpyseqError,
    ShardError,
    TooManyOpenFilesError,
)
from npyseq.format import npy
from npyseq.format.manifest import MANIFEST_NAME

__all__ = ["Folder", "OpenShard", "memory_budget", "file_kind", "too_many_open_files"]

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
# O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever;
# O_NOCTTY: a terminal device must not become the controlling terminal. Both
# only matter for what the type check then refuses (see Folder.open).
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_NOCTTY", 0))


def memory_budget() -> int:
    """Bytes of memory this process may use: RAM, or less under a cgroup limit."""
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return budget
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            base, name = "/sys/fs/cgroup", "memory.max"
        elif "memory" in controllers.split(","):
            base, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
        else:
            continue
        folder = os.path.join(base, path.lstrip("/"))
        while folder.startswith(base):  # limits of the parents apply too
            try:
                with open(os.path.join(folder, name)) as f:
                    value = f.read().strip()
                if value.isdigit():
                    budget = min(budget, int(value))
            except OSError:
                pass
            if folder == base:
                break
            folder = os.path.dirname(folder)
    return budget


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words: ``"a directory"``, ``"a FIFO (named pipe)"``..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return f"a special file (mode {mode:o})"


def is_out_of_descriptors(e: OSError) -> bool:
    return e.errno in _OUT_OF_DESCRIPTORS


def too_many_open_files(path: str, e: OSError, max_open: int | None = None) -> TooManyOpenFilesError:
    """The error for ``EMFILE``/``ENFILE`` met while opening or mapping ``path``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if e.errno == errno.ENFILE:
        what = "the system's table of open files is full (ENFILE)"
    else:
        what = (f"this process has too many open files (EMFILE): its limit is {soft} descriptors "
                f"(RLIMIT_NOFILE, hard limit {hard})")
    held = (f"; each dataset keeps up to max_open={max_open} shards open, one descriptor each"
            if max_open is not None else "")
    return TooManyOpenFilesError(
        f"{path}: cannot be opened: {what}{held}. Close datasets you no longer use "
        "(Dataset.close(), or drop them), open them with a smaller max_open, or raise the limit "
        "(ulimit -n, resource.setrlimit)"
    )


class Folder:
    """A dataset folder pinned by a directory descriptor.

    The manifest and every shard are opened relative to this descriptor, so
    they all come from the same folder even if another process swaps a new
    dataset in at the same path (``overwrite=True``) meanwhile: a reader sees
    the old dataset or the new one, never a mix.
    """

    def __init__(self, root: str, max_open: int | None = None):
        self.root, self.max_open = root, max_open
        try:
            # O_DIRECTORY: a FIFO at the path fails at once instead of blocking.
            self.fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise DatasetNotFoundError(f"{root}: no such dataset folder") from None
        except OSError as e:
            if is_out_of_descriptors(e):
                raise too_many_open_files(root, e, max_open) from None
            raise DatasetNotFoundError(f"{root}: the dataset folder cannot be opened ({e.strerror})") from None
        self.inode = os.fstat(self.fd).st_ino

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def open(self, relative: str, path: str, error: type, what: str) -> int:
        """Open the regular file ``relative`` of the folder read-only; return its descriptor.

        Anything else (a FIFO, a directory, a socket, a device) is refused
        with ``error`` naming ``path`` and what it is, before it is opened
        when the path shows it, so that opening never blocks or touches a
        device. ``what`` says what the file should be, for the message.
        ``FileNotFoundError`` and other ``OSError`` pass through, except
        running out of descriptors (:class:`TooManyOpenFilesError`).
        """
        try:
            self._check_regular(os.stat(relative, dir_fd=self.fd).st_mode, path, error, what, relative)
            fd = os.open(relative, _OPEN_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if is_out_of_descriptors(e):
                raise too_many_open_files(path, e, self.max_open) from None
            raise
        try:
            # Swapped for something else between the stat and the open?
            self._check_regular(os.fstat(fd).st_mode, path, error, what, relative)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_regular(self, mode: int, path: str, error: type, what: str, relative: str) -> None:
        if stat.S_ISREG(mode):
            return
        try:
            link = stat.S_ISLNK(os.lstat(relative, dir_fd=self.fd).st_mode)
        except OSError:
            link = False
        via = f" (through a symbolic link to {self.resolve(relative)})" if link else ""
        raise error(f"{path}: is {file_kind(mode)}{via}, not a regular file; {what}")

    def resolve(self, relative: str) -> str | None:
        """Where ``relative`` leads if a symbolic link is on the way, without opening it;
        None if there is none (one ``lstat`` per component): a plain relative
        path of the manifest then stays inside the folder."""
        parts = relative.split("/")
        for i in range(1, len(parts) + 1):
            try:
                mode = os.lstat("/".join(parts[:i]), dir_fd=self.fd).st_mode
            except OSError:  # missing (the open will say so) or unreachable
                return None
            if stat.S_ISLNK(mode):
                base = f"/proc/self/fd/{self.fd}"
                if not os.path.isdir(base):  # no /proc: resolve the path instead
                    base = self.root
                return os.path.realpath(os.path.join(base, relative))
        return None

    def replaced(self) -> bool:
        """Whether the path now names another folder than the one pinned."""
        try:
            return os.stat(self.root).st_ino != self.inode
        except OSError:
            return True

    def real_path(self, fd: int, path: str) -> str:
        """Where the open file ``fd`` (opened as ``path``) really lives."""
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: resolve the path instead
            return os.path.realpath(path)

    def real_root(self) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return os.path.realpath(self.root)

    def open_npy(self, relative: str, nbytes: int, dtype: np.dtype,
                 shape: tuple[int, ...]) -> tuple[str, int, int]:
        """Open the ``.npy`` file ``relative`` (a path of the manifest) once it is checked.

        The file must lie inside the folder, be a regular file of ``nbytes``
        bytes, and its header must say ``dtype``, ``shape`` and C order.
        Returns ``(path, descriptor, data offset)``; the caller closes the
        descriptor. Raises :class:`MissingShardError`,
        :class:`CorruptShardError`, :class:`DatasetChangedError` (the folder
        was swapped out meanwhile) or :class:`ManifestError` (the path leads
        outside the folder).
        """
        path = os.path.join(self.root, *relative.split("/"))
        # Where the path leads is checked before it is opened (a FIFO or a
        # device outside the folder is never opened), and again after (a
        # symbolic link swapped in between).
        root = self.real_root()
        if root.endswith(" (deleted)"):
            raise self.changed_error()
        target = self.resolve(relative)
        if target is not None:
            self._check_inside(relative, target, root)
        try:
            fd = self.open(relative, path, CorruptShardError,
                           "a shard is a regular .npy file: restore it, or convert the dataset again")
        except FileNotFoundError:
            if self.replaced():
                raise self.changed_error() from None
            raise MissingShardError(f"{path}: shard file is missing") from None
        except NpyseqError:
            raise
        except OSError as e:
            raise CorruptShardError(f"{path}: cannot be opened ({e.strerror or e})") from None
        try:
            real = self.real_path(fd, path)
            if root != self.real_root() or real.endswith(" (deleted)"):
                raise self.changed_error()  # moved or deleted while we looked: swapped out
            self._check_inside(relative, real, root)
            offset = _check_header(path, fd, nbytes, dtype, shape)
        except BaseException:
            os.close(fd)
            raise
        return path, fd, offset

    def _check_inside(self, relative: str, real: str, root: str) -> None:
        if os.path.commonpath([real, root]) != root:
            raise ManifestError(
                f"{os.path.join(self.root, MANIFEST_NAME)}: shard path {relative!r} resolves to "
                f"{real}, outside the dataset folder; refusing to read it"
            )

    def changed_error(self) -> DatasetChangedError:
        """The error for a folder replaced at its path after it was opened."""
        return DatasetChangedError(
            f"{self.root}: the dataset folder was replaced after it was opened "
            "(e.g. converted again with --overwrite); reopen it with npyseq.open_shards"
        )


def _check_header(path: str, fd: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """The data offset of the open ``.npy`` file ``fd``, once its header and size are as expected."""
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
            f"{path}: header ({offset} bytes) plus data ({data} bytes) does not equal the file size {size}"
        )
    return offset


class OpenShard:
    """An open shard file: a read-only memory map, or a descriptor for ``pread``.

    Data that fits in memory is copied out of memory maps (the fastest from a
    warm page cache). Larger data is read with ``pread`` into the output array
    (and a memory map only for scattered tiny rows): the page cache pages then
    stay unmapped, so the kernel can reclaim them cheaply. Under a memory cap
    smaller than the data, reading shuffled rows through a mapping made the
    kernel unmap pages on every fault (measured 20x slower; see README,
    "Design").

    Reading a page of a map that lies past the end of its file kills the
    process with ``SIGBUS``: :attr:`array` checks the file's current size
    (one ``fstat``) every time a read asks for it, once per shard and batch,
    and raises :class:`CorruptShardError` for a shard truncated since it was
    opened.
    """

    def __init__(self, path: str, fd: int, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                 mapped: bool, max_open: int | None = None):
        """Takes ownership of ``fd``, the open, checked file: it is closed
        exactly once, here if this raises, else when the shard is dropped."""
        self.path, self.fd, self.offset, self.shape, self.dtype = path, fd, offset, shape, dtype
        self.row_bytes = dtype.itemsize * math.prod(shape[1:])
        self.size = offset + self.row_bytes * shape[0]  # the file's size when it was checked
        self.max_open, self.mapped = max_open, mapped
        self._map: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        if mapped:  # reads copy out of the map, which holds a descriptor of its own
            self.fd = None
            try:
                self._map_file(fd)  # map it now, from the file that was checked
            finally:
                os.close(fd)

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def _map_file(self, fd: int) -> None:
        """Map the file of ``fd`` (which stays the caller's) read-only."""
        try:
            m = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ)  # dups fd
        except OSError as e:
            if is_out_of_descriptors(e):
                raise too_many_open_files(self.path, e, self.max_open) from None
            raise ShardError(f"{self.path}: cannot be memory-mapped ({e.strerror or e}); "
                             "open the dataset with read='pread' to read it without memory maps") from None
        except ValueError as e:  # e.g. the file shrank below the size mapped
            raise CorruptShardError(f"{self.path}: cannot be memory-mapped ({e}); "
                                    f"{self.size} bytes expected") from None
        # A plain ndarray over the map (np.memmap's Python-level __array_finalize__
        # cost more than copying the short runs of a shuffled batch).
        count = math.prod(self.shape)
        self._array = np.frombuffer(m, dtype=self.dtype, count=count, offset=self.offset).reshape(self.shape)
        self._map = m

    @property
    def array(self) -> np.ndarray:
        """The shard's rows in a read-only memory map (mapped on first use), once
        the file is checked to hold them all still (see the class docstring)."""
        if self._map is None:
            self._map_file(self.fd)
        size = self._map.size()  # fstat of the map's own descriptor
        if size < self.size:
            raise CorruptShardError(
                f"{self.path}: {size} bytes found, {self.size} expected; the shard was truncated "
                "after it was opened (reading it would crash the process with SIGBUS)"
            )
        return self._array

    def copier(self) -> Callable[[int, int, np.ndarray], None]:
        """A function that copies rows ``[a, b)`` of the shard into ``dest``
        (C-contiguous, of the stored dtype): out of the memory map for a shard
        opened mapped (its size is checked now, once: take one per batch), else
        with one ``pread``."""
        if self.mapped:
            array = self.array

            def copy(a: int, b: int, dest: np.ndarray) -> None:
                dest[...] = array[a:b]
        else:
            def copy(a: int, b: int, dest: np.ndarray) -> None:
                if b > a and self.row_bytes:
                    self.pread(dest.reshape(-1).view(np.uint8), a, self.row_bytes)
        return copy

    def pread(self, dest: np.ndarray, row: int, row_bytes: int) -> None:
        """Fill ``dest`` (contiguous uint8) with the bytes of rows from ``row`` on."""
        self.pread_fd(self.fd, self.path, self.offset + row * row_bytes, dest)

    @staticmethod
    def pread_fd(fd: int, path: str, start: int, dest: np.ndarray) -> None:
        """Fill ``dest`` (contiguous uint8) with the bytes of file ``fd`` from ``start`` on."""
        view = memoryview(dest)
        want, done = dest.nbytes, 0
        while done < want:
            n = os.preadv(fd, [view[done:]], start + done)
            if n <= 0:
                raise CorruptShardError(
                    f"{path}: ended {want - done} bytes early at byte {start + done}; "
                    "the shard was truncated after it was opened"
                )
            done += n

    def will_need(self, rows: np.ndarray, counts: np.ndarray, row_bytes: int) -> None:
        """Start reading runs of rows from disk in the background (cold caches)."""
        if not hasattr(os, "posix_fadvise"):
            return
        for r, c in zip(rows.tolist(), counts.tolist()):
            os.posix_fadvise(self.fd, self.offset + r * row_bytes, c * row_bytes, os.POSIX_FADV_WILLNEED)
