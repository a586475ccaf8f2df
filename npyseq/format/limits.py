"""The limits of the npyseq format: each a named constant, and the checks that enforce them.

The "Limits" section of :mod:`npyseq.format.manifest` (the specification)
states every one of them with its value. The reader refuses a manifest beyond
a limit with a :class:`~npyseq.errors.ManifestError` naming the manifest, the
field and the value found; the writers refuse, before they write anything, an
array they could only describe beyond one. Both import the constants from here.
"""

from __future__ import annotations

import re
from typing import Any

from npyseq.errors import ManifestError

__all__ = [
    "MAX_COUNT",
    "MAX_COUNT_TEXT",
    "MAX_ROW_DIMS",
    "MAX_MANIFEST_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_ALGORITHM_LENGTH",
    "MAX_DIGEST_LENGTH",
    "ARRAY_NAME_RE",
    "CHECKSUM_RE",
    "is_array_name",
    "check_integer",
    "check_row_shape",
    "check_relative_path",
    "check_checksum",
]

# The largest integer a manifest records (rows, bytes, values, shape entries),
# and the largest size in bytes of one row (one element of a ragged row) and of
# one ragged shard's values: 2**62 keeps every sum and product npyseq computes
# from them inside int64.
MAX_COUNT = 2**62
# The most dimensions one row may have (the array has one more, the rows).
MAX_ROW_DIMS = 32
# A manifest bigger than this is refused before parsing: a dataset of a million
# shards still fits, a hostile file cannot exhaust memory.
MAX_MANIFEST_BYTES = 256 * 2**20
# Array names: 1 to this many ASCII letters, digits, '_', '-' and '.', not
# starting with '.' (an array's name is the name of its folder).
MAX_NAME_LENGTH = 128
# The longest shard path, in characters.
MAX_PATH_LENGTH = 4096
# A checksum is "<algorithm>:<hex digest>": an algorithm name of 1 to 32
# characters [a-z0-9_], and 1 to 128 lower-case hex digits.
MAX_ALGORITHM_LENGTH = 32
MAX_DIGEST_LENGTH = 128

# Matched with fullmatch: "x\n" is not a name, "x" is.
ARRAY_NAME_RE = re.compile(rf"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{{0,{MAX_NAME_LENGTH - 1}}}")
CHECKSUM_RE = re.compile(rf"([a-z0-9_]{{1,{MAX_ALGORITHM_LENGTH}}}):([0-9a-f]{{1,{MAX_DIGEST_LENGTH}}})")

MAX_COUNT_TEXT = f"2**{MAX_COUNT.bit_length() - 1}"  # how messages write MAX_COUNT


def _fail(source: str, message: str) -> ManifestError:
    return ManifestError(f"{source}: {message}")


def is_array_name(name: Any) -> bool:
    """Whether ``name`` is an array name the format allows (and so an array folder's name)."""
    return isinstance(name, str) and ARRAY_NAME_RE.fullmatch(name) is not None


def check_integer(value: Any, what: str, source: str, minimum: int = 0) -> int:
    """``value`` if it is a JSON integer (not a float, not a bool) in ``[minimum, MAX_COUNT]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, f"{what} must be an integer, found {value!r:.80}")
    if value < minimum or value > MAX_COUNT:
        raise _fail(source, f"{what} must be in [{minimum}, {MAX_COUNT_TEXT}], found {value}")
    return value


def check_row_shape(value: Any, what: str, source: str) -> tuple[int, ...]:
    """A row shape: a list of at most ``MAX_ROW_DIMS`` integers in ``[0, MAX_COUNT]``."""
    if not isinstance(value, list) or len(value) > MAX_ROW_DIMS:
        found = (f"{len(value)} entries" if isinstance(value, list) else f"{value!r:.80}")
        raise _fail(source, f"{what} must be a list of at most {MAX_ROW_DIMS} ints, found {found}")
    return tuple(check_integer(d, f"{what} entry", source) for d in value)


def check_relative_path(path: Any, source: str) -> str:
    """Refuse a shard path that could leave the dataset folder, or longer than ``MAX_PATH_LENGTH``."""
    if not isinstance(path, str) or not path:
        raise _fail(source, f"shard path must be a non-empty string, found {path!r:.80}")
    if len(path) > MAX_PATH_LENGTH:
        raise _fail(source, f"shard path {path!r:.80} has {len(path)} characters, more than the "
                            f"{MAX_PATH_LENGTH} a shard path may have")
    parts = path.split("/")
    if (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or (len(path) > 1 and path[1] == ":")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise _fail(
            source,
            f"shard path {path!r:.200} is not a plain relative path inside the dataset "
            "folder (no leading '/', no '..' or '.' parts, '/' separators)",
        )
    return path


def check_checksum(value: Any, what: str, source: str) -> str:
    """``"<algorithm>:<hex digest>"`` as :data:`CHECKSUM_RE` allows (any algorithm)."""
    if not isinstance(value, str) or CHECKSUM_RE.fullmatch(value) is None:
        size = f"{len(value)} characters; " if isinstance(value, str) else ""
        raise _fail(source, f"{what} checksum is malformed: {value!r:.80} ({size}expected "
                            f"'<algorithm>:<hex digest>', 1-{MAX_ALGORITHM_LENGTH} characters "
                            f"[a-z0-9_], ':', 1-{MAX_DIGEST_LENGTH} lower-case hex digits)")
    return value
