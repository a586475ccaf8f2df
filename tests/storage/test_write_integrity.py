"""The writers never publish misaligned, narrowed or unreadable data (issue 11: items 6, 10, 15, 19).

* A ``ShardWriter.append`` that fails part-way stops the writer: no later
  ``append`` or ``close`` publishes anything.
* A later batch is cast to an array's dtype only when no value can change.
* What the writers accept, the reader opens; what it could not, they refuse
  before writing anything, for every kind of source.
* Numeric arguments and damaged ``.npz`` members give npyseq errors that name
  the argument or the archive and member.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest

import npyseq
from npyseq.storage import output, shard_writer
from npyseq.cli import main
from npyseq.errors import (
    IncompleteDatasetError,
    InvalidArgumentError,
    UnsupportedDtypeError,
    WriteFailedError,
)

from _helpers import LOCK_NAME, assert_same_array, concat_shards, tree_bytes

# --- failed appends (item 6) ------------------------------------------------------


class _FailingFile:
    """A shard file whose ``nth`` write raises ``error`` (the bytes are not written)."""

    def __init__(self, f, error: BaseException | None, nth: int):
        self._f, self._error, self._left = f, error, nth

    def write(self, data):
        self._left -= 1
        if self._error is not None and self._left == 0:
            raise self._error
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def fail_nth_write(monkeypatch, relative: str, nth: int, error: BaseException) -> None:
    """Make the ``nth`` write (the header is write 1) to the shard file ``relative``.partial fail."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(os.sep + relative.replace("/", os.sep) + ".partial") and "w" in mode:
            return _FailingFile(f, error, nth)
        return f

    real_create = shard_writer.create_file

    def fake_create(path, root):  # how the writer creates its shard files (never through a link)
        f = real_create(path, root)
        if str(path).endswith(os.sep + relative.replace("/", os.sep) + ".partial"):
            return _FailingFile(f, error, nth)
        return f

    monkeypatch.setattr(shard_writer, "open", fake_open, raising=False)
    monkeypatch.setattr(shard_writer, "create_file", fake_create)


def efbig() -> OSError:
    return OSError(errno.EFBIG, os.strerror(errno.EFBIG))


# Arrays of a writer: fixed ("f") or ragged ("r"), in append order.
LAYOUTS = {"fixed": "fff", "mixed": "frf", "ragged": "rr", "ragged-first": "rff"}


def batch(layout: str, start: int, stop: int) -> dict:
    """Rows [start, stop) of every array of ``layout``: arrays a0, a1, ..."""
    out = {}
    for i, kind in enumerate(layout):
        if kind == "f":
            out[f"a{i}"] = np.arange(start, stop, dtype=np.int64) * 10 + i
        else:
            out[f"a{i}"] = [np.full(r % 3 + 1, r * 10 + i, np.int32) for r in range(start, stop)]
    return out


def assert_nothing_published(root) -> None:
    names = sorted(tree_bytes(root))
    assert "manifest.json" not in names
    assert not [n for n in names if n.endswith((".partial", ".tmp"))], names
    assert LOCK_NAME not in names
    with pytest.raises(IncompleteDatasetError, match=re.escape(f"{root}: incomplete dataset")):
        npyseq.open_shards(root)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("error", ["EFBIG", "RuntimeError", "KeyboardInterrupt"])
