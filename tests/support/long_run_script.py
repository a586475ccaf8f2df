"""Train for many epochs with process workers; print per-epoch resource use of the main process.

Usage: python long_run_script.py DATASET START_METHOD EPOCHS
Prints one JSON object: {"fds": [...], "threads": [...], "tasks": [...],
"rss_anon": [...], "children": [...]}, one entry per epoch, sampled in
on_epoch_end after the epoch's worker pool was closed: open file
descriptors, Python threads, OS threads, anonymous memory (RssAnon, bytes)
and live child processes.
"""

import gc
import json
import multiprocessing
import os
import re
import sys
import threading
import time


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^RssAnon:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


_POOL_THREADS = ("_handle_workers", "_handle_tasks", "_handle_results")  # multiprocessing.Pool's


def settle(deadline: float = 20.0) -> None:
    """Wait until the epoch's closed pool is gone: its worker processes and its three
    handler threads (named after their targets) have exited; polled, up to a deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pool_threads = [t for t in threading.enumerate() if any(h in t.name for h in _POOL_THREADS)]
        if not multiprocessing.active_children() and not pool_threads:
            return
        time.sleep(0.01)


if __name__ == "__main__":
    path, method, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    multiprocessing.set_start_method(method, force=True)
    import keras

    import npyseq

    samples = {"fds": [], "threads": [], "tasks": [], "rss_anon": [], "children": []}

    class Sample(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            gc.collect()
            settle()
            samples["fds"].append(len(os.listdir("/proc/self/fd")))
            samples["threads"].append(threading.active_count())
            samples["tasks"].append(len(os.listdir("/proc/self/task")))
            samples["rss_anon"].append(rss_anon())
            samples["children"].append(len(multiprocessing.active_children()))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=128, shuffle="global", seed=1,
                               workers=2, use_multiprocessing=True)
    model.fit(seq, epochs=epochs, verbose=0, callbacks=[Sample()])
    samples["final_epoch"] = seq.epoch
    print(json.dumps(samples))
