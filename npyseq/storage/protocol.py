"""The writing protocol that :func:`npyseq.write_shards` and :class:`npyseq.ShardWriter` share.

How a writer lays out a dataset's files (the "Writing protocol" of
:mod:`npyseq.format.manifest`): shard sizes (:func:`parse_size`,
:func:`rows_per_shard`), shard and offsets file names, the array names a
writer accepts, the atomic step that writes one file (:func:`write_file`: a
``.partial`` file, fsync, rename; reused when a rerun finds it complete) and
the manifest (:func:`write_manifest`, then :func:`fsync_dir`). A full disk
(``ENOSPC``, or ``EDQUOT`` for a quota) becomes one
:class:`~npyseq.errors.DiskFullError` (:func:`disk_full_error`).

The output folder itself (lock, overwrite, publish) is :mod:`npyseq.storage.output`.
"""

from __future__ import annotations

import contextlib
import errno
import fractions
import os
import re
import shutil
import threading
from typing import Any, Iterable, Mapping

import numpy as np
import xxhash

from npyseq.arguments import integer, short_repr
from npyseq.errors import DiskFullError, ForeignFilesError, InvalidArgumentError
from npyseq.format import npy
from npyseq.format.limits import MAX_COUNT, MAX_NAME_LENGTH, is_array_name
from npyseq.format.manifest import (
    MANIFEST_NAME,
    OFFSETS_DTYPE,
    OLD_SUFFIX,
    PARTIAL_SUFFIX,
    STAGING_SUFFIX,
    TMP_SUFFIX,
    Manifest,
    ShardInfo,
)
from npyseq.format.npy import row_bytes
from npyseq.storage.ownership import check_file, create_file

