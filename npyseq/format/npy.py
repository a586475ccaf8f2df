"""The facts of ``.npy`` files npyseq relies on, over ``numpy.lib.format``:
shard headers, the size of a row, and checksums."""

from __future__ import annotations

import io
import math
import sys
import threading
from typing import Iterable

import numpy as np
import xxhash
from numpy.lib import format as npy_format

from npyseq import forks
from npyseq.errors import CorruptShardError, MissingShardError

CHUNK_BYTES = 16 * 2**20

# The checksum algorithm npyseq writes and the only one it can verify: XXH3,
# 64 bits, seed 0, the digest as 16 lower-case hex digits.
CHECKSUM_ALGORITHM = "xxh3_64"


def row_bytes(dtype: np.dtype, shape: Iterable[int]) -> int:
    """Bytes of one row of ``shape`` (exact: a huge shape cannot overflow)."""
    return dtype.itemsize * math.prod(shape)


def header_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The exact ``.npy`` header numpy writes for a C-order array."""
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(buf, header)
    except ValueError:  # header longer than 64 KiB: needs format 2.0
        buf = io.BytesIO()
        npy_format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def read_header(path: str, fd: int | None = None) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Return ``(dtype, shape, fortran_order, data_offset)`` of a ``.npy`` file.

    ``fd``: an open descriptor of the file to read instead of opening
    ``path`` (which then only names it in errors); it is left open.

    Raises :class:`MissingShardError` or :class:`CorruptShardError` naming the
    file. Pickled object arrays are refused: their dtype holds objects.
    """
    try:
        f = open(path if fd is None else fd, "rb", closefd=fd is None)
    except FileNotFoundError:
        raise MissingShardError(f"{path}: shard file is missing") from None
    with f:
        try:
            shape, fortran, dtype = read_header_from(f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
            raise CorruptShardError(f"{path}: not a readable .npy header ({e})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise CorruptShardError(f"{path}: holds Python objects (pickled data); npyseq never loads those")
    return dtype, tuple(shape), bool(fortran), offset


# numpy parses a header with ast.literal_eval, and CPython 3.11 (before
# 3.11.8) can fail compiling in two threads at once with a spurious
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905);
# thread workers open shards concurrently. Parsing one header at a time costs
# nothing: it happens once per shard and process.
_HEADER_LOCK = threading.Lock()
# A child forked while another thread of the parent held the lock (thread
# workers of another sequence, an evaluation thread) would otherwise wait for
# it forever: the thread that would release it does not exist there.
forks.new_lock_after_fork(sys.modules[__name__], "_HEADER_LOCK")


def read_header_from(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read a ``.npy`` header (format 1.0 or 2.0) from an open binary stream."""
    with _HEADER_LOCK:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(f)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}; npyseq reads 1.0 and 2.0")


def header_lock() -> threading.Lock:
    """The lock that every ``.npy`` header is parsed under (see above): hold it
    around ``np.load`` of a ``.npy`` file too."""
    return _HEADER_LOCK


def hash_array_rows(hasher: "xxhash.xxh3_64", chunk: np.ndarray) -> memoryview:
    """Feed a C-contiguous chunk's bytes to ``hasher`` and return them."""
    buf = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
    hasher.update(buf)
    return buf


def checksum_string(hasher: "xxhash.xxh3_64") -> str:
    """The checksum a manifest records for the bytes ``hasher`` has seen."""
    return f"{CHECKSUM_ALGORITHM}:{hasher.hexdigest()}"


def can_verify(checksum: str) -> bool:
    """Whether npyseq can verify ``checksum`` (of :data:`CHECKSUM_ALGORITHM`). A manifest may
    record another algorithm; a reader reports such a checksum as one it cannot verify."""
    return checksum.partition(":")[0] == CHECKSUM_ALGORITHM


def file_checksum(path: str, progress=None, fd: int | None = None) -> str:
    """``xxh3_64:<hex>`` of a whole file, read in chunks (from ``fd`` if given)."""
    h = xxhash.xxh3_64()
    with open(path if fd is None else fd, "rb", buffering=0, closefd=fd is None) as f:
        if fd is not None:
            f.seek(0)
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if progress is not None:
                progress.update(n)
    return checksum_string(h)
