"""Interrupted writes: SIGKILL at 20+ points of a conversion and of a ShardWriter session, and a full disk.

After any interruption, ``open_shards`` either refuses the folder as an
incomplete dataset or opens a complete, valid one; running the same
conversion (or the same producer) again finishes it, byte-identical to a run
that was never interrupted. tests/storage/test_writer.py kills a conversion at 7
random moments; here the kills land at chosen points of the writing protocol
(tests/support/kill_point_script.py pauses there and prints PAUSED): inside a shard,
between shards, while a rerun hashes the shards it keeps, with the manifest
written but not renamed, and just after it was renamed; plus kills at random
times.

A full disk, on a real size-limited file system (an 8 MiB tmpfs, when this
process may mount one) and by injecting ``OSError(ENOSPC)``: a
:class:`npyseq.DiskFullError`, no manifest, no ``.partial`` file left, and the
same conversion finishes once space is freed.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import npyseq
from npyseq.format import npy
from npyseq.storage import protocol
from npyseq.storage import writer as writer_module
from npyseq.errors import DatasetNotFoundError, DiskFullError, IncompleteDatasetError

from _helpers import LOCK_NAME, assert_same_array, tree_bytes

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")  # scripts, helpers
SCRIPT = os.path.join(HERE, "kill_point_script.py")
sys.path.insert(0, HERE)
import kill_point_script  # noqa: E402  (the data the script writes)

# How many times each pause point occurs in one uninterrupted run (41 shards
# per array; x shards are 4 chunks of 16 KB, y shards 1).
OCCURRENCES = {"chunk": 41 * 4 + 41, "rename": 82, "hash": 82, "manifest": 1, "published": 1}


def _run_script(mode: str, out: str, point: str = "none") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, mode, out, point], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Sources, and the tree an uninterrupted conversion writes."""
    root = tmp_path_factory.mktemp("kill")
    os.makedirs(root / "src")
    x, y = kill_point_script.source_arrays()
    np.save(root / "src" / "x.npy", x)
    np.save(root / "src" / "y.npy", y)
    proc = _run_script("convert", str(root / "ref"))
    assert proc.returncode == 0, proc.stderr
    tree = tree_bytes(root / "ref")
    assert len(tree) == 83
    proc = _run_script("writer", str(root / "ref-writer"))
    assert proc.returncode == 0, proc.stderr
    assert tree_bytes(root / "ref-writer") == tree  # a ShardWriter writes the very same bytes
    return root, tree, {"x": x, "y": y}


def _kill_at(mode: str, out: str, point: str, rng: random.Random) -> str:
    """Run the script until it pauses at ``point`` (or for some time), SIGKILL it.

    Returns "killed" or "finished" (the point never came: the run ended first).
    """
    proc = subprocess.Popen([sys.executable, SCRIPT, mode, out,
                             "none" if point.startswith("time:") else point],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if point.startswith("time:"):
            time.sleep(float(point.split(":")[1]))
        else:
            line = proc.stdout.readline()  # "PAUSED", or "" when the run ended first
            if line.strip() != "PAUSED":
                proc.wait(timeout=60)
            else:
                time.sleep(rng.choice([0, 0, rng.uniform(0, 0.003)]))  # the other job runs on a bit
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            return "finished"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.returncode == 0:  # it ended between poll() and the signal
            return "finished"
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        return "killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _check_state(out: str, reference_tree: dict, arrays: dict, point: str) -> bool:
    """The folder after a kill is a valid dataset or a refused incomplete one; True if complete."""
    if os.path.exists(os.path.join(out, "manifest.json")):
        ds = npyseq.open_shards(out, verify="checksums")
        for name, source in arrays.items():
            assert_same_array(ds[name][:], source)
        tree = tree_bytes(out)
        tree.pop(LOCK_NAME, None)  # left only by a kill between the manifest and unlocking
        assert tree == reference_tree, point
        return True
    folders = [e for e in os.listdir(out) if os.path.isdir(os.path.join(out, e))] \
        if os.path.isdir(out) else []
    expected = IncompleteDatasetError if folders else DatasetNotFoundError
    with pytest.raises(expected) as info:
        npyseq.open_shards(out)
    assert type(info.value) is expected
    if folders:
        assert "incomplete dataset" in str(info.value) and "run it again" in str(info.value)
    for path, data in tree_bytes(out).items():
        if path.endswith(".npy"):  # a final name always holds a complete shard of this data
            assert data == reference_tree[path], f"{path} under its final name is not the shard ({point})"
        else:
            assert path.endswith(".partial") or path == LOCK_NAME, path
    if point.startswith("manifest:"):
        assert os.path.exists(os.path.join(out, "manifest.json.partial"))
    return False


def _kill_point(kind: str, rng: random.Random) -> str:
    if kind == "time":
        return f"time:{rng.uniform(0.12, 0.35):.3f}"
    return f"{kind}:{rng.randint(1, OCCURRENCES[kind])}"


KILLS = 24


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode, kinds", [
    ("convert", ["chunk", "rename", "hash", "manifest", "published", "time"]),
    ("writer", ["chunk", "rename", "manifest", "published", "time"]),
])
def test_sigkill_at_24_points_then_rerun_is_identical(reference, mode, kinds):
    """Kill, check, run again (resuming what the kill left), until 24 kills have landed.

    Kinds of point are taken in turn; a point that does not come (a rerun has
    fewer shards left to write than the occurrence drawn) lets the run
    finish, which is checked too and then started over in a fresh folder.
    """
    root, reference_tree, arrays = reference
    out = str(root / f"out-{mode}")
    rng = random.Random(20240611 + len(mode))
    killed, completed, attempts, paused = 0, 0, 0, {}
    while killed < KILLS:
        attempts += 1
        assert attempts < 80, (killed, paused)
        kind = kinds[attempts % len(kinds)]
        point = _kill_point(kind, rng)
        if _kill_at(mode, out, point, rng) == "killed":
            killed += 1
            paused[kind] = paused.get(kind, 0) + 1
        if _check_state(out, reference_tree, arrays, point):
            completed += 1
            shutil.rmtree(out)  # start over: the next kills hit a fresh conversion
    assert set(paused) == set(kinds), paused  # every kind of point was hit
    assert completed >= 1
    # Run the same conversion (the same producer) to the end: identical bytes.
    if not os.path.exists(os.path.join(out, "manifest.json")):
        proc = _run_script(mode, out)
        assert proc.returncode == 0, proc.stderr
    final = tree_bytes(out)
    final.pop(LOCK_NAME, None)
    assert final == reference_tree
    assert_same_array(npyseq.open_shards(out, verify="checksums")["x"][:], arrays["x"])


