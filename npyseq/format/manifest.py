"""The npyseq on-disk format, versions 1 and 2.

Datasets often live longer than the programs that created them, so this
docstring is the complete specification: anyone can write a reader, or a
writer, that agrees with npyseq from it with nothing but a JSON parser and a
``.npy`` reader.

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
    A non-empty object mapping each array name to its description (names:
    see Limits).
``dtype``
    The dtype of the shards as ``numpy.lib.format.dtype_to_descr`` writes it
    (e.g. ``"<f4"``, ``"|b1"``, or a list for structured dtypes). Object
    dtypes, structured dtypes holding objects, and dtypes whose elements are
    0 bytes wide (``"|V0"``, a struct of no field) are never allowed.
``logical_dtype``
    ``null``, or the name of the dtype the data really has when ``.npy`` cannot
    name it: one of the ``ml_dtypes`` types listed in Limits, no other name.
    Such data is stored as the little-endian unsigned integer of the same
    width, and only that: ``"<u2"`` for bfloat16, ``"|u1"`` for the 1-byte
    types, ``"<u4"`` for ``complex32`` and ``bcomplex32``; a reader
    reinterprets the bytes (``array.view(ml_dtypes.bfloat16)``); plain
    ``np.load`` still reads the raw bits.
``shape``
    The shape of one row (the array's shape without its first axis), a list of
    non-negative integers; ``[]`` for scalar rows.
``shards``
    One entry per shard, as many as ``shard_rows``:

    ``path``
        The shard's path relative to the dataset folder, with ``/``
        separators (rules: see Limits). It must stay inside the folder: when
        resolved, no symbolic link may lead outside it.
    ``bytes``
        The shard file's exact size in bytes, header included: at least the
        bytes of its data (``shard_rows[k]`` rows).
    ``checksum``
        ``"<algorithm>:<hex digest>"`` of the whole file's bytes, header
        included. npyseq writes ``xxh3_64`` (XXH3, 64 bits, seed 0, the
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
``"ragged"`` is ``true`` or ``false`` (absent: ``false``); ``true`` needs
``"version": 2``.

Limits
------
A reader refuses a manifest beyond any of these (npyseq: ``ManifestError``
naming the manifest, the field and the value found); npyseq's writers check
the names, dtypes, shapes and sizes they are given against them before
writing anything. Each is a constant of :mod:`npyseq.format.limits` unless
a module is named.

* ``MAX_MANIFEST_BYTES = 256 * 2**20``: the most bytes of ``manifest.json``,
  checked before parsing.
* ``MAX_COUNT = 2**62``: every integer (``rows``, the entries of
  ``shard_rows`` and ``shape``, ``bytes``, ``values``) is a JSON integer
  (``7``, not ``7.0``, ``"7"`` or ``true``) from 0 to ``MAX_COUNT``, a
  ``shard_rows`` entry at least 1. At most ``MAX_COUNT`` too: the bytes of one
  row (of one element of a ragged row), ``itemsize * prod(shape)``, and those
  of a ragged shard's values, ``values`` times that.
* ``MAX_ROW_DIMS = 32``: the most entries of ``shape``.
* ``MAX_NAME_LENGTH = 128``: an array name is 1 to ``MAX_NAME_LENGTH`` ASCII
  letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``.
* ``MAX_PATH_LENGTH = 4096``: the most characters of a ``path``. A path is
  made of components joined by ``/``, none of them empty, ``.`` or ``..``; it
  does not start with ``/``, has no ``\\`` and no NUL, and its second
  character is not ``:`` (a drive). No path appears twice in a manifest
  (values and offsets files of all arrays together).
* ``MAX_ALGORITHM_LENGTH = 32``, ``MAX_DIGEST_LENGTH = 128``: a
  ``checksum`` is an algorithm name of 1 to ``MAX_ALGORITHM_LENGTH``
  characters ``a-z``, ``0-9``, ``_``, then ``:``, then 1 to
  ``MAX_DIGEST_LENGTH`` lower-case hex digits. npyseq verifies only
  ``CHECKSUM_ALGORITHM = "xxh3_64"`` (:mod:`npyseq.format.npy`).
* ``LOGICAL_DTYPES`` (:mod:`npyseq.format.dtypes`): the ``logical_dtype``
  names, by width. 2 bytes: bfloat16. 1 byte: float8_e3m4, float8_e4m3,
  float8_e4m3b11fnuz, float8_e4m3fn, float8_e4m3fnuz, float8_e5m2,
  float8_e5m2fnuz, float8_e8m0fnu, float6_e2m3fn, float6_e3m2fn,
  float4_e2m1fn, int1, int2, int4, uint1, uint2, uint4. 4 bytes: complex32,
  bcomplex32.

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
   holds a dataset. It follows no symbolic link inside the folder.
5. Replacing a dataset: the new one is written to the folder
   ``<folder>.npyseq-new`` beside it, and the two folders are exchanged once
   its manifest is written (or, where they cannot be, the old one is renamed
   to ``<folder>.npyseq-old`` first). Array names ``manifest.json`` and names
   ending in ``.partial``, ``.partial.tmp``, ``.npyseq-new`` or ``.npyseq-old``
   are reserved (compared without case).

Compatibility
-------------
* Readers ignore keys they do not know, at every level. A writer may add
  keys only where ignoring them reads the dataset right: a key that changes
  the meaning of others needs a new version. Readers refuse versions they do
  not know (npyseq reads 1 and 2). Version 2 adds ragged arrays.
* ``"version": 2`` with no ragged array is valid, the same dataset as with 1.
  npyseq writes a manifest with no ragged array as version 1, byte-identical
  to what earlier writers wrote, so every npyseq reads it.
* A new checksum algorithm needs no new version: its checksums are valid,
  and readers report them as ones they cannot verify, not as a mismatch.
* The names a writer owns. Besides ``manifest.json`` and the files it
  names, npyseq's writers create ``.npyseq.lock`` (``LOCK_NAME``) and
  ``manifest.json.partial`` in the dataset folder, ``<shard>.partial``
  (``PARTIAL_SUFFIX``) and ``<shard>.partial.tmp`` (``TMP_SUFFIX``, a shard
  whose header is being rewritten) in array folders, and the folders
  ``<folder>.npyseq-new`` (``STAGING_SUFFIX``) and ``<folder>.npyseq-old``
  (``OLD_SUFFIX``) beside it; they name shards ``<array>/<k>.npy`` and
  ``<array>/<k>.offsets.npy``, ``k`` the shard number in at least 6 digits.
* What npyseq's writer deletes: only files a manifest names and temporary
  files named as above. In the dataset folder: its own lock and temporary
  files; those a killed run left directly in the folders of the arrays it
  publishes; a file at a path it writes that is not the shard it would
  write (step 3 of the protocol); and, when it replaces a dataset,
  ``manifest.json``, the files that manifest names and the temporary files
  beside them, then the folders left empty. In ``<folder>.npyseq-new`` and
  ``-old``, folders only npyseq writes, what an interrupted write left:
  every file named as above (numbered shards included) but, in ``-new``,
  those the new manifest names. It refuses to write (``ForeignFilesError``)
  rather than delete anything else: an overwrite of a folder holding what
  its manifest does not name, a ``-new`` or ``-old`` folder holding what is
  not named as above, a link or special file where it writes. A
  third-party writer should use these names as npyseq does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.lib import format as npy_format

from npyseq.errors import ManifestError
from npyseq.format.dtypes import check_logical_dtype, parse_dtype
from npyseq.format.limits import (
    MAX_COUNT,
    MAX_COUNT_TEXT,
    MAX_MANIFEST_BYTES,
    MAX_NAME_LENGTH,
    check_checksum,
    check_integer,
    check_relative_path,
    check_row_shape,
    is_array_name,
)
from npyseq.format.npy import row_bytes

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "READABLE_VERSIONS", "RAGGED_VERSION", "OFFSETS_DTYPE",
    "MANIFEST_NAME", "LOCK_NAME", "PARTIAL_SUFFIX", "TMP_SUFFIX", "STAGING_SUFFIX", "OLD_SUFFIX",
    "ArrayInfo", "Manifest", "ShardInfo", "read_manifest", "shard_offsets",
]

FORMAT_NAME = "npyseq"
FORMAT_VERSION = 2  # the newest version this npyseq reads and writes
READABLE_VERSIONS = (1, 2)
RAGGED_VERSION = 2  # the first version with ragged arrays
OFFSETS_DTYPE = np.dtype("<i8")

# The names a writer owns (the "Compatibility" section).
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".npyseq.lock"
PARTIAL_SUFFIX = ".partial"  # a file being written, renamed once complete
TMP_SUFFIX = PARTIAL_SUFFIX + ".tmp"  # a shard whose header is being rewritten
STAGING_SUFFIX = ".npyseq-new"  # where overwrite=True builds the new dataset
OLD_SUFFIX = ".npyseq-old"  # where the old one waits, where folders cannot be exchanged


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
        return row_bytes(self.dtype, self.shape)

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


def shard_offsets(shard_rows: Sequence[int]) -> np.ndarray:
    """Row offset at which each shard starts, plus the total: length ``n + 1``."""
    out = np.zeros(len(shard_rows) + 1, dtype=np.int64)
    np.cumsum(np.asarray(shard_rows, dtype=np.int64), out=out[1:])
    return out


# --- validation -----------------------------------------------------------


def _fail(source: str, message: str) -> ManifestError:
    return ManifestError(f"{source}: {message}")


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
    rows = check_integer(doc.get("rows"), "rows", source)
    shard_rows = doc.get("shard_rows")
    if not isinstance(shard_rows, list):
        raise _fail(source, f"shard_rows must be a list, found {shard_rows!r:.80}")
    shard_rows = tuple(check_integer(r, "shard_rows entry", source, minimum=1) for r in shard_rows)
    if sum(shard_rows) != rows:
        raise _fail(source, f"rows is {rows} but shard_rows add up to {sum(shard_rows)}")
    arrays_doc = doc.get("arrays")
    if not isinstance(arrays_doc, dict) or not arrays_doc:
        raise _fail(source, f"arrays must be a non-empty object, found {arrays_doc!r:.80}")
    seen_paths: set[str] = set()
    arrays = {name: _parse_array(name, spec, shard_rows, version, seen_paths, source)
              for name, spec in arrays_doc.items()}
    return Manifest(rows=rows, shard_rows=shard_rows, arrays=arrays)


def _parse_array(name: str, spec: Any, shard_rows: tuple[int, ...], version: int,
                 seen_paths: set[str], source: str) -> ArrayInfo:
    """One entry of ``arrays``; ``seen_paths``: the paths of the arrays before it (updated)."""
    if not is_array_name(name):
        raise _fail(source, f"array name {name!r:.80} is not allowed (a name is 1 to {MAX_NAME_LENGTH} "
                            "ASCII letters, digits, '_', '-' or '.', not starting with '.'; "
                            f"this one has {len(name)} characters)")
    where = f"array {name!r}"
    if not isinstance(spec, dict):
        raise _fail(source, f"{where} must be an object, found {spec!r:.80}")
    dtype = parse_dtype(spec.get("dtype"), f"{where} dtype", source)
    logical = spec.get("logical_dtype")
    if logical is not None and (not isinstance(logical, str) or not logical.isidentifier()):
        raise _fail(source, f"{where} logical_dtype must be null or a name, found {logical!r:.80}")
    try:
        check_logical_dtype(dtype, logical)
    except ManifestError as e:
        raise _fail(source, f"{where}: {e}") from None
    shape = check_row_shape(spec.get("shape"), f"{where} shape", source)
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
    if info.row_bytes > MAX_COUNT:
        raise _fail(source, f"{where} rows of shape {shape} are impossibly large: {info.row_bytes} "
                            f"bytes each, more than {MAX_COUNT_TEXT}")
    shards, values, offsets = [], [], []
    for k, s in enumerate(shards_doc):
        if not isinstance(s, dict):
            raise _fail(source, f"{where} shard {k} must be an object, found {s!r:.80}")
        if ragged:
            n = check_integer(s.get("values"), f"{where} shard {k} values", source)
            if n * info.row_bytes > MAX_COUNT:
                raise _fail(source, f"{where} shard {k} values ({n}) are impossibly many: "
                                    f"{n * info.row_bytes} bytes, more than {MAX_COUNT_TEXT}")
            values.append(n)
            off = s.get("offsets")
            if not isinstance(off, dict):
                raise _fail(source, f"{where} shard {k} offsets must be an object, found {off!r:.80}")
            offsets.append(_file_info(off, f"{where} shard {k} offsets", shard_rows[k] + 1,
                                      "offsets", OFFSETS_DTYPE.itemsize, where, seen_paths, source))
        count, unit = (n, "values") if ragged else (shard_rows[k], "rows")
        shards.append(_file_info(s, f"{where} shard {k}", count, unit, info.row_bytes, where,
                                 seen_paths, source))
    return dataclasses.replace(info, shards=tuple(shards), values=tuple(values), offsets=tuple(offsets))


def _file_info(s: dict, label: str, count: int, unit: str, unit_bytes: int, where: str,
               seen_paths: set, source: str) -> ShardInfo:
    """Validate one file entry: its path, its size (at least ``count`` units of data), its checksum."""
    path = check_relative_path(s.get("path"), source)
    if path in seen_paths:
        raise _fail(source, f"shard path {path!r} is listed twice")
    seen_paths.add(path)
    nbytes = check_integer(s.get("bytes"), f"{label} bytes", source)
    if nbytes < count * unit_bytes:
        raise _fail(
            source,
            f"{where} shard {path!r} is said to be {nbytes} bytes, less than the "
            f"{count * unit_bytes} bytes its {count} {unit} need",
        )
    checksum = check_checksum(s.get("checksum"), f"{where} shard {path!r}", source)
    return ShardInfo(path=path, bytes=nbytes, checksum=checksum)
