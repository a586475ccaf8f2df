"""Hostile files and odd situations under a reader (issue 11 items 2, 5, 11-14, 16, 17; issue 10).

Special files where a shard or the manifest should be (FIFOs, folders, sockets,
devices, symbolic links out of the folder), descriptors closed twice, indices
out of range, logical dtypes that are not, shards truncated under a memory
map, datasets that keep their files open after they are dropped, running out
of descriptors. Each is an npyseq error naming the file, never a hang, a crash
or wrong rows.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npyseq
from npyseq import cli
from npyseq.errors import (
    CorruptShardError,
    ManifestError,
    NpyseqError,
    ShardError,
    TooManyOpenFilesError,
)

from _helpers import DTYPES, assert_same_array, load_manifest_json, random_array, write_manifest_json

X = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
Y = np.arange(10, dtype=np.int64)
ROWS = [np.arange(i % 4, dtype=np.int32) + 10 * i for i in range(10)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


@pytest.fixture
def root(tmp_path):
    """Shards of 4, 4 and 2 rows of x, y and a ragged t (values and offsets files)."""
    npyseq.write_shards(tmp_path / "ds", {"x": X, "y": Y, "t": ROWS}, rows=4, progress=False)
    return tmp_path / "ds"


def _run_python(code: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this tree first on the path."""
    full_env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


# --- special files where a shard or the manifest should be (items 2 and 16) --------------

SHARD_HINT = "not a regular file; a shard is a regular .npy file: restore it, or convert the dataset again"
MANIFEST_HINT = "not a regular file; the manifest of a dataset is a regular JSON file written by npyseq"