DEFAULT_SHARD_SIZE = "256MB"  # the largest shard file of an array
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
                f"got {short_repr(value)}"
            )
        # Exact (a float would turn a 400-digit number into inf), rounded down.
        n = int(fractions.Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise InvalidArgumentError(f"{argument} must be an int or a string like '256MB', got {short_repr(value)}")
    if n <= 0:
        raise InvalidArgumentError(f"{argument} must be positive, got {short_repr(value)}")
    if n > MAX_COUNT:
        raise InvalidArgumentError(
            f"{argument} must be at most 2**62 bytes (4.6 EB; the largest size a manifest records), "
            f"got {short_repr(value)}")
    return n


def check_count(value: Any, argument: str, minimum: int = 1, maximum: int = MAX_COUNT,
                what: str = "a positive int") -> int:
    """``value`` as an int in ``[minimum, maximum]``, or an error naming ``argument``
    (:func:`npyseq.arguments.integer`, with the writers' wording)."""
    return integer(value, argument, minimum, maximum, what)


# --- shard sizes and file names -------------------------------------------------------


def shard_limit(shard_size: int | str, rows: int | None) -> int | None:
    """The largest shard file in bytes (``shard_size``, checked), or None where ``rows``
    (checked) fixes the rows of a shard instead."""
    if rows is not None:
        check_count(rows, "rows")
        return None
    return parse_size(shard_size)


def shard_header_bytes(dtype: np.dtype, row_shape: Iterable[int]) -> int:
    """The length of a shard's ``.npy`` header sized for the most rows a shard may hold
    (2**40): a size limit keeps room for the longest header a shard can get."""
    return len(npy.header_bytes(dtype, (2**40,) + tuple(row_shape)))


def rows_per_shard(shard_size: int | str | None, rows: int | None,
                   arrays: Mapping[str, tuple[np.dtype, tuple[int, ...], bool]]) -> int:
    """``rows`` (checked), or the most rows whose shard of every array fits in ``shard_size``.

    ``arrays`` maps each name to ``(storage dtype, row shape, ragged)``, the
    element shape for a ragged array. A fixed array bounds the rows of a shard
    by its row size; a ragged array by its offsets file (8 bytes a row; its
    values files are bounded as the rows are cut into shards).
    """
    if rows is not None:
        return check_count(rows, "rows")
    limit = parse_size(shard_size if shard_size is not None else DEFAULT_SHARD_SIZE)
    best = None
    for name, (dtype, shape, ragged) in arrays.items():
        if ragged:
            dtype, shape = OFFSETS_DTYPE, ()
        size = row_bytes(dtype, shape)
        if size == 0:
            continue
        header = shard_header_bytes(dtype, shape)
        n = (limit - header) // size
        if n < 1:
            raise InvalidArgumentError(
                f"shard_size {limit} bytes is smaller than one row of array {name!r} "
                f"({size} bytes plus a {header}-byte header); raise shard_size"
            )
        best = n if best is None else min(best, n)
    return best if best is not None else 2**20


def shard_path(name: str, k: int) -> str:
    """Shard ``k`` of array ``name`` (a ragged array's values file), relative to the dataset."""
    return f"{name}/{k:06d}.npy"


def offsets_path(name: str, k: int) -> str:
    """The offsets file of shard ``k`` of a ragged array."""
    return f"{name}/{k:06d}.offsets.npy"


# --- array names ----------------------------------------------------------------------


_RESERVED_SUFFIXES = {
    PARTIAL_SUFFIX: "its temporary files", TMP_SUFFIX: "its temporary files",
    STAGING_SUFFIX: "the folders it builds and replaces datasets in", OLD_SUFFIX: "the folders it "
    "builds and replaces datasets in",
}


def check_name(name: Any) -> str:
    """Refuse an array name the format does not allow, or one npyseq's own files use."""
    if not is_array_name(name):
        raise InvalidArgumentError(
            f"array names must be 1-{MAX_NAME_LENGTH} letters, digits, '_', '-' or '.', not starting with '.'; "
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


def check_names(names: Iterable[Any]) -> None:
    """Every name allowed, and no two that one folder would hold on a case-insensitive file system."""
    seen: dict[str, str] = {}
    for name in names:
        check_name(name)
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise InvalidArgumentError(
                f"array names {other!r} and {name!r} differ only in case: on a file system that "
                "ignores case (macOS, Windows) their folders would be one; rename one of them"
            )


# --- disk full, and writing one file --------------------------------------------------


class Cancelled(Exception):
    """Another shard of the same run failed: stop writing this one."""


def is_disk_full(e: BaseException) -> bool:
    """An ``OSError`` of a full disk (``ENOSPC``) or of a full quota (``EDQUOT``)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(root: str, e: OSError, replaces: str | None,
                    again: str = "run the same conversion again to finish it") -> DiskFullError:
    """The one error of a write into ``root`` stopped by a full disk; ``replaces``: the folder
    whose dataset stays, ``again``: what to do once there is space."""
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


def write_file(root: str, path: str, header: bytes, data_bytes: int, chunks, reuse: bool,
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
                raise Cancelled()
            npy.hash_array_rows(expected, chunk)
        if npy.checksum_string(expected) == npy.file_checksum(final):
            if progress is not None:
                progress.update(data_bytes)  # the bar counts data bytes, headers left out
            return ShardInfo(path=path, bytes=nbytes, checksum=npy.checksum_string(expected))
    partial = final + PARTIAL_SUFFIX
    h = xxhash.xxh3_64(header)
    f = create_file(partial, root)  # never through a link; this run's from now on
    try:
        with f:
            f.write(header)
            written = 0
            for chunk in chunks():
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                f.write(npy.hash_array_rows(h, chunk))
                written = start_writeback(f, written)
                if progress is not None:
                    progress.update(chunk.nbytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    drop_from_cache(final)
    return ShardInfo(path=path, bytes=nbytes, checksum=npy.checksum_string(h))


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``root/manifest.json`` atomically (temporary file, fsync, rename)."""
    root = os.fspath(root)
    final = os.path.join(root, MANIFEST_NAME)
    partial = final + PARTIAL_SUFFIX
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(partial, flags, 0o666)  # never through a link
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        raise ForeignFilesError(
            f"{root}: {MANIFEST_NAME + PARTIAL_SUFFIX} is a symbolic link or a folder, where npyseq "
            f"writes its temporary manifest; nothing was published. Move {partial} away and run again."
        ) from None
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
    except BaseException:  # a full disk, Ctrl-C: leave no temporary manifest behind
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    fsync_dir(root)


def fsync_dir(path: str) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(f, done: int) -> int:
    """Start the disk write of what ``f`` holds past byte ``done`` (best effort, without waiting:
    the kernel writes it while the next piece is read), so that the final fsync has little left."""
    f.flush()
    end = f.tell()
    if hasattr(os, "posix_fadvise") and end > done:
        with contextlib.suppress(OSError):
            os.posix_fadvise(f.fileno(), done, end - done, os.POSIX_FADV_DONTNEED)
    return end


def drop_from_cache(path: str) -> None:
    """Ask the kernel to drop a file's clean pages (best effort): a written shard
    is not read again by the writer, and its pages would crowd out the source's."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
