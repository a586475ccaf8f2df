"""npyseq's process pool (npyseq/keras/executor.py): what Keras' enqueuer gets for an npyseq sequence.

Epochs run through Keras' own adapter in this process, with fork workers (the
platform default here); start methods, backends and the kill cases run in
subprocesses in test_shared_memory.py, test_worker_failures.py and
test_fit_safety.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

import npyseq
from npyseq.errors import WorkerDiedError, WorkerError
from npyseq.keras import executor

ROWS, BATCH = 640, 64


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    root = tmp_path_factory.mktemp("executor") / "data"
    x = np.arange(ROWS * 512, dtype=np.float32).reshape(ROWS, 512)  # 128 KiB batches: shared memory
    npyseq.write_shards(root, {"x": x, "y": np.arange(ROWS)}, rows=200, progress=False)
    return str(root)


def _sequence(path, **options):
    options = {"workers": 2, "use_multiprocessing": True, **options}
    return npyseq.ShardSequence(path, x="x", y="y", batch_size=BATCH, **options)


def _epoch(adapter) -> list:
    adapter.on_epoch_begin()
    batches = [(x.copy(), y.copy()) for x, y in adapter.get_numpy_iterator()]
    adapter.on_epoch_end()
    return batches


def _pools(seq) -> list:
    from keras.src.trainers.data_adapters import py_dataset_adapter
    return [p for p in list(py_dataset_adapter._DATA_POOLS) if isinstance(p, executor.ProcessPool)]


def _rows(batches) -> list:
    return [b[1].tolist() for b in batches]


def test_a_kept_pool_serves_the_next_epoch_in_that_epochs_order(path):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    seq = _sequence(path, shuffle="global", seed=3)
    reference = _sequence(path, shuffle="global", seed=3, workers=0, use_multiprocessing=False)
    earlier = set(map(id, _pools(seq)))  # other tests' pools, kept for their default 2 s
    adapter = PyDatasetAdapter(seq, shuffle=False)
    first = _epoch(adapter)
    pool, = [p for p in _pools(seq) if id(p) not in earlier]
    second = _epoch(adapter)
    assert [p for p in _pools(seq) if id(p) not in earlier] == [pool] and pool._epoch == 1  # it served epoch 2
    assert seq.epoch == 2
    reference.epoch = 0
    assert _rows(first) == [reference[i][1].tolist() for i in range(len(reference))]
    reference.epoch = 1  # the order of epoch 1, which the workers were sent
    assert _rows(second) == [reference[i][1].tolist() for i in range(len(reference))]
    assert _rows(first) != _rows(second)
    for (x, y) in second:
        assert np.array_equal(x, np.arange(512, dtype=np.float32) + 512 * y[:, None].astype(np.float32))


def test_a_pool_not_reopened_in_time_ends_and_the_next_epoch_gets_a_new_one(path, monkeypatch):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    monkeypatch.setattr(executor, "KEEP_SECONDS", 0.2)
    seq = _sequence(path)
    earlier = set(map(id, _pools(seq)))  # other tests' pools, kept for their default 2 s
    adapter = PyDatasetAdapter(seq, shuffle=False)
    _epoch(adapter)
    old = [p for pool in _pools(seq) if id(pool) not in earlier for p in pool._pool]
    assert len(old) == 2
    deadline = time.monotonic() + 1.5  # well before the default KEEP_SECONDS (2 s)
    while any(p.is_alive() for p in old) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in old)  # ended after 0.2 s unused
    batches = _epoch(adapter)
    assert _rows(batches) == [list(range(i, i + BATCH)) for i in range(0, ROWS, BATCH)]
    assert {p.pid for pool in _pools(seq) for p in pool._pool if p.is_alive()}.isdisjoint(p.pid for p in old)


def test_datasets_that_do_not_pickle_are_not_sent_to_a_kept_pool(path):
    import threading
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)})
    try:
        pool.close()
        assert not pool.reopen({0: threading.Lock()})  # not picklable: the next epoch gets a new pool
        assert pool.reopen({0: _sequence(path, shuffle="batches", seed=1)})  # still kept until then
        want = _sequence(path, shuffle="batches", seed=1)[2][1].tolist()
        assert pool.apply_async(None, (0, 2)).get()[1].tolist() == want
    finally:
        pool.terminate()
        pool.join()


def test_a_worker_killed_fails_every_batch_owed_with_worker_died_error(path):
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 2, {7: _sequence(path)})
    try:
        assert pool.apply_async(None, (7, 0)).get()[1].tolist() == list(range(BATCH))
        victim = pool._pool[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        results = [pool.apply_async(None, (7, i)) for i in range(1, 5)]  # any of them might have been its
        try:  # the one read in the same wait as the death may be in (made by the live worker)
            assert results[0].get(timeout=30)[1].tolist() == list(range(BATCH, 2 * BATCH))
        except WorkerDiedError:
            pass
        for result in results[1:]:  # none after that
            with pytest.raises(WorkerDiedError, match=rf"\(pid {victim.pid}\) was killed by signal 9 \(SIGKILL\)"):
                result.get(timeout=30)
        with pytest.raises(WorkerDiedError):  # and so is every later one, at once
            pool.apply_async(None, (7, 5)).get(timeout=1)
        pool.close()
        assert not pool.reopen({7: _sequence(path)})  # a broken pool serves no further epoch
        pool._pool[0].join(10)
        assert pool._pool[0].exitcode == 0  # the live worker read its stop and exited
    finally:
        pool.terminate()
        pool.join()


def _slow_on_batch_0(batch, rng):
    if int(batch[1][0]) == 0:
        time.sleep(6)
    return batch


def test_a_free_worker_takes_the_next_task_while_another_is_busy(path):
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 2, {0: _sequence(path, transform=_slow_on_batch_0)})
    try:
        results = [pool.apply_async(None, (0, i)) for i in range(10)]
        start = time.monotonic()
        for i in range(1, 10):  # round-robin would have queued 2, 4, 6, 8 behind batch 0
            assert results[i].get(timeout=30)[1][0] == i * BATCH
        assert time.monotonic() - start < 4 and not results[0].ready()  # all served by the other worker
        assert results[0].get(timeout=30)[1][0] == 0
    finally:
        pool.close()
        pool.join()


def test_a_kept_pool_serves_each_epoch_with_that_epochs_dataset_whichever_worker_takes_it(path):
    first = _sequence(path, shuffle="batches", seed=0)
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 2, {0: first}, keep_seconds=5)
    try:
        for epoch in range(6):  # some epochs have one task: a worker skips the datasets of epochs it missed
            seq = _sequence(path, shuffle="batches", seed=epoch)
            if epoch:
                pool.close()
                assert pool.reopen({0: seq})
            tasks = [3] if epoch % 2 else [3, 4, 5, 6]
            got = [pool.apply_async(None, (0, i)) for i in tasks]
            assert [r.get(timeout=30)[1].tolist() for r in got] == [seq[i][1].tolist() for i in tasks], epoch
    finally:
        pool.terminate()
        pool.join()


def test_a_result_keras_let_go_of_does_not_keep_its_batch_or_its_slot(path):
    import gc

    from npyseq.keras import transport
    gc.collect()  # batches of earlier tests go now, not during the count below
    rings = transport.received_slots()
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)})
    try:
        for k in range(10):  # far more batches dropped than the ring has slots (4)
            pool.apply_async(None, (0, 2 * k % 10))  # dropped at once, as Keras drops futures it will not get
            assert pool.apply_async(None, (0, (2 * k + 1) % 10)).get(timeout=30)[1][0] == (2 * k + 1) % 10 * BATCH
        # Each dropped batch was read, mapped and let go (its slot free again): one ring served them all,
        # where slots held by batches never read would have made the worker open more.
        assert transport.received_slots() == rings + 1
    finally:
        pool.close()
        pool.join()


def test_a_pool_that_keeps_nothing_still_serves_the_tasks_queued_before_close(path):
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 2, {0: _sequence(path)}, keep_seconds=0)
    try:
        results = [pool.apply_async(None, (0, i)) for i in range(10)]
        pool.close()  # as Keras does right after the last task: the stops queue behind the tasks
        assert [r.get(timeout=30)[1][0] for r in results] == [i * BATCH for i in range(10)]
        for p in pool._pool:
            p.join(10)
        assert [p.exitcode for p in pool._pool] == [0, 0]
    finally:
        pool.terminate()
        pool.join()


def test_a_process_forked_later_holds_no_end_of_a_pools_sockets(path):
    # Or a worker would not see its trainer die for as long as that process lives.
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)})
    try:
        ends = {pool._tasks.fileno(), pool._workers[0].conn.fileno()}
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            try:
                still = [fd for fd in ends if _is_open(fd)]
                os.write(write, repr(still).encode())
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 1000) == b"[]"
        os.close(read)
        os.waitpid(child, 0)
        assert pool.apply_async(None, (0, 1)).get(timeout=30)[1][0] == BATCH  # the trainer's ends are open
    finally:
        pool.close()
        pool.join()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class _Unloadable:
    def __reduce__(self):
        return _refuse, ()


def _refuse():
    raise TypeError("not in the trainer")


def _unloadable_on_batch_2(batch, rng):
    if int(batch[1][0]) == 2 * BATCH:
        return batch[0], _Unloadable()
    return batch


def test_a_batch_the_trainer_cannot_unpickle_fails_alone(path):
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1,
                                {0: _sequence(path, transform=_unloadable_on_batch_2)})
    try:
        results = [pool.apply_async(None, (0, i)) for i in range(4)]
        with pytest.raises(WorkerError, match=r"batch 2 sent by a worker process could not be unpickled in the "
                           r"trainer \(TypeError: not in the trainer\)"):
            results[2].get()
        assert [results[i].get()[1][0] for i in (0, 1, 3)] == [0, BATCH, 3 * BATCH]
    finally:
        pool.close()
        pool.join()


def test_an_exception_in_a_worker_is_raised_by_get_and_the_worker_goes_on(path):
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)})
    try:
        with pytest.raises(IndexError, match="batch index 99 is out of range: this epoch has 10 batches"):
            pool.apply_async(None, (0, 99)).get()
        assert pool.apply_async(None, (0, 1)).get()[1][0] == BATCH
    finally:
        pool.close()
        pool.join()


def test_tasks_carry_no_pickle_and_a_closed_pool_refuses_tasks(path):
    from npyseq.keras import pool_worker
    assert pool_worker.TASK.size == 33  # b"T", epoch, task id, dataset uid, batch index
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)}, keep_seconds=0)
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(None, (0, 0))
    assert not pool.reopen({0: _sequence(path)})  # ended at once: keep_seconds=0
    pool.join()


def test_a_kept_pool_has_one_timer_however_many_epochs_it_serves(path):
    import threading
    timers = lambda: sum(isinstance(t, threading.Timer) for t in threading.enumerate())  # noqa: E731
    before = timers()
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)}, keep_seconds=0.5)
    try:
        for epoch in range(10):  # epochs far shorter than keep_seconds
            assert pool.apply_async(None, (0, epoch)).get()[1][0] == epoch * BATCH
            pool.close()
            assert timers() <= before + 1
            assert pool.reopen({0: _sequence(path)})
        pool.close()
        deadline = time.monotonic() + 10
        while pool._pool[0].is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pool._pool[0].is_alive()  # ended 0.5 s after the last close
        while timers() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert timers() == before
    finally:
        pool.terminate()
        pool.join()


def test_reopening_never_blocks_on_a_worker_that_reads_no_datasets(path):
    # A worker that takes no task for many epochs reads none of their datasets: once its socket is
    # full the pool ends (the next epoch gets a new one) instead of blocking the trainer for good.
    pool = executor.ProcessPool(multiprocessing.get_context("fork"), 1, {0: _sequence(path)}, keep_seconds=60)
    filler = b"x" * 2**16  # 64 KiB a message: a socket holds a few
    try:
        outcomes = []
        for _ in range(64):
            pool.close()
            outcomes.append(pool.reopen({0: _sequence(path), 1: filler}))
            if not outcomes[-1]:
                break
        assert outcomes[-1] is False and outcomes.count(False) == 1 and outcomes.count(True) >= 1
        assert pool._ended
        pool._pool[0].join(10)
        assert pool._pool[0].exitcode == 0  # it read the stop behind the tasks, and exited
    finally:
        pool.terminate()
        pool.join()
