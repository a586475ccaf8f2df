"""Run one method of the suite in this process and print its figures as one JSON line.

The suite (``python -m benchmarks.suite``) starts this module once per measurement, so
that memory peaks of different methods never mix and every method starts from
a fresh interpreter. The last line of stdout is ``RESULT {json}``.

Jobs (a JSON object on the command line):

``pipeline``
    The input pipeline alone: Keras' ``EpochIterator`` over the method's
    input, as ``fit`` builds it, pulling every batch of an epoch without a
    model. ``epochs`` lists ``"cold"`` (page cache of the method's files
    dropped first; only meaningful first, before the process maps any page),
    ``"warm"`` (repeated until ``min_warm_seconds`` have passed, so that fast
    methods are timed over more than a few milliseconds) and ``"any"`` (page
    cache as the previous run left it). ``max_seconds`` ends an epoch early
    (the capped runs), marking it incomplete.
``fit``
    ``model.fit`` of ``model`` (``"mlp"`` or ``"conv"``) for
    ``len(epochs)`` epochs; ``"warmup"`` epochs include tracing, ``"cold"``
    ones start with the page cache dropped.
``check``
    For the tests: for each of ``specs``, a digest of the multiset of rows
    ``(x row bytes, y)`` that each epoch yields (for ``augment`` specs, of the
    labels, and the shape and dtype of ``x``).

    python -m benchmarks.suite.child '{"job": "pipeline", "spec": {"method": "npyseq"},
                                       "data": {"folder": "...", "rows": 81380},
                                       "epochs": ["cold", "warm"]}'
"""

from __future__ import annotations

import json
import os
import sys
import time

from benchmarks.common import drop_cache, print_result
from benchmarks.suite.data import Data
from tools.synthetic import CLASSES, ROW_BYTES, ROW_SHAPE


def time_epoch(iterator, *, max_seconds: float | None = None) -> dict:
    """Pull the batches of one epoch; rows, seconds and rates."""
    from benchmarks.suite.methods import epoch_batches

    rows = batches = 0
    start = time.perf_counter()
    complete = True
    for batch in epoch_batches(iterator):
        rows += len(batch[0])
        batches += 1
        if max_seconds and time.perf_counter() - start >= max_seconds:
            complete = False
            break
    seconds = time.perf_counter() - start
    return {"rows": rows, "batches": batches, "seconds": seconds, "complete": complete,
            "rows_per_s": rows / seconds if seconds else 0.0,
            "gb_per_s": rows * ROW_BYTES / seconds / 1e9 if seconds else 0.0}


def run_pipeline(job: dict) -> dict:
    from benchmarks.suite.methods import Spec, build
    from tools.memwatch import PeakMemory

    spec, data = Spec.from_json(job["spec"]), Data.from_json(job["data"])
    epochs = []
    with PeakMemory() as peak:
        start = time.perf_counter()
        pipe = build(spec, data)
        iterator = pipe.epoch_iterator()
        setup = time.perf_counter() - start
        for kind in job.get("epochs", ["warm"]):
            if kind == "cold":
                drop_cache(pipe.files)
            spent = 0.0
            while True:
                result = time_epoch(iterator, max_seconds=job.get("max_seconds"))
                epochs.append({"cache": kind, **result})
                spent += result["seconds"]
                if (kind != "warm" or not result["complete"] or spent >= job.get("min_warm_seconds", 0)
                        or len(epochs) >= job.get("max_epochs", 20)):
                    break
            if not result["complete"]:
                break
    return {"rows": pipe.rows, "setup_seconds": setup, "epochs": epochs, **_memory(peak),
            "load_average": os.getloadavg()[0]}


def _memory(peak) -> dict:
    return {"peak_anon_bytes": peak.max_bytes, "main_anon_bytes": peak.main_bytes,
            "children_anon_bytes": peak.children_bytes, "main_shmem_bytes": peak.main_shmem_bytes,
            "tree_shmem_bytes": peak.shmem_bytes}