def _make_special(path, kind: str, tmp_path) -> str:
    """Replace ``path`` by a special file of ``kind``; return what the error must say it is."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
        return "a FIFO (named pipe)"
    if kind == "directory":
        os.mkdir(path)
        return "a directory"
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the socket file stays
        return "a socket"
    if kind == "device":
        try:
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))  # S_IFCHR: /dev/zero
        except (PermissionError, OSError) as e:
            pytest.skip(f"cannot create a device node here ({e})")
        return "a character device"
    raise AssertionError(kind)


SPECIAL = ["fifo", "directory", "socket", "device"]
WHEN = ["open", "lazy"]  # refused by open_shards (verify="headers"), or at the first read (verify="none")


def _open_and_read(root, when: str):
    if when == "open":
        return npyseq.open_shards(root)
    ds = npyseq.open_shards(root, verify="none")
    assert_same_array(ds["x"][:4], X[:4])  # shard 0 is fine
    ds["x"][5]
    ds["t"][5]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("file", ["x/000001.npy", "t/000001.npy", "t/000001.offsets.npy"])
def test_special_file_as_a_shard_is_refused(root, tmp_path, file, kind, when):
    path = root / file
    what = _make_special(path, kind, tmp_path)
    with pytest.raises(CorruptShardError, match=re.escape(f"{path}: is {what}, {SHARD_HINT}")):
        _open_and_read(root, when)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/null"])
def test_symlink_out_of_the_folder_to_a_special_file_is_refused_before_opening(root, tmp_path, target, when,
                                                                             monkeypatch):
    if target == "fifo":
        target = str(tmp_path / "outside.fifo")
        os.mkfifo(target)
    path = root / "x" / "000001.npy"
    os.unlink(path)
    os.symlink(target, path)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    with pytest.raises(ManifestError, match=re.escape(
            f"{root / 'manifest.json'}: shard path 'x/000001.npy' resolves to {target}, outside the dataset "
            "folder; refusing to read it")):
        _open_and_read(root, when)
    assert "x/000001.npy" not in opened  # checked before it was opened


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", SPECIAL + ["fifo outside", "device outside"])
def test_special_file_as_the_manifest_is_refused(root, tmp_path, kind):
    manifest = root / "manifest.json"
    if kind.endswith(" outside"):
        what = _make_special(tmp_path / "elsewhere", kind.split()[0], tmp_path)
        os.unlink(manifest)
        os.symlink(tmp_path / "elsewhere", manifest)
        what += f" (through a symbolic link to {tmp_path / 'elsewhere'})"
    else:
        what = _make_special(manifest, kind, tmp_path)
    for verify in ("headers", "none"):
        with pytest.raises(ManifestError, match=re.escape(f"{manifest}: is {what}, {MANIFEST_HINT}")):
            npyseq.open_shards(root, verify=verify)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize("file", ["manifest.json", "x/000001.npy", "t/000002.offsets.npy"])
def test_cli_on_a_fifo_fails_at_once_naming_it(root, tmp_path, capsys, command, file):
    path = root / file
    os.unlink(path)
    os.mkfifo(path)
    assert cli.main([command, str(root), "--quiet"] if command == "verify" else [command, str(root)]) == 1
    out, err = capsys.readouterr()
    hint = MANIFEST_HINT if file == "manifest.json" else SHARD_HINT
    if command == "verify" and file != "manifest.json":
        # verify goes on with the other shards and reports this one as bad
        assert f"BAD {path}: is a FIFO (named pipe), {hint}" in out, out
    else:
        assert f"npyseq {command}: error: {path}: is a FIFO (named pipe), {hint}" in err, err


def test_shard_entry_naming_a_folder_of_the_dataset(root):
    """Issue 10: a shard path that is a folder gave IsADirectoryError: Is a directory: 5."""
    doc = load_manifest_json(root)
    doc["arrays"]["x"]["shards"][1]["path"] = "y"
    write_manifest_json(root, doc)
    for verify in ("headers", "none"):
        with pytest.raises(CorruptShardError, match=re.escape(f"{root / 'y'}: is a directory, {SHARD_HINT}")):
            ds = npyseq.open_shards(root, verify=verify)
            ds["x"][:]


def _deny(monkeypatch, name: str):
    """Make os.open fail with EACCES for files called ``name`` (tests run as root, chmod 000 would not)."""
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_unreadable_manifest_is_a_manifest_error(root, monkeypatch):
    _deny(monkeypatch, "manifest.json")
    with pytest.raises(ManifestError, match=re.escape(
            f"{root / 'manifest.json'}: cannot be opened (Permission denied); check that it is a readable file")):
        npyseq.open_shards(root)


def test_unreadable_shard_is_a_shard_error(root, monkeypatch):
    _deny(monkeypatch, "000001.npy")
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{root / 'x' / '000001.npy'}: cannot be opened (Permission denied)")):
        npyseq.open_shards(root)


def test_manifest_read_error_is_a_manifest_error(root, monkeypatch):
    from npyseq.storage import dataset

    def failing_read(root_, fd=None):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(dataset, "read_manifest", failing_read)
    with pytest.raises(ManifestError, match=re.escape(
            f"{root / 'manifest.json'}: cannot be read (Input/output error)")):
        npyseq.open_shards(root)


def test_regular_files_and_symlinks_inside_still_open(root):
    """What the checks must keep: symbolic links inside the folder, to shards and to the manifest."""
    os.makedirs(root / "store")
    shutil.move(root / "x" / "000001.npy", root / "store" / "x1.npy")
    os.symlink(os.path.join("..", "store", "x1.npy"), root / "x" / "000001.npy")
    shutil.move(root / "manifest.json", root / "store" / "m.json")
    os.symlink(os.path.join("store", "m.json"), root / "manifest.json")
    ds = npyseq.open_shards(root)
    assert_same_array(ds["x"][:], X)
    assert [r.tolist() for r in ds["t"][:]] == [r.tolist() for r in ROWS]


# --- a failed map closes its descriptor exactly once (item 5) --------------------------------


@pytest.mark.parametrize("code, error", [(errno.EMFILE, TooManyOpenFilesError), (errno.ENOMEM, ShardError)])
def test_failed_map_closes_the_descriptor_exactly_once(root, monkeypatch, code, error):
    tried = []

    def failing_mmap(fd, *args, **kwargs):
        tried.append(fd)
        raise OSError(code, os.strerror(code))

    ds = npyseq.open_shards(root, read="mmap")
    monkeypatch.setattr(mmap, "mmap", failing_mmap)
    with pytest.raises((OSError, NpyseqError)) as info:
        ds["x"][5]
    monkeypatch.undo()
    raised = type(info.value)  # not the exception: its traceback holds what the failed open left
    # A file opened now gets the lowest free number: the one the failed shard had.
    victim = os.open(root / "y" / "000000.npy", os.O_RDONLY)
    try:
        assert victim == tried[0]
        del info  # drops the traceback, and with it what the failed open left behind
        gc.collect()
        assert os.read(victim, 6) == b"\x93NUMPY"  # still open, still our file
    finally:
        os.close(victim)
    assert issubclass(raised, error), raised
    assert_same_array(ds["x"][5], X[5])  # and the shard maps once mapping works again


def test_map_failure_message(root, monkeypatch):
    def failing_mmap(fd, *args, **kwargs):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    ds = npyseq.open_shards(root, read="mmap")
    monkeypatch.setattr(mmap, "mmap", failing_mmap)
    with pytest.raises(ShardError, match=re.escape(
            f"{root / 'x' / '000001.npy'}: cannot be memory-mapped (Cannot allocate memory); open the dataset "
            "with read='pread' to read it without memory maps")):
        ds["x"][5]


# --- running out of descriptors (item 17) -------------------------------------------------------


def _limit_message(path, max_open=128) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (f"{path}: cannot be opened: this process has too many open files (EMFILE): its limit is {soft} "
            f"descriptors (RLIMIT_NOFILE, hard limit {hard}); each dataset keeps up to max_open={max_open} "
            "shards open, one descriptor each. Close datasets you no longer use (Dataset.close(), or drop "
            "them), open them with a smaller max_open, or raise the limit (ulimit -n, resource.setrlimit)")


@pytest.mark.parametrize("read", ["pread", "mmap"])
def test_out_of_descriptors_at_open_is_too_many_open_files(root, monkeypatch, read):
    ds = npyseq.open_shards(root, read=read, max_open=7)
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if os.fspath(path) == "x/000001.npy":
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(TooManyOpenFilesError, match=re.escape(_limit_message(root / "x" / "000001.npy", 7))):
        ds["x"][5]


def test_out_of_descriptors_when_mapping_is_too_many_open_files(root, monkeypatch):
    ds = npyseq.open_shards(root, read="mmap")

    def failing_mmap(fd, *args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(mmap, "mmap", failing_mmap)
    with pytest.raises(TooManyOpenFilesError, match=re.escape(_limit_message(root / "x" / "000001.npy"))):
        ds["x"][5]


def test_system_file_table_full(root, monkeypatch):
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if os.fspath(path) == "manifest.json":
            raise OSError(errno.ENFILE, os.strerror(errno.ENFILE))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(TooManyOpenFilesError, match=re.escape(
            f"{root / 'manifest.json'}: cannot be opened: the system's table of open files is full (ENFILE); "
            "each dataset keeps up to max_open=128 shards open")):
        npyseq.open_shards(root)


def _many_shards(tmp_path, shards: int = 64):
    root = tmp_path / "many"
    npyseq.write_shards(root, {"x": np.arange(shards * 2, dtype=np.float32).reshape(shards, 2)}, rows=1,
                        progress=False)
    return root


@pytest.mark.timeout(120)
@pytest.mark.parametrize("read", ["pread", "mmap"])
def test_real_descriptor_limit_is_too_many_open_files(tmp_path, read):
    """Under a real RLIMIT_NOFILE: 64 open shards do not fit in the room left."""
    root = _many_shards(tmp_path)
    result = _run_python(f"""
        import os, resource, npyseq
        from npyseq.errors import TooManyOpenFilesError
        ds = npyseq.open_shards({str(root)!r}, read={read!r})
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            ds["x"][:]
        except TooManyOpenFilesError as e:
            print("REFUSED", e)
        else:
            print("READ")
    """)
    assert result.returncode == 0, result.stderr
    assert "REFUSED " in result.stdout, result.stdout
    assert re.search(r"cannot be opened: this process has too many open files \(EMFILE\): its limit is \d+ "
                     r"descriptors .*max_open=128", result.stdout), result.stdout


# --- a dropped dataset closes its files at once (item 14) ------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("read", ["pread", "mmap"])
def test_dropped_dataset_closes_its_files_without_a_gc(tmp_path, read):
    root = _many_shards(tmp_path, 16)
    npyseq.write_shards(tmp_path / "r", {"t": ROWS * 2}, rows=2, progress=False)
    gc.collect()
    gc.disable()
    try:
        start = _fds()
        for _ in range(20):
            ds = npyseq.open_shards(root, read=read)
            x = ds["x"]
            assert_same_array(x[:], np.arange(32, dtype=np.float32).reshape(16, 2))
            assert _fds() > start  # the shards are open now
            del ds  # the array still needs it
            assert_same_array(x[[3, 0]], np.array([[6, 7], [0, 1]], np.float32))
            assert x.dataset["x"] is x
            del x
            assert _fds() == start
            r = npyseq.open_shards(tmp_path / "r", read=read)["t"]
            assert r.lengths().tolist() == [len(v) for v in ROWS * 2]
            assert [v.tolist() for v in r.padded([1, 3])[0]] == [[10, 0, 0], [30, 31, 32]]
            del r
            assert _fds() == start
    finally:
        gc.enable()


@pytest.mark.timeout(180)
def test_reopening_in_a_loop_under_a_low_descriptor_limit(tmp_path):
    """Issue 11: reopening a 64-shard dataset in a loop hit EMFILE on iteration 54 of 1024 descriptors."""
    root = _many_shards(tmp_path)
    result = _run_python(f"""
        import gc, os, resource, npyseq
        gc.disable()
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 80, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for i in range(60):
            for read in ("mmap", "pread"):
                ds = npyseq.open_shards({str(root)!r}, read=read)
                assert ds["x"][:].sum() == sum(range(128)), i
        del ds
        print("OK", len(os.listdir("/proc/self/fd")) - used)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["OK", "0"]


