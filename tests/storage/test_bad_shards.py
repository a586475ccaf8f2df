"""Bad datasets: corrupt, missing and escaping shards, checksums, manifests the reader refuses."""

from __future__ import annotations

import os
import pickle
import re
import shutil

import numpy as np
import pytest
import xxhash

import npyseq
from npyseq.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    DatasetNotFoundError,
    IncompleteDatasetError,
    ManifestError,
    MissingShardError,
    ShardError,
)

from _helpers import assert_same_array, flip_byte, load_manifest_json, write_manifest_json

X = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
Y = np.arange(10, dtype=np.int64)


@pytest.fixture
def root(tmp_path):
    """A dataset of shards of 4, 4 and 2 rows; shard 1 of x holds rows 4 to 7."""
    npyseq.write_shards(tmp_path / "ds", {"x": X, "y": Y}, rows=4, progress=False)
    return tmp_path / "ds"


def _shard(root, name="x", k=1) -> str:
    return str(root / name / f"00000{k}.npy")


def _open_or_read(root, when: str):
    """Raise at open (default verify) or when the shard is first read (verify='none')."""
    if when == "open":
        return npyseq.open_shards(root)
    ds = npyseq.open_shards(root, verify="none")
    assert_same_array(ds["x"][:4], X[:4])  # shard 0 is fine
    return ds["x"][5]


WHEN = ["open", "lazy"]


@pytest.mark.parametrize("when", WHEN)
def test_wrong_dtype_in_header(root, when):
    path = _shard(root)
    np.save(path, X[4:8].view(np.int32))  # same size, other dtype
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: dtype int32 found, the manifest says float32")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_wrong_shape_in_header(root, when):
    path = _shard(root)
    np.save(path, X[4:8].reshape(3, 4))  # same size, other shape
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: shape (3, 4) found, the manifest says (4, 3)")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_wrong_rows_in_header(root, when):
    path = _shard(root)
    np.save(path, X[4:9])
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: shape (5, 3) found, the manifest says (4, 3)")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_truncated_shard(root, when):
    path = _shard(root)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: {size - 1} bytes found, the manifest says {size}")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_shard_grown_by_a_byte(root, when):
    path = _shard(root)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: {size + 1} bytes found, the manifest says {size}")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_missing_shard(root, when):
    path = _shard(root)
    os.unlink(path)
    with pytest.raises(MissingShardError, match=re.escape(f"{path}: shard file is missing")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_not_an_npy_file(root, when):
    path = _shard(root)
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04" + bytes(size - 4))
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: not a readable .npy header (")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_fortran_order_shard(root, when):
    path = _shard(root)
    np.save(path, np.asfortranarray(X[4:8]))
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: stored in Fortran order; npyseq shards are C order")):
        _open_or_read(root, when)


@pytest.mark.parametrize("when", WHEN)
def test_header_plus_data_must_be_the_file(root, when):
    """Size and manifest agree, but the header does not account for every byte."""
    path = _shard(root)
    with open(path, "ab") as f:
        f.write(b"\0" * 5)
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][1]["bytes"] += 5
    write_manifest_json(root, doc)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{path}: header (128 bytes) plus data (48 bytes) does not equal the file size 181")):
        _open_or_read(root, when)


def test_npy_format_2_shards_are_read(root):
    path = _shard(root)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, X[4:8], version=(2, 0))
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][1]["bytes"] = os.path.getsize(path)
    write_manifest_json(root, doc)
    assert_same_array(npyseq.open_shards(root)["x"][:], X)


def test_npy_format_3_is_refused(root):
    """The format specifies shards of .npy format 1.0 or 2.0."""
    path = _shard(root)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, X[4:8], version=(3, 0))
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][1]["bytes"] = os.path.getsize(path)
    write_manifest_json(root, doc)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{path}: not a readable .npy header (unsupported .npy format version (3, 0); "
            "npyseq reads 1.0 and 2.0)")):
        npyseq.open_shards(root)


