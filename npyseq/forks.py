"""One way to start afresh in a forked child, for every piece of npyseq state.

A process forked while another thread holds a lock inherits the lock held,
by a thread that does not exist in the child: the child's first use would
wait forever. Keras' process workers are forked this way on Linux (up to
Python 3.13) while the trainer's threads run. Each object holding locks,
open files or per-process caches registers a reset here; in the child,
``os.register_at_fork(after_in_child=...)`` runs every reset of the objects
still alive (weak references: registering keeps nothing alive).

This module imports nothing of npyseq: every layer may use it.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable

__all__ = ["after_fork", "new_lock_after_fork"]

_resets: "weakref.WeakKeyDictionary[object, Callable[[object], None]]" = weakref.WeakKeyDictionary()
_functions: list[Callable[[], None]] = []


def after_fork(owner: object, reset: Callable[[object], None] | None = None) -> None:
    """Call ``reset(owner)`` (default: ``owner.reset_after_fork()``) in every
    forked child while ``owner`` is alive; a plain function as ``owner`` with
    no ``reset`` is called itself, for module-level state."""
    if reset is None and callable(owner) and not hasattr(owner, "reset_after_fork"):
        _functions.append(owner)  # module state lives as long as the module
        return
    _resets[owner] = reset if reset is not None else type(owner).reset_after_fork


def new_lock_after_fork(holder: object, attribute: str, factory=threading.Lock) -> None:
    """Give ``holder.attribute`` a new lock in every forked child."""
    after_fork(holder, lambda h: setattr(h, attribute, factory()))


def _in_child() -> None:
    for fn in list(_functions):
        fn()
    for owner, reset in list(_resets.items()):
        reset(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
