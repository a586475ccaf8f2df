"""Read throughput of ShardSequence per shuffle mode, warm and cold page cache.

Loops ``seq[i]`` over one epoch (no Keras adapter, no model) and compares the
copy rate with a single-core memcpy of the same bytes measured in the same
run. Prints a markdown table and writes ``benchmarks/results/read.json``.

    python benchmarks/bench_read.py [--size-gb 1.0] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import npyseq  # noqa: E402
from memcap import drop_page_cache  # noqa: E402

ROW_SHAPE = (32, 32, 3)
MODES = [False, "batches", "blocks", "global"]


def make_dataset(path: str, size_gb: float) -> npyseq.Dataset:
    row_bytes = 4 * int(np.prod(ROW_SHAPE))
    rows = int(size_gb * 1e9) // row_bytes
    try:
        ds = npyseq.open_shards(path)
        if len(ds) == rows:
            return ds
    except npyseq.NpyseqError:
        pass
    rng = np.random.default_rng(0)
    with npyseq.ShardWriter(path, shard_size="256MB", overwrite=True) as w:
        for a in range(0, rows, 8192):
            n = min(rows, a + 8192) - a
            w.append(x=rng.random((n,) + ROW_SHAPE, dtype=np.float32), y=np.arange(a, a + n))
    return w.dataset


def memcpy_gbps(nbytes: int = 512 * 2**20, repeat: int = 5) -> float:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeat))
    return nbytes / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def drop(ds: npyseq.Dataset) -> None:
    """Cold page cache: unmap the shards (mapped pages cannot be dropped), then drop them."""
    import gc

    ds.close()
    gc.collect()
    for info in ds.manifest.arrays.values():
        for s in info.shards:
            drop_page_cache(os.path.join(ds.path, s.path))


def epoch_rate(ds: npyseq.Dataset, mode, batch_size: int, epoch: int) -> dict:
    seq = npyseq.ShardSequence(ds, x="x", batch_size=batch_size, shuffle=mode, seed=0)
    seq.epoch = epoch
    t = time.perf_counter()
    rows = 0
    for i in range(len(seq)):
        rows += len(seq[i][0])
    dt = time.perf_counter() - t
    return {"rows_per_s": rows / dt, "gb_per_s": rows * ds["x"].nbytes / len(ds) / dt / 1e9, "seconds": dt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data", default=os.path.join(HERE, "data", "read"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "read.json"))
    args = p.parse_args()

    ds = make_dataset(args.data, args.size_gb)
    memcpy = memcpy_gbps()
    results = []
    for mode in MODES:
        drop(ds)
        cold = epoch_rate(ds, mode, args.batch_size, epoch=0)
        warm = epoch_rate(ds, mode, args.batch_size, epoch=1)  # the data is now cached
        results.append({"shuffle": mode, "cold": cold, "warm": warm,
                        "warm_vs_memcpy": warm["gb_per_s"] / memcpy})
    report = {
        "benchmark": "read", "dataset_gb": ds["x"].nbytes / 1e9, "rows": len(ds),
        "row_shape": ROW_SHAPE, "batch_size": args.batch_size, "memcpy_gb_per_s": memcpy,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "platform": platform.platform()},
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"seq[i] over one epoch, {report['dataset_gb']:.2f} GB of 32x32x3 float32 rows, "
          f"batch {args.batch_size}; single-core memcpy {memcpy:.1f} GB/s\n")
    print("| shuffle | warm GB/s | warm / memcpy | warm rows/s | cold GB/s | cold rows/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| `{r['shuffle']!r}` | {r['warm']['gb_per_s']:.2f} | {r['warm_vs_memcpy']:.2f}x | "
              f"{r['warm']['rows_per_s']:,.0f} | {r['cold']['gb_per_s']:.2f} | {r['cold']['rows_per_s']:,.0f} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
