"""Array-like sources (h5py, Zarr v3, Dask, anything with shape, dtype and row slicing):
converted byte for byte as the same rows in memory would be, read in pieces that follow
the source's chunks and never whole, from Python and from ``npyseq convert``; and a
147 MB HDF5 dataset converted under a 96 MB cgroup memory cap."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

import npyseq
from npyseq.cli import main
from npyseq.errors import InvalidArgumentError
from npyseq.storage import writer
from npyseq.storage.array_sources import PIECE_BYTES, ArrayLikeSource

h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

ROWS = 1000
DTYPES = ["float16", "int8", "bool", "complex64", "float64", "uint16"]


def _data(dtype: str, rows: int = ROWS, shape=(3,)) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(dtype)) % 2**32)
    if dtype == "bool":
        return rng.random((rows,) + shape) > 0.5
    if dtype.startswith("complex"):
        return (rng.standard_normal((rows,) + shape) + 1j * rng.standard_normal((rows,) + shape)).astype(dtype)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (rows,) + shape, dtype=dtype, endpoint=True)
    return rng.standard_normal((rows,) + shape).astype(dtype)


def _files(root) -> dict[str, bytes]:
    """Every file of a dataset folder, by relative path."""
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            path = os.path.join(folder, n)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def _same_as_numpy(tmp_path, arrays_np: dict, arrays_src: dict, **kw) -> None:
    """The dataset written from the sources is byte-identical to the one from numpy (manifest too)."""
    npyseq.write_shards(tmp_path / "from-numpy", arrays_np, progress=False, **kw)
    npyseq.write_shards(tmp_path / "from-source", arrays_src, progress=False, **kw)
    expected, got = _files(tmp_path / "from-numpy"), _files(tmp_path / "from-source")
    assert sorted(got) == sorted(expected)
    assert got == expected
    for name, a in arrays_np.items():  # read back with numpy alone
        doc = json.loads(expected["manifest.json"])
        parts = [np.load(tmp_path / "from-source" / s["path"]) for s in doc["arrays"][name]["shards"]]
        assert np.array_equal(np.concatenate(parts), a)


# --- round trips ------------------------------------------------------------------------


# chunks: one row, not aligned to the shards (7, 333), bigger than a shard, contiguous (None)
@pytest.mark.parametrize("chunk_rows", [1, 7, 333, 600, None], ids=lambda c: f"chunks-{c}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_hdf5_dataset_round_trip(tmp_path, dtype, chunk_rows):
    x, y = _data(dtype), np.arange(ROWS, dtype=np.int64)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=None if chunk_rows is None else (chunk_rows, 3))
        f.create_dataset("y", data=y, chunks=(128,), compression="gzip")
    with h5py.File(tmp_path / "d.h5", "r") as f:
        _same_as_numpy(tmp_path, {"x": x, "y": y}, {"x": f["x"], "y": f["y"]}, rows=150)


@pytest.mark.parametrize("chunk_rows", [7, 333, 600], ids=lambda c: f"chunks-{c}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_zarr_v3_array_round_trip(tmp_path, dtype, chunk_rows):
    x = _data(dtype)
    z = zarr.create_array(tmp_path / "s.zarr", shape=x.shape, dtype=x.dtype, chunks=(chunk_rows, 3),
                          zarr_format=3)
    z[:] = x
    z = zarr.open_array(tmp_path / "s.zarr", mode="r")
    assert z.metadata.zarr_format == 3
    _same_as_numpy(tmp_path, {"x": x}, {"x": z}, rows=150)


@pytest.mark.parametrize("chunks", [(100,), (7,), (333, 1, 600, 66), (1000,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dask_array_round_trip(tmp_path, dtype, chunks):
    x = _data(dtype)
    d = da.from_array(x, chunks=(chunks, (3,)) if len(chunks) > 1 else (chunks[0], 3))
    _same_as_numpy(tmp_path, {"x": x}, {"x": d}, rows=150)


def test_a_dask_array_of_computed_blocks_round_trips(tmp_path):
    x = np.arange(ROWS * 4, dtype=np.float32).reshape(ROWS, 4)
    d = da.arange(ROWS * 4, chunks=900, dtype=np.float32).reshape(ROWS, 4).rechunk((130, 4)) * 1
    _same_as_numpy(tmp_path, {"x": x}, {"x": d}, shard_size="5KB")


def test_a_dask_array_of_unknown_chunk_sizes_is_refused(tmp_path):
    d = da.from_array(np.arange(10), chunks=5)
    d = d[d > 3]
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 'x': a Array with shape (nan,) and dtype int64 is not an array npyseq can read")
            + ".*call .compute_chunk_sizes.. first"):
        npyseq.write_shards(tmp_path / "out", {"x": d}, progress=False)
    assert not (tmp_path / "out").exists()


def test_hdf5_read_in_worker_processes_is_byte_identical(tmp_path, monkeypatch):
    """A big HDF5 source is read by processes that open the file by path (forced here)."""
    monkeypatch.setattr(writer, "PROCESSES_FROM", 0)
    x = _data("float32", 5000, (16,))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(100, 16), compression="gzip")
    with h5py.File(tmp_path / "d.h5", "r") as f:
        _same_as_numpy(tmp_path, {"x": x}, {"x": f["x"]}, rows=700, jobs=2)


def test_hdf5_file_open_for_writing_is_read_by_the_callers_handle(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "PROCESSES_FROM", 0)
    x = _data("int8", 3000)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(64, 3))
        assert ArrayLikeSource("x", f["x"]).portable is None  # unflushed: only this handle sees it
        _same_as_numpy(tmp_path, {"x": x}, {"x": f["x"]}, rows=700, jobs=2)


# --- pieces: never whole, following the chunks ------------------------------------------


class Recording:
    """An array-like that records the row slices it is asked for."""

    def __init__(self, array: np.ndarray, chunks=None):
        self.array, self.dtype, self.shape, self.asked = array, array.dtype, array.shape, []
        if chunks is not None:
            self.chunks = chunks

    def __getitem__(self, key):
        self.asked.append((key.start, key.stop))
        return self.array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def test_an_array_like_is_read_in_pieces_of_whole_chunks(tmp_path):
    x = np.arange(1000 * 4, dtype=np.int32).reshape(1000, 4)
    src = Recording(x, chunks=(30, 4))
    _same_as_numpy(tmp_path, {"x": x}, {"x": src}, rows=400)
    # A shard's rows in one piece (whole 30-row chunks, cut at the shard's ends), never more.
    assert sorted(src.asked) == [(0, 400), (400, 800), (800, 1000)]  # shards are written by 2 threads


def test_pieces_stay_under_the_piece_size_and_split_a_bigger_chunk():
    x = np.zeros((4096, 1024), np.float32)  # 4 KiB rows: 4096 rows a piece
    src = ArrayLikeSource("x", Recording(x, chunks=(1000, 1024)))
    assert PIECE_BYTES // 4096 == 4096
    assert list(src.pieces(0, 4096, 4096)) == [(0, 4096)]
    assert list(src.pieces(0, 4096, 3500)) == [(0, 3000), (3000, 4096)]
    assert list(src.pieces(0, 4096, 1500)) == [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4096)]
    assert list(src.pieces(0, 4096, 400)) == [(0, 334), (334, 668), (668, 1000), (1000, 1334),
                                              (1334, 1668), (1668, 2000), (2000, 2334), (2334, 2668),
                                              (2668, 3000), (3000, 3334), (3334, 3668), (3668, 4000),
                                              (4000, 4096)]
    dask_like = ArrayLikeSource("x", Recording(x[:10], chunks=((3, 0, 4, 3), (1024,))))
    assert list(dask_like.pieces(1, 10, 5)) == [(1, 3), (3, 7), (7, 10)]


def test_an_array_like_whose_slices_are_wrong_is_refused(tmp_path):
    class Short(Recording):
        def __getitem__(self, key):
            return self.array[key][:-1]

    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 'x': rows 0:10 of the Short came back with shape (9,) and dtype int64, not (10,) "
            "and int64; give an array whose row slices are numpy arrays of its shape and dtype")):
        npyseq.write_shards(tmp_path / "out", {"x": Short(np.arange(10))}, progress=False)


# --- the command line -------------------------------------------------------------------


@pytest.fixture()
def h5(tmp_path):
    x, y, z = _data("float16", 100), _data("int8", 100, ()), _data("complex64", 7, (2,))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(9, 3))
        f.create_dataset("y", data=y)
        f.create_group("g").create_dataset("z", data=z)
        f.create_dataset("scalar", data=3.0)
    return tmp_path / "d.h5", {"x": x, "y": y, "z": z}


def _read(out) -> dict[str, np.ndarray]:
    doc = json.load(open(out / "manifest.json"))
    return {n: np.concatenate([np.load(out / s["path"]) for s in a["shards"]]) for n, a in doc["arrays"].items()}


def test_convert_every_dataset_at_the_root_of_an_hdf5_file(h5, tmp_path, capsys):
    path, data = h5
    assert main(["convert", str(path), "-o", str(tmp_path / "out"), "-q", "--rows-per-shard", "30"]) == 0
    got = _read(tmp_path / "out")
    assert sorted(got) == ["x", "y"]
    assert got["x"].dtype == np.float16 and np.array_equal(got["x"], data["x"])
    assert np.array_equal(got["y"], data["y"])


def test_convert_one_hdf5_dataset_by_path_and_rename_it(h5, tmp_path, capsys):
    path, data = h5
    assert main(["convert", f"{path}:/g/z", "-o", str(tmp_path / "a"), "-qq"]) == 0
    assert list(_read(tmp_path / "a")) == ["z"] and np.array_equal(_read(tmp_path / "a")["z"], data["z"])
    assert main(["convert", f"{path}:/g/z", "--name", "pairs", "-o", str(tmp_path / "b"), "-qq"]) == 0
    assert np.array_equal(_read(tmp_path / "b")["pairs"], data["z"])


def test_convert_an_hdf5_file_whose_datasets_disagree_lists_them(tmp_path, capsys):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["x"], f["y"] = np.arange(10), np.arange(11)
    assert main(["convert", str(tmp_path / "bad.h5"), "-o", str(tmp_path / "out")]) == 1
    p = tmp_path / "bad.h5"
    assert capsys.readouterr().err == (
        f"npyseq convert: error: {p}: its datasets have different numbers of rows: x (10 rows), y (11 rows); "
        "a dataset's arrays all have the same rows: convert those that do by naming each, "
        f"`npyseq convert {p}:/name1 {p}:/name2 -o OUT`\n")
    assert not (tmp_path / "out").exists()


def test_convert_an_hdf5_path_that_is_not_a_dataset(h5, tmp_path, capsys):
    path, _ = h5
    assert main(["convert", f"{path}:/g", "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"npyseq convert: error: {path}:/g: is a group; the file's root holds ['g', 'scalar', 'x', 'y']; "
        f"name a dataset, e.g. {path}:/g\n")


def test_convert_a_zarr_group_an_array_and_a_path(tmp_path, capsys):
    a, b = _data("bool", 50, (2,)), _data("uint16", 50, ())
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    g.create_array("b", data=b, chunks=(7,))
    g.create_array("a", data=a, chunks=(11, 2))
    zarr.create_array(tmp_path / "one.zarr", data=a, chunks=(5, 2))
    assert main(["convert", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "group"), "-qq",
                 "--rows-per-shard", "20"]) == 0
    got = _read(tmp_path / "group")
    assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], a) and np.array_equal(got["b"], b)
    assert main(["convert", f"{tmp_path / 's.zarr'}:/b", "-o", str(tmp_path / "path"), "-qq"]) == 0
    assert np.array_equal(_read(tmp_path / "path")["b"], b)
    assert main(["convert", str(tmp_path / "one.zarr"), "-o", str(tmp_path / "array"), "-qq"]) == 0
    assert list(_read(tmp_path / "array")) == ["one"]


def test_without_h5py_the_error_names_the_extra(h5, tmp_path, capsys, monkeypatch):
    path, _ = h5
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    assert main(["convert", str(path), "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"npyseq convert: error: {path}: is an HDF5 file; reading it needs the h5py package, which is not "
        "installed; install it with pip install 'npyseq[hdf5]'\n")


def test_without_zarr_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    zarr.create_array(tmp_path / "s.zarr", data=np.arange(5))
    monkeypatch.setitem(sys.modules, "zarr", None)
    assert main(["convert", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"npyseq convert: error: {tmp_path / 's.zarr'}: is a Zarr store; reading it needs the zarr package, "
        "which is not installed; install it with pip install 'npyseq[zarr]'\n")


# --- memory: a 147 MB dataset under a 96 MB cap -----------------------------------------

CAP_ROWS, CAP_COLS = 36_000, 1024  # float32: 147 MB


@pytest.fixture(scope="module")
def big_h5(tmp_path_factory):
    from tools.memcap import cgroup_available

    ok, reason = cgroup_available()
    if not ok:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("bigh5")
    path = folder / "big.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=(CAP_ROWS, CAP_COLS), dtype="float32", chunks=(256, CAP_COLS))
        for a in range(0, CAP_ROWS, 4096):
            b = min(CAP_ROWS, a + 4096)
            bits = np.arange(a * CAP_COLS, b * CAP_COLS, dtype=np.uint32).reshape(b - a, CAP_COLS)
            d[a:b] = (bits * np.uint32(2654435761)).view(np.float32)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.cgroup
@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("jobs, cap_mib", [("1", 96), ("2", 128)], ids=["in-process-96MiB", "2-processes-128MiB"])
def test_convert_a_147_mb_hdf5_dataset_under_a_memory_cap(big_h5, tmp_path, jobs, cap_mib):
    from tools.memcap import drop_page_cache, run_capped

    assert os.path.getsize(big_h5) > 147_000_000
    out = tmp_path / "out"
    drop_page_cache(big_h5)
    r = run_capped([sys.executable, "-m", "npyseq", "convert", str(big_h5), "-o", str(out), "--shard-size",
                    "32MB", "--jobs", jobs, "--silent"], cap_mib * 2**20, timeout=150)
    assert (r.returncode, r.oom_killed, r.timed_out, r.stderr) == (0, False, False, ""), r
    print(f"147 MB HDF5 under {cap_mib} MiB, --jobs {jobs}: {r.seconds:.1f} s, "
          f"max usage {r.max_usage_bytes / 2**20:.0f} MiB")
    doc = json.load(open(out / "manifest.json"))
    assert doc["rows"] == CAP_ROWS and len(doc["shard_rows"]) == 5
    start = 0
    with h5py.File(big_h5, "r") as f:
        for shard, rows in zip(doc["arrays"]["x"]["shards"], doc["shard_rows"]):
            part = np.load(out / shard["path"], mmap_mode="r")
            assert np.array_equal(part.view(np.uint32), f["x"][start:start + rows].view(np.uint32))
            start += rows
    assert start == CAP_ROWS
