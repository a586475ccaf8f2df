"""The pool, and its start method, of the worker processes Keras starts for an npyseq sequence.

Keras makes its process pool with ``multiprocessing.Pool()``: the platform's
default start method, ``fork`` on Linux up to Python 3.13. On the JAX
backend that is unsafe: JAX runs threads, a forked child inherits their locks
in whatever state they were, and JAX says so on every fork ("os.fork() was
called. os.fork() is incompatible with multithreaded code, and JAX is
multithreaded, so this will likely lead to a deadlock", keras-team/keras#20619).

An npyseq sequence pickles as paths, so it can start its workers any way.
:func:`install` wraps ``OrderedEnqueuer._get_executor_init`` of Keras (the
method that returns the function making the enqueuer's pool): for a dataset
that has ``_worker_start_method()`` (npyseq's), the pool is npyseq's
:class:`~npyseq.keras.executor.ProcessPool`, made from the context of the
start method it answers (``None``: the platform's default), and it is
registered in Keras' pool registry as Keras registers its own. Any other
dataset gets Keras' own pool, untouched. With another Keras layout nothing is
wrapped: Keras' own pool and start method apply, and batches travel pickled.

:func:`choose` is the rule: an explicit ``start_method`` wins; ``None`` means
Keras' default, except that ``fork`` on the JAX backend becomes
``forkserver`` (``spawn`` where there is no forkserver), unless ``__main__``
has no file (an interactive session), whose functions a fresh process could
not import.
"""

from __future__ import annotations

import multiprocessing
import sys

from npyseq.errors import InvalidArgumentError

__all__ = ["check", "choose", "install"]

_PRELOAD = "npyseq.keras.sequence"  # what the fork server imports: npyseq's sequences, and so Keras


def check(value):
    """``value`` if it is ``None`` or a start method of this platform."""
    methods = multiprocessing.get_all_start_methods()
    if value is not None and value not in methods:
        raise InvalidArgumentError(f"start_method must be None or one of {methods}, got {value!r}")
    return value


def choose(requested: str | None, backend: str) -> str | None:
    """The start method for a pool of a sequence on Keras backend ``backend``; ``None``: leave it to Keras."""
    if requested is not None:
        return requested
    if backend != "jax":
        return None
    methods = multiprocessing.get_all_start_methods()
    # get_start_method(allow_none=True) does not fix the default as a side effect.
    current = multiprocessing.get_start_method(allow_none=True) or methods[0]
    if current != "fork":
        return None
    if getattr(sys.modules.get("__main__"), "__file__", None) is None:
        return None  # interactive: a fresh process cannot import what __main__ defines
    return "forkserver" if "forkserver" in methods else "spawn"


def _adapter_module():
    try:
        from keras.src.trainers.data_adapters import py_dataset_adapter
    except ImportError:  # pragma: no cover - another Keras layout
        return None
    needed = ("OrderedEnqueuer", "init_pool_generator", "_DATA_POOLS")
    if not all(hasattr(py_dataset_adapter, name) for name in needed):
        return None  # pragma: no cover
    if not hasattr(py_dataset_adapter.OrderedEnqueuer, "_get_executor_init"):
        return None  # pragma: no cover
    return py_dataset_adapter


def _preload_keras(context) -> None:
    """Have the fork server import npyseq's sequences (and so Keras) before it forks workers.

    Otherwise each worker imports Keras after its fork, at every pool start
    (every epoch and validation pass): measured 1.6 s per pool on JAX, 2
    workers on 2 cores. Only while the server has not started (the list is
    read when it starts); the modules already listed (``__main__`` by
    default) stay first.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = getattr(server, "_preload_modules", None)
    if not isinstance(modules, list) or _PRELOAD in modules:
        return
    if getattr(server, "_forkserver_pid", None) is not None:
        return  # running: too late, and harmless (the workers import it themselves)
    context.set_forkserver_preload(modules + [_PRELOAD])


def install() -> None:
    """Wrap Keras' ``OrderedEnqueuer._get_executor_init`` (idempotent)."""
    module = _adapter_module()
    if module is None:
        return
    enqueuer = module.OrderedEnqueuer
    original = enqueuer._get_executor_init
    if getattr(original, "_npyseq", False):
        return

    def _get_executor_init(self, workers):
        choose_for = getattr(self.py_dataset, "_worker_start_method", None)
        if not callable(choose_for):
            return original(self, workers)
        from npyseq.keras.executor import ProcessPool
        context = multiprocessing.get_context(choose_for())  # None: the platform's default
        if context.get_start_method() == "forkserver":
            _preload_keras(context)
        uid = self.uid
        last: list = []  # the pool of this enqueuer's last epoch: it serves the next if it can

        def pool_fn(seqs):
            # Only this enqueuer's dataset goes to the workers: under spawn
            # and forkserver everything passed is pickled, and another
            # dataset alive in the registry need not pickle.
            if last and last[0].reopen({uid: seqs[uid]}):
                return last[0]
            pool = ProcessPool(context, workers, {uid: seqs[uid]})
            module._DATA_POOLS.add(pool)
            last[:] = [pool]
            return pool

        return pool_fn

    _get_executor_init._npyseq = True
    _get_executor_init.__wrapped__ = original
    enqueuer._get_executor_init = _get_executor_init
