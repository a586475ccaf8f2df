"""Functions run in multiprocessing workers by the tests.

They live in their own small module so that spawn and forkserver children can
import them by name without importing a test module.
"""

from __future__ import annotations

import os

_array = None


def init_worker(array) -> None:
    """Pool initializer: keep the array, as Keras keeps its PyDataset."""
    global _array
    _array = array


def read_rows(key):
    """Rows ``key`` of the array given to :func:`init_worker`, with this pid."""
    return os.getpid(), _array[key]


def read_from(array, key):
    """Rows ``key`` of an array sent with the task itself."""
    return os.getpid(), array[key]


def read_all_from(array):
    return array[:]
