"""What ``open_shards(..., verify="checksums")`` costs: one epoch read with and without it.

``verify="checksums"`` hashes each shard in full (xxh3-64) the first time a
process opens it, so a flipped byte raises ChecksumMismatchError instead of
training on it. This measures, on one dataset, a first full sequential pass
over ``x`` (256-row batches, ``ShardSequence`` without Keras) with
``verify="headers"`` (the default) and ``verify="checksums"``, from a warm and
from a cold page cache, plus a second pass (shards already hashed), the open
itself, and the raw hashing rate. Prints a markdown table and writes
``benchmarks/results/verify_cost.json``.

    python -m benchmarks.studies.verify_cost [--size-gb 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import npyseq
from benchmarks.common import DATA, RESULTS, drop_cache, image_dataset, markdown_table, shard_files, write_result
from npyseq.format import npy
from tools.synthetic import ROW_SHAPE


def one_pass(ds: npyseq.Dataset, batch_size: int) -> float:
    seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=batch_size)
    t = time.perf_counter()
    for i in range(len(seq)):
        seq[i]
    return time.perf_counter() - t


def measure(path: str, verify: str, cold: bool, batch_size: int) -> dict:
    if cold:
        drop_cache(npyseq.open_shards(path, verify="none"))
    t = time.perf_counter()
    ds = npyseq.open_shards(path, verify=verify)
    opened = time.perf_counter() - t
    first = one_pass(ds, batch_size)
    second = one_pass(ds, batch_size)  # same process: shards are hashed once
    ds.close()
    return {"open_s": opened, "first_pass_s": first, "second_pass_s": second}


def hash_rate(ds: npyseq.Dataset) -> float:
    path = shard_files(ds)[0]
    npy.file_checksum(path)  # warm
    t = time.perf_counter()
    npy.file_checksum(path)
    return os.path.getsize(path) / (time.perf_counter() - t) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.verify_cost", description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="size of x (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data", default=os.path.join(DATA, "verify"))
    p.add_argument("--out", default=os.path.join(RESULTS, "verify_cost.json"))
    args = p.parse_args()

    ds = image_dataset(args.data, args.size_gb)
    nbytes = ds.nbytes
    runs = []
    for cache in ("warm", "cold"):
        for verify in ("headers", "checksums"):
            samples = [measure(args.data, verify, cache == "cold", args.batch_size)
                       for _ in range(args.repeat)]
            med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            runs.append({"cache": cache, "verify": verify, **med,
                         "first_pass_gb_per_s": nbytes / med["first_pass_s"] / 1e9,
                         "samples": samples})
    by = {(r["cache"], r["verify"]): r for r in runs}
    overhead = {c: {"seconds": by[(c, "checksums")]["first_pass_s"] - by[(c, "headers")]["first_pass_s"],
                    "ratio": by[(c, "checksums")]["first_pass_s"] / by[(c, "headers")]["first_pass_s"]}
                for c in ("warm", "cold")}
    report = {
        "benchmark": "verify_cost", "dataset_bytes": nbytes, "rows": len(ds),
        "shards_per_array": ds.num_shards, "row_shape": ROW_SHAPE, "batch_size": args.batch_size,
        "repeat": args.repeat, "xxh3_gb_per_s_warm": hash_rate(ds),
        "first_pass_overhead": overhead, "runs": runs,
    }
    print(f"one sequential pass over {nbytes / 1e9:.2f} GB ({ds.num_shards} shards of x and of y), "
          f"batch {args.batch_size}, median of {args.repeat}; xxh3 alone "
          f"{report['xxh3_gb_per_s_warm']:.1f} GB/s from page cache\n")
    table = markdown_table(["cache", "verify", "open", "first pass", "first pass GB/s", "second pass"],
                           [(r["cache"], f"`{r['verify']}`", f"{r['open_s'] * 1e3:.1f} ms", f"{r['first_pass_s']:.2f} s",
                             f"{r['first_pass_gb_per_s']:.2f}", f"{r['second_pass_s']:.2f} s") for r in runs],
                           "llrrrr")
    table += "".join(f"\n\n{c} cache: checksums add {o['seconds']:.2f} s to the first pass ({o['ratio']:.2f}x)"
                     for c, o in overhead.items())
    write_result(args.out, report, table=table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
