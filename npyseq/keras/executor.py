"""npyseq's process pool for Keras' enqueuer: a socket per worker, no pool threads.

Keras feeds ``fit`` from a ``multiprocessing.Pool`` when a PyDataset has
``use_multiprocessing=True``: every batch is a task that goes through the
pool's task thread, a pipe shared by all workers, the worker, a result pipe
shared by all workers and the pool's result thread, each hop a thread switch
in the trainer. Measured on 2 cores (Keras 3.15, 320 batches of 4 KB, so
nothing to transport): 0.55 ms a batch, about as long as 2 thread workers
take to read a whole 3 MB batch. For an npyseq sequence Keras gets this pool
instead (:mod:`npyseq.keras.start_method` hands it over): the same
``apply_async``/``close`` Keras calls, but each worker has its own socket to
the trainer; a task is two integers, sent to the workers in turn; the thread
that waits for a batch reads it from its worker's socket itself. Batches come
through shared memory (:mod:`npyseq.keras.transport`), or pickled when it is
off or unavailable.

Keras closes its pool at the end of every epoch and makes a new one for the
next: a fork of the trainer, and workers that fault in their memory and make
their shared memory again (measured 40-60 ms before the first batch of each
epoch, 15% of a 1 GB epoch with 2 workers). A pool Keras closed is kept
:data:`KEEP_SECONDS` instead: if the same enqueuer starts its next epoch by
then, the pool serves it, after sending each worker the dataset as the
trainer has it now (pickled as for spawn: paths, options, epoch; a few
hundred bytes), so each epoch's batches are that epoch's. Otherwise, or if a
worker died, or the dataset does not pickle, the workers exit and the next
epoch gets a new pool.

What Keras' pool would do wrong here, and this one does not:

* A worker that dies (the out-of-memory killer, a segfault, ``os._exit`` in a
  transform) closes its socket: the batches it held raise
  :class:`~npyseq.errors.WorkerDiedError` naming the process and the signal,
  at once, instead of a wait forever (no replacement is started).
* A batch the trainer cannot unpickle fails that batch with a
  :class:`~npyseq.errors.WorkerError`, and nothing else.
* Workers do not outlive their trainer: each holds only its own end of its
  socket (under fork, the ends of the sockets of the workers forked before it
  are closed first), so a worker waiting for a task reads the end of the
  stream when the trainer dies and exits; one in the middle of a batch fails
  to send it and exits. They ignore SIGINT: Ctrl-C is the trainer's.

The tasks carry no pickle (two integers); what a worker sends is unpickled
only in the trainer, as Keras' pool does.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import struct
import threading
import time
import weakref
from multiprocessing import reduction

from npyseq.errors import WorkerError

__all__ = ["ProcessPool"]

_TASK = struct.Struct("<cqq")  # (b"T", dataset uid, batch index)
_STOP = b"E"  # no more tasks: exit
_SEQUENCES = b"S"  # followed by the pickled datasets of the next epoch (a pool kept for it)
KEEP_SECONDS = 2.0  # a pool Keras closed serves the next epoch if it starts within this time

_UNPICKLABLE = (
    "batch {index} sent by a worker process could not be unpickled in the trainer ({error}); a transform "
    "must return NumPy arrays (or objects that unpickle in the trainer); thread workers "
    "(use_multiprocessing=False) pickle nothing"
)


class _Raised:
    """An exception raised in a worker, raised again by the trainer."""

    def __init__(self, error: BaseException):
        self.error = error


class _Result:
    """What ``apply_async`` returns: Keras calls ``get()``."""

    __slots__ = ("worker", "index", "done", "value", "error")

    def __init__(self, worker: "_Worker", index: int):
        self.worker, self.index = worker, index
        self.done, self.value, self.error = False, None, None

    def ready(self) -> bool:
        return self.done

    def successful(self) -> bool:
        if not self.done:
            raise ValueError(f"{self!r} not ready")
        return self.error is None

    def wait(self, timeout: float | None = None) -> None:
        self.worker.wait(self, timeout)

    def get(self, timeout: float | None = None):
        if not self.done:
            self.worker.wait(self, timeout)
            if not self.done:
                raise multiprocessing.TimeoutError
        if self.error is not None:
            raise self.error
        return self.value


class _Worker:
    """One worker process, its socket, and the results it owes, in order."""

    def __init__(self, context, sequences: dict, name: str, close_in_child: list):
        parent, child = context.Pipe(duplex=True)
        fork = context.get_start_method() == "fork"
        inherited = close_in_child + [parent.fileno()] if fork else []
        self.process = context.Process(target=_serve, args=(child, sequences, os.getpid(), inherited),
                                       name=name, daemon=True)
        try:
            self.process.start()
        finally:
            child.close()
        self.conn = parent
        self.pending: collections.deque = collections.deque()
        self.read_lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.tokens: set = set()  # of its rings, in the trainer's registry
        self.failure: BaseException | None = None
        self.stopped = False
        self._final = weakref.finalize(self, _close, parent, self.tokens)

    @property
    def pid(self) -> int:
        return self.process.pid

    def submit(self, uid: int, index: int) -> _Result:
        result = _Result(self, index)
        self.pending.append(result)
        if self.failure is None:
            try:
                with self.send_lock:
                    self.conn.send_bytes(_TASK.pack(b"T", uid, index))
            except OSError:
                pass  # it died: the read that waits for this result finds out how
        return result

    def stop(self) -> None:
        """No more tasks: the worker exits once it has sent what it owes."""
        with self.send_lock:
            if not self.stopped:
                self.stopped = True
                try:
                    self.conn.send_bytes(_STOP)
                except OSError:
                    pass

    def renew(self, payload: bytes) -> bool:
        """The next epoch's datasets: True if sent (the worker serves them from its next task)."""
        with self.send_lock:
            if self.stopped or self.failure is not None or self.process.exitcode is not None:
                return False
            try:
                self.conn.send_bytes(payload)
            except OSError:
                return False
            return True

    def wait(self, result: _Result, timeout: float | None) -> None:
        """Read from the worker until ``result`` is in (or ``timeout`` passes)."""
        with self.read_lock:
            while not result.done:
                if self.failure is not None:
                    while self.pending:
                        owed = self.pending.popleft()
                        owed.error, owed.done = self.failure, True
                    return
                if timeout is not None and not self.conn.poll(timeout):
                    return
                try:
                    data = self.conn.recv_bytes()
                except (EOFError, OSError):
                    self.failure = self._died()
                    continue
                try:
                    obj = pickle.loads(data)
                except Exception as e:
                    owed = self.pending.popleft()
                    owed.error = WorkerError(_UNPICKLABLE.format(index=owed.index, error=f"{type(e).__name__}: {e}"))
                    owed.done = True
                    continue
                from npyseq.keras import transport
                if isinstance(obj, transport._NewRing):
                    try:
                        transport.adopt(obj, reduction.recv_handle(self.conn))
                    except Exception as e:
                        self.failure = e if isinstance(e, WorkerError) else WorkerError(
                            f"a shared memory ring of worker process {self.pid} did not reach the trainer "
                            f"({type(e).__name__}: {e}); pass shared_memory=False to the sequence")
                        continue
                    self.tokens.add(obj.token)
                    continue
                owed = self.pending.popleft()
                if isinstance(obj, _Raised):
                    owed.error = obj.error
                else:
                    owed.value = obj
                owed.done = True

    def _died(self) -> BaseException:
        from npyseq.keras.watchdog import died_error
        self.process.join(2.0)
        code = self.process.exitcode
        if code is None:
            return WorkerError(f"a Keras worker process (pid {self.pid}) closed its connection to the "
                               "trainer during fit; npyseq stopped the epoch")
        return died_error(self.pid, code)

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()


