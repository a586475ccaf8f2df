"""The on-disk format: manifest dataclasses, JSON I/O, validation, dtypes."""

from __future__ import annotations

import json
import os
import re

import ml_dtypes
import numpy as np
import pytest
import xxhash

import npyseq
from npyseq.format import dtypes
from npyseq.format import manifest as mf
from npyseq.storage import protocol
from npyseq.errors import ManifestError, UnsupportedDtypeError

from _helpers import concat_shards, load_manifest_json, write_manifest_json


def _example_manifest() -> mf.Manifest:
    shards = lambda name: tuple(  # noqa: E731
        mf.ShardInfo(path=f"{name}/{k:06d}.npy", bytes=128 + r * b, checksum=f"xxh3_64:{k:016x}")
        for k, (r, b) in enumerate([(4, 6), (3, 6)]))
    return mf.Manifest(
        rows=7,
        shard_rows=(4, 3),
        arrays={
            "x": mf.ArrayInfo(dtype=np.dtype("<u2"), shape=(3,), shards=shards("x"),
                              logical_dtype="bfloat16"),
            "rec": mf.ArrayInfo(dtype=np.dtype([("a", "<i2"), ("b", "S4")]), shape=(),
                                shards=shards("rec")),
        },
    )


def test_json_round_trip_is_exact():
    m = _example_manifest()
    text = m.to_json()
    back = mf.Manifest.from_json(text)
    assert back == m
    assert back.to_json() == text
    assert back.arrays["rec"].dtype == np.dtype([("a", "<i2"), ("b", "S4")])
    assert back.arrays["x"].row_bytes == 6
    assert back.names == ["x", "rec"]
    assert back.num_shards == 2
    assert back.nbytes == 2 * ((128 + 24) + (128 + 18))


def test_json_document_has_the_documented_fields():
    doc = json.loads(_example_manifest().to_json())
    assert doc["format"] == "npyseq"
    assert doc["version"] == 1
    assert doc["rows"] == 7
    assert doc["shard_rows"] == [4, 3]
    assert doc["arrays"]["x"] == {
        "dtype": "<u2",
        "logical_dtype": "bfloat16",
        "shape": [3],
        "shards": [
            {"path": "x/000000.npy", "bytes": 152, "checksum": "xxh3_64:0000000000000000"},
            {"path": "x/000001.npy", "bytes": 146, "checksum": "xxh3_64:0000000000000001"},
        ],
    }
    assert doc["arrays"]["rec"]["dtype"] == [["a", "<i2"], ["b", "|S4"]]


def test_write_then_read_manifest(tmp_path):
    m = _example_manifest()
    protocol.write_manifest(tmp_path, m)
    back, raw = mf.read_manifest(tmp_path)
    assert back == m
    assert raw == m.to_json().encode("utf-8")
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]  # no .partial left


def test_written_dataset_follows_the_specification(tmp_path):
    """What write_shards puts on disk is exactly what the docstring specifies."""
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3).astype(ml_dtypes.bfloat16)
    y = np.arange(10, dtype=np.int64)
    npyseq.write_shards(tmp_path / "ds", {"x": x, "y": y}, rows=4, progress=False)
    doc = load_manifest_json(tmp_path / "ds")
    assert set(doc) == {"format", "version", "rows", "shard_rows", "arrays"}
    assert (doc["format"], doc["version"], doc["rows"], doc["shard_rows"]) == ("npyseq", 1, 10, [4, 4, 2])
    assert doc["arrays"]["x"]["dtype"] == "<u2"
    assert doc["arrays"]["x"]["logical_dtype"] == "bfloat16"
    assert doc["arrays"]["x"]["shape"] == [3]
    assert doc["arrays"]["y"]["dtype"] == "<i8"
    assert doc["arrays"]["y"]["logical_dtype"] is None
    assert doc["arrays"]["y"]["shape"] == []
    for name in ("x", "y"):
        shards = doc["arrays"][name]["shards"]
        assert [s["path"] for s in shards] == [f"{name}/00000{k}.npy" for k in range(3)]
        for k, s in enumerate(shards):
            with open(tmp_path / "ds" / s["path"], "rb") as f:
                data = f.read()
            assert s["bytes"] == len(data)
            assert s["checksum"] == "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)
            assert re.fullmatch(r"xxh3_64:[0-9a-f]{16}", s["checksum"])
            arr = np.load(tmp_path / "ds" / s["path"], allow_pickle=False)
            assert arr.shape == (doc["shard_rows"][k],) + tuple(doc["arrays"][name]["shape"])
    np.testing.assert_array_equal(concat_shards(tmp_path / "ds", "y"), y)
    assert concat_shards(tmp_path / "ds", "x").tobytes() == x.tobytes()


