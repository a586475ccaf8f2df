"""The structure of a batch: what ``x``, ``y`` and ``sample_weight`` name, and how a batch is built.

A *spec* is an array name, a list of specs (several inputs) or a dict
``{input_name: spec}`` (a named multi-input model); an array of the dataset
(:class:`npyseq.ShardedArray`, :class:`npyseq.RaggedArray`) may stand for a
name. :func:`resolve` replaces every name by its array, :func:`flatten` lists
the arrays of a resolved spec in order, and :func:`build` makes the part of a
batch a spec describes, reading each array with a function it is given.

Batches are cast per array (``dtype=`` of :class:`npyseq.ShardSequence`):
:func:`resolve_dtypes` maps the :func:`array_key` of each array to its
target dtype. A key is ``(dataset path, array name)``: stable across
pickling into worker processes, unlike ``id()``.

For example, ``x={"image": "img", "extra": ["a", "b"]}`` resolves to
``{"image": <array img>, "extra": (<array a>, <array b>)}``, flattens to
``[img, a, b]`` and builds ``{"image": img[rows], "extra": (a[rows], b[rows])}``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from npyseq.errors import InvalidArgumentError
from npyseq.storage.ragged_array import RaggedArray
from npyseq.storage.arrays import ShardedArray
from npyseq.storage.dataset import Dataset

__all__ = ["ARRAYS", "resolve", "flatten", "build", "array_key", "resolve_dtypes"]

ARRAYS = (ShardedArray, RaggedArray)


def resolve(spec: Any, dataset: Dataset, what: str) -> Any:
    """``spec`` with every array name replaced by the array of ``dataset``; ``what`` names the argument."""
    if isinstance(spec, ARRAYS):
        return spec
    if isinstance(spec, str):
        if spec not in dataset:
            raise InvalidArgumentError(
                f"{what}: unknown array {spec!r}; the dataset at {dataset.path} has {dataset.names}"
            )
        return dataset[spec]
    if isinstance(spec, Mapping):
        if not spec:
            raise InvalidArgumentError(f"{what} must not be an empty dict")
        return {str(k): resolve(v, dataset, what) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise InvalidArgumentError(f"{what} must not be an empty list")
        return tuple(resolve(v, dataset, what) for v in spec)
    raise InvalidArgumentError(
        f"{what} must be an array name, a list of names or a dict of names, got {spec!r:.80}"
    )


def flatten(spec: Any) -> list:
    """The arrays of a resolved ``x``/``y``/``sample_weight`` spec, in order."""
    if isinstance(spec, ARRAYS):
        return [spec]
    parts = spec.values() if isinstance(spec, dict) else spec
    return [leaf for part in parts for leaf in flatten(part)]


def build(spec: Any, read: Callable[[Any], np.ndarray]) -> Any:
    """The batch part of a resolved spec: ``read(array)`` for each array, in the spec's structure."""
    if isinstance(spec, ARRAYS):
        return read(spec)
    if isinstance(spec, dict):
        return {k: build(v, read) for k, v in spec.items()}
    return tuple(build(v, read) for v in spec)


def array_key(array: ShardedArray | RaggedArray) -> tuple[str, str]:
    """``(dataset path, array name)``: the same in every process, unlike ``id(array)``."""
    return array.dataset.path, array.name


def resolve_dtypes(dtype: Any, arrays: list) -> dict[tuple[str, str], np.dtype]:
    """The dtype each of ``arrays`` is cast to, by :func:`array_key`, for ``dtype=`` of a sequence.

    ``None``: none is cast. One dtype: every floating array. A dict
    ``{array_name: dtype}``: the arrays it names, each a name of ``arrays``.
    """
    out = {}
    if dtype is None:
        return out
    if isinstance(dtype, Mapping):
        names = {a.name for a in arrays}
        for name in dtype:
            if name not in names:
                raise InvalidArgumentError(
                    f"dtype: {name!r} is not an array this sequence reads ({sorted(names)})"
                )
        for a in arrays:
            if a.name in dtype:
                out[array_key(a)] = _to_dtype(dtype[a.name])
        return out
    target = _to_dtype(dtype)
    for a in arrays:
        if _is_float(a.dtype):
            out[array_key(a)] = target
    return out


def _is_float(dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return True
    # ml_dtypes floats (bfloat16, float8_*) are numpy user dtypes whose scalar
    # type lives in the ml_dtypes module.
    return getattr(dtype.type, "__module__", "").startswith("ml_dtypes") and "float" in dtype.name


def _to_dtype(value: Any) -> np.dtype:
    try:
        return np.dtype(value)
    except TypeError:
        raise InvalidArgumentError(f"dtype {value!r} is not a numpy dtype") from None
