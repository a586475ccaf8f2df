"""``keras.utils.PyDataset`` classes over sharded datasets: :class:`ShardSequence`.

It lives in :mod:`npyseq.keras` (``import npyseq`` loads it on first use) and
imports ``keras`` only, never a backend: ``__getitem__`` is NumPy and file I/O
alone, safe in thread and process workers on TensorFlow, JAX and torch.
What a batch holds is :mod:`~npyseq.keras.structure`'s, its settings and rows
are :mod:`~npyseq.keras.options`', its order is :mod:`npyseq.order`'s.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Callable

import keras
import numpy as np

from npyseq import order
from npyseq.arguments import flag, non_negative_int, positive_int
from npyseq.errors import EmptySequenceError, InvalidArgumentError
from npyseq.keras import fit_frame, hosts, transport, watchdog
from npyseq.keras import start_method as start_methods
from npyseq.keras.options import Options, Rows
from npyseq.keras.pool import BufferPool
from npyseq.keras.views import SequenceViews
from npyseq.keras.structure import array_key, build, flatten, resolve, resolve_dtypes
from npyseq.keras.worker import check_transformed, sendable
from npyseq.storage.arrays import ShardedArray
from npyseq.storage.dataset import Dataset, open_shards

__all__ = ["ShardSequence"]

_RNG_TAG = 0x5EED  # keys the generator a transform gets apart from the shuffles


def _option(name: str) -> property:
    def get(self):
        return getattr(self._options, name)

    def set(self, value):
        self._options = self._checked_options(dataclasses.replace(self._options, **{name: value}),
                                              self._rows, f"setting {name}={value!r:.80}")

    return property(get, set, doc=f"The sequence's ``{name}`` (checked when set; later views use it).")


class ShardSequence(SequenceViews, keras.utils.PyDataset):
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
            ``keras.utils.PyDataset``; ``max_queue_size`` defaults to 4
            (Keras: 10). Which to use: docs/guide.md, "Workers".
        start_method: how the worker processes start (``use_multiprocessing``):
            ``"fork"``, ``"spawn"`` or ``"forkserver"``. ``None`` (the default)
            is Keras' choice, but ``"forkserver"`` on JAX, where a forked
            worker can deadlock (see docs/guide.md, "Workers, processes,
            start methods").
        steps_per_epoch: batches per Keras epoch; ``None``: one pass over
            the rows. A pass then spans several Keras epochs (or an epoch
            several passes) and every row is still used once per pass: batch
            ``i`` of epoch ``e`` is batch ``s % n`` of pass ``s // n``, with
            ``s = e * steps_per_epoch + i``. Use it instead of
            ``fit(steps_per_epoch=...)``, which repeats and skips rows.
        shared_memory: process workers send batches through shared memory
            (``False``: pickled, as Keras does); see the guide's workers part.

    ``seed`` is an int in ``[0, 2**64)``; the settings ``batch_size`` to
    ``steps_per_epoch`` may be set on the sequence later (each is checked;
    later views take them). A sequence without a batch is refused
    (:class:`~npyseq.EmptySequenceError`).

    Example:

    >>> ds = npyseq.open_shards("data/train")
    >>> seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=256,
    ...                            shuffle="global", seed=0, workers=2)
    >>> train, val = seq.split(0.9)          # val: in order, whole, untransformed
    >>> model.fit(train, validation_data=val, epochs=5)

    ``seq.epoch`` (a non-negative int) is the Keras epoch whose order the
    next batches follow. It advances at the end of each epoch ``fit`` runs;
    :class:`npyseq.BackupAndRestore` sets it from Keras and resumes at the
    exact batch (docs/guide.md, "Epochs and resuming").
    """

    batch_size = _option("batch_size")
    shuffle = _option("shuffle")
    seed = _option("seed")
    block_size = _option("block_size")
    drop_remainder = _option("drop_remainder")
    transform = _option("transform")
    steps_per_epoch = _option("steps_per_epoch")

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
        start_method: str | None = None,
        steps_per_epoch: int | None = None,
        shared_memory: bool = True,
    ):
        super().__init__(workers=non_negative_int(workers, "workers"),
                         use_multiprocessing=flag(use_multiprocessing, "use_multiprocessing"),
                         max_queue_size=positive_int(max_queue_size, "max_queue_size"))
        self.start_method = start_method
        self.shared_memory = flag(shared_memory, "shared_memory")
        if not isinstance(dataset, Dataset):
            if isinstance(dataset, (str, os.PathLike)):
                dataset = open_shards(dataset)
            else:
                raise InvalidArgumentError(
                    f"dataset must be an npyseq.Dataset or a dataset folder path, got {type(dataset).__name__}"
                )
        self.dataset = dataset
        options = Options(batch_size, shuffle, seed, block_size, drop_remainder, transform, steps_per_epoch)
        if x is None:
            raise InvalidArgumentError("x must name at least one array of the dataset, got None")
        self._x = resolve(x, dataset, "x")
        self._y = None if y is None else resolve(y, dataset, "y")
        if sample_weight is not None and y is None:
            raise InvalidArgumentError("sample_weight needs y: Keras takes (x, y, sample_weight)")
        self._w = None if sample_weight is None else resolve(sample_weight, dataset, "sample_weight")
        self._check_arrays()
        self._check_lengths()
        self._dtypes = resolve_dtypes(dtype, self._leaves())
        rows = Rows(0, len(self._leaves()[0]))
        self._host = None  # a HostSlice once sharded (see shard)
        self._options = self._checked_options(options, rows, type(self).__name__)
        self._rows = rows
        self._reset_state()
        if self.use_multiprocessing and self.workers > 0:
            # Before Keras makes its enqueuer and pool (the pool may start
            # before on_epoch_begin): the watchdog notes each pool's workers,
            # and the pool of a sequence starts with its start method.
            watchdog.install()
            start_methods.install()

    def _reset_state(self) -> None:
        """The state of a new sequence (or view): epoch 0, this process, its own buffers."""
        self._epoch = 0
        self._skip = 0  # batches of the current epoch trained before a resume (resume_at)
        self._in_epoch = False
        self._pid = os.getpid()
        self._in_worker = False
        # Batch buffers are reused once Keras has let go of them (see pool.py).
        self._pool = BufferPool()

    def _checked_options(self, options: Options, rows: Rows, what: str) -> Options:
        """``options`` if this sequence can use them over ``rows``; else an npyseq error naming ``what``."""
        transform = options.transform
        if transform is not None and self.use_multiprocessing and self.workers > 0:
            try:
                pickle.dumps(transform)
            except Exception as e:
                raise InvalidArgumentError(
                    f"transform {transform!r:.80} cannot be pickled ({type(e).__name__}: {e}), but "
                    "use_multiprocessing=True sends it to worker processes. Define it as a "
                    "module-level function (or a functools.partial of one), or use threads "
                    "(use_multiprocessing=False)."
                ) from None
        if order.num_batches(rows.count, options.batch_size, options.drop_remainder) == 0:
            fix = (f"use batch_size <= {rows.count} or drop_remainder=False" if rows.count
                   else "give it at least one row")
            raise EmptySequenceError(
                f"{what}: the sequence would have no batch: {rows.count} rows ({rows.describe()} of the "
                f"dataset at {self.dataset.path}), batch_size={options.batch_size}, "
                f"drop_remainder={options.drop_remainder}; Keras refuses a dataset of length 0: {fix}"
            )
        order.hosts.check_hosts(rows.count, options.batch_size, options.drop_remainder, self._host, what)
        return options

    @property
    def epoch(self) -> int:
        """The epoch whose order the next batches follow (a non-negative int)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = order.check_epoch(value)

    @property
    def start_method(self) -> str | None:
        """How worker processes start (``None``: Keras' choice, but not fork on JAX; see the class)."""
        return self._start_method

    @start_method.setter
    def start_method(self, value: str | None) -> None:
        self._start_method = start_methods.check(value)

    def _worker_start_method(self) -> str | None:
        """The start method for this sequence's next pool (None: leave it to Keras)."""
        return start_methods.choose(self._start_method, keras.backend.backend())

    # -- structure of a batch

    def _leaves(self) -> list[ShardedArray]:
        """Every array of ``x``, ``y`` and ``sample_weight``, in order."""
        return [a for s in (self._x, self._y, self._w) if s is not None for a in flatten(s)]

    def _check_arrays(self) -> None:
        """Refuse ragged arrays: they need padding (``RaggedSequence``)."""
        ragged = [a.name for a in self._leaves() if a.ragged]
        if ragged:
            raise InvalidArgumentError(
                f"arrays {ragged} are ragged (rows of different lengths); ShardSequence batches "
                "fixed-size rows only: use npyseq.RaggedSequence, which pads each batch"
            )

    def _check_lengths(self) -> None:
        lengths = {f"{a.name} ({a.dataset.path})": len(a) for a in self._leaves()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgumentError(f"all arrays must have the same number of rows, got {lengths}")

    # -- Keras PyDataset API

    @property
    def num_rows(self) -> int:
        """Rows this sequence covers (after ``split``/``subset``; ``shard`` keeps them all)."""
        return self._rows.count

    @property
    def batches_per_pass(self) -> int:
        """Global batches in one pass over the rows (``len(seq)`` unless ``steps_per_epoch`` or ``shard``)."""
        return order.num_batches(self.num_rows, self.batch_size, self.drop_remainder)

    @property
    def host(self) -> order.HostSlice | None:
        """Which part of every global batch this sequence serves (``shard``), or ``None``: all of it."""
        return self._host

    @property
    def num_batches(self) -> int:
        return order.hosts.num_items(self._epoch_length() - self._skip, self._host)

    def __len__(self) -> int:
        return self.num_batches

    def batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Dataset row indices (ascending) of batch ``index`` of ``epoch`` (default: the current epoch).

        Of a sharded sequence: this host's part of the global batch (see ``shard``).
        """
        return self._parts(index, self._epoch if epoch is None else epoch)[0]

    def _parts(self, index: int, epoch: int, skip: int = 0) -> tuple[np.ndarray, np.ndarray, tuple, int | None]:
        """``(rows, its global batch's rows, (pass, batch of the pass), host part or None)`` of item
        ``index`` of Keras epoch ``epoch``, whose item 0 is global batch ``skip`` of the epoch."""
        index = order.check_batch(index, order.hosts.num_items(self._epoch_length() - skip, self._host))
        whole, part = (index, None) if self._host is None else order.hosts.locate(index, self._host)
        at = self._locate(whole + skip, epoch)
        rows = self._pass_rows(*at)
        return (rows if part is None else order.hosts.host_part(rows, self._host, part)), rows, at, part

    def _epoch_length(self) -> int:
        """Global batches in a whole Keras epoch."""
        return order.position.epoch_length(self.batches_per_pass, self.steps_per_epoch)

    def global_batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Dataset rows (ascending) of global batch ``index`` of ``epoch``: the whole batch, whatever ``shard`` did."""
        return self._pass_rows(*self._locate(index, self._epoch if epoch is None else epoch))

    def _locate(self, index: int, epoch: int) -> tuple[int, int]:
        """``(pass, batch of the pass)`` of global batch ``index`` of Keras epoch ``epoch``."""
        index = order.check_batch(index, self._epoch_length())
        return order.position.locate(self.batches_per_pass, self.steps_per_epoch, order.check_epoch(epoch), index)

    def _pass_rows(self, pass_: int, batch: int) -> np.ndarray:
        """Dataset row indices of global batch ``batch`` of pass ``pass_`` (the order of ``(seed, pass_)``)."""
        o = self._options
        positions = order.batch_indices(self.num_rows, o.batch_size, batch, shuffle=o.shuffle, seed=o.seed,
                                        epoch=pass_, block_size=o.block_size, drop_remainder=o.drop_remainder)
        return self._dataset_rows(positions)

    def _dataset_rows(self, positions: np.ndarray) -> np.ndarray:
        """The dataset rows of this sequence's ``positions``, sorted when they are not one range."""
        span = self._rows.span
        if span is not None:
            return positions + span[0] if span[0] else positions
        rows = self._rows.rows(positions)
        rows.sort()  # order within a batch does not matter to SGD; sorted reads are faster
        return rows

    def __getitem__(self, index: int):
        # First batch in a worker process of Keras' pool, whatever its start method (under spawn
        # and forkserver the sequence arrives pickled): a pid check, not an after-fork reset.
        if self._pid != os.getpid():
            watchdog.prepare_worker()
            self._pid = os.getpid()
            self._in_worker = True
            if self.shared_memory:  # rows are read into shared memory, sent as a handle
                self._pool = transport.Arena(self._pool, self.workers, self.max_queue_size)
        if not self._in_worker:
            return self._get(index)
        try:
            batch = self._get(index)
        except Exception as e:
            sent = sendable(e, f"reading batch {index!r} of {self!r}")
            if sent is e:
                raise
        else:
            return self._pool.pack(batch) if self.shared_memory else batch
        # Raised outside the except clause, so it has no __context__: where tblib's reducers are
        # installed (TensorFlow installs them), the exception it replaces would be pickled with it.
        raise sent

    def _get(self, index: int):
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool) and index < 0:
            index = int(index) + self.num_batches
        options = self._options
        # Keras' item 0 of a resumed epoch is its global batch _skip (see resume_at).
        rows, whole_rows, (pass_, at), part = self._parts(index, self._epoch, self._skip)
        batch = self._batch(rows, whole_rows)
        if options.transform is not None:
            # A host's part of a global batch has its own generator (not one host's draws of the whole).
            key = [] if part is None or self._host.num_hosts == 1 else [self._host.num_hosts, part]
            seq = np.random.SeedSequence([options.seed, pass_, at, _RNG_TAG] + key)
            batch = check_transformed(options.transform(batch, np.random.default_rng(seq)),
                                       options.transform, at, pass_)
        return batch

    def _batch(self, rows: np.ndarray, whole: np.ndarray | None = None) -> tuple:
        """``(x,)``, ``(x, y)`` or ``(x, y, w)`` of the dataset rows ``rows`` (part of the global batch ``whole``)."""
        n = len(rows)
        # Rows in one range (dataset order, "batches" mode) are read as slices.
        span = (int(rows[0]), int(rows[-1]) + 1) if n and rows[-1] - rows[0] + 1 == n else None
        cache: dict[tuple[str, str], np.ndarray] = {}
        located: dict = {}  # id of a dataset -> where the rows are in its shards, for all its arrays

        def read(array: ShardedArray) -> np.ndarray:
            key = array_key(array)
            data = cache.get(key)
            if data is None:
                data = self._read(array, rows, span, located, whole)
                target = self._dtypes.get(key)
                if target is not None and data.dtype != target:
                    data = data.astype(target)
                cache[key] = data
            return data

        batch = (build(self._x, read),)
        if self._y is not None:
            batch += (build(self._y, read),)
        if self._w is not None:
            batch += (build(self._w, read),)
        return batch

    def _read(self, array: ShardedArray, rows: np.ndarray, span: tuple[int, int] | None,
              located: dict, whole: np.ndarray | None = None) -> np.ndarray:
        """The rows ``rows`` of one array, into a pooled buffer (``span``: the rows
        as a range when they are consecutive; ``located``: shared by the arrays of a batch;
        ``whole``: the global batch ``rows`` is part of, for RaggedSequence's padding)."""
        out = self._pool.empty(len(rows) * array.row_bytes).view(array.dtype)
        return array.gather(rows, out.reshape((len(rows),) + array.shape[1:]), located)

    def on_epoch_begin(self) -> None:
        if self._host is not None:
            hosts.check_distribution(self._host, repr(self))  # never sharded twice, nor not at all
        fit_frame.check_steps_per_epoch(self)  # fit(steps_per_epoch=k) below the epoch: refused, not repeated rows
        self._in_epoch = True
        if self.use_multiprocessing and self.workers > 0:
            # Keras waits forever for a batch of a worker process that died;
            # the watchdog turns that into a WorkerDiedError (see watchdog.py).
            start_methods.install()
            watchdog.watch(self)

    def on_epoch_end(self) -> None:
        watchdog.unwatch(self)
        if fit_frame.end_of_build_read() is not None:  # Keras read a batch to build the model: no epoch
            self._in_epoch = False
        # Keras also calls on_epoch_end before the first epoch (and twice per
        # validation pass); only the end of an epoch that began advances it.
        if self._in_epoch:
            self._epoch += 1
            self._skip = 0
            self._in_epoch = False

    def resume_at(self, epoch: int, batch: int) -> None:
        """Serve Keras epoch ``epoch`` from its batch ``batch`` on: ``seq[0]`` is that batch, ``len(seq)``
        the batches left; the epochs after it are whole. Set it before ``fit`` starts the epoch
        (:class:`npyseq.BackupAndRestore` does, from the steps the model has trained)."""
        self._epoch, self._skip = order.check_epoch(epoch), order.check_batch(batch, self._epoch_length())

    def order_fingerprint(self) -> dict:
        """What decides the order of the batches, as JSON values: a checkpoint records it and a
        resume with another one is refused (:class:`npyseq.BackupAndRestore`). ``"dataset_path"`` and
        ``"host"`` (a view's host slice, if any) are recorded but not compared."""
        o, rows = self._options, self._rows
        return {"dataset": f"manifest {self.dataset.checksum}", "dataset_path": self.dataset.path,
                "rows": rows.describe() if rows.span is not None else repr(rows),
                "num_rows": self.num_rows, "batch_size": o.batch_size, "shuffle": o.shuffle, "seed": o.seed,
                "block_size": o.block_size, "drop_remainder": o.drop_remainder,
                "steps_per_epoch": o.steps_per_epoch,
                "host": None if self._host is None else [self._host.num_hosts, self._host.index]}

    def __repr__(self) -> str:
        fields = " ".join(f"{name}={value}" for name, value in self._repr_fields())
        return f"<npyseq.{type(self).__name__} {self._rows.describe()} of {self.dataset.path!r} {fields}>"

    def _repr_fields(self) -> list[tuple[str, str]]:
        """``(name, value)`` of what ``repr`` shows after the rows; subclasses add theirs."""
        return [("batch_size", str(self.batch_size)), ("shuffle", repr(self.shuffle)), ("seed", str(self.seed)),
                ("epoch", str(self.epoch)), ("batches", str(self.num_batches))] + (
                    [] if self.steps_per_epoch is None else [("steps_per_epoch", str(self.steps_per_epoch))]) + (
                    [] if self._host is None else [("host", repr(self._host.describe()))])

