"""Containers are never read as raw rows: HDF5 files, Zarr stores, .npz/zip and .npy files,
compressed files and archives are told by their signatures and refused as raw binary
data (``--dtype``, :class:`npyseq.RawSource`), naming the format and what converts it;
and the ``.npy`` reader names what a file that is not ``.npy`` looks like instead of
suggesting ``allow_pickle``."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import tarfile
import zipfile

import numpy as np
import pytest

import npyseq
from npyseq.cli import main
from npyseq.errors import InvalidArgumentError
from npyseq.storage.signatures import sniff

h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")


def _make(tmp_path, fmt: str):
    """A small file (or folder) of format ``fmt``; return its path as a string."""
    if fmt == "hdf5":
        path = tmp_path / "data.h5"
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(10.0)
    elif fmt == "hdf5-userblock":
        path = tmp_path / "data.h5"
        with h5py.File(path, "w", userblock_size=1024) as f:
            f["x"] = np.arange(10.0)
    elif fmt == "zarr":
        path = tmp_path / "store.zarr"
        zarr.create_array(path, data=np.arange(10))
    elif fmt == "npz":
        path = tmp_path / "arrays.npz"
        np.savez(path, x=np.arange(10))
    elif fmt == "zip":
        path = tmp_path / "bundle.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    elif fmt == "npy":
        path = tmp_path / "rows.npy"
        np.save(path, np.arange(16, dtype=np.uint8))
    elif fmt == "tar":
        path = tmp_path / "bundle.tar"
        with tarfile.open(path, "w") as t:
            info = tarfile.TarInfo("a.bin")
            info.size = 4
            t.addfile(info, io.BytesIO(b"abcd"))
    else:
        body = bytes(range(256)) * 4
        path = tmp_path / f"data.{fmt}"
        path.write_bytes({"gz": gzip.compress(body), "bz2": bz2.compress(body), "xz": lzma.compress(body),
                          "zst": b"\x28\xb5\x2f\xfd" + body, "7z": b"7z\xbc\xaf\x27\x1c" + body}[fmt])
    return str(path)


# format made, what sniff says, what the message calls it, the advice from Python
PYTHON = [
    ("hdf5", "hdf5", "an HDF5 file", "pass its datasets, e.g. {{'x': h5py.File('{p}')['x']}}"),
    ("hdf5-userblock", "hdf5", "an HDF5 file", "pass its datasets, e.g. {{'x': h5py.File('{p}')['x']}}"),
    ("zarr", "zarr", "a Zarr store", "pass its arrays, e.g. {{'x': zarr.open_array('{p}')}}"),
    ("npz", "npz", "a .npz archive (a zip of .npy files)", "pass its members as npyseq.NpzMember('{p}', 'x.npy')"),
    ("zip", "zip", "a zip archive", "unpack it (`unzip {p}`) and convert the files it holds"),
    ("npy", "npy", "a .npy file", "pass its path as it is: {{'x': '{p}'}}"),
    ("gz", "gzip", "a gzip-compressed file", "decompress it first (`gunzip -k {p}`) and convert the result"),
    ("bz2", "bz2", "a bzip2-compressed file", "decompress it first (`bunzip2 -k {p}`) and convert the result"),
    ("xz", "xz", "an xz-compressed file", "decompress it first (`unxz -k {p}`) and convert the result"),
    ("zst", "zstd", "a zstd-compressed file", "decompress it first (`unzstd {p}`) and convert the result"),
    ("tar", "tar", "a tar archive", "unpack it (`tar xf {p}`) and convert the files it holds"),
    ("7z", "7z", "a 7z archive", "unpack it (`7z x {p}`) and convert the files it holds"),
]


@pytest.mark.parametrize("made, fmt, what, advice", PYTHON, ids=[p[0] for p in PYTHON])
def test_a_container_is_refused_as_a_raw_source(tmp_path, made, fmt, what, advice):
    path = _make(tmp_path, made)
    assert sniff(path) == fmt
    expected = (f"{path}: is {what}, not raw binary data; RawSource would read its bytes (headers and all) "
                f"as numbers, so npyseq refuses it: {advice.format(p=path)}")
    with pytest.raises(InvalidArgumentError, match=f"^{re.escape(expected)}$"):
        npyseq.write_shards(tmp_path / "out", {"x": npyseq.RawSource(path, "uint8")}, progress=False)
    assert not (tmp_path / "out").exists()


CLI = [
    ("zip", "a zip archive", "unpack it (`unzip {p}`) and convert the files it holds"),
    ("gz", "a gzip-compressed file", "decompress it first (`gunzip -k {p}`) and convert the result"),
    ("bz2", "a bzip2-compressed file", "decompress it first (`bunzip2 -k {p}`) and convert the result"),
    ("xz", "an xz-compressed file", "decompress it first (`unxz -k {p}`) and convert the result"),
    ("zst", "a zstd-compressed file", "decompress it first (`unzstd {p}`) and convert the result"),
    ("tar", "a tar archive", "unpack it (`tar xf {p}`) and convert the files it holds"),
    ("7z", "a 7z archive", "unpack it (`7z x {p}`) and convert the files it holds"),
]


@pytest.mark.parametrize("made, what, advice", CLI, ids=[c[0] for c in CLI])
@pytest.mark.parametrize("dtype", [["--dtype", "uint8"], []], ids=["dtype", "no-dtype"])
def test_the_cli_refuses_to_raw_convert_an_archive(tmp_path, capsys, made, what, advice, dtype):
    path = _make(tmp_path, made)
    assert main(["convert", path, *dtype, "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"npyseq convert: error: {path}: is {what}, not raw binary data; --dtype would read its bytes "
        f"(headers and all) as numbers, so npyseq refuses it: {advice.format(p=path)}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("made", ["hdf5", "hdf5-userblock", "zarr", "npy"])
def test_the_cli_converts_a_container_by_its_signature_even_with_dtype(tmp_path, capsys, made):
    """An HDF5 file, a Zarr store or a .npy file is converted as what it is, whatever its name."""
    path = _make(tmp_path, made)
    if made == "npy":
        renamed = tmp_path / "rows.bin"
        (tmp_path / "rows.npy").rename(renamed)
        path = str(renamed)
    assert main(["convert", path, "--dtype", "float32", "-o", str(tmp_path / "out"), "-qq"]) == 0
    ds = npyseq.open_shards(tmp_path / "out")
    expected = np.arange(16, dtype=np.uint8) if made == "npy" else np.arange(10)
    assert np.array_equal(ds[ds.names[0]][:], expected)
    assert ds[ds.names[0]].dtype == expected.dtype or made.startswith("hdf5")


# --- the .npy reader ----------------------------------------------------------------------


def test_an_hdf5_path_as_a_npy_source_says_what_it_is(tmp_path):
    path = _make(tmp_path, "hdf5")
    with pytest.raises(InvalidArgumentError, match="^" + re.escape(
            f"array 'x': {path}: is an HDF5 file, not a .npy file; pass its datasets, e.g. "
            f"{{'x': h5py.File('{path}')['x']}}") + "$") as e:
        npyseq.write_shards(tmp_path / "out", {"x": path}, progress=False)
    assert "pickle" not in str(e.value)


@pytest.mark.parametrize("made", ["gz", "tar"])
def test_a_compressed_file_as_a_npy_source_says_what_it_is(tmp_path, made):
    path = _make(tmp_path, made)
    what = {"gz": "a gzip-compressed file", "tar": "a tar archive"}[made]
    with pytest.raises(InvalidArgumentError, match=f"^{re.escape(f'array {chr(39)}x{chr(39)}: {path}: is {what}, not a .npy file; ')}"):
        npyseq.write_shards(tmp_path / "out", {"x": path}, progress=False)


def test_an_unknown_file_as_a_npy_source_is_not_told_to_unpickle(tmp_path):
    path = tmp_path / "junk.npy"
    path.write_bytes(b"not an npy file at all")
    with pytest.raises(InvalidArgumentError, match="^" + re.escape(
            f"array 'x': {path}: is not a .npy file (it does not start with the .npy magic \\x93NUMPY); "
            f"for raw binary data pass npyseq.RawSource('{path}', dtype, shape)") + "$"):
        npyseq.write_shards(tmp_path / "out", {"x": path}, progress=False)


def test_hdf5_signature_after_a_user_block_and_not_elsewhere(tmp_path):
    path = _make(tmp_path, "hdf5-userblock")
    assert open(path, "rb").read(8) != b"\x89HDF\r\n\x1a\n"
    assert sniff(path) == "hdf5"
    odd = tmp_path / "odd.bin"  # the signature at an offset that is no user block size
    odd.write_bytes(bytes(700) + b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert sniff(odd) is None
