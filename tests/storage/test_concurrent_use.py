"""Concurrent use: readers beside a converter, and readers while a dataset is overwritten.

Processes of tests/support/concurrent_script.py run at the same time: two read one
dataset over and over (with checksums) while a third converts another one;
then readers open, read and check a dataset while a writer replaces it again
and again with ``overwrite=True``. Version ``v`` of that dataset has its own
row count and every row says ``v``, so a reader that mixed the manifest or
shards of two versions would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npyseq

from _helpers import assert_same_array, tree_bytes

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")  # scripts, helpers
SCRIPT = os.path.join(HERE, "concurrent_script.py")
sys.path.insert(0, HERE)
import concurrent_script  # noqa: E402


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_readers_while_a_third_process_converts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((20_000, 128), dtype=np.float32)  # 10 MB, 20 shards
    npyseq.write_shards(tmp_path / "a", {"x": x, "y": np.arange(20_000)}, rows=1000, progress=False)
    source = rng.random((60_000, 256), dtype=np.float32)  # 61 MB to convert meanwhile
    np.save(tmp_path / "big.npy", source)

    done = tmp_path / "converted"  # the readers read until the conversion is over
    readers = [_start("read", tmp_path / "a", done) for _ in range(2)]
    converter = subprocess.Popen(
        [sys.executable, "-m", "npyseq", "convert", str(tmp_path / "big.npy"), "-o", str(tmp_path / "b"),
         "--shard-size", "4MB", "--jobs", "2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = converter.communicate(timeout=180)
    done.touch()
    results = [_result(r) for r in readers]
    assert converter.returncode == 0, err

    assert all(r["passes"] >= 2 for r in results), results
    assert results[0]["digest"] == results[1]["digest"]  # both read the same, every pass
    b = npyseq.open_shards(tmp_path / "b", verify="checksums")
    assert_same_array(b["big"][:], source)
    assert b.num_shards == 16
    assert_same_array(npyseq.open_shards(tmp_path / "a")["x"][:], x)


@pytest.fixture(scope="module")
def overwritten(tmp_path_factory):
    """Run two checking readers while a writer overwrites the dataset 120 times."""
    tmp_path = tmp_path_factory.mktemp("overwrite")
    path = tmp_path / "ds"
    npyseq.write_shards(path, concurrent_script.version(0), rows=100, progress=False)
    done = tmp_path_factory.mktemp("signal") / "written"  # the readers check until the writer is done
    writer = _start("overwrite", path, 120, done)
    readers = [_start("check", path, done) for _ in range(2)]
    results = [_result(r) for r in readers]
    _result(writer)
    final = npyseq.open_shards(path, verify="checksums")
    assert_same_array(final["y"][:], concurrent_script.version(120)["y"])
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no staging or old folder left
    assert sorted(tree_bytes(path)) == ["manifest.json"] + [
        f"{a}/{k:06d}.npy" for a in ("x", "y") for k in range(final.num_shards)]
    return results


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overwrite_never_exposes_a_mix_and_only_reports_a_change(overwritten):
    for r in overwritten:
        assert r["passes"] > 100 and r["versions"] > 10, r  # the readers did race the writer
        assert r["mixed"] == 0, r
        assert r["other_errors"] == {}, (r["other_errors"], r["errors"])  # only DatasetChangedError, which is the documented outcome


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overwrite_keeps_the_dataset_path_openable(overwritten):
    """The folders are exchanged atomically (renameat2): the path never goes missing."""
    for r in overwritten:
        assert r["passes"] > 100 and r["versions"] > 10, r
        assert "DatasetNotFoundError" not in r["other_errors"], r