# --- indices out of range (item 11) -------------------------------------------------------------

READS = ["pread", "mmap"]


@pytest.mark.parametrize("read", READS)
def test_take_out_of_range_raises_like_numpy(root, read):
    x = npyseq.open_shards(root, read=read)["x"]
    for bad, shown in ([10], 10), ([0, 11], 11), ([-11], -11), (np.array([2**64 - 1], np.uint64), 2**64 - 1), \
            (np.array([200], np.uint8), 200), (np.array([[1, 2], [3, 10]]), 10):
        with pytest.raises(IndexError, match=re.escape(f"index {shown} is out of bounds for 10 rows of 'x'")):
            x.take(bad)
        with pytest.raises(IndexError, match=re.escape(f"index {shown} is out of bounds for 10 rows of 'x'")):
            x[np.asarray(bad)]
        if np.asarray(bad).dtype != np.uint64:  # numpy wraps 2**64 - 1 to -1; npyseq refuses it
            with pytest.raises(IndexError):
                X[np.asarray(bad)]
    assert_same_array(x.take([-1, -10, 3]), X[[-1, -10, 3]])
    assert_same_array(x.take(np.array([[9, 0], [-2, 4]])), X[np.array([[9, 0], [-2, 4]])])
    assert_same_array(x.take(np.int64(-3)), X[-3])
    assert_same_array(x.take(X[:, 0] > 14), X[X[:, 0] > 14])
    assert_same_array(x.take([]), X[[]])
    assert_same_array(x[np.array([], bool)], X[np.array([], bool)])  # numpy: an empty mask selects nothing
    with pytest.raises(IndexError, match="only integers, slices, and integer or boolean arrays"):
        x.take(np.array([1.9]))  # was silently row 1
    with pytest.raises(IndexError, match=re.escape("boolean index must have shape (10,), got (9,): 'x' has 10 rows")):
        x.take(np.ones(9, bool))
    with pytest.raises(IndexError, match=re.escape("boolean index must have shape (10,), got (11,)")):
        x[np.ones(11, bool)]


