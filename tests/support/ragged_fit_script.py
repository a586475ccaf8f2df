"""Run ``fit`` through a bucketing RaggedSequence in a fresh process; print what the model consumed.

Usage: python ragged_fit_script.py DATASET START_METHOD WORKERS PROCESSES SHUFFLES EPOCHS
SHUFFLES is a comma-separated list of shuffle modes, each trained in turn.
Prints one JSON object: {mode: {"epochs": {epoch: [batch, ...]}, "widths": {epoch: [width, ...]},
"final_epoch": seq.epoch}}, each batch the row ids the model consumed (the "id" input), in order,
and each width the length the batch's tokens were padded to.
Run as a script so the multiprocessing start method is set before Keras starts.
"""

import json
import multiprocessing
import os
import sys

if __name__ == "__main__":
    path, method, workers, processes, shuffle, epochs = sys.argv[1:7]
    if method != "default":
        multiprocessing.set_start_method(method, force=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras

    from _fit_helpers import PhaseCallback, RecordRows, batches_by_epoch
    from npyseq.keras.ragged_sequence import RaggedSequence

    class RecordWidth(keras.layers.Layer):
        """Identity layer that records the padded length of every batch in eager mode."""

        def __init__(self, rows: RecordRows, **kwargs):
            super().__init__(**kwargs)
            self.rows, self.widths = rows, []

        def call(self, inputs):
            if not isinstance(inputs, keras.KerasTensor) and inputs.shape[1] is not None:  # not symbolic
                self.widths.append((self.rows.phase, self.rows.epoch, int(inputs.shape[1])))
            return inputs

    results = {}
    for mode in shuffle.split(","):
        seq = RaggedSequence(path, x={"tokens": "tokens", "id": "id"}, y="id", batch_size=16,
                             shuffle=False if mode == "False" else mode, seed=7, bucket=True, bucket_pool=3,
                             workers=int(workers), use_multiprocessing=processes == "1")
        keras.utils.set_random_seed(0)
        tokens, ids = keras.Input((None,), dtype="int32", name="tokens"), keras.Input((1,), name="id")
        rec = RecordRows()
        width = RecordWidth(rec)
        h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4, mask_zero=True)(width(tokens)))
        out = keras.layers.Dense(1)(keras.layers.Concatenate()([h, rec(ids)]))
        model = keras.Model({"tokens": tokens, "id": ids}, out)
        model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse", run_eagerly=True)
        # fit(shuffle=False): the batches in the sequence's own order.
        model.fit(seq, epochs=int(epochs), shuffle=False, verbose=0, callbacks=[PhaseCallback(rec)])
        widths = {}
        for phase, epoch, w in width.widths:
            if phase == "train":
                widths.setdefault(epoch, []).append(w)
        results[mode] = {"epochs": batches_by_epoch(rec), "widths": widths, "final_epoch": seq.epoch}
    print(json.dumps(results))
