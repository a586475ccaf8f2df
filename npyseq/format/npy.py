"""Small helpers over ``numpy.lib.format``: shard headers and checksums."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import xxhash
from numpy.lib import format as npy_format

from npyseq.errors import CorruptShardError, MissingShardError

CHUNK_BYTES = 16 * 2**20


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


def _new_header_lock() -> None:
    # A child forked while another thread of the parent held the lock (thread
    # workers of another sequence, an evaluation thread) would otherwise wait
    # for it forever: the thread that would release it does not exist there.
    global _HEADER_LOCK
    _HEADER_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_header_lock)


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


def cast_problem(array: np.ndarray, dtype: np.dtype) -> str | None:
    """Why casting ``array`` to ``dtype`` could change a value, or None if it cannot.

    The writers cast a batch to the dtype its array already has only when no
    value can change:

    * casts NumPy calls ``"safe"`` within one kind of data: bool, integers
      (``int8 -> int64``), floats (``float32 -> float64``), complex, strings
      (``'S3' -> 'S5'``), dates and times of a finer unit, structs NumPy casts
      safely;
    * bool to numbers, floats to complex, and integers to floats or complex
      that hold every integer of the source dtype exactly (``int16 -> float32``,
      ``int32 -> float64``, but not ``int64 -> float64``);
    * integers to integers of another range when every value fits
      (``int64`` labels 0 to 9 into an ``int8`` array); this one is checked
      value by value.

    Everything else is refused: ``float64 -> float32`` (rounding, overflow to
    inf), floats to integers, integers that do not fit (300 into ``int8``, -1
    into ``uint8``), shorter strings, numbers to strings or times.
    """
    source, dtype = array.dtype, np.dtype(dtype)
    if source == dtype:
        return None
    kinds = _number_kind(source), _number_kind(dtype)
    if not np.can_cast(source, dtype, casting="safe"):
        if kinds == ("int", "int") and source.kind in "iu" and dtype.kind in "iu":
            if array.size == 0:
                return None
            info = np.iinfo(dtype)
            if info.min <= int(array.min()) and int(array.max()) <= info.max:
                return None
            flat = array.reshape(-1)
            bad = flat[(flat < info.min) | (flat > info.max)]
            shown = ", ".join(str(int(v)) for v in bad[:3]) + (", ..." if len(bad) > 3 else "")
            return f"it holds {shown}, outside the {dtype} range {info.min} to {info.max}"
        return f"a cast from {source} to {dtype} can change values"
    if kinds[0] is None or kinds[1] is None:
        if kinds[0] is None and kinds[1] is None and source.kind == dtype.kind:
            return None  # strings to longer strings, times to finer units, structs
        return f"a cast from {source} to {dtype} changes the kind of data"
    if kinds[0] == kinds[1] or kinds[0] == "bool" or kinds == ("float", "complex"):
        return None
    if kinds[0] == "int":
        bits, exact = _magnitude_bits(source), _mantissa_bits(dtype)
        if exact is not None and bits <= exact:
            return None
        return (f"a cast from {source} to {dtype} can change values ({dtype} holds integers exactly "
                f"only up to 2**{exact})" if exact is not None else
                f"a cast from {source} to {dtype} can change values")
    return f"a cast from {source} to {dtype} can change values"


def _number_kind(dtype: np.dtype) -> str | None:
    """"bool", "int", "float" or "complex"; None for strings, times, structs."""
    kind = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}.get(dtype.kind)
    if kind is None and getattr(dtype.type, "__module__", "").startswith("ml_dtypes"):
        import ml_dtypes

        try:
            ml_dtypes.finfo(dtype)
            return "float"
        except (TypeError, ValueError):
            return "int"
    return kind


def _magnitude_bits(dtype: np.dtype) -> int:
    """Bits of the largest magnitude an integer dtype holds."""
    return dtype.itemsize * 8 - (1 if dtype.kind == "i" else 0)


def _mantissa_bits(dtype: np.dtype) -> int | None:
    """Integers up to 2**this are exact in the float or complex ``dtype``."""
    try:
        if dtype.kind in "fc":
            return int(np.finfo(dtype).nmant) + 1
        import ml_dtypes

        return int(ml_dtypes.finfo(dtype).nmant) + 1
    except (TypeError, ValueError):
        return None


def hash_array_rows(hasher: "xxhash.xxh3_64", chunk: np.ndarray) -> memoryview:
    """Feed a C-contiguous chunk's bytes to ``hasher`` and return them."""
    buf = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
    hasher.update(buf)
    return buf


def checksum_string(hasher: "xxhash.xxh3_64") -> str:
    return f"xxh3_64:{hasher.hexdigest()}"


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
