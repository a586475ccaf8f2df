"""The npyseq on-disk format, versions 1 and 2.

Datasets often live longer than the programs that created them, so this
docstring is the complete specification: anyone can write a reader from it
with nothing but a JSON parser and a ``.npy`` reader.

Layout
------
A dataset is a folder::

    train/
      manifest.json
      x/000000.npy  x/000001.npy  ...
      y/000000.npy  y/000001.npy  ...

* Each *array* of the dataset (``x``, ``y`` above) is split along its first
  axis (rows) into *shards*. Every shard is a standard ``.npy`` file (format
  version 1.0 or 2.0, C order, no pickled objects) that ``numpy.load``
  reads with no help.
* All arrays have the same number of rows and the same shard boundaries: shard
  ``k`` of every array holds the same rows. A batch of rows therefore maps to
  the same shards for every array.
* Rows are stored in dataset order: shard ``k`` holds rows
  ``sum(shard_rows[:k])`` up to ``sum(shard_rows[:k + 1])``.

manifest.json
-------------
UTF-8 JSON, one object::

    {
      "format": "npyseq",
      "version": 1,
      "rows": 1000,
      "shard_rows": [400, 400, 200],
      "arrays": {
        "x": {
          "dtype": "<u2",
          "logical_dtype": "bfloat16",
          "shape": [32, 32, 3],
          "shards": [
            {"path": "x/000000.npy", "bytes": 2457728,
             "checksum": "xxh3_64:5f1d0b3a9c1e2f40"},
            ...
          ]
        },
        "y": {"dtype": "<i8", "logical_dtype": null, "shape": [], "shards": [...]}
      }
    }

``format``
    Always the string ``"npyseq"``.
``version``
    The format version, an integer: 1, or 2 when the dataset holds a ragged
    array (see below). A reader must refuse a version it does not know.
``rows``
    Total number of rows, a non-negative integer; equal to ``sum(shard_rows)``.
``shard_rows``
    Rows of each shard, shared by all arrays. Every entry is a positive
    integer (a dataset of 0 rows has no shards).
``arrays``
    An object mapping each array name to its description. Names are
    non-empty strings of letters, digits, ``_``, ``-`` and ``.``, not starting
    with ``.``.
``dtype``
    The dtype of the shards as ``numpy.lib.format.dtype_to_descr`` writes it
    (e.g. ``"<f4"``, ``"|b1"``, or a list for structured dtypes). Object
    dtypes, and structured dtypes holding objects, are never allowed.
``logical_dtype``
    ``null``, or the name of the dtype the data really has when ``.npy`` cannot
    name it: one of the ``ml_dtypes`` types listed in ``LOGICAL_DTYPES``
    (``"bfloat16"``, ``"float8_e4m3fn"``, ``"int4"`` ...), no other name. Such
    data is stored as the unsigned integer of the same width, and only that:
    ``"<u2"`` for bfloat16, ``"|u1"`` for the 1-byte types, ``"<u4"`` for
    ``complex32`` and ``bcomplex32``; a reader reinterprets the bytes
    (``array.view(ml_dtypes.bfloat16)``); plain ``np.load`` still reads the
    raw bits.
``shape``
    The shape of one row (the array's shape without its first axis), a list of
    non-negative integers; ``[]`` for scalar rows.
``shards``
    One entry per shard, as many as ``shard_rows``:

    ``path``
        The shard's path relative to the dataset folder, with ``/``
        separators. It must stay inside the folder: not absolute, no ``..``
        component, and (when resolved) no symbolic link leading outside.
    ``bytes``
        The shard file's exact size in bytes, header included.
    ``checksum``
        ``"<algorithm>:<hex digest>"`` of the whole file's bytes, header
        included. Version 1 writes ``xxh3_64`` (XXH3, 64 bits, seed 0, the
        digest as 16 lower-case hex digits, as ``xxhash.xxh3_64_hexdigest``).

Each shard file's ``.npy`` header must say: ``descr`` equal to ``dtype``,
``fortran_order`` false, and ``shape`` equal to ``[shard_rows[k]] + shape``.
Its size must be ``bytes``.

Ragged arrays (version 2)
-------------------------
An array whose rows have different lengths (token ids of texts, time series
of different durations) is *ragged*: row ``i`` has shape
``[length_i] + shape``, ``length_i >= 0``. Its description adds
``"ragged": true``, and each shard is two ``.npy`` files::

    "tokens": {
      "ragged": true, "dtype": "<i4", "logical_dtype": null, "shape": [],
      "shards": [
        {"path": "tokens/000000.npy", "bytes": 4128, "checksum": "xxh3_64:...",
         "values": 1000,
         "offsets": {"path": "tokens/000000.offsets.npy", "bytes": 3336,
                     "checksum": "xxh3_64:..."}},
        ...
      ]
    }

``path`` (the *values* file) holds the rows of the shard one after another:
its header's shape is ``[values] + shape``, where ``values`` is the sum of the
shard's row lengths. ``offsets.path`` holds ``shard_rows[k] + 1`` integers of
dtype ``"<i8"``: row ``j`` of the shard is ``values_file[offsets[j]:offsets[j + 1]]``;
the offsets start at 0, never decrease, and end at ``values``. Fixed and
ragged arrays share ``rows`` and ``shard_rows``, so rows stay aligned.

A manifest holding at least one ragged array has ``"version": 2``; one with
none is written as version 1, byte-identical to what earlier writers wrote,
so datasets of fixed arrays stay readable by every npyseq version.

Writing protocol
----------------
Writers make datasets atomic and resumable:

1. Each shard is written under a temporary name (``<path>.partial``), flushed
   with ``fsync``, then renamed to its final path. A file at a final path is
   therefore always a complete shard of *some* run.
2. ``manifest.json`` is written last, the same way (``manifest.json.partial``,
   fsync, rename, fsync of the folder). A folder without a manifest is an
   incomplete dataset, and readers refuse it.
3. A rerun of the same conversion keeps every final-named shard whose checksum
   equals that of the rows it should hold, and rewrites the others.
4. A writer holds ``.npyseq.lock`` (``flock``, exclusive) in the dataset folder
   while it writes, and decides under that lock whether the folder already
   holds a dataset. It follows no symbolic link inside the folder and deletes
   only the temporary files it created, the temporary files (names above)
   left in its array folders, and, when it replaces a dataset, the files that
   dataset's manifest names.
5. Replacing a dataset: the new one is written to the folder
   ``<folder>.npyseq-new`` beside it, and the two folders are exchanged once
   its manifest is written. Only a folder holding nothing but ``manifest.json``,
   the files it names, their folders and the temporary files and lock above
   is replaced. Array names ``manifest.json`` and names ending in
   ``.partial``, ``.partial.tmp``, ``.npyseq-new`` or ``.npyseq-old`` are
   reserved (compared without case).

Versioning
----------
Version 1 is the first version; version 2 adds ragged arrays. A change an
older reader could misread gets a new version number; readers refuse versions
they do not know.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.lib import format as npy_format

from npyseq.errors import ForeignFilesError, ManifestError, UnsupportedDtypeError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ArrayInfo",
    "Manifest",
    "ShardInfo",
    "read_manifest",
    "write_manifest",
    "storage_dtype",
    "logical_dtype",
    "LOGICAL_DTYPES",
]

FORMAT_NAME = "npyseq"
FORMAT_VERSION = 2  # the newest version this npyseq reads and writes
READABLE_VERSIONS = (1, 2)
RAGGED_VERSION = 2  # the first version with ragged arrays
OFFSETS_DTYPE = np.dtype("<i8")
MANIFEST_NAME = "manifest.json"
CHECKSUM_ALGORITHM = "xxh3_64"
PARTIAL_SUFFIX = ".partial"

# The largest count or size a manifest records (rows, bytes, shape entries),
# and the most dimensions a row may have: the reader refuses more, so the
# writers do too, before they write anything.
MAX_COUNT = 2**62
MAX_ROW_DIMS = 32

# A manifest bigger than this is refused before parsing: a dataset of a
# million shards still fits, a hostile file cannot exhaust memory.
MAX_MANIFEST_BYTES = 256 * 2**20

_NAME_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")
_CHECKSUM_RE = re.compile(r"^[a-z0-9_]{1,32}:[0-9a-f]{1,128}$")


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard file of one array."""

    path: str
    bytes: int
    checksum: str


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """One array of a dataset: its dtypes, row shape and shards.

    For a ragged array, ``shape`` is the shape of one element of a row (a row
    is ``[length] + shape``), ``shards`` are the values files, and ``values``
    and ``offsets`` give each shard's element count and offsets file.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    shards: tuple[ShardInfo, ...]
    logical_dtype: str | None = None
    ragged: bool = False
    values: tuple[int, ...] = ()
    offsets: tuple[ShardInfo, ...] = ()

    @functools.cached_property
    def row_bytes(self) -> int:
        """Bytes of one row on disk, of one element for a ragged array
        (exact: a hostile shape cannot overflow it)."""
        return self.dtype.itemsize * math.prod(self.shape)

    @property
    def files(self) -> tuple[ShardInfo, ...]:
        """Every file of the array: the shards, then a ragged array's offsets files."""
        return self.shards + self.offsets


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed, validated content of ``manifest.json``."""

    rows: int
    shard_rows: tuple[int, ...]
    arrays: Mapping[str, ArrayInfo]

    @property
    def version(self) -> int:
        """2 if an array is ragged, else 1 (readable by every npyseq)."""
        return RAGGED_VERSION if any(a.ragged for a in self.arrays.values()) else 1

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    @property
    def num_shards(self) -> int:
        return len(self.shard_rows)

    @property
    def nbytes(self) -> int:
        """Total bytes of all shard files."""
        return sum(s.bytes for a in self.arrays.values() for s in a.files)

    def to_json(self) -> str:
        arrays = {}
        for name, info in self.arrays.items():
            shards = [dataclasses.asdict(s) for s in info.shards]
            spec = {}
            if info.ragged:
                spec["ragged"] = True
                for shard, n, offsets in zip(shards, info.values, info.offsets):
                    shard["values"] = n
                    shard["offsets"] = dataclasses.asdict(offsets)
            spec.update({
                "dtype": npy_format.dtype_to_descr(info.dtype),
                "logical_dtype": info.logical_dtype,
                "shape": list(info.shape),
                "shards": shards,
            })
            arrays[name] = spec
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "rows": self.rows,
            "shard_rows": list(self.shard_rows),
            "arrays": arrays,
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = MANIFEST_NAME) -> "Manifest":
        """Parse and validate a manifest; raise :class:`ManifestError` if bad."""
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ManifestError(f"{source}: not valid JSON ({e})") from None
        return _parse(doc, source)


def read_manifest(root: str | os.PathLike, fd: int | None = None) -> tuple[Manifest, bytes]:
    """Read ``root/manifest.json``; return the manifest and its raw bytes.

    ``fd``: an open descriptor of the manifest to read instead (left open).
    """
    path = os.path.join(os.fspath(root), MANIFEST_NAME)
    with open(path if fd is None else fd, "rb", closefd=fd is None) as f:
        # read(n) allocates n bytes up front: size the buffer by the file, not the limit.
        size = os.fstat(f.fileno()).st_size
        raw = f.read(min(size, MAX_MANIFEST_BYTES) + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{path}: manifest is larger than {MAX_MANIFEST_BYTES} bytes; refusing to parse it"
        )
    return Manifest.from_json(raw, source=path), raw


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


# --- dtypes ---------------------------------------------------------------


def storage_dtype(dtype: np.dtype, name: str = "array") -> tuple[np.dtype, str | None]:
    """Return ``(dtype stored in .npy, logical dtype name or None)`` for ``dtype``.

    ml_dtypes types (bfloat16, float8_*, int4 ...) cannot be named in a ``.npy``
    header; they are stored as the unsigned integer of the same width.
    """
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsupportedDtypeError(
            f"array {name!r} has dtype {dtype}, which holds Python objects; npyseq stores "
            "only plain data (numbers, bool, fixed-size strings, structs of those). "
            "Convert it first, e.g. to a numeric or fixed-width string dtype."
        )
    if dtype.itemsize == 0:
        raise UnsupportedDtypeError(
            f"array {name!r} has dtype {dtype!r}, whose elements are 0 bytes wide; npyseq stores "
            "only dtypes with a size (e.g. 'S5', not 'S0'; a struct with at least one field)"
        )
    if _is_ml_dtype(dtype):
        if LOGICAL_DTYPES.get(dtype.name) != dtype.itemsize:
            raise UnsupportedDtypeError(
                f"array {name!r}: dtype {dtype} has no storage form in the npyseq format; "
                f"it stores the ml_dtypes types {', '.join(LOGICAL_DTYPES)}"
            )
        return np.dtype(f"<u{dtype.itemsize}"), dtype.name
    descr = npy_format.dtype_to_descr(dtype)
    if npy_format.descr_to_dtype(descr) != dtype:
        raise UnsupportedDtypeError(
            f"array {name!r}: dtype {dtype} does not survive a .npy header round trip"
        )
    return dtype, None


# The logical dtypes of the format, each with its width in bytes: the
# ml_dtypes types npyseq writes. A fixed list, not "whatever ml_dtypes has":
# np.dtype() accepts other attributes of the module too (finfo opens as an
# object dtype, __doc__ as float64).
LOGICAL_DTYPES = {
    "bfloat16": 2,
    "float8_e3m4": 1, "float8_e4m3": 1, "float8_e4m3b11fnuz": 1, "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
    "float6_e2m3fn": 1, "float6_e3m2fn": 1, "float4_e2m1fn": 1,
    "int1": 1, "int2": 1, "int4": 1, "uint1": 1, "uint2": 1, "uint4": 1,
    "complex32": 4, "bcomplex32": 4,
}


def check_logical_dtype(stored: np.dtype, logical: str | None) -> None:
    """Refuse a logical dtype not in ``LOGICAL_DTYPES``, or over another storage
    dtype than the unsigned integer of its width (raises ``ManifestError``)."""
    if logical is None:
        return
    width = LOGICAL_DTYPES.get(logical) if isinstance(logical, str) else None
    if width is None:
        raise ManifestError(
            f"unknown logical_dtype {logical!r:.80}; npyseq knows {', '.join(LOGICAL_DTYPES)}"
        )
    if stored.itemsize != width:
        raise ManifestError(
            f"logical_dtype {logical!r} is {width} bytes wide but the stored "
            f"dtype {stored} is {stored.itemsize}"
        )
    expected = np.dtype(f"<u{width}")
    if stored != expected:
        raise ManifestError(
            f"logical_dtype {logical!r} is stored as {expected} ({npy_format.dtype_to_descr(expected)!r}), "
            f"but the stored dtype is {stored} ({npy_format.dtype_to_descr(stored)!r})"
        )


def logical_dtype(stored: np.dtype, logical: str | None) -> np.dtype:
    """The dtype arrays are returned with: ``logical`` if set, else ``stored``."""
    if logical is None:
        return stored
    check_logical_dtype(stored, logical)
    import ml_dtypes  # installed with keras

    kind = getattr(ml_dtypes, logical, None)
    dtype = np.dtype(kind) if isinstance(kind, type) else None
    if dtype is None or not _is_ml_dtype(dtype) or dtype.itemsize != stored.itemsize:
        raise ManifestError(
            f"logical_dtype {logical!r} is not a dtype of the installed ml_dtypes "
            f"{getattr(ml_dtypes, '__version__', '')}; upgrade ml_dtypes to read this dataset"
        )
    return dtype


def _is_ml_dtype(dtype: np.dtype) -> bool:
    # ml_dtypes types are numpy user dtypes whose scalar type lives in the
    # ml_dtypes module; checking the module avoids importing ml_dtypes.
    return getattr(dtype.type, "__module__", "").startswith("ml_dtypes")


# --- validation -----------------------------------------------------------


def _fail(source: str, message: str) -> ManifestError:
    return ManifestError(f"{source}: {message}")


def _int(value: Any, what: str, source: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, f"{what} must be an integer, found {value!r:.80}")
    if value < minimum or value > MAX_COUNT:
        raise _fail(source, f"{what} must be in [{minimum}, 2**62], found {value}")
    return value


def check_relative_path(path: Any, source: str) -> str:
    """Refuse a shard path that could leave the dataset folder."""
    if not isinstance(path, str) or not path:
        raise _fail(source, f"shard path must be a non-empty string, found {path!r:.80}")
    parts = path.split("/")
    if (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or (len(path) > 1 and path[1] == ":")
        or any(p in ("", ".", "..") for p in parts)
        or len(path) > 4096
    ):
        raise _fail(
            source,
            f"shard path {path!r:.200} is not a plain relative path inside the dataset "
            "folder (no leading '/', no '..' or '.' parts, '/' separators)",
        )
    return path


def _parse_dtype(value: Any, what: str, source: str) -> np.dtype:
    try:
        dtype = npy_format.descr_to_dtype(_descr_from_json(value))
    except Exception:
        raise _fail(source, f"{what} is not a valid .npy dtype description: {value!r:.80}") from None
    if dtype.hasobject:
        raise _fail(source, f"{what} {value!r:.80} holds Python objects, which npyseq refuses")
    if dtype.itemsize == 0:
        raise _fail(source, f"{what} {value!r:.80} has elements of 0 bytes, which npyseq refuses")
    return dtype


def _descr_from_json(value: Any) -> Any:
    """JSON turns the tuples of a structured descr into lists; undo that."""
    if isinstance(value, list):
        return [tuple(_descr_from_json(v) if isinstance(v, list) else v for v in field)
                if isinstance(field, list) else field for field in value]
    return value


def _parse(doc: Any, source: str) -> Manifest:
    if not isinstance(doc, dict):
        raise _fail(source, f"expected a JSON object, found {type(doc).__name__}")
    if doc.get("format") != FORMAT_NAME:
        raise _fail(source, f"format must be {FORMAT_NAME!r}, found {doc.get('format')!r:.80}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise _fail(
            source,
            f"unsupported format version {version!r:.80}; this npyseq reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}. Upgrade npyseq or rebuild the dataset.",
        )
    rows = _int(doc.get("rows"), "rows", source)
    shard_rows = doc.get("shard_rows")
    if not isinstance(shard_rows, list):
        raise _fail(source, f"shard_rows must be a list, found {shard_rows!r:.80}")
    shard_rows = tuple(_int(r, "shard_rows entry", source, minimum=1) for r in shard_rows)
    if sum(shard_rows) != rows:
        raise _fail(source, f"rows is {rows} but shard_rows add up to {sum(shard_rows)}")
    arrays_doc = doc.get("arrays")
    if not isinstance(arrays_doc, dict) or not arrays_doc:
        raise _fail(source, f"arrays must be a non-empty object, found {arrays_doc!r:.80}")
    arrays: dict[str, ArrayInfo] = {}
    seen_paths: set[str] = set()
    for name, spec in arrays_doc.items():
        if not _NAME_RE.match(name):
            raise _fail(source, f"array name {name!r:.80} is not allowed")
        where = f"array {name!r}"
        if not isinstance(spec, dict):
            raise _fail(source, f"{where} must be an object, found {spec!r:.80}")
        dtype = _parse_dtype(spec.get("dtype"), f"{where} dtype", source)
        logical = spec.get("logical_dtype")
        if logical is not None and (not isinstance(logical, str) or not logical.isidentifier()):
            raise _fail(source, f"{where} logical_dtype must be null or a name, found {logical!r:.80}")
        try:
            check_logical_dtype(dtype, logical)
        except ManifestError as e:
            raise _fail(source, f"{where}: {e}") from None
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_ROW_DIMS:
            raise _fail(source, f"{where} shape must be a list of at most {MAX_ROW_DIMS} ints, "
                                f"found {shape!r:.80}")
        shape = tuple(_int(d, f"{where} shape entry", source) for d in shape)
        shards_doc = spec.get("shards")
        if not isinstance(shards_doc, list) or len(shards_doc) != len(shard_rows):
            found = len(shards_doc) if isinstance(shards_doc, list) else repr(shards_doc)[:80]
            raise _fail(source, f"{where} must list {len(shard_rows)} shards, found {found}")
        ragged = spec.get("ragged", False)
        if not isinstance(ragged, bool):
            raise _fail(source, f"{where} ragged must be true or false, found {ragged!r:.80}")
        if ragged and version < RAGGED_VERSION:
            raise _fail(source, f"{where} is ragged, which needs format version {RAGGED_VERSION}, "
                                f"but the manifest says version {version}")
        info = ArrayInfo(dtype=dtype, shape=shape, shards=(), logical_dtype=logical, ragged=ragged)
        if info.row_bytes > 2**62:
            raise _fail(source, f"{where} rows of shape {shape} are impossibly large")
        shards, values, offsets = [], [], []
        for k, s in enumerate(shards_doc):
            if not isinstance(s, dict):
                raise _fail(source, f"{where} shard {k} must be an object, found {s!r:.80}")
            if ragged:
                n = _int(s.get("values"), f"{where} shard {k} values", source)
                if n * info.row_bytes > 2**62:
                    raise _fail(source, f"{where} shard {k} values ({n}) are impossibly many")
                values.append(n)
                off = s.get("offsets")
                if not isinstance(off, dict):
                    raise _fail(source, f"{where} shard {k} offsets must be an object, found {off!r:.80}")
                offsets.append(_file_info(off, f"{where} shard {k} offsets", shard_rows[k] + 1,
                                          "offsets", OFFSETS_DTYPE.itemsize, where, seen_paths, source))
            count, unit = (n, "values") if ragged else (shard_rows[k], "rows")
            shards.append(_file_info(s, f"{where} shard {k}", count, unit, info.row_bytes, where,
                                     seen_paths, source))
        arrays[name] = dataclasses.replace(info, shards=tuple(shards), values=tuple(values),
                                           offsets=tuple(offsets))
    return Manifest(rows=rows, shard_rows=shard_rows, arrays=arrays)


def _file_info(s: dict, label: str, count: int, unit: str, unit_bytes: int, where: str,
               seen_paths: set, source: str) -> ShardInfo:
    """Validate one file entry: its path, its size (at least ``count`` units of data), its checksum."""
    path = check_relative_path(s.get("path"), source)
    if path in seen_paths:
        raise _fail(source, f"shard path {path!r} is listed twice")
    seen_paths.add(path)
    nbytes = _int(s.get("bytes"), f"{label} bytes", source)
    if nbytes < count * unit_bytes:
        raise _fail(
            source,
            f"{where} shard {path!r} is said to be {nbytes} bytes, less than the "
            f"{count * unit_bytes} bytes its {count} {unit} need",
        )
    checksum = s.get("checksum")
    if not isinstance(checksum, str) or not _CHECKSUM_RE.match(checksum):
        raise _fail(source, f"{where} shard {path!r} checksum is malformed: {checksum!r:.80}")
    return ShardInfo(path=path, bytes=nbytes, checksum=checksum)


def shard_offsets(shard_rows: Sequence[int]) -> np.ndarray:
    """Row offset at which each shard starts, plus the total: length ``n + 1``."""
    out = np.zeros(len(shard_rows) + 1, dtype=np.int64)
    np.cumsum(np.asarray(shard_rows, dtype=np.int64), out=out[1:])
    return out
