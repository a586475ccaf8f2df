"""Files under a reader: the pinned dataset folder, open shards, the memory budget.

:class:`Folder` holds a directory descriptor of the dataset folder that every
file is opened relative to; :class:`OpenShard` is one open shard file, read by
``pread`` or copied out of a read-only memory map; :func:`memory_budget` is
what decides between the two.
"""

from __future__ import annotations

import os

import numpy as np

from npyseq.errors import CorruptShardError, DatasetNotFoundError

__all__ = ["Folder", "OpenShard", "memory_budget"]


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


class Folder:
    """A dataset folder pinned by a directory descriptor.

    The manifest and every shard are opened relative to this descriptor, so
    they all come from the same folder even if another process swaps a new
    dataset in at the same path (``overwrite=True``) meanwhile: a reader sees
    the old dataset or the new one, never a mix.
    """

    def __init__(self, root: str):
        self.root = root
        try:
            self.fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise DatasetNotFoundError(f"{root}: no such dataset folder") from None
        self.inode = os.fstat(self.fd).st_ino

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def open(self, relative: str) -> int:
        """Open a file of the folder read-only; return its descriptor."""
        return os.open(relative, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0), dir_fd=self.fd)

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


class OpenShard:
    """An open shard file: a read-only memory map, or a descriptor for ``pread``.

    Data that fits in memory is copied out of memory maps (the fastest from a
    warm page cache). Larger data is read with ``pread`` into the output array
    (and a memory map only for scattered tiny rows): the page cache pages then
    stay unmapped, so the kernel can reclaim them cheaply. Under a memory cap
    smaller than the data, reading shuffled rows through a mapping made the
    kernel unmap pages on every fault (measured 20x slower; see README,
    "Design").
    """

    def __init__(self, path: str, fd: int, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                 mapped: bool):
        """Takes ownership of ``fd``, the open, checked file."""
        self.path, self.fd, self.offset, self.shape, self.dtype = path, fd, offset, shape, dtype
        self._array = None
        if mapped:  # reads copy out of the map, which holds a descriptor of its own
            self.array  # noqa: B018 - map it now, from the file that was checked
            self.fd = None
            os.close(fd)

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    @property
    def array(self) -> np.ndarray:
        """The shard's rows in a read-only memory map, mapped on first use.

        A plain ``ndarray`` view of the ``np.memmap`` (which it keeps alive):
        slicing a memmap runs its Python-level ``__array_finalize__``, which
        cost more than copying the short runs of a shuffled batch.
        """
        if self._array is None:
            with open(self.fd, "rb", closefd=False) as f:
                self._array = np.memmap(f, dtype=self.dtype, mode="r", offset=self.offset,
                                        shape=self.shape).view(np.ndarray)
        return self._array

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
