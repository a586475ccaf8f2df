"""The read side of the storage package: its seams, and the rules it keeps once.

``Dataset.verify``, ``Dataset.shard/shard_starts/map_reads/locate``,
``ShardedArray.gather``; one offsets predicate for inputs and files; one
``out=`` check; pickling by path through module functions; the after-fork
reset; and the import rules of the modules (no private names across modules,
no circle, no module over 500 lines).
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import pickle
import re

import ml_dtypes
import numpy as np
import pytest
import xxhash

import npyseq
from npyseq.errors import ChecksumMismatchError, CorruptShardError, DatasetChangedError, InvalidArgumentError
from _helpers import assert_same_array, load_manifest_json, write_manifest_json

N = 23  # rows: shards of 5, 5, 5, 5, 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
READ_SIDE = ["files", "not_found", "dataset", "arrays", "ragged_array", "ragged_sources"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(5)
    arrays = {
        "x": rng.standard_normal((N, 2, 3)).astype(np.float32),
        "y": np.arange(N, dtype=np.int64),
        "b": np.linspace(-2, 2, N, dtype=np.float32).astype(ml_dtypes.bfloat16),
    }
    root = tmp_path_factory.mktemp("seams") / "ds"
    npyseq.write_shards(root, arrays, rows=5, progress=False)
    return root, arrays


def _checksum(path) -> str:
    with open(path, "rb") as f:
        return "xxh3_64:" + xxhash.xxh3_64_hexdigest(f.read())


class _Progress:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


# --- Dataset.verify -----------------------------------------------------------------


def test_verify_reports_each_bad_file_in_manifest_order(tmp_path):
    rows = [np.arange(i % 4, dtype=np.int32) + i for i in range(12)]
    root = tmp_path / "ds"
    npyseq.write_shards(root, {"x": np.arange(24.0).reshape(12, 2), "t": rows}, rows=4, progress=False)
    ds = npyseq.open_shards(root)
    progress = _Progress()
    assert ds.verify(progress) == []
    assert progress.n == ds.nbytes  # every byte of every file, offsets files included

    flipped, missing = root / "x" / "000001.npy", root / "t" / "000002.offsets.npy"
    expected = load_manifest_json(root)["arrays"]["x"]["shards"][1]["checksum"]
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    flipped.write_bytes(bytes(data))
    os.unlink(missing)
    assert npyseq.open_shards(root, verify="none").verify() == [
        f"{flipped}: checksum {_checksum(flipped)} found, the manifest says {expected}",
        f"{missing}: shard file is missing",
    ]


# --- Dataset.shard, shard_starts, map_reads, locate -----------------------------------


def test_shard_starts_and_locate_group_rows_by_shard(small):
    root, _ = small
    ds = npyseq.open_shards(root)
    assert ds.shard_starts == [0, 5, 10, 15, 20, 23]
    rng = np.random.default_rng(0)
    for rows in (np.array([6, 7, 8]), np.arange(3, 22), rng.integers(0, N, 40), np.array([22, 0, 22, 5])):
        located = ds.locate(rows)
        grouped = np.concatenate([ds.shard_starts[k] + local for k, _, _, local in located.parts])
        ends = [0]
        for k, a, b, local in located.parts:  # one part per shard, in shard order, covering the rows
            assert (a, b - a) == (ends[-1], len(local)) and b > a
            assert np.all((0 <= local) & (local < ds.shard_starts[k + 1] - ds.shard_starts[k]))
            ends.append(b)
        assert ends[-1] == len(rows)
        assert [k for k, _, _, _ in located.parts] == sorted({int(np.searchsorted(ds.shard_starts, r, "right")) - 1
                                                               for r in rows})
        back = grouped if located.order is None else np.empty_like(grouped)
        if located.order is not None:
            back[located.order] = grouped
        assert back.tolist() == rows.tolist()
        assert (located.order is None) == bool(np.all(rows[1:] >= rows[:-1]))
    assert ds.locate(np.empty(0, np.int64)) == (None, [])


def test_shard_is_opened_once_and_kept_up_to_max_open(small):
    root, arrays = small
    ds = npyseq.open_shards(root, max_open=np.int64(2))  # numpy integers count, as everywhere
    first = ds.shard("x", 0)
    assert ds.shard("x", 0) is first
    assert_same_array(first.array, arrays["x"][:5])
    ds.shard("x", 1)
    ds.shard("x", 2)  # the least recently used one, shard 0, is dropped
    assert ds.shard("x", 0) is not first
    for bad in (True, 0, 2.0, np.float64(2)):
        with pytest.raises(InvalidArgumentError, match=re.escape(f"max_open must be a positive int, got {bad!r}")):
            npyseq.open_shards(root, max_open=bad)


def test_map_reads_follows_the_read_mode(small):
    root, _ = small
    assert npyseq.open_shards(root, read="mmap").map_reads is True
    assert npyseq.open_shards(root, read="pread").map_reads is False


# --- ShardedArray.gather ----------------------------------------------------------------


BATCHES = {
    "one shard, consecutive": np.arange(6, 10),
    "across shards, consecutive": np.arange(3, 17),
    "whole array": np.arange(N),
    "ascending, scattered": np.array([0, 4, 5, 11, 22]),
    "ascending, duplicates": np.array([1, 1, 2, 3]),
    "unsorted": np.array([22, 3, 9, 3, 0]),
    "one row": np.array([12]),
    "negative": np.array([-1, 0]),
    "no row": np.empty(0, np.int64),
}


@pytest.mark.parametrize("read", ["mmap", "pread"])
@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_gather_reads_a_batch_into_out(small, read, batch):
    root, arrays = small
    ds = npyseq.open_shards(root, read=read)
    rows, located = BATCHES[batch], {}
    for name in ("x", "b"):  # b: bfloat16, stored as uint16
        array = ds[name]
        out = np.full((len(rows),) + array.shape[1:], 7, array.dtype)
        got = array.gather(rows, out, located)
        assert got.dtype == arrays[name].dtype and (not len(rows) or np.shares_memory(got, out))
        assert_same_array(got, arrays[name][rows])
        assert_same_array(array.gather(rows), arrays[name][rows])  # a new array without out
    # The rows are located once per dataset for all its arrays, when they are
    # gathered out of memory maps and are not one range.
    rows = np.where(rows < 0, rows + N, rows)
    one_range = len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
    assert list(located) == ([id(ds)] if read == "mmap" and len(rows) and not one_range else [])


def test_gather_refuses_rows_out_of_range_and_a_wrong_out(small):
    root, _ = small
    x = npyseq.open_shards(root)["x"]
    for rows, bad in (([N - 1, N], N), ([5, -N - 1], -N - 1), ([0, 2 * N], 2 * N)):
        with pytest.raises(IndexError, match=re.escape(f"index {bad} is out of bounds for {N} rows of 'x'")):
            x.gather(np.array(rows))
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "out must be a C-contiguous array of shape (2, 2, 3) and dtype float32, got shape (2, 2, 3), "
            "dtype float64")):
        x.gather(np.arange(2), np.empty((2, 2, 3)))


# --- one out= check, one "out of bounds" text ------------------------------------------


def test_out_is_checked_once_for_every_read(small, tmp_path):
    root, _ = small
    x = npyseq.open_shards(root)["x"]
    shape = "(2, 2, 3) and dtype float32"
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"out must be a C-contiguous array of shape {shape}, got a list")):
        x.take([0, 1], out=[[0.0] * 3] * 2)
    strided = np.empty((2, 2, 6), np.float32)[:, :, ::2]
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"out must be a C-contiguous array of shape {shape}, got shape (2, 2, 3), dtype float32, "
            "not C-contiguous")):
        x.read(0, 2, out=strided)
    npyseq.write_shards(tmp_path / "r", {"t": [np.arange(3, dtype=np.int32), np.arange(1, dtype=np.int32)]},
                        progress=False)
    t = npyseq.open_shards(tmp_path / "r")["t"]
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "out must be a C-contiguous array of shape (2, 3) and dtype int32, got a tuple")):
        t.padded([0, 1], out=(0, 0))
    with pytest.raises(IndexError, match=re.escape("index -3 is out of bounds for 2 rows of 't'")):
        t[-3]
    with pytest.raises(InvalidArgumentError, match=re.escape("padding must be 'post' or 'pre', got ['post']")):
        t.padded([0], padding=["post"])
    with pytest.raises(InvalidArgumentError, match=re.escape("length must be a non-negative int or None, got True")):
        t.padded([0], length=True)


# --- one offsets predicate ----------------------------------------------------------------


OFFSETS_CASES = {  # offsets of 3 rows into 10 values -> the problem, in words
    "decreasing": ([0, 4, 3, 10], "offsets must not decrease, but offset 2 is 3 after 4 at 1"),
    "past the end": ([0, 4, 12, 10], "offset 2 is 12, past the end of the values ({values} holds 10)"),
    "ending early": ([0, 4, 8, 9], "the last offset is 9, but the values ({values}) hold 10; "
                                   "offsets must end at the number of values"),
    "starting late": ([1, 4, 8, 10], "offsets must start at 0, found 1"),
}


@pytest.mark.parametrize("case", OFFSETS_CASES, ids=str)
def test_offsets_of_inputs_and_of_files_break_the_same_rule_in_the_same_words(tmp_path, case):
    bad, problem = OFFSETS_CASES[case]
    values = np.arange(10, dtype=np.int32)
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't' offsets: " + problem.format(values="array 't' values"))):
        npyseq.write_shards(tmp_path / "in", {"t": npyseq.RaggedSource(values, offsets=np.array(bad))},
                            progress=False)

    root = tmp_path / "ds"
    npyseq.write_shards(root, {"t": npyseq.RaggedSource(values, offsets=np.array([0, 4, 8, 10]))},
                        progress=False)
    offsets_file, values_file = root / "t" / "000000.offsets.npy", root / "t" / "000000.npy"
    np.save(offsets_file, np.array(bad, np.int64))  # same header and size: only the content is wrong
    doc = load_manifest_json(root)
    doc["arrays"]["t"]["shards"][0]["offsets"]["checksum"] = _checksum(offsets_file)
    write_manifest_json(root, doc)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{offsets_file}: " + problem.format(values=values_file))):
        npyseq.open_shards(root)["t"].lengths()
    from npyseq.storage.ragged_array import offsets_problem

    assert offsets_problem(np.array([0, 4, 8, 10]), 10, "v") is None


# --- pickling and forks --------------------------------------------------------------------


def test_datasets_and_arrays_pickle_by_path_through_module_functions(small, tmp_path):
    root, arrays = small
    ds = npyseq.open_shards(root, verify="checksums", read="pread")
    blob = pickle.dumps(ds)
    assert len(blob) < 1024 and b"npyseq.storage.dataset" in blob and b"reopen" in blob
    again = pickle.loads(blob)
    assert (again.path, again.checksum, again.map_reads) == (ds.path, ds.checksum, False)
    array_blob = pickle.dumps(ds["x"])
    assert len(array_blob) < 1024 and b"array_of" in array_blob
    assert_same_array(pickle.loads(array_blob)[3:9], arrays["x"][3:9])

    copy = tmp_path / "copy"
    npyseq.write_shards(copy, arrays, rows=5, progress=False)
    blob = pickle.dumps(npyseq.open_shards(copy))
    doc = load_manifest_json(copy)
    doc["arrays"]["y"]["shards"][0]["checksum"] = "xxh3_64:0123456789abcdef"
    write_manifest_json(copy, doc)
    with pytest.raises(DatasetChangedError, match=re.escape(f"{copy}: manifest.json changed since the dataset")):
        pickle.loads(blob)


def _read_in_child(array, send):
    try:
        send.send(("ok", array[0].tolist()))
    except BaseException as e:  # report anything, never hang the parent
        send.send(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.timeout(60)
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_opens_and_checks_shards_afresh(tmp_path):
    root = tmp_path / "ds"
    npyseq.write_shards(root, {"x": np.arange(20.0).reshape(10, 2)}, rows=5, progress=False)
    ds = npyseq.open_shards(root, verify="checksums", read="mmap")
    x = ds["x"]
    assert x[0].tolist() == [0.0, 1.0]  # shard 0 hashed and mapped in this process
    path = root / "x" / "000000.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last row of shard 0 changes; its size and header do not
    path.write_bytes(bytes(data))

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_read_in_child, args=(x, send), daemon=True)
    proc.start()
    try:
        assert recv.poll(30), "the forked child did not answer"
        status, message = recv.recv()
    finally:
        proc.join(10)
    # The child's cache was reset at the fork (npyseq.forks): it reopens the
    # shard and hashes it again; the parent keeps the shard it checked.
    assert (status, message) == (
        "error", f"ChecksumMismatchError: {path}: checksum {_checksum(path)} found, the manifest says "
                 f"{load_manifest_json(root)['arrays']['x']['shards'][0]['checksum']}; the shard is corrupt")
    assert x[0].tolist() == [0.0, 1.0]
    with pytest.raises(ChecksumMismatchError):
        npyseq.open_shards(root, verify="checksums")["x"][0]


# --- the modules ------------------------------------------------------------------------


def _tree(module: str) -> ast.Module:
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _runtime_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """The ``from ... import`` statements outside ``if TYPE_CHECKING:`` blocks."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node) if n is not node}
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in skipped]


@pytest.mark.parametrize("name", READ_SIDE + ["cli"])
def test_read_side_modules_keep_the_import_rules(name):
    module = f"npyseq.storage.{name}" if name != "cli" else "npyseq.cli"
    tree = _tree(module)
    with open(os.path.join(ROOT, *module.split(".")) + ".py", encoding="utf-8") as f:
        lines = len(f.read().splitlines())
    assert lines <= 500, f"{module}: {lines} lines"
    for node in _runtime_imports(tree):
        private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
        assert not private, f"{module} imports {private} from {node.module}"
        assert not (node.module or "").startswith(("keras", "tensorflow", "jax", "torch"))
        if name in ("files", "not_found", "arrays", "ragged_array"):  # below the dataset: no circle
            assert node.module != "npyseq.storage.dataset", f"{module} imports the dataset module"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] in ("keras", "tensorflow", "jax", "torch") for a in node.names)
    if name == "cli":  # the front end uses public seams only
        reached = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                          and n.attr.startswith("_") and not n.attr.startswith("__")})
        assert reached == [], f"cli reaches into {reached}"
