"""The input pipelines the suite compares, each built the way its users build it.

A :class:`Spec` names a method, a worker setting and (for npyseq) a shuffle
mode; :func:`build` turns it into a :class:`Pipeline`: the ``x`` (and the other
arguments) that ``model.fit`` takes. The suite drives every pipeline through
Keras' own ``EpochIterator``, exactly as ``fit`` does minus the model, so all
methods are measured on what the training loop receives.

| method | what it is | settings |
| --- | --- | --- |
| ``npyseq`` | ``npyseq.ShardSequence`` over the shards | sync, 2 threads, 2 processes |
| ``minimal`` | hand-written ``PyDataset`` over ``np.memmap`` | sync, 2 threads, 2 processes |
| ``numpy`` | ``np.load`` whole, ``fit(x, y, batch_size=B)`` | sync |
| ``tf.data`` | ``from_tensor_slices(...).shuffle(10000).batch(B).prefetch(AUTOTUNE)`` | sync |
| ``generator`` | Python generator over a memmap, ``steps_per_epoch`` | sync |
| ``raw_bytes`` | generator reading the ``.npy`` bytes (``seek``/``read``) | sync |
| ``torch`` | ``DataLoader(shuffle=True)`` over a map-style memmap dataset | sync (0 workers), 2 processes |
| ``grain`` | ``grain.MapDataset.source(...).shuffle().batch()`` over memmaps | sync, 2 threads, 2 processes |
| ``streaming`` | mosaicml-streaming's ``StreamingDataset`` over local MDS shards, ``DataLoader`` | sync (0 workers), 2 processes |

``augment=True`` (the augmentation workload, on a dataset of ``kind="images"``)
runs :func:`benchmarks.suite.augment.augment` on every batch, in the workers:
npyseq's ``transform``, a PyTorch dataset of whole batches
(:class:`~benchmarks.suite.augment.AugmentedBatches`), streaming's
``collate_fn``. ``shuffle=True`` is streaming's own shuffle (its default
algorithm); ``shuffle=`` of npyseq is its shuffle mode. ``shared_memory=False``
(npyseq with process workers) sends the workers' batches pickled through
Keras' pipe instead of through shared memory: the "(pickled)" rows.

Two references bound what any method can reach in ``fit`` (they do not read
the dataset, so they are not compared): ``model_alone`` feeds one batch held
as a TensorFlow tensor, repeated (``tf.data.Dataset.from_tensors(batch).repeat(n)``:
the model's own cost); ``constant_pydataset`` returns one in-memory batch from
a ``PyDataset`` (the model plus Keras' PyDataset path, with no reading).

Every method yields each row of the dataset exactly once per epoch
(``tests/test_benchmarks.py`` checks it). The hand-written baselines are in
:mod:`benchmarks.suite.baselines`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any

from benchmarks.suite.data import Data

BATCH_SIZE = 256
WORKERS = 2
TF_SHUFFLE_BUFFER = 10_000
SETTINGS = ("sync", "threads", "processes")

# method -> worker settings it has
METHODS = {
    "npyseq": SETTINGS,
    "minimal": SETTINGS,
    "numpy": ("sync",),
    "tf.data": ("sync",),
    "generator": ("sync",),
    "raw_bytes": ("sync",),
    "torch": ("sync", "processes"),
    "grain": SETTINGS,
    "streaming": ("sync", "processes"),
    "model_alone": ("sync",),
    "constant_pydataset": ("sync",),
}
REFERENCES = ("model_alone", "constant_pydataset")
OPTIONAL = {"torch": "torch", "grain": "grain", "streaming": "streaming"}  # method -> module it needs
AUGMENTED = ("npyseq", "torch", "streaming")  # methods with an augment=True form
# Methods that hold the whole dataset in memory.
IN_RAM = ("numpy", "tf.data")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One pipeline: ``method`` with ``setting`` workers; ``shuffle`` is npyseq's."""

    method: str
    setting: str = "sync"
    shuffle: Any = False
    rows: int | None = None  # the first rows only (None: all of them)
    batch_size: int = BATCH_SIZE
    seed: int = 0
    augment: bool = False  # benchmarks.suite.augment.augment on every batch (images only)
    shared_memory: bool = True  # npyseq's: False sends process workers' batches pickled, as before

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.setting not in METHODS[self.method]:
            raise ValueError(f"{self.method} has settings {METHODS[self.method]}, got {self.setting!r}")
        if self.method == "streaming":
            if self.shuffle not in (False, True):
                raise ValueError(f"streaming shuffles or not: shuffle=True or False, got {self.shuffle!r}")
        elif self.method != "npyseq" and self.shuffle is not False:
            raise ValueError(f"shuffle= is npyseq's; {self.method} shuffles its own way")
        if not self.shared_memory and (self.method, self.setting) != ("npyseq", "processes"):
            raise ValueError("shared_memory=False is npyseq's, with process workers")
        if self.augment and self.method not in AUGMENTED:
            raise ValueError(f"augment=True is for {AUGMENTED}, got {self.method!r}")

    @property
    def label(self) -> str:
        if self.method in REFERENCES:
            return {"model_alone": "reference: model alone",
                    "constant_pydataset": "reference: PyDataset of one constant batch"}[self.method]
        name = self.method
        if self.method == "npyseq":
            name += f" {self.shuffle}" if self.shuffle else " sequential"
        elif self.method == "streaming" and self.shuffle:
            name += " shuffled"
        if self.setting != "sync":
            name += f", {WORKERS} {self.setting}"
        if not self.shared_memory:
            name += " (pickled)"
        return name + (" + augment" if self.augment else "")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "Spec":
        return cls(**doc)


