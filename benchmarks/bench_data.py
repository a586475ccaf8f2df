"""The benchmark datasets: synthetic ``x.npy``/``y.npy`` sources and their npyseq shards.

Every method of the suite reads the same rows: the plain ``.npy`` sources (for
the methods that read NumPy files: arrays in RAM, tf.data, the generator, the
raw-bytes reader, the minimal PyDataset, PyTorch, Grain) and the shards that
``npyseq convert`` makes of them (for npyseq). ``x`` holds float32 rows of
32x32x3 (12,288 bytes, a CIFAR-sized image), ``y`` int64 labels that depend on
``x`` so that a model can learn them.

>>> data = make_data("benchmarks/data/suite-81380", rows=81380)   # sources only
>>> data.x_npy, data.y_npy, data.shards
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

ROW_SHAPE = (32, 32, 3)
CLASSES = 10
ROW_BYTES = 4 * int(np.prod(ROW_SHAPE)) + 8  # x (float32) and y (int64)


@dataclasses.dataclass(frozen=True)
class Data:
    """Where one dataset size lives: the two ``.npy`` sources and the shards folder."""

    folder: str
    rows: int

    @property
    def x_npy(self) -> str:
        return os.path.join(self.folder, "source", "x.npy")

    @property
    def y_npy(self) -> str:
        return os.path.join(self.folder, "source", "y.npy")

    @property
    def shards(self) -> str:
        return os.path.join(self.folder, "shards")

    @property
    def nbytes(self) -> int:
        """Bytes of data (x and y, headers excluded)."""
        return self.rows * ROW_BYTES

    def source_files(self) -> list[str]:
        return [self.x_npy, self.y_npy]

    def shard_files(self) -> list[str]:
        """Every file of the npyseq dataset (manifest included)."""
        out = []
        for folder, _, files in os.walk(self.shards):
            out += [os.path.join(folder, f) for f in sorted(files)]
        return sorted(out)

    def to_json(self) -> dict:
        return {"folder": self.folder, "rows": self.rows}

    @classmethod
    def from_json(cls, doc: dict) -> "Data":
        return cls(doc["folder"], int(doc["rows"]))


def rows_for(size_gb: float) -> int:
    """Rows of a dataset of ``size_gb`` GB (x and y together)."""
    return max(1, int(size_gb * 1e9) // ROW_BYTES)


def make_sources(data: Data, *, chunk: int = 8192, seed: int = 0) -> bool:
    """Write ``x.npy`` and ``y.npy`` of ``data.rows`` rows chunk by chunk; False if they exist.

    The arrays are never whole in memory. A stamp file marks a finished pair,
    so an interrupted run writes them again.
    """
    from numpy.lib.format import open_memmap

    stamp = os.path.join(data.folder, "source", f"done-{data.rows}")
    if os.path.exists(stamp):
        return False
    os.makedirs(os.path.dirname(data.x_npy), exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, CLASSES)).astype(np.float32)
    x = open_memmap(data.x_npy, mode="w+", dtype=np.float32, shape=(data.rows,) + ROW_SHAPE)
    y = open_memmap(data.y_npy, mode="w+", dtype=np.int64, shape=(data.rows,))
    for a in range(0, data.rows, chunk):
        b = min(data.rows, a + chunk)
        block = rng.random((b - a,) + ROW_SHAPE, dtype=np.float32) - 0.5
        x[a:b] = block
        y[a:b] = np.argmax(block.reshape(b - a, -1)[:, :64] @ w, axis=1)
        x.flush()
    y.flush()
    del x, y
    open(stamp, "w").close()
    return True


def read_rows(data: Data) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset in memory (for the tests' tiny datasets only)."""
    return np.load(data.x_npy), np.load(data.y_npy)
