"""Turn a dead Keras worker process into an error instead of a hang.

Keras feeds ``fit`` from a ``multiprocessing.Pool`` when a PyDataset has
``use_multiprocessing=True``, and waits for each batch with
``AsyncResult.get()`` and no timeout. When a worker process dies (the
out-of-memory killer, a segfault, ``os._exit`` in a transform), the pool
starts a replacement but never reports the task the dead worker held, and
``fit`` waits forever. Worse, an idle worker waits for work while holding the
lock of the pool's task queue: killed then, it leaves the lock held, no
worker gets a task again, and ``Pool.terminate()`` (which also runs when the
pool is garbage collected and at interpreter exit) blocks on that lock.

What npyseq does, in the main process only, and only while a
:class:`npyseq.ShardSequence` with process workers exists:

* Keras' registry of its pools (``py_dataset_adapter._DATA_POOLS``) is
  replaced by a :class:`_RecordedPools`, which notes each pool's worker
  processes the moment Keras registers the pool. The pool's own handler
  thread reaps a dead worker at once, so a worker never seen would leave no
  trace; since a replacement only exists after a death, the first death in
  any pool is always of a worker the watchdog knows.
* While such a sequence is inside an epoch, a daemon thread polls every
  :data:`POLL_SECONDS`. A worker that exited on its own (by a signal, or with
  any exit code while its pool runs; with a non-zero one after Keras closed
  it) dooms its pool: the pool's exit-time finalizer is taken over and run in
  a helper thread (so neither garbage collection nor interpreter exit can
  block on it), every result pending in the pool, and every one submitted to
  it later, is completed with a :class:`~npyseq.errors.WorkerDiedError`
  naming the process and the signal, and the queue locks the dead worker
  left held are released once no live worker can hold them.
* The same happens, with a :class:`~npyseq.errors.WorkerError`, when the
  pool's result thread dies while the pool runs: it unpickles every batch
  and exception a worker sends, and one it cannot unpickle kills it, after
  which no result ever arrives. (Exceptions raised in a sequence's
  ``__getitem__`` are made picklable in the worker, see
  ``ShardSequence.__getitem__``; what is left is a batch that cannot be
  rebuilt.)
* The watchdog starts afresh in a forked child, with a new lock
  (:func:`npyseq.forks.after_fork`), so a fork while another thread holds
  it cannot leave the child waiting for it.

The thread that waits for the batch (the main thread, or tf.data's generator
thread on TensorFlow) then raises the error, and ``fit`` ends with it.

This reaches into ``multiprocessing.pool`` internals (``_pool``, ``_cache``,
``ApplyResult._set``, the pool's ``_terminate`` finalizer, the queues'
locks), unchanged from Python 3.8 to 3.13; every access is guarded, and
without them npyseq does not detect the death (Keras' own behaviour).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
import weakref
from multiprocessing import pool as mp_pool
from multiprocessing import util as mp_util
from typing import Any

from npyseq.errors import NpyseqError, WorkerDiedError, WorkerError
from npyseq.forks import after_fork

__all__ = ["install", "watch", "unwatch", "prepare_worker", "died_error", "POLL_SECONDS"]

POLL_SECONDS = 0.1
TEARDOWN_SECONDS = 10.0


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


def died_error(pid: int, exitcode: int) -> WorkerDiedError:
    """The error for a worker process ``pid`` that died with ``exitcode`` during fit (npyseq's pool uses it too)."""
    hint = (" SIGKILL usually comes from the out-of-memory killer: lower workers, max_queue_size "
            "or batch_size, or use thread workers (use_multiprocessing=False)."
            if exitcode == -signal.SIGKILL else "")
    return WorkerDiedError(
        f"a Keras worker process (pid {pid}) {_describe(exitcode)} during fit; Keras would wait "
        f"forever for the batches it held, so npyseq stopped the epoch.{hint}"
    )


def _copy(items) -> list:
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:  # changed size while we copied it
            continue
    return []


def _adapter_module():
    try:
        from keras.src.trainers.data_adapters import py_dataset_adapter
    except ImportError:  # pragma: no cover - another Keras layout
        return None
    return py_dataset_adapter if hasattr(py_dataset_adapter, "_DATA_POOLS") else None


def _keras_pools() -> list:
    module = _adapter_module()
    if module is None:
        return []
    # npyseq's own pools report a dead worker themselves (npyseq/keras/executor.py).
    return [p for p in _copy(module._DATA_POOLS) if isinstance(p, mp_pool.Pool)]


class _RecordedPools(weakref.WeakSet):
    """Keras' registry of its process pools, noting each pool's workers as it is added."""

    def add(self, pool) -> None:
        super().add(pool)
        _WATCHDOG.saw_pool(pool)


def install() -> None:
    """Put :class:`_RecordedPools` in place of Keras' pool registry (idempotent)."""
    module = _adapter_module()
    if module is None or isinstance(module._DATA_POOLS, _RecordedPools):
        return
    recorded = _RecordedPools()
    for pool in _copy(module._DATA_POOLS):
        recorded.add(pool)
    module._DATA_POOLS = recorded


class _Watchdog:
    def __init__(self) -> None:
        self.reset_after_fork()
        after_fork(self)

    def reset_after_fork(self) -> None:
        """Start afresh: in a new process, or in a forked child."""
        self._lock = threading.Lock()
        self._active: weakref.WeakSet = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        # id(pool) -> (weakref to the pool, {pid: Process}): the workers seen of each pool.
        self._seen: dict[int, tuple[Any, dict[int, Any]]] = {}
        # Doomed pools, held until torn down: id(pool) -> _Doomed.
        self._doomed: dict[int, _Doomed] = {}

    def watch(self, owner: Any) -> None:
        with self._lock:
            self._active.add(owner)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="npyseq-worker-watchdog",
                                                daemon=True)
                self._thread.start()

    def unwatch(self, owner: Any) -> None:
        with self._lock:
            self._active.discard(owner)

    def saw_pool(self, pool) -> None:
        with self._lock:
            for key in [k for k, (ref, _) in self._seen.items() if ref() is None]:
                del self._seen[key]
            self._record(pool)

    def _record(self, pool) -> dict:
        """The workers seen of ``pool`` (the caller holds the lock), its current ones added."""
        entry = self._seen.get(id(pool))
        if entry is None or entry[0]() is not pool:
            entry = self._seen[id(pool)] = (weakref.ref(pool), {})
        procs = entry[1]
        for p in _copy(getattr(pool, "_pool", ())):
            procs.setdefault(p.pid, p)
        return procs

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # an unexpected pool state must not kill the watchdog
                pass
            with self._lock:
                if not self._active and not self._doomed:
                    self._thread = None
                    return
            time.sleep(POLL_SECONDS)

    def poll(self) -> None:
        pools = _keras_pools()
        newly_doomed = []
        with self._lock:
            live = {id(p) for p in pools}
            for key in [k for k, (ref, _) in self._seen.items() if k not in live or ref() is None]:
                del self._seen[key]
            for pool in pools:
                if id(pool) in self._doomed:
                    continue
                failure = _find_failure(pool, self._record(pool))
                if failure is not None:
                    doomed = self._doomed[id(pool)] = _Doomed(pool, failure)
                    del self._seen[id(pool)]
                    newly_doomed.append(doomed)
            doomed_now = list(self._doomed.items())
        del pools
        for doomed in newly_doomed:
            doomed.start_teardown()
        for key, doomed in doomed_now:
            if doomed.step():
                with self._lock:
                    self._doomed.pop(key, None)


