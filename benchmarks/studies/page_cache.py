"""Warm reads depend on how the page cache was filled: ``pread`` against memmap copies.

The same batches (shuffled batch order, 256 rows, warm page cache) are read
two ways, after the cache was filled two ways:

* filled by a **sequential** read of the shard files (``cat``): the kernel's
  readahead grows and caches the files in large folios;
* filled by **shuffled batches** of 256 rows (what the first, cold epoch of
  ``fit(shuffle=True)`` does): each read starts a new readahead window, and
  the cache holds small folios.

``pread`` (npyseq's ``seq[i]``) copies page by page out of the cache, so it
is fast from large folios and slower from small ones; a copy out of a memmap
whose pages are already mapped (the minimal PyDataset) is a plain memcpy
either way. Writes ``benchmarks/results/page_cache.json`` and prints a table.
The suite runs it too, on its 1x dataset (its ``read`` phase).

    python -m benchmarks.studies.page_cache [--data benchmarks/data/suite-81327] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "numpy")  # npyseq.ShardSequence imports Keras; no backend needed

import numpy as np  # noqa: E402

from benchmarks.common import DATA, RESULTS, ShardMemmaps, drop_cache, markdown_table, write_result  # noqa: E402
from tools.synthetic import ROW_BYTES  # noqa: E402

BATCH = 256


def fill(files: list[str], how: str, seed: int) -> None:
    gc.collect()  # unmap the memmaps of the previous measurement: mapped pages cannot be dropped
    drop_cache(files)
    if how == "sequential":
        subprocess.run(["cat", *files], check=True, stdout=subprocess.DEVNULL)
        return
    # shuffled batches of rows, each its own pread, as a cold shuffled epoch reads them
    rng = np.random.default_rng(seed)
    for f in files:
        rows = np.load(f, mmap_mode="r")
        nbytes, offset = rows[:1].nbytes, rows.offset
        del rows
        fd = os.open(f, os.O_RDONLY)
        try:
            n = (os.path.getsize(f) - offset) // nbytes
            buf = np.empty(BATCH * nbytes, np.uint8)
            for b in rng.permutation(-(-n // BATCH)).tolist():
                os.preadv(fd, [buf], offset + b * BATCH * nbytes)
        finally:
            os.close(fd)


def warm_rates(shards: str, repeats: int, seed: int) -> dict:
    """Best GB/s over ``repeats`` shuffled epochs: npyseq ``seq[i]`` and memmap copies."""
    import npyseq

    # read="pread": this measures pread itself (npyseq's reads of data bigger than the memory
    # budget; its default for data that fits is to copy out of memory maps, the second column).
    seq = npyseq.ShardSequence(npyseq.open_shards(shards, read="pread"), x="x", y="y", batch_size=BATCH)
    ds = seq.dataset
    x, y = ShardMemmaps(ds, "x"), ShardMemmaps(ds, "y")

    rng = np.random.default_rng(seed)
    out = {"npyseq_pread": [], "memmap_copy": []}
    for _ in range(repeats):
        order = rng.permutation(len(seq)).tolist()
        t = time.perf_counter()
        rows = sum(len(seq[i][0]) for i in order)
        out["npyseq_pread"].append(rows * ROW_BYTES / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        for i in order:
            a, b = i * BATCH, min(len(ds), (i + 1) * BATCH)
            x.rows(a, b), y.rows(a, b)
        out["memmap_copy"].append(rows * ROW_BYTES / (time.perf_counter() - t) / 1e9)
    return {k: max(v) for k, v in out.items()} | {"runs": out}


def _smallest_suite_dataset() -> str | None:
    folders = [f for f in glob.glob(os.path.join(DATA, "suite-*")) if os.path.isdir(os.path.join(f, "shards"))]
    return min(folders, key=lambda f: int(f.rsplit("-", 1)[1]), default=None)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.page_cache", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=_smallest_suite_dataset(),
                   help="a suite dataset folder (default: the smallest in benchmarks/data)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(RESULTS, "page_cache.json"))
    args = p.parse_args()
    if not args.data:
        print("no dataset: run `make bench` first, or give --data")
        return 2
    shards = os.path.join(args.data, "shards")
    files = sorted(glob.glob(os.path.join(shards, "*", "*.npy")))
    results = []
    for how in ("sequential", "shuffled batches"):
        fill(files, how, seed=1)
        results.append({"filled_by": how, **warm_rates(shards, args.repeats, seed=2)})
    report = {"benchmark": "page_cache", "data": args.data, "bytes": sum(os.path.getsize(f) for f in files),
              "batch_size": BATCH, "kernel": os.uname().release, "results": results}
    print(f"warm reads of {report['bytes'] / 1e9:.2f} GB in shuffled batches of {BATCH} rows, "
          f"best of {args.repeats} (kernel {report['kernel']})\n")
    table = markdown_table(["page cache filled by", 'npyseq `seq[i]`, `read="pread"`, GB/s', "memmap copy GB/s"],
                           [(r["filled_by"], f"{r['npyseq_pread']:.2f}", f"{r['memmap_copy']:.2f}") for r in results],
                           "lrr")
    write_result(args.out, report, table=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
