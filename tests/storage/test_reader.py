"""Reading datasets: indexing, lazy bounded opening, pickling, worker processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import tempfile
import threading

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npyseq
from npyseq.errors import InvalidArgumentError, MissingShardError

import _workers
from _helpers import DTYPES, assert_same_array, no_fsync, open_fds, random_array

N = 23  # rows of the small dataset: shards of 5, 5, 5, 5, 3 rows


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(11)
    arrays = {
        "x": random_array(rng, np.float32, (N, 2, 3)),
        "y": np.arange(N, dtype=np.int64) * 10,
        "b": np.linspace(-3, 3, N, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "s": np.array([f"r{i}".encode() for i in range(N)], dtype="S4"),
    }
    root = tmp_path_factory.mktemp("small") / "ds"
    npyseq.write_shards(root, arrays, rows=5, progress=False)
    return root, arrays


def test_dataset_and_array_properties(small):
    root, arrays = small
    ds = npyseq.open_shards(root)
    assert len(ds) == N
    assert ds.names == ["x", "y", "b", "s"]
    assert list(ds) == ["x", "y", "b", "s"]
    assert "x" in ds and "z" not in ds
    assert ds.num_shards == 5
    assert ds.path == str(root)
    assert ds.nbytes == sum(os.path.getsize(os.path.join(folder, f))
                            for folder, _, files in os.walk(root) for f in files if f.endswith(".npy"))
    for name, source in arrays.items():
        a = ds[name]
        assert a.shape == source.shape
        assert a.dtype == source.dtype
        assert a.ndim == source.ndim
        assert len(a) == N
        assert a.nbytes == source.nbytes
        assert a.name == name
        assert a.dataset is ds
    assert ds["b"].dtype == ml_dtypes.bfloat16
    assert re.fullmatch(
        rf"<npyseq.Dataset '{re.escape(str(root))}' rows=23 shards=5 manifest=xxh3_64:{ds.checksum} "
        r"\{x: float32 \(2, 3\), y: int64 \(\), b: bfloat16 \(\), s: \|S4 \(\)\}>", repr(ds))
    assert repr(ds["x"]) == f"<npyseq.ShardedArray 'x' shape=(23, 2, 3) dtype=float32 in {str(root)!r}>"
    with pytest.raises(KeyError, match=re.escape(
            f"{root}: no array named 'z'; arrays are ['x', 'y', 'b', 's']")):
        ds["z"]


KEYS = {
    "int 0": 0, "int last": N - 1, "int -1": -1, "int -N": -N, "np.int64": np.int64(7),
    "np.uint8": np.uint8(5),
    "all": slice(None), "within shard": slice(6, 9), "across shards": slice(3, 17),
    "shard edges": slice(5, 10), "tail": slice(-5, None), "empty": slice(3, 3),
    "backwards empty": slice(9, 2), "past the end": slice(100, 200), "clipped": slice(-100, 100),
    "step 2": slice(1, None, 2), "step 7": slice(None, None, 7), "step -1": slice(None, None, -1),
    "step -3": slice(20, 2, -3), "step -2 from -1": slice(-1, None, -2),
    "ints any order": [22, 0, 5, 5, 4, 10, 9, 22], "negative ints": [-1, -23, 3, -5],
    "one int": [12], "sorted run": [5, 6, 7, 8, 9, 10], "duplicates in run": [5, 5, 6, 7],
    "int32 array": np.array([3, 19, 2], np.int32), "uint64 array": np.array([3, 19, 2], np.uint64),
    "empty list": [], "empty array": np.array([], np.int64),
    "mask": np.arange(N) % 3 == 1, "all false mask": np.zeros(N, bool),
    "list mask": [i % 4 == 0 for i in range(N)],
    "2-d ints": np.array([[1, 2, 22], [20, 3, 3]]), "0-d int array": np.array(3),
    "2-d empty": np.empty((0, 3), np.int64),
    "ellipsis": Ellipsis, "empty tuple": (),
}


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
def test_indexing_equals_numpy(small, key):
    root, arrays = small
    ds = npyseq.open_shards(root, max_open=2)
    for name, source in arrays.items():
        assert_same_array(ds[name][key], source[key])


@pytest.mark.parametrize("key", [
    (slice(2, 9), 1), (4, 0, 2), (np.array([3, 1, 3]), slice(None), 0), (slice(None, None, -4), 1, slice(1, None)),
    ([20, 2], Ellipsis), (-2, 1), (Ellipsis, 0), (Ellipsis, 1, 2), (None, 3), (None, slice(2, 4), 1),
    ([3, 1], [0, 1]), ([3, 1, 3], [0, 1, 1], [2, 0, 2]), (np.arange(N) % 2 == 0, 1),
    (np.array([[1, 22], [3, 4]]), 0, slice(None)), (np.array([[1, 22], [3, 4]]), [1, 0]),
    ([5, 5, 0], slice(None), [2, 1, 0]), (np.array(3), 1), (slice(None), [1, 0]),
], ids=str)
def test_tuple_keys_equal_numpy(small, key):
    root, arrays = small
    ds = npyseq.open_shards(root)
    assert_same_array(ds["x"][key], arrays["x"][key])


def test_read_take_and_array_protocol(small):
    root, arrays = small
    x = npyseq.open_shards(root)["x"]
    assert_same_array(x.read(3, 17), arrays["x"][3:17])
    assert_same_array(x.read(23, 23), arrays["x"][23:23])
    assert_same_array(x.take(np.array([22, 1, 1, 6])), arrays["x"][[22, 1, 1, 6]])
    assert_same_array(np.asarray(x), arrays["x"])
    y = npyseq.open_shards(root)["y"]
    assert_same_array(np.asarray(y, dtype=np.float64), arrays["y"].astype(np.float64))
    out = x[0:10]
    out[:] = 0  # a copy: the dataset does not change
    assert_same_array(x[0:10], arrays["x"][0:10])
    for key in (slice(0, 10), slice(3, 17), [4, 1], np.arange(N) > 5, slice(None, None, -2), 7):
        assert type(x[key]) is np.ndarray  # plain arrays, never views of a memmap


BAD_KEYS = [
    (N, IndexError, f"index {N} is out of bounds for {N} rows of 'x'"),
    (-N - 1, IndexError, f"index {-N - 1} is out of bounds for {N} rows of 'x'"),
    ([0, N], IndexError, f"index {N} is out of bounds for {N} rows of 'x'"),
    (np.array([-N - 1, 2]), IndexError, f"index {-N - 1} is out of bounds for {N} rows of 'x'"),
    (np.array([1.0, 2.0]), IndexError, "only integers, slices, and integer or boolean arrays are valid indices"),
    (np.ones(N - 1, bool), IndexError, re.escape(f"boolean index must have shape ({N},), got ({N - 1},)")),
    ("a", IndexError, "only integers, slices"),
]


@pytest.mark.parametrize("key, error, message", BAD_KEYS, ids=[str(k[0])[:20] for k in BAD_KEYS])
def test_bad_keys_raise_like_numpy(small, key, error, message):
    root, arrays = small
    x = npyseq.open_shards(root)["x"]
    with pytest.raises(error, match=message):
        x[key]
    with pytest.raises(error):
        arrays["x"][key]


# --- property: any indexing equals numpy's ------------------------------------


@st.composite
def index_keys(draw, n: int):
    bound = st.one_of(st.none(), st.integers(-n - 3, n + 3))
    options = [
        st.builds(slice, bound, bound, st.one_of(st.none(), st.integers(-n - 3, n + 3).filter(bool))),
        st.lists(st.booleans(), min_size=n, max_size=n).map(lambda v: np.array(v, dtype=bool)),
    ]
    if n:
        options += [
            st.integers(-n, n - 1),
            st.tuples(st.lists(st.integers(-n, n - 1), max_size=30),
                      st.sampled_from([np.int64, np.int32, np.int16, np.intp])).map(lambda t: np.array(t[0], t[1])),
            st.lists(st.integers(0, n - 1), min_size=6, max_size=6).map(lambda v: np.array(v).reshape(2, 3)),
        ]
    return draw(st.one_of(options))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_indexing_property(data):
    n = data.draw(st.one_of(st.sampled_from([0, 1]), st.integers(0, 40)), label="rows")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2), label="row shape"))
    rows = data.draw(st.integers(1, 12), label="rows per shard")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    source = random_array(rng, dtype, (n,) + shape)
    with tempfile.TemporaryDirectory() as tmp, no_fsync():
        npyseq.write_shards(os.path.join(tmp, "ds"), {"a": source}, rows=rows, progress=False)
        read = data.draw(st.sampled_from(["pread", "mmap", "auto"]), label="read")
        a = npyseq.open_shards(os.path.join(tmp, "ds"), max_open=data.draw(st.integers(1, 3)),
                               read=read)["a"]
        assert a.dtype == source.dtype and a.shape == source.shape
        for key in data.draw(st.lists(index_keys(n), min_size=1, max_size=8), label="keys"):
            assert_same_array(a[key], source[key])


# --- lazy opening, bounded cache ------------------------------------------------


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("many") / "ds"
    x = np.arange(600 * 4, dtype=np.int32).reshape(600, 4)
    with no_fsync():
        npyseq.write_shards(root, {"x": x}, rows=2, progress=False)  # 300 shards
    return root, x


def test_open_files_stay_bounded(many_shards):
    root, x = many_shards
    before = open_fds()
    ds = npyseq.open_shards(root, max_open=8)
    assert ds.num_shards == 300
    assert open_fds() == before + 1  # opening maps nothing; it pins the folder (one descriptor)
    assert_same_array(ds["x"][:], x)
    assert before + 1 <= open_fds() <= before + 1 + 8
    perm = np.random.default_rng(0).permutation(600)
    assert_same_array(ds["x"][perm], x[perm])
    assert_same_array(ds["x"][::-3], x[::-3])
    for i in range(0, 600, 7):
        assert_same_array(ds["x"][i], x[i])
    assert before + 1 <= open_fds() <= before + 1 + 8
    ds.close()
    assert open_fds() == before + 1
    del ds
    assert open_fds() == before


def test_open_file_count_is_measurable(many_shards):
    """The bound above is meaningful: each mapped shard does hold a descriptor."""
    root, x = many_shards
    before = open_fds()
    ds = npyseq.open_shards(root, max_open=1000)
    assert_same_array(ds["x"][:], x)
    assert open_fds() >= before + 300
    ds.close()
    assert open_fds() == before + 1  # the folder


def test_shards_open_lazily(tmp_path):
    x = np.arange(20)
    npyseq.write_shards(tmp_path / "ds", {"x": x}, rows=5, progress=False)
    os.unlink(tmp_path / "ds" / "x" / "000003.npy")
    ds = npyseq.open_shards(tmp_path / "ds", verify="none")
    assert_same_array(ds["x"][:15], x[:15])
    assert_same_array(ds["x"][[14, 0, 7]], x[[14, 0, 7]])
    with pytest.raises(MissingShardError, match=re.escape(f"{tmp_path / 'ds' / 'x' / '000003.npy'}: shard file is missing")):
        ds["x"][15]


def test_threads_share_a_small_cache(many_shards):
    root, x = many_shards
    a = npyseq.open_shards(root, max_open=2)["x"]
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(60):
                idx = rng.integers(0, 600, size=rng.integers(1, 20))
                np.testing.assert_array_equal(a[idx], x[idx])
                start = int(rng.integers(0, 590))
                np.testing.assert_array_equal(a[start:start + 9], x[start:start + 9])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_open_shards_arguments(small):
    root, _ = small
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "verify must be one of 'none', 'headers', 'checksums'; got 'all'")):
        npyseq.open_shards(root, verify="all")
    for bad in (0, -1, True, 2.0):
        with pytest.raises(InvalidArgumentError, match=re.escape(f"max_open must be a positive int, got {bad!r}")):
            npyseq.open_shards(root, max_open=bad)


# --- pickling and worker processes ------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "ds"
    x = np.arange(3200 * 4096, dtype=np.float32).reshape(3200, 4096)  # 52 MB
    y = np.arange(3200, dtype=np.int64)
    npyseq.write_shards(root, {"x": x, "y": y}, rows=64, progress=False)
    return root, x, y


def test_pickles_are_small_and_read_the_same(big):
    root, x, y = big
    ds = npyseq.open_shards(root)
    assert ds.nbytes >= 50 * 10**6
    assert_same_array(ds["x"][60:70], x[60:70])  # some shards are mapped now
    for obj in (ds, ds["x"], ds["y"]):
        assert len(pickle.dumps(obj)) < 2048
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2.path == ds.path and ds2.checksum == ds.checksum and ds2.names == ["x", "y"]
    x2 = pickle.loads(pickle.dumps(ds["x"]))
    assert x2.shape == x.shape and x2.dtype == x.dtype
    idx = np.array([3199, 0, 64, 64, 1000, 63])
    assert_same_array(x2[idx], x[idx])
    assert_same_array(ds2["y"][::-97], y[::-97])
    assert_same_array(pickle.loads(pickle.dumps(x2))[100:200], x[100:200])


WORKER_KEYS = [slice(60, 70), np.array([3199, 0, 64, 64, 1000, 63]), slice(3199, 0, -411), 1234, np.arange(3200) % 500 == 3]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_read_the_same_rows(big, method):
    root, x, y = big
    ds = npyseq.open_shards(root)
    assert_same_array(ds["x"][0:130], x[0:130])  # the parent has shards mapped before forking
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2, initializer=_workers.init_worker, initargs=(ds["x"],)) as pool:
        results = pool.map_async(_workers.read_rows, WORKER_KEYS).get(timeout=90)
        sent = pool.starmap_async(_workers.read_from, [(ds["y"], k) for k in WORKER_KEYS]).get(timeout=90)
    for key, (pid, got) in zip(WORKER_KEYS, results):
        assert pid != os.getpid()
        assert_same_array(got, x[key])
    for key, (pid, got) in zip(WORKER_KEYS, sent):
        assert pid != os.getpid()
        assert_same_array(got, y[key])


def test_read_modes_give_identical_rows(many_shards, monkeypatch):
    root, x = many_shards
    rng = np.random.default_rng(1)
    keys = [slice(None), slice(5, 597), rng.permutation(600), np.sort(rng.choice(600, 100)),
            np.repeat(np.arange(0, 600, 7), 2)]
    views = {mode: npyseq.open_shards(root, read=mode)["x"] for mode in ("pread", "mmap")}
    assert views["pread"].dataset.map_reads is False and views["mmap"].dataset.map_reads is True
    for key in keys:
        assert_same_array(views["pread"][key], x[key])
        assert_same_array(views["mmap"][key], x[key])
    # "auto" maps when the data takes at most half the memory budget, else preads.
    from npyseq.storage import dataset

    monkeypatch.setattr(dataset, "memory_budget", lambda: 2 * x.nbytes * 10)
    assert npyseq.open_shards(root).map_reads is True
    monkeypatch.setattr(dataset, "memory_budget", lambda: x.nbytes)
    assert npyseq.open_shards(root).map_reads is False
    with pytest.raises(npyseq.InvalidArgumentError, match="read must be one of .*got 'fast'"):
        npyseq.open_shards(root, read="fast")


def test_a_dataset_unpickled_while_its_twin_is_open_here_is_that_dataset(tmp_path):
    """A worker of npyseq's pool gets its sequence again each epoch: the shards it mapped serve again."""
    import gc
    import pickle
    ds = npyseq.write_shards(tmp_path / "d", {"x": np.arange(40.0)}, rows=10, progress=False)
    first = pickle.loads(pickle.dumps(ds))
    assert first is not ds  # not this process's own dataset object...
    assert pickle.loads(pickle.dumps(ds)) is first  # ...but one unpickled here and still alive is
    assert first["x"][np.arange(3)].tolist() == [0.0, 1.0, 2.0]
    del first
    gc.collect()
    npyseq.write_shards(tmp_path / "d", {"x": np.arange(40.0) + 1}, rows=10, progress=False, overwrite=True)
    with pytest.raises(npyseq.DatasetChangedError, match="changed since the dataset was opened"):
        pickle.loads(pickle.dumps(ds))  # another manifest: refused, never the old dataset
