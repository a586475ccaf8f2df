"""Transforms that fail on purpose, for tests/keras/test_worker_failures.py.

Module level, so that spawn and forkserver workers can import them by name.
Column 0 of ``x`` holds each row's index; with ``shuffle=False`` and batch
size 32 the batch that starts at row 224 is batch 7.
"""

from __future__ import annotations

import os
import time

FAIL_ROW = 224


class TransformFailed(Exception):
    """The exception the failing transform raises (a user's own type)."""


def _first_row(batch) -> int:
    return int(batch[0][0, 0])


def raise_on_row(batch, rng):
    if _first_row(batch) == FAIL_ROW:
        raise TransformFailed(f"bad batch starting at row {FAIL_ROW}")
    time.sleep(0.005)
    return batch


def exit_on_row(batch, rng):
    if _first_row(batch) == FAIL_ROW:
        os._exit(3)  # the worker process vanishes, as after a crash in C code
    time.sleep(0.005)
    return batch


def slow(batch, rng):
    """Keeps the workers busy: the training waits for them, not the reverse."""
    time.sleep(0.03)
    return batch
