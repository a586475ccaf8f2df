"""The minimal hand-written ``keras.utils.PyDataset`` over ``np.memmap``: npyseq's baseline.

What DESIGN.md's prototypes measured and what a Keras user writes first: batch
``i`` is rows ``[i*B, (i+1)*B)`` copied out of two memmaps. ``fit(shuffle=True)``
(the default) shuffles the order of the batches. Under fork the memmaps are
inherited by Keras' process workers; pickling them (spawn, forkserver) would
copy the whole arrays, which is one of the problems npyseq solves.
"""

from __future__ import annotations

import keras
import numpy as np


class MinimalPyDataset(keras.utils.PyDataset):
    def __init__(self, x_npy: str, y_npy: str, batch_size: int, rows: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.x = np.load(x_npy, mmap_mode="r")
        self.y = np.load(y_npy, mmap_mode="r")
        self.rows = len(self.x) if rows is None else rows
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __getitem__(self, i: int):
        a = i * self.batch_size
        b = min(self.rows, a + self.batch_size)
        return np.array(self.x[a:b]), np.array(self.y[a:b])


class ConstantPyDataset(keras.utils.PyDataset):
    """A reference, not a method: ``num_batches`` times the same batch, read once.

    ``fit`` over it costs what Keras' PyDataset path and the model cost with
    no reading at all: no ``PyDataset`` can make an epoch shorter.
    """

    def __init__(self, batch: tuple, num_batches: int, **kwargs):
        super().__init__(**kwargs)
        self.batch, self._num_batches = batch, num_batches

    def __len__(self) -> int:
        return self._num_batches

    def __getitem__(self, i: int):
        return self.batch
