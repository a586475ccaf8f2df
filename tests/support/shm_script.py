"""Batches of process workers through shared memory, checked in a trainer of its own.

Usage: python shm_script.py MODE[+MODE...] DATASET START_METHOD
Prints one JSON line (the last line of stdout): {mode: what it found}.
KERAS_BACKEND picks the backend. Modes:

* ``exact``: every batch of one epoch through Keras' adapter (a real
  OrderedEnqueuer with 2 process workers), all kept alive to the end, equals
  byte for byte the batch the same sequence gives in the trainer: every
  shuffle mode, a transform that returns other shapes and dtypes, a dict of
  inputs, a RaggedSequence; then one ``model.fit``.
* ``bound``: the shared memory the trainer maps while it consumes batches
  one at a time, at most: the most segments and bytes seen.
* ``flat``: 30 short epochs of ``fit`` with process workers: open
  descriptors and anonymous/shared memory after epoch 5 and after epoch 30.
* ``fallback``: segments cannot be made (OSError ENOSPC, injected before the
  workers fork): the batches are the same, pickled, with one warning.
* ``failures``: an exception in a worker, then a worker killed by SIGKILL
  (the watchdog's WorkerDiedError): what ``fit`` raised, what stays mapped.
* ``fit-forever``: ``fit`` with process workers until killed; prints the
  worker pids once training runs (for SIGKILL and Ctrl-C of the trainer).
"""

import gc
import json
import multiprocessing
import os
import sys
import time
import warnings

import numpy as np

ROWS, SHAPE = 2048, (16, 16, 3)  # 3 KiB rows: a 64-row batch is 196 KiB, over transport.MIN_BYTES


def make(path: str) -> None:
    import npyseq
    rng = np.random.default_rng(0)
    lengths = rng.integers(300, 700, ROWS)
    tokens = npyseq.RaggedSource(rng.integers(1, 1000, lengths.sum()).astype(np.int32), lengths=lengths)
    npyseq.write_shards(path, {"x": rng.random((ROWS,) + SHAPE, dtype=np.float32),
                               "y": np.arange(ROWS, dtype=np.int64),
                               "w": rng.random(ROWS).astype(np.float16),
                               "tokens": tokens}, rows=500, progress=False)


def grow(batch, rng):
    """Other shapes and dtypes than the stored ones: a float64 x twice as wide, uint8 y, a new array."""
    x, y = batch
    wide = np.concatenate([x, x[:, ::-1]], axis=1).astype(np.float64) + rng.random()
    return {"x": wide, "extra": np.asfortranarray(x[:, 0])}, y.astype(np.uint8)


def leaves(batch) -> list:
    if isinstance(batch, dict):
        return [a for k in sorted(batch) for a in leaves(batch[k])]
    if isinstance(batch, (tuple, list)):
        return [a for item in batch for a in leaves(item)]
    return [batch]


def same(got, want) -> bool:
    g, w = leaves(got), leaves(want)
    return len(g) == len(w) and all(
        type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(g, w))


def shared(batch) -> bool:
    """Every array of ``batch`` views a slot of a worker's ring (not a pickled copy)."""
    from npyseq.keras import transport
    return all(transport.slot_of(a) is not None for a in leaves(batch))


