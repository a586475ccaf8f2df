"""What a batch meets on its way to the trainer: a transform's result checked, a worker's exception made sendable.

Both run where ``__getitem__`` runs (in a thread or process worker of Keras,
or the main process), on NumPy and Python objects only. Keras waits forever
for a batch that never comes: a ``None`` from a transform is skipped by
Keras' iterator, and an exception that cannot be unpickled kills the thread
of the pool that receives results. So :func:`check_transformed` turns a batch
Keras cannot take into a :class:`~npyseq.errors.TransformError` that names
the transform, and :func:`sendable` turns an exception that cannot make the
trip into a :class:`~npyseq.errors.WorkerError` that carries its text and
traceback.

>>> check_transformed((1, 2), print, 0, 0)
(1, 2)
>>> type(sendable(ValueError("bad row"), "reading batch 0")).__name__
'ValueError'
"""

from __future__ import annotations

import io
import os
import pickle
import traceback
from typing import Any, Callable

import numpy as np

from npyseq.errors import NpyseqError, TransformError, WorkerError

__all__ = ["check_transformed", "sendable"]


def _callable_name(fn: Any) -> str:
    """``module.qualname`` of a function, a ``functools.partial`` of one, or a callable object."""
    inner = getattr(fn, "func", fn)  # functools.partial
    if not hasattr(inner, "__qualname__"):
        inner = type(inner)
    return f"{getattr(inner, '__module__', '?')}.{inner.__qualname__}"


def check_transformed(batch: Any, transform: Callable, index: int, epoch: int) -> Any:
    """``batch`` if Keras can take it as a batch, else a TransformError naming ``transform``.

    Keras takes ``(x,)``, ``(x, y)``, ``(x, y, sample_weight)`` (a list is made
    a tuple), an array alone or a dict of inputs; and it skips a ``None``
    batch, then waits for it forever.
    """
    if isinstance(batch, (dict, np.ndarray)) or (isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3):
        return batch
    hint = (" (a missing `return batch`? A transform that changes the batch in place must still return it)"
            if batch is None else "")
    found = " ".join(repr(batch)[:100].split())  # one line
    items = f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""
    raise TransformError(
        f"transform {_callable_name(transform)} returned {found} of type {type(batch).__name__}{items} "
        f"for batch {index} of epoch {epoch}{hint}; it must return the batch: a tuple (x,), (x, y) or "
        "(x, y, sample_weight) of arrays (a list is made a tuple), an array x alone, or a dict of inputs"
    )


class _PlainPickler(pickle.Pickler):
    """A pickler that ignores ``copyreg.dispatch_table`` (reducers other libraries install)."""

    dispatch_table: dict = {}


def sendable(error: Exception, where: str) -> Exception:
    """``error`` if it reaches the trainer intact from a worker process, else a WorkerError telling it.

    Keras' process pool pickles an exception raised in a worker and its
    result thread unpickles it; an exception that cannot make that trip (an
    ``__init__`` with several arguments, an unpicklable attribute) kills
    that thread or is replaced by an unhelpful MaybeEncodingError. So it is
    tried here first, on the worker's own exception object (no outside
    data), and only an exception that fails the trip is wrapped: anything
    else keeps its type, as Keras would report it.

    The trip is tried with Python's own reductions only: TensorFlow installs
    ``tblib``'s exception reducers into ``copyreg`` wherever ``tblib`` is
    importable (``tensorflow/python/distribute/multi_process_runner.py``),
    and an exception pickled by them can fail to unpickle in the trainer.
    An exception that needs them to make the trip is sent as a WorkerError
    instead, the same with ``tblib`` installed or not.
    """
    if isinstance(error, NpyseqError):
        return error  # one message and nothing else: always survives
    try:
        buffer = io.BytesIO()
        _PlainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(error)
        pickle.loads(buffer.getvalue())
        return error
    except Exception as e:
        problem = f"{type(e).__name__}: {e}"
    kind = type(error)
    text = "".join(traceback.format_exception(kind, error, error.__traceback__)).rstrip()
    return WorkerError(
        f"{kind.__module__}.{kind.__qualname__}: {error}\n"
        f"(raised in a Keras worker process, pid {os.getpid()}, {where}; that exception cannot be sent "
        f"to the trainer as itself ({problem}), so npyseq sent it as this WorkerError. To get "
        f"{kind.__qualname__} itself, give it an __init__ that takes the message alone, or use "
        "thread workers.)\n"
        f"Traceback in the worker:\n{text}"
    )
