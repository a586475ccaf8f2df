"""npyseq's process pool for Keras' enqueuer: a task socket the workers share, a socket per worker, no pool threads.

Keras feeds ``fit`` from a ``multiprocessing.Pool`` when a PyDataset has
``use_multiprocessing=True``: every batch is a task that goes through the
pool's task thread, a pipe shared by all workers, the worker, a result pipe
shared by all workers and the pool's result thread, each hop a thread switch
in the trainer. Measured on 2 cores (Keras 3.15, 320 batches of 4 KB, so
nothing to transport): 0.55 ms a batch, about as long as 2 thread workers
take to read a whole 3 MB batch. For an npyseq sequence Keras gets this pool
instead (:mod:`npyseq.keras.start_method` hands it over): the same
``apply_async``/``close`` Keras calls, but a task is a few integers (no
pickle) on a ``SOCK_SEQPACKET`` socket that all workers read, so whichever
worker is free takes the next batch (a worker slowed by a costly batch, or by
sharing its core with the trainer, does not hold back the batches queued
behind it, as a worker-by-worker round-robin would); each worker sends its
batches, tagged with the task, on a socket of its own, and the thread that
waits for a batch reads them itself. Batches come through shared memory
(:mod:`npyseq.keras.transport`), or pickled when it is off or unavailable.

Keras closes its pool at the end of every epoch and makes a new one for the
next: a fork of the trainer, and workers that fault in their memory and make
their shared memory again (measured 40-60 ms before the first batch of each
epoch, 15% of a 1 GB epoch with 2 workers). A pool Keras closed is kept
:data:`KEEP_SECONDS` instead: if the same enqueuer starts its next epoch by
then, the pool serves it, after sending each worker the dataset as the
trainer has it now (pickled as for spawn: paths, options, epoch; a few
hundred bytes), so each epoch's batches are that epoch's: a task names its
epoch, and a worker reads the datasets of that epoch (sent to every worker
ahead of the epoch's first task) before it serves it. Otherwise, or if a
worker died, or the dataset does not pickle, the workers exit and the next
epoch gets a new pool.

What Keras' pool would do wrong here, and this one does not:

* A worker that dies (the out-of-memory killer, a segfault, ``os._exit`` in a
  transform) closes its socket: every batch the pool owes raises
  :class:`~npyseq.errors.WorkerDiedError` naming the process and the signal,
  at once, instead of a wait forever (no replacement is started; which of
  the queued batches the dead worker had taken cannot be known, so all fail,
  and the pool serves no further epoch).
* A batch the trainer cannot unpickle fails that batch with a
  :class:`~npyseq.errors.WorkerError`, and nothing else.
* Workers do not outlive their trainer: each holds only its own end of its
  socket and the read end of the task socket (under fork, the trainer's ends
  inherited from it are closed first, and any process forked from the
  trainer later, another pool's worker or a child of the user's, closes the
  trainer's ends of every pool at once, in an at-fork hook), so a worker
  waiting for a task reads the end of the stream when the trainer dies and
  exits; one in the middle of
  a batch fails to send it and exits. They ignore SIGINT: Ctrl-C is the
  trainer's.

The tasks carry no pickle (integers); what a worker sends is unpickled only
in the trainer, as Keras' pool does. The workers' side, and the wire format
of both, is :mod:`npyseq.keras.pool_worker`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import selectors
import socket
import struct
import threading
import time
import weakref
from multiprocessing import reduction

from npyseq.errors import WorkerError
from npyseq.keras.pool_worker import NOTICE, RENEW, STOP, TAG, TASK, Raised, serve

__all__ = ["ProcessPool"]

KEEP_SECONDS = 2.0  # a pool Keras closed serves the next epoch if it starts within this time

_UNPICKLABLE = (
    "batch {index} sent by a worker process could not be unpickled in the trainer ({error}); a transform "
    "must return NumPy arrays (or objects that unpickle in the trainer); thread workers "
    "(use_multiprocessing=False) pickle nothing"
)


class _Result:
    """What ``apply_async`` returns: Keras calls ``get()``."""

    __slots__ = ("pool", "index", "done", "value", "error", "__weakref__")

    def __init__(self, pool: "ProcessPool", index: int):
        self.pool, self.index = pool, index
        self.done, self.value, self.error = False, None, None

    def ready(self) -> bool:
        return self.done

    def successful(self) -> bool:
        if not self.done:
            raise ValueError(f"{self!r} not ready")
        return self.error is None

    def wait(self, timeout: float | None = None) -> None:
        self.pool._wait(self, timeout)

    def get(self, timeout: float | None = None):
        if not self.done:
            self.pool._wait(self, timeout)
            if not self.done:
                raise multiprocessing.TimeoutError
        if self.error is not None:
            raise self.error
        return self.value


class _Worker:
    """One worker process and its socket (the batches it sends; the datasets of each epoch it is sent)."""

    def __init__(self, context, sequences: dict, name: str, tasks: socket.socket, close_in_child: list):
        parent, child = context.Pipe(duplex=True)
        fork = context.get_start_method() == "fork"
        inherited = close_in_child + [parent.fileno()] if fork else []
        self.process = context.Process(target=serve, args=(child, tasks, sequences, os.getpid(), inherited),
                                       name=name, daemon=True)
        try:
            self.process.start()
        finally:
            child.close()
        self.conn = parent
        self.tokens: set = set()  # of its rings, in the trainer's registry
        self.gone = False  # exited after a stop, all it owed sent
        self._final = weakref.finalize(self, _close, parent, self.tokens)

    @property
    def pid(self) -> int:
        return self.process.pid

    def renew(self, message: bytes) -> bool:
        """The datasets of an epoch: True if sent (the worker reads them at that epoch's first task it takes).

        Never waits: a worker that took no task for many epochs has not read
        their datasets, and once its socket is full the pool ends instead
        (the next epoch gets a new one) rather than block the trainer. The
        frame is ``Connection.send_bytes``'s (a 4-byte length, then the
        bytes), sent with ``MSG_DONTWAIT`` so as not to touch the blocking
        mode of the socket the trainer reads batches from in another thread.
        """
        if self.gone or self.process.exitcode is not None:  # (the pool's lock is held: one sender)
            return False
        frame = struct.pack("!i", len(message)) + message
        try:
            with socket.socket(fileno=os.dup(self.conn.fileno())) as sock:
                sent = sock.send(frame, socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: full; or it is gone
            return False
        return sent == len(frame)  # a part sent: the pool ends, and the worker never reads on

    def ended(self, stopped: bool) -> BaseException | None:
        """Its socket closed: None if it exited after a stop (nothing owed), else the error to raise."""
        from npyseq.keras.watchdog import died_error
        self.process.join(2.0)
        code = self.process.exitcode
        if code == 0 and stopped:
            self.gone = True
            return None
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
    """The part of ``multiprocessing.Pool`` Keras' ``OrderedEnqueuer`` uses: free workers take the next task.

    ``_pool`` lists the worker processes, as ``multiprocessing.Pool`` names
    them (Keras' registry of pools, and tests, look there).
    """

    def __init__(self, context, workers: int, sequences: dict, keep_seconds: float | None = None):
        self._lock = threading.Lock()  # the pool's state
        self._send_lock = threading.Lock()  # the task socket
        self._read_lock = threading.Lock()  # the workers' sockets
        self._running, self._ended = True, False  # ended: stopped for good, never serves another epoch
        self._failure: BaseException | None = None  # a worker died: every batch owed raises it
        self._owed: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # task id -> result not in yet
        self._ids = itertools.count()
        self._epoch = 0
        self._keep = KEEP_SECONDS if keep_seconds is None else keep_seconds
        self._closed_at = 0.0
        self._timer: threading.Timer | None = None
        self._selector: selectors.BaseSelector | None = None  # the workers' sockets (epoll: one syscall a wait)
        self._workers: list[_Worker] = []
        self._tasks, tasks = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        weakref.finalize(self, self._tasks.close)
        try:
            for k in range(max(1, workers)):
                inherited = [w.conn.fileno() for w in self._workers] + [self._tasks.fileno()]
                self._workers.append(_Worker(context, sequences, f"Keras_worker_NpyseqPoolWorker-{k + 1}",
                                             tasks, inherited))
        except BaseException:
            self.terminate()
            raise
        finally:
            tasks.close()  # the workers' end: the trainer keeps none, so a send fails once all are gone
        self._pool = [w.process for w in self._workers]
        self._ctx = context  # as multiprocessing.Pool names it
        self._selector = selectors.DefaultSelector()
        weakref.finalize(self, self._selector.close)
        for w in self._workers:
            self._selector.register(w.conn, selectors.EVENT_READ, w)
        _LIVE.add(self)

    def apply_async(self, func=None, args=(), kwds=None, callback=None, error_callback=None) -> _Result:
        uid, index = args  # Keras: (get_index, (uid, i)); the worker indexes the dataset itself
        with self._lock:
            if not self._running:
                raise ValueError("Pool not running")
            result = _Result(self, index)
            if self._failure is not None:
                result.error, result.done = self._failure, True
                return result
            task = next(self._ids)
            self._owed[task] = result
            message = TASK.pack(b"T", self._epoch, task, uid, index)
        try:
            with self._send_lock:
                self._tasks.send(message)
        except OSError:
            pass  # no worker is left to read it: the wait for this result finds out why
        return result

    def _wait(self, result: _Result, timeout: float | None) -> None:
        """Read what the workers send until ``result`` is in (or ``timeout`` passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return
        try:
            while not result.done:
                if self._failure is not None:
                    self._fail(self._failure)
                    return
                if not self._selector.get_map():
                    self._fail(WorkerError(f"the worker processes exited before sending batch {result.index}"))
                    continue
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = self._selector.select(left)
                if not ready and (deadline is not None and time.monotonic() >= deadline):
                    return
                for key, _ in ready:
                    self._read(key.data)
                    if key.data.gone:
                        self._selector.unregister(key.fileobj)
        finally:
            self._read_lock.release()

    def _read(self, worker: _Worker) -> None:
        """One message from ``worker``: a batch (or an error) for a task, or a ring of shared memory."""
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            failure = worker.ended(self._ended)
            if failure is not None:
                self._fail(failure)
            return
        task, = TAG.unpack_from(data)
        body = memoryview(data)[TAG.size:]
        if task == NOTICE:
            self._adopt(worker, body)
            return
        owed = self._owed.pop(task, None)  # None: Keras let go of it; the batch (and its slot) goes
        try:
            obj = pickle.loads(body)
        except Exception as e:
            if owed is not None:
                owed.error = WorkerError(_UNPICKLABLE.format(index=owed.index, error=f"{type(e).__name__}: {e}"))
                owed.done = True
            return
        if owed is None:
            return
        if isinstance(obj, Raised):
            owed.error = obj.error
        else:
            owed.value = obj
        owed.done = True
        if not self._running:  # closed: the batches queued before the close still count as in use
            self._closed_at = time.monotonic()

    def _adopt(self, worker: _Worker, body) -> None:
        from npyseq.keras import transport
        notice = pickle.loads(body)  # the transport's own class: it unpickles
        try:
            fd = reduction.recv_handle(worker.conn)
        except (EOFError, OSError):  # it died between the notice and the descriptor
            self._fail(worker.ended(self._ended) or WorkerError(
                f"worker process {worker.pid} exited between a shared memory notice and its descriptor"))
            return
        try:
            transport.adopt(notice, fd)
        except Exception as e:
            self._fail(e if isinstance(e, WorkerError) else WorkerError(
                f"a shared memory ring of worker process {worker.pid} did not reach the trainer "
                f"({type(e).__name__}: {e}); pass shared_memory=False to the sequence"))
            return
        worker.tokens.add(notice.token)

    def _fail(self, error: BaseException) -> None:
        """The pool is broken: its first error for every batch owed and every later one."""
        with self._lock:  # apply_async adds to what is owed under it
            if self._failure is None:
                self._failure = error
            for task in list(self._owed.keys()):
                owed = self._owed.pop(task, None)
                if owed is not None and not owed.done:
                    owed.error, owed.done = self._failure, True

    def reopen(self, sequences: dict) -> bool:
        """Serve another epoch, of ``sequences`` as they are now; False if this pool cannot.

        What a worker holds is the dataset as it was when the worker got it:
        each epoch the trainer's current one goes to every worker (pickled as
        for spawn, a few hundred bytes: paths, options, epoch), ahead of the
        epoch's tasks. A dataset that does not pickle (a lambda ``transform``
        under fork) gets a new pool each epoch, as from Keras.
        """
        try:
            payload = pickle.dumps(sequences, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return False
        with self._lock:
            if self._running or self._ended or self._failure is not None:
                return False
            message = RENEW.pack(b"S", self._epoch + 1) + payload
            if not all(w.renew(message) for w in self._workers):
                self._end()
                return False
            self._epoch += 1
            self._running = True
            return True

    def close(self) -> None:
        """Keras is done with this epoch: kept ``keep_seconds`` for the next one, then ended."""
        with self._lock:
            self._running = False
            self._closed_at = time.monotonic()
            if self._keep <= 0 or self._failure is not None:
                self._end()
                return
            if self._timer is not None:
                return  # the pending timer looks at the latest close
            timer = self._timer = _timer(self._keep, self)
        timer.start()

    def _end(self) -> None:
        """No more epochs: each worker exits at a stop, queued behind the tasks sent (the caller holds the lock)."""
        if self._ended:
            return
        self._running, self._ended = False, True
        try:
            with self._send_lock:
                for _ in self._workers:
                    self._tasks.send(STOP)
        except OSError:
            pass  # no worker left to read them

    def terminate(self) -> None:
        with self._lock:
            self._running, self._ended = False, True
        for w in self._workers:
            w.kill()

    def join(self) -> None:
        for w in self._workers:
            w.process.join()


# Pools of this process: a process forked from it (another pool's worker, a user's child) closes their
# trainer-side sockets at once, or it would keep their workers from reading the end of the stream when
# the trainer dies, for as long as it lives.
_LIVE: "weakref.WeakSet[ProcessPool]" = weakref.WeakSet()


def _close_inherited_pools() -> None:
    for pool in list(_LIVE):
        for sock in (pool._tasks, pool._selector):
            try:
                if sock is not None:
                    sock.close()
            except Exception:
                pass
        for w in pool._workers:
            try:
                w.conn.close()
            except Exception:
                pass
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_pools)


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
