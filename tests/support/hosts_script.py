"""Train through ``seq.shard()`` on several JAX processes, or on one process unsharded; save what happened.

Usage: python hosts_script.py DATASET OUT CASES NUM_PROCESSES PROCESS_ID PORT
With NUM_PROCESSES > 1 the process joins a JAX cluster on 127.0.0.1:PORT
(CPU collectives over gloo), trains under ``DataParallel(auto_shard_dataset=False)``
on ``seq.shard()``; with NUM_PROCESSES == 1 (the reference) it trains with no
distribution on the unsharded sequence, with the same global batch, seeds and
initial weights. CASES is a comma-separated list of :data:`CASES` names.
Writes OUT/process-<PROCESS_ID>.npz: for each case, the final weights
("<case>/w<i>") and the dataset rows each step read ("<case>/rows", one row
per step: epoch, step, then the rows), and OUT/process-<PROCESS_ID>.json
with the host slice seq.shard() chose.
"""

import json
import os
import sys

EPOCHS = 2
BATCH = 16  # the global batch


def make_sequence(case, path):
    from npyseq import RaggedSequence, ShardSequence

    if case == "global":
        return ShardSequence(path, x="x", y="y", batch_size=BATCH, shuffle="global", seed=1)
    if case == "blocks":
        return ShardSequence(path, x="x", y="y", batch_size=BATCH, shuffle="blocks", seed=2, block_size=4)
    if case == "ragged":
        return RaggedSequence(path, x="tokens", y="y", batch_size=BATCH, shuffle="global", seed=3,
                              bucket=True, bucket_pool=2, pad_to_multiple=4)
    raise SystemExit(f"unknown case {case!r}")


def make_model(case):
    import keras
    import numpy as np

    if case == "ragged":
        tokens = keras.Input((None,), dtype="int32")
        h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 3, mask_zero=True)(tokens))
        model = keras.Model(tokens, keras.layers.Dense(1)(h))
    else:
        x = keras.Input((4,))
        model = keras.Model(x, keras.layers.Dense(1)(keras.layers.Dense(5, activation="tanh")(x)))
    # The same initial weights everywhere, whatever the distribution.
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


if __name__ == "__main__":
    path, out, cases, num_processes, process_id, port = sys.argv[1:7]
    num_processes, process_id = int(num_processes), int(process_id)
    os.environ["KERAS_BACKEND"] = "jax"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    if num_processes > 1:
        keras.distribution.initialize(f"127.0.0.1:{port}", num_processes, process_id)
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False))

    saved, hosts = {}, {}
    for case in cases.split(","):
        seq = make_sequence(case, path)
        if num_processes > 1:
            seq = seq.shard()
            hosts[case] = [seq.host.num_hosts, seq.host.index]
        read = {}  # (epoch, step) -> the rows read; Keras may read a batch twice (the first, for shapes)

        class Recording(type(seq)):
            def _get(self, index):
                self._step = index
                return super()._get(index)

            def _batch(self, rows, whole=None):
                key = (self.epoch, int(self._step))
                assert key not in read or np.array_equal(read[key], rows), key
                read[key] = rows.copy()
                return super()._batch(rows, whole)

        seq.__class__ = Recording  # this sequence records the rows it reads
        model = make_model(case)
        model.fit(seq, epochs=EPOCHS, shuffle=False, verbose=0)  # the sequence shuffles itself
        steps = len(seq)
        trained = sorted(read)[-EPOCHS * steps:]  # Keras 3.15 on JAX reads batch 0 once before training
        assert trained == [(e, i) for e in range(trained[0][0], trained[0][0] + EPOCHS) for i in range(steps)]
        saved[f"{case}/rows"] = np.array([np.concatenate([key, read[key]]) for key in sorted(read)])
        for i, w in enumerate(model.get_weights()):
            saved[f"{case}/w{i}"] = np.asarray(w)
    np.savez(os.path.join(out, f"process-{process_id}.npz"), **saved)
    with open(os.path.join(out, f"process-{process_id}.json"), "w") as f:
        json.dump({"hosts": hosts, "keras": keras.version(), "processes": jax.process_count()}, f)
