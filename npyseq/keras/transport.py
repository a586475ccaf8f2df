"""Batches of a worker process reach the trainer through shared memory, not pickled.

A worker of npyseq's process pool (:mod:`npyseq.keras.executor`) reads a
batch's rows into an :class:`Arena`, whose buffers lie in a *slot* of the
worker's *ring*: one shared memory file cut into equal slots. What goes
through the worker's pipe is the batch with each array replaced by a handle
of a few dozen bytes (arrays made elsewhere, by a transform or a cast, are
copied in first). Unpickled in the trainer, the handles of a batch become
ordinary ``numpy.ndarray`` views of the trainer's own, lasting mapping of
that ring: no mapping, page population or unmapping per batch.

Why nothing can leak, and nothing in use is overwritten:

* A ring is an ``os.memfd_create`` file: no name anywhere (nothing in
  ``/dev/shm``, nothing for the resource tracker); the kernel frees it when
  the last descriptor and mapping of it are gone, however the processes end.
* Its descriptor crosses once, over the worker's own socket to the trainer
  (SCM_RIGHTS, just before the first batch in it); the trainer maps the ring
  and closes the descriptor at once. It keeps the mapping while the worker's
  pool lives or a batch of the ring is alive, and never holds a descriptor.
* Byte 0 of a slot is its flag: 1 from when the worker starts writing a
  batch into it, 0 again once the trainer's last array of that batch is
  collected (a finalizer on the batch's one buffer object, which every array
  of the batch, view or tensor aliasing it keeps alive). A worker reuses only
  a slot at 0; with none free, the batch travels pickled. So a batch the
  user keeps stays valid.
* Pages are reserved with ``posix_fallocate`` before they are written: a
  full memory fails there with an ``OSError`` (the batch then travels
  pickled) instead of a SIGBUS in the middle of a write.

Falls back, never breaks: without ``os.memfd_create``, or when a ring cannot
be made, the worker sends its batches pickled, and the first such batch
makes the trainer warn once (:class:`SharedMemoryWarning`). Batches under
:data:`MIN_BYTES` travel pickled anyway (cheaper than a slot).
The bound on the memory in use: docs/design.md, "Batches through shared memory".
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import warnings
import weakref
from math import prod
from typing import Any

import numpy as np

from npyseq.errors import WorkerError

__all__ = ["SharedMemoryWarning", "Arena", "available", "live_segments", "received_slots", "slots_kept",
           "MIN_BYTES", "SEGMENT_NAME"]

MIN_BYTES = 64 * 1024  # smaller batches travel pickled
SEGMENT_NAME = "npyseq-batch"  # in /proc/<pid>/maps as "/memfd:npyseq-batch (deleted)"
HEADROOM = 1.25  # a new ring's slots hold this many times the batch that needed it (batches vary)
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


def slots_kept(workers: int, max_queue_size: int) -> int:
    """Slots of one of ``workers`` workers' ring: its share of the batches Keras holds, plus one."""
    return -(-(max_queue_size + 2) // max(workers, 1)) + 1


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


class _Ring:
    """This worker's shared memory: ``slots`` slots of ``slot_bytes``, flag at byte 0 of each."""

    def __init__(self, slots: int, slot_bytes: int):
        self.slots, self.slot_bytes = slots, slot_bytes
        self.id = _state["ring_ids"] = _state["ring_ids"] + 1
        self.fd, self.map = _allocate(slots * slot_bytes)
        self.sent = False
        weakref.finalize(self, os.close, self.fd)

    def take(self) -> int | None:
        """A free slot, marked held; None if the trainer holds them all."""
        for k in range(self.slots):
            if self.map[k * self.slot_bytes] == 0:
                self.map[k * self.slot_bytes] = 1
                return k
        return None


class _Slot:
    """One slot of a ring, as a batch's arrays refer to it (pickled once per batch: the memo)."""

    __slots__ = ("ring", "index")

    def __init__(self, ring: _Ring, index: int):
        self.ring, self.index = ring, index

    @property
    def start(self) -> int:
        return self.index * self.ring.slot_bytes

    def release(self) -> None:
        """Never sent: free again."""
        self.ring.map[self.start] = 0

    def __reduce__(self):
        if not self.ring.sent:
            _announce(self.ring)
        return _slot_base, (_state["token"], self.ring.id, self.ring.slot_bytes, self.index)


def _announce(ring: _Ring) -> None:
    """Send ``ring``'s descriptor to the trainer, ahead of the batch that uses it first."""
    from multiprocessing import reduction
    channel = _state["channel"]
    retired, _state["retired"] = tuple(_state["retired"]), []
    channel.send(_NewRing(_state["token"], ring.id, ring.slots * ring.slot_bytes, retired))
    reduction.send_handle(channel, ring.fd, _state["trainer"])
    ring.sent = True


class _NewRing:
    """What a worker sends before a ring's descriptor (see :func:`adopt`)."""

    __slots__ = ("token", "ring", "nbytes", "retired")

    def __init__(self, token, ring: int, nbytes: int, retired: tuple = ()):
        self.token, self.ring, self.nbytes, self.retired = token, ring, nbytes, retired


class _Leaf:
    """An array of a batch, in a slot: pickles as ``(slot, offset, dtype, shape, order)``."""

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


# This worker's: its channel to the trainer (None: not a worker of npyseq's pool), the trainer's pid,
# its token, why it stopped using shared memory, whether the trainer heard it, its last ring id.
_state: dict = {}


def serve(channel, trainer: int) -> None:
    """This process is a worker of npyseq's pool, talking to ``trainer`` over ``channel``."""
    _state.update(channel=channel, trainer=trainer, token=(os.getpid(), os.urandom(8).hex()))


def _reset_after_fork() -> None:
    # A forked process decides for itself, with a ring of its own (never its parent's).
    _state.update(channel=None, trainer=None, token=None, failed=None, noticed=False, ring_ids=0, rings=[],
                  retired=[])


_reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


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


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _usable() -> bool:
    if _state["channel"] is None:
        return False  # not a worker of npyseq's pool: nobody to map a ring
    if _state["failed"] is None:
        _state["failed"] = available() or False
    return not _state["failed"]


def _failed(error: OSError, slots: int, slot_bytes: int) -> None:
    _state["failed"] = (f"a shared memory ring of {slots} slots of {slot_bytes} bytes could not be made "
                        f"({type(error).__name__}: {error})")


def _noticed(batch: Any) -> Any:
    if _state["noticed"] or not _state["failed"]:
        return batch
    _state["noticed"] = True
    return _Notice(batch, _state["failed"])


class Arena:
    """A worker's batch buffers, carved out of a slot of its ring: what is read there is not copied.

    ``empty(nbytes)`` (the :class:`~npyseq.keras.pool.BufferPool` call a
    sequence reads rows into) hands out the next part of the current slot,
    taken free when a batch starts; what does not fit comes from ``pool``.
    :meth:`pack` then copies into the slot only the arrays that are not in
    it yet (a transform's new arrays, casts).
    """

    def __init__(self, pool, workers: int, max_queue_size: int):
        self.pool, self.keep = pool, slots_kept(workers, max_queue_size)
        self.slot: _Slot | None = None  # the current batch's slot
        self.used = 0  # bytes of it handed out, after the flag

    def _take(self, nbytes: int) -> _Slot | None:
        """A free slot of at least ``nbytes`` of data: a new ring if those there are too small or all held."""
        need = _ALIGN + nbytes
        rings = _state["rings"]
        for ring in rings:
            if ring.slot_bytes >= need:
                index = ring.take()
                if index is not None:
                    return _Slot(ring, index)
        size = max([r.slot_bytes for r in rings if r.slot_bytes >= need], default=0)
        if not size:  # outgrown: the old rings go (the trainer's mappings live while their batches do)
            size = -(-int(need * HEADROOM) // mmap.PAGESIZE) * mmap.PAGESIZE
            _state["retired"] += [r.id for r in rings if r.sent]
            rings.clear()
        try:
            ring = _Ring(self.keep, size)  # or all held (a consumer that keeps batches): one more
        except OSError as e:
            _failed(e, self.keep, size)
            return None
        rings.append(ring)
        return _Slot(ring, ring.take())

    def empty(self, nbytes: int) -> np.ndarray:
        if self.slot is None and _state["rings"] and _usable():
            self.slot, self.used = self._take(0), 0  # of the rings' slot size: the batch may not fit
        slot, size = self.slot, _aligned(nbytes)
        if slot is None or _ALIGN + self.used + size > slot.ring.slot_bytes:
            return self.pool.empty(nbytes)
        start, self.used = slot.start + _ALIGN + self.used, self.used + size
        return np.frombuffer(slot.ring.map, np.uint8, nbytes, start)

    def pack(self, batch: Any) -> Any:
        """``batch`` with every array in shared memory, to be pickled to the trainer."""
        slot, self.slot = self.slot, None
        arrays: list = []
        _leaves(batch, arrays)
        unique = list({id(a): a for a in arrays}.values())
        total = sum(_aligned(a.nbytes) for a in unique)
        if total < MIN_BYTES or not _usable():
            if slot is not None:
                slot.release()
            return _noticed(batch)
        placed = {}  # id -> offset in the slot of the arrays already there
        if slot is not None:
            base = np.frombuffer(slot.ring.map, np.uint8).ctypes.data + slot.start
            for a in unique:
                offset = a.ctypes.data - base
                if ((a.flags.c_contiguous or a.flags.f_contiguous) and _ALIGN <= offset
                        and offset + a.nbytes <= slot.ring.slot_bytes):
                    placed[id(a)] = offset
        missing = sum(_aligned(a.nbytes) for a in unique if id(a) not in placed)
        used = _ALIGN + self.used
        if slot is None or used + missing > slot.ring.slot_bytes:
            if slot is not None:
                slot.release()
            slot = self._take(total)
            if slot is None:
                return _noticed(batch)  # every slot held (or no ring): pickled
            placed, used = {}, _ALIGN
        leaves = {}
        for a in unique:
            order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
            offset = placed.get(id(a))
            if offset is None:
                offset, used = used, used + _aligned(a.nbytes)
                np.copyto(_array(slot.ring.map, slot.start + offset, a.dtype, a.shape, order), a, casting="no")
            leaves[id(a)] = _Leaf(slot, offset, a.dtype, a.shape, order)
        return _replace(batch, leaves)


# -- trainer side (run by the unpickler, in the thread that waits for the batch)


def _array(buffer, offset: int, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    count = prod(shape)
    flat = np.frombuffer(buffer, dtype, count, offset) if count else np.empty(0, dtype)
    return flat.reshape(shape, order=order)


_lock = threading.Lock()
_live = {"segments": 0, "bytes": 0}
_rings: dict = {}  # (token, ring id) -> the trainer's mapping of that ring


def adopt(notice: _NewRing, fd: int) -> None:
    """Map a worker's new ring (closing ``fd``); its earlier rings go once their batches do."""
    try:
        mapping = mmap.mmap(fd, notice.nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    except OSError as e:
        raise WorkerError(
            f"a shared memory ring of {notice.nbytes} bytes sent by a worker process could not be mapped "
            f"in the trainer ({type(e).__name__}: {e}); pass shared_memory=False to the sequence to send "
            "batches pickled") from None
    finally:
        os.close(fd)
    with _lock:
        for ring in notice.retired:
            _rings.pop((notice.token, ring), None)
        _rings[(notice.token, notice.ring)] = mapping


def forget(tokens) -> None:
    """The workers of ``tokens`` are done: drop their rings (each lives on while a batch of it does)."""
    tokens = set(tokens)
    with _lock:
        for key in [k for k in _rings if k[0] in tokens]:
            del _rings[key]


def _released(mapping: mmap.mmap, flag: int, nbytes: int) -> None:
    """The trainer's last array of a batch is gone: its worker may reuse the slot."""
    mapping[flag] = 0
    with _lock:
        _live["segments"] -= 1
        _live["bytes"] -= nbytes


def _slot_base(token, ring: int, slot_bytes: int, index: int):
    """The buffer every array of one batch views: a slot of the trainer's mapping of its ring."""
    with _lock:
        mapping = _rings.get((token, ring))
    if mapping is None:
        raise WorkerError(f"a batch arrived in ring {ring} of worker {token[0]}, which the trainer never "
                          "received; pass shared_memory=False to the sequence to send batches pickled")
    start = index * slot_bytes
    base = (ctypes.c_char * slot_bytes).from_buffer(mapping, start)
    with _lock:
        _live["segments"] += 1
        _live["bytes"] += slot_bytes
    weakref.finalize(base, _released, mapping, start, slot_bytes)
    return base


def _view(base, offset: int, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    return _array(base, offset, dtype, shape, order)


def slot_of(array: np.ndarray):
    """The slot buffer ``array`` views, if it came from a worker through shared memory, else None."""
    while isinstance(array, (np.ndarray, memoryview)):
        array = array.base if isinstance(array, np.ndarray) else array.obj
    return array if isinstance(array, ctypes.Array) else None


def live_segments() -> tuple[int, int]:
    """``(batches, bytes)`` of slots of workers' rings this process still holds a batch in."""
    with _lock:
        return _live["segments"], _live["bytes"]


def received_slots() -> int:
    """Rings of workers this process keeps mapped for the pools that run (no descriptor is kept)."""
    with _lock:
        return len(_rings)


_warned = threading.Lock()


def _notify(batch: Any, reason: str) -> Any:
    if _warned.acquire(blocking=False):
        warnings.warn(
            f"npyseq: {reason}; batches of process workers now travel pickled "
            "(slower, same bytes). Pass shared_memory=False to the sequence to silence this.",
            SharedMemoryWarning, stacklevel=2)
    return batch