def epoch_batches(seq) -> list:
    """One epoch of ``seq`` through Keras' own adapter, every batch kept alive."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    adapter = PyDatasetAdapter(seq, shuffle=False)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    return batches


def exact(path: str) -> dict:
    import keras
    import npyseq
    from npyseq.keras import transport
    out = {}
    cases = {f"shuffle={s}": dict(x="x", y="y", sample_weight="w", shuffle=s)
             for s in (False, "batches", "blocks", "global")}
    cases["transform"] = dict(x="x", y="y", shuffle="global", transform=grow)
    cases["dict"] = dict(x={"image": "x", "w": "w"}, y="y", shuffle="blocks", dtype={"x": "float16"})
    cases["ragged"] = None
    forked = multiprocessing.get_start_method() == "fork"
    if not forked:
        # Each epoch of spawn or forkserver workers costs seconds (Keras starts a pool per epoch, and
        # spawned workers import Keras and its backend again): the two cases that cover most (the
        # shuffle mode reaches the same code under every start method).
        cases = {k: cases[k] for k in ("transform", "ragged")}
    for name, kwargs in cases.items():
        if kwargs is None:
            kwargs = dict(x="tokens", y="y", shuffle="global", bucket=True, return_mask=True)
            make_seq = lambda **kw: npyseq.RaggedSequence(path, batch_size=64, **kwargs, **kw)
        else:
            make_seq = lambda **kw: npyseq.ShardSequence(path, batch_size=64, **kwargs, **kw)
        seq = make_seq(workers=2, use_multiprocessing=True)
        reference = make_seq(workers=0)
        start = time.monotonic()
        batches = epoch_batches(seq)
        peak = transport.live_segments()[0]
        out[name] = {"batches": len(batches), "expected": len(reference),
                     "equal": all(same(b, reference[i]) for i, b in enumerate(batches)),
                     "shared": all(shared(b) for b in batches), "mapped_while_kept": peak,
                     "seconds": round(time.monotonic() - start, 2)}
        del batches
        gc.collect()
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-7), loss="mse")
    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=64, shuffle="global", workers=2,
                               use_multiprocessing=True)
    history = model.fit(seq, epochs=2 if forked else 1, verbose=0)
    gc.collect()
    out["fit"] = {"epochs": len(history.history["loss"]),
                  "finite": bool(np.isfinite(history.history["loss"]).all())}
    out["after"] = transport.live_segments()
    return out


def bound(path: str) -> dict:
    import npyseq
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    from npyseq.keras import transport
    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=64, workers=3, use_multiprocessing=True,
                               max_queue_size=2)
    adapter = PyDatasetAdapter(seq, shuffle=False)
    most, most_bytes, batch_bytes = 0, 0, 0
    for _ in range(2):
        adapter.on_epoch_begin()
        for batch in adapter.get_numpy_iterator():
            batch_bytes = max(batch_bytes, sum(a.nbytes for a in leaves(batch)))
            time.sleep(0.002)  # a slow consumer: the queue fills
            segments, nbytes = transport.live_segments()
            most, most_bytes = max(most, segments), max(most_bytes, nbytes)
        adapter.on_epoch_end()
    del batch
    gc.collect()
    return {"most": most, "most_bytes": most_bytes, "batch_bytes": batch_bytes,
            "max_queue_size": seq.max_queue_size, "workers": seq.workers, "after": transport.live_segments()}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _memory() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) for k in ("RssAnon", "RssShmem")}


def flat(path: str) -> dict:
    import keras
    import npyseq
    from npyseq.keras import transport
    seen = {}

    class Sample(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 in (5, 30):
                gc.collect()
                seen[epoch + 1] = dict(fds=_fds(), received=transport.received_slots(), **_memory())

    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=128, workers=2, use_multiprocessing=True)
    model.fit(seq.subset(0, 1024), epochs=30, verbose=0, callbacks=[Sample()])
    return {str(k): v for k, v in seen.items()}


def fallback(path: str) -> dict:
    import errno
    import npyseq
    from npyseq.keras import transport

    def full(nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")
    transport._allocate = full  # forked workers inherit it
    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=64, shuffle="global", workers=2,
                               use_multiprocessing=True)
    reference = npyseq.ShardSequence(path, x="x", y="y", batch_size=64, shuffle="global", workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = epoch_batches(seq) + epoch_batches(seq.with_options())
    ours = [str(w.message) for w in caught if issubclass(w.category, npyseq.SharedMemoryWarning)]
    return {"equal": all(same(b, reference[i % len(reference)]) for i, b in enumerate(batches)),
            "batches": len(batches), "shared": any(shared(b) for b in batches), "warnings": ours}


def fail_at_batch_5(batch, rng):
    """Raises in the worker on the batch whose y starts at row 320 (batch 5 in dataset order)."""
    if int(batch[1][0]) == 320:
        raise ValueError("bad batch starting at row 320")
    return batch


def failures(path: str) -> dict:
    """An exception in a worker, then a worker killed by SIGKILL: what fit raised, what is left mapped."""
    import signal
    import keras
    import npyseq
    from keras.src.trainers.data_adapters import py_dataset_adapter
    from npyseq.keras import transport
    out = {}

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch <= 15:
                time.sleep(0.02)  # the queue fills: the killed worker holds tasks
            if batch == 5:
                for pool in list(py_dataset_adapter._DATA_POOLS):
                    os.kill(pool._pool[0].pid, signal.SIGKILL)
                    return

    for name, transform, callbacks in (("exception", fail_at_batch_5, []), ("sigkill", None, [Kill()])):
        model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(1e-7), loss="mse")
        seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=64, workers=2, use_multiprocessing=True,
                                   transform=transform)
        try:
            model.fit(seq, epochs=3, verbose=0, callbacks=callbacks)
            out[name] = {"raised": None}
        except Exception as e:
            out[name] = {"raised": type(e).__name__, "message": str(e)[:300]}
        del model, seq
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            gc.collect()
            alive = [p.pid for p in multiprocessing.active_children()]
            if not alive and transport.live_segments()[0] == 0:
                break
            time.sleep(0.05)
        out[name].update(live=transport.live_segments(), workers_left=alive)
    return out


def fit_forever(path: str) -> None:
    import keras
    import npyseq
    from keras.src.trainers.data_adapters import py_dataset_adapter

    class Announce(keras.callbacks.Callback):
        done = False

        def on_train_batch_end(self, batch, logs=None):
            if not Announce.done and batch >= 3:
                Announce.done = True
                pids = [p.pid for pool in list(py_dataset_adapter._DATA_POOLS) for p in pool._pool]
                print(json.dumps({"trainer": os.getpid(), "workers": pids}), flush=True)

    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=64, workers=2, use_multiprocessing=True)
    try:
        model.fit(seq, epochs=10_000, verbose=0, callbacks=[Announce()])
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True}), flush=True)


if __name__ == "__main__":
    mode, path, method = sys.argv[1:4]
    multiprocessing.set_start_method(method, force=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if mode == "make":
        make(path)
        result = {}
    elif mode == "fit-forever":
        fit_forever(path)
        sys.exit(0)
    else:
        modes = {"exact": exact, "bound": bound, "flat": flat, "fallback": fallback, "failures": failures}
        result = {m: modes[m](path) for m in mode.split("+")}
    print(json.dumps(result))
