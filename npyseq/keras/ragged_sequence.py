"""``keras.utils.PyDataset`` over datasets with ragged (variable-length) arrays: :class:`RaggedSequence`.

A :class:`RaggedSequence` is a :class:`npyseq.ShardSequence` whose ragged
arrays come out padded per batch, with optional length bucketing
(:mod:`npyseq.order.bucketing`). It extends :class:`~npyseq.ShardSequence`
through two hooks, ``_batch`` and ``_read``, and takes its arguments as
``**options``. Like :mod:`npyseq.keras.sequence` it imports ``keras`` only,
never a backend, and ``__getitem__`` is NumPy and file I/O alone.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Mapping

import numpy as np

from npyseq.arguments import flag, positive_int, short_repr
from npyseq.errors import InvalidArgumentError
from npyseq.keras.sequence import ShardSequence
from npyseq.keras.structure import ARRAYS, flatten
from npyseq.order import bucketing
from npyseq.format.npy import row_bytes
from npyseq.storage.dataset import Dataset
from npyseq.storage.ragged_array import RaggedArray, check_pad_value

__all__ = ["RaggedSequence"]

_SIDES = ("post", "pre")  # where padding goes, and which end truncating cuts
# The keyword arguments RaggedSequence passes on to ShardSequence.
_SHARD_OPTIONS = frozenset(p.name for p in inspect.signature(ShardSequence.__init__).parameters.values()
                           if p.kind is p.KEYWORD_ONLY)


def _check_side(value: Any, argument: str) -> str:
    """``value`` if it is ``"post"`` or ``"pre"``, for ``padding`` and ``truncating``."""
    if not (isinstance(value, str) and value in _SIDES):
        raise InvalidArgumentError(f"{argument} must be 'post' or 'pre', got {short_repr(value)}")
    return value


class RaggedSequence(ShardSequence):
    """Batches of a dataset with ragged arrays, each padded to the batch's longest sample.

    Takes every argument of :class:`npyseq.ShardSequence`, with the same
    meaning (``**options``: ``batch_size``, ``shuffle``, ``seed``, ``workers``
    and the rest, as keywords), plus the ragged options below; any array of
    ``x``, ``y`` or ``sample_weight`` may be ragged. A
    ragged array of element shape ``s`` comes out as one array of shape
    ``(batch, L) + s``, where ``L`` is the length of the longest sample of
    the batch (at least 1), rounded up to a multiple of ``pad_to_multiple``,
    then capped at ``max_length``. Fixed-size arrays come out exactly as
    from ``ShardSequence``.
    On several hosts (``shard``) each host's part of a global batch is padded
    to the length of the whole global batch, so every host's batch has the
    same shape, as Keras needs, and equals its rows of the unsharded batch.

    With ``pad_value=0`` the padded batches work with Keras masking
    (``Embedding(mask_zero=True)``) when 0 is not a real token id. Layers
    that take an explicit mask get one from ``return_mask=True``.

    Args:
        padding: ``"post"`` pads after each sample, ``"pre"`` before it.
        truncating: for samples longer than ``max_length``, ``"post"`` keeps
            the first ``max_length`` items, ``"pre"`` the last ones.
        pad_value: the value of padded positions, one for every ragged
            array or ``{array_name: value}`` (arrays left out pad with 0).
        max_length: the longest a batch gets; longer samples are truncated.
            ``None``: no cap.
        pad_to_multiple: round each batch's length up to a multiple of
            this (fewer distinct shapes, so fewer retracings under
            ``jit_compile``); ``max_length`` still caps it.
        return_mask: add to ``x`` a boolean mask of shape ``(batch, L)``,
            ``True`` at real (kept) items, for each ragged input.
        return_lengths: add to ``x`` the int32 kept length of each sample,
            shape ``(batch,)``, for each ragged input.
        bucket: group samples of similar lengths into batches (see
            :mod:`npyseq.order.bucketing`): pools of ``bucket_pool`` consecutive
            batches of the ``shuffle`` order are sorted by length and cut
            into batches, whose order within the pool is shuffled. Every
            row is still used once per epoch, in an order that depends on
            ``(seed, epoch)`` only. With ``shuffle=False`` the batches come
            sorted by length within each pool, so ``predict`` outputs are
            not in dataset order. The validation part of ``split`` keeps
            bucketing (with ``shuffle=False``): ``evaluate`` pads less,
            ``predict`` returns rows in ``batch_rows`` order.
        bucket_pool: batches per pool. Larger pools pad less and mix less;
            computing a pool costs ``O(batch_size * bucket_pool)`` in the
            process that serves its first batch.
        bucket_by: the ragged array whose lengths bucket the rows (default:
            the first ragged array of ``x``, ``y``, ``sample_weight``); it
            need not be an input.

    Where the mask and lengths go, for ``return_mask``/``return_lengths``:

    - ``x="tokens"`` (one array): ``x`` becomes the tuple ``(tokens, mask)``,
      ``(tokens, lengths)`` or ``(tokens, mask, lengths)``: a model with
      ``inputs=[tokens_in, mask_in]``.
    - ``x=["a", "b"]``: the inputs, then the masks of the ragged ones, then
      their lengths, in order.
    - ``x={"tokens": "tok", ...}``: extra keys ``"tokens_mask"`` and
      ``"tokens_lengths"`` (named after the input, not the array).

    Example:

    >>> ds = npyseq.open_shards("data/reviews")     # "tokens" ragged, "label" fixed
    >>> seq = npyseq.RaggedSequence(ds, x="tokens", y="label", batch_size=64,
    ...                             shuffle="global", bucket=True, max_length=512)
    >>> model = keras.Sequential([
    ...     keras.Input((None,), dtype="int32"),
    ...     keras.layers.Embedding(vocab_size, 64, mask_zero=True),
    ...     keras.layers.LSTM(64),
    ...     keras.layers.Dense(1, activation="sigmoid")])
    >>> model.compile("adam", "binary_crossentropy")
    >>> model.fit(seq, epochs=3, shuffle=False)   # the sequence shuffles itself

    Memory and cost: each process that pads or buckets keeps the lengths of
    every row of the arrays it reads (``RaggedArray.lengths``: 8 bytes per
    row, read once from the offsets files), plus its last few sorted pools
    (8 bytes per row of a pool). Computing a pool takes about 1 ms per 6,400
    rows under ``shuffle="global"``; consecutive batches share a pool, but
    ``fit(shuffle=True)``, Keras' default, asks for batches in random order,
    so pass ``shuffle=False`` to ``fit`` and let the sequence shuffle.
    """

    def __init__(
        self,
        dataset: Dataset | str | os.PathLike,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        padding: str = "post",
        truncating: str = "post",
        pad_value: Any = 0,
        max_length: int | None = None,
        pad_to_multiple: int | None = None,
        return_mask: bool = False,
        return_lengths: bool = False,
        bucket: bool = False,
        bucket_pool: int = bucketing.DEFAULT_BUCKET_POOL,
        bucket_by: str | None = None,
        **options: Any,
    ):
        unknown = sorted(set(options) - _SHARD_OPTIONS)
        if unknown:
            raise TypeError(f"RaggedSequence() got an unexpected keyword argument {unknown[0]!r}")
        self.padding, self.truncating = _check_side(padding, "padding"), _check_side(truncating, "truncating")
        self.max_length = None if max_length is None else positive_int(max_length, "max_length")
        self.pad_to_multiple = None if pad_to_multiple is None else positive_int(pad_to_multiple, "pad_to_multiple")
        self.return_mask, self.return_lengths = flag(return_mask, "return_mask"), flag(return_lengths, "return_lengths")
        self.bucket = flag(bucket, "bucket")
        self.bucket_pool = positive_int(bucket_pool, "bucket_pool")
        if bucket_by is not None and not bucket:
            raise InvalidArgumentError(f"bucket_by={bucket_by!r} needs bucket=True")
        super().__init__(dataset, x, y, sample_weight, **options)
        ragged = [a for a in self._leaves() if a.ragged]
        self._pad_values = _resolve_pad_values(pad_value, ragged)
        self._bucket_key = self._resolve_bucket_by(bucket_by, ragged) if bucket else None
        self._check_extras()

    # -- structure of a batch

    def _check_arrays(self) -> None:
        if not any(a.ragged for a in self._leaves()):
            raise InvalidArgumentError(
                f"RaggedSequence needs a ragged array among x, y and sample_weight, got only fixed-size "
                f"arrays {sorted({a.name for a in self._leaves()})}; use npyseq.ShardSequence for those"
            )

    def _resolve_bucket_by(self, bucket_by: Any, ragged: list) -> RaggedArray:
        if bucket_by is None:
            return ragged[0]
        if not isinstance(bucket_by, str) or bucket_by not in self.dataset:
            raise InvalidArgumentError(
                f"bucket_by must name a ragged array of the dataset at {self.dataset.path} "
                f"({self.dataset.names}), got {bucket_by!r}"
            )
        array = self.dataset[bucket_by]
        if not isinstance(array, RaggedArray):
            raise InvalidArgumentError(
                f"bucket_by={bucket_by!r} is a fixed-size array (every row has shape {array.shape[1:]}); "
                "bucketing needs a ragged array to take lengths from"
            )
        return array

    def _check_extras(self) -> None:
        """Check that ``return_mask``/``return_lengths`` have somewhere to go."""
        if not (self.return_mask or self.return_lengths):
            return
        what = "return_mask" if self.return_mask else "return_lengths"
        x = self._x
        entries = x.values() if isinstance(x, dict) else x if isinstance(x, tuple) else [x]
        if not all(isinstance(v, ARRAYS) for v in entries):
            raise InvalidArgumentError(
                f"{what} needs x to be an array name, a list of names or a dict of names, not a nested structure"
            )
        if not any(isinstance(a, RaggedArray) for a in flatten(x)):
            names = [a.name for a in flatten(x)]
            raise InvalidArgumentError(f"{what}=True but no array of x is ragged: x reads {names}")
        if isinstance(x, dict):
            for name, array in x.items():
                for suffix, on in (("_mask", self.return_mask), ("_lengths", self.return_lengths)):
                    if on and isinstance(array, RaggedArray) and name + suffix in x:
                        raise InvalidArgumentError(
                            f"{what}: x already has an input named {name + suffix!r}, where the "
                            f"{suffix[1:]} of {name!r} would go; rename that input"
                        )

    def _batch_length(self, longest: int) -> int:
        length = max(int(longest), 1)  # a time axis of 0 breaks most layers
        if self.pad_to_multiple is not None:
            length = -(-length // self.pad_to_multiple) * self.pad_to_multiple
        if self.max_length is not None:
            length = min(length, self.max_length)
        return length

    # -- Keras PyDataset API

    def _pass_rows(self, pass_: int, batch: int) -> np.ndarray:
        """Dataset row indices of batch ``batch`` of pass ``pass_``, bucketed when ``bucket``."""
        if not self.bucket:
            return super()._pass_rows(pass_, batch)
        args = (self.num_rows, self.batch_size)
        options = dict(bucket_pool=self.bucket_pool, shuffle=self.shuffle, seed=self.seed, epoch=pass_,
                       drop_remainder=self.drop_remainder)
        pool, slot = bucketing.locate(*args, batch, **options)
        ordered = _sorted_pool(self._bucket_key, self._rows, *args, pool, block_size=self.block_size, **options)
        return np.sort(ordered[slot * self.batch_size:(slot + 1) * self.batch_size])

    def _batch(self, rows: np.ndarray, whole: np.ndarray | None = None) -> tuple:
        batch = super()._batch(rows, whole)
        if self.return_mask or self.return_lengths:
            batch = (self._with_extras(batch[0], rows),) + batch[1:]
        return batch

    def _read(self, array, rows: np.ndarray, span, located: dict, whole: np.ndarray | None = None) -> np.ndarray:
        if not array.ragged:
            return super()._read(array, rows, span, located, whole)
        # Padded to the length of the global batch (every host's part has the same shape), into a reused buffer.
        length = self._batch_length(array.lengths(rows if whole is None else whole).max(initial=0))
        shape = (len(rows), length) + tuple(array.element_shape)
        out = self._pool.empty(row_bytes(array.dtype, shape)).view(array.dtype).reshape(shape)
        return array.padded(rows, length=length, pad_value=self._pad_values.get(array.name, 0),
                            padding=self.padding, truncating=self.truncating, out=out)[0]

    def _with_extras(self, x: Any, rows: np.ndarray) -> Any:
        """``x`` with the masks and lengths of its ragged inputs added (see the class docstring)."""

        def kept(array: RaggedArray, padded: np.ndarray) -> np.ndarray:
            return np.minimum(array.lengths(rows), padded.shape[1])

        if isinstance(self._x, dict):
            out = dict(x)
            for name, array in self._x.items():
                if isinstance(array, RaggedArray):
                    lengths = kept(array, x[name])
                    if self.return_mask:
                        out[name + "_mask"] = self._mask(lengths, x[name].shape[1])
                    if self.return_lengths:
                        out[name + "_lengths"] = lengths.astype(np.int32)
            return out
        single = isinstance(self._x, ARRAYS)
        arrays, inputs = ((self._x,), (x,)) if single else (self._x, x)
        ragged = [(array, value) for array, value in zip(arrays, inputs) if isinstance(array, RaggedArray)]
        masks = [self._mask(kept(a, v), v.shape[1]) for a, v in ragged] if self.return_mask else []
        lengths = [kept(a, v).astype(np.int32) for a, v in ragged] if self.return_lengths else []
        return tuple(inputs) + tuple(masks) + tuple(lengths)

    def _mask(self, lengths: np.ndarray, length: int) -> np.ndarray:
        positions = np.arange(length)
        if self.padding == "post":
            return positions < lengths[:, None]
        return positions >= (length - lengths)[:, None]

    def order_fingerprint(self) -> dict:
        fingerprint = super().order_fingerprint()
        if self.bucket:  # bucketing reorders the rows of each pool
            fingerprint.update(bucket_pool=self.bucket_pool, bucket_by=self._bucket_key.name)
        return fingerprint

    def _repr_fields(self) -> list[tuple[str, str]]:
        fields = super()._repr_fields()
        if self.bucket:
            fields += [("bucket_pool", str(self.bucket_pool)), ("bucket_by", repr(self._bucket_key.name))]
        return fields


# Pools of the last few batches asked for; a pool serves bucket_pool batches,
# which come one after another unless fit(shuffle=True) reorders them.
@functools.lru_cache(maxsize=8)
def _sorted_pool(key: RaggedArray, selection, rows: int, batch_size: int, pool: int, *,
                 bucket_pool: int, shuffle: Any, seed: int, epoch: int, block_size: int | None,
                 drop_remainder: bool) -> np.ndarray:
    """Dataset rows of ``pool`` (positions of ``selection``), stable-sorted by their lengths in ``key``."""
    members = bucketing.pool_rows(rows, batch_size, pool, bucket_pool=bucket_pool, shuffle=shuffle, seed=seed,
                                  epoch=epoch, block_size=block_size, drop_remainder=drop_remainder)
    members = selection.rows(members)
    return bucketing.sort_by_length(members, key.lengths(members))


def _resolve_pad_values(pad_value: Any, ragged: list) -> dict[str, Any]:
    names = sorted({a.name for a in ragged})
    if isinstance(pad_value, Mapping):
        unknown = sorted(set(pad_value) - set(names))
        if unknown:
            raise InvalidArgumentError(f"pad_value: {unknown} are not ragged arrays this sequence reads ({names})")
        values = dict(pad_value)
    else:
        values = {name: pad_value for name in names}
    dtypes = {a.name: a.dtype for a in ragged}
    for name, value in values.items():
        check_pad_value(value, dtypes[name], name)
    return values


def _signature() -> inspect.Signature:
    """The signature ``help`` and ``inspect`` show: ``**options`` spelled out as ShardSequence's keywords."""
    own = list(inspect.signature(RaggedSequence.__init__).parameters.values())
    inherited = [p for p in inspect.signature(ShardSequence.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    positional = [p for p in own if p.kind is p.POSITIONAL_OR_KEYWORD]
    ragged = [p for p in own if p.kind is p.KEYWORD_ONLY]
    return inspect.Signature(positional + inherited + ragged)


RaggedSequence.__init__.__signature__ = _signature()