_RESULTS_LOST = (
    "the thread of Keras' worker pool that receives batches from the worker processes died during fit "
    "(see the \"Exception in thread\" traceback printed above: it could not unpickle what a worker sent, "
    "e.g. a batch holding an object whose class cannot be rebuilt in the trainer); Keras would wait "
    "forever for the batches in flight, so npyseq stopped the epoch. A transform must return NumPy "
    "arrays (or objects that unpickle in the trainer); thread workers (use_multiprocessing=False) "
    "pickle nothing."
)


def _find_failure(pool, procs: dict) -> NpyseqError | None:
    """What broke ``pool``: a worker that died, or its result thread that died; None if nothing."""
    # The result thread first, then the states: it ends on its own only after
    # the pool left RUN (close, terminate), so this order never mistakes a
    # clean end for a death.
    handler = getattr(pool, "_result_handler", None)
    handler_died = handler is not None and not handler.is_alive()
    dead = _find_dead(pool, procs)
    if dead is not None:
        return died_error(*dead)
    if (handler_died and getattr(handler, "_state", None) == mp_pool.RUN
            and getattr(pool, "_state", None) == mp_pool.RUN):
        return WorkerError(_RESULTS_LOST)
    return None


def _find_dead(pool, procs: dict) -> tuple[int, int] | None:
    """``(pid, exit code)`` of a worker of ``pool`` that died, or None."""
    # Exit codes first, then the pool's state: a worker exits cleanly only
    # after the pool left RUN (or began terminating), so this order never
    # mistakes a clean exit for a death.
    codes = {pid: p.exitcode for pid, p in procs.items()}
    state = getattr(pool, "_state", None)
    handler_state = getattr(getattr(pool, "_worker_handler", None), "_state", None)
    if mp_pool.TERMINATE in (state, handler_state):  # being terminated (gc, exit, user)
        return None
    recycles = getattr(pool, "_maxtasksperchild", None) is not None
    for pid, code in codes.items():
        if code is None:
            continue
        if code != 0 or (state == mp_pool.RUN and not recycles):
            return pid, code
        del procs[pid]  # a clean exit
    return None