def _close(conn, tokens: set) -> None:
    from npyseq.keras import transport
    conn.close()
    transport.forget(tokens)


class ProcessPool:
    """The part of ``multiprocessing.Pool`` Keras' ``OrderedEnqueuer`` uses, one socket per worker.

    ``_pool`` lists the worker processes, as ``multiprocessing.Pool`` names
    them (Keras' registry of pools, and tests, look there).
    """

    def __init__(self, context, workers: int, sequences: dict, keep_seconds: float | None = None):
        self._workers: list[_Worker] = []
        try:
            for k in range(max(1, workers)):
                inherited = [w.conn.fileno() for w in self._workers]
                self._workers.append(_Worker(context, sequences, f"Keras_worker_NpyseqPoolWorker-{k + 1}", inherited))
        except BaseException:
            self.terminate()
            raise
        self._pool = [w.process for w in self._workers]
        self._ctx = context  # as multiprocessing.Pool names it
        self._lock = threading.Lock()
        self._next = 0
        self._running = True
        self._ended = False  # stopped for good: never serves another epoch
        self._keep = KEEP_SECONDS if keep_seconds is None else keep_seconds
        self._closed_at = 0.0
        self._timer: threading.Timer | None = None

    def apply_async(self, func=None, args=(), kwds=None, callback=None, error_callback=None) -> _Result:
        uid, index = args  # Keras: (get_index, (uid, i)); the worker indexes the dataset itself
        with self._lock:
            if not self._running:
                raise ValueError("Pool not running")
            worker = self._workers[self._next]
            self._next = (self._next + 1) % len(self._workers)
            return worker.submit(uid, index)

    def reopen(self, sequences: dict) -> bool:
        """Serve another epoch, of ``sequences`` as they are now; False if this pool cannot.

        What a worker holds is the dataset as it was when the worker got it:
        each epoch the trainer's current one goes to every worker (pickled as
        for spawn, a few hundred bytes: paths, options, epoch), ahead of the
        epoch's tasks. A dataset that does not pickle (a lambda ``transform``
        under fork) gets a new pool each epoch, as from Keras.
        """
        try:
            payload = _SEQUENCES + pickle.dumps(sequences, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return False
        with self._lock:
            if self._running or self._ended:
                return False
            if not all(w.renew(payload) for w in self._workers):
                self._end()
                return False
            self._running = True
            return True

    def close(self) -> None:
        """Keras is done with this epoch: kept ``keep_seconds`` for the next one, then ended."""
        with self._lock:
            self._running = False
            self._closed_at = time.monotonic()
            if self._keep <= 0 or any(w.failure is not None for w in self._workers):
                self._end()
                return
            if self._timer is not None:
                return  # the pending timer looks at the latest close
            timer = self._timer = _timer(self._keep, self)
        timer.start()

    def _end(self) -> None:
        """No more epochs: the workers exit once they have sent what they owe (the caller holds the lock)."""
        self._running, self._ended = False, True
        for w in self._workers:
            w.stop()

    def terminate(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._running, self._ended = False, True
        for w in self._workers:
            w.kill()

    def join(self) -> None:
        for w in self._workers:
            w.process.join()


def _timer(seconds: float, pool: ProcessPool) -> threading.Timer:
    timer = threading.Timer(seconds, _end_if_unused, args=(weakref.ref(pool),))
    timer.daemon = True
    return timer


def _end_if_unused(ref) -> None:
    """End the pool if it served no epoch since ``keep_seconds`` after its last close (one timer a pool)."""
    pool = ref()
    if pool is None:
        return
    with pool._lock:
        pool._timer = None
        if pool._running or pool._ended:
            return  # serving an epoch: its close arms a timer again
        left = pool._closed_at + pool._keep - time.monotonic()
        if left <= 0:
            pool._end()
            return
        timer = pool._timer = _timer(left, pool)
    timer.start()


def _serve(conn, sequences: dict, trainer: int, inherited: list) -> None:
    """A worker: batches for the tasks the trainer sends, until it says stop or is gone."""
    for fd in inherited:  # the trainer's ends of sockets (forked): keep none, or EOF never comes
        try:
            os.close(fd)
        except OSError:
            pass
    from npyseq.keras import transport, watchdog
    watchdog.prepare_worker()  # Ctrl-C is the trainer's
    transport.serve(conn, trainer)
    dumps = reduction.ForkingPickler.dumps
    broken = None
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the trainer is gone
        if data[:1] == _SEQUENCES:  # a kept pool: the datasets of the next epoch
            try:  # opened while the last epoch's are alive: a dataset still open here is reused
                renewed = pickle.loads(data[1:])
                sequences.clear()
                sequences.update(renewed)
                del renewed
                broken = None
            except Exception as e:  # e.g. its files are gone: each of its batches says so
                sequences.clear()
                broken = WorkerError(f"the dataset of the next epoch could not be opened in a worker process "
                                     f"({type(e).__name__}: {e})")
            continue
        if data[:1] != b"T":
            return  # stop
        _, uid, index = _TASK.unpack(data)
        try:
            if broken is not None:
                raise broken
            value = sequences[uid][index]
        except Exception as e:
            value = _Raised(e)
        try:
            payload = dumps(value)
        except Exception as e:
            payload = dumps(_Raised(WorkerError(
                f"batch {index} could not be pickled in the worker process ({type(e).__name__}: {e})")))
        try:
            conn.send_bytes(payload)
        except OSError:
            return
