"""The dtypes of the npyseq format: what is stored, what is read back, what a cast may change.

* :func:`storage_dtype`, :func:`logical_dtype`, :data:`LOGICAL_DTYPES`: the
  ml_dtypes types (bfloat16, float8_*, int4 ...) that a ``.npy`` header cannot
  name are stored as the unsigned integer of their width, their name kept as
  the array's ``logical_dtype``; :func:`is_ml_dtype` tells them.
* :func:`parse_dtype`: a manifest's ``dtype`` (a ``.npy`` descr in JSON) as a
  numpy dtype, the reader's own parser.
* :func:`storable`: what the writers may store, so that the reader reads it
  back (checked before anything is written).
* :func:`cast_problem`: the casts a writer makes into an array's dtype.
"""

from __future__ import annotations

import inspect
import io
import json
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from npyseq.errors import InvalidArgumentError, ManifestError, NpyseqError, UnsupportedDtypeError
from npyseq.format.limits import MAX_COUNT, MAX_COUNT_TEXT, MAX_ROW_DIMS
from npyseq.format.npy import header_bytes, read_header_from, row_bytes

__all__ = [
    "LOGICAL_DTYPES",
    "is_ml_dtype",
    "storage_dtype",
    "check_logical_dtype",
    "logical_dtype",
    "parse_dtype",
    "storable",
    "cast_problem",
]

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