# --- a full disk ------------------------------------------------------------------


def _no_partials(root) -> list[str]:
    return [p for p in tree_bytes(root) if p.endswith((".partial", ".tmp"))]


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs mounted at a fresh folder, unmounted afterwards (skipped if not root)."""
    mount = tmp_path / "fs"
    os.makedirs(mount)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _big_arrays():
    rng = np.random.default_rng(5)
    return {"x": rng.random((3000, 512), dtype=np.float32), "y": np.arange(3000, dtype=np.int64)}


def test_disk_full_on_a_real_file_system_then_rerun(small_fs, tmp_path):
    """6.2 MB of shards on an 8 MiB file system that a 4 MiB file already fills in half."""
    arrays = _big_arrays()
    filler = small_fs / "filler"
    filler.write_bytes(bytes(4 * 2**20))
    out = small_fs / "ds"
    with pytest.raises(DiskFullError) as info:
        npyseq.write_shards(out, arrays, rows=250, jobs=2, progress=False)
    message = str(info.value)
    assert message.startswith(f"{out}: the disk is full (ENOSPC: No space left on device)")
    assert re.search(r"; \d+ bytes are free\. Nothing was published: no manifest was written and "
                     r"the temporary \.partial files were removed; complete shards were kept\. Free "
                     r"some space \(or write elsewhere\) and run the same conversion again to finish "
                     r"it\.$", message), message
    assert isinstance(info.value, OSError)
    assert not (out / "manifest.json").exists()
    assert _no_partials(out) == []
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(IncompleteDatasetError):
        npyseq.open_shards(out)
    kept = [p for p in tree_bytes(out) if p.endswith(".npy")]
    assert kept  # some complete shards were written before the disk filled up

    filler.unlink()
    ds = npyseq.write_shards(out, arrays, rows=250, jobs=2, progress=False)
    npyseq.write_shards(tmp_path / "ref", arrays, rows=250, progress=False)
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")
    assert_same_array(ds["x"][:], arrays["x"])


def test_disk_full_cli_is_one_line(small_fs):
    np.save(small_fs / "x.npy", _big_arrays()["x"])  # 6.1 MB of the 8 MiB
    proc = subprocess.run([sys.executable, "-m", "npyseq", "convert", str(small_fs / "x.npy"), "-o",
                           str(small_fs / "ds"), "--rows-per-shard", "250", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"npyseq convert: error: {small_fs / 'ds'}: the disk is full (ENOSPC")
    assert not (small_fs / "ds" / "manifest.json").exists()
    assert _no_partials(small_fs / "ds") == []


def test_disk_full_in_a_shard_writer_then_the_producer_again(small_fs, tmp_path):
    arrays = _big_arrays()
    filler = small_fs / "filler"
    filler.write_bytes(bytes(4 * 2**20))

    def produce(path):
        with npyseq.ShardWriter(path, rows=250) as w:
            for start in range(0, 3000, 100):
                w.append(x=arrays["x"][start:start + 100], y=arrays["y"][start:start + 100])
        return w

    with pytest.raises(DiskFullError, match=re.escape(f"{small_fs / 'ds'}: the disk is full (ENOSPC")
                       + ".*write the dataset again"):
        produce(small_fs / "ds")
    assert not (small_fs / "ds" / "manifest.json").exists()
    assert _no_partials(small_fs / "ds") == []
    assert not (small_fs / "ds" / LOCK_NAME).exists()
    filler.unlink()
    w = produce(small_fs / "ds")  # the same producer, into the same folder
    produce(tmp_path / "ref")
    assert tree_bytes(small_fs / "ds") == tree_bytes(tmp_path / "ref")
    assert_same_array(w.dataset["y"][:], arrays["y"])


def test_disk_full_while_overwriting_keeps_the_old_dataset(small_fs):
    old = {"x": np.arange(1000, dtype=np.float32)}
    npyseq.write_shards(small_fs / "ds", old, rows=300, progress=False)
    before = tree_bytes(small_fs / "ds")
    with pytest.raises(DiskFullError, match=re.escape(f"{small_fs / 'ds'} still holds the dataset it had")):
        npyseq.write_shards(small_fs / "ds", {"x": np.zeros((2500, 1024), np.float32)}, rows=250,
                            progress=False, overwrite=True)
    assert tree_bytes(small_fs / "ds") == before
    assert_same_array(npyseq.open_shards(small_fs / "ds", verify="checksums")["x"][:], old["x"])
    assert _no_partials(small_fs / "ds.npyseq-new") == []


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_injected_enospc_mid_shard_stops_every_job(tmp_path, monkeypatch):
    """One of 4 concurrent shard writers fails: the others stop too, and no .partial is left."""
    arrays = {"x": np.arange(64 * 1024, dtype=np.float32).reshape(256, 256)}
    real, calls = npy.hash_array_rows, []

    def failing(hasher, chunk):
        calls.append(1)
        if len(calls) == 9:
            _enospc()
        time.sleep(0.002)
        return real(hasher, chunk)

    # Every shard job counted in and out: when write_shards raises, none may still be writing
    # (a job still running would leave its .partial behind after the cleanup).
    real_job, active, lock = writer_module._write_shard, [0, 0], threading.Lock()

    def job(*args, **kwargs):
        with lock:
            active[0] += 1
        try:
            return real_job(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1
                active[1] += 1

    monkeypatch.setattr(npy, "CHUNK_BYTES", 4096)  # 4 chunks per shard of 16 rows
    monkeypatch.setattr(npy, "hash_array_rows", failing)
    monkeypatch.setattr(writer_module, "_write_shard", job)
    with pytest.raises(DiskFullError, match=re.escape(f"{tmp_path / 'ds'}: the disk is full (ENOSPC")):
        npyseq.write_shards(tmp_path / "ds", arrays, rows=16, jobs=4, progress=False)
    assert active[0] == 0 and active[1] >= 2, active  # every job that started has returned
    assert _no_partials(tmp_path / "ds") == []
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert len(calls) < 16 * 4  # the other jobs stopped early
    monkeypatch.setattr(npy, "hash_array_rows", real)
    npyseq.write_shards(tmp_path / "ds", arrays, rows=16, jobs=4, progress=False)
    npyseq.write_shards(tmp_path / "ref", arrays, rows=16, progress=False)
    assert tree_bytes(tmp_path / "ds") == tree_bytes(tmp_path / "ref")


def test_injected_enospc_writing_the_manifest(tmp_path, monkeypatch):
    arrays = {"x": np.arange(100, dtype=np.int32)}
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("manifest.json"):
            _enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DiskFullError):
        npyseq.write_shards(tmp_path / "ds", arrays, rows=30, progress=False)
    assert sorted(os.listdir(tmp_path / "ds")) == ["x"]  # no manifest, no manifest.json.partial
    assert sorted(os.listdir(tmp_path / "ds" / "x")) == [f"00000{k}.npy" for k in range(4)]
    with pytest.raises(IncompleteDatasetError):
        npyseq.open_shards(tmp_path / "ds")


def test_other_os_errors_are_not_disk_full(tmp_path, monkeypatch):
    def eio(hasher, chunk):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(npy, "hash_array_rows", eio)
    with pytest.raises(OSError) as info:
        npyseq.write_shards(tmp_path / "ds", {"x": np.arange(10)}, rows=5, progress=False)
    assert type(info.value) is OSError and info.value.errno == errno.EIO
    assert _no_partials(tmp_path / "ds") == []  # each shard removes its own .partial on any error


def test_disk_full_error_survives_pickle():
    import pickle

    e = protocol.disk_full_error("/data/ds", OSError(errno.ENOSPC, "No space left on device"), None)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is DiskFullError and str(back) == str(e)
