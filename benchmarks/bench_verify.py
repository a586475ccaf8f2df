"""What ``open_shards(..., verify="checksums")`` costs: one epoch read with and without it.

``verify="checksums"`` hashes each shard in full (xxh3-64) the first time a
process opens it, so a flipped byte raises ChecksumMismatchError instead of
training on it. This measures, on one dataset, a first full sequential pass
over ``x`` (256-row batches, ``ShardSequence`` without Keras) with
``verify="headers"`` (the default) and ``verify="checksums"``, from a warm and
from a cold page cache, plus a second pass (shards already hashed), the open
itself, and the raw hashing rate. Prints a markdown table and writes
``benchmarks/results/verify.json``.

    python benchmarks/bench_verify.py [--size-gb 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import npyseq  # noqa: E402
from bench_read import ROW_SHAPE, make_dataset  # noqa: E402
from memcap import drop_page_cache  # noqa: E402
from npyseq import _npy  # noqa: E402



def shard_paths(ds: npyseq.Dataset) -> list[str]:
    return [os.path.join(ds.path, s.path) for a in ds.manifest.arrays.values() for s in a.shards]


def drop(ds: npyseq.Dataset) -> None:
    ds.close()
    gc.collect()
    for path in shard_paths(ds):
        drop_page_cache(path)


def one_pass(ds: npyseq.Dataset, batch_size: int) -> float:
    seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=batch_size)
    t = time.perf_counter()
    for i in range(len(seq)):
        seq[i]
    return time.perf_counter() - t


def measure(path: str, verify: str, cold: bool, batch_size: int) -> dict:
    if cold:
        drop(npyseq.open_shards(path, verify="none"))
    t = time.perf_counter()
    ds = npyseq.open_shards(path, verify=verify)
    opened = time.perf_counter() - t
    first = one_pass(ds, batch_size)
    second = one_pass(ds, batch_size)  # same process: shards are hashed once
    ds.close()
    return {"open_s": opened, "first_pass_s": first, "second_pass_s": second}


def hash_rate(ds: npyseq.Dataset) -> float:
    path = shard_paths(ds)[0]
    _npy.file_checksum(path)  # warm
    t = time.perf_counter()
    _npy.file_checksum(path)
    return os.path.getsize(path) / (time.perf_counter() - t) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data", default=os.path.join(HERE, "data", "verify"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "verify.json"))
    args = p.parse_args()

    ds = make_dataset(args.data, args.size_gb)
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
        "benchmark": "verify", "dataset_bytes": nbytes, "rows": len(ds),
        "shards_per_array": ds.num_shards, "row_shape": ROW_SHAPE, "batch_size": args.batch_size,
        "repeat": args.repeat, "xxh3_gb_per_s_warm": hash_rate(ds),
        "first_pass_overhead": overhead, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "platform": platform.platform()},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"one sequential pass over {nbytes / 1e9:.2f} GB ({ds.num_shards} shards of x and of y), "
          f"batch {args.batch_size}, median of {args.repeat}; xxh3 alone "
          f"{report['xxh3_gb_per_s_warm']:.1f} GB/s from page cache\n")
    print("| cache | verify | open | first pass | first pass GB/s | second pass |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['cache']} | `{r['verify']}` | {r['open_s'] * 1e3:.1f} ms | {r['first_pass_s']:.2f} s | "
              f"{r['first_pass_gb_per_s']:.2f} | {r['second_pass_s']:.2f} s |")
    for c, o in overhead.items():
        print(f"\n{c} cache: checksums add {o['seconds']:.2f} s to the first pass ({o['ratio']:.2f}x)")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
