"""Batches of a worker process reach the trainer through shared memory, not the pickle pipe.

Keras' process pool pickles what ``__getitem__`` returns in a worker and
sends the bytes through one pipe, which the trainer's result thread reads and
unpickles: for multi-MB batches that pipe, not the workers, sets the pace. In
a worker process (only there) a sequence reads a batch's rows into an
:class:`Arena`, whose buffers lie in a shared memory *slot*, and
:meth:`Arena.pack` returns the batch with each array replaced by a handle of
a few hundred bytes (arrays made elsewhere, by a transform or a cast, are
copied in first). Unpickled in the trainer, a handle maps the slot and
becomes an ordinary ``numpy.ndarray`` view of it.

Why nothing can leak, and nothing in use is overwritten:

* A slot is an ``os.memfd_create`` file: no name anywhere (nothing in
  ``/dev/shm``, nothing for the resource tracker); the kernel frees it when
  the last descriptor and mapping of it are gone, however the processes end.
* Its descriptor travels once, with ``multiprocessing.reduction.DupFd``
  (SCM_RIGHTS over an authkey-checked unix socket: fork, spawn and
  forkserver alike). The trainer keeps it while that worker lives
  (:class:`_Received` closes those of exited workers) and maps the slot for
  each batch; the mapping goes when the last array viewing it is collected,
  which marks the slot free (its byte 0). A worker reuses only a free slot,
  so a batch the user keeps stays valid.
* Pages are reserved with ``posix_fallocate`` before they are written: a
  full memory fails there with an ``OSError`` (the batch then travels
  pickled) instead of a SIGBUS in the middle of a write.

Falls back, never breaks: without ``os.memfd_create``, or when a slot cannot
be made, the worker sends its batches pickled as Keras does, and the first
such batch makes the trainer warn once (:class:`SharedMemoryWarning`).
Batches under :data:`MIN_BYTES` travel pickled anyway (cheaper than mapping).
The bound on the memory in use: docs/design.md, "Batches through shared memory".
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import warnings
import weakref
from math import prod
from typing import Any

import numpy as np

from npyseq.errors import WorkerError

__all__ = ["SharedMemoryWarning", "Arena", "available", "live_segments", "received_slots", "slots_kept", "MIN_BYTES", "SEGMENT_NAME"]

MIN_BYTES = 64 * 1024  # smaller batches travel pickled
HANDOVER_SECONDS = 5.0  # an exiting worker waits this long at most for the trainer to take its last slots
SEGMENT_NAME = "npyseq-batch"  # in /proc/<pid>/maps as "/memfd:npyseq-batch (deleted)"
_ALIGN = 64


class SharedMemoryWarning(UserWarning):
    """Batches of process workers travel pickled: shared memory could not be used (said once)."""


def available() -> str | None:
    """``None`` if this platform can send batches through shared memory, else why not."""
    if not hasattr(os, "memfd_create"):
        return "os.memfd_create is not available on this platform"
    from multiprocessing import reduction
    if not getattr(reduction, "HAVE_SEND_HANDLE", False):
        return "this platform cannot pass file descriptors between processes"
    return None


# -- worker side


def _allocate(nbytes: int) -> tuple[int, mmap.mmap]:
    """A new anonymous shared memory file of ``nbytes`` (pages reserved) and its mapping."""
    fd = os.memfd_create(SEGMENT_NAME, os.MFD_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return fd, mmap.mmap(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise


class _Slot:
    """A segment of this worker, reused once the trainer has let go of it.

    Byte 0 is the slot's flag: 1 (set here) from when a batch is written in
    it until the trainer has mapped it, then 2 (set there) while the trainer
    holds the batch, then 0 once the trainer's last array of it is gone (set
    there, by :func:`_released`). Data starts at ``_ALIGN``. A slot never
    received keeps its 1 and is never reused. Its descriptor
    travels with the first batch in it only: the trainer keeps a kept slot's
    descriptor (:class:`_Received`) until this worker drops the slot or exits.
    """

    def __init__(self, capacity: int, kept: bool):
        self.capacity, self.kept = capacity, kept
        self.id = _state["slots"] = _state["slots"] + 1
        self.sent = False
        self.fd, self.map = _allocate(capacity)
        weakref.finalize(self, os.close, self.fd)

    def free(self) -> bool:
        return self.map[0] == 0

    def __reduce__(self):
        fd = None
        if not self.sent:
            from multiprocessing import reduction
            fd, self.sent = reduction.DupFd(self.fd), True
        forget, _state["dropped"] = tuple(_state["dropped"]), []
        return _attach, (_state["token"], self.id, fd, self.capacity, self.kept, forget)


_ring: list = []  # this worker's kept slots


def _take(nbytes: int, keep: int) -> _Slot:
    """A slot of at least ``nbytes`` of data that the trainer does not hold, marked held."""
    if _state["token"] is None:
        _state["token"] = (os.getpid(), os.urandom(8).hex())  # pids are reused, tokens not
        from multiprocessing import util
        util.Finalize(None, _hand_over, args=(os.getppid(),), exitpriority=100)
    need = -(-(_ALIGN + nbytes) // mmap.PAGESIZE) * mmap.PAGESIZE
    free = [s for s in _ring if s.free()]
    fits = [s for s in free if s.capacity >= need]
    if fits:
        slot = min(fits, key=lambda s: s.capacity)
    else:
        if len(_ring) >= keep and free:  # make room: drop a free slot too small
            dropped = min(free, key=lambda s: s.capacity)
            _ring.remove(dropped)
            if dropped.sent:
                _state["dropped"].append(dropped.id)  # the trainer closes its descriptor
        slot = _Slot(need, kept=len(_ring) < keep)
        if slot.kept:
            _ring.append(slot)
    slot.map[0] = 1
    return slot


def _hand_over(parent: int) -> None:
    """At a worker's exit: wait until the trainer has taken every descriptor sent (or is gone).

    A descriptor travels when the trainer unpickles the batch, through this
    process's ``resource_sharer`` thread; Keras closes its pool at the end of
    an epoch and a worker exits right after its last batch, maybe before the
    trainer unpickled it; and the trainer closes the descriptors of a
    worker that exited, so none may still be on its way (flag 1).
    """
    from multiprocessing import resource_sharer
    pending = getattr(getattr(resource_sharer, "_resource_sharer", None), "_cache", None)
    deadline = time.monotonic() + HANDOVER_SECONDS
    def on_its_way():  # sent, not yet mapped (not the slot of a batch that failed half-read)
        return any(s.map[0] == 1 and s is not _state["filling"] for s in _ring)
    while (pending or on_its_way()) and time.monotonic() < deadline and os.getppid() == parent:
        time.sleep(0.005)


class _Leaf:
    """An array of a batch, in a segment: pickles as ``(segment, offset, dtype, shape, order)``."""

    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return _view, self.args


class _Notice:
    """A batch sent pickled; the trainer warns once why (see :func:`_notify`)."""

    def __init__(self, batch: Any, reason: str):
        self.batch, self.reason = batch, reason

    def __reduce__(self):
        return _notify, (self.batch, self.reason)


# This worker's: why it stopped using shared memory, whether the trainer heard it, its token,
# its last slot id, the kept slots it dropped since its last batch.
_state: dict = {}  # this worker's: why it stopped using shared memory


def _leaves(batch: Any, out: list) -> None:
    if isinstance(batch, (tuple, list)):
        for item in batch:
            _leaves(item, out)
    elif isinstance(batch, dict):
        for item in batch.values():
            _leaves(item, out)
    elif type(batch) is np.ndarray and not batch.dtype.hasobject:
        out.append(batch)


def _replace(batch: Any, leaves: dict) -> Any:
    if isinstance(batch, (tuple, list)):
        items = [_replace(item, leaves) for item in batch]
        return type(batch)(items) if type(batch) in (tuple, list) else batch
    if isinstance(batch, dict):
        return {k: _replace(v, leaves) for k, v in batch.items()} if type(batch) is dict else batch
    return leaves.get(id(batch), batch)


class Arena:
    """A worker's batch buffers, carved out of a shared memory slot: what is read there is not copied.

    ``empty(nbytes)`` (the :class:`~npyseq.keras.pool.BufferPool` call a
    sequence reads rows into) hands out the next part of the current slot,
    taken free when a batch starts, sized as the last batch was; what does
    not fit comes from ``pool``. :meth:`pack` then copies into the slot only
    the arrays that are not in it yet (a transform's new arrays, casts).
    """

    def __init__(self, pool, workers: int, max_queue_size: int):
        self.pool, self.keep = pool, slots_kept(workers, max_queue_size)
        self.slot: _Slot | None = None  # the current batch's slot
        self.used = 0  # bytes of it handed out, after the flag
        self.last = 0  # bytes the last batch needed

    def _slot(self, nbytes: int) -> _Slot | None:
        """The current batch's slot, taken when its first buffer is asked for."""
        if self.slot is None and self.last >= MIN_BYTES and _usable():
            try:
                self.slot, self.used = _take(max(self.last, nbytes), self.keep), 0
                _state["filling"] = self.slot
            except OSError as e:
                _failed(e, self.last)
        return self.slot

    def empty(self, nbytes: int) -> np.ndarray:
        slot = self._slot(nbytes)
        size = _aligned(nbytes)
        if slot is None or _ALIGN + self.used + size > slot.capacity:
            return self.pool.empty(nbytes)
        start, self.used = _ALIGN + self.used, self.used + size
        return np.frombuffer(slot.map, np.uint8, nbytes, start)

    def pack(self, batch: Any) -> Any:
        """``batch`` with every array in shared memory, to be pickled to the trainer."""
        slot, self.slot = self.slot, None
        _state["filling"] = None
        arrays: list = []
        _leaves(batch, arrays)
        unique = list({id(a): a for a in arrays}.values())
        total = sum(_aligned(a.nbytes) for a in unique)
        self.last = total
        if total < MIN_BYTES or not _usable():
            if slot is not None:
                slot.map[0] = 0  # pickled before the next batch is read: free again
            return _noticed(batch) if _state["failed"] else batch
        placed = {}  # id -> offset of the arrays already in the slot
        if slot is not None:
            base = np.frombuffer(slot.map, np.uint8).ctypes.data
            for a in unique:
                offset = a.ctypes.data - base
                if ((a.flags.c_contiguous or a.flags.f_contiguous) and _ALIGN <= offset
                        and offset + a.nbytes <= slot.capacity):
                    placed[id(a)] = offset
        missing = sum(_aligned(a.nbytes) for a in unique if id(a) not in placed)
        used = _ALIGN + self.used
        if slot is None or used + missing > slot.capacity:
            if slot is not None:
                slot.map[0] = 0  # never sent: free
            try:
                slot = _take(total, self.keep)
            except OSError as e:
                _failed(e, total)
                return _noticed(batch)
            placed, used = {}, _ALIGN
        leaves = {}
        for a in unique:
            order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
            offset = placed.get(id(a))
            if offset is None:
                offset, used = used, used + _aligned(a.nbytes)
                np.copyto(_array(slot.map, offset, a.dtype, a.shape, order), a, casting="no")
            leaves[id(a)] = _Leaf(slot, offset, a.dtype, a.shape, order)
        return _replace(batch, leaves)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _usable() -> bool:
    if _state["failed"] is None:
        _state["failed"] = available() or False
    return not _state["failed"]


def _failed(error: OSError, nbytes: int) -> None:
    _state["failed"] = (f"a shared memory segment of {nbytes} bytes could not be made "
                        f"({type(error).__name__}: {error})")


def slots_kept(workers: int, max_queue_size: int) -> int:
    """Slots one of ``workers`` workers keeps: its share of the batches Keras holds, plus one."""
    return -(-(max_queue_size + 2) // max(workers, 1)) + 1


def _noticed(batch: Any) -> Any:
    if _state["noticed"]:
        return batch
    _state["noticed"] = True
    return _Notice(batch, _state["failed"])


def _reset_after_fork() -> None:
    # A forked worker decides for itself, with slots of its own (never its parent's).
    _state.update(failed=None, noticed=False, token=None, slots=0, dropped=[], filling=None)
    _ring.clear()


_reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# -- trainer side (run by the unpickler, in the pool's result thread)


def _array(buffer, offset: int, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    count = prod(shape)
    flat = np.frombuffer(buffer, dtype, count, offset) if count else np.empty(0, dtype)
    return flat.reshape(shape, order=order)


_live = {"segments": 0, "bytes": 0}
_live_lock = threading.Lock()


def _released(flag: mmap.mmap, nbytes: int) -> None:
    """The trainer's last array of a slot is gone: the worker may reuse it."""
    flag[0] = 0
    flag.close()
    with _live_lock:
        _live["segments"] -= 1
        _live["bytes"] -= nbytes


def live_segments() -> tuple[int, int]:
    """``(segments, bytes)`` of batches from workers this process still maps."""
    with _live_lock:
        return _live["segments"], _live["bytes"]


class _Received:
    """The descriptors of kept slots the trainer received, by worker; a worker's go when it exits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fds: dict = {}  # token -> {slot id: fd}
        self.exits: dict = {}  # token -> pidfd (None: poll the pid)
        self.thread: threading.Thread | None = None

    def fd(self, token, slot: int, fd_wrapper, kept: bool, forget: tuple) -> tuple[int, bool]:
        """The descriptor of ``slot`` of worker ``token``, and whether the caller must close it."""
        with self.lock:
            fds = self.fds.get(token, {})
            for old in forget:
                if old in fds:
                    os.close(fds.pop(old))
            if fd_wrapper is None:
                return fds[slot], False
        fd = fd_wrapper.detach()
        if not kept:
            return fd, True
        with self.lock:
            if token not in self.fds:
                self.fds[token] = {}
                self.exits[token] = _pidfd(token[0])
            self.fds[token][slot] = fd
            if self.thread is None:
                self.thread = threading.Thread(target=self._reap, name="npyseq-shm-reaper", daemon=True)
                self.thread.start()
        return fd, False

    def _reap(self) -> None:
        """Close the descriptors of workers that exited, until none is left."""
        while True:
            time.sleep(REAP_SECONDS)
            with self.lock:
                for token in [t for t, pidfd in self.exits.items() if _exited(t[0], pidfd)]:
                    for fd in self.fds.pop(token).values():
                        os.close(fd)
                    pidfd = self.exits.pop(token)
                    if pidfd is not None:
                        os.close(pidfd)
                if not self.fds:
                    self.thread = None
                    return

    def count(self) -> int:
        with self.lock:
            return sum(len(fds) for fds in self.fds.values())


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _exited(pid: int, pidfd: int | None) -> bool:
    if pidfd is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False
    import select
    return bool(select.select([pidfd], [], [], 0)[0])


_RECEIVED = _Received()
REAP_SECONDS = 0.25


def received_slots() -> int:
    """Descriptors of workers' kept slots this process holds (closed when each worker exits)."""
    return _RECEIVED.count()


def _attach(token, slot: int, fd_wrapper, nbytes: int, kept: bool, forget: tuple) -> mmap.mmap:
    try:
        fd, close = _RECEIVED.fd(token, slot, fd_wrapper, kept, forget)
        try:
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            segment = mmap.mmap(fd, nbytes, flags=flags)
            flag = mmap.mmap(fd, 1)  # its own mapping: the finalizer runs once ``segment`` is gone
            flag[0] = 2
        finally:
            if close:
                os.close(fd)
    except Exception as e:
        # Raised in Keras' result thread, which dies; the watchdog then ends fit with a WorkerError.
        raise WorkerError(
            f"a batch of {nbytes} bytes sent by a worker process through shared memory could not be "
            f"mapped in the trainer ({type(e).__name__}: {e}); pass shared_memory=False to the "
            "sequence to send batches pickled"
        ) from None
    with _live_lock:
        _live["segments"] += 1
        _live["bytes"] += nbytes
    weakref.finalize(segment, _released, flag, nbytes)
    return segment


def _view(segment: mmap.mmap, offset: int, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    return _array(segment, offset, dtype, shape, order)


_warned = threading.Lock()


def _notify(batch: Any, reason: str) -> Any:
    if _warned.acquire(blocking=False):
        warnings.warn(
            f"npyseq: {reason}; batches of process workers now travel pickled through Keras' pipe "
            "(slower, same bytes). Pass shared_memory=False to the sequence to silence this.",
            SharedMemoryWarning, stacklevel=2)
    return batch