def test_a_failed_append_stops_the_writer(tmp_path, monkeypatch, layout, position, error):
    root = tmp_path / "ds"
    index = {"first": 0, "middle": len(layout) // 2, "last": len(layout) - 1}[position]
    name = f"a{index}"
    raised = {"EFBIG": efbig(), "RuntimeError": RuntimeError("injected"),
              "KeyboardInterrupt": KeyboardInterrupt()}[error]
    # Write 1 is the header, 2 the first append's rows, 3 this array's rows of the second.
    fail_nth_write(monkeypatch, f"{name}/000000.npy", 3, raised)
    w = npyseq.ShardWriter(root, rows=100)
    w.append(**batch(layout, 0, 2))
    partial = root / name / "000000.npy.partial"
    failed = f"append() of rows 2 to 5 failed writing {partial}"
    if error == "EFBIG":
        with pytest.raises(WriteFailedError, match=re.escape(
                f"{root}: {failed} (EFBIG: File too large). The writer stopped and publishes "
                "nothing: no manifest was written")):
            w.append(**batch(layout, 2, 5))
    else:
        with pytest.raises(type(raised)):
            w.append(**batch(layout, 2, 5))
    reason = {"EFBIG": "EFBIG: File too large", "RuntimeError": "RuntimeError: injected",
              "KeyboardInterrupt": "KeyboardInterrupt"}[error]
    assert_nothing_published(root)  # stopped at once: no .partial, no lock left

    # A caller that skips the bad batch and goes on gets nothing published.
    for action, what in ((lambda: w.append(**batch(layout, 5, 7)), "append()"), (w.close, "close()"),
                         (w.close, "close()")):
        with pytest.raises(WriteFailedError, match=re.escape(
                f"{root}: {what} refused: an earlier {failed} ({reason}), so the arrays may not hold "
                "the same rows. The writer stopped and publishes nothing")):
            action()
    assert_nothing_published(root)


def test_a_failure_after_a_shard_rollover_in_the_batch(tmp_path, monkeypatch):
    """Shard 0 is finished with rows of the failing batch; shard 1 fails in its second array."""
    root = tmp_path / "ds"
    fail_nth_write(monkeypatch, "a2/000001.npy", 2, efbig())  # after its header
    w = npyseq.ShardWriter(root, rows=4)
    w.append(**batch("frf", 0, 3))
    with pytest.raises(WriteFailedError, match=re.escape(
            f"{root}: append() of rows 3 to 9 failed writing {root / 'a2' / '000001.npy.partial'} "
            "(EFBIG: File too large)")):
        w.append(**batch("frf", 3, 9))
    # Shard 0 (rows 0-3, one from the failed batch) is complete on disk, but never published.
    assert sorted(os.listdir(root / "a1")) == ["000000.npy", "000000.offsets.npy"]
    with pytest.raises(WriteFailedError, match=re.escape(f"{root}: close() refused")):
        w.close()
    assert_nothing_published(root)


def test_a_failure_while_finishing_a_shard(tmp_path, monkeypatch):
    """The rename of one array's shard fails after the arrays before it were renamed."""
    root = tmp_path / "ds"
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(src).endswith(os.path.join("a1", "000000.npy.partial")):
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(src))
        return real_replace(src, dst, *args, **kwargs)

    w = npyseq.ShardWriter(root, rows=4)
    w.append(**batch("frf", 0, 1))
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteFailedError, match=re.escape(
            f"{root}: append() of rows 1 to 6 failed writing {root / 'a1' / '000000.npy.partial'} "
            "(EIO: Input/output error)")):
        w.append(**batch("frf", 1, 6))
    monkeypatch.undo()
    assert (root / "a0" / "000000.npy").exists() and not (root / "a1" / "000000.npy").exists()
    with pytest.raises(WriteFailedError, match="close\\(\\) refused: an earlier append\\(\\) of rows 1 to 6"):
        w.close()
    assert_nothing_published(root)


@pytest.mark.parametrize("where", ["fsync", "manifest"])
def test_a_failure_in_close_publishes_nothing(tmp_path, monkeypatch, where):
    root = tmp_path / "ds"
    w = npyseq.ShardWriter(root, rows=4)
    w.append(**batch("frf", 0, 6))

    def fail(*args, **kwargs):
        if where == "fsync":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        raise RuntimeError("manifest lost")

    monkeypatch.setattr(*((os, "fsync") if where == "fsync" else (output, "write_manifest")), fail)
    if where == "fsync":
        with pytest.raises(WriteFailedError, match=re.escape(
                f"{root}: close() failed writing {root / 'a0' / '000001.npy.partial'} (EIO: Input/output error)")):
            w.close()
    else:
        with pytest.raises(RuntimeError, match="manifest lost"):
            w.close()
    monkeypatch.undo()
    with pytest.raises(WriteFailedError, match=re.escape(f"{root}: close() refused: an earlier close() failed")):
        w.close()
    assert_nothing_published(root)


