"""The shared argument checks (npyseq.arguments) and the after-fork resets (npyseq.forks)."""

import os
import threading

import numpy as np
import pytest

from npyseq import arguments, forks
from npyseq.errors import InvalidArgumentError


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(200), 2**62])
def test_positive_ints_are_taken_as_python_ints(value):
    out = arguments.positive_int(value, "batch_size")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value, message", [
    (0, "batch_size must be a positive int, got 0"),
    (-3, "batch_size must be a positive int, got -3"),
    (True, "batch_size must be a positive int, got True"),
    (np.bool_(True), "batch_size must be a positive int, got np.True_"),
    (2.0, "batch_size must be a positive int, got 2.0"),
    ("8", "batch_size must be a positive int, got '8'"),
    (2**62 + 1, "batch_size must be at most 2**62, got 4611686018427387905"),
    (10**400, "batch_size must be at most 2**62, got 1000000000000000000000000000000000000000... (401 characters)"),
])
def test_bad_ints_are_refused_naming_the_argument_and_the_value(value, message):
    with pytest.raises(InvalidArgumentError) as e:
        arguments.positive_int(value, "batch_size")
    assert str(e.value) == message


def test_non_negative_and_bounded_ints():
    assert arguments.non_negative_int(0, "epoch") == 0
    with pytest.raises(InvalidArgumentError, match=r"^epoch must be a non-negative int, got -1$"):
        arguments.non_negative_int(-1, "epoch")
    with pytest.raises(InvalidArgumentError, match=r"^jobs must be at most 1024, got 1025$"):
        arguments.positive_int(1025, "jobs", maximum=1024)


def test_one_of_compares_bools_only_to_bools():
    assert arguments.one_of("global", "shuffle", [False, "global"]) == "global"
    assert arguments.one_of(False, "shuffle", [False, "global"]) is False
    with pytest.raises(InvalidArgumentError, match=r"^shuffle must be one of False, 'global'; got 0$"):
        arguments.one_of(0, "shuffle", [False, "global"])


def test_flag():
    assert arguments.flag(np.bool_(False), "drop_remainder") is False
    with pytest.raises(InvalidArgumentError, match=r"^drop_remainder must be True or False, got 1$"):
        arguments.flag(1, "drop_remainder")


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_lock_held_by_another_thread_is_new_in_a_forked_child():
    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

    holder = Holder()
    forks.new_lock_after_fork(holder, "lock")
    taken, release = threading.Event(), threading.Event()

    def hold():
        with holder.lock:
            taken.set()
            release.wait(20)

    t = threading.Thread(target=hold)
    t.start()
    taken.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the holding thread does not exist here
            os._exit(0 if holder.lock.acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_dropped_owner_is_not_kept_alive():
    import gc
    import weakref

    class Owner:
        def reset_after_fork(self):
            pass

    owner = Owner()
    forks.after_fork(owner)
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None
