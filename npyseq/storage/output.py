"""Where a write puts its dataset: the output folder, its locks, and what a write may delete.

The writing protocol of :mod:`npyseq.format.manifest` (temporary names, fsync,
rename, the manifest last) makes a dataset atomic. This module keeps a write
from destroying anything that is not npyseq's:

* The output path is resolved once, at the start (``os.path.realpath``): when
  it is, or passes through, a symbolic link, the dataset is written into the
  folder the link points to, and the link stays as it is. Inside the dataset
  no link is ever followed: an array folder, shard, temporary file, lock or
  manifest that is a symbolic link (or of the wrong file type) is refused
  before anything is written, and files are created with ``O_NOFOLLOW``.
* A write refuses an output path that is a source of the conversion or a
  folder holding one (at any depth), and an empty path.
* Every write takes the lock file of the dataset folder (``.npyseq.lock``,
  ``flock``) and decides under it, not before, whether the folder already
  holds a dataset.
* ``overwrite=True`` replaces only a dataset npyseq wrote: the folder may hold
  ``manifest.json``, the files that manifest names, their folders, and
  npyseq's lock and temporary files, nothing else (no other file, folder or
  link). The new dataset is built beside it, in ``<out>.npyseq-new``, the two
  folders are exchanged, and of the old one exactly those files are deleted.
* A failed or interrupted write deletes only the temporary files it created
  itself; complete shards stay, for the rerun to keep.

What npyseq wrote, and how a file is created or opened without following a
link, is :mod:`npyseq.storage.ownership`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import sys
from typing import Iterable

from npyseq.errors import (
    DatasetExistsError,
    ForeignFilesError,
    InvalidArgumentError,
    ManifestError,
    NpyseqError,
)
from npyseq.format.manifest import (LOCK_NAME, MANIFEST_NAME, OLD_SUFFIX, PARTIAL_SUFFIX, STAGING_SUFFIX, Manifest,
                                    read_manifest)
from npyseq.storage.ownership import (
    check_file,
    delete_dataset,
    delete_leftovers,
    describe_path,
    foreign_file_error,
    foreign_files,
    listing,
    lstat_or_none,
    named_files,
    not_npyseq_shaped,
    open_own_file,
    remove_temporaries,
)
from npyseq.storage.protocol import fsync_dir, write_manifest


# --- the lock ---------------------------------------------------------------------------


class _Lock:
    """``folder/.npyseq.lock``, held with ``flock`` until :meth:`release`."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: int | None = None

    def _held(self) -> NpyseqError:
        return NpyseqError(
            f"{self.folder}: another npyseq process is writing this dataset (lock {self.path} is held)"
        )

    def acquire(self) -> None:
        for _ in range(10):
            fd, mine = open_own_file(self.folder, LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644, "its lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException as e:
                os.close(fd)
                if isinstance(e, BlockingIOError):
                    raise self._held() from None
                raise
            # The writer before may have unlinked the file after this one opened
            # it; a newer lock file may then be another writer's: open again.
            now = lstat_or_none(self.path)
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                self.fd = fd
                return
            os.close(fd)
        raise self._held()

    def release(self) -> None:
        """Delete the lock file (if it is still this lock's) and release the lock."""
        if self.fd is None:
            return
        try:
            mine, now = os.fstat(self.fd), lstat_or_none(self.path)
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def _lock_folder(folder: str) -> _Lock:
    lock = _Lock(folder)
    lock.acquire()
    return lock


# --- sources and paths -------------------------------------------------------------------


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_sources(out_dir: str | os.PathLike, sources: Iterable[str]) -> None:
    """Refuse an output path that is a source file, or a folder holding one (at any depth)."""
    target = _resolve(out_dir)
    folders = (target, target + STAGING_SUFFIX, target + OLD_SUFFIX)
    for src in sources:
        src = os.fsdecode(src)
        absolute = os.path.abspath(src)
        # The file itself, and (when it is a link) the link: deleting either loses it.
        candidates = {os.path.realpath(absolute),
                      os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))}
        for path in candidates:
            if path == target:
                raise InvalidArgumentError(
                    f"{target}: the output path is {src}, a source of this conversion; give the "
                    "dataset a folder of its own (e.g. the source's name without its extension)"
                )
            for folder in folders:
                if _inside(path, folder):
                    raise InvalidArgumentError(
                        f"{target}: the output folder holds {src}, a source of this conversion "
                        f"(under {folder}); writing the dataset there could replace or delete it, "
                        "and overwrite=True (--overwrite) would. Write the dataset to a folder "
                        "that holds no source, e.g. a new one beside the sources."
                    )


