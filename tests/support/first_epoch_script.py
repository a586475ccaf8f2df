"""``fit`` of a fresh model for 2 epochs; prints, as JSON, the rows each step trained and the rows
``seq.batch_rows(i, epoch)`` says (tests/keras/test_first_epoch.py).

Usage: KERAS_BACKEND=... python first_epoch_script.py DATA_DIR WORKERS PROCESSES
Column 0 of ``x`` is the row id; an identity layer records it in eager mode.
"""

import json
import sys

import numpy as np

import keras

import npyseq

TRAINED = []


class LogRows(keras.layers.Layer):
    def call(self, inputs, training=None):
        if training and not isinstance(inputs, keras.KerasTensor):
            try:
                TRAINED.append(sorted(np.rint(keras.ops.convert_to_numpy(inputs[:, 0])).astype(int).tolist()))
            except Exception:  # symbolic tracing
                pass
        return inputs


def main():
    data, workers, processes = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    seq = npyseq.ShardSequence(data, x="x", y="y", batch_size=8, shuffle="global", seed=3,
                               workers=workers, use_multiprocessing=processes, max_queue_size=4)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), LogRows(), keras.layers.Dense(1)])
    model.compile("sgd", "mse", run_eagerly=True)
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    expected = [sorted(seq.batch_rows(i, e).tolist()) for e in range(2) for i in range(len(seq))]
    print(json.dumps({"trained": TRAINED, "expected": expected, "epoch": seq.epoch}))


if __name__ == "__main__":
    main()
