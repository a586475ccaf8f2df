"""How deep should the PyDataset queue be? ``max_queue_size`` against speed and memory.

For each queue depth, in a fresh process each: rows/s of the input pipeline
alone through Keras' ``EpochIterator`` (as ``fit`` pulls batches) with 2
threads and with 2 processes, and the peak anonymous memory and epoch time
of ``fit`` of the suite's MLP with 2 threads. Uses the suite's 1x dataset
(built by ``make bench``, or here if missing).

    python -m benchmarks.studies.queue_depth [--depths 2 4 10] [--repeat 2] [--size-gb 1.0]

Prints a markdown table and writes ``benchmarks/results/queue_depth.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.common import DATA, RESULTS, child_result, markdown_table, print_result, write_result

EPOCHS = 3


def pipeline(path: str, depth: int, setting: str) -> dict:
    """Rows/s of ``EpochIterator`` over a ShardSequence, best of the epochs after the first."""
    from keras.src.trainers.epoch_iterator import EpochIterator

    import npyseq
    from benchmarks.suite.methods import epoch_batches

    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=256, shuffle="blocks", seed=0, workers=2,
                               use_multiprocessing=setting == "processes", max_queue_size=depth)
    it = EpochIterator(x=seq, shuffle=False)
    it.reset()
    rates = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        rows = sum(len(b[0]) for b in epoch_batches(it))
        rates.append(rows / (time.perf_counter() - start))
    return {"rows_per_s": max(rates[1:])}


def fit(path: str, depth: int) -> dict:
    """Peak anonymous memory (Pss_Anon of the tree) and epoch seconds of fit, 2 threads."""
    import keras

    import npyseq
    from tools.memwatch import PeakMemory
    from tools.timing import EpochTimer

    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=256, shuffle="blocks", seed=0, workers=2,
                               max_queue_size=depth)
    model = keras.Sequential([keras.Input(seq[0][0].shape[1:]), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = EpochTimer()
    with PeakMemory() as peak:
        model.fit(seq, epochs=EPOCHS, verbose=0, callbacks=[timer])
    return {"peak_anon_mib": peak.max_bytes / 2**20, "epoch_seconds": min(timer.seconds[1:])}


def _run(path: str, depth: int, job: str) -> dict:
    return child_result("benchmarks.studies.queue_depth", "--child", job, "--path", path, "--depth", str(depth))


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.queue_depth", description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 10])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--size-gb", type=float, default=1.0,
                   help="dataset size (default %(default)s: the quick suite's 1x dataset, shared with it)")
    p.add_argument("--data", default=DATA, help="where the datasets go (default: benchmarks/data)")
    p.add_argument("--out", default=os.path.join(RESULTS, "queue_depth.json"))
    p.add_argument("--child", dest="job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        print_result(pipeline(args.path, args.depth, args.job) if args.job != "fit" else fit(args.path, args.depth))
        return 0
    import npyseq
    from benchmarks.suite.data import Data, make_sources, rows_for

    rows = rows_for(args.size_gb)
    data = Data(os.path.join(args.data, f"suite-{rows}"), rows)
    make_sources(data)
    path = data.shards
    if not os.path.exists(os.path.join(path, "manifest.json")):
        npyseq.write_shards(path, {"x": data.x_npy, "y": data.y_npy}, progress=False)
    runs = {d: {"threads": [], "processes": [], "fit": []} for d in args.depths}
    for _ in range(args.repeat):  # alternate the depths, so drift on a shared machine hits all alike
        for depth in args.depths:
            for job in ("threads", "processes", "fit"):
                runs[depth][job].append(_run(path, depth, job))
    summary = {}
    for depth, r in runs.items():
        summary[depth] = {
            "threads_rows_per_s": max(x["rows_per_s"] for x in r["threads"]),
            "processes_rows_per_s": max(x["rows_per_s"] for x in r["processes"]),
            "fit_peak_anon_mib": min(x["peak_anon_mib"] for x in r["fit"]),
            "fit_epoch_seconds": min(x["epoch_seconds"] for x in r["fit"]),
        }
    table = markdown_table(
        ["max_queue_size", "rows/s, 2 threads", "rows/s, 2 processes", "fit (MLP): peak anon MiB", "fit epoch s"],
        [(depth, f"{s['threads_rows_per_s']:,.0f}", f"{s['processes_rows_per_s']:,.0f}",
          f"{s['fit_peak_anon_mib']:.0f}", f"{s['fit_epoch_seconds']:.2f}") for depth, s in summary.items()],
        "rrrrr")
    write_result(args.out, {"benchmark": "queue_depth", "dataset": path, "batch_size": 256, "epochs": EPOCHS,
                            "repeat": args.repeat, "summary": summary, "runs": runs,
                            "load_average": os.getloadavg()}, table=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
