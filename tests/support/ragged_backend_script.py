"""Embedding + LSTM through RaggedSequence on one Keras backend (set KERAS_BACKEND before running).

Usage: KERAS_BACKEND=jax python ragged_backend_script.py DATASET_DIR
Prints one JSON object of measured facts; tests/keras/test_ragged_sequence.py asserts them.

The task: the label is 1 when the last real token of a sample is above the
middle of the vocabulary. Padding comes after the tokens, so a recurrent layer
learns it only if the padding is masked out.
"""

import json
import os
import sys

if __name__ == "__main__":
    root = sys.argv[1]
    import keras
    import numpy as np

    import npyseq
    from npyseq.keras.ragged_sequence import RaggedSequence

    vocab, n = 12, 1536
    rng = np.random.default_rng(0)
    tokens = [rng.integers(1, vocab, k).astype(np.int32) for k in rng.integers(1, 25, n)]
    label = np.array([t[-1] > vocab // 2 for t in tokens], np.float32)
    ds = npyseq.write_shards(os.path.join(root, "data"), {"tokens": tokens, "label": label}, rows=500,
                             progress=False)
    facts = {"backend": keras.backend.backend()}
    # pad_to_multiple=8 and drop_remainder: 3 batch shapes, so 3 compilations at most.
    common = dict(y="label", batch_size=64, shuffle="global", seed=0, bucket=True, bucket_pool=8,
                  pad_to_multiple=8, drop_remainder=True)

    # 1. Masking by the Embedding layer (pad_value 0), thread workers.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(vocab, 16, mask_zero=True),
        keras.layers.LSTM(16),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    seq = RaggedSequence(ds, x="tokens", workers=2, **common)
    facts["loss_mask_zero"] = model.fit(seq, epochs=5, shuffle=False, verbose=0).history["loss"]

    # 2. An explicit mask input (return_mask=True: x is (tokens, mask)), a GRU, process workers.
    keras.utils.set_random_seed(1)
    tok_in = keras.Input((None,), dtype="int32")
    mask_in = keras.Input((None,), dtype="bool")
    h = keras.layers.GRU(16)(keras.layers.Embedding(vocab, 16)(tok_in), mask=mask_in)
    model = keras.Model([tok_in, mask_in], keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    seq = RaggedSequence(ds, x="tokens", return_mask=True, workers=2, use_multiprocessing=True, **common)
    facts["loss_explicit_mask"] = model.fit(seq, epochs=5, shuffle=False, verbose=0).history["loss"]
    print(json.dumps(facts))