@pytest.mark.parametrize("read", READS)
def test_read_out_of_range_raises(root, read):
    x = npyseq.open_shards(root, read=read)["x"]
    for start, stop in (-1, 3), (5, 11), (6, 5), (11, 11):
        with pytest.raises(IndexError, match=re.escape(
                f"rows [{start}, {stop}) are out of bounds for 10 rows of 'x': read needs 0 <= start <= stop <= 10")):
            x.read(start, stop)
    with pytest.raises(IndexError, match="read needs int start and stop, got 1.5 and 3"):
        x.read(1.5, 3)
    assert_same_array(x.read(10, 10), X[10:10])
    assert_same_array(x.read(np.int64(2), 9), X[2:9])


@pytest.mark.parametrize("read", READS)
def test_ragged_indices_out_of_range(root, read):
    t = npyseq.open_shards(root, read=read)["t"]
    for bad, shown in ([10], 10), ([-11], -11), (np.array([2**64 - 1], np.uint64), 2**64 - 1):
        for call in (t.take, t.padded, t.lengths, t.__getitem__):
            with pytest.raises(IndexError, match=re.escape(f"index {shown} is out of bounds for 10 rows of 't'")):
                call(np.asarray(bad))
    with pytest.raises(IndexError, match=re.escape("boolean index must have shape (10,), got (3,): 't' has 10 rows")):
        t.padded(np.ones(3, bool))
    assert [r.tolist() for r in t.take([-1, 0])] == [ROWS[-1].tolist(), ROWS[0].tolist()]