def _resolve(out_dir: str | os.PathLike) -> str:
    """The output folder as an absolute path with every symbolic link resolved (once)."""
    try:
        path = os.fsdecode(os.fspath(out_dir))
    except TypeError:
        raise InvalidArgumentError(f"out_dir must be a path (str or os.PathLike), got {out_dir!r:.80}") from None
    if not path.strip():
        raise InvalidArgumentError(
            f"out_dir is empty ({path!r}); give the folder to write the dataset to. An empty path "
            "would mean the current folder (and, with overwrite=True, all of it): pass '.' to write "
            "there on purpose."
        )
    target = os.path.realpath(path)
    if os.path.dirname(target) == target:
        raise InvalidArgumentError(f"out_dir {path!r} is a file system root; give a folder of its own")
    if target.endswith((STAGING_SUFFIX, OLD_SUFFIX)):
        raise InvalidArgumentError(
            f"{target}: names ending in {STAGING_SUFFIX!r} or {OLD_SUFFIX!r} are reserved for the "
            "folders npyseq builds and replaces datasets in; choose another name"
        )
    return target


# --- the output of one write ------------------------------------------------------------


class Output:
    """The folder one write (a :func:`write_shards` call, a ``ShardWriter``) writes into.

    Creating it resolves the path, refuses what must not be written to, takes
    the lock and decides, under the lock, whether the write builds the dataset
    in place or beside an existing one it replaces (``overwrite=True``).
    ``root`` is the folder to write shards and the manifest into;
    :meth:`publish` then puts the dataset at ``target``, and :meth:`release`
    gives up (the locks only: complete shards stay).
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool, sources: Iterable[str] = ()):
        self.target = _resolve(out_dir)
        check_sources(self.target, sources)
        self.staging = self.target + STAGING_SUFFIX
        self.replaces: Manifest | None = None  # the dataset being replaced
        self.root = self.target
        self.published = False  # the manifest is in place: an error after it loses nothing
        self._locks: list[_Lock] = []
        st = lstat_or_none(self.target)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError(f"{self.target} exists and is not a folder")
        if not overwrite and os.path.lexists(os.path.join(self.target, MANIFEST_NAME)):
            raise self._exists()
        os.makedirs(self.target, exist_ok=True)
        self._locks.append(_lock_folder(self.target))
        try:
            self._decide(overwrite)
        except BaseException:
            self.release()
            raise

    @property
    def replacing(self) -> str | None:
        """The folder whose dataset this write replaces, or None."""
        return self.target if self.replaces is not None else None

    def _exists(self) -> DatasetExistsError:
        return DatasetExistsError(
            f"{self.target} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
        )

    def _decide(self, overwrite: bool) -> None:
        """Under the target's lock: write in place, or beside the dataset found there."""
        manifest = os.path.join(self.target, MANIFEST_NAME)
        if not os.path.lexists(manifest):
            return  # no dataset (yet): write in place, resuming an interrupted write
        if not overwrite:
            raise self._exists()  # published by another writer since the check before the lock
        self.replaces = self._read_replaced()
        foreign = foreign_files(self.target, self.replaces)
        if foreign:
            raise ForeignFilesError(
                f"{self.target}: overwrite=True replaces only a dataset npyseq wrote, but this "
                f"folder also holds what npyseq did not write (or its manifest does not name): "
                f"{listing(foreign)}. Replacing the dataset would delete them, so nothing was "
                f"written. Move them out of {self.target}, or write the dataset to another folder."
            )
        self._check_leftover(self.staging)
        os.makedirs(self.staging, exist_ok=True)
        self._locks.append(_lock_folder(self.staging))
        self.root = self.staging

    def _read_replaced(self) -> Manifest:
        path = os.path.join(self.target, MANIFEST_NAME)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise foreign_file_error(self.target, MANIFEST_NAME, st, "its manifest")
        try:
            return read_manifest(self.target)[0]
        except ManifestError as e:
            raise ManifestError(
                f"{self.target}: overwrite=True replaces only a dataset npyseq wrote and tells its "
                f"files by the manifest, which cannot be read ({e}); nothing was written. Delete the "
                "folder yourself if it holds nothing you need, or write the dataset to another folder."
            ) from None

    def _check_leftover(self, folder: str) -> None:
        """A staging folder left by an interrupted overwrite may be reused if only npyseq wrote it."""
        st = lstat_or_none(folder)
        if st is None:
            return
        found = ([f"{os.path.basename(folder)} ({describe_path(folder, st)})"] if not stat.S_ISDIR(st.st_mode)
                 else not_npyseq_shaped(folder))
        if found:
            raise ForeignFilesError(
                f"{folder}: npyseq uses this folder to replace the dataset at {self.target} (this "
                f"one is left by an interrupted overwrite), but it holds what npyseq does not write there: "
                f"{listing(found)}; nothing was written. Move them away (or delete the folder) and "
                "run again."
            )

    def array_folder(self, name: str) -> str:
        """Create (or keep) the folder of array ``name`` in ``root``; refuse a link or a file there."""
        path = os.path.join(self.root, name)
        st = lstat_or_none(path)
        if st is None:
            os.mkdir(path)
        elif not stat.S_ISDIR(st.st_mode):
            raise foreign_file_error(self.root, name, st, f"the folder of array {name!r}")
        return path

    def check_files(self, rels: Iterable[str]) -> None:
        """Refuse, before writing, a link or folder where the write puts a file or its temporary."""
        for rel in rels:
            for path in (rel, rel + PARTIAL_SUFFIX):
                check_file(self.root, path)

    def publish(self, manifest: Manifest) -> str:
        """Once every file ``manifest`` names is in ``root``: make the array folders durable,
        write the manifest, put the dataset at ``target``, release the locks; return ``target``.

        This ends every write (both writers); an error here releases the locks too.
        """
        try:
            for name in manifest.arrays:  # the renames of the shards into them
                fsync_dir(os.path.join(self.root, name))
            if self.replaces is not None:  # a folder only npyseq writes: no leftover is published
                files, folders = named_files(manifest)
                delete_leftovers(self.staging, files | {MANIFEST_NAME, LOCK_NAME}, folders)
            else:
                remove_temporaries(self.root, manifest.arrays)
            write_manifest(self.root, manifest)
            self.published = self.replaces is None
            if self.replaces is not None:
                old = _swap_in(self.staging, self.target, self._check_leftover)
                self.published = True
                # The lock files moved with their folders.
                self._locks[0].path = os.path.join(old, LOCK_NAME)
                self._locks[1].path = os.path.join(self.target, LOCK_NAME)
                delete_dataset(old, self.replaces)
        finally:
            self.release()
        return self.target

    def interrupted_message(self, again: str) -> str:
        """What a write stopped by Ctrl-C says (before :meth:`publish` put the dataset in place);
        ``again``: how to finish it."""
        kept = f"{self.replacing} still holds the dataset it had; " if self.replacing else ""
        return (f"{self.root}: writing was interrupted. Nothing was published: no manifest was written "
                f"and the .partial files of this run were removed; {kept}the complete shards were kept: "
                f"{again}.")

    def share_token(self) -> tuple[str, str]:
        """Write a random token into the lock file of ``root``; return ``(its path, the token)``:
        a cluster worker that reads the token there sees this folder (:mod:`npyseq.storage.cluster`)."""
        token = secrets.token_hex(16)
        lock = self._locks[-1]
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, token.encode("ascii"), 0)
        os.fsync(lock.fd)
        return lock.path, token

    def release(self) -> None:
        """Release the locks (deleting their files); idempotent."""
        while self._locks:
            self._locks.pop().release()


def _swap_in(staging: str, target: str, check_leftover=lambda folder: None) -> str:
    """Put the new dataset at ``target``; return where the old one now is.

    On Linux the two folders are exchanged in one atomic step
    (``renameat2(RENAME_EXCHANGE)``), so ``target`` always holds a complete
    dataset, old or new. Elsewhere (or on a file system without it) two
    renames leave ``target`` missing for an instant, and a reader opening it
    then gets DatasetNotFoundError.
    """
    if _exchange(staging, target):
        fsync_dir(os.path.dirname(target) or ".")
        return staging  # now the old dataset
    old = target + OLD_SUFFIX
    if os.path.lexists(old):  # left by an interrupted swap: deleted if it holds only npyseq's files
        check_leftover(old)
        delete_leftovers(old)
    os.rename(target, old)
    os.rename(staging, target)
    fsync_dir(os.path.dirname(target) or ".")
    return old


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
