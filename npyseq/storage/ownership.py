"""What npyseq wrote, and what a path is: the rules that keep a write from destroying anything.

* Inside a dataset no link is ever followed: a file npyseq writes (shard,
  temporary file, lock, manifest) is created or opened with ``O_NOFOLLOW``,
  and a link, folder, FIFO, socket or device where it goes is refused with
  :class:`~npyseq.errors.ForeignFilesError` (:func:`create_file`,
  :func:`open_own_file`, :func:`check_file`).
* What npyseq wrote is ``manifest.json``, the files that manifest names,
  their folders, and npyseq's lock and temporary files; anything else in the
  folder is foreign (:func:`foreign_files`), and replacing a dataset deletes
  exactly its files (:func:`delete_dataset`).
* In a folder only npyseq writes (where ``overwrite=True`` builds a dataset)
  a file is npyseq's if it is named like one (:func:`not_npyseq_shaped`,
  :func:`delete_leftovers`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from typing import Callable, Iterable, Iterator

from npyseq.errors import ForeignFilesError
from npyseq.format.limits import is_array_name
from npyseq.format.manifest import LOCK_NAME, MANIFEST_NAME, PARTIAL_SUFFIX, Manifest
_SHARD_FILE_RE = re.compile(r"^\d{6,}(\.offsets)?\.npy$")
_TEMP_FILE_RE = re.compile(r"^\d{6,}(\.offsets)?\.npy\.partial(\.tmp)?$")
_ROOT_FILES = (MANIFEST_NAME, MANIFEST_NAME + PARTIAL_SUFFIX, LOCK_NAME)
_SHOWN = 10  # files named in an error message, at most

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


# --- what a path is -------------------------------------------------------------------


def lstat_or_none(path: str) -> os.stat_result | None:
    """``os.lstat(path)``, None if nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def describe_path(path: str, st: os.stat_result) -> str:
    """What a path is, for an error message: 'a symbolic link (to ...)', 'a folder' ..."""
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if stat.S_ISREG(st.st_mode):
        return "a file"
    return "a special file (FIFO, socket or device)"


def foreign_file_error(root: str, rel: str, st: os.stat_result, expected: str,
                       done: str = "Nothing was written") -> ForeignFilesError:
    """``root/rel`` (found to be ``st``) is not what npyseq writes there (``expected``)."""
    path = os.path.join(root, rel)
    link = (" npyseq never follows a symbolic link inside a dataset it writes, so that it never "
            "writes or deletes anything outside the folder." if stat.S_ISLNK(st.st_mode) else "")
    return ForeignFilesError(
        f"{root}: {rel} is {describe_path(path, st)}, where npyseq writes {expected}.{link} {done}. "
        f"Move {path} away, or write the dataset to another folder."
    )


def check_file(root: str, rel: str) -> int | None:
    """The size of the regular file ``root/rel``, None if there is none; refuse anything else."""
    st = lstat_or_none(os.path.join(root, rel))
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise foreign_file_error(root, rel, st, "a file of its own")
    return st.st_size


def open_own_file(root: str, rel: str, flags: int, mode: int, expected: str,
                  done: str = "Nothing was written") -> tuple[int, os.stat_result]:
    """Open the regular file ``root/rel`` that npyseq writes (``os.open`` with ``flags``, never
    through a link, never blocking on a FIFO); return its descriptor and ``fstat``. A link,
    folder, FIFO, socket or device there is refused, as where npyseq writes ``expected``."""
    path = os.path.join(root, rel)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as e:
        st = lstat_or_none(path) if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO) else None
        if st is None:
            raise
        raise foreign_file_error(root, rel, st, expected, done) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # a FIFO with a reader
        os.close(fd)
        raise foreign_file_error(root, rel, st, expected, done)
    return fd, st


def create_file(path: str, root: str):
    """Create (or truncate) the temporary file ``path`` for writing, never through a link."""
    fd, _ = open_own_file(root, os.path.relpath(path, root), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666,
                          "a temporary file of its own", "Nothing was published")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    f = os.fdopen(fd, "wb")
    f.raw.name = path  # name the file, not its descriptor, in errors
    return f


# --- what npyseq wrote --------------------------------------------------------------------


def named_files(manifest: Manifest) -> tuple[set[str], set[str]]:
    """The files a manifest names, and their folders (array folders included), relative."""
    files = {s.path for a in manifest.arrays.values() for s in a.files}
    folders = set(manifest.arrays)
    for path in files:
        parts = path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return files, folders


