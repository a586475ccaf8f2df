"""Shuffled reads under a memory cap smaller than the data: memmap copies against npyseq.

Why npyseq reads with ``pread`` rather than by copying out of memory maps:
under a cgroup memory cap smaller than the data, every page fault of a memmap
must reclaim pages that are still mapped into the process. This script reads
the same batches (``shuffle="blocks"``, cold page cache) two ways, each in a
fresh process under the cap:

* ``memmap``: ``np.memmap`` of each shard, ``mm[rows]`` gathers (what a
  minimal hand-written PyDataset does);
* ``npyseq``: ``ShardedArray.take`` (``pread`` of each run of rows).

Needs root and the cgroup v1 memory controller. Prints a table and writes
``benchmarks/results/capped_read.json``.

    python benchmarks/bench_capped_read.py [--data benchmarks/data/read] [--size-gb 1.0] [--cap-mb 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def child(path: str, method: str, batches: int, mode: str) -> None:
    import numpy as np

    import npyseq
    from npyseq import order

    ds = npyseq.open_shards(path)
    x = ds["x"]
    if method == "memmap":
        info = ds.manifest.arrays["x"]
        maps = [np.load(os.path.join(ds.path, s.path), mmap_mode="r") for s in info.shards]
        offsets = ds._offsets

        def take(idx):
            out = np.empty((len(idx),) + x.shape[1:], x.dtype)
            k_of = np.searchsorted(offsets, idx, side="right") - 1
            for k in np.unique(k_of):
                sel = k_of == k
                out[sel] = maps[k][idx[sel] - offsets[k]]
            return out
    else:
        take = x.take
    n = len(ds)
    rows = 0
    start = time.perf_counter()
    for i in range(min(batches, order.num_batches(n, 256))):
        rows += len(take(order.batch_indices(n, 256, i, shuffle=mode, seed=0, epoch=0)))
    seconds = time.perf_counter() - start
    times = os.times()
    print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                      "gb_per_s": rows * x.nbytes / len(x) / seconds / 1e9,
                      "user_s": times.user, "system_s": times.system}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(HERE, "data", "read"))
    p.add_argument("--size-gb", type=float, default=1.0, help="dataset size if it must be made")
    p.add_argument("--cap-mb", type=int, default=256)
    p.add_argument("--batches", type=int, default=600)
    p.add_argument("--out", default=os.path.join(HERE, "results", "capped_read.json"))
    p.add_argument("--child", nargs=3, metavar=("METHOD", "BATCHES", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.data, args.child[0], int(args.child[1]), args.child[2])
        return 0

    from bench_read import drop, make_dataset
    from memcap import cgroup_available, run_capped

    ok, reason = cgroup_available()
    if not ok:
        print(f"skipped: {reason}")
        return 0
    ds = make_dataset(args.data, args.size_gb)
    results = []
    for mode in ("blocks", "global"):
        for method in ("memmap", "npyseq"):
            drop(ds)
            run = run_capped([sys.executable, __file__, "--data", ds.path, "--child", method,
                              str(args.batches), mode], args.cap_mb * 2**20, timeout=1200).check()
            r = json.loads(run.stdout.strip().splitlines()[-1])
            results.append({"shuffle": mode, "method": method, **r})
    report = {"benchmark": "capped_read", "dataset_gb": ds.nbytes / 1e9, "cap_mb": args.cap_mb,
              "batch_size": 256, "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{args.batches} batches of 256 rows, {report['dataset_gb']:.2f} GB dataset, "
          f"{args.cap_mb} MiB cap, cold cache\n")
    print("| shuffle | method | rows/s | GB/s | user s | system s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| `{r['shuffle']}` | {r['method']} | {r['rows_per_s']:,.0f} | {r['gb_per_s']:.2f} | "
              f"{r['user_s']:.1f} | {r['system_s']:.1f} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
