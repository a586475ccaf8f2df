"""Wall time of each epoch of ``model.fit``, as a Keras callback (imports Keras).

>>> from tools.timing import EpochTimer
>>> timer = EpochTimer()
>>> model.fit(seq, epochs=3, callbacks=[timer])
>>> timer.seconds                       # one entry per epoch
[2.31, 1.02, 1.01]
"""

from __future__ import annotations

import time
from typing import Callable

import keras


class EpochTimer(keras.callbacks.Callback):
    """Appends the seconds of each epoch to ``seconds``.

    ``before_epoch(epoch)``, if given, runs at the start of each epoch before
    the clock starts (e.g. to drop the page cache for a cold epoch).
    """

    def __init__(self, before_epoch: Callable[[int], None] | None = None):
        super().__init__()
        self.seconds: list[float] = []
        self._before_epoch = before_epoch
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self._before_epoch is not None:
            self._before_epoch(epoch)
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
