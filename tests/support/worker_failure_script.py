"""Fail ``fit`` on purpose in one process, one way after another; print what the caller saw.

Usage: python worker_failure_script.py DATASET START_METHOD
Prints one JSON object: {scenario: {"type": ..., "message": ..., "seconds": ...,
"leftover_workers": ...}}, "type" being the module-qualified class name of
the exception ``fit`` raised. Run as a script so that the start method is
set before Keras starts; KERAS_BACKEND picks the backend.
"""

import json
import multiprocessing
import os
import signal
import sys
import time


def leftover_workers(timeout: float = 5.0) -> list[int]:
    """Pool workers still alive after ``timeout`` seconds (a failed pool must not linger)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p.pid for p in multiprocessing.active_children() if "PoolWorker" in p.name]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


if __name__ == "__main__":
    path, method = sys.argv[1:3]
    multiprocessing.set_start_method(method, force=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras

    import npyseq
    from _failing_transforms import exit_on_row, raise_on_row, slow

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")

    class KillAWorker(keras.callbacks.Callback):
        """SIGKILL one of Keras' worker processes at train batch 5, as the OOM killer would.

        With ``pause``, training waits a little after each of the first 15
        batches, so that the queue is full and the workers sit idle, waiting
        for work, when one of them is killed, and the epoch still needs them
        afterwards. (A worker that dies after its pool served the whole epoch
        loses nothing: fit then goes on, as it should.)
        """

        killed_at = None

        def __init__(self, pause=0.0):
            super().__init__()
            self.pause = pause

        def on_train_batch_end(self, batch, logs=None):
            if batch <= 15:
                time.sleep(self.pause)
            if batch == 5 and KillAWorker.killed_at is None:
                workers = [p for p in multiprocessing.active_children() if "PoolWorker" in p.name]
                os.kill(workers[0].pid, signal.SIGKILL)
                KillAWorker.killed_at = time.monotonic()

    def run(name, transform=None, processes=True, callbacks=(), remove_last_shard=False, epochs=2,
            max_queue_size=10):
        seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=32, transform=transform,
                                   workers=2, use_multiprocessing=processes,
                                   max_queue_size=max_queue_size)
        if remove_last_shard:
            shard = os.path.join(path, "x", f"{seq.dataset.num_shards - 1:06d}.npy")
            os.rename(shard, shard + ".away")
        start = time.monotonic()
        try:
            model.fit(seq, epochs=epochs, verbose=0, shuffle=False, callbacks=list(callbacks))
            outcome = {"type": None, "message": None}
        except Exception as e:
            outcome = {"type": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
        finally:
            if remove_last_shard:
                os.rename(shard + ".away", shard)
        end = time.monotonic()
        outcome["seconds"] = end - start
        if KillAWorker.killed_at is not None:
            outcome["kill_to_error"] = end - KillAWorker.killed_at
            KillAWorker.killed_at = None
        outcome["leftover_workers"] = leftover_workers()
        results[name] = outcome

    results = {}
    run("transform raises, threads", raise_on_row, processes=False)
    run("transform raises, processes", raise_on_row)
    run("read raises, processes", slow, remove_last_shard=True)
    run("worker exits, processes", exit_on_row)
    run("worker killed, processes", slow, callbacks=[KillAWorker()])
    run("idle worker killed, processes", None, callbacks=[KillAWorker(pause=0.05)], max_queue_size=2)
    run("fit afterwards, processes", slow, epochs=1)
    print(json.dumps(results))
