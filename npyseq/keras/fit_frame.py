"""What the running ``Model.fit`` was given, for the checks Keras gives a dataset no way to make.

Keras 3.15 tells a ``PyDataset`` nothing of ``fit``'s arguments, and a callback
only ``epochs``, ``steps`` and ``verbose``. Two of them decide whether a
sequence's order holds: ``steps_per_epoch`` (below the sequence's epoch,
Keras carries the rest of an epoch into the next one, in the next epoch's
order: rows repeat and others are skipped) and ``shuffle`` (Keras' default
``True`` reorders the batch indices with Python's global ``random``). They
are read from the frame of the innermost running ``fit``, ``evaluate`` or
``predict`` of Keras; where none is found, nothing is checked.
"""

from __future__ import annotations

import sys
from typing import Any

from npyseq.arguments import is_int
from npyseq.errors import InvalidArgumentError
from npyseq.order import position

__all__ = ["fit_argument", "check_steps_per_epoch", "end_of_build_read"]

_ENTRY_POINTS = ("fit", "evaluate", "predict")
_MISSING = object()


def fit_argument(name: str, default: Any = None) -> Any:
    """Argument ``name`` of the running ``Model.fit``; ``default`` if the innermost Keras entry
    point on the stack is ``evaluate`` or ``predict`` (validation inside ``fit``) or there is none."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name in _ENTRY_POINTS and frame.f_globals.get("__name__", "").startswith("keras."):
            if code.co_name != "fit":
                return default
            value = frame.f_locals.get(name, _MISSING)
            return default if value is _MISSING else value
        frame = frame.f_back
    return default


def check_steps_per_epoch(seq: Any, steps: Any = _MISSING) -> None:
    """Refuse ``fit(seq, steps_per_epoch=k)`` with ``k`` below the sequence's epoch, naming the way that works."""
    if steps is _MISSING:
        steps = fit_argument("steps_per_epoch")
    length = position.epoch_length(seq.batches_per_pass, seq.steps_per_epoch)
    if is_int(steps) and 0 < steps < length:
        raise InvalidArgumentError(
            f"fit(steps_per_epoch={steps}) with a sequence of {length} batches per epoch ({seq!r}): Keras "
            f"would carry the rest of each epoch into the next epoch, in the next epoch's order, "
            f"and so repeat and skip rows. Give the sequence the epoch length instead, "
            f"ShardSequence(..., steps_per_epoch={steps}) or seq.steps_per_epoch = {steps}, and call "
            f"fit without steps_per_epoch: every row is then used once per pass over the data")


def end_of_build_read() -> Any:
    """The data adapter of the ``EpochIterator.reset`` that is ending a dataset's epoch, or None.

    Keras 3.15 builds a freshly compiled model, on JAX and torch, by reading one
    batch with the epoch iterator (``Trainer._symbolic_build``), then ends that
    read with ``EpochIterator.reset()``, which calls the dataset's
    ``on_epoch_end``: an epoch that trained nothing. ``reset`` is called for
    nothing else in Keras 3.15's trainers.
    """
    frame = sys._getframe(1)
    for _ in range(8):  # reset -> adapter.on_epoch_end -> dataset.on_epoch_end -> here
        if frame is None:
            return None
        if frame.f_code.co_name == "reset" and frame.f_globals.get("__name__") == "keras.src.trainers.epoch_iterator":
            return getattr(frame.f_locals.get("self"), "data_adapter", None)
        frame = frame.f_back
    return None