def available(method: str) -> tuple[bool, str]:
    """Whether ``method`` can run here, and if not, why."""
    if method == "streaming":
        from benchmarks.suite.peers import streaming_available

        return streaming_available()
    module = OPTIONAL.get(method)
    if module and importlib.util.find_spec(module) is None:
        return False, f"{module} is not installed (pip install {module})"
    return True, ""


@dataclasses.dataclass
class Pipeline:
    """What ``fit`` takes: ``fit(x, **fit_kwargs)``; ``files`` are those it reads."""

    spec: Spec
    x: Any
    fit_kwargs: dict
    rows: int
    files: list[str]

    def epoch_iterator(self):
        """Keras' ``EpochIterator`` over this pipeline, as ``fit`` builds it (reset once)."""
        from keras.src.trainers.epoch_iterator import EpochIterator

        it = EpochIterator(x=self.x, **self.fit_kwargs)
        it.reset()
        return it


def epoch_batches(iterator):
    """The batches of one epoch of a Keras ``EpochIterator``, as ``fit`` pulls them."""
    with iterator.catch_stop_iteration():
        for _, _, batches in iterator:
            yield from batches


def _worker_kwargs(setting: str) -> dict:
    return {"sync": dict(workers=1, use_multiprocessing=False),
            "threads": dict(workers=WORKERS, use_multiprocessing=False),
            "processes": dict(workers=WORKERS, use_multiprocessing=True)}[setting]


