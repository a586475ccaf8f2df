"""Several hosts: what ``seq.shard()`` costs each host, in shards opened and in rows/s.

Two questions on one dataset (``--rows`` rows of 256 bytes, shards of
``--shard-rows`` rows, global batch ``--batch-size``):

1. **Shards opened.** For ``shuffle="global"`` and ``"blocks"`` (default
   ``block_size``, ``batch_size // 16``) and 1, 2, 4 and 8 hosts: how many
   distinct shards one host's part of a global batch lies in (mean over an
   epoch), and how many shards a host opens over a whole epoch. Pure index
   arithmetic (``batch_rows`` of every batch), no reads.
2. **Rows/s.** One epoch of ``seq[i]`` (the input pipeline, no Keras
   adapter, no model), warm page cache: one process on the unsharded
   sequence, then two processes at once, each on ``seq.shard(2, i)``, same
   global batch. Rows/s per process and in total (all rows over the slower
   process' time), for ``shuffle=False`` and ``"global"``.

Prints markdown tables and writes ``benchmarks/results/hosts.json``.

    python -m benchmarks.studies.hosts [--rows 400000] [--shard-rows 10000] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import DATA, RESULTS, ROOT, markdown_table, parse_result, print_result, write_result

HOSTS = [1, 2, 4, 8]
WIDTH = 64  # float32 columns: 256 bytes a row


def dataset(path: str, rows: int, shard_rows: int):
    import npyseq

    try:
        ds = npyseq.open_shards(path)
        if len(ds["x"]) == rows and len(os.listdir(os.path.join(path, "x"))) == -(-rows // shard_rows):
            return ds
    except (npyseq.NpyseqError, KeyError, AttributeError):
        pass
    rng = np.random.default_rng(0)
    x = rng.random((rows, WIDTH), dtype=np.float32)
    return npyseq.write_shards(path, {"x": x, "y": np.arange(rows)}, rows=shard_rows, progress=False,
                               overwrite=True)


def shard_counts(ds, shard_rows: int, batch_size: int, mode: str) -> list[dict]:
    """Per number of hosts: mean shards per host part of a batch, and shards a host opens in an epoch."""
    import npyseq

    seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=batch_size, shuffle=mode, seed=0, drop_remainder=True)
    out = []
    for n in HOSTS:
        host = seq.shard(n, 0)  # host 0; the others are alike
        per_step, epoch = [], set()
        for b in range(len(host)):
            shards = np.unique(host.batch_rows(b) // shard_rows)
            per_step.append(len(shards))
            epoch.update(shards.tolist())
        out.append({"mode": mode, "hosts": n, "rows_per_host_batch": batch_size // n,
                    "shards_per_step": float(np.mean(per_step)), "shards_per_epoch": len(epoch)})
    return out


def child(path: str, num_hosts: int, index: int, batch_size: int, mode: str) -> None:
    """One process: one epoch of ``seq[i]`` of its host part; prints its RESULT."""
    import npyseq

    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=batch_size, shuffle=mode, seed=0, drop_remainder=True)
    if num_hosts > 1:
        seq = seq.shard(num_hosts, index)
    seq[0]  # opened and warm, like a running fit
    rows, t = 0, time.perf_counter()
    for i in range(len(seq)):
        rows += len(seq[i][1])
    print_result({"rows": rows, "seconds": time.perf_counter() - t})


def run_processes(path: str, num_hosts: int, batch_size: int, mode: str) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.studies.hosts", "--child", path, str(num_hosts),
                               str(i), str(batch_size), str(mode)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(num_hosts)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        result = parse_result(out)
        if p.returncode != 0 or result is None:
            raise RuntimeError(f"a child exited {p.returncode}:\n{err[-3000:]}")
        results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.hosts",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, n, i, batch, mode = args.child
        child(path, int(n), int(i), int(batch), False if mode == "False" else mode)
        return 0
    path = os.path.join(DATA, f"hosts-{args.rows}-{args.shard_rows}")
    ds = dataset(path, args.rows, args.shard_rows)
    counts = [c for mode in ("global", "blocks") for c in shard_counts(ds, args.shard_rows, args.batch_size, mode)]
    shards = -(-args.rows // args.shard_rows)
    table = markdown_table(
        ["shuffle", "hosts", "rows per host batch", "shards per host batch (mean)", f"shards per host and epoch (of {shards})"],
        [[c["mode"], c["hosts"], c["rows_per_host_batch"], f"{c['shards_per_step']:.1f}", c["shards_per_epoch"]]
         for c in counts], "lrrrr")
    rates = []
    run_processes(path, 1, args.batch_size, "False")  # warm the page cache
    for mode in (False, "global"):
        for n in (1, 2):
            res = run_processes(path, n, args.batch_size, str(mode))
            per = [r["rows"] / r["seconds"] for r in res]
            total = sum(r["rows"] for r in res) / max(r["seconds"] for r in res)
            rates.append({"mode": str(mode), "processes": n, "rows_per_s_per_process": per, "rows_per_s_total": total})
    table += "\n\n" + markdown_table(
        ["shuffle", "processes", "rows/s per process", "rows/s in total"],
        [[r["mode"], r["processes"], " / ".join(f"{p:,.0f}" for p in r["rows_per_s_per_process"]),
          f"{r['rows_per_s_total']:,.0f}"] for r in rates], "lrrr")
    write_result(os.path.join(RESULTS, "hosts.json"),
                 {"rows": args.rows, "shard_rows": args.shard_rows, "batch_size": args.batch_size,
                  "row_bytes": WIDTH * 4, "load_at_end": os.getloadavg(), "shard_counts": counts, "rates": rates},
                 table=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
