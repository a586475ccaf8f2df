"""The benchmark datasets: synthetic ``x.npy``/``y.npy`` sources and their npyseq shards.

Every method of the suite reads the same rows: the plain ``.npy`` sources (for
the methods that read NumPy files: arrays in RAM, tf.data, the generator, the
raw-bytes reader, the minimal PyDataset, PyTorch, Grain) and the shards that
``npyseq convert`` makes of them (for npyseq). The sources are those of
:mod:`tools.synthetic` (the demo's): ``x`` holds float32 rows of 32x32x3
(12,288 bytes, a CIFAR-sized image), ``y`` int64 labels that depend on ``x``
so that a model can learn them.

The augmentation workload (:mod:`benchmarks.suite.augment`) reads a dataset
of ``kind="images"``: ``x`` holds uint8 images of 64x64x3 (12,288 bytes, the
same row size), ``y`` int64 labels, written the same way by
:func:`write_image_sources` and converted the same way. Where
mosaicml-streaming is installed, :func:`make_mds` writes MDS shards of the
same sources for it (:mod:`benchmarks.suite.peers`).

>>> data = Data("benchmarks/data/suite-81380", rows=81380)
>>> make_sources(data)                  # the sources only; False when they are already there
>>> data.x_npy, data.y_npy, data.shards
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tools.synthetic import CLASSES, ROW_BYTES, source_paths, write_sources


@dataclasses.dataclass(frozen=True)
class Data:
    """Where one dataset size lives: the two ``.npy`` sources and the shards folder."""

    folder: str
    rows: int
    kind: str = "floats"  # or "images": uint8 64x64x3 (the augmentation workload)

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
    def mds(self) -> str:
        """mosaicml-streaming's MDS shards of the same sources."""
        return os.path.join(self.folder, "mds")

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
        return {"folder": self.folder, "rows": self.rows, "kind": self.kind}

    @classmethod
    def from_json(cls, doc: dict) -> "Data":
        return cls(doc["folder"], int(doc["rows"]), doc.get("kind", "floats"))


def rows_for(size_gb: float) -> int:
    """Rows of a dataset of ``size_gb`` GB (x and y together)."""
    return max(1, int(size_gb * 1e9) // ROW_BYTES)


def make_sources(data: Data, *, chunk: int = 8192, seed: int = 0) -> bool:
    """Write ``x.npy`` and ``y.npy`` of ``data.rows`` rows (:func:`tools.synthetic.write_sources`, or
    :func:`write_image_sources` for images); False if they exist."""
    write = write_image_sources if data.kind == "images" else write_sources
    return write(os.path.dirname(data.x_npy), data.rows, chunk=chunk, seed=seed)


def write_image_sources(folder: str, rows: int, *, chunk: int = 8192, seed: int = 0) -> bool:
    """``x.npy`` (uint8 images of 64x64x3, random) and ``y.npy`` (int64 labels) in ``folder``; False if
    they are already there (a ``done-<rows>`` stamp, as :func:`tools.synthetic.write_sources`)."""
    from numpy.lib.format import open_memmap

    from benchmarks.suite.augment import IMAGE_SHAPE

    stamp = os.path.join(folder, f"done-{rows}")
    if os.path.exists(stamp):
        return False
    os.makedirs(folder, exist_ok=True)
    x_npy, y_npy = source_paths(folder)
    rng = np.random.default_rng(seed)
    x = open_memmap(x_npy, mode="w+", dtype=np.uint8, shape=(rows,) + IMAGE_SHAPE)
    y = open_memmap(y_npy, mode="w+", dtype=np.int64, shape=(rows,))
    for a in range(0, rows, chunk):
        b = min(rows, a + chunk)
        x[a:b] = rng.integers(0, 256, (b - a,) + IMAGE_SHAPE, dtype=np.uint8)
        y[a:b] = rng.integers(0, CLASSES, b - a)
    x.flush()
    y.flush()
    del x, y
    open(stamp, "w").close()
    return True


def make_mds(data: Data) -> bool:
    """mosaicml-streaming's MDS shards of ``data``'s sources (``data.mds``); False if they exist."""
    from benchmarks.suite.peers import write_mds

    return write_mds(data.x_npy, data.y_npy, data.mds)


def read_rows(data: Data) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset in memory (for the tests' tiny datasets only)."""
    return np.load(data.x_npy), np.load(data.y_npy)