def test_a_failed_append_in_a_with_block(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    fail_nth_write(monkeypatch, "a1/000000.npy", 3, efbig())
    with pytest.raises(WriteFailedError, match="append\\(\\) of rows 2 to 4 failed"):
        with npyseq.ShardWriter(root, rows=100) as w:
            w.append(**batch("ff", 0, 2))
            w.append(**batch("ff", 2, 4))
    assert_nothing_published(root)


_FSIZE_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys
    import numpy as np, npyseq

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit get EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    root, out = sys.argv[1], {}
    w = npyseq.ShardWriter(root, rows=1000)
    w.append(x=np.arange(2), y=np.zeros((2, 1000)))      # y: 16 kB of 64
    try:
        w.append(x=np.arange(10), y=np.ones((10, 1000)))  # y would pass 64 kB, after x was written
    except Exception as e:
        out["append"] = [type(e).__name__, str(e)]
    try:  # the caller skips the bad batch and goes on
        w.append(x=np.arange(1), y=np.ones((1, 1000)))
    except Exception as e:
        out["next"] = [type(e).__name__, str(e)]
    try:
        w.close()
    except Exception as e:
        out["close"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


@pytest.mark.timeout(120)
def test_a_real_file_size_limit(tmp_path):
    """EFBIG from RLIMIT_FSIZE, as the issue reported it, in a process of its own."""
    root = tmp_path / "ds"
    script = tmp_path / "fsize.py"
    script.write_text(_FSIZE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(npyseq.__file__)), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True,
                          timeout=100, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["append"][0] == "WriteFailedError"
    assert out["append"][1].startswith(
        f"{root}: append() of rows 2 to 12 failed writing {root / 'y' / '000000.npy.partial'} "
        "(EFBIG: File too large)"), out
    for key, what in (("next", "append()"), ("close", "close()")):
        assert out[key][0] == "WriteFailedError"
        assert out[key][1].startswith(f"{root}: {what} refused: an earlier append() of rows 2 to 12 failed")
    assert_nothing_published(root)


def test_a_refused_first_append_writes_nothing_and_the_writer_stays_usable(tmp_path):
    root = tmp_path / "ds"
    w = npyseq.ShardWriter(root, rows=4)
    with pytest.raises(UnsupportedDtypeError, match="array 'o' has dtype object"):
        w.append(x=np.arange(3), o=np.array([None, 1, 2], dtype=object))
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "append() arrays must have the same number of rows, got {'x': 3, 'y': 2}")):
        w.append(x=np.arange(3), y=np.zeros((2, 2), np.float32))
    assert sorted(os.listdir(root)) == [LOCK_NAME]  # no array folder yet
    w.append(x=np.arange(3, dtype=np.int8), y=np.ones((3, 5), np.float32))  # the first batch decides
    ds = w.close()
    assert ds.names == ["x", "y"]
    assert_same_array(ds["x"][:], np.arange(3, dtype=np.int8))
    assert_same_array(ds["y"][:], np.ones((3, 5), np.float32))


# --- casts that could change values (item 10) -----------------------------------------

