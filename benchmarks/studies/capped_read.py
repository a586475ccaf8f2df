"""Shuffled reads under a memory cap smaller than the data: memmap copies against npyseq.

Why npyseq reads with ``pread`` rather than by copying out of memory maps:
under a cgroup memory cap smaller than the data, every page fault of a memmap
must reclaim pages that are still mapped into the process. This script reads
the same batches (``shuffle="blocks"``, cold page cache) two ways, each in a
fresh process under the cap:

* ``memmap``: ``np.memmap`` of each shard, ``mm[rows]`` gathers (what a
  minimal hand-written PyDataset does);
* ``npyseq``: ``ShardedArray.take`` (``pread`` of each run of rows).

Needs root and the cgroup v1 memory controller (it says so and writes
nothing otherwise). Prints a table and writes ``benchmarks/results/capped_read.json``.

    python -m benchmarks.studies.capped_read [--data benchmarks/data/images] [--size-gb 1.0] [--cap-mb 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.common import (DATA, RESULTS, ROOT, ShardMemmaps, drop_cache, image_dataset, markdown_table,
                               parse_result, print_result, write_result)


def child(path: str, method: str, batches: int, mode: str) -> None:
    import npyseq
    from npyseq import order

    ds = npyseq.open_shards(path)
    x = ds["x"]
    take = ShardMemmaps(ds, "x").take if method == "memmap" else x.take
    n = len(ds)
    rows = 0
    start = time.perf_counter()
    for i in range(min(batches, order.num_batches(n, 256))):
        rows += len(take(order.batch_indices(n, 256, i, shuffle=mode, seed=0, epoch=0)))
    seconds = time.perf_counter() - start
    times = os.times()
    print_result({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                  "gb_per_s": rows * x.nbytes / len(x) / seconds / 1e9,
                  "user_s": times.user, "system_s": times.system})


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.capped_read", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(DATA, "images"))
    p.add_argument("--size-gb", type=float, default=1.0, help="dataset size if it must be made (default %(default)s)")
    p.add_argument("--cap-mb", type=int, default=256)
    p.add_argument("--batches", type=int, default=600)
    p.add_argument("--out", default=os.path.join(RESULTS, "capped_read.json"))
    p.add_argument("--child", nargs=3, metavar=("METHOD", "BATCHES", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.data, args.child[0], int(args.child[1]), args.child[2])
        return 0

    from tools.memcap import cgroup_available, run_capped

    ok, reason = cgroup_available()
    if not ok:
        print(f"skipped: {reason}")
        return 0
    ds = image_dataset(args.data, args.size_gb)
    results = []
    for mode in ("blocks", "global"):
        for method in ("memmap", "npyseq"):
            drop_cache(ds)
            run = run_capped([sys.executable, "-m", "benchmarks.studies.capped_read", "--data", ds.path,
                              "--child", method, str(args.batches), mode], args.cap_mb * 2**20,
                             timeout=1200, cwd=ROOT).check()
            results.append({"shuffle": mode, "method": method, **parse_result(run.stdout)})
    report = {"benchmark": "capped_read", "dataset_gb": ds.nbytes / 1e9, "cap_mb": args.cap_mb,
              "batch_size": 256, "batches": args.batches, "results": results}
    print(f"{args.batches} batches of 256 rows, {report['dataset_gb']:.2f} GB dataset, "
          f"{args.cap_mb} MiB cap, cold cache\n")
    table = markdown_table(["shuffle", "method", "rows/s", "GB/s", "user s", "system s"],
                           [(f"`{r['shuffle']}`", r["method"], f"{r['rows_per_s']:,.0f}", f"{r['gb_per_s']:.2f}",
                             f"{r['user_s']:.1f}", f"{r['system_s']:.1f}") for r in results], "llrrrr")
    write_result(args.out, report, table=table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
