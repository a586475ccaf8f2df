"""Array-like sources for the Dask cluster tests, importable on the cluster's workers.

:class:`KillingArray` reads a ``.npy`` file by path (it pickles as its path, not its
rows) and, the first time a worker reads a given row, kills that worker's process
with SIGKILL, part-way through a shard: the task must be rerun on another worker.
"""

from __future__ import annotations

import os
import signal

import numpy as np


class KillingArray:
    def __init__(self, path: str, kill_at_row: int, marker: str):
        self.path, self.kill_at_row, self.marker = path, kill_at_row, marker
        a = np.load(path, mmap_mode="r")
        self.shape, self.dtype = a.shape, a.dtype

    def __getitem__(self, key):
        if key.start <= self.kill_at_row < key.stop:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only once, ever
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return np.load(self.path, mmap_mode="r")[key]
