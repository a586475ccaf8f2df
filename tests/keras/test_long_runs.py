"""Long runs: 30 epochs with 2 process workers leak no file descriptors, threads, processes or memory.

Keras starts a new worker pool at every epoch; npyseq adds a watchdog thread
per epoch (npyseq/keras/watchdog.py) and opens shards lazily in every worker. Over
30 epochs of a 15-shard dataset the main process must end where it started,
after a warm-up: the same open files, the same threads, no child left, and
anonymous memory within a small drift (measured: 263 -> 267 MiB, most of it
in the first epochs, on the 2-core development machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npyseq

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")  # scripts, helpers
EPOCHS, WARMUP = 30, 5


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("long") / "data"
    npyseq.write_shards(root, {"x": rng.random((6000, 64), dtype=np.float32),
                               "y": rng.random(6000, dtype=np.float32)}, rows=400, progress=False)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "long_run_script.py"), str(root), "fork", str(EPOCHS)],
        capture_output=True, text=True, timeout=400,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["final_epoch"] == EPOCHS
    assert all(len(result[k]) == EPOCHS for k in ("fds", "threads", "tasks", "rss_anon", "children"))
    return result


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_open_files_do_not_grow(samples):
    after = samples["fds"][WARMUP:]
    assert max(after) - min(after) <= 2, samples["fds"]
    assert after[-1] <= after[0], samples["fds"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_threads_and_processes_do_not_grow(samples):
    assert len(set(samples["threads"][WARMUP:])) == 1, samples["threads"]  # Python threads
    assert max(samples["tasks"][WARMUP:]) <= samples["tasks"][WARMUP], samples["tasks"]  # OS threads
    assert samples["children"] == [0] * EPOCHS  # every epoch's pool is gone at its end


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_anonymous_memory_does_not_grow(samples):
    rss = samples["rss_anon"]
    drift = rss[-1] - rss[WARMUP]
    per_epoch = drift / (EPOCHS - WARMUP)
    assert drift <= 16 * 2**20, [r // 2**20 for r in rss]
    assert per_epoch <= 0.5 * 2**20, [r // 2**20 for r in rss]
