"""The augmentation workload: uint8 images, a per-batch NumPy augmentation that holds the GIL.

The case process workers exist for: per-batch Python work. :func:`augment`
takes a batch of 64x64x3 uint8 images and, in a Python loop over its rows,
crops each at a random place to 56x56, flips it left-right with probability
1/2 and shifts its brightness by a random amount (saturating). Each row costs
a few small NumPy calls, so the interpreter, holding the GIL, does most of
the work: two threads cannot run it at once, two processes can.

The same function serves every library the suite compares on this workload:

* npyseq: ``ShardSequence(..., transform=augment)`` (``fn(batch, rng)``);
* PyTorch: :class:`AugmentedBatches`, a map-style dataset whose index is a
  whole batch of row indices (a ``BatchSampler`` as the ``DataLoader``'s
  sampler, ``batch_size=None``), reading the rows out of the memmapped
  ``.npy`` sources and augmenting them in the worker;
* mosaicml-streaming: the ``DataLoader``'s ``collate_fn``
  (:func:`benchmarks.suite.peers.collate_augmented`), which runs in the worker.

Importing this module imports neither Keras nor PyTorch.

>>> x, y = augment((images, labels), np.random.default_rng(0))   # x: (n, 56, 56, 3) uint8
"""

from __future__ import annotations

import numpy as np

IMAGE_SHAPE = (64, 64, 3)
CROP = 56
MAX_SHIFT = 32  # brightness shift, in [-MAX_SHIFT, MAX_SHIFT]


def augment(batch, rng: np.random.Generator):
    """``(x, y)`` with every image of ``x`` randomly cropped to 56x56, flipped and brightened, row by row."""
    x, y = batch
    n, h, w, c = x.shape
    out = np.empty((n, CROP, CROP, c), np.uint8)
    tops = rng.integers(0, h - CROP + 1, n).tolist()
    lefts = rng.integers(0, w - CROP + 1, n).tolist()
    flips = (rng.random(n) < 0.5).tolist()
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, n).tolist()
    for i in range(n):  # the per-row Python loop
        t, left = tops[i], lefts[i]
        img = x[i, t:t + CROP, left:left + CROP]
        row = out[i]
        row[...] = img[:, ::-1] if flips[i] else img
        s = shifts[i]
        if s > 0:  # saturating row + s
            np.minimum(row, 255 - s, out=row)
            row += s
        elif s < 0:
            np.maximum(row, -s, out=row)
            row -= -s
    return out, y


class AugmentedBatches:
    """PyTorch's side of the workload: item ``idx`` (a list of row indices) is that batch, augmented.

    Reads the rows out of the ``.npy`` sources through memmaps opened on first
    use (in the worker), in sorted order as npyseq's ``"global"`` batches do,
    and augments them with a generator keyed by ``seed`` and the batch's first
    row. Use with ``DataLoader(ds, sampler=BatchSampler(RandomSampler(...), B,
    drop_last=False), batch_size=None)``.
    """

    def __init__(self, x_npy: str, y_npy: str, rows: int, seed: int = 0):
        self.x_npy, self.y_npy, self.rows, self.seed = x_npy, y_npy, rows, seed
        self._maps = None

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, idx):
        if self._maps is None:
            self._maps = (np.load(self.x_npy, mmap_mode="r"), np.load(self.y_npy, mmap_mode="r"))
        x, y = self._maps
        rows = np.sort(np.asarray(idx, dtype=np.int64))
        rng = np.random.default_rng([self.seed, int(rows[0])])
        return augment((x[rows], y[rows]), rng)

    def __getstate__(self):
        return {"x_npy": self.x_npy, "y_npy": self.y_npy, "rows": self.rows, "seed": self.seed, "_maps": None}
