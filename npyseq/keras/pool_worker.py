"""The worker side of npyseq's process pool (:mod:`npyseq.keras.executor`): take tasks, serve batches.

A worker takes the next task off the task socket that all workers of its
pool read, serves the batch from the datasets of the task's epoch (reading
the datasets of a later epoch from its own socket first, where the trainer
sent them ahead of that epoch's tasks), and sends it back on its own socket,
pickled as Keras' pool would (through shared memory, see
:mod:`npyseq.keras.transport`) after the task id. It exits at a stop, which
comes behind every task sent, or when the trainer is gone.

The wire format of both sides is here: a task is :data:`TASK` (no pickle),
the datasets of an epoch are :data:`RENEW` followed by their pickle, and
everything a worker sends starts with :data:`TAG`.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import struct
from multiprocessing import reduction

from npyseq.errors import WorkerError

__all__ = ["NOTICE", "RENEW", "STOP", "TAG", "TASK", "Raised", "serve"]

TASK = struct.Struct("<cqqqq")  # (b"T", epoch, task id, dataset uid, batch index), on the task socket
STOP = TASK.pack(b"E", 0, 0, 0, 0)  # no more tasks for the worker that reads it: exit
RENEW = struct.Struct("<cq")  # (b"S", epoch) and the pickled datasets of that epoch, on each worker's socket
TAG = struct.Struct("<q")  # ahead of everything a worker sends: the task id, or NOTICE
NOTICE = -1  # a message of the transport's (a new shared memory ring), not a batch


class Raised:
    """An exception raised in a worker, raised again by the trainer."""

    def __init__(self, error: BaseException):
        self.error = error


class _Notices:
    """The transport's channel to the trainer, in a worker: its messages go tagged :data:`NOTICE`."""

    def __init__(self, conn):
        self.conn = conn

    def send(self, obj) -> None:
        self.conn.send_bytes(TAG.pack(NOTICE) + reduction.ForkingPickler.dumps(obj))

    def fileno(self) -> int:  # reduction.send_handle passes descriptors over it
        return self.conn.fileno()


def _tagged(task: int, value) -> memoryview:
    """``value`` pickled, as Keras' pool would, after the task id."""
    buffer = io.BytesIO()
    buffer.write(TAG.pack(task))
    reduction.ForkingPickler(buffer).dump(value)
    return buffer.getbuffer()


def serve(conn, tasks: socket.socket, sequences: dict, trainer: int, inherited: list) -> None:
    """A worker: batches for the tasks it takes, until it takes a stop or the trainer is gone."""
    for fd in inherited:  # the trainer's ends of sockets (forked): keep none, or EOF never comes
        try:
            os.close(fd)
        except OSError:
            pass
    from npyseq.keras import transport, watchdog
    watchdog.prepare_worker()  # Ctrl-C is the trainer's
    transport.serve(_Notices(conn), trainer)
    epoch, broken = 0, None
    while True:
        try:
            data = tasks.recv(TASK.size)
        except OSError:
            return
        if len(data) != TASK.size:
            return  # b"": the trainer is gone
        kind, task_epoch, task, uid, index = TASK.unpack(data)
        if kind != b"T":
            return  # stop
        while epoch < task_epoch:  # a kept pool's next epoch: its datasets came ahead of its tasks
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return
            _, epoch = RENEW.unpack_from(message)
            if epoch != task_epoch:
                continue  # an epoch this worker took no task of
            try:  # opened while the last epoch's are alive: a dataset still open here is reused
                renewed = pickle.loads(memoryview(message)[RENEW.size:])
                sequences.clear()
                sequences.update(renewed)
                del renewed
                broken = None
            except Exception as e:  # e.g. its files are gone: each of its batches says so
                sequences.clear()
                broken = WorkerError(f"the dataset of the next epoch could not be opened in a worker process "
                                     f"({type(e).__name__}: {e})")
        try:
            if broken is not None:
                raise broken
            value = sequences[uid][index]
        except Exception as e:
            value = Raised(e)
        try:
            payload = _tagged(task, value)
        except Exception as e:
            payload = _tagged(task, Raised(WorkerError(
                f"batch {index} could not be pickled in the worker process ({type(e).__name__}: {e})")))
        try:
            conn.send_bytes(payload)
        except OSError:
            return
        del value, payload
