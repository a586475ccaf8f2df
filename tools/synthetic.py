"""The synthetic dataset of the demo and the benchmark suite: ``x.npy`` images and ``y.npy`` labels.

``x`` holds float32 rows of 32x32x3 (12,288 bytes, a CIFAR-sized image) drawn
uniformly from [-0.5, 0.5); ``y`` holds int64 labels in ``range(CLASSES)``
that depend on ``x`` (the argmax of a fixed random projection of its first 64
values), so a model can learn them. The arrays are written chunk by chunk
through ``open_memmap`` and are never whole in memory; the same ``seed`` and
``rows`` give the same bytes.

>>> from tools.synthetic import source_paths, write_sources
>>> write_sources("demo-data/source", rows=1000)    # False when they are already there
True
>>> x_npy, y_npy = source_paths("demo-data/source")
"""

from __future__ import annotations

import os

import numpy as np

ROW_SHAPE = (32, 32, 3)
CLASSES = 10
X_ROW_BYTES = 4 * int(np.prod(ROW_SHAPE))  # float32
ROW_BYTES = X_ROW_BYTES + 8  # x and its int64 label


def source_paths(folder: str | os.PathLike) -> tuple[str, str]:
    """The paths of ``x.npy`` and ``y.npy`` in ``folder``."""
    return os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy")


def write_sources(folder: str | os.PathLike, rows: int, *, chunk: int = 8192, seed: int = 0) -> bool:
    """Write ``x.npy`` and ``y.npy`` of ``rows`` rows into ``folder``; False if they are already there.

    A stamp file (``done-<rows>``) marks a finished pair, so an interrupted
    run writes them again.
    """
    from numpy.lib.format import open_memmap

    stamp = os.path.join(folder, f"done-{rows}")
    if os.path.exists(stamp):
        return False
    os.makedirs(folder, exist_ok=True)
    x_npy, y_npy = source_paths(folder)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, CLASSES)).astype(np.float32)
    x = open_memmap(x_npy, mode="w+", dtype=np.float32, shape=(rows,) + ROW_SHAPE)
    y = open_memmap(y_npy, mode="w+", dtype=np.int64, shape=(rows,))
    for a in range(0, rows, chunk):
        b = min(rows, a + chunk)
        block = rng.random((b - a,) + ROW_SHAPE, dtype=np.float32) - 0.5
        x[a:b] = block
        y[a:b] = np.argmax(block.reshape(b - a, -1)[:, :64] @ w, axis=1)
        x.flush()
    y.flush()
    del x, y
    open(stamp, "w").close()
    return True
