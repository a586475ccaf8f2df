"""Raw I/O figures of the suite: ``seq[i]`` against memcpy and ``dd``, ``npyseq convert`` against ``cp``.

* :func:`read_loop` (run in a child: ``python -m benchmarks.suite.io read-loop JSON``):
  a single-core memcpy, then ``seq[i]`` over one epoch per shuffle mode, warm
  page cache (best of ``repeats``), and the cold contiguous read alternated
  with ``dd`` of the same shard files (best of ``repeats`` each). Targets P1,
  P1b and P5.
* :func:`convert_vs_cp`: ``npyseq convert`` of the sources into the shards
  against ``cp`` of the same bytes, cold source both times. ``cp`` is timed
  alone and followed by ``sync`` of the copies, since the converter fsyncs
  every shard (it is atomic and durable): the target P6 is on equal
  durability. Run in the suite's process; both are subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import drop_cache, memcpy_rate, print_result
from benchmarks.suite.data import Data
from tools.synthetic import ROW_BYTES


def dd_seconds(files: list[str]) -> float:
    """Seconds for ``dd`` to read ``files`` one after the other, cold."""
    drop_cache(files)
    start = time.perf_counter()
    for f in files:
        subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def loop_seconds(seq, epoch: int) -> tuple[int, float]:
    """Rows and seconds of ``seq[i]`` over one epoch."""
    seq.epoch = epoch
    rows = 0
    start = time.perf_counter()
    for i in range(len(seq)):
        rows += len(seq[i][0])
    return rows, time.perf_counter() - start


def in_ram_gather(data: Data, ds, batch_size: int, repeats: int) -> dict:
    """The bound of shuffled reads: NumPy gathering the very same batches from arrays in RAM.

    For each shuffled mode, ``np.take`` of every batch's rows (``seq.batch_rows``,
    x and y) out of the whole dataset loaded in memory, into reused buffers: no
    file, no npyseq. Random 12 KB rows are bounded by memory access, not by
    any reader's overhead.
    """
    import npyseq

    x, y = np.load(data.x_npy), np.load(data.y_npy)
    out = {}
    for mode in ("blocks", "global"):
        seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=batch_size, shuffle=mode, seed=0)
        batches = [seq.batch_rows(i, 1) for i in range(len(seq))]
        bx = np.empty((batch_size,) + x.shape[1:], x.dtype)
        by = np.empty(batch_size, y.dtype)
        runs = []
        for _ in range(max(2, repeats)):
            start = time.perf_counter()
            for rows in batches:
                n = len(rows)
                np.take(x, rows, axis=0, out=bx[:n])
                np.take(y, rows, axis=0, out=by[:n])
            runs.append(len(x) * ROW_BYTES / (time.perf_counter() - start) / 1e9)
        out[str(mode)] = {"gb_per_s": max(runs), "runs": runs}
    return out


def read_loop(data: Data, repeats: int = 3, batch_size: int = 256, min_seconds: float = 1.0) -> dict:
    """The ``seq[i]`` figures (P1, P1b, P5); see the module docstring.

    Warm epochs of each mode repeat until ``repeats`` and ``min_seconds``
    are both reached; the best is kept (the machine is shared: the best run
    is the least disturbed one).
    """
    import npyseq
    from npyseq.order import SHUFFLE_MODES

    ds = npyseq.open_shards(data.shards)
    files = [f for f in data.shard_files() if f.endswith(".npy")]
    shard_bytes = sum(os.path.getsize(f) for f in files)
    memcpy = [memcpy_rate()]
    cold, dd = [], []
    seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=batch_size, shuffle=False)
    for r in range(repeats):
        drop_cache(ds)  # unmaps the shards first: mapped pages cannot be dropped
        dd.append(shard_bytes / dd_seconds(files) / 1e9)
        drop_cache(files)
        rows, seconds = loop_seconds(seq, 0)
        cold.append(rows * ROW_BYTES / seconds / 1e9)
    warm = {}
    for mode in SHUFFLE_MODES:
        seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=batch_size, shuffle=mode, seed=0)
        loop_seconds(seq, 0)  # the page cache holds the data from here on
        runs, spent = [], 0.0
        while len(runs) < repeats or spent < min_seconds:
            rows, seconds = loop_seconds(seq, len(runs) + 1)
            runs.append(rows * ROW_BYTES / seconds / 1e9)
            spent += seconds
        warm[str(mode)] = {"gb_per_s": max(runs), "runs": runs,
                           "rows_per_s": max(runs) * 1e9 / ROW_BYTES}
    memcpy.append(memcpy_rate())
    return {
        "rows": len(ds), "batch_size": batch_size, "memcpy_gb_per_s": max(memcpy), "memcpy_runs": memcpy,
        "warm": warm, "in_ram_gather": in_ram_gather(data, ds, batch_size, repeats),
        "cold_sequential": {"gb_per_s": max(cold), "runs": cold, "rows_per_s": max(cold) * 1e9 / ROW_BYTES},
        "dd": {"gb_per_s": max(dd), "runs": dd, "bytes": shard_bytes},
    }


def convert_vs_cp(data: Data, shard_size: str = "256MB", repeats: int = 1) -> dict:
    """Time ``npyseq convert`` of the sources and ``cp`` (+ ``sync``) of the same files, alternated.

    Cold source both times. With ``repeats > 1`` the two alternate and the
    best time of each is kept (the disk is shared with other work).
    """
    sources = data.source_files()
    nbytes = sum(os.path.getsize(f) for f in sources)
    converts, cps, cp_syncs = [], [], []
    for _ in range(repeats):
        if os.path.exists(data.shards):
            shutil.rmtree(data.shards)
        drop_cache(sources)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "npyseq", "convert", *sources, "-o", data.shards,
                        "--shard-size", shard_size, "--quiet"], check=True, stdout=subprocess.DEVNULL)
        converts.append(time.perf_counter() - start)
        cp, cp_sync = _cp_seconds(data, sources)
        cps.append(cp)
        cp_syncs.append(cp_sync)
    convert, cp, cp_sync = min(converts), min(cps), min(cp_syncs)
    return {"bytes": nbytes, "convert_seconds": convert, "cp_seconds": cp, "cp_sync_seconds": cp_sync,
            "convert_gb_per_s": nbytes / convert / 1e9, "cp_gb_per_s": nbytes / cp / 1e9,
            "cp_sync_gb_per_s": nbytes / cp_sync / 1e9, "shard_size": shard_size,
            "runs": {"convert": converts, "cp": cps, "cp_sync": cp_syncs}}


def _cp_seconds(data: Data, sources: list[str]) -> tuple[float, float]:
    """Seconds of ``cp`` of ``sources`` (cold), and of ``cp`` then ``sync`` of the copies."""
    copy_dir = os.path.join(data.folder, "cp-copy")
    os.makedirs(copy_dir, exist_ok=True)
    copies = [os.path.join(copy_dir, os.path.basename(f)) for f in sources]
    drop_cache(sources)
    try:
        start = time.perf_counter()
        subprocess.run(["cp", "--reflink=never", *sources, copy_dir], check=True)
        cp = time.perf_counter() - start
        subprocess.run(["sync", *copies], check=True)
        return cp, time.perf_counter() - start
    finally:
        shutil.rmtree(copy_dir)


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] != "read-loop":
        print(__doc__)
        return 2
    job = json.loads(sys.argv[2])
    result = read_loop(Data.from_json(job["data"]), job.get("repeats", 3),
                       min_seconds=job.get("min_seconds", 1.0))
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
