"""Helpers for end-to-end ``fit`` tests: importable by spawned workers.

``RecordRows`` records what the model really consumed: the first input column
holds each row's index, and the layer stores it (eager mode) for every batch.
"""

from __future__ import annotations

import numpy as np

import keras


class RecordRows(keras.layers.Layer):
    """Identity layer that records ``inputs[:, 0]`` of every batch in eager mode."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records = []  # (phase, epoch, rows)
        self.phase, self.epoch = "train", -1

    def call(self, inputs):
        if not isinstance(inputs, keras.KerasTensor):
            try:
                rows = keras.ops.convert_to_numpy(inputs[:, 0])
            except Exception:  # symbolic tracing: nothing to record
                rows = None
            if rows is not None:
                self.records.append((self.phase, self.epoch, np.rint(rows).astype(np.int64)))
        return inputs


class PhaseCallback(keras.callbacks.Callback):
    def __init__(self, layer: RecordRows):
        super().__init__()
        self.layer = layer

    def on_epoch_begin(self, epoch, logs=None):
        self.layer.phase, self.layer.epoch = "train", epoch

    def on_test_begin(self, logs=None):
        self.layer.phase = "val"

    def on_test_end(self, logs=None):
        self.layer.phase = "train"


def recording_model(features: int, seed: int = 0) -> tuple[keras.Model, RecordRows]:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    rec = RecordRows()
    out = keras.layers.Dense(1)(rec(inputs))
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
    return model, rec


def batches_by_epoch(rec: RecordRows, phase: str = "train") -> dict[int, list[list[int]]]:
    """The batches (lists of row indices) the model consumed, per epoch, in order."""
    out: dict[int, list] = {}
    for ph, epoch, rows in rec.records:
        if ph == phase:
            out.setdefault(epoch, []).append(rows.tolist())
    return out


def add_noise(batch, rng):
    """A picklable transform: x plus noise drawn from the per-batch generator."""
    x = batch[0]
    return (x + rng.standard_normal(x.shape).astype(x.dtype),) + tuple(batch[1:])


def fail_on_batch_3(batch, rng):
    raise RuntimeError("transform failed on purpose")
