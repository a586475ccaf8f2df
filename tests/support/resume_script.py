"""A real ``fit`` with ``npyseq.BackupAndRestore`` that SIGKILLs itself at a chosen point (tests/keras/test_resume.py).

Usage: python resume_script.py CONFIG_JSON, with CONFIG keys:

``data``, ``backup``: the dataset folder and the callback's ``backup_dir``.
``log``: a file this run appends to, one line per step trained:
    ``{"step": optimizer step before it, "rows": [row ids]}`` (eager mode:
    a layer reads the row id the sequence put in column 0 of ``x``).
``kill``: ``"none"``, ``"step:K"`` (SIGKILL once K steps are trained, after
    the callback's save of that step if one was due) or ``"epoch_end:E"``
    (at the end of epoch E, after its save).
``epochs``, ``save_freq``, ``workers``, ``processes``, ``ragged`` (a
``RaggedSequence`` with bucketing), ``steps_per_epoch`` (the sequence's),
``shuffle`` (the sequence's), ``weights``: where the final weights go (.npz).
``reference``: after the run, train a fresh model uninterrupted (no callback)
    (no workers) and write its log and weights to ``log + ".ref"`` and ``weights`` with ``.ref.npz`` for ``.npz``.
"""

import json
import os
import signal
import sys

import numpy as np

import keras

import npyseq

TRAINER = []  # [the model being trained, its optimizer's step before this batch], for LogRows
SCALE = 0.01  # column 0 of x is row id * SCALE (small inputs keep SGD stable)


class LogRows(keras.layers.Layer):
    """Identity; in eager mode appends the step and the row ids of each training batch to a file."""

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.log_path = path

    def call(self, inputs, training=None):
        if training and TRAINER and not isinstance(inputs, keras.KerasTensor):
            try:
                rows = np.rint(keras.ops.convert_to_numpy(inputs[:, 0]) / SCALE).astype(np.int64)
            except Exception:  # symbolic tracing
                rows = None
            if rows is not None:
                line = json.dumps({"step": TRAINER[1], "rows": sorted(rows.tolist())}) + "\n"
                fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, line.encode())  # in the kernel at once: survives a SIGKILL
                finally:
                    os.close(fd)
        return inputs


class TokenMean(keras.layers.Layer):
    def call(self, tokens):
        return keras.ops.mean(keras.ops.cast(tokens, "float32"), axis=1, keepdims=True) * SCALE


class Kill(keras.callbacks.Callback):
    def __init__(self, point):
        super().__init__()
        self.kind, _, k = point.partition(":")
        self.k = int(k) if k else None

    def on_train_batch_begin(self, batch, logs=None):
        # The step, for LogRows: read here, outside the train step (JAX's is stateless).
        TRAINER[1:] = [int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))]

    def on_train_batch_end(self, batch, logs=None):
        if self.kind == "step" and int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == self.k:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        if self.kind == "epoch_end" and epoch == self.k:
            os.kill(os.getpid(), signal.SIGKILL)


class SetEpoch(keras.callbacks.Callback):
    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def on_epoch_begin(self, epoch, logs=None):
        self.seq.epoch = epoch


def build(config, log):
    keras.utils.set_random_seed(0)
    x_in = keras.Input((4,))
    logger = LogRows(log)
    h = logger(x_in)
    inputs = [x_in]
    if config.get("ragged"):
        t_in = keras.Input((None,), dtype="int32")
        inputs.append(t_in)
        h = keras.layers.Concatenate()([h, TokenMean()(t_in)])
    model = keras.Model(inputs if len(inputs) > 1 else x_in, keras.layers.Dense(1)(h))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5), loss="mse", run_eagerly=True)
    TRAINER[:] = [model]  # not an attribute of the layer: Keras would track the model in it
    return model


def sequence(config):
    common = dict(batch_size=8, shuffle=config.get("shuffle", "global"), seed=5,
                  workers=config.get("workers", 0), use_multiprocessing=config.get("processes", False),
                  steps_per_epoch=config.get("steps_per_epoch"))
    if config.get("ragged"):
        return npyseq.RaggedSequence(config["data"], x=["x", "tokens"], y="y", bucket=True, bucket_pool=2,
                                     **common)
    return npyseq.ShardSequence(config["data"], x="x", y="y", **common)


def train(config, log, weights, callbacks):
    seq = sequence(config)
    model = build(config, log)
    cbs = [c(seq) for c in callbacks] + [Kill("none")]
    model.fit(seq, epochs=config["epochs"], shuffle=False, verbose=0, callbacks=cbs)
    np.savez(weights, *[np.asarray(w) for w in model.get_weights()])


def main():
    config = json.loads(sys.argv[1])
    kill = config.get("kill", "none")
    train(config, config["log"], config["weights"], [
        lambda seq: npyseq.BackupAndRestore(config["backup"], seq, save_freq=config.get("save_freq", "epoch")),
        lambda seq: Kill(kill),
    ])  # Kill after the backup: a step's checkpoint is written before a kill at that step
    if config.get("reference"):
        # The reference: no workers, and the order of (seed, Keras epoch) set by hand (on JAX and
        # torch, Keras reads a batch before training, which advances a sequence's own count).
        train(dict(config, workers=0, processes=False), config["log"] + ".ref",
              config["weights"].replace(".npz", ".ref.npz"), [SetEpoch])
    print(json.dumps({"backend": keras.backend.backend(), "done": True}))


if __name__ == "__main__":
    main()
