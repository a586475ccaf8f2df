"""``keras.utils.PyDataset`` classes over sharded datasets: :class:`ShardSequence`.

This is the only npyseq module that imports Keras (``import npyseq`` loads it
on first use of :class:`ShardSequence`). It imports ``keras`` only, never a
backend: ``__getitem__`` is NumPy and file I/O alone, so it is safe in thread
and process workers on the TensorFlow, JAX and torch backends.
"""

from __future__ import annotations

import bisect
import os
import pickle
from typing import Any, Callable, Mapping

import keras
import numpy as np

from npyseq import _watchdog, order
from npyseq._pool import BufferPool
from npyseq.errors import InvalidArgumentError
from npyseq.ragged import RaggedArray
from npyseq.reader import Dataset, ShardedArray, open_shards

__all__ = ["ShardSequence"]

_RNG_TAG = 0x5EED
_ARRAYS = (ShardedArray, RaggedArray)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class ShardSequence(keras.utils.PyDataset):
    """Batches of a sharded dataset for ``model.fit``, ``evaluate`` and ``predict``.

    Batch ``i`` is read straight from memory-mapped shards: peak memory is a
    few batches, whatever the size of the data. Only paths cross process
    boundaries, so ``workers=N, use_multiprocessing=True`` works under fork,
    spawn and forkserver.

    Args:
        dataset: a :class:`npyseq.Dataset` or the path of a dataset folder.
        x: the inputs: an array name, a list of names (several inputs), or a
            dict ``{input_name: array_name}`` for named multi-input models.
            A :class:`npyseq.ShardedArray` may stand for a name.
        y: the targets, in the same forms, or ``None`` (e.g. for ``predict``).
        sample_weight: per-row weights, an array name or ``None``.
        batch_size: rows per batch.
        shuffle: ``False`` (dataset order), ``"batches"``, ``"blocks"`` or
            ``"global"`` (``True`` means ``"global"``); see
            :mod:`npyseq.order` for what each costs.
        seed: the seed of every shuffle and of ``transform``'s generator. The
            order of epoch ``e`` depends on ``(seed, e)`` only.
        block_size: rows per block for ``shuffle="blocks"`` (default
            ``batch_size // 16``).
        drop_remainder: drop the last partial batch (a different set of rows
            each epoch when shuffling).
        transform: ``fn(batch, rng) -> batch`` run on every batch (in the
            workers), with ``batch`` the tuple ``(x,)``, ``(x, y)`` or
            ``(x, y, w)`` and ``rng`` a ``numpy.random.Generator`` seeded from
            ``(seed, epoch, batch index)``: reproducible, and different for
            every batch. Must be picklable for process workers (a module-level
            function or a ``functools.partial`` of one, not a lambda).
        dtype: cast per batch: one dtype applied to every floating array
            (``"float32"`` to train in float32 on float16 or bfloat16 data),
            or ``{array_name: dtype}``. ``None`` keeps the stored dtypes.
        workers, use_multiprocessing, max_queue_size: passed to
            ``keras.utils.PyDataset``. Threads suit copying out of memory
            maps (NumPy releases the GIL); processes pay off only for a heavy
            Python ``transform``. ``max_queue_size`` defaults to 4 (Keras:
            10): batches waiting in the queue are memory, and a deeper queue
            measured no faster with 2 threads or 2 processes.

    Example:

    >>> ds = npyseq.open_shards("data/train")
    >>> seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=256,
    ...                            shuffle="global", seed=0, workers=2)
    >>> train, val = seq.split(0.9)
    >>> model.fit(train, validation_data=val, epochs=5)

    ``seq.epoch`` is the epoch whose order the next batches follow. It
    advances at the end of each epoch ``fit`` runs; to resume a training at
    epoch ``k`` with the order an uninterrupted run would have had, set
    ``seq.epoch = k`` and call ``model.fit(seq, initial_epoch=k, ...)``.
    """

    def __init__(
        self,
        dataset: Dataset | str | os.PathLike,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        batch_size: int = 32,
        shuffle: bool | str = False,
        seed: int = 0,
        block_size: int | None = None,
        drop_remainder: bool = False,
        transform: Callable | None = None,
        dtype: Any = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 4,
        _rows: tuple[int, int] | None = None,
    ):
        if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 0:
            raise InvalidArgumentError(f"workers must be a non-negative int, got {workers!r}")
        _positive_int(max_queue_size, "max_queue_size")
        super().__init__(workers=int(workers), use_multiprocessing=bool(use_multiprocessing),
                         max_queue_size=int(max_queue_size))
        if not isinstance(dataset, Dataset):
            if isinstance(dataset, (str, os.PathLike)):
                dataset = open_shards(dataset)
            else:
                raise InvalidArgumentError(
                    f"dataset must be an npyseq.Dataset or a dataset folder path, got {type(dataset).__name__}"
                )
        self.dataset = dataset
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.shuffle = order.check_shuffle(shuffle)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InvalidArgumentError(f"seed must be an int, got {seed!r}")
        self.seed = int(seed)
        self.block_size = None if block_size is None else _positive_int(block_size, "block_size")
        self.drop_remainder = bool(drop_remainder)
        if x is None:
            raise InvalidArgumentError("x must name at least one array of the dataset, got None")
        self._x = self._resolve(x, "x")
        self._y = None if y is None else self._resolve(y, "y")
        if sample_weight is not None and y is None:
            raise InvalidArgumentError("sample_weight needs y: Keras takes (x, y, sample_weight)")
        self._w = None if sample_weight is None else self._resolve(sample_weight, "sample_weight")
        self._check_arrays()
        self._check_lengths()
        self._dtypes = self._resolve_dtypes(dtype)
        if transform is not None and not callable(transform):
            raise InvalidArgumentError(f"transform must be callable, got {transform!r:.80}")
        if transform is not None and use_multiprocessing and workers > 0:
            try:
                pickle.dumps(transform)
            except Exception as e:
                raise InvalidArgumentError(
                    f"transform {transform!r:.80} cannot be pickled ({type(e).__name__}: {e}), but "
                    "use_multiprocessing=True sends it to worker processes. Define it as a "
                    "module-level function (or a functools.partial of one), or use threads "
                    "(use_multiprocessing=False)."
                ) from None
        self.transform = transform
        total = len(self._first_leaf())
        start, stop = (0, total) if _rows is None else _rows
        if not 0 <= start <= stop <= total:
            raise InvalidArgumentError(f"row range [{start}, {stop}) is outside [0, {total})")
        self._start, self._stop = int(start), int(stop)
        self._options = dict(
            x=x, y=y, sample_weight=sample_weight, batch_size=batch_size, shuffle=shuffle,
            seed=seed, block_size=block_size, drop_remainder=drop_remainder,
            transform=transform, dtype=dtype, workers=workers,
            use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
        )
        self.epoch = 0
        self._in_epoch = False
        self._pid = os.getpid()
        if self.use_multiprocessing and self.workers > 0:
            _watchdog.install()  # before Keras starts a pool (it may start before on_epoch_begin)
        # Batch buffers are reused once Keras has let go of them (see _pool.py).
        self._pool = BufferPool()

    # -- structure of a batch

    def _resolve(self, spec: Any, what: str) -> Any:
        """Replace every array name in ``spec`` by its :class:`ShardedArray` (or ``RaggedArray``)."""
        if isinstance(spec, _ARRAYS):
            return spec
        if isinstance(spec, str):
            if spec not in self.dataset:
                raise InvalidArgumentError(
                    f"{what}: unknown array {spec!r}; the dataset at {self.dataset.path} has "
                    f"{self.dataset.names}"
                )
            return self.dataset[spec]
        if isinstance(spec, Mapping):
            if not spec:
                raise InvalidArgumentError(f"{what} must not be an empty dict")
            return {str(k): self._resolve(v, what) for k, v in spec.items()}
        if isinstance(spec, (list, tuple)):
            if not spec:
                raise InvalidArgumentError(f"{what} must not be an empty list")
            return tuple(self._resolve(v, what) for v in spec)
        raise InvalidArgumentError(
            f"{what} must be an array name, a list of names or a dict of names, got {spec!r:.80}"
        )

    def _leaves(self) -> list[ShardedArray]:
        """Every array of ``x``, ``y`` and ``sample_weight``, in order."""
        return [a for s in (self._x, self._y, self._w) if s is not None for a in _flatten(s)]

    def _check_arrays(self) -> None:
        """Refuse ragged arrays: they need padding (``RaggedSequence``)."""
        ragged = [a.name for a in self._leaves() if a.ragged]
        if ragged:
            raise InvalidArgumentError(
                f"arrays {ragged} are ragged (rows of different lengths); ShardSequence batches "
                "fixed-size rows only: use npyseq.RaggedSequence, which pads each batch"
            )

    def _first_leaf(self) -> ShardedArray:
        return self._leaves()[0]

    def _check_lengths(self) -> None:
        lengths = {f"{a.name} ({a.dataset.path})": len(a) for a in self._leaves()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgumentError(f"all arrays must have the same number of rows, got {lengths}")

    def _resolve_dtypes(self, dtype: Any) -> dict[tuple[str, str], np.dtype]:
        """Map each array's key to the dtype its batches are cast to."""
        out = {}
        if dtype is None:
            return out
        leaves = self._leaves()
        if isinstance(dtype, Mapping):
            names = {a.name for a in leaves}
            for name, d in dtype.items():
                if name not in names:
                    raise InvalidArgumentError(
                        f"dtype: {name!r} is not an array this sequence reads ({sorted(names)})"
                    )
            for a in leaves:
                if a.name in dtype:
                    out[_key(a)] = _dtype(dtype[a.name])
            return out
        target = _dtype(dtype)
        for a in leaves:
            if _is_float(a.dtype):
                out[_key(a)] = target
        return out

    # -- Keras PyDataset API

    @property
    def num_rows(self) -> int:
        """Rows this sequence covers (after ``split``/``subset``/``shard``)."""
        return self._stop - self._start

    @property
    def num_batches(self) -> int:
        return order.num_batches(self.num_rows, self.batch_size, self.drop_remainder)

    def __len__(self) -> int:
        return self.num_batches

    def batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Dataset row indices of batch ``index`` of ``epoch`` (default: the current epoch)."""
        rows = order.batch_indices(
            self.num_rows, self.batch_size, index, shuffle=self.shuffle, seed=self.seed,
            epoch=self.epoch if epoch is None else epoch, block_size=self.block_size,
            drop_remainder=self.drop_remainder,
        )
        return rows + self._start if self._start else rows

    def __getitem__(self, index: int):
        if self._pid != os.getpid():  # first batch in a worker process of Keras' pool
            _watchdog.prepare_worker()
            self._pid = os.getpid()
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool) and index < 0:
            index += self.num_batches
        epoch = self.epoch
        batch = self._batch(self.batch_rows(index, epoch))
        if self.transform is not None:
            seq = np.random.SeedSequence([self.seed & (2**64 - 1), epoch, int(index), _RNG_TAG])
            batch = self.transform(batch, np.random.default_rng(seq))
        return batch

    def _batch(self, rows: np.ndarray) -> tuple:
        """``(x,)``, ``(x, y)`` or ``(x, y, w)`` of the dataset rows ``rows``."""
        n = len(rows)
        # Rows in one range (dataset order, "batches" mode) are read as slices.
        span = (int(rows[0]), int(rows[-1]) + 1) if n and rows[-1] - rows[0] + 1 == n else None
        cache: dict[tuple[str, str], np.ndarray] = {}
        located: dict = {}  # id of a dataset -> where the rows are in its shards, for all its arrays

        def read(array: ShardedArray) -> np.ndarray:
            key = _key(array)
            data = cache.get(key)
            if data is None:
                data = self._read(array, rows, span, located)
                target = self._dtypes.get(key)
                if target is not None and data.dtype != target:
                    data = data.astype(target)
                cache[key] = data
            return data

        batch = (_build(self._x, read),)
        if self._y is not None:
            batch += (_build(self._y, read),)
        if self._w is not None:
            batch += (_build(self._w, read),)
        return batch

    def _read(self, array: ShardedArray, rows: np.ndarray, span: tuple[int, int] | None,
              located: dict) -> np.ndarray:
        """The rows ``rows`` of one array, into a pooled buffer."""
        n = len(rows)
        info, ds = array._info, array.dataset
        raw = self._pool.empty(n * info.row_bytes)
        if span and ds._map_reads and info.row_bytes:
            # The common case (dataset order, or "batches"): one slice of one
            # mapped shard, copied with none of read()'s general checks.
            k = bisect.bisect_right(ds._starts, span[0]) - 1
            first = ds._starts[k]
            if span[1] <= ds._starts[k + 1]:
                stored = raw.view(info.dtype).reshape((n,) + info.shape)
                np.copyto(stored, ds._shard(array.name, k).array[span[0] - first:span[1] - first])
                return stored if array.dtype == info.dtype else stored.view(array.dtype)
        out = raw.view(array.dtype).reshape((n,) + array.shape[1:])
        if span:
            return array.read(*span, out=out)
        if ds._map_reads and n and id(ds) not in located:
            located[id(ds)] = ds._locate(rows)
        return array._take(rows, out, located.get(id(ds)))

    def on_epoch_begin(self) -> None:
        self._in_epoch = True
        if self.use_multiprocessing and self.workers > 0:
            # Keras waits forever for a batch of a worker process that died;
            # the watchdog turns that into a WorkerDiedError (see _watchdog).
            _watchdog.watch(self)

    def on_epoch_end(self) -> None:
        _watchdog.unwatch(self)
        # Keras also calls on_epoch_end before the first epoch (and twice per
        # validation pass); only the end of an epoch that began advances it.
        if self._in_epoch:
            self.epoch += 1
            self._in_epoch = False

    # -- views over row ranges

    def subset(self, start: int, stop: int) -> "ShardSequence":
        """A sequence over rows ``[start, stop)`` of this one (no copy)."""
        n = self.num_rows
        for name, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidArgumentError(f"{name} must be an int, got {v!r}")
        if not 0 <= start <= stop <= n:
            raise InvalidArgumentError(f"subset needs 0 <= start <= stop <= {n}, got start={start}, stop={stop}")
        return self._with_rows(self._start + int(start), self._start + int(stop))

    def split(self, fraction_or_rows: float | int) -> tuple["ShardSequence", "ShardSequence"]:
        """Two sequences over disjoint row ranges: the first ``fraction`` (or ``rows``) and the rest.

        >>> train, val = seq.split(0.9)   # or seq.split(90_000)
        """
        n = self.num_rows
        v = fraction_or_rows
        if isinstance(v, float) and 0.0 < v < 1.0:
            k = int(round(v * n))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= n:
            k = int(v)
        else:
            raise InvalidArgumentError(
                f"split takes a fraction in (0, 1) or a row count in [0, {n}], got {fraction_or_rows!r}"
            )
        return self.subset(0, k), self.subset(k, n)

    def shard(self, num_shards: int, index: int) -> "ShardSequence":
        """Rows of host ``index`` of ``num_shards`` hosts: disjoint, equal sizes.

        Each host gets ``num_rows // num_shards`` contiguous rows, so every
        host runs the same number of batches; the last ``num_rows % num_shards``
        rows are left out.
        """
        start, stop = order.host_rows(self.num_rows, order.HostShard(num_shards, index))
        return self.subset(start, stop)

    def _with_rows(self, start: int, stop: int) -> "ShardSequence":
        return type(self)(self.dataset, _rows=(start, stop), **self._options)

    def __repr__(self) -> str:
        return (f"<npyseq.ShardSequence rows [{self._start}, {self._stop}) of {self.dataset.path!r} "
                f"batch_size={self.batch_size} shuffle={self.shuffle!r} seed={self.seed} "
                f"epoch={self.epoch} batches={self.num_batches}>")


def _key(array: ShardedArray) -> tuple[str, str]:
    # Stable across pickling into workers, unlike id().
    return array.dataset.path, array.name


def _is_float(dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return True
    return getattr(dtype.type, "__module__", "").startswith("ml_dtypes") and "float" in dtype.name


def _dtype(value: Any) -> np.dtype:
    try:
        return np.dtype(value)
    except TypeError:
        raise InvalidArgumentError(f"dtype {value!r} is not a numpy dtype") from None


def _flatten(spec: Any) -> list:
    """The arrays of a resolved ``x``/``y``/``sample_weight`` spec, in order."""
    if isinstance(spec, _ARRAYS):
        return [spec]
    parts = spec.values() if isinstance(spec, dict) else spec
    return [leaf for part in parts for leaf in _flatten(part)]


def _build(spec: Any, read: Callable[[ShardedArray], np.ndarray]) -> Any:
    if isinstance(spec, _ARRAYS):
        return read(spec)
    if isinstance(spec, dict):
        return {k: _build(v, read) for k, v in spec.items()}
    return tuple(_build(v, read) for v in spec)