class _Evil:
    """Unpickling this creates a folder: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("when", WHEN)
def test_pickled_object_shard_is_never_unpickled(root, tmp_path, when):
    marker = str(tmp_path / "unpickled")
    path = _shard(root)
    np.save(path, np.array([_Evil(marker)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{path}: holds Python objects (pickled data); npyseq never loads those")):
        _open_or_read(root, when)
    assert not os.path.exists(marker)
    # The marker does work: loading the shard with pickle allowed creates it.
    np.load(path, allow_pickle=True)
    assert os.path.isdir(marker)


# --- paths that leave the dataset folder ----------------------------------------


def _point_shard_at(root, path_in_manifest):
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][0]["path"] = path_in_manifest
    write_manifest_json(root, doc)


@pytest.mark.parametrize("target", ["../outside.npy", "{outside}"])
def test_manifest_path_outside_the_folder(root, target):
    outside = root.parent / "outside.npy"
    shutil.copy(_shard(root, "x", 0), outside)  # a valid shard, so only the path is wrong
    target = target.format(outside=outside)
    _point_shard_at(root, target)
    with pytest.raises(ManifestError, match=re.escape(
            f"{root / 'manifest.json'}: shard path {target!r} is not a plain relative path")):
        npyseq.open_shards(root)


@pytest.mark.parametrize("when", WHEN)
def test_symlinked_shard_leading_outside(root, when):
    outside = root.parent / "outside.npy"
    shutil.copy(_shard(root, "x", 1), outside)
    os.unlink(_shard(root, "x", 1))
    os.symlink(outside, _shard(root, "x", 1))
    with pytest.raises(ManifestError, match=re.escape(
            f"{root / 'manifest.json'}: shard path 'x/000001.npy' resolves to {outside}, outside the dataset "
            "folder; refusing to read it")):
        _open_or_read(root, when)


def test_symlinked_array_folder_leading_outside(root):
    shutil.move(str(root / "x"), str(root.parent / "elsewhere"))
    os.symlink(root.parent / "elsewhere", root / "x")
    with pytest.raises(ManifestError, match=re.escape(
            f"{root / 'manifest.json'}: shard path 'x/000000.npy' resolves to "
            f"{root.parent / 'elsewhere' / '000000.npy'}, outside the dataset folder")):
        npyseq.open_shards(root)


def test_symlink_inside_the_folder_is_allowed(root):
    os.makedirs(root / "store")
    shutil.move(_shard(root, "x", 1), root / "store" / "x1.npy")
    os.symlink(os.path.join("..", "store", "x1.npy"), _shard(root, "x", 1))
    assert_same_array(npyseq.open_shards(root)["x"][:], X)


def test_symlinked_dataset_folder_is_allowed(root, tmp_path):
    os.symlink(root, tmp_path / "link")
    assert_same_array(npyseq.open_shards(tmp_path / "link")["y"][:], Y)


# --- checksums ----------------------------------------------------------------


def test_flipped_byte_is_caught_by_checksums_only(root):
    path = _shard(root)
    flip_byte(path, offset_from_end=2)  # a data byte of row 7
    expected = load_manifest_json(root)["arrays"]["x"]["shards"][1]["checksum"]
    found = "xxh3_64:" + xxhash.xxh3_64_hexdigest(open(path, "rb").read())

    rows = npyseq.open_shards(root)["x"][:]  # headers and sizes are fine
    assert rows[7].tobytes() != X[7].tobytes()
    assert rows[:7].tobytes() == X[:7].tobytes() and rows[8:].tobytes() == X[8:].tobytes()

    ds = npyseq.open_shards(root, verify="checksums")
    assert_same_array(ds["x"][:4], X[:4])
    assert_same_array(ds["x"][8:], X[8:])
    assert_same_array(ds["y"][:], Y)
    with pytest.raises(ChecksumMismatchError, match=re.escape(
            f"{path}: checksum {found} found, the manifest says {expected}; the shard is corrupt")):
        ds["x"][5]


def test_a_checksum_of_another_algorithm_is_unverifiable_not_a_mismatch(root):
    """The spec allows other algorithms: npyseq says it cannot verify one, never that the data is corrupt."""
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][1]["checksum"] = "sha256:" + "ab" * 32
    write_manifest_json(root, doc)
    path = _shard(root)
    message = (f"{path}: checksum sha256:{'ab' * 32} cannot be verified: npyseq computes xxh3_64 "
               "checksums, not sha256")

    assert_same_array(npyseq.open_shards(root)["x"][:], X)  # the headers are checked, and fine
    ds = npyseq.open_shards(root, verify="checksums")
    with pytest.raises(ShardError, match=re.escape(message + "; open it with verify='headers'")) as e:
        ds["x"][5]
    assert not isinstance(e.value, ChecksumMismatchError)
    assert npyseq.open_shards(root, verify="none").verify() == [message]


def test_checksums_mode_reads_good_shards(root):
    ds = npyseq.open_shards(root, verify="checksums")
    assert_same_array(ds["x"][::-1], X[::-1])
    assert_same_array(pickle.loads(pickle.dumps(ds))["y"][[9, 0]], Y[[9, 0]])


# --- manifests the reader refuses ------------------------------------------------


@pytest.mark.parametrize("logical, message", [
    ("float7", "unknown logical_dtype 'float7'"),
    ("bfloat16", "logical_dtype 'bfloat16' is 2 bytes wide but the stored dtype float32 is 4"),
])
def test_bad_logical_dtype_names_the_manifest(root, logical, message):
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["logical_dtype"] = logical
    write_manifest_json(root, doc)
    with pytest.raises(ManifestError, match=re.escape(f"{root / 'manifest.json'}: ") + ".*" + re.escape(message)):
        npyseq.open_shards(root)


def test_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{tmp_path / 'nope'}: no such dataset folder")):
        npyseq.open_shards(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{tmp_path / 'file'}: is a file, not a dataset folder")):
        npyseq.open_shards(tmp_path / "file")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match=re.escape(
            f"{tmp_path / 'empty'}: not an npyseq dataset (manifest.json not found)")):
        npyseq.open_shards(tmp_path / "empty")


def test_incomplete_dataset(root):
    os.unlink(root / "manifest.json")
    with pytest.raises(IncompleteDatasetError, match=re.escape(
            f"{root}: incomplete dataset: shard folders exist but manifest.json does not. "
            "A conversion was interrupted; run it again")):
        npyseq.open_shards(root)
