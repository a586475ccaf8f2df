"""Run ``fit`` through ShardSequence in a fresh process and print the rows each epoch consumed.

Usage: python fit_order_script.py DATASET START_METHOD WORKERS PROCESSES SHUFFLES EPOCHS INITIAL_EPOCH
SHUFFLES is a comma-separated list of shuffle modes, each trained in turn.
Prints one JSON object: {mode: {"epochs": {epoch: [batch, ...]}, "final_epoch": seq.epoch}},
each batch the list of row indices the model consumed, in order.
Run as a script so the multiprocessing start method and KERAS_BACKEND are set
before Keras starts.
"""

import json
import multiprocessing
import os
import sys

if __name__ == "__main__":
    path, method, workers, processes, shuffle, epochs, initial = sys.argv[1:8]
    if method != "default":
        multiprocessing.set_start_method(method, force=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import npyseq
    from _fit_helpers import PhaseCallback, recording_model, batches_by_epoch

    results = {}
    for mode in shuffle.split(","):
        seq = npyseq.ShardSequence(path, x="x", y="y", batch_size=16,
                                   shuffle=False if mode == "False" else mode, seed=7,
                                   workers=int(workers), use_multiprocessing=processes == "1")
        seq.epoch = int(initial)
        model, rec = recording_model(seq.dataset["x"].shape[1])
        model.fit(seq, epochs=int(epochs), initial_epoch=int(initial), verbose=0,
                  callbacks=[PhaseCallback(rec)])
        results[mode] = {"epochs": batches_by_epoch(rec), "final_epoch": seq.epoch}
    print(json.dumps(results))
