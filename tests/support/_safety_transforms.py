"""Transforms that misbehave on purpose, for tests/keras/test_sequence_safety.py and tests/keras/test_fit_safety.py.

Module level, so that spawn and forkserver workers import them by name.
Column 0 of ``x`` holds each row's index; with ``shuffle=False`` and batch
size 32 the batch that starts at row 224 is batch 7 (never one of the two
batches Keras reads in the main process on TensorFlow).
"""

from __future__ import annotations

FAIL_ROW = 224


class TwoArgError(Exception):
    """A user's exception whose ``__init__`` takes two arguments: it pickles, but cannot be unpickled."""

    def __init__(self, row, reason):
        super().__init__(f"row {row}: {reason}")
        self.row, self.reason = row, reason


def _refuse(message):
    raise TypeError(message)


class Unloadable:
    """Pickles fine; unpickling it raises (a class the trainer cannot rebuild)."""

    def __reduce__(self):
        return _refuse, ("this object cannot be rebuilt in the trainer",)


def _first_row(batch) -> int:
    return int(batch[0][0, 0])


def raise_two_arg(batch, rng):
    if _first_row(batch) == FAIL_ROW:
        raise TwoArgError(FAIL_ROW, "bad batch")
    return batch


def unloadable_on_row(batch, rng):
    if _first_row(batch) == FAIL_ROW:
        return batch[0], Unloadable()
    return batch


def none_on_row(batch, rng):
    """Forgets its ``return`` on one batch, as a transform with an early exit might."""
    if _first_row(batch) == FAIL_ROW:
        batch[0][:, 1:] *= 1.0
        return None
    return batch


def forget_return(batch, rng):
    batch[0][:, 1:] *= 1.0  # changed in place, and no `return batch`


class ReturnsThree:
    """A callable object as a transform, returning what is not a batch."""

    def __call__(self, batch, rng):
        return 3


def unloadable():
    """A pool task whose result the parent cannot unpickle."""
    return Unloadable()


def plus_100(batch, rng):
    """An 'augmentation' that shows: every x value moved up by 100."""
    return (batch[0] + 100,) + tuple(batch[1:])