def _walk(root: str, descend: Callable[[str], bool] = lambda rel: True,
          rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """``(relative path, lstat)`` of everything under ``root/rel``, a folder before what it
    holds, never through a link, into the folders ``descend(rel)`` accepts."""
    folder = os.path.join(root, rel) if rel else root
    for entry in sorted(os.listdir(folder)):
        path = f"{rel}/{entry}" if rel else entry
        st = lstat_or_none(os.path.join(root, path))
        if st is None:
            continue  # deleted meanwhile
        yield path, st
        if stat.S_ISDIR(st.st_mode) and descend(path):
            yield from _walk(root, descend, path)


def _is_temp(rel: str) -> bool:
    """An npyseq lock or temporary file (at the root, or in a folder of shards)."""
    folder, _, name = rel.rpartition("/")
    return name in _ROOT_FILES[1:] if not folder else bool(_TEMP_FILE_RE.fullmatch(name))


def foreign_files(root: str, manifest: Manifest) -> list[str]:
    """Everything under ``root`` that is not part of the dataset ``manifest`` describes."""
    files, folders = named_files(manifest)
    found = []
    for rel, st in _walk(root, lambda rel: rel in folders):
        if stat.S_ISDIR(st.st_mode):
            if rel not in folders:
                found.append(rel + "/")
        elif not stat.S_ISREG(st.st_mode):
            found.append(f"{rel} ({describe_path(os.path.join(root, rel), st)})")
        elif not (rel in files or rel == MANIFEST_NAME or _is_temp(rel)):
            found.append(rel)
    return found


def _looks_npyseq(rel: str) -> bool:
    """A file name npyseq writes in a folder of its own: manifest, lock, shards, temporaries."""
    folder, _, name = rel.rpartition("/")
    if not folder:
        return name in _ROOT_FILES
    return ("/" not in folder and is_array_name(folder)
            and bool(_SHARD_FILE_RE.fullmatch(name) or _TEMP_FILE_RE.fullmatch(name)))


def not_npyseq_shaped(root: str) -> list[str]:
    """What under ``root`` (a folder only npyseq writes) is not named like npyseq's files."""
    found = []
    for rel, st in _walk(root, lambda rel: "/" not in rel and is_array_name(rel)):
        if stat.S_ISDIR(st.st_mode):
            if "/" in rel or not is_array_name(rel):
                found.append(rel + "/")
        elif not stat.S_ISREG(st.st_mode):
            found.append(f"{rel} ({describe_path(os.path.join(root, rel), st)})")
        elif not _looks_npyseq(rel):
            found.append(rel)
    return found


def listing(found: list[str]) -> str:
    """``found`` for a message: the first ten, and how many more."""
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return ", ".join(found[:_SHOWN]) + more


def _unlink_files(root: str, files: Iterable[str]) -> None:
    for rel in sorted(files):
        path = os.path.join(root, rel)
        st = lstat_or_none(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            os.unlink(path)


def _remove_empty_folders(root: str, keep: set[str] = frozenset(), itself: bool = True) -> None:
    """Remove the folders under ``root`` left empty (deepest first) but ``keep``, then ``root``."""
    folders = [rel for rel, st in _walk(root) if stat.S_ISDIR(st.st_mode)]
    for rel in reversed(folders):
        if rel not in keep:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(os.path.join(root, rel))  # fails (and stays) unless empty
    if itself:
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(root)


def delete_dataset(root: str, manifest: Manifest) -> None:
    """Delete the dataset ``manifest`` describes (the manifest first) and npyseq's temporary
    files beside it; anything else stays, and so do the folders holding it."""
    files, _ = named_files(manifest)
    temp = {rel for rel, st in _walk(root) if stat.S_ISREG(st.st_mode) and _is_temp(rel)}
    _unlink_files(root, [MANIFEST_NAME])
    _unlink_files(root, files | temp)
    _remove_empty_folders(root)


def delete_leftovers(root: str, keep_files: set[str] = frozenset(),
                     keep_folders: set[str] = frozenset()) -> None:
    """In a folder only npyseq writes (staging): delete its files but ``keep_files``."""
    doomed = {rel for rel, st in _walk(root)
              if stat.S_ISREG(st.st_mode) and rel not in keep_files and _looks_npyseq(rel)}
    _unlink_files(root, doomed)
    _remove_empty_folders(root, keep_folders, itself=not keep_files)


def remove_temporaries(root: str, names: Iterable[str]) -> None:
    """Delete the temporary files an earlier, killed run left in the array folders ``names``."""
    temp = [rel for name in names if os.path.isdir(os.path.join(root, name))
            for rel, st in _walk(root, lambda rel: False, name)
            if stat.S_ISREG(st.st_mode) and _is_temp(rel)]
    _unlink_files(root, temp)
