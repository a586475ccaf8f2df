"""Training on a dataset 3x larger than a cgroup memory cap, with 2 process workers.

Skipped, with the reason, where the cgroup v1 memory controller is unavailable.
"""

import json
import os
import sys

import numpy as np
import pytest

import npyseq
from tools.memcap import cgroup_available, drop_page_cache, run_capped

pytestmark = [pytest.mark.cgroup, pytest.mark.slow]

CAP = 768 * 2**20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    ok, reason = cgroup_available()
    if not ok:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("capped") / "train"
    rng = np.random.default_rng(0)
    rows = int(3.1 * CAP) // (32 * 32 * 3 * 4) + 1
    with npyseq.ShardWriter(root, shard_size="128MB") as writer:
        for a in range(0, rows, 4096):
            n = min(rows, a + 4096) - a
            writer.append(x=rng.random((n, 32, 32, 3), dtype=np.float32), y=rng.integers(0, 10, n))
    ds = writer.dataset
    assert ds.nbytes >= 3 * CAP
    for name in ds.names:
        for shard in ds.manifest.arrays[name].shards:
            drop_page_cache(os.path.join(ds.path, shard.path))
    yield ds
    import shutil

    shutil.rmtree(root)


def test_one_epoch_with_two_process_workers_fits_under_the_cap(big_dataset):
    argv = [sys.executable, os.path.join(ROOT, "examples", "demo.py"), "train",
            "--data", big_dataset.path, "--epochs", "1", "--workers", "2", "--processes"]
    run = run_capped(argv, CAP, timeout=900)
    run.check()
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["rows"] == len(big_dataset)
    assert result["rows_per_second"][0] > 0
    # Anonymous memory (trainer + workers) stays well under the cap; the rest
    # of the cgroup's usage is reclaimable page cache.
    assert result["peak_anon_bytes"] < 0.8 * CAP, result


def test_the_cap_is_real_loading_the_data_is_killed(big_dataset):
    code = f"import npyseq; x = npyseq.open_shards({big_dataset.path!r})['x'][:]; print(x.sum())"
    run = run_capped([sys.executable, "-c", code], CAP, timeout=300)
    assert run.returncode != 0 and run.oom_killed, run
