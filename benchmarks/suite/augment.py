"""The augmentation workload: uint8 images, a per-batch NumPy augmentation that holds the GIL.

The case process workers exist for: per-batch Python work. :func:`augment`
takes a batch of 64x64x3 uint8 images and, in a Python loop over its rows,
crops each at a random place to 56x56, flips it left-right with probability
1/2 and gamma-corrects it with a random gamma through a tone curve (a
256-entry lookup table) that it computes in Python. The crop, flip and lookup
are NumPy calls over thousands of elements, which release the GIL; the tone
curve, 256 powers in Python a row, holds it, and costs most of the
batch's time: two threads cannot run that at once, two processes can. (An
earlier version shifted brightness with NumPy calls over whole rows instead:
those release the GIL, and 2 threads ran it 1.1-1.3x as fast as none.)

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
GAMMA = (0.7, 1.4)  # each image's gamma is drawn uniformly from this range
_LEVELS = [v / 255 for v in range(256)]


def augment(batch, rng: np.random.Generator):
    """``(x, y)`` with every image of ``x`` randomly cropped to 56x56, flipped and gamma-corrected, row by row."""
    x, y = batch
    n, h, w, c = x.shape
    out = np.empty((n, CROP, CROP, c), np.uint8)
    tops = rng.integers(0, h - CROP + 1, n).tolist()
    lefts = rng.integers(0, w - CROP + 1, n).tolist()
    flips = (rng.random(n) < 0.5).tolist()
    gammas = rng.uniform(*GAMMA, n).tolist()
    for i in range(n):  # the per-row Python loop
        t, left, g = tops[i], lefts[i], gammas[i]
        img = x[i, t:t + CROP, left:left + CROP]
        curve = np.array([int(255 * v ** g + 0.5) for v in _LEVELS], np.uint8)  # in Python: holds the GIL
        np.take(curve, img[:, ::-1] if flips[i] else img, out=out[i])
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