# --- validation ---------------------------------------------------------------


def _valid_doc() -> dict:
    return json.loads(_example_manifest().to_json())


def _set(path, value):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(key):
    def mutate(doc):
        del doc[key]
    return mutate


X_SHARD0 = ("arrays", "x", "shards", 0)

BAD_MANIFESTS = {
    "format name": (_set(("format",), "npyseq2"), "format must be 'npyseq', found 'npyseq2'"),
    "format missing": (_delete("format"), "format must be 'npyseq', found None"),
    "future version": (_set(("version",), 3), "unsupported format version 3; this npyseq reads versions 1 and 2"),
    "version 0": (_set(("version",), 0), "unsupported format version 0"),
    "version string": (_set(("version",), "1"), "unsupported format version '1'"),
    "version float": (_set(("version",), 1.0), "unsupported format version 1.0"),
    "version bool": (_set(("version",), True), "unsupported format version True"),
    "rows not the sum": (_set(("rows",), 8), "rows is 8 but shard_rows add up to 7"),
    "rows negative": (_set(("rows",), -7), r"rows must be in \[0, 2\*\*62\], found -7"),
    "rows string": (_set(("rows",), "7"), "rows must be an integer, found '7'"),
    "rows float": (_set(("rows",), 7.0), "rows must be an integer, found 7.0"),
    "rows bool": (_set(("rows",), True), "rows must be an integer, found True"),
    "shard_rows not list": (_set(("shard_rows",), 7), "shard_rows must be a list, found 7"),
    "shard_rows zero": (_set(("shard_rows",), [7, 0]), r"shard_rows entry must be in \[1, 2\*\*62\], found 0"),
    "shard_rows negative": (_set(("shard_rows",), [8, -1]), r"shard_rows entry must be in \[1, 2\*\*62\], found -1"),
    "shape negative": (_set(("arrays", "x", "shape"), [-3]), r"array 'x' shape entry must be in \[0, 2\*\*62\], found -3"),
    "shape float": (_set(("arrays", "x", "shape"), [3.0]), "array 'x' shape entry must be an integer, found 3.0"),
    "shape not list": (_set(("arrays", "x", "shape"), 3), "array 'x' shape must be a list of at most 32 ints, found 3"),
    "bytes negative": (_set(X_SHARD0 + ("bytes",), -1), r"array 'x' shard 0 bytes must be in \[0, 2\*\*62\], found -1"),
    "bytes string": (_set(X_SHARD0 + ("bytes",), "152"), "array 'x' shard 0 bytes must be an integer, found '152'"),
    "bytes too small": (_set(X_SHARD0 + ("bytes",), 20),
                        "array 'x' shard 'x/000000.npy' is said to be 20 bytes, less than the 24 bytes its 4 rows need"),
    "checksum malformed": (_set(X_SHARD0 + ("checksum",), "abc"), "array 'x' shard 'x/000000.npy' checksum is malformed: 'abc'"),
    "dtype object": (_set(("arrays", "x", "dtype"), "|O"), "array 'x' dtype '|O' holds Python objects"),
    "dtype garbage": (_set(("arrays", "x", "dtype"), "nonsense"),
                      "array 'x' dtype is not a valid .npy dtype description: 'nonsense'"),
    "dtype struct with object": (_set(("arrays", "x", "dtype"), [["a", "|O"]]), "holds Python objects"),
    "logical_dtype number": (_set(("arrays", "x", "logical_dtype"), 5),
                             "array 'x' logical_dtype must be null or a name, found 5"),
    "path parent": (_set(X_SHARD0 + ("path",), "../x/000000.npy"), "shard path '../x/000000.npy' is not a plain relative path"),
    "path inner parent": (_set(X_SHARD0 + ("path",), "x/../../000000.npy"), "is not a plain relative path"),
    "path absolute": (_set(X_SHARD0 + ("path",), "/etc/passwd"), "shard path '/etc/passwd' is not a plain relative path"),
    "path dot": (_set(X_SHARD0 + ("path",), "./x/000000.npy"), "is not a plain relative path"),
    "path backslash": (_set(X_SHARD0 + ("path",), "x\\000000.npy"), "is not a plain relative path"),
    "path drive": (_set(X_SHARD0 + ("path",), "C:/x/000000.npy"), "is not a plain relative path"),
    "path double slash": (_set(X_SHARD0 + ("path",), "x//000000.npy"), "is not a plain relative path"),
    "path empty": (_set(X_SHARD0 + ("path",), ""), "shard path must be a non-empty string, found ''"),
    "path number": (_set(X_SHARD0 + ("path",), 3), "shard path must be a non-empty string, found 3"),
    "path listed twice": (_set(X_SHARD0 + ("path",), "x/000001.npy"), "shard path 'x/000001.npy' is listed twice"),
    "shard count": (lambda d: d["arrays"]["x"]["shards"].pop(), "array 'x' must list 2 shards, found 1"),
    "shard not object": (_set(X_SHARD0, "x/000000.npy"), "array 'x' shard 0 must be an object, found 'x/000000.npy'"),
    "arrays empty": (_set(("arrays",), {}), r"arrays must be a non-empty object, found \{\}"),
    "array spec not object": (_set(("arrays", "x"), []), r"array 'x' must be an object, found \[\]"),
    "array name hidden": (lambda d: d["arrays"].__setitem__(".x", d["arrays"].pop("x")), "array name '.x' is not allowed"),
    "array name slash": (lambda d: d["arrays"].__setitem__("a/b", d["arrays"].pop("x")), "array name 'a/b' is not allowed"),
}


