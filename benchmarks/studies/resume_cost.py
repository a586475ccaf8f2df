"""What does ``npyseq.BackupAndRestore`` add to an epoch, against ``keras.callbacks.BackupAndRestore``?

One ``fit`` epoch of a small dense model over a ``ShardSequence`` (shuffled,
``fit(shuffle=False)``), timed with no callback, with Keras' callback and
with npyseq's, each saving every epoch and every ``--save-freq`` steps; and the
time a resumed ``fit`` spends in ``on_train_begin`` (loading the checkpoint,
plus npyseq's position). Each figure is the median over ``--repeat`` fits of
the epochs after the first (the first one traces). Prints a markdown table
and writes ``benchmarks/results/resume_cost.json``.

    python -m benchmarks.studies.resume_cost [--rows 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import RESULTS, markdown_table, write_result


def measure(kind: str, save_freq, data: str, backup: str, epochs: int) -> dict:
    import keras

    import npyseq

    seq = npyseq.ShardSequence(data, x="x", y="y", batch_size=256, shuffle="global", seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    shutil.rmtree(backup, ignore_errors=True)
    callbacks = {"none": [], "keras": [keras.callbacks.BackupAndRestore(backup, save_freq=save_freq)],
                 "npyseq": [npyseq.BackupAndRestore(backup, seq, save_freq=save_freq)]}[kind]
    times, starts = [], []

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            starts.append(time.perf_counter())

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    t = time.perf_counter()
    model.fit(seq, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks + [Clock()])
    begin = starts[0] - t  # fit's start up to the end of the backup's on_train_begin (a fresh start)
    return {"epoch_s": statistics.median(times[1:]), "train_begin_s": begin, "steps": len(seq)}


def resume_begin(kind: str, data: str, backup: str) -> float:
    """Seconds of a resumed fit up to the first epoch: the checkpoint load (and npyseq's position)."""
    import keras

    import npyseq

    seq = npyseq.ShardSequence(data, x="x", y="y", batch_size=256, shuffle="global", seed=0)
    shutil.rmtree(backup, ignore_errors=True)

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
        m.compile("adam", "mse")
        return m

    def callback():
        return (keras.callbacks.BackupAndRestore(backup, save_freq=7, delete_checkpoint=False) if kind == "keras"
                else npyseq.BackupAndRestore(backup, seq, save_freq=7, delete_checkpoint=False))

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 10:
                self.model.stop_training = True

    model().fit(seq, epochs=1, shuffle=False, verbose=0, callbacks=[callback(), Stop()])
    cb, seen = callback(), []

    class First(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(time.perf_counter())
            self.model.stop_training = True

        def on_train_batch_begin(self, batch, logs=None):
            self.model.stop_training = True

    m = model()
    t = time.perf_counter()
    m.fit(seq, epochs=1, shuffle=False, verbose=0, callbacks=[cb, First()])
    return seen[0] - t


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.resume_cost", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows of the dataset (default %(default)s)")
    p.add_argument("--save-freq", type=int, default=20, help="steps between checkpoints (default %(default)s)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=os.path.join(RESULTS, "resume_cost.json"))
    args = p.parse_args()

    import npyseq

    work = tempfile.mkdtemp(prefix="resume_cost-")
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.rows, 64), dtype=np.float32)
        data = os.path.join(work, "data")
        npyseq.write_shards(data, {"x": x, "y": x[:, :1] * 2}, progress=False)
        backup = os.path.join(work, "backup")
        configs = [("none", "epoch"), ("keras", "epoch"), ("npyseq", "epoch"),
                   ("keras", args.save_freq), ("npyseq", args.save_freq)]
        samples = {c: [] for c in configs}
        for _ in range(args.repeat):  # interleaved, so that a drift of the machine hits every config alike
            for kind, save_freq in configs:
                samples[(kind, save_freq)].append(measure(kind, save_freq, data, backup, args.epochs))
        runs = [{"callback": kind, "save_freq": "-" if kind == "none" else save_freq,
                 "epoch_s": statistics.median(s["epoch_s"] for s in samples[(kind, save_freq)]),
                 "steps": samples[(kind, save_freq)][0]["steps"], "samples": samples[(kind, save_freq)]}
                for kind, save_freq in configs]
        resumed = {kind: statistics.median(resume_begin(kind, data, backup) for _ in range(args.repeat))
                   for kind in ("keras", "npyseq")}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    keras_by = {r["save_freq"]: r["epoch_s"] for r in runs if r["callback"] == "keras"}
    rows = [(r["callback"], r["save_freq"], f"{r['epoch_s']:.3f}",
             "" if r["callback"] != "npyseq" else f"{r['epoch_s'] - keras_by[r['save_freq']]:+.3f}")
            for r in runs]
    table = markdown_table(["callback", "save_freq", "epoch s (median)", "npyseq minus Keras, s"], rows, "llrr")
    table += ("\n\n" + markdown_table(["resumed fit, start to first epoch", "s (median)"],
                                      [(k, f"{v:.3f}") for k, v in resumed.items()], "lr"))
    report = {"rows": args.rows, "batch_size": 256, "steps_per_epoch": runs[0]["steps"], "runs": runs,
              "resume_start_s": resumed}
    write_result(args.out, report, table=table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