NARROWING = [
    ("int8", np.array([300, -200, 5]), "it holds 300, -200, outside the int8 range -128 to 127"),
    ("int64", np.array([2**64 - 1], np.uint64),
     "it holds 18446744073709551615, outside the int64 range -9223372036854775808 to 9223372036854775807"),
    ("uint8", np.array([3, -1], np.int16), "it holds -1, outside the uint8 range 0 to 255"),
    ("float16", np.array([1e10]), "a cast from float64 to float16 can change values"),
    ("float32", np.array([1e300]), "a cast from float64 to float32 can change values"),
    ("float32", np.array([0.1]), "a cast from float64 to float32 can change values"),
    ("int32", np.array([1.5]), "a cast from float64 to int32 can change values"),
    ("int64", np.array([2.0], np.float32), "a cast from float32 to int64 can change values"),
    ("float64", np.array([2**53 + 1]),
     "a cast from int64 to float64 can change values (float64 holds integers exactly only up to 2**53)"),
    ("float32", np.array([2**24 + 1], np.int32), "a cast from int32 to float32 can change values"),
    ("S3", np.array([b"abcde"]), "a cast from |S5 to |S3 can change values"),
    ("U3", np.array([1]), "a cast from int64 to <U3 can change values"),
    ("U21", np.array([1]), "a cast from int64 to <U21 changes the kind of data"),
    ("bool", np.array([2]), "a cast from int64 to bool can change values"),
    (ml_dtypes.bfloat16, np.array([1.1], np.float32), "a cast from float32 to bfloat16 can change values"),
    ("complex64", np.array([1 + 1j]), "a cast from complex128 to complex64 can change values"),
]

EXACT = [
    ("int8", np.arange(10)),                      # int64 values that fit
    ("uint8", np.array([0, 255], np.int64)),
    ("int64", np.array([-5, 7], np.int32)),
    ("int64", np.array([2**63 - 1], np.uint64)),  # uint64 values that fit
    ("float64", np.array([0.1, np.inf, np.nan], np.float32)),
    ("float32", np.array([-32768, 32767], np.int16)),
    ("float64", np.array([2**31 - 1], np.int32)),
    ("int8", np.array([True, False])),
    ("complex128", np.array([1.5])),
    ("S5", np.array([b"ab"])),
    ("datetime64[ms]", np.array(["2024-01-02T03:04:05"], "datetime64[s]")),
    (ml_dtypes.bfloat16, np.array([-128, 127], np.int8)),
]


@pytest.mark.parametrize("dtype, later, reason", NARROWING, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_a_cast_that_could_change_values_is_refused(tmp_path, dtype, later, reason):
    dtype = np.dtype(dtype)
    first = np.zeros(2, dtype)
    w = npyseq.ShardWriter(tmp_path / "ds", rows=4)
    w.append(x=first)
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"append(): array 'x' must have dtype {dtype}, got {later.dtype}: {reason}. The writer casts "
            f"a batch only when no value can change; cast it yourself (.astype({str(dtype)!r}))")):
        w.append(x=later)
    ds = w.close()
    assert_same_array(ds["x"][:], first)  # the refused batch wrote nothing


@pytest.mark.parametrize("dtype, later", EXACT, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_a_cast_that_keeps_every_value_is_done(tmp_path, dtype, later):
    dtype = np.dtype(dtype)
    with npyseq.ShardWriter(tmp_path / "ds", rows=4) as w:
        w.append(x=np.zeros(1, dtype))
        w.append(x=later)
    got = w.dataset["x"][:]
    assert got.dtype == dtype
    assert_same_array(got[1:], later.astype(dtype))
    # Every value came through unchanged: it casts back to the batch exactly.
    back = (got[1:].real if dtype.kind == "c" else got[1:]).astype(later.dtype)
    assert back.tobytes() == later.tobytes()


def test_ragged_rows_of_a_narrower_dtype_are_refused(tmp_path):
    reason = ("array 't': row 1 has dtype int64, expected int8 like the rows before it: it holds 300, "
              "outside the int8 range -128 to 127. Rows are cast only when no value can change")
    rows = [np.array([1, 2], np.int8), np.array([300, 4])]
    with pytest.raises(InvalidArgumentError, match=re.escape(reason)):
        npyseq.write_shards(tmp_path / "a", {"t": rows}, progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(InvalidArgumentError, match=re.escape(reason)):
        npyseq.write_shards(tmp_path / "b", {"t": iter(rows)}, progress=False)
    assert not (tmp_path / "b").exists()
    w = npyseq.ShardWriter(tmp_path / "c", rows=4)
    w.append(t=[np.array([1, 2], np.int8)])
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't': row 0 has dtype float64, expected int8 like the rows before it: a cast from "
            "float64 to int8 can change values")):
        w.append(t=[np.array([1.0])])
    w.append(t=[np.array([3, 100])])  # int64 values that fit int8
    ds = w.close()
    assert [r.tolist() for r in ds["t"][:]] == [[1, 2], [3, 100]]
    assert ds["t"][1].dtype == np.int8