@st.composite
def _index_arrays(draw, n: int):
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64, bool]))
    if dtype is bool:
        size = draw(st.sampled_from([n, n, n, max(0, n - 1), n + 1]))
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -n - 3), min(int(info.max), n + 3)
    # (not uint64's maximum: numpy wraps it to -1, npyseq refuses it; tested above)
    extremes = [int(info.min), int(info.max)] if dtype is not np.uint64 else [0, 2**63 - 1]
    values = st.one_of(st.integers(lo, hi), st.sampled_from(extremes))
    shape = draw(st.sampled_from([(None,), (None,), (2, None), ()]))
    if shape == ():
        return np.array(draw(values), dtype=dtype)
    flat = draw(st.lists(values, max_size=12))
    if shape == (2, None):
        flat = flat[:len(flat) // 2 * 2]
        return np.array(flat, dtype=dtype).reshape(2, -1)
    return np.array(flat, dtype=dtype)


def _outcome(f):
    try:
        return "ok", f()
    except IndexError:
        return "IndexError", None


@pytest.mark.timeout(300)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large], database=None)
@given(data=st.data())
def test_any_index_array_equals_numpy_or_both_raise(tmp_path_factory, data):
    n = data.draw(st.integers(1, 30), label="rows")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    per_shard = data.draw(st.integers(1, 8), label="rows per shard")
    rng = np.random.default_rng(n * 100 + per_shard)
    source = random_array(rng, dtype, (n, 2))
    ragged = [np.arange(i % 5, dtype=np.int16) + i for i in range(n)]
    root = tmp_path_factory.mktemp("idx", numbered=True) / "ds"
    npyseq.write_shards(root, {"x": source, "r": ragged}, rows=per_shard, progress=False)
    keys = [data.draw(_index_arrays(n), label="index") for _ in range(4)]
    for read in READS:
        ds = npyseq.open_shards(root, read=read)
        for key in keys:
            kind, expected = _outcome(lambda: source[key])
            for how in (lambda: ds["x"][key], lambda: ds["x"].take(key)):
                got_kind, got = _outcome(how)
                assert got_kind == kind, (key, read, got_kind, kind)
                if kind == "ok":
                    assert_same_array(got, expected)
            flat = key if key.dtype == bool or key.ndim == 1 else key.reshape(-1)
            kind, expected = _outcome(lambda: [ragged[i] for i in np.arange(n)[flat]])
            got_kind, got = _outcome(lambda: ds["r"].take(flat))
            assert got_kind == kind, (key, read, got_kind, kind)
            if kind == "ok":
                assert [r.tolist() for r in got] == [r.tolist() for r in expected]
    shutil.rmtree(root.parent)


# --- logical dtypes (item 12) ---------------------------------------------------------------


@pytest.mark.parametrize("logical, dtype, message", [
    ("finfo", "<u2", "unknown logical_dtype 'finfo'; npyseq knows bfloat16, float8_e3m4"),
    ("iinfo", "<u2", "unknown logical_dtype 'iinfo'"),
    ("__doc__", "<u8", "unknown logical_dtype '__doc__'"),
    ("float64", "<u8", "unknown logical_dtype 'float64'"),
    ("bfloat16", "<i2", "logical_dtype 'bfloat16' is stored as uint16 ('<u2'), but the stored dtype is int16 ('<i2')"),
    ("bfloat16", ">u2", "logical_dtype 'bfloat16' is stored as uint16 ('<u2'), but the stored dtype is >u2 ('>u2')"),
    ("bfloat16", "<f2", "logical_dtype 'bfloat16' is stored as uint16 ('<u2'), but the stored dtype is float16"),
    ("int4", "<u2", "logical_dtype 'int4' is 1 bytes wide but the stored dtype uint16 is 2"),
])
def test_logical_dtypes_outside_the_list_are_refused(tmp_path, logical, dtype, message):
    data = np.arange(6, dtype=dtype)
    root = tmp_path / "ds"
    npyseq.write_shards(root, {"a": data}, rows=4, progress=False)
    doc = load_manifest_json(root)
    doc["arrays"]["a"]["logical_dtype"] = logical
    write_manifest_json(root, doc)
    for verify in ("headers", "none"):
        with pytest.raises(ManifestError, match=re.escape(f"{root / 'manifest.json'}: array 'a': {message}")):
            npyseq.open_shards(root, verify=verify)


