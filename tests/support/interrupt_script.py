"""Train with process workers until interrupted (Ctrl-C); for tests/keras/test_worker_failures.py.

Usage: python interrupt_script.py DATASET START_METHOD
Prints TRAINING once batches flow, and INTERRUPTED when fit raises
KeyboardInterrupt (which it then re-raises, as an interrupted program does).
"""

import multiprocessing
import os
import sys

if __name__ == "__main__":
    path, method = sys.argv[1:3]
    multiprocessing.set_start_method(method, force=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras

    import npyseq
    from _failing_transforms import slow

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")

    class Announce(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                print("TRAINING", flush=True)

    seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=32, transform=slow, workers=2,
                               use_multiprocessing=True)
    try:
        model.fit(seq, epochs=1000, verbose=0, callbacks=[Announce()])
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise
