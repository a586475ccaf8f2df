"""The baselines: hand-written readers of plain ``.npy`` files, what people write instead of npyseq.

Each is the common answer to "my array does not fit in RAM", written correctly
(it reads the ``.npy`` header, keeps ``x`` and ``y`` aligned and returns real
copies), so the suite compares npyseq with the approach, not with a bug:

* :class:`MinimalPyDataset`: the minimal ``keras.utils.PyDataset`` over two
  ``np.memmap``, npyseq's baseline;
* :func:`memmap_batches`: a Python generator over ``np.load(mmap_mode="r")``,
  for ``fit(gen, steps_per_epoch=...)``;
* :func:`raw_batches`: the same over the raw bytes of the files (``seek`` and
  ``read``, header parsed with ``numpy.lib.format``);
* :class:`MemmapRows`: a map-style source of single rows over memmaps, for
  ``torch.utils.data.DataLoader`` and ``grain.MapDataset``. It pickles as its
  paths (pickling an ``np.memmap`` would copy the whole array), so spawned
  workers reopen the files.

And a reference, not a method: :class:`ConstantPyDataset`, one batch returned
again and again.

Importing this module imports neither Keras, PyTorch nor Grain: Grain's
spawned workers import it to unpickle :class:`MemmapRows`. The two
``PyDataset`` classes are therefore defined on first use (they pickle by name
like any module-level class).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from numpy.lib import format as npy_format


def memmap_batches(x_npy: str, y_npy: str, rows: int, batch_size: int) -> Iterator[tuple]:
    """Batches ``(x, y)`` of the first ``rows`` rows, in order, repeated forever."""
    x = np.load(x_npy, mmap_mode="r")
    y = np.load(y_npy, mmap_mode="r")
    while True:
        for a in range(0, rows, batch_size):
            b = min(rows, a + batch_size)
            yield np.array(x[a:b]), np.array(y[a:b])


def npy_layout(f) -> tuple[int, np.dtype, tuple[int, ...]]:
    """``(data offset, dtype, shape)`` of the ``.npy`` file open as ``f``."""
    f.seek(0)
    major, _ = npy_format.read_magic(f)
    read_header = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if fortran and len(shape) > 1:
        raise ValueError(f"{f.name}: Fortran-order arrays are not row-contiguous")
    return f.tell(), dtype, shape


def raw_batches(x_npy: str, y_npy: str, rows: int, batch_size: int) -> Iterator[tuple]:
    """Batches ``(x, y)`` read as raw bytes (``seek`` + ``read``), in order, repeated forever."""
    files = [open(p, "rb", buffering=0) for p in (x_npy, y_npy)]
    layouts = [npy_layout(f) for f in files]
    row_bytes = [d.itemsize * int(np.prod(s[1:], dtype=np.int64)) for _, d, s in layouts]
    while True:
        for a in range(0, rows, batch_size):
            n = min(rows, a + batch_size) - a
            batch = []
            for f, (offset, dtype, shape), rb in zip(files, layouts, row_bytes):
                f.seek(offset + a * rb)
                buf = f.read(n * rb)
                batch.append(np.frombuffer(buf, dtype).reshape((n,) + shape[1:]))
            yield tuple(batch)


class MemmapRows:
    """Row ``i`` as ``(x[i], y[i])``, read from memmaps opened on first use."""

    def __init__(self, x_npy: str, y_npy: str, rows: int):
        self.x_npy, self.y_npy, self.rows = x_npy, y_npy, rows
        self._maps = None

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i):
        if self._maps is None:
            self._maps = (np.load(self.x_npy, mmap_mode="r"), np.load(self.y_npy, mmap_mode="r"))
        x, y = self._maps
        return np.array(x[i]), np.array(y[i])

    def __getstate__(self):
        return {"x_npy": self.x_npy, "y_npy": self.y_npy, "rows": self.rows, "_maps": None}

    def __repr__(self) -> str:
        return f"MemmapRows({self.x_npy!r}, {self.y_npy!r}, rows={self.rows})"


# -- the PyDataset classes, defined when first asked for (importing Keras) ----------

_PYDATASETS = ("MinimalPyDataset", "ConstantPyDataset")


def __getattr__(name: str):
    if name in _PYDATASETS:
        globals().update(_define_pydatasets())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_pydatasets() -> dict:
    import keras

    class MinimalPyDataset(keras.utils.PyDataset):
        """The minimal hand-written ``keras.utils.PyDataset`` over ``np.memmap``: npyseq's baseline.

        What DESIGN.md's prototypes measured and what a Keras user writes first: batch
        ``i`` is rows ``[i*B, (i+1)*B)`` copied out of two memmaps. ``fit(shuffle=True)``
        (the default) shuffles the order of the batches. Under fork the memmaps are
        inherited by Keras' process workers; pickling them (spawn, forkserver) would
        copy the whole arrays, which is one of the problems npyseq solves.
        """

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

    classes = {"MinimalPyDataset": MinimalPyDataset, "ConstantPyDataset": ConstantPyDataset}
    for cls in classes.values():
        cls.__qualname__ = cls.__name__  # module-level names, as pickle looks them up
    return classes
