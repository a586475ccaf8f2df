"""End-to-end checks on one Keras backend (set KERAS_BACKEND before running).

Usage: KERAS_BACKEND=jax python backend_script.py DATASET_DIR
Prints one JSON object of measured facts; tests/keras/test_backends.py asserts them.
"""

import json
import os
import sys

if __name__ == "__main__":
    root = sys.argv[1]
    import keras
    import numpy as np

    import npyseq

    rng = np.random.default_rng(0)
    n = 300
    arrays = {
        "x": rng.standard_normal((n, 8)).astype(np.float32),
        "img": rng.standard_normal((n, 3, 2)).astype(np.float16),
        "y": rng.standard_normal((n, 1)).astype(np.float32),
        "label": rng.integers(0, 3, n).astype(np.int64),
        "zeros": np.zeros(n, np.float32),
    }
    ds = npyseq.write_shards(os.path.join(root, "data"), arrays, rows=70, progress=False)
    facts = {"backend": keras.backend.backend()}

    def mlp(seed=0):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8,))
        out = keras.layers.Dense(1)(keras.layers.Dense(4, activation="relu")(inputs))
        model = keras.Model(inputs, out)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        return model

    # 1. Same weights as fit on in-RAM arrays, shuffle=False.
    ref = mlp()
    initial = ref.get_weights()
    ref.fit(arrays["x"], arrays["y"], batch_size=32, shuffle=False, epochs=2, verbose=0)
    ours = mlp()
    ours.set_weights(initial)
    # fit(shuffle=True), the default, would also shuffle the order of batches.
    ours.fit(npyseq.ShardSequence(ds, x="x", y="y", batch_size=32), shuffle=False, epochs=2, verbose=0)
    facts["max_weight_diff"] = max(float(np.max(np.abs(a - b)))
                                   for a, b in zip(ref.get_weights(), ours.get_weights()))

    # 2. Threads and processes train, loss falls.
    for name, kw in {"threads": dict(workers=2), "processes": dict(workers=2, use_multiprocessing=True)}.items():
        model = mlp(1)
        seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=32, shuffle="global", seed=1, **kw)
        hist = model.fit(seq, epochs=3, verbose=0)
        facts[f"loss_{name}"] = hist.history["loss"]

    # 3. Multi-input, multi-output, float16 on disk cast per batch to float32.
    keras.utils.set_random_seed(2)
    a = keras.Input((8,), name="a")
    b = keras.Input((3, 2), name="b")
    h = keras.layers.Concatenate()([a, keras.layers.Flatten()(b)])
    h = keras.layers.Dense(8, activation="relu")(h)
    out1 = keras.layers.Dense(1, name="reg")(h)
    out2 = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    multi = keras.Model({"a": a, "b": b}, {"reg": out1, "cls": out2})
    multi.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss={"reg": "mse", "cls": "sparse_categorical_crossentropy"})
    seq = npyseq.ShardSequence(ds, x={"a": "x", "b": "img"}, y={"reg": "y", "cls": "label"},
                               batch_size=32, shuffle="blocks", dtype={"img": "float32"}, workers=2)
    facts["loss_multi"] = multi.fit(seq, epochs=4, verbose=0).history["loss"]

    # 4. Zero sample weights: no gradient, weights unchanged; ones: they change.
    for name in ("zeros", "ones"):
        model = mlp(3)
        before = model.get_weights()
        if name == "ones":
            seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=32)
        else:
            seq = npyseq.ShardSequence(ds, x="x", y="y", sample_weight="zeros", batch_size=32)
        model.fit(seq, epochs=1, verbose=0)
        facts[f"weight_change_{name}"] = max(float(np.max(np.abs(p - q)))
                                             for p, q in zip(before, model.get_weights()))

    # 5. predict returns one output per row, in dataset order.
    pred_seq = npyseq.ShardSequence(ds, x="x", batch_size=64, workers=2, use_multiprocessing=True)
    pred = ours.predict(pred_seq, verbose=0)
    facts["predict_shape"] = list(pred.shape)
    facts["predict_max_diff"] = float(np.max(np.abs(pred - ours.predict(arrays["x"], verbose=0))))
    print(json.dumps(facts))
