"""Hostile manifests and shards: fuzzed with hypothesis, only npyseq errors, bounded memory and time.

A dataset folder may come from anyone. Whatever ``manifest.json`` holds
(wrong types, huge or negative numbers, deep nesting, unicode, shapes whose
bytes exceed the files, arbitrary bytes), opening and reading the dataset
either works (the manifest happens to be valid and to match the shards) or
raises an :class:`npyseq.NpyseqError`: never another exception, a crash, a
hang or a huge allocation (each example's Python and NumPy allocations are
traced and bounded, and its time too). Fixed cases complete the fuzzing:
paths leaving the folder, shapes bigger than the file, pickled shards, object
dtypes at write time.

(Hypothesis examples: 700 mutations of a valid manifest, 200 raw byte strings,
200 datasets with files replaced by special, truncated, random or other files.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npyseq
from npyseq.errors import CorruptShardError, ManifestError, NpyseqError, UnsupportedDtypeError

from _helpers import assert_same_array, load_manifest_json, write_manifest_json

X = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
Y = np.arange(10, dtype=np.int64)
MAX_PEAK_BYTES = 32 * 2**20  # traced allocations of one example
MAX_SECONDS = 5.0

HUGE_INTS = [0, -1, 1, 3, 4, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**62 + 1, 2**63, 2**64,
             -2**63, 10**30, 10**400]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "ds"
    npyseq.write_shards(root, {"x": X, "y": Y}, rows=4, progress=False)
    return root, load_manifest_json(root)


def _json_values():
    scalars = st.one_of(
        st.none(), st.booleans(),
        st.integers(-2**70, 2**70), st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(["", "..", "../x/000000.npy", "/etc/passwd", "x/000000.npy", "x\x00.npy",
                         "C:/x", "x//000000.npy", "<f4", "|O", "<U5", "V99999999999", "bfloat16",
                         "float7", "xxh3_64:0", "npyseq", "x" * 5000, "\u00e9\u4e2d\U0001f600",
                         "\ud800"]),
    )
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
        max_leaves=20)


def _paths(doc, max_depth: int = 8):
    """Paths (keys and indices) into the document, down to ``max_depth``."""
    stack = [((), doc)]
    while stack:
        prefix, node = stack.pop()
        yield prefix
        if len(prefix) >= max_depth:
            continue
        if isinstance(node, dict):
            stack.extend((prefix + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((prefix + (i,), v) for i, v in enumerate(node))


def _replace(doc, path, value):
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@st.composite
def hostile_documents(draw, valid):
    doc = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["value", "value", "int", "nest", "delete", "add", "scale"]))
        if how == "value":
            doc = _replace(doc, path, draw(_json_values()))
        elif how == "int":
            doc = _replace(doc, path, draw(st.sampled_from(HUGE_INTS)))
        elif how == "nest":
            depth = draw(st.sampled_from([2, 50, 900, 5000]))
            nested = 1
            for _ in range(depth):
                nested = [nested]
            doc = _replace(doc, path, nested)
        elif how == "delete" and path:
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
        elif how == "add":
            target = doc
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.text(max_size=10))] = draw(_json_values())
            elif isinstance(target, list):
                target.append(draw(_json_values()))
        elif how == "scale" and isinstance(doc, dict):
            # Consistent lies: more rows, bigger shapes, bytes to match, files unchanged.
            factor = draw(st.sampled_from([2, 1000, 2**20, 2**40]))
            doc["rows"] = doc.get("rows", 0) * factor if isinstance(doc.get("rows"), int) else factor
            if isinstance(doc.get("shard_rows"), list):
                doc["shard_rows"] = [r * factor if isinstance(r, int) else r for r in doc["shard_rows"]]
            for spec in (doc.get("arrays") or {}).values() if isinstance(doc.get("arrays"), dict) else ():
                if isinstance(spec, dict) and isinstance(spec.get("shards"), list):
                    for s in spec["shards"]:
                        if isinstance(s, dict) and isinstance(s.get("bytes"), int):
                            s["bytes"] = s["bytes"] * factor
    return doc


def _exercise(root) -> str:
    """Open and read the dataset every way a user would; return what happened."""
    outcome = "opened"
    for verify in ("headers", "checksums", "none"):
        try:
            ds = npyseq.open_shards(root, verify=verify)
            for name in ds.names:
                a = ds[name]
                if verify == "none":  # trusts the manifest's sizes: read a row at each end
                    a[:1], a[-1:]
                else:
                    a[:]
                    a[np.array([len(a) - 1, 0])]
                repr(ds), len(ds), ds.nbytes
        except NpyseqError:
            outcome = "refused"
    return outcome


def _run_traced(root) -> tuple[str, int, float]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = _exercise(root)
        return outcome, tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large], database=None,
          derandomize=True)
@given(data=st.data())
def test_fuzzed_manifests_raise_only_npyseq_errors(dataset, tmp_path_factory, data):
    root, valid = dataset
    doc = data.draw(hostile_documents(valid))
    work = tmp_path_factory.mktemp("fuzz", numbered=True) / "ds"
    shutil.copytree(root, work)
    try:
        text = json.dumps(doc, allow_nan=True)
    except (ValueError, RecursionError):  # too deep for json itself: write it by hand
        text = "[" * 5000 + "]" * 5000
    (work / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    outcome, peak, seconds = _run_traced(work)
    assert peak < MAX_PEAK_BYTES, (peak, text[:300])
    assert seconds < MAX_SECONDS, (seconds, text[:300])
    if doc == valid:
        assert outcome == "opened"
    shutil.rmtree(work.parent)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large], database=None,
          derandomize=True)
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     st.sampled_from([b"\xff\xfe{}", b"{\"format\": \"npyseq\"", b"\x00" * 100,
                                      b"[" * 100_000, b"1e999999", b"{}" * 1000, b'"\\ud800"'])))
def test_arbitrary_manifest_bytes_are_a_manifest_error(dataset, tmp_path_factory, raw):
    root, _ = dataset
    work = tmp_path_factory.mktemp("raw", numbered=True) / "ds"
    shutil.copytree(root, work)
    (work / "manifest.json").write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match=re.escape(str(work / "manifest.json")) + ": "):
            npyseq.open_shards(work)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES
    shutil.rmtree(work.parent)


# --- fixed hostile cases -------------------------------------------------------------


@pytest.fixture
def root(tmp_path):
    npyseq.write_shards(tmp_path / "ds", {"x": X, "y": Y}, rows=4, progress=False)
    return tmp_path / "ds"


@pytest.mark.parametrize("rows", [5_000, 2**40])
def test_shape_whose_bytes_exceed_the_file_is_refused_before_mapping(root, rows):
    """The manifest says shard 0 holds ``rows`` rows, with bytes to match; the file is small."""
    doc = load_manifest_json(root)
    doc["rows"] += rows - 4
    doc["shard_rows"][0] = rows
    for name, row_bytes in (("x", 12), ("y", 8)):
        doc["arrays"][name]["shards"][0]["bytes"] = 128 + rows * row_bytes
    write_manifest_json(root, doc)
    path = root / "x" / "000000.npy"
    tracemalloc.start()
    try:
        with pytest.raises(CorruptShardError, match=re.escape(
                f"{path}: shape (4, 3) found, the manifest says ({rows}, 3)")):
            npyseq.open_shards(root)
        assert tracemalloc.get_traced_memory()[1] < MAX_PEAK_BYTES
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("rows", [5_000, 2**40])
def test_lying_shape_is_refused_before_a_read_allocates_even_unverified(root, rows):
    """With verify="none" nothing is checked at open; a read still checks each shard it
    touches before allocating its output, so the lie is a CorruptShardError, not a
    MemoryError or a huge allocation."""
    doc = load_manifest_json(root)
    doc["rows"] += rows - 4
    doc["shard_rows"][0] = rows
    for name, row_bytes in (("x", 12), ("y", 8)):
        doc["arrays"][name]["shards"][0]["bytes"] = 128 + rows * row_bytes
    write_manifest_json(root, doc)
    ds = npyseq.open_shards(root, verify="none")
    assert len(ds) == rows + len(X) - 4
    lie = re.escape(f"{root / 'x' / '000000.npy'}: shape (4, 3) found, the manifest says ({rows}, 3)")
    tracemalloc.start()
    try:
        for key in (slice(None), np.array([0, rows - 1]), rows - 1, slice(0, rows, 2)):
            with pytest.raises(CorruptShardError, match=lie):
                ds["x"][key]
        assert tracemalloc.get_traced_memory()[1] < MAX_PEAK_BYTES
    finally:
        tracemalloc.stop()
    assert_same_array(ds["y"][rows:], Y[4:])  # shards the lie does not touch still read


def test_row_shape_that_overflows_int64_is_refused(root):
    """2**31 x 2**31 x 2**31 float32 wraps to 0 bytes in int64 arithmetic."""
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shape"] = [2**31, 2**31, 2**31]
    write_manifest_json(root, doc)
    for verify in ("headers", "none"):
        with pytest.raises(ManifestError, match=re.escape(
                f"{root / 'manifest.json'}: array 'x' rows of shape (2147483648, 2147483648, "
                "2147483648) are impossibly large")):
            npyseq.open_shards(root, verify=verify)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "x/../../y/000000.npy",
                                  "x/./000000.npy", "\u2025/x.npy", "x/000000.npy\x00.txt"])
def test_paths_that_escape_the_folder_are_refused(root, path):
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][0]["path"] = path
    write_manifest_json(root, doc)
    with pytest.raises(NpyseqError) as info:
        npyseq.open_shards(root, verify="none")["x"][0]
    assert str(info.value).startswith(f"{root / 'manifest.json'}: ") or str(info.value).startswith(str(root))
    assert type(info.value).__name__ in ("ManifestError", "MissingShardError")


def test_structured_dtype_with_an_object_field_is_refused_at_write_time(tmp_path):
    nested = np.zeros(3, dtype=[("a", "<i4"), ("b", [("c", "<f4"), ("d", "O")])])
    with pytest.raises(UnsupportedDtypeError, match="array 'r' has dtype .* which holds Python objects"):
        npyseq.write_shards(tmp_path / "ds", {"r": nested}, progress=False)
    with pytest.raises(UnsupportedDtypeError, match="array 'r' has dtype .* which holds Python objects"):
        with npyseq.ShardWriter(tmp_path / "w", rows=2) as w:
            w.append(r=nested)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("dtype", [np.dtype([]), np.dtype("V0")], ids=["no fields", "V0"])
def test_zero_byte_dtypes_are_refused_at_write_time_and_in_manifests(tmp_path, root, dtype):
    with pytest.raises(UnsupportedDtypeError, match=re.escape(
            f"array 'z' has dtype {dtype!r}, whose elements are 0 bytes wide")):
        npyseq.write_shards(tmp_path / "z", {"z": np.zeros(3, dtype)}, progress=False)
    assert not (tmp_path / "z").exists()
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["dtype"] = np.lib.format.dtype_to_descr(dtype)
    write_manifest_json(root, doc)
    with pytest.raises(ManifestError, match="has elements of 0 bytes, which npyseq refuses"):
        npyseq.open_shards(root, verify="none")


def test_object_dtype_in_a_manifest_is_refused_even_nested(root):
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["dtype"] = [["a", "<f4"], ["b", [["c", "|O"]]]]
    write_manifest_json(root, doc)
    with pytest.raises(ManifestError, match="holds Python objects, which npyseq refuses"):
        npyseq.open_shards(root)


def test_a_valid_manifest_still_opens_after_the_fuzzing_setup(root):
    """The harness itself: the untouched dataset opens and reads the three ways."""
    assert _exercise(root) == "opened"
    assert_same_array(npyseq.open_shards(root)["x"][:], X)


# --- files replaced, not only manifest values -------------------------------------------------
#
# The same property with the files themselves swapped: a shard, an offsets file or
# the manifest replaced by a FIFO, a directory, a symbolic link (inside the folder,
# to itself moved or to another file; outside it), an empty, truncated, grown or
# random file, or another file's bytes. Opening and reading give the right bytes or
# an npyseq error, never another exception or a hang (a FIFO opened without
# O_NONBLOCK blocks forever: the test's timeout bounds it). Only verify="checksums"
# can tell a shard from another one of the same header; the other modes must be
# right whenever no replacement is a valid .npy of another shard.

T_ROWS = [np.arange(i % 4, dtype=np.int32) + 10 * i for i in range(10)]
REPLACEMENTS = ["fifo", "directory", "empty", "truncated", "grown", "random", "other file",
                "symlink to itself moved", "symlink to another file", "symlink outside"]
UNDETECTABLE = {"other file", "symlink to another file"}  # without checksums


@pytest.fixture(scope="module")
def file_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("files") / "ds"
    npyseq.write_shards(root, {"x": X, "y": Y, "t": T_ROWS}, rows=4, progress=False)
    doc = load_manifest_json(root)
    files = ["manifest.json"]
    for info in doc["arrays"].values():
        for shard in info["shards"]:
            files.append(shard["path"])
            if "offsets" in shard:  # the ragged array's offsets files
                files.append(shard["offsets"]["path"])
    return root, files


def _replace_file(work, files, relative: str, how: str, data) -> None:
    path = work / relative
    size = path.stat().st_size if path.is_file() and not path.is_symlink() else 0
    original = path.read_bytes() if path.is_file() else b""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(original[:data.draw(st.integers(0, max(0, size - 1)), label="keep")])
    elif how == "grown":
        path.write_bytes(original + data.draw(st.binary(min_size=1, max_size=64), label="extra"))
    elif how == "random":
        path.write_bytes(data.draw(st.binary(min_size=size, max_size=size), label="bytes"))
    elif how == "other file":
        other = data.draw(st.sampled_from([f for f in files if f != relative]), label="other")
        target = work / other
        path.write_bytes(target.read_bytes() if target.is_file() else b"")
    elif how == "symlink to itself moved":
        store = work / "store"
        store.mkdir(exist_ok=True)
        moved = store / relative.replace("/", "_")
        moved.write_bytes(original)
        os.symlink(os.path.relpath(moved, path.parent), path)
    elif how == "symlink to another file":
        other = data.draw(st.sampled_from([f for f in files if f != relative]), label="other")
        os.symlink(os.path.relpath(work / other, path.parent), path)
    elif how == "symlink outside":
        outside = work.parent / ("outside-" + relative.replace("/", "_"))
        outside.write_bytes(original)
        os.symlink(outside, path)
    else:
        raise AssertionError(how)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise _Hang in whatever blocks past ``seconds`` (a FIFO's open): each example
    is bounded on its own, also when hypothesis replays one to shrink it."""
    def expire(signum, frame):
        raise _Hang(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read_everything(root, verify: str):
    """Every array read whole and by an index array; None if npyseq refused."""
    try:
        ds = npyseq.open_shards(root, verify=verify)
        return {"x": (ds["x"][:], ds["x"][np.array([9, 0, 5])]),
                "y": (ds["y"][:], ds["y"].take([-1, 4])),
                "t": ([r.tolist() for r in ds["t"][:]], ds["t"].padded([3, 7])[0].tolist(),
                      ds["t"].lengths().tolist())}
    except NpyseqError:
        return None


def _expected():
    padded = np.zeros((2, 3), np.int32)
    padded[0, :3], padded[1, :3] = T_ROWS[3], T_ROWS[7]
    return {"x": (X, X[[9, 0, 5]]), "y": (Y, Y[[-1, 4]]),
            "t": ([r.tolist() for r in T_ROWS], padded.tolist(), [len(r) for r in T_ROWS])}


def _same(got, expected) -> bool:
    for name in ("x", "y"):
        for a, b in zip(got[name], expected[name]):
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                return False
    return got["t"] == expected["t"]


@pytest.mark.timeout(600)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large], database=None,
          derandomize=True)