@pytest.mark.parametrize("mutate, message", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_bad_manifest_is_refused_naming_the_file(tmp_path, mutate, message):
    doc = _valid_doc()
    mutate(doc)
    write_manifest_json(tmp_path, doc)
    path = os.path.join(tmp_path, "manifest.json")
    with pytest.raises(ManifestError, match=re.escape(path) + ": .*" + message):
        mf.read_manifest(tmp_path)


def test_bad_manifest_is_refused_by_open_shards(tmp_path):
    x = np.arange(10, dtype=np.int32)
    npyseq.write_shards(tmp_path / "ds", {"x": x}, rows=4, progress=False)
    doc = load_manifest_json(tmp_path / "ds")
    doc["version"] = 3
    write_manifest_json(tmp_path / "ds", doc)
    path = os.path.join(tmp_path, "ds", "manifest.json")
    with pytest.raises(ManifestError, match=re.escape(path) + ": unsupported format version 3"):
        npyseq.open_shards(tmp_path / "ds")


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    ('"npyseq"', "expected a JSON object, found str"),
    ("", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_unparseable_manifest(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=re.escape(str(tmp_path / "manifest.json")) + ": " + message):
        mf.read_manifest(tmp_path)


def test_oversized_manifest_is_not_parsed(tmp_path, monkeypatch):
    text = _example_manifest().to_json()
    (tmp_path / "manifest.json").write_text(text)
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", len(text) - 1)
    with pytest.raises(ManifestError, match=re.escape(str(tmp_path / "manifest.json"))
                       + f": manifest is larger than {len(text) - 1} bytes"):
        mf.read_manifest(tmp_path)
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", len(text))
    assert mf.read_manifest(tmp_path)[0] == _example_manifest()


def test_zero_row_manifest_round_trips():
    m = mf.Manifest(rows=0, shard_rows=(), arrays={
        "x": mf.ArrayInfo(dtype=np.dtype("<f4"), shape=(0, 2), shards=())})
    assert mf.Manifest.from_json(m.to_json()) == m


# --- dtypes -----------------------------------------------------------------


@pytest.mark.parametrize("dtype, stored, logical", [
    (np.float32, "<f4", None),
    (">i8", ">i8", None),
    (np.bool_, "|b1", None),
    ("S7", "|S7", None),
    ([("a", "<f2"), ("b", "|u1", (2,))], [("a", "<f2"), ("b", "|u1", (2,))], None),
    (ml_dtypes.bfloat16, "<u2", "bfloat16"),
    (ml_dtypes.float8_e4m3fn, "|u1", "float8_e4m3fn"),
    (ml_dtypes.float8_e5m2, "|u1", "float8_e5m2"),
])
def test_storage_dtype(dtype, stored, logical):
    store, name = dtypes.storage_dtype(np.dtype(dtype))
    assert store == np.dtype(stored)
    assert name == logical
    assert dtypes.logical_dtype(store, name) == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [object, [("a", "<i4"), ("b", object)]])
def test_storage_dtype_refuses_objects(dtype):
    with pytest.raises(UnsupportedDtypeError, match="array 'feat' has dtype .* which holds Python objects"):
        dtypes.storage_dtype(np.dtype(dtype), "feat")


def test_logical_dtype_checks_name_and_width():
    with pytest.raises(ManifestError, match="unknown logical_dtype 'float7'"):
        dtypes.logical_dtype(np.dtype("<u2"), "float7")
    with pytest.raises(ManifestError, match="logical_dtype 'bfloat16' is 2 bytes wide but the stored dtype uint32 is 4"):
        dtypes.logical_dtype(np.dtype("<u4"), "bfloat16")


def test_shard_offsets():
    np.testing.assert_array_equal(mf.shard_offsets([4, 4, 2]), [0, 4, 8, 10])
    np.testing.assert_array_equal(mf.shard_offsets([]), [0])
    assert mf.shard_offsets([3]).dtype == np.int64