def is_ml_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is an ml_dtypes type (without importing ml_dtypes)."""
    # ml_dtypes types are numpy user dtypes whose scalar type lives in the
    # ml_dtypes module.
    return getattr(dtype.type, "__module__", "").startswith("ml_dtypes")


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
    if is_ml_dtype(dtype):
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
    if dtype is None or not is_ml_dtype(dtype) or dtype.itemsize != stored.itemsize:
        raise ManifestError(
            f"logical_dtype {logical!r} is not a dtype of the installed ml_dtypes "
            f"{getattr(ml_dtypes, '__version__', '')}; upgrade ml_dtypes to read this dataset"
        )
    return dtype


def parse_dtype(value: Any, what: str, source: str) -> np.dtype:
    """The dtype a manifest's ``dtype`` field (``value``, as JSON parsed it) describes;
    a :class:`ManifestError` naming ``source`` and ``what`` if it is none, or holds
    Python objects, or has elements of 0 bytes."""
    try:
        dtype = npy_format.descr_to_dtype(_descr_from_json(value))
    except Exception:
        raise ManifestError(f"{source}: {what} is not a valid .npy dtype description: {value!r:.80}") from None
    if dtype.hasobject:
        raise ManifestError(f"{source}: {what} {value!r:.80} holds Python objects, which npyseq refuses")
    if dtype.itemsize == 0:
        raise ManifestError(f"{source}: {what} {value!r:.80} has elements of 0 bytes, which npyseq refuses")
    return dtype


def _descr_from_json(value: Any) -> Any:
    """JSON turns the tuples of a structured descr into lists; undo that."""
    if isinstance(value, list):
        return [tuple(_descr_from_json(v) if isinstance(v, list) else v for v in field)
                if isinstance(field, list) else field for field in value]
    return value


# --- what the reader can read back ----------------------------------------------------


def storable(name: str, dtype: np.dtype, row_shape: tuple[int, ...]) -> tuple[np.dtype, str | None]:
    """``storage_dtype`` of an array whose rows have ``row_shape`` (a ragged
    array's element shape), once sure that the reader opens what the writers
    would write for it; else an error, raised before anything is written.

    The checks replay the reader's: the dtype description must come back
    from the manifest's JSON as the same dtype, and a shard's ``.npy`` header
    (for the largest row count a shard can have) must be writable in format
    1.0 or 2.0 (latin-1 field names) and parse back, within numpy's
    ``max_header_size``, as the same dtype and shape.
    """
    store, logical = storage_dtype(dtype, name)
    row_shape = tuple(row_shape)
    if len(row_shape) > MAX_ROW_DIMS:
        raise InvalidArgumentError(
            f"array {name!r}: rows of shape {row_shape} have {len(row_shape)} dimensions; npyseq "
            f"stores rows of at most {MAX_ROW_DIMS} dimensions (its reader refuses more). "
            "Reshape the rows (e.g. merge axes) before writing them")
    size = row_bytes(store, row_shape)
    if size > MAX_COUNT:
        raise InvalidArgumentError(
            f"array {name!r}: one row of shape {row_shape} and dtype {_describe(dtype)} would take "
            f"{size} bytes, more than the {MAX_COUNT_TEXT} a manifest records")
    refused = f"array {name!r} has dtype {_describe(dtype)}, which npyseq cannot store so that it reads it back"
    if _has_titles(store):
        # The manifest's JSON would hold [title, name] lists where numpy needs
        # tuples: a reader working from the format's specification would fail.
        raise UnsupportedDtypeError(
            f"{refused}: its fields have titles, which npyseq does not store; drop them "
            "(np.dtype({'names': ..., 'formats': ...}) without 'titles') before writing")
    try:
        descr = json.loads(json.dumps(npy_format.dtype_to_descr(store)))
        same = parse_dtype(descr, "dtype", "manifest.json") == store
    except (TypeError, ValueError):  # not JSON, or a ManifestError
        same = False
    if not same:
        raise UnsupportedDtypeError(
            f"{refused}: its description does not survive manifest.json (JSON) unchanged; "
            "use plain field names and formats")
    shape = (MAX_COUNT,) + row_shape
    try:
        header = header_bytes(store, shape)
    except UnicodeEncodeError as e:
        raise UnsupportedDtypeError(
            f"{refused}: a .npy header (format 1.0 and 2.0, which np.load and npyseq read) holds "
            f"only latin-1 text, and {e.object[e.start:e.end]!r} in its field names is not latin-1; "
            "rename the fields") from None
    try:
        found_shape, fortran, found = read_header_from(io.BytesIO(header))
    except ValueError as e:
        limit = _max_header_size()
        text = len(header) - (10 if header[6] == 1 else 12)  # magic, version and length come first
        raise UnsupportedDtypeError(
            f"{refused}: its shards' .npy header "
            + (f"would hold {text} characters, more than the {limit} that np.load and npyseq read "
               "(numpy's max_header_size); use fewer or shorter-named fields, or split the "
               "struct into several arrays" if text > limit else f"does not parse back ({e})")) from None
    if found != store or tuple(found_shape) != shape or fortran:
        raise UnsupportedDtypeError(f"{refused}: its .npy header reads back as dtype {found}")
    if logical is not None:
        try:
            logical_dtype(store, logical)
        except NpyseqError as e:
            raise UnsupportedDtypeError(f"{refused}: the reader refuses its logical dtype ({e})") from None
    return store, logical


def _has_titles(dtype: np.dtype) -> bool:
    """Whether a field of ``dtype`` (or of a struct nested in it) has a title."""
    if dtype.subdtype is not None:
        return _has_titles(dtype.subdtype[0])
    if dtype.fields is None:
        return False
    return any(len(spec) > 2 or _has_titles(spec[0]) for spec in dtype.fields.values())


def _describe(dtype: np.dtype) -> str:
    """A dtype as a message names it: in full unless it is a long struct."""
    text = str(dtype)
    if len(text) <= 120:
        return text
    return f"{text[:80]}... (a struct of {len(dtype.names or ())} fields)"


def _max_header_size() -> int:
    """The longest ``.npy`` header numpy reads by default (10000 in numpy 1.24 to 2.x)."""
    return inspect.signature(npy_format.read_array_header_1_0).parameters["max_header_size"].default


# --- casts ----------------------------------------------------------------------------


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
    if kind is None and is_ml_dtype(dtype):
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
