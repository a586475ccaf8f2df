"""How deep should the PyDataset queue be? ``max_queue_size`` against speed and memory.

For each queue depth, in a fresh process each: rows/s of the input pipeline
alone through Keras' ``EpochIterator`` (as ``fit`` pulls batches) with 2
threads and with 2 processes, and the peak anonymous memory and epoch time
of ``fit`` of the suite's MLP with 2 threads. Uses the suite's 1x dataset
(built by ``make bench``, or here if missing).

    python benchmarks/bench_queue.py [--depths 2 4 10] [--repeat 2]

Prints a markdown table and writes ``benchmarks/results/queue.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "queue.json")
EPOCHS = 3


def pipeline(path: str, depth: int, setting: str) -> dict:
    """Rows/s of ``EpochIterator`` over a ShardSequence, best of the epochs after the first."""
    import npyseq
    from keras.src.trainers.epoch_iterator import EpochIterator
    from methods import epoch_batches

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
    from memwatch import PeakMemory

    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=256, shuffle="blocks", seed=0, workers=2,
                               max_queue_size=depth)
    model = keras.Sequential([keras.Input(seq[0][0].shape[1:]), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    with PeakMemory() as peak:
        model.fit(seq, epochs=EPOCHS, verbose=0, callbacks=[Timer()])
    return {"peak_anon_mib": peak.max_bytes / 2**20, "epoch_seconds": min(times[1:])}


def _child(args) -> None:
    sys.path.insert(0, HERE)
    out = pipeline(args.path, args.depth, args.job) if args.job != "fit" else fit(args.path, args.depth)
    print(json.dumps(out))


def _run(path: str, depth: int, job: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", job, "--path", path, "--depth", str(depth)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 10])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--child", dest="job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        _child(args)
        return 0
    sys.path.insert(0, HERE)
    import npyseq
    from bench_data import Data, make_sources, rows_for

    rows = rows_for(1.0)  # the quick suite's 1x dataset, shared with it
    data = Data(os.path.join(HERE, "data", f"suite-{rows}"), rows)
    make_sources(data)
    path = data.shards
    if not os.path.exists(os.path.join(path, "manifest.json")):
        npyseq.write_shards(path, {"x": data.x_npy, "y": data.y_npy}, progress=False)
    runs = {d: {"threads": [], "processes": [], "fit": []} for d in args.depths}
    for _ in range(args.repeat):  # alternate the depths, so drift on a shared machine hits all alike
        for depth in args.depths:
            for job in ("threads", "processes", "fit"):
                runs[depth][job].append(_run(path, depth, job))
    table = ["| max_queue_size | rows/s, 2 threads | rows/s, 2 processes | fit (MLP): peak anon MiB | fit epoch s |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    summary = {}
    for depth, r in runs.items():
        s = summary[depth] = {
            "threads_rows_per_s": max(x["rows_per_s"] for x in r["threads"]),
            "processes_rows_per_s": max(x["rows_per_s"] for x in r["processes"]),
            "fit_peak_anon_mib": min(x["peak_anon_mib"] for x in r["fit"]),
            "fit_epoch_seconds": min(x["epoch_seconds"] for x in r["fit"]),
        }
        table.append(f"| {depth} | {s['threads_rows_per_s']:,.0f} | {s['processes_rows_per_s']:,.0f} | "
                     f"{s['fit_peak_anon_mib']:.0f} | {s['fit_epoch_seconds']:.2f} |")
    print("\n".join(table))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"dataset": path, "batch_size": 256, "epochs": EPOCHS, "repeat": args.repeat,
                   "summary": summary, "runs": runs, "load_average": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