class _Doomed:
    """A pool one of whose workers (or its result thread) died: fail its results, tear it down without blocking."""

    def __init__(self, pool, error: NpyseqError):
        self.pool, self.error = pool, error
        self.since = time.monotonic()
        self.terminator: threading.Thread | None = None

    def start_teardown(self) -> None:
        # Take the pool's finalizer over first, so that a garbage collection
        # or the interpreter's exit never runs it (it would block on a lock
        # the dead worker holds), then run it in a daemon thread.
        final = getattr(self.pool, "_terminate", None)
        key = getattr(final, "_key", None)
        if key is not None and mp_util._finalizer_registry.pop(key, None) is not None:
            callback, args, kwargs = final._callback, final._args, final._kwargs
            final._weakref = final._callback = final._args = final._kwargs = final._key = None
            self.terminator = threading.Thread(target=self._teardown, args=(callback, args, kwargs),
                                               name="npyseq-pool-teardown", daemon=True)
        _fail_pending(self.pool, self.error)
        if self.terminator is not None:
            self.terminator.start()

    def _teardown(self, callback, args, kwargs) -> None:
        result_handler = getattr(self.pool, "_result_handler", None)
        if result_handler is not None and not result_handler.is_alive():
            # The pool's teardown refuses to run while results are pending
            # and its result thread is gone (AssertionError): take no more
            # tasks (apply_async now raises in Keras' feeding thread, after
            # the failed results in its queue), fail the last ones, then go.
            self.pool._state = mp_pool.TERMINATE
            _fail_pending(self.pool, self.error)
        callback(*args, **kwargs)

    def step(self) -> bool:
        """One poll's work; True once there is nothing left to do."""
        _fail_pending(self.pool, self.error)
        terminating = self.terminator is not None and self.terminator.is_alive()
        if terminating:
            _release_dead_workers_locks(self.pool)
        elapsed = time.monotonic() - self.since
        done = (not terminating and getattr(self.pool, "_state", None) != mp_pool.RUN
                and not getattr(self.pool, "_cache", None))
        # Keep failing results until Keras has closed the pool; give up on a
        # stuck teardown (a daemon thread) after TEARDOWN_SECONDS.
        return done or (elapsed > TEARDOWN_SECONDS and not terminating
                        and getattr(self.pool, "_state", None) != mp_pool.RUN)


def _fail_pending(pool, error: NpyseqError) -> None:
    cache = getattr(pool, "_cache", None)
    if not cache:
        return
    for result in _copy(cache.values()):
        if type(result) is mp_pool.ApplyResult and not result.ready():
            try:
                result._set(0, (False, error))
            except KeyError:  # the real result arrived at the same moment
                pass


def _release_dead_workers_locks(pool) -> None:
    """Let a blocked teardown go on: free the queue locks a dead worker left held.

    Only once the pool's worker handler has stopped (no replacement can start)
    and every worker is dead, so that no live process can hold those locks.
    """
    handler = getattr(pool, "_worker_handler", None)
    if handler is None or handler.is_alive():
        return
    for p in _copy(getattr(pool, "_pool", ())):
        if p.exitcode is None:
            p.kill()
            p.join(1.0)
    if any(p.exitcode is None for p in _copy(getattr(pool, "_pool", ()))):
        return
    for queue_name, lock_name in (("_inqueue", "_rlock"), ("_outqueue", "_wlock")):
        lock = getattr(getattr(pool, queue_name, None), lock_name, None)
        if lock is None:
            continue
        try:
            if lock.acquire(False):  # free: put it back
                lock.release()
            else:  # held by a dead process (or by the teardown itself, which never frees it)
                lock.release()
        except (ValueError, OSError):
            pass


# A child forked while a thread of the parent held the watchdog's lock must
# not wait for it; nothing of the parent's pools applies there anyway.
_WATCHDOG = _Watchdog()


def watch(owner: Any) -> None:
    """Watch Keras' worker pools while ``owner`` (a sequence) is inside an epoch."""
    install()
    _WATCHDOG.watch(owner)


def unwatch(owner: Any) -> None:
    """``owner``'s epoch ended; the watchdog stops when no sequence is inside one."""
    _WATCHDOG.unwatch(owner)


def prepare_worker() -> None:
    """Leave Ctrl-C to the main process, in a worker process of a Keras pool.

    A terminal's Ctrl-C sends SIGINT to every process of the group. A pool
    worker interrupted in the middle of a batch dies, Keras loses that batch,
    and ``fit`` would wait for it forever (or, with the watchdog, end with a
    WorkerDiedError instead of the KeyboardInterrupt the user asked for).
    Ignoring SIGINT in the workers lets the main process raise
    KeyboardInterrupt; its exit then terminates the pool.
    """
    if (multiprocessing.current_process().name.startswith("Keras_worker")
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
