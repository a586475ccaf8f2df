"""Exact resume: :class:`BackupAndRestore`, Keras' callback that also restores the data position.

``keras.callbacks.BackupAndRestore`` (Keras 3.15) restores weights and
optimizer, but not where the data was: it reads back only the epoch, so the
interrupted epoch restarts at batch 0, and a second interruption inside a
resumed epoch restarts the whole training (see :class:`BackupAndRestore`).
This subclass keeps its arguments and files and adds one file,
``npyseq_position.json``: where the training started (the optimizer's step
count and the epoch) and the sequence's ``order_fingerprint()``. The position
to resume at is derived from what was trained, the optimizer's step count
restored with the weights, so it is right whenever the last checkpoint was
written; the sequence then serves the rest of that epoch (``resume_at``).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import keras
from keras.src.utils import file_utils  # what Keras' callback writes its files with (local or remote paths)

from npyseq.errors import InvalidArgumentError, ResumeMismatchError
from npyseq.keras.fit_frame import check_steps_per_epoch, fit_argument
from npyseq.keras.sequence import ShardSequence
from npyseq.order import position

__all__ = ["BackupAndRestore", "POSITION_FILE"]

POSITION_FILE = "npyseq_position.json"
_FORMAT = 1
# Fingerprint entries recorded but not compared: the same data may move to another folder, and
# several hosts may resume as more or fewer (the global order does not depend on the host count).
_INFORMATION = ("dataset_path", "host")


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that also resumes ``seq`` at the exact batch.

    Takes the arguments of Keras' callback (``save_freq``: ``"epoch"`` or every
    ``save_freq`` batches; ``double_checkpoint``; ``delete_checkpoint``) and
    behaves as it does, plus ``seq``, the :class:`npyseq.ShardSequence` or
    :class:`npyseq.RaggedSequence` passed to ``fit``. Rerunning the same
    script after a kill continues at the step after the last checkpoint, in
    the same epoch, at the same batch of it, in the same order: the model's
    ``optimizer.iterations`` (restored with the weights) says how many steps
    were trained, and the sequence serves the rest of that epoch as a
    shorter first epoch (Keras then warns "Your input ran out of data" once:
    expected). At each epoch's start it sets ``seq.epoch`` from Keras'.

    Resuming with a sequence whose ``order_fingerprint()`` differs (dataset,
    rows, batch size, shuffle, seed, block size, ``drop_remainder``,
    ``steps_per_epoch``, bucketing) raises :class:`npyseq.ResumeMismatchError`
    naming each change; delete ``backup_dir`` to start afresh. ``fit`` must get
    ``shuffle=False`` (Keras' default ``True`` shuffles the batch indices with
    Python's global ``random``): the callback warns otherwise. A
    ``fit(steps_per_epoch=k)`` below the sequence's epoch is refused: give the
    sequence ``steps_per_epoch=k`` instead.
    """

    def __init__(self, backup_dir: str, seq: ShardSequence, save_freq: Any = "epoch",
                 double_checkpoint: bool = False, delete_checkpoint: bool = True):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=double_checkpoint,
                         delete_checkpoint=delete_checkpoint)
        if not isinstance(seq, ShardSequence):
            raise InvalidArgumentError(
                f"npyseq.BackupAndRestore needs the npyseq.ShardSequence or RaggedSequence given to fit, "
                f"got {type(seq).__name__}; for other data use keras.callbacks.BackupAndRestore")
        self.seq = seq
        self._position_path = file_utils.join(backup_dir, POSITION_FILE)
        self._record: dict | None = None  # this training's start and fingerprint, once known
        self._resume: tuple[int, int] | None = None  # (epoch, batch) the first epoch of this fit starts at
        self._shortened = False  # the current epoch started after its batch 0

    # -- Keras' hooks

    def on_train_begin(self, logs=None):
        self._check_fit()
        _drop_leftover_batches()
        self._record, self._resume = None, None
        super().on_train_begin(logs)  # loads the weights (and the optimizer's step count) if there are any
        if file_utils.exists(self._weights_path):
            self._restore_position()

    def on_epoch_begin(self, epoch, logs=None):
        if self._record is None:  # a fresh training: note where it starts before its first step
            self._record = {"format": _FORMAT, "start_step": self._steps(), "start_epoch": int(epoch),
                            "fingerprint": self.seq.order_fingerprint()}
            _write_json(self.backup_dir, self._position_path, self._record)
        # The epoch comes from Keras: set before the adapter starts this epoch's pool, so it reaches
        # thread and process workers (PyDataset.on_epoch_begin races with the pool, keras#23283).
        resume = self._resume if self._resume is not None and self._resume[0] == epoch else (epoch, 0)
        self.seq.resume_at(*resume)
        self._resume = None
        self._shortened = resume[1] > 0

    def on_epoch_end(self, epoch, logs=None):
        if self._shortened:
            # A resumed epoch ends when its data runs out. On TensorFlow (Keras 3.15, compiled
            # train_function) the call that finds no batch still adds 1 to optimizer.iterations,
            # without a step: put the count back before it is saved (Adam's bias correction and
            # the position of the next resume read it).
            start = self._record["start_step"]
            done = start + position.global_step(self.seq.batches_per_pass, self.seq.steps_per_epoch,
                                                epoch + 1 - self._record["start_epoch"], 0)
            if self._steps() > done:
                self.model.optimizer.iterations.assign(done)
            self._shortened = False
        super().on_epoch_end(epoch, logs)

    # -- the position

    def _steps(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _restore_position(self) -> None:
        record = _read_json(self._position_path)
        if record is None:
            raise ResumeMismatchError(
                f"npyseq.BackupAndRestore: {self.backup_dir} holds a checkpoint but no {POSITION_FILE}: it was "
                f"not written by npyseq.BackupAndRestore, so where the data was is unknown; delete "
                f"{self.backup_dir} to start afresh")
        self._check_fingerprint(record["fingerprint"])
        trained = self._steps() - record["start_step"]
        if trained < 0:
            raise ResumeMismatchError(
                f"npyseq.BackupAndRestore: the checkpoint in {self.backup_dir} has trained "
                f"{self._steps()} steps, fewer than the {record['start_step']} its training started at; "
                f"delete {self.backup_dir} to start afresh")
        epoch, batch = position.position_of_step(self.seq.batches_per_pass, self.seq.steps_per_epoch, trained)
        epoch += record["start_epoch"]
        # Keras 3.15 reads back only the epoch (an epoch restarts at batch 0) and never restores
        # _current_epoch (after a resume, mid-epoch saves write "epoch": 0): set both from the steps.
        self.model._initial_epoch = epoch
        self._current_epoch = epoch
        self._record, self._resume = record, (epoch, batch)
        self.seq.resume_at(epoch, batch)

    def _check_fingerprint(self, saved: dict) -> None:
        now = self.seq.order_fingerprint()
        names = [k for k in dict.fromkeys(list(saved) + list(now)) if k not in _INFORMATION]
        changed = [f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                   for k in names if saved.get(k) != _jsonable(now.get(k))]
        if changed:
            raise ResumeMismatchError(
                f"npyseq.BackupAndRestore: the checkpoint in {self.backup_dir} was taken with another order of "
                f"the batches, so resuming would not train the batches the interrupted run would have: "
                f"{'; '.join(changed)}. Resume with the checkpoint's settings, or delete {self.backup_dir} "
                f"to start afresh")

    def _check_fit(self) -> None:
        """Refuse a ``fit(steps_per_epoch=...)`` that repeats rows; warn on ``fit(shuffle=True)``."""
        # Keras' steps_per_epoch when given, else len(seq); the sequence checks it again at its epoch's start.
        check_steps_per_epoch(self.seq, (self.params or {}).get("steps"))
        if fit_argument("shuffle") is True:
            warnings.warn(
                "npyseq.BackupAndRestore: fit(shuffle=True), Keras' default, shuffles the batch indices "
                "with Python's global random module, so a resumed run does not get the batches the "
                "interrupted one would have; call fit(seq, shuffle=False): the sequence shuffles itself "
                "(its shuffle= and seed=)", UserWarning, stacklevel=2)


def _drop_leftover_batches() -> None:
    """Drop the batches Keras kept from reading before training started.

    Keras 3.15 on JAX and torch builds a freshly compiled model by reading one batch with the
    epoch iterator before training (``Trainer._symbolic_build``); with workers, stopping that
    read keeps the batches in flight in the enqueuer's ``ready_queue``, and epoch 0 would then
    start with them (batches 1, 2, ... of the order before the callback set it) instead of its
    batch 0. They are in no order a resume could reproduce: drop them.
    """
    iterator = fit_argument("epoch_iterator")
    enqueuer = getattr(getattr(iterator, "data_adapter", None), "enqueuer", None)
    ready = getattr(enqueuer, "ready_queue", None)
    if ready is None or getattr(enqueuer, "running", False):
        return
    while True:
        try:
            ready.get_nowait()
        except Exception:  # queue.Empty
            return


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _read_json(path: str) -> dict | None:
    if not file_utils.exists(path):
        return None
    with file_utils.File(path, "r") as f:
        return json.loads(f.read())


def _write_json(folder: str, path: str, value: dict) -> None:
    """Write ``value`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    if not file_utils.exists(folder):
        file_utils.makedirs(folder)
    text = json.dumps(value, indent=1, sort_keys=True)
    if "://" in path:  # remote storage (as Keras' callback allows): no rename, but the file is tiny
        with file_utils.File(path, "w") as f:
            f.write(text)
        return
    temporary = f"{path}.partial"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)
