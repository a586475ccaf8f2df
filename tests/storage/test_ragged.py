"""Ragged arrays: writing, reading, padding, the v2 format, bad input and corruption.

The round trips are checked against the sources and, through ``json`` and
``np.load`` alone, against the format specification in :mod:`npyseq.format.manifest`.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import npyseq
from npyseq.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    InvalidArgumentError,
    ManifestError,
    MissingShardError,
)

from _helpers import assert_same_array, load_manifest_json, tree_bytes, write_manifest_json

WRITERS = ["list", "offsets", "lengths", "iterable", "shard_writer"]


def make_rows(rng, n, dtype=np.int32, element_shape=(), max_len=20, p_empty=0.1):
    lengths = rng.integers(0, max_len + 1, size=n)
    lengths[rng.random(n) < p_empty] = 0
    return [rng.integers(0, 1000, size=(int(k),) + element_shape).astype(dtype) for k in lengths]


def write(kind: str, root, samples: list, extra: dict | None = None, empty=np.empty(0), **kwargs):
    """Write ``samples`` as the ragged array "r" (plus fixed arrays ``extra``) one of several ways."""
    extra = extra or {}
    rows = samples
    flat = np.concatenate(rows) if rows else empty
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    if kind == "list":
        src = rows
    elif kind == "offsets":
        src = npyseq.RaggedSource(flat, offsets=np.concatenate(([0], np.cumsum(lengths))))
    elif kind == "lengths":
        src = npyseq.RaggedSource(flat, lengths=lengths.astype(np.int32))
    elif kind == "iterable":
        src = (r for r in rows)
    else:
        with npyseq.ShardWriter(root, kwargs.pop("shard_size", "256MB"), **kwargs) as w:
            for a in range(0, len(rows), 37):
                w.append(r=rows[a:a + 37], **{n: v[a:a + 37] for n, v in extra.items()})
        return w.dataset
    return npyseq.write_shards(root, {"r": src, **extra}, progress=False, **kwargs)


def load_by_spec(root, name: str) -> list[np.ndarray]:
    """Rows of ragged array ``name`` rebuilt with json and np.load, as the spec says."""
    doc = load_manifest_json(root)
    spec = doc["arrays"][name]
    assert doc["version"] == 2 and spec["ragged"] is True
    rows = []
    for k, shard in enumerate(spec["shards"]):
        values = np.load(os.path.join(root, shard["path"]), allow_pickle=False)
        offsets = np.load(os.path.join(root, shard["offsets"]["path"]), allow_pickle=False)
        assert offsets.dtype == np.dtype("<i8") and offsets.shape == (doc["shard_rows"][k] + 1,)
        assert offsets[0] == 0 and offsets[-1] == shard["values"] == len(values)
        rows.extend(values[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
    return rows


def assert_rows_equal(found: list, expected: list) -> None:
    assert len(found) == len(expected)
    for i, (f, e) in enumerate(zip(found, expected)):
        assert f.dtype == e.dtype and f.shape == e.shape, (i, f.dtype, f.shape, e.dtype, e.shape)
        assert f.tobytes() == e.tobytes(), i


# --- round trips --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 120),
    dtype=st.sampled_from([np.int32, np.uint8, np.float16, np.int64, ml_dtypes.bfloat16]),
    element_shape=st.sampled_from([(), (3,), (2, 2)]),
    shard=st.one_of(st.integers(1, 50).map(lambda r: {"rows": r}),
                    st.sampled_from(["200B", "1KB", "4KB", "1MB"]).map(lambda s: {"shard_size": s})),
    kind=st.sampled_from(WRITERS),
    read=st.sampled_from(["mmap", "pread"]),
    seed=st.integers(0, 2**16),
)
def test_round_trip(tmp_path_factory, n, dtype, element_shape, shard, kind, read, seed):
    rng = np.random.default_rng(seed)
    rows = make_rows(rng, n, dtype, element_shape, max_len=rng.integers(0, 30))
    y = np.arange(n, dtype=np.int64) * 7
    # An empty list is no ragged array (nothing to append): not a valid example.
    assume(not (n == 0 and kind in ("list", "iterable", "shard_writer")))
    root = tmp_path_factory.mktemp("rt") / "ds"
    write(kind, root, rows, {"y": y}, empty=np.empty((0,) + element_shape, dtype), **shard)
    ds = npyseq.open_shards(root, verify="checksums", read=read)
    r = ds["r"]
    assert isinstance(r, npyseq.RaggedArray) and r.ragged and len(r) == n
    assert r.dtype == np.dtype(dtype) and r.element_shape == element_shape
    assert_rows_equal(r[:], rows)
    assert_same_array(ds["y"][:], y)  # rows stay aligned with the fixed array
    assert_rows_equal(load_by_spec(root, "r"), [row.view(ds.manifest.arrays["r"].dtype) for row in rows])
    assert list(r.lengths()) == [len(row) for row in rows]
    if n:
        idx = rng.integers(0, n, size=min(n, 25))
        assert_rows_equal(r[idx], [rows[i] for i in idx])
        assert_rows_equal(r.take(idx[::-1]), [rows[i] for i in idx[::-1]])
        batch, kept = r.padded(idx)
        longest = max(len(rows[i]) for i in idx)
        assert batch.shape == (len(idx), longest) + element_shape and batch.dtype == np.dtype(dtype)
        for j, i in enumerate(idx):
            assert kept[j] == len(rows[i])
            assert batch[j, :len(rows[i])].tobytes() == rows[i].tobytes()
            assert (batch[j, len(rows[i]):].astype(np.float64) == 0).all()
    if "shard_size" in shard:  # every values file within the size, unless one row alone is bigger
        limit = npyseq.parse_size(shard["shard_size"])
        info = ds.manifest.arrays["r"]
        for s, k in zip(info.shards, range(ds.num_shards)):
            assert s.bytes <= limit or ds.manifest.shard_rows[k] == 1, (s.bytes, limit)


@pytest.mark.parametrize("kind", ["list", "offsets", "lengths", "iterable"])
def test_every_writer_writes_the_same_bytes(tmp_path, kind):
    rows = make_rows(np.random.default_rng(1), 500)
    extra = {"y": np.arange(500)}
    write("shard_writer", tmp_path / "ref", rows, extra, shard_size="1KB")
    write(kind, tmp_path / kind, rows, extra, shard_size="1KB")
    assert tree_bytes(tmp_path / kind) == tree_bytes(tmp_path / "ref")
    assert npyseq.open_shards(tmp_path / "ref").num_shards > 5


def test_fixed_only_datasets_stay_version_1(tmp_path):
    npyseq.write_shards(tmp_path / "ds", {"x": np.arange(10)}, rows=4, progress=False)
    doc = load_manifest_json(tmp_path / "ds")
    assert doc["version"] == 1
    assert all("ragged" not in a for a in doc["arrays"].values())


def test_ragged_needs_version_2(tmp_path):
    write("list", tmp_path / "ds", make_rows(np.random.default_rng(0), 10), rows=4)
    doc = load_manifest_json(tmp_path / "ds")
    doc["version"] = 1
    write_manifest_json(tmp_path / "ds", doc)
    with pytest.raises(ManifestError, match=re.escape(
            f"{tmp_path / 'ds' / 'manifest.json'}: array 'r' is ragged, which needs format version 2, "
            "but the manifest says version 1")):
        npyseq.open_shards(tmp_path / "ds")


def test_multi_dimensional_elements_and_mixed_arrays(tmp_path):
    rng = np.random.default_rng(3)
    series = [rng.random((int(k), 4), dtype=np.float32) for k in rng.integers(0, 50, 200)]
    tokens = make_rows(rng, 200)
    label = rng.integers(0, 2, 200)
    ds = npyseq.write_shards(tmp_path / "ds", {"series": series, "tokens": tokens, "label": label},
                             shard_size="2KB", progress=False)
    assert ds.num_shards > 10
    for i in (0, 57, 199):
        assert_same_array(ds["series"][i], series[i])
        assert_same_array(ds["tokens"][i], tokens[i])
        assert ds["label"][i] == label[i]
    assert "series: float32 ragged (n,) + (4,)" in repr(ds)


# --- reading ------------------------------------------------------------------------------


@pytest.fixture
def text(tmp_path):
    rows = [np.array([1, 2, 3], np.int32), np.array([], np.int32), np.array([4], np.int32),
            np.array([5, 6, 7, 8, 9], np.int32), np.array([10, 11], np.int32)]
    ds = npyseq.write_shards(tmp_path / "ds", {"tokens": rows}, rows=2, progress=False)
    return ds["tokens"], rows


def test_indexing(text):
    t, rows = text
    assert_same_array(t[0], rows[0])
    assert_same_array(t[-1], rows[4])
    assert t[1].shape == (0,) and t[1].dtype == np.int32
    assert_rows_equal(t[1:4], rows[1:4])
    assert_rows_equal(t[::-2], rows[::-2])
    assert_rows_equal(t[np.array([3, 3, 0])], [rows[3], rows[3], rows[0]])
    assert_rows_equal(t[np.array([True, False, False, True, False])], [rows[0], rows[3]])
    assert t[[]] == []
    with pytest.raises(IndexError, match="index 5 is out of bounds for 5 rows of 'tokens'"):
        t[5]
    with pytest.raises(IndexError, match="index 9 is out of bounds for 5 rows"):
        t[[0, 9]]
    with pytest.raises(IndexError, match="'tokens' is ragged: index it by row"):
        t[0, 1]
    assert len(t) == 5 and t.shape == (5,) and t.num_values == 11
    assert list(t.lengths()) == [3, 0, 1, 5, 2]
    assert list(t.lengths([4, 0])) == [2, 3]


def test_padded(text):
    t, _ = text
    batch, kept = t.padded([0, 1, 3])
    assert batch.tolist() == [[1, 2, 3, 0, 0], [0, 0, 0, 0, 0], [5, 6, 7, 8, 9]]
    assert kept.tolist() == [3, 0, 5]
    batch, kept = t.padded([0, 1, 3], padding="pre", pad_value=-1)
    assert batch.tolist() == [[-1, -1, 1, 2, 3], [-1, -1, -1, -1, -1], [5, 6, 7, 8, 9]]
    batch, kept = t.padded([0, 3], length=2)
    assert batch.tolist() == [[1, 2], [5, 6]] and kept.tolist() == [2, 2]
    batch, kept = t.padded([0, 3], length=2, truncating="pre")
    assert batch.tolist() == [[2, 3], [8, 9]]
    batch, kept = t.padded([2, 4], length=4, padding="pre", truncating="pre")
    assert batch.tolist() == [[0, 0, 0, 4], [0, 0, 10, 11]] and kept.tolist() == [1, 2]
    batch, kept = t.padded([1])
    assert batch.shape == (1, 0)
    out = np.full((2, 3), 99, np.int32)
    assert t.padded([4, 2], length=3, out=out)[0] is out and out.tolist() == [[10, 11, 0], [4, 0, 0]]
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "out must be a C-contiguous array of shape (2, 2) and dtype int32, got shape (2, 3), dtype int32")):
        t.padded([4, 2], length=2, out=out)
    with pytest.raises(InvalidArgumentError, match="padding must be 'post' or 'pre', got 'left'"):
        t.padded([0], padding="left")
    with pytest.raises(InvalidArgumentError, match="truncating must be 'post' or 'pre', got 'end'"):
        t.padded([0], truncating="end")
    with pytest.raises(InvalidArgumentError, match="length must be a non-negative int or None, got -1"):
        t.padded([0], length=-1)


def test_pickles_by_path_and_reads_in_another_process(text):
    t, rows = text
    blob = pickle.dumps(t)
    assert len(blob) < 1000
    script = ("import pickle, sys; t = pickle.loads(sys.stdin.buffer.read()); "
              "print(t[3].tolist(), t.padded([2, 0])[0].tolist())")
    out = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[5, 6, 7, 8, 9] [[4, 0, 0], [1, 2, 3]]"


# --- bad input ----------------------------------------------------------------------------


@pytest.fixture
def flat(tmp_path):
    values = np.arange(10, dtype=np.int32)
    np.save(tmp_path / "values.npy", values)
    return tmp_path, values


BAD_BOUNDS = {
    "offsets decrease": ("offsets", [0, 4, 3, 10], "offsets must not decrease, but offset 2 is 3 after 4 at 1"),
    "offsets past the end": ("offsets", [0, 4, 12, 10], "offset 2 is 12, past the end of the values ({values} holds 10)"),
    "offsets end early": ("offsets", [0, 4, 8], "the last offset is 8, but the values ({values}) hold 10; "
                          "offsets must end at the number of values"),
    "offsets start late": ("offsets", [2, 4, 10], "offsets must start at 0, found 2"),
    "lengths sum wrong": ("lengths", [4, 4, 4], "lengths add up to 12, but the values ({values}) hold 10"),
    "negative length": ("lengths", [4, -1, 7], "length 1 is -1; lengths must be >= 0 and at most the number "
                        "of values ({values} holds 10)"),
    "float offsets": ("offsets", [0.0, 4.0, 10.0], "offsets must be a 1-d integer array, found dtype float64 and shape (3,)"),
}


@pytest.mark.parametrize("kind, bounds, message", BAD_BOUNDS.values(), ids=BAD_BOUNDS.keys())
def test_bad_offsets_and_lengths_name_the_file(flat, kind, bounds, message):
    root, _ = flat
    np.save(root / f"{kind}.npy", np.array(bounds))
    values = str(root / "values.npy")
    full = f"{root / f'{kind}.npy'}: " + message.format(values=values)
    with pytest.raises(InvalidArgumentError, match=re.escape(full)):
        npyseq.write_shards(root / "ds", {"t": npyseq.RaggedSource(values, **{kind: root / f"{kind}.npy"})},
                            progress=False)
    assert not (root / "ds").exists() or not os.listdir(root / "ds")
    # The command line says the same, in one line, and exits 1.
    option = "--ragged" if kind == "offsets" else "--ragged-lengths"
    proc = subprocess.run([sys.executable, "-m", "npyseq", "convert", option, "t", values, root / f"{kind}.npy",
                           "-o", root / "cli", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"npyseq convert: error: {full}"
    assert not (root / "cli" / "manifest.json").exists()


def test_bad_in_memory_offsets_name_the_array(flat):
    root, values = flat
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't' offsets: offsets must not decrease, but offset 2 is 3 after 4 at 1")):
        npyseq.write_shards(root / "ds", {"t": npyseq.RaggedSource(values, offsets=[0, 4, 3, 10])}, progress=False)
    with pytest.raises(InvalidArgumentError, match="RaggedSource needs either offsets or lengths"):
        npyseq.write_shards(root / "ds", {"t": npyseq.RaggedSource(values)}, progress=False)


def test_bad_row_lists(tmp_path):
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't': row 1 has shape (2, 3), expected (length,) + (2,) like the rows before it")):
        npyseq.write_shards(tmp_path / "a", {"t": [np.zeros((3, 2)), np.zeros((2, 3))]}, progress=False)
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't': row 1 has dtype float64, expected int32 like the rows before it")):
        npyseq.write_shards(tmp_path / "b", {"t": [np.zeros(3, np.int32), np.zeros(2)]}, progress=False)
    with pytest.raises(InvalidArgumentError, match=re.escape("array 't': row 1 is a scalar")):
        npyseq.write_shards(tmp_path / "c", {"t": [np.zeros(3), np.array(1.0)]}, progress=False)
    with pytest.raises(InvalidArgumentError, match=re.escape("array 't': row 1 is a list, not a numpy array")):
        npyseq.write_shards(tmp_path / "d", {"t": [np.zeros(3), [1.0]]}, progress=False)
    with pytest.raises(InvalidArgumentError, match="all arrays must have the same number of rows"):
        npyseq.write_shards(tmp_path / "e", {"t": [np.zeros(3)] * 4, "y": np.arange(5)}, progress=False)
    with pytest.raises(InvalidArgumentError, match="all arrays must have the same number of rows"):
        npyseq.write_shards(tmp_path / "f", {"t": iter([np.zeros(3)] * 4), "y": np.arange(5)}, progress=False)
    with pytest.raises(InvalidArgumentError, match="all arrays must have the same number of rows"):
        npyseq.write_shards(tmp_path / "g", {"t": iter([np.zeros(3)] * 6), "y": np.arange(5)}, progress=False)
    assert not (tmp_path / "f" / "manifest.json").exists() and not (tmp_path / "g" / "manifest.json").exists()
    with pytest.raises(InvalidArgumentError, match="object"):
        npyseq.write_shards(tmp_path / "h", {"t": [np.array([object()])]}, progress=False)


def test_shard_writer_ragged_errors(tmp_path):
    with npyseq.ShardWriter(tmp_path / "w", rows=4) as w:
        w.append(t=[np.arange(3), np.arange(1)], y=np.arange(2))
        with pytest.raises(InvalidArgumentError, match="array 't' is ragged: give its rows as a list of arrays"):
            w.append(t=np.arange(4).reshape(2, 2), y=np.arange(2))
        with pytest.raises(InvalidArgumentError, match=re.escape(
                "array 't': row 0 has shape (2, 2), expected (length,) + () like the rows before it")):
            w.append(t=[np.zeros((2, 2), np.int64)], y=np.arange(1))
        w.append(t=[np.arange(5)], y=np.arange(1))
    assert_rows_equal(w.dataset["t"][:], [np.arange(3), np.arange(1), np.arange(5)])


def test_resume_keeps_complete_ragged_shards(tmp_path):
    rows = make_rows(np.random.default_rng(7), 300)
    src = npyseq.RaggedSource(np.concatenate(rows), lengths=[len(r) for r in rows])
    npyseq.write_shards(tmp_path / "ref", {"t": src}, shard_size="1KB", progress=False)
    reference = tree_bytes(tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "ds")
    os.unlink(tmp_path / "ds" / "manifest.json")  # as if killed before the manifest...
    os.unlink(tmp_path / "ds" / "t" / "000003.offsets.npy")  # ...with a shard half written
    with open(tmp_path / "ds" / "t" / "000001.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\xff")  # and a stale shard of an earlier, different run
    kept = os.stat(tmp_path / "ds" / "t" / "000000.npy").st_mtime_ns
    npyseq.write_shards(tmp_path / "ds", {"t": src}, shard_size="1KB", progress=False)
    assert tree_bytes(tmp_path / "ds") == reference
    assert os.stat(tmp_path / "ds" / "t" / "000000.npy").st_mtime_ns == kept  # not rewritten


# --- corrupt datasets ---------------------------------------------------------------------


@pytest.fixture
def stored(tmp_path):
    rows = make_rows(np.random.default_rng(5), 40)
    npyseq.write_shards(tmp_path / "ds", {"t": rows}, rows=10, progress=False)
    return tmp_path / "ds", rows


def _rewrite_offsets(root, k, edit):
    path = root / "t" / f"{k:06d}.offsets.npy"
    offsets = np.load(path)
    edit(offsets)
    np.save(path, offsets)
    return path


def test_decreasing_offsets_in_a_shard_are_refused(stored):
    root, _ = stored

    def swap(o):
        o[3], o[4] = o[4] + 1, o[3]
    path = _rewrite_offsets(root, 1, swap)
    t = npyseq.open_shards(root)["t"]  # headers and sizes are right
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: offsets must not decrease, but offset")):
        t[12]
    with pytest.raises(ChecksumMismatchError, match=re.escape(f"{path}: checksum")):
        npyseq.open_shards(root, verify="checksums")["t"][12]
    proc = subprocess.run([sys.executable, "-m", "npyseq", "verify", root, "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 1 and f"BAD {path}: checksum" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "1 of 8 shards is bad"


def test_offsets_that_overrun_the_values_are_refused(stored):
    root, _ = stored

    def overrun(o):
        o[-1] += 1
    path = _rewrite_offsets(root, 2, overrun)
    values = root / "t" / "000002.npy"
    last = len(np.load(path)) - 1
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{path}: offset {last} is {np.load(path)[-1]}, past the end of the values ({values} holds "
            f"{len(np.load(values))})")):
        npyseq.open_shards(root)["t"].lengths()

    def short(o):
        o[-1] -= 2  # one less than before the overrun
    _rewrite_offsets(root, 2, short)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{path}: the last offset is {len(np.load(values)) - 1}, but the values ({values}) hold "
            f"{len(np.load(values))}; offsets must end at the number of values")):
        npyseq.open_shards(root)["t"].lengths()


def test_missing_or_wrong_offsets_files(stored):
    root, _ = stored
    path = root / "t" / "000000.offsets.npy"
    np.save(path, np.zeros(5, np.int64))  # 5 offsets where 11 belong
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: shape (5,) found, the manifest says (11,)")):
        npyseq.open_shards(root)
    os.unlink(path)
    with pytest.raises(MissingShardError, match=re.escape(f"{path}: shard file is missing")):
        npyseq.open_shards(root)
    with pytest.raises(MissingShardError, match=re.escape(f"{path}: shard file is missing")):
        npyseq.open_shards(root, verify="none")["t"][0]


def test_values_file_shorter_than_its_offsets_say(stored):
    root, _ = stored
    doc = load_manifest_json(root)
    doc["arrays"]["t"]["shards"][0]["values"] += 1
    write_manifest_json(root, doc)
    with pytest.raises(CorruptShardError, match=re.escape(f"{root / 't' / '000000.npy'}: shape")):
        npyseq.open_shards(root)


def test_info_and_verify_show_ragged_arrays(stored):
    root, rows = stored
    proc = subprocess.run([sys.executable, "-m", "npyseq", "info", root], capture_output=True, text=True, check=True)
    assert "format    npyseq v2" in proc.stdout
    assert f"ragged, rows of (n,) + (), {sum(map(len, rows))} values" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "npyseq", "verify", root, "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("OK: 8 shards")


def test_cli_converts_a_pair_of_npy_files(tmp_path):
    rows = make_rows(np.random.default_rng(9), 100)
    np.save(tmp_path / "values.npy", np.concatenate(rows))
    np.save(tmp_path / "offsets.npy", np.concatenate(([0], np.cumsum([len(r) for r in rows]))))
    np.save(tmp_path / "lengths.npy", np.array([len(r) for r in rows], np.uint16))
    np.save(tmp_path / "label.npy", np.arange(100))
    proc = subprocess.run([sys.executable, "-m", "npyseq", "convert", tmp_path / "label.npy",
                           "--ragged", "tokens", tmp_path / "values.npy", tmp_path / "offsets.npy",
                           "--ragged-lengths", "again", tmp_path / "values.npy", tmp_path / "lengths.npy",
                           "-o", tmp_path / "ds", "--shard-size", "1KB", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ds = npyseq.open_shards(tmp_path / "ds", verify="checksums")
    assert ds.names == ["label", "tokens", "again"]
    assert_rows_equal(ds["tokens"][:], rows)
    assert_rows_equal(ds["again"][:], rows)
    assert_same_array(ds["label"][:], np.arange(100))


# --- found in review ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.dtype(">i4"), np.dtype([("a", "<i2"), ("b", ">f8")])], ids=["big-endian", "struct"])
def test_non_native_dtypes_keep_their_bytes(tmp_path, dtype):
    """np.concatenate returns native byte order; the writers must not reinterpret it."""
    rows = [np.arange(k, dtype=np.int64).astype(dtype) for k in (3, 0, 2, 5)]
    for kind in ("list", "shard_writer"):
        ds = write(kind, tmp_path / kind, rows, rows=3)
        assert_rows_equal(ds["r"][:], rows)
        assert_rows_equal(load_by_spec(tmp_path / kind, "r"), rows)


def test_take_and_padded_index_like_getitem(text):
    t, rows = text
    mask = np.array([False, False, False, True, False])
    assert_rows_equal(t.take(mask), [rows[3]])
    batch, kept = t.padded(mask)
    assert batch.tolist() == [[5, 6, 7, 8, 9]] and kept.tolist() == [5]
    assert_rows_equal(t.take([-1, 0]), [rows[4], rows[0]])
    assert t.padded([-1])[0].tolist() == [[10, 11]]
    with pytest.raises(IndexError, match="only integers, slices, and integer or boolean arrays"):
        t.take(np.array([0.5]))
    with pytest.raises(IndexError, match="index -6 is out of bounds for 5 rows"):
        t.padded([-6])


def test_lengths_that_overflow_int64_are_refused(tmp_path):
    values = np.arange(5, dtype=np.int32)
    lengths = np.array([2**62, 2**62, 2**62, 2**62 + 5], dtype=np.int64)  # int64 sum wraps to 5
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't' lengths: length 0 is 4611686018427387904; lengths must be >= 0 and at most the number "
            "of values (array 't' values holds 5)")):
        npyseq.write_shards(tmp_path / "ds", {"t": npyseq.RaggedSource(values, lengths=lengths)}, rows=1,
                            progress=False)


def test_offsets_file_that_wraps_around_is_refused(stored):
    root, _ = stored

    def wrap(o):  # o[2] - o[1] wraps around to a positive int64
        o[2] = -(2**63)
    path = _rewrite_offsets(root, 0, wrap)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{path}: offsets must not decrease, but offset 2 is {-(2**63)} after {np.load(path)[1]} at 1")):
        npyseq.open_shards(root)["t"].lengths()

    def past(o):  # and a huge offset is past the end, not a wrapped-around length
        o[1], o[2] = 2**62, -(2**63)
    _rewrite_offsets(root, 0, past)
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: offset 1 is {2**62}, past the end of the values")):
        npyseq.open_shards(root)["t"].lengths()


def test_shard_writer_waits_for_rows_before_deciding_what_is_ragged(tmp_path):
    with npyseq.ShardWriter(tmp_path / "w", rows=4) as w:
        w.append(t=[], y=[])
        w.append(t=[np.array([1, 2]), np.array([3])], y=[1, 2])
    assert_rows_equal(w.dataset["t"][:], [np.array([1, 2]), np.array([3])])
    with npyseq.ShardWriter(tmp_path / "f", rows=4) as w:
        w.append(t=np.zeros((2, 2)))
        with pytest.raises(InvalidArgumentError, match="array 't' is fixed-size .* a ragged array must start as a list"):
            w.append(t=[np.zeros(2), np.zeros(3)])


def test_pad_value_must_fit_the_dtype(tmp_path):
    ds = npyseq.write_shards(tmp_path / "ds", {"t": [np.array([1, 2], np.uint8), np.array([3], np.uint8)]},
                             progress=False)
    with pytest.raises(InvalidArgumentError, match=re.escape("pad_value -1 of 't' does not fit its dtype uint8")):
        ds["t"].padded([0, 1], pad_value=-1)
