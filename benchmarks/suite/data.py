"""The benchmark datasets: synthetic ``x.npy``/``y.npy`` sources and their npyseq shards.

Every method of the suite reads the same rows: the plain ``.npy`` sources (for
the methods that read NumPy files: arrays in RAM, tf.data, the generator, the
raw-bytes reader, the minimal PyDataset, PyTorch, Grain) and the shards that
``npyseq convert`` makes of them (for npyseq). The sources are those of
:mod:`tools.synthetic` (the demo's): ``x`` holds float32 rows of 32x32x3
(12,288 bytes, a CIFAR-sized image), ``y`` int64 labels that depend on ``x``
so that a model can learn them.

>>> data = Data("benchmarks/data/suite-81380", rows=81380)
>>> make_sources(data)                  # the sources only; False when they are already there
>>> data.x_npy, data.y_npy, data.shards
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tools.synthetic import ROW_BYTES, source_paths, write_sources


@dataclasses.dataclass(frozen=True)
class Data:
    """Where one dataset size lives: the two ``.npy`` sources and the shards folder."""

    folder: str
    rows: int

    @property
    def x_npy(self) -> str:
        return source_paths(os.path.join(self.folder, "source"))[0]

    @property
    def y_npy(self) -> str:
        return source_paths(os.path.join(self.folder, "source"))[1]

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
    """Write ``x.npy`` and ``y.npy`` of ``data.rows`` rows (:func:`tools.synthetic.write_sources`);
    False if they exist."""
    return write_sources(os.path.dirname(data.x_npy), data.rows, chunk=chunk, seed=seed)


def read_rows(data: Data) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset in memory (for the tests' tiny datasets only)."""
    return np.load(data.x_npy), np.load(data.y_npy)