@pytest.mark.parametrize("name", sorted(npyseq.format.dtypes.LOGICAL_DTYPES))
def test_every_listed_logical_dtype_round_trips(tmp_path, name):
    import ml_dtypes

    if not hasattr(ml_dtypes, name):
        pytest.skip(f"ml_dtypes {ml_dtypes.__version__} has no {name}")
    dtype = np.dtype(getattr(ml_dtypes, name))
    data = np.arange(14, dtype=f"<u{dtype.itemsize}").reshape(7, 2).view(dtype)  # any bits round-trip
    npyseq.write_shards(tmp_path / "ds", {"a": data}, rows=3, progress=False)
    doc = load_manifest_json(tmp_path / "ds")
    assert doc["arrays"]["a"]["logical_dtype"] == name
    assert doc["arrays"]["a"]["dtype"] == np.lib.format.dtype_to_descr(np.dtype(f"<u{dtype.itemsize}"))
    assert_same_array(npyseq.open_shards(tmp_path / "ds")["a"][:], data)


# --- a shard truncated under its memory map (item 13) --------------------------------------------


@pytest.mark.timeout(180)
def test_truncated_mapped_shard_is_corrupt_not_sigbus(tmp_path):
    root = tmp_path / "ds"
    # 64 KiB shards: truncating to one page leaves whole pages of the map past the end (SIGBUS).
    x = np.arange(4 * 4 * 4096, dtype=np.float32).reshape(16, 4096)
    rows = [np.arange(4096 * (i % 3), dtype=np.float32) for i in range(16)]
    npyseq.write_shards(root, {"x": x, "t": rows}, rows=4, progress=False)
    result = _run_python(f"""
        import os, shutil, numpy as np, npyseq
        from npyseq.errors import CorruptShardError
        root = {str(root)!r}

        def attempt(what, f):
            try:
                f()
            except CorruptShardError as e:
                print(what, "REFUSED", e)
            else:
                print(what, "READ")

        for read in ("auto", "mmap"):
            shutil.copytree(root, root + "." + read)  # a fresh copy per mode
            ds = npyseq.open_shards(root + "." + read, read=read)
            assert ds.map_reads
            assert ds["x"][5].sum() == np.arange(5 * 4096, 6 * 4096, dtype=np.float32).sum()
            ds["t"][:]
            seq = npyseq.ShardSequence(ds, x="x", batch_size=4)
            seq[1]
            for name in ("x/000001.npy", "t/000001.npy"):
                os.truncate(os.path.join(root + "." + read, name), 4096)
            attempt(read + " slice", lambda: ds["x"][4:8])
            attempt(read + " int", lambda: ds["x"][7])
            attempt(read + " take", lambda: ds["x"].take([7, 2]))
            attempt(read + " sequence", lambda: seq[1])
            attempt(read + " ragged take", lambda: ds["t"][5:8])
            attempt(read + " ragged padded", lambda: ds["t"].padded([7, 5]))
        print("DONE")
    """, env={"KERAS_BACKEND": "numpy"}, timeout=150)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    lines = result.stdout.splitlines()
    assert lines[-1] == "DONE"
    for read in ("auto", "mmap"):
        x1 = f"{root}.{read}/x/000001.npy"
        t1 = f"{root}.{read}/t/000001.npy"
        message = ("4096 bytes found, {} expected; the shard was truncated after it was opened "
                   "(reading it would crash the process with SIGBUS)")
        for what in ("slice", "int", "take", "sequence"):
            assert f"{read} {what} REFUSED {x1}: {message.format(128 + 4 * 4096 * 4)}" in lines, lines
        for what in ("ragged take", "ragged padded"):
            assert f"{read} {what} REFUSED {t1}: {message.format(128 + 4 * 4096 * 4)}" in lines, lines
