"""Real ``fit`` runs that used to hang; print what the caller of ``fit`` saw, per scenario.

Usage: python fit_safety_script.py DATASET OTHER_DATASET START_METHOD SCENARIO[;SCENARIO...]
START_METHOD ``default`` leaves multiprocessing's default (fork on Linux up to
Python 3.13). Prints ``START <scenario>`` before each scenario (so that a
hang shows where), then one JSON line {scenario: {"type", "message",
"seconds", "epochs", "start_methods", "leftover_workers"}}; "type" is the
module-qualified class of what ``fit`` raised, or None.
"""

import json
import multiprocessing
import os
import sys
import threading
import time


def leftover_workers(timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p.pid for p in multiprocessing.active_children() if "PoolWorker" in p.name]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


if __name__ == "__main__":
    path, other, method, scenarios = sys.argv[1:5]
    if method != "default":
        multiprocessing.set_start_method(method, force=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras
    from keras.src.trainers.data_adapters import py_dataset_adapter

    import npyseq
    import _safety_transforms as t

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")

    class Epochs(keras.callbacks.Callback):
        """Counts finished epochs and notes the start method of Keras' live process pools."""

        def __init__(self):
            super().__init__()
            self.done, self.methods = 0, set()

        def on_train_batch_end(self, batch, logs=None):
            for pool in list(py_dataset_adapter._DATA_POOLS):
                ctx = getattr(pool, "_ctx", None)
                if ctx is not None and "Dummy" not in type(pool).__name__:
                    self.methods.add(ctx.get_start_method())

        def on_epoch_end(self, epoch, logs=None):
            self.done += 1

    def reader(stop: threading.Event, counter: list) -> None:
        """Reads another sequence without a pause: every batch parses a shard's header again."""
        seq = npyseq.ShardSequence(other, x="x", batch_size=2)
        while not stop.is_set():
            seq.dataset.close()  # forget the open shards: the next reads parse their headers
            for i in range(len(seq)):
                seq[i]
            counter[0] += 1

    def run(transform=None, workers=2, processes=True, epochs=2, start_method=None, with_reader=False):
        extra = {} if start_method is None else {"start_method": start_method}
        seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=32, transform=transform, workers=workers,
                                   use_multiprocessing=processes, **extra)
        stop, counter = threading.Event(), [0]
        thread = threading.Thread(target=reader, args=(stop, counter), daemon=True) if with_reader else None
        if thread:
            thread.start()
        callback = Epochs()
        start = time.monotonic()
        try:
            model.fit(seq, epochs=epochs, verbose=0, shuffle=False, callbacks=[callback])
            outcome = {"type": None, "message": None}
        except Exception as e:
            outcome = {"type": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
        outcome["seconds"] = time.monotonic() - start
        if thread:
            stop.set()
            thread.join(30)
            outcome["reader_passes"] = counter[0]
        outcome["epochs"] = callback.done
        outcome["start_methods"] = sorted(callback.methods)
        outcome["leftover_workers"] = leftover_workers()
        return outcome

    SCENARIOS = {
        "two-arg exception, processes": lambda: run(t.raise_two_arg),
        "two-arg exception, spawn": lambda: run(t.raise_two_arg, start_method="spawn"),
        "unloadable batch, processes": lambda: run(t.unloadable_on_row),
        "none, main process": lambda: run(t.forget_return, workers=0, processes=False),
        "none, threads": lambda: run(t.none_on_row, processes=False),
        "none, processes": lambda: run(t.none_on_row),
        "reader thread, fork": lambda: run(epochs=12, with_reader=True),
        "train, processes": lambda: run(epochs=2),
    }
    results = {}
    for name in scenarios.split(";"):
        print("START", name, flush=True)
        results[name] = SCENARIOS[name]()
    print(json.dumps(results), flush=True)
