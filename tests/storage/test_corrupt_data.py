"""Corrupt data that tests/storage/test_bad_shards.py and tests/format/test_manifest.py do not already cover.

Covered there: truncated and grown shards, a flipped byte (checksums), wrong
dtype/shape/rows in a shard's header, missing shards, non-.npy and Fortran
shards, pickled shards, escaping paths and symlinks, malformed manifests.
Here: a zeroed header; shards swapped with one another (identical sizes and
headers, so only checksums see it); extra unknown files (ignored); and
manifests that are well-formed but disagree with the shards on disk (rows,
bytes, dtype, shape, version). Each gives a specific npyseq error, or a
``verify`` failure, naming the file and the mismatch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xxhash

import npyseq
from npyseq.errors import ChecksumMismatchError, CorruptShardError, ManifestError

from _helpers import assert_same_array, load_manifest_json, write_manifest_json

X = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)
Y = np.arange(12, dtype=np.int64)


@pytest.fixture
def root(tmp_path):
    """Three shards of 4 rows for x and y: shards 0 and 1 of x have identical sizes and headers."""
    npyseq.write_shards(tmp_path / "ds", {"x": X, "y": Y}, rows=4, progress=False)
    return tmp_path / "ds"


def _verify(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npyseq", "verify", str(root), "--quiet"],
                          capture_output=True, text=True, timeout=120)


def _checksum(path) -> str:
    with open(path, "rb") as f:
        return "xxh3_64:" + xxhash.xxh3_64_hexdigest(f.read())


def test_zeroed_header(root):
    path = root / "x" / "000001.npy"
    data = bytearray(path.read_bytes())
    data[:128] = bytes(128)  # the whole header, size unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: not a readable .npy header (")):
        npyseq.open_shards(root)
    ds = npyseq.open_shards(root, verify="none")
    assert_same_array(ds["x"][:4], X[:4])
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: not a readable .npy header (")):
        ds["x"][4]
    proc = _verify(root)
    assert proc.returncode == 1
    assert [line for line in proc.stdout.splitlines() if line.startswith("BAD")] == [
        line for line in proc.stdout.splitlines() if line.startswith(f"BAD {path}: not a readable .npy header")]


def test_swapped_shards_pass_header_checks_but_not_checksums(root):
    """Two shards of the same size and header, exchanged: only checksums can tell."""
    a, b = root / "x" / "000000.npy", root / "x" / "000001.npy"
    expected = {p: _checksum(p) for p in (a, b)}
    tmp = root / "x" / "swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)

    silently_wrong = npyseq.open_shards(root)["x"][:8]  # headers and sizes all match
    assert_same_array(silently_wrong, np.concatenate([X[4:8], X[:4]]))

    ds = npyseq.open_shards(root, verify="checksums")
    assert_same_array(ds["x"][8:], X[8:])  # the untouched shard reads fine
    with pytest.raises(ChecksumMismatchError, match=re.escape(
            f"{a}: checksum {expected[b]} found, the manifest says {expected[a]}; the shard is corrupt")):
        ds["x"][0]
    with pytest.raises(ChecksumMismatchError, match=re.escape(
            f"{b}: checksum {expected[a]} found, the manifest says {expected[b]}")):
        ds["x"][5]

    proc = _verify(root)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"BAD {a}: checksum {expected[b]} found, the manifest says {expected[a]}",
        f"BAD {b}: checksum {expected[a]} found, the manifest says {expected[b]}",
        "2 of 6 shards are bad",
    ]


def test_shards_swapped_between_arrays(root):
    """x/000000.npy and y/000000.npy exchanged: sizes and headers differ, caught at open."""
    a, b = root / "x" / "000000.npy", root / "y" / "000000.npy"
    tmp = root / "swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    with pytest.raises(CorruptShardError, match=re.escape(f"{a}: dtype int64 found, the manifest says float32")):
        npyseq.open_shards(root)


def test_extra_unknown_files_are_ignored(root):
    clean = _verify(root)
    (root / "README.txt").write_text("notes about this dataset")
    (root / ".DS_Store").write_bytes(b"\0\1\2")
    (root / "manifest.json.bak").write_text("{not json")
    (root / "x" / "000099.npy").write_bytes((root / "x" / "000000.npy").read_bytes())
    (root / "x" / "000001.npy.partial").write_bytes(b"half a shard")
    os.makedirs(root / "z" / "nested")
    np.save(root / "z" / "000000.npy", np.arange(5))
    os.symlink("/etc/passwd", root / "x" / "link")  # not listed: never followed

    ds = npyseq.open_shards(root, verify="checksums")
    assert ds.names == ["x", "y"]
    assert_same_array(ds["x"][:], X)
    assert_same_array(ds["y"][:], Y)
    proc = _verify(root)
    assert (proc.returncode, proc.stdout) == (0, clean.stdout)
    info = subprocess.run([sys.executable, "-m", "npyseq", "info", str(root)], capture_output=True,
                          text=True, timeout=120)
    assert info.returncode == 0 and "rows      12" in info.stdout.splitlines()


# --- manifests that disagree with the shards on disk -------------------------------------


def _edit(root, edit) -> None:
    doc = load_manifest_json(root)
    edit(doc)
    write_manifest_json(root, doc)


def _rows(doc):
    doc["shard_rows"] = [4, 3, 5]  # still adds up to rows


def _rows_total(doc):
    doc["rows"], doc["shard_rows"] = 13, [4, 4, 5]


def _bytes(doc):
    doc["arrays"]["x"]["shards"][1]["bytes"] += 12


def _dtype(doc):
    doc["arrays"]["x"]["dtype"] = "<i4"  # same width


def _shape(doc):
    doc["arrays"]["x"]["shape"] = [1, 3]


def _version(doc):
    doc["version"] = 7


def _checksum_edit(doc):
    doc["arrays"]["y"]["shards"][2]["checksum"] = "xxh3_64:0123456789abcdef"


MISMATCHES = {
    "shard rows": (_rows, CorruptShardError, "{root}/x/000001.npy: shape (4, 3) found, the manifest says (3, 3)"),
    "total rows": (_rows_total, CorruptShardError, "{root}/x/000002.npy: shape (4, 3) found, the manifest says (5, 3)"),
    "bytes": (_bytes, CorruptShardError, "{root}/x/000001.npy: 176 bytes found, the manifest says 188"),
    "dtype": (_dtype, CorruptShardError, "{root}/x/000000.npy: dtype float32 found, the manifest says int32"),
    "shape": (_shape, CorruptShardError, "{root}/x/000000.npy: shape (4, 3) found, the manifest says (4, 1, 3)"),
    "version": (_version, ManifestError, "{root}/manifest.json: unsupported format version 7; this npyseq reads "
                "versions 1 and 2. Upgrade npyseq or rebuild the dataset."),
}


@pytest.mark.parametrize("edit, error, message", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_manifest_that_disagrees_with_the_shards(root, edit, error, message):
    _edit(root, edit)
    message = message.format(root=root)
    with pytest.raises(error, match=re.escape(message)):
        npyseq.open_shards(root)
    proc = _verify(root)
    assert proc.returncode == 1
    assert message in proc.stdout + proc.stderr


def test_manifest_with_a_wrong_checksum(root):
    _edit(root, _checksum_edit)
    path = root / "y" / "000002.npy"
    assert_same_array(npyseq.open_shards(root)["y"][:], Y)  # headers cannot see it
    with pytest.raises(ChecksumMismatchError, match=re.escape(
            f"{path}: checksum {_checksum(path)} found, the manifest says xxh3_64:0123456789abcdef")):
        npyseq.open_shards(root, verify="checksums")["y"][9]
    proc = _verify(root)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == (
        f"BAD {path}: checksum {_checksum(path)} found, the manifest says xxh3_64:0123456789abcdef")


def test_dataset_copied_elsewhere_still_reads(root, tmp_path):
    """Paths are relative: a copied (or moved) dataset folder is the same dataset."""
    shutil.copytree(root, tmp_path / "copy")
    ds = npyseq.open_shards(tmp_path / "copy", verify="checksums")
    assert_same_array(ds["x"][:], X)
    assert ds.checksum == npyseq.open_shards(root).checksum