# --- what the reader could not open is refused before writing (item 15) -----------------


def _fields(n: int, prefix: str = "field_") -> np.dtype:
    return np.dtype([(f"{prefix}{i:04d}", "<f4") for i in range(n)])


def _header_text(dtype, row_shape) -> int:
    """Characters of the dict of the header of a shard of 2**62 rows (what numpy limits)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": (2**62,) + row_shape})
    return len(buf.getvalue()) - 10


def _most_fields() -> int:
    """The most ``field_NNNN`` float32 fields whose shard header numpy still reads."""
    n = 1
    while _header_text(_fields(n + 1), ()) <= 10000:
        n += 1
    return n


REFUSED_ROWS = {
    "33 dims": (np.zeros((2,) + (1,) * 33, np.float32), InvalidArgumentError,
                "array 'x': rows of shape (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, "
                "1, 1, 1, 1, 1, 1, 1, 1, 1, 1) have 33 dimensions; npyseq stores rows of at most 32 dimensions"),
    "600 fields": (np.zeros(2, _fields(600)), UnsupportedDtypeError,
                   "array 'x' has dtype [('field_0000', '<f4'), ('field_0001', '<f4'), ('field_0002', '<f4'), "
                   "('field_00... (a struct of 600 fields), which npyseq cannot store so that it reads it back: "
                   f"its shards' .npy header would hold {_header_text(_fields(600), ())} characters, more "
                   "than the 10000 that np.load and npyseq read (numpy's max_header_size)"),
    "non-latin-1 name": (np.zeros(2, [("名前", "<f4"), ("b", "<i2")]), UnsupportedDtypeError,
                         "array 'x' has dtype [('名前', '<f4'), ('b', '<i2')], which npyseq cannot store so that "
                         "it reads it back: a .npy header (format 1.0 and 2.0, which np.load and npyseq read) "
                         "holds only latin-1 text, and '名前' in its field names is not latin-1; rename the fields"),
    "titles": (np.zeros(2, np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f4"], "titles": ["A title", None]})),
               UnsupportedDtypeError,
               "array 'x' has dtype [(('A title', 'a'), '<i4'), ('b', '<f4')], which npyseq cannot store so that "
               "it reads it back: its fields have titles, which npyseq does not store; drop them"),
    "nested titles": (np.zeros(2, [("p", np.dtype({"names": ["q"], "formats": ["<i2"], "titles": ["Q title"]}), (2,))]),
                      UnsupportedDtypeError, "its fields have titles, which npyseq does not store"),
}

SOURCE_KINDS = ["array", "npy", "raw", "npz", "ragged list", "RaggedSource", "iterable", "ShardWriter"]


def _write(kind: str, root, values: np.ndarray, tmp_path):
    """Write ``values`` (rows) as array ``x`` of ``root`` from a source of ``kind``, beside ``y``."""
    y = np.arange(len(values))
    if kind == "array":
        return npyseq.write_shards(root, {"x": values, "y": y}, progress=False)
    if kind == "npy":
        np.save(tmp_path / "x.npy", values)
        return npyseq.write_shards(root, {"x": tmp_path / "x.npy", "y": y}, progress=False)
    if kind == "raw":
        (tmp_path / "x.bin").write_bytes(values.tobytes())
        src = npyseq.RawSource(str(tmp_path / "x.bin"), values.dtype, values.shape[1:])
        return npyseq.write_shards(root, {"x": src, "y": y}, progress=False)
    if kind == "npz":
        np.savez_compressed(tmp_path / "a.npz", x=values)
        return npyseq.write_shards(root, {"x": npyseq.NpzMember(str(tmp_path / "a.npz"), "x.npy"), "y": y},
                                   progress=False)
    rows = [values[i:i + 1] for i in range(len(values))]  # ragged rows of one element each
    if kind == "ragged list":
        return npyseq.write_shards(root, {"x": rows, "y": y}, progress=False)
    if kind == "RaggedSource":
        src = npyseq.RaggedSource(values, lengths=np.ones(len(values), np.int64))
        return npyseq.write_shards(root, {"x": src, "y": y}, progress=False)
    if kind == "iterable":
        return npyseq.write_shards(root, {"x": iter(rows), "y": y}, progress=False)
    assert kind == "ShardWriter"
    with npyseq.ShardWriter(root, rows=4) as w:
        w.append(x=values, y=y)
    return w.dataset


@pytest.mark.parametrize("case", REFUSED_ROWS, ids=str)
@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_what_the_reader_refuses_is_refused_before_writing(tmp_path, kind, case):
    values, error, message = REFUSED_ROWS[case]
    if kind in ("npy", "npz") and case == "600 fields":
        # np.save writes the header, but np.load (and so the writer's source) refuses it.
        error, message = InvalidArgumentError, "Header info length"
    if kind == "npz" and case.startswith("non-latin-1"):
        # np.savez writes such a header in format 3.0, which the writer's source refuses.
        error, message = InvalidArgumentError, "is not a .npy member (unsupported .npy format version (3, 0)"
    root = tmp_path / "ds"
    with pytest.raises(error, match=re.escape(message)):
        _write(kind, root, values, tmp_path)
    if kind == "ShardWriter":
        assert os.listdir(root) == []  # the constructor made the folder; nothing went into it
    else:
        assert not root.exists()


ACCEPTED_ROWS = {
    "32 dims": lambda: np.arange(6, dtype=np.float32).reshape((6,) + (1,) * 32),
    "most fields": lambda: np.arange(3 * _most_fields(), dtype=np.float32).view(_fields(_most_fields())),
    "latin-1 names": lambda: np.array([(1.5, 2), (3.5, 4)], [("café", "<f4"), ("ñ", ">i2")]),
    "sub-arrays": lambda: np.array([(1, (2.5, 3.5)), (4, (5.5, 6.5))], [("a", "<i4"), ("b", "<f4", (2,))]),
    "nested struct": lambda: np.zeros(3, [("p", [("q", "<i2"), ("r", "S2", (2,))]), ("s", "<u1")]),
}


@pytest.mark.parametrize("case", ACCEPTED_ROWS, ids=str)
@pytest.mark.parametrize("kind", ["array", "npy", "ragged list", "ShardWriter"])
def test_what_the_writer_accepts_near_the_limits_the_reader_opens(tmp_path, kind, case):
    values = ACCEPTED_ROWS[case]()
    ds = _write(kind, tmp_path / "ds", values, tmp_path)
    again = npyseq.open_shards(tmp_path / "ds", verify="checksums")
    assert again["x"].dtype == values.dtype
    if kind == "ragged list":
        rows = again["x"][:]
        assert [r.tobytes() for r in rows] == [values[i:i + 1].tobytes() for i in range(len(values))]
    else:
        assert_same_array(again["x"][:], values)
        assert_same_array(ds["x"][:], values)
        assert concat_shards(tmp_path / "ds", "x").tobytes() == values.tobytes()  # plain np.load


def test_the_most_fields_is_the_limit():
    """The accepted struct above is the largest of its kind: one more field is refused."""
    n = _most_fields()
    assert 400 < n < 600
    with pytest.raises(UnsupportedDtypeError, match="more than the 10000 that np.load and npyseq read"):
        npyseq.write_shards("/nonexistent/never-written", {"x": np.zeros(1, _fields(n + 1))}, progress=False)


# --- numeric arguments and damaged .npz members (item 19) ------------------------------

BIG = 10**400
BIG_TEXT = "1" * 400


def _shown(value) -> str:
    text = repr(value)
    return f"{text[:40]}... ({len(text)} characters)"


BAD_NUMBERS = [
    (dict(shard_size=BIG_TEXT), f"shard_size must be at most 2**62 bytes (4.6 EB; the largest size a manifest "
                                f"records), got {_shown(BIG_TEXT)}"),
    (dict(shard_size=BIG), f"shard_size must be at most 2**62 bytes (4.6 EB; the largest size a manifest "
                           f"records), got {_shown(BIG)}"),
    (dict(shard_size=f"{2**62 + 1}"), f"shard_size must be at most 2**62 bytes (4.6 EB; the largest size a "
                                      f"manifest records), got '{2**62 + 1}'"),
    (dict(shard_size="4194305TiB"), "shard_size must be at most 2**62 bytes"),
    (dict(rows=BIG), f"rows must be at most 2**62, got {_shown(BIG)}"),
    (dict(rows=2**62 + 1), f"rows must be at most 2**62, got {2**62 + 1}"),
    (dict(jobs=BIG), f"jobs must be at most 1024, got {_shown(BIG)}"),
    (dict(jobs=1025), "jobs must be at most 1024, got 1025"),
]


@pytest.mark.parametrize("kwargs, message", BAD_NUMBERS)
def test_numeric_arguments_out_of_range_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        npyseq.write_shards(tmp_path / "ds", {"x": np.arange(3)}, progress=False, **kwargs)
    assert not (tmp_path / "ds").exists()
    if "jobs" not in kwargs:
        with pytest.raises(InvalidArgumentError, match=re.escape(message)):
            npyseq.ShardWriter(tmp_path / "w", **kwargs)
        assert not (tmp_path / "w").exists()
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):  # the streamed path
        npyseq.write_shards(tmp_path / "s", {"x": iter([np.arange(2)] * 3)}, progress=False, **kwargs)
    assert not (tmp_path / "s").exists()


def test_numbers_at_the_limits_are_accepted(tmp_path):
    ds = npyseq.write_shards(tmp_path / "a", {"x": np.arange(3)}, shard_size=2**62, jobs=1024, progress=False)
    assert_same_array(ds["x"][:], np.arange(3))
    assert npyseq.parse_size(f"{2**62}") == 2**62 and npyseq.parse_size("4194303TiB") == 4194303 * 2**40
    assert npyseq.parse_size("1.5GiB") == 3 * 2**29 and npyseq.parse_size(" 2.5 kB ") == 2500
    with npyseq.ShardWriter(tmp_path / "b", rows=2**62) as w:
        w.append(x=np.arange(3))
    assert_same_array(w.dataset["x"][:], np.arange(3))


@pytest.mark.parametrize("make, message", [
    (lambda raw: npyseq.RawSource(raw, "uint8", (), BIG),
     f"RawSource offset must be at most 2**62, got {_shown(BIG)}"),
    (lambda raw: npyseq.RawSource(raw, "uint8", (), -1), "RawSource offset must be a non-negative int, got -1"),
    (lambda raw: npyseq.RawSource(raw, "uint8", (), 1.5), "RawSource offset must be a non-negative int, got 1.5"),
    (lambda raw: npyseq.RawSource(raw, "uint8", (BIG,)),
     f"RawSource shape entry must be at most 2**62, got {_shown(BIG)}"),
    (lambda raw: npyseq.RawSource(raw, "uint8", (2.5,)), "RawSource shape entry must be a non-negative int, got 2.5"),
    (lambda raw: npyseq.RawSource(raw, "uint8", (2**40, 2**40)),
     "rows of dtype uint8 and shape (1099511627776, 1099511627776) would take 1208925819614629174706176 bytes "
     "each, more than the 2**62 a manifest records"),
    (lambda raw: npyseq.RawSource(raw, "potato"), "RawSource dtype must be a numpy dtype such as 'float32', "
                                                  "got 'potato'"),
])
def test_raw_source_numbers_are_checked(tmp_path, make, message):
    raw = str(tmp_path / "r.bin")
    (tmp_path / "r.bin").write_bytes(bytes(64))
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{raw}: {message}")):
        npyseq.write_shards(tmp_path / "ds", {"x": make(raw)}, progress=False)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--shard-size", BIG_TEXT, f"--shard-size must be at most 2**62 bytes (4.6 EB; the largest size a manifest "
                               f"records), got {_shown(BIG_TEXT)}"),
    ("--rows-per-shard", BIG_TEXT, f"--rows-per-shard must be at most 2**62, got {_shown(int(BIG_TEXT))}"),
    ("--jobs", BIG_TEXT, f"--jobs must be at most 1024, got {_shown(int(BIG_TEXT))}"),
    ("--jobs", "0", "--jobs must be a positive int, got 0"),
    ("--offset", BIG_TEXT, f"--offset must be at most 2**62, got {_shown(int(BIG_TEXT))}"),
    ("--offset", "-1", "--offset must be a non-negative int, got -1"),
])
def test_cli_numeric_options_are_one_line_errors(tmp_path, capsys, option, value, message):
    np.save(tmp_path / "x.npy", np.arange(3))
    out = tmp_path / "out"
    rc = main(["convert", str(tmp_path / "x.npy"), "-o", str(out), option, value, "--quiet"])
    stdout, stderr = capsys.readouterr()
    assert rc == 1
    assert stderr == f"npyseq convert: error: {message}\n"
    assert not out.exists()


def test_cli_shape_entries_are_checked(tmp_path, capsys):
    (tmp_path / "r.bin").write_bytes(bytes(64))
    with pytest.raises(SystemExit) as info:
        main(["convert", str(tmp_path / "r.bin"), "--dtype", "uint8", "--shape", f"2,{BIG_TEXT}",
              "-o", str(tmp_path / "out")])
    assert info.value.code == 2
    assert f"argument --shape: --shape entries must be at most 2**62, got {_shown('2,' + BIG_TEXT)}" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _damage_crc(path, member: str) -> None:
    """Change the CRC-32 that the archive records for ``member`` (local and central headers)."""
    data = bytearray(open(path, "rb").read())
    name = member.encode()
    for signature, crc_at, name_at in ((b"PK\x03\x04", 14, 30), (b"PK\x01\x02", 16, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + name_at:start + name_at + len(name)] == name:
                data[start + crc_at] ^= 0xFF
            start += 4
    open(path, "wb").write(bytes(data))


def _damage_data(path, member: str) -> None:
    """Overwrite the middle of ``member``'s compressed bytes."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(open(path, "rb").read())
    start = info.header_offset + 30 + len(member.encode()) + len(info.extra)
    for i in range(start + info.compress_size // 3, start + info.compress_size // 2):
        data[i] = 0x55
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage, found", [
    (_damage_crc, "BadZipFile: Bad CRC-32 for file 'a.npy'"),
    (_damage_data, ""),  # zlib.error or a bad CRC-32, whichever zlib finds first
])
def test_a_damaged_npz_member_names_the_archive_and_the_member(tmp_path, capsys, damage, found):
    archive = tmp_path / "arrays.npz"
    np.savez_compressed(archive, a=np.arange(20000), b=np.arange(20000.0))
    damage(archive, "a.npy")
    message = f"{archive}: member 'a.npy' of the .npz archive is damaged ({found}"
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        npyseq.write_shards(tmp_path / "ds", {"a": npyseq.NpzMember(str(archive), "a.npy")}, progress=False)
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert not [n for n in tree_bytes(tmp_path / "ds") if n.endswith(".partial")]

    rc = main(["convert", str(archive), "-o", str(tmp_path / "cli"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"npyseq convert: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "cli" / "manifest.json").exists()


def test_an_npz_member_of_a_file_that_is_not_an_archive(tmp_path):
    (tmp_path / "not.npz").write_bytes(b"plain text, not a zip archive")
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"{tmp_path / 'not.npz'}: not a valid .npz archive (File is not a zip file)")):
        npyseq.write_shards(tmp_path / "ds", {"a": npyseq.NpzMember(str(tmp_path / "not.npz"), "a.npy")},
                            progress=False)
    assert not (tmp_path / "ds").exists()