def build(spec: Spec, data: Data) -> Pipeline:
    """The pipeline ``spec`` over ``data`` (loading the data first for in-RAM methods)."""
    rows = data.rows if spec.rows is None else min(spec.rows, data.rows)
    B = spec.batch_size
    sources = data.source_files()
    if spec.augment and data.kind != "images":
        raise ValueError(f"augment=True needs a dataset of images, got {data.kind!r}")
    if spec.method == "npyseq":
        import npyseq

        extra = {}
        if spec.augment:
            from benchmarks.suite.augment import augment

            extra["transform"] = augment
        if not spec.shared_memory:  # the argument exists only where the shared-memory transport does
            import inspect

            if "shared_memory" not in inspect.signature(npyseq.ShardSequence).parameters:
                raise ValueError("this npyseq has no shared-memory transport (ShardSequence(shared_memory=...))")
            extra["shared_memory"] = False
        seq = npyseq.ShardSequence(data.shards, x="x", y="y", batch_size=B, shuffle=spec.shuffle,
                                   seed=spec.seed, **_worker_kwargs(spec.setting), **extra)
        if rows < data.rows:
            seq = seq.subset(0, rows)
        return Pipeline(spec, seq, {"shuffle": True}, rows, data.shard_files())
    if spec.method == "minimal":
        from benchmarks.suite.baselines import MinimalPyDataset

        ds = MinimalPyDataset(data.x_npy, data.y_npy, B, rows, **_worker_kwargs(spec.setting))
        return Pipeline(spec, ds, {"shuffle": True}, rows, sources)
    if spec.method in IN_RAM:
        x, y = _load(data, rows)
        if spec.method == "numpy":
            return Pipeline(spec, x, {"y": y, "batch_size": B, "shuffle": True}, rows, sources)
        import tensorflow as tf

        ds = (tf.data.Dataset.from_tensor_slices((x, y))
              .shuffle(min(TF_SHUFFLE_BUFFER, rows), seed=spec.seed)
              .batch(B).prefetch(tf.data.AUTOTUNE))
        return Pipeline(spec, ds, {}, rows, sources)
    if spec.method in ("generator", "raw_bytes"):
        from benchmarks.suite import baselines

        make = baselines.memmap_batches if spec.method == "generator" else baselines.raw_batches
        gen = make(data.x_npy, data.y_npy, rows, B)
        return Pipeline(spec, gen, {"steps_per_epoch": math.ceil(rows / B)}, rows, sources)
    if spec.method == "torch":
        import torch
        from torch.utils.data import DataLoader

        from benchmarks.suite.baselines import MemmapRows

        workers = 0 if spec.setting == "sync" else WORKERS
        generator = torch.Generator().manual_seed(spec.seed)
        if spec.augment:  # one item per batch, augmented in the worker as npyseq's transform is
            from torch.utils.data import BatchSampler, RandomSampler

            from benchmarks.suite.augment import AugmentedBatches

            sampler = BatchSampler(RandomSampler(range(rows), generator=generator), B, drop_last=False)
            loader = DataLoader(AugmentedBatches(data.x_npy, data.y_npy, rows, spec.seed), sampler=sampler,
                                batch_size=None, num_workers=workers)
        else:
            loader = DataLoader(MemmapRows(data.x_npy, data.y_npy, rows), batch_size=B,
                                shuffle=True, num_workers=workers, generator=generator)
        return Pipeline(spec, loader, {}, rows, sources)
    if spec.method == "streaming":
        from benchmarks.suite.peers import mds_files, streaming_loader

        if rows != data.rows:
            raise ValueError("streaming reads whole MDS datasets only (rows=None)")
        loader = streaming_loader(data.mds, rows=rows, batch_size=B,
                                  workers=0 if spec.setting == "sync" else WORKERS, shuffle=spec.shuffle,
                                  seed=spec.seed, augmented=spec.augment)
        return Pipeline(spec, loader, {}, rows, mds_files(data.mds))
    if spec.method == "grain":
        return Pipeline(spec, _grain(data, rows, spec), {}, rows, sources)
    if spec.method in REFERENCES:
        batch = _load(data, B)
        steps = math.ceil(rows / B)
        if spec.method == "model_alone":
            import tensorflow as tf

            ds = tf.data.Dataset.from_tensors(batch).repeat(steps)
            return Pipeline(spec, ds, {}, steps * B, sources)
        from benchmarks.suite.baselines import ConstantPyDataset

        return Pipeline(spec, ConstantPyDataset(batch, steps), {"shuffle": True}, steps * B, sources)
    raise AssertionError(spec.method)


def _load(data: Data, rows: int):
    """``x`` and ``y``, the first ``rows`` rows, in memory."""
    import numpy as np

    if rows == data.rows:  # what users do
        return np.load(data.x_npy), np.load(data.y_npy)
    return (np.array(np.load(data.x_npy, mmap_mode="r")[:rows]),
            np.array(np.load(data.y_npy, mmap_mode="r")[:rows]))


def _grain(data: Data, rows: int, spec: Spec):
    import grain
    from absl import flags

    from benchmarks.suite.baselines import MemmapRows

    # Grain's process workers read absl flags, which a script that does not
    # run absl.app.main never parses.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.source(MemmapRows(data.x_npy, data.y_npy, rows))
    ds = ds.shuffle(seed=spec.seed).batch(spec.batch_size)
    if spec.setting == "threads":
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=WORKERS, prefetch_buffer_size=10))
    if spec.setting == "processes":
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=WORKERS))
    return ds