def build_model(name: str):
    import keras

    inputs = keras.Input(ROW_SHAPE)
    if name == "mlp":  # 3072-64-10: cheap, so the input pipeline shows
        h = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(inputs))
    elif name == "conv":  # a small conv net: compute starts to dominate
        h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
        h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:
        raise ValueError(f"model must be 'mlp' or 'conv', got {name!r}")
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run_fit(job: dict) -> dict:
    import keras

    from benchmarks.suite.methods import Spec, build
    from tools.memwatch import PeakMemory
    from tools.timing import EpochTimer

    spec, data = Spec.from_json(job["spec"]), Data.from_json(job["data"])
    kinds = job.get("epochs", ["warmup", "warm"])

    keras.utils.set_random_seed(0)
    with PeakMemory() as peak:
        start = time.perf_counter()
        pipe = build(spec, data)
        model = build_model(job["model"])
        setup = time.perf_counter() - start

        def before_epoch(epoch: int) -> None:
            if kinds[epoch] == "cold":
                drop_cache(pipe.files)

        timer = EpochTimer(before_epoch)
        hist = model.fit(pipe.x, epochs=len(kinds), verbose=0, callbacks=[timer], **pipe.fit_kwargs)
    epochs = [{"cache": k, "seconds": t, "rows_per_s": pipe.rows / t,
               "accuracy": float(a)} for k, t, a in zip(kinds, timer.seconds, hist.history["accuracy"])]
    return {"rows": pipe.rows, "model": job["model"], "setup_seconds": setup, "epochs": epochs,
            "backend": keras.backend.backend(), **_memory(peak), "load_average": os.getloadavg()[0]}


def run_check(job: dict) -> dict:
    """Digest of the rows each spec yields per epoch (see tests/test_benchmarks.py)."""
    from benchmarks.suite.methods import Spec, build, epoch_batches

    data = Data.from_json(job["data"])
    out = {}
    for doc in job["specs"]:
        spec = Spec.from_json(doc)
        pipe = build(spec, data)
        iterator = pipe.epoch_iterator()
        epochs = []
        for _ in range(job.get("num_epochs", 2)):
            batches = list(epoch_batches(iterator))
            epoch = {"rows": sum(len(b[0]) for b in batches), "max_batch": max(len(b[0]) for b in batches)}
            if spec.augment:  # the images change; the labels and the shape are what must hold
                import numpy as np

                x0 = np.asarray(batches[0][0])
                epoch.update(labels=label_digest(np.asarray(b[1]) for b in batches),
                             x_shape=list(x0.shape[1:]), x_dtype=str(x0.dtype))
            else:
                epoch["digest"] = row_digest(batches)
            epochs.append(epoch)
        out[spec.label] = epochs
    return out


def label_digest(label_arrays) -> str:
    """Order-independent digest of the labels in ``label_arrays``."""
    import xxhash

    labels = sorted(int(v) for y in label_arrays for v in y.tolist())
    return xxhash.xxh3_64_hexdigest(",".join(map(str, labels)).encode())


def row_digest(batches) -> str:
    """Order-independent digest of the rows ``(x row bytes, y)`` of ``batches``."""
    import numpy as np
    import xxhash

    keys = []
    for x, y in batches:
        x, y = np.asarray(x), np.asarray(y)
        for row, label in zip(x.reshape(len(x), -1), y.tolist()):
            keys.append(f"{xxhash.xxh3_64_hexdigest(np.ascontiguousarray(row).tobytes())}:{label}")
    return xxhash.xxh3_64_hexdigest("\n".join(sorted(keys)).encode())


def main() -> int:
    job = json.loads(sys.argv[1])
    runner = {"pipeline": run_pipeline, "fit": run_fit, "check": run_check}[job["job"]]
    result = runner(job)
    print_result(result)
    from benchmarks.suite.peers import cleanup

    cleanup()  # streaming's shared memory, which its atexit hooks would unlink
    # Worker pools, loaders and tf.data threads left behind must not delay the exit.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
