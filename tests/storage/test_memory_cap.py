"""Converting a .npy file much larger than the process's memory limit (issue 2).

``npyseq convert`` streams sources in chunks, so it must succeed inside a
cgroup v1 memory cap that cannot hold the array, while the naive
``np.load`` of the same file inside the same cap is killed. Needs root and
the cgroup v1 memory controller (see ``tools/memcap.py``); skipped with the
reason otherwise.

Numbers on the 2-core / 24 GiB machine this was written on: ``import npyseq``
charges about 19 MiB to a fresh group; converting the 1 GiB file below
succeeds under caps down to 32 MiB (slowly, under 48 MiB it takes ~10 s);
under the 192 MiB cap used here it takes 1-3 s.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from numpy.lib.format import open_memmap

from tools.memcap import cgroup_available, drop_page_cache, run_capped

pytestmark = pytest.mark.cgroup

CAP = 192 * 2**20                 # the memory limit of the capped runs
ROWS, COLS = 262_144, 1024        # float32: 1 GiB of data, 5.3x the cap
SHARD_SIZE = 32_000_000           # --shard-size 32MB
CHUNK_ROWS = 8192                 # 32 MiB of rows at a time when writing and comparing


@pytest.fixture(scope="module")
def cgroup():
    ok, reason = cgroup_available()
    if not ok:
        pytest.skip(reason)


def _pattern(start: int, stop: int) -> np.ndarray:
    """Bits of rows [start, stop): every element distinct and position-dependent.

    Multiplying by an odd constant is a bijection of uint32, so each element's
    index maps to a different, random-looking bit pattern: a row written to
    the wrong place, or a chunk repeated or zeroed, cannot go unnoticed.
    """
    index = np.arange(start * COLS, stop * COLS, dtype=np.uint32).reshape(stop - start, COLS)
    return index * np.uint32(2654435761)


@pytest.fixture(scope="module")
def big_npy(cgroup, tmp_path_factory):
    """A 1 GiB float32 .npy, written in chunks, out of the page cache; deleted afterwards."""
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.npy"
    try:
        array = open_memmap(path, mode="w+", dtype=np.float32, shape=(ROWS, COLS))
        bits = array.view(np.uint32)
        for start in range(0, ROWS, CHUNK_ROWS):
            bits[start:start + CHUNK_ROWS] = _pattern(start, min(ROWS, start + CHUNK_ROWS))
        array.flush()
        del array, bits
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # pytest keeps old tmp folders: 1 GiB each


def test_importing_npyseq_leaves_most_of_the_cap_for_data(cgroup):
    """The cap must be about the data, not the interpreter: a bare import uses a small part."""
    r = run_capped([sys.executable, "-c", "import npyseq, npyseq.cli"], CAP, timeout=60).check()

    assert r.max_usage_bytes < CAP // 4, f"import npyseq charged {r.max_usage_bytes / 2**20:.0f} MiB"


@pytest.mark.slow
def test_the_cap_is_real_np_load_is_killed(big_npy):
    drop_page_cache(big_npy)

    r = run_capped(
        [sys.executable, "-c", f"import numpy as np; a = np.load({str(big_npy)!r}); print(a.shape)"],
        CAP, timeout=60,
    )

    assert r.returncode != 0
    assert r.oom_killed or "MemoryError" in r.stderr, r
    assert r.stdout == ""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("jobs", [None, 4], ids=["default-jobs", "4-jobs"])
def test_convert_a_npy_5x_larger_than_the_memory_cap(big_npy, tmp_path, jobs):
    size = os.path.getsize(big_npy)
    assert size >= 5 * CAP
    out = tmp_path / "out"
    drop_page_cache(big_npy)  # read it from disk, charged to the capped group
    argv = [sys.executable, "-m", "npyseq", "convert", str(big_npy), "-o", str(out),
            "--shard-size", "32MB", "--silent"] + ([] if jobs is None else ["--jobs", str(jobs)])

    try:
        r = run_capped(argv, CAP, timeout=120)

        assert (r.returncode, r.oom_killed, r.timed_out) == (0, False, False), r.stderr
        assert (r.stdout, r.stderr) == ("", "")
        print(f"convert {size / 2**30:.2f} GiB under a {CAP / 2**20:.0f} MiB cap (jobs={jobs}): "
              f"{r.seconds:.1f} s, max usage {r.max_usage_bytes / 2**20:.0f} MiB")

        with open(out / "manifest.json", encoding="utf-8") as f:
            doc = json.load(f)
        assert doc["rows"] == ROWS
        shards = doc["arrays"]["big"]["shards"]
        assert len(shards) == len(doc["shard_rows"]) == 34  # ceil(262144 / 7812)
        # Compare every shard with its rows of the source, chunk by chunk, bit for bit.
        source = np.load(big_npy, mmap_mode="r").view(np.uint32)
        start = 0
        for shard, rows in zip(shards, doc["shard_rows"]):
            path = out / shard["path"]
            assert os.path.getsize(path) == shard["bytes"] <= SHARD_SIZE
            part = np.load(path, mmap_mode="r", allow_pickle=False)
            assert (part.dtype, part.shape) == (np.dtype(np.float32), (rows, COLS))
            bits = part.view(np.uint32)
            for a in range(0, rows, CHUNK_ROWS):
                b = min(rows, a + CHUNK_ROWS)
                assert np.array_equal(bits[a:b], source[start + a:start + b]), (shard["path"], a)
            start += rows
            del part, bits
        assert start == ROWS
        del source

        # The shard checksums hold, and checking them also fits in the cap.
        v = run_capped([sys.executable, "-m", "npyseq", "verify", str(out), "--quiet"], CAP,
                       timeout=120).check()
        assert v.stdout.startswith("OK: 34 shards, 1.07 GB, all checksums match"), v.stdout
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --- the helper itself (fast) ---------------------------------------------------------


def test_run_capped_reports_exit_status_and_output(cgroup):
    r = run_capped([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], CAP, timeout=60)

    assert (r.returncode, r.oom_killed, r.timed_out, r.stdout) == (3, False, False, "hi\n")
    assert 0 < r.max_usage_bytes <= CAP
    with pytest.raises(AssertionError, match="returncode 3"):
        r.check()


def test_run_capped_reports_an_oom_kill(cgroup):
    r = run_capped([sys.executable, "-c", "import numpy as np; a = np.ones(2**28, np.uint8)"],
                   64 * 2**20, timeout=60)

    assert (r.returncode, r.oom_killed) == (-9, True)


def test_run_capped_kills_leftovers_and_removes_its_group(cgroup):
    parent = _own_group_folder()
    before = {e for e in os.listdir(parent) if e.startswith("npyseq-test-")}

    r = run_capped(["/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], CAP, timeout=60)

    assert r.returncode == 0 and r.seconds < 30
    pid = int(r.stdout)
    assert _gone_or_zombie(pid)
    assert {e for e in os.listdir(parent) if e.startswith("npyseq-test-")} == before


def _own_group_folder() -> str:
    from tools import memcap as _cgroup

    return _cgroup._own_group()


def _gone_or_zombie(pid: int) -> bool:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
