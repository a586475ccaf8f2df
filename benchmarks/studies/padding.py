"""Padding overhead of RaggedSequence on a long-tailed length distribution.

Token ids with lognormal lengths (clipped to 1..2000), batch size 64,
``shuffle="global"``. For each way of batching, one epoch of ``seq[i]``
(no Keras adapter, no model): padded tokens over real tokens, distinct batch
widths (one compilation each under ``jit_compile``) and rows/s. Then the
padding of bucketing by pool size, from the lengths alone, on this
distribution and a harsher one (shorter mean, same tail). Prints markdown
tables and writes ``benchmarks/results/padding.json``.

    python -m benchmarks.studies.padding [--rows 100000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import npyseq
from benchmarks.common import DATA, RESULTS, make_or_reuse_dataset, markdown_table, write_result
from npyseq import order
from npyseq.order import bucketing

LONGEST = 2000
DISTRIBUTIONS = {"lognormal(5, 1)": (5.0, 1.0), "lognormal(4, 1)": (4.0, 1.0)}
POOLS = [1, 10, 50, 100, 200, 500]


def sample_lengths(rows: int, mu: float, sigma: float, seed: int = 0) -> np.ndarray:
    lengths = np.random.default_rng(seed).lognormal(mu, sigma, rows)
    return np.clip(lengths.astype(np.int64), 1, LONGEST)


def make_dataset(path: str, lengths: np.ndarray) -> npyseq.Dataset:
    """Token ids (int32) of ``lengths`` as ``tokens`` and the row index as ``id``; reused if the lengths match."""

    def chunks():
        rng = np.random.default_rng(1)
        for a in range(0, len(lengths), 10_000):
            chunk = lengths[a:a + 10_000]
            values = rng.integers(1, 30_000, int(chunk.sum()), dtype=np.int32)
            yield {"tokens": np.split(values, np.cumsum(chunk)[:-1]), "id": np.arange(a, a + len(chunk))}

    return make_or_reuse_dataset(path, lambda ds: np.array_equal(ds["tokens"].lengths(), lengths), chunks)


def run_sequence(ds: npyseq.Dataset, batch_size: int, **options) -> dict:
    seq = npyseq.RaggedSequence(ds, x="tokens", y="id", batch_size=batch_size, shuffle="global", seed=0, **options)
    padded, widths, rows = 0, set(), 0
    t = time.perf_counter()
    for i in range(len(seq)):
        tokens, ids = seq[i]
        padded += tokens.size
        widths.add(tokens.shape[1])
        rows += len(ids)
    seconds = time.perf_counter() - t
    return {"padded_tokens": int(padded), "distinct_widths": len(widths), "rows": rows,
            "seconds": seconds, "rows_per_s": rows / seconds}


def bucketed_padding(lengths: np.ndarray, batch_size: int, bucket_pool: int) -> int:
    """Padded tokens of one bucketed epoch (shuffle="global"), pool by pool."""
    n, padded = len(lengths), 0
    for pool in range(bucketing.num_pools(n, batch_size, bucket_pool)):
        rows = bucketing.pool_rows(n, batch_size, pool, bucket_pool=bucket_pool, shuffle="global")
        ordered = np.sort(lengths[rows])
        for a in range(0, len(ordered), batch_size):
            batch = ordered[a:a + batch_size]
            padded += len(batch) * int(batch[-1])
    return padded


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.padding",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="samples (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default=os.path.join(DATA, "padding"))
    parser.add_argument("--out", default=os.path.join(RESULTS, "padding.json"))
    args = parser.parse_args()
    bs = args.batch_size

    name, (mu, sigma) = next(iter(DISTRIBUTIONS.items()))
    lengths = sample_lengths(args.rows, mu, sigma)
    ds = make_dataset(args.data, lengths)
    real = int(lengths.sum())
    methods = {
        "global maximum": dict(pad_to_multiple=int(lengths.max())),
        "random batches": {},
        "bucketing": dict(bucket=True),
        "bucketing + pad_to_multiple=8": dict(bucket=True, pad_to_multiple=8),
    }
    results = []
    print(f"{args.rows:,} samples, lengths {name} clipped to 1..{LONGEST}: mean {lengths.mean():.1f}, "
          f"median {np.median(lengths):.0f}, max {lengths.max()}; batch size {bs}, shuffle='global', "
          f"bucket_pool={bucketing.DEFAULT_BUCKET_POOL}\n")
    for method, options in methods.items():
        r = run_sequence(ds, bs, **options)
        assert r["rows"] == args.rows
        r.update(method=method, options=options, padded_over_real=r["padded_tokens"] / real)
        results.append(r)
    print(markdown_table(["batching", "padded / real tokens", "distinct widths", "rows/s"],
                         [(r["method"], f"{r['padded_over_real']:.3f}x", r["distinct_widths"],
                           f"{r['rows_per_s']:,.0f}") for r in results], "lrrr"))

    sweep = {}
    for dist, (mu, sigma) in DISTRIBUTIONS.items():
        lens = sample_lengths(args.rows, mu, sigma)
        sweep[dist] = {"mean_length": float(lens.mean()),
                       "padded_over_real": {k: bucketed_padding(lens, bs, k) / int(lens.sum()) for k in POOLS}}
    print("\nPadded / real tokens of bucketing by `bucket_pool` (batches per pool), from the lengths alone:\n")
    table = markdown_table(["lengths", "mean"] + [f"pool {k}" for k in POOLS],
                           [[dist, f"{s['mean_length']:.0f}"] + [f"{s['padded_over_real'][k]:.3f}x" for k in POOLS]
                            for dist, s in sweep.items()], "lr" + "r" * len(POOLS))

    report = {
        "benchmark": "padding", "rows": args.rows, "batch_size": bs, "distribution": name,
        "longest": int(lengths.max()), "mean_length": float(lengths.mean()), "real_tokens": real,
        "bucket_pool": bucketing.DEFAULT_BUCKET_POOL, "batches": order.num_batches(args.rows, bs),
        "results": results, "pool_sweep": sweep,
    }
    write_result(args.out, report, table=table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