@given(data=st.data())
def test_replaced_files_give_right_bytes_or_npyseq_errors(file_dataset, tmp_path_factory, data):
    root, files = file_dataset
    work = tmp_path_factory.mktemp("swap", numbered=True) / "ds"
    shutil.copytree(root, work)
    done = []
    for _ in range(data.draw(st.integers(1, 2), label="replacements")):
        relative = data.draw(st.sampled_from([f for f in files if f not in {r for r, _ in done}]), label="file")
        how = data.draw(st.sampled_from(REPLACEMENTS), label="how")
        _replace_file(work, files, relative, how, data)
        done.append((relative, how))
    expected = _expected()
    start = time.perf_counter()
    with _deadline(3 * MAX_SECONDS):
        outcomes = {verify: _read_everything(work, verify) for verify in ("checksums", "headers", "none")}
    assert time.perf_counter() - start < 3 * MAX_SECONDS, done
    for verify, got in outcomes.items():
        if got is None:
            continue  # refused with an npyseq error
        if verify == "checksums" or not any(how in UNDETECTABLE for _, how in done):
            assert _same(got, expected), (verify, done)
    if all(how == "symlink to itself moved" for _, how in done):
        assert all(got is not None for got in outcomes.values()), done  # what is allowed still opens
    shutil.rmtree(work.parent)
