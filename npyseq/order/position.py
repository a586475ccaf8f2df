"""Where a training is: global step <-> (Keras epoch, batch of that epoch) <-> (pass, batch of the pass).

A *pass* is one use of every row (what :mod:`npyseq.order` calls an epoch:
its order depends on ``(seed, pass)``); it has ``batches_per_pass``
batches. A *Keras epoch* is what ``fit`` counts: by default one pass, or
``steps_per_epoch`` batches when the sequence is given that, so that a pass
spans several Keras epochs (or a Keras epoch several passes) and still uses
every row exactly once per pass. The *global step* of a batch is the number
of batches trained before it since epoch 0, batch 0.

Pure arithmetic on ints, nothing else: any process computes the same
answer, and resuming at a step is a division.

>>> locate(batches_per_pass=10, steps_per_epoch=4, epoch=2, index=3)   # step 11
(1, 1)
>>> position_of_step(10, 4, 11)
(2, 3)
>>> position_of_step(10, None, 11)
(1, 1)
"""

from __future__ import annotations

from npyseq.arguments import non_negative_int, positive_int

__all__ = ["epoch_length", "global_step", "locate", "position_of_step"]


def epoch_length(batches_per_pass: int, steps_per_epoch: int | None) -> int:
    """Batches in one Keras epoch: ``steps_per_epoch``, or a whole pass when it is ``None``."""
    batches_per_pass = positive_int(batches_per_pass, "batches_per_pass")
    return batches_per_pass if steps_per_epoch is None else positive_int(steps_per_epoch, "steps_per_epoch")


def global_step(batches_per_pass: int, steps_per_epoch: int | None, epoch: int, index: int) -> int:
    """The global step of batch ``index`` of Keras epoch ``epoch``."""
    length = epoch_length(batches_per_pass, steps_per_epoch)
    return non_negative_int(epoch, "epoch") * length + non_negative_int(index, "index")


def locate(batches_per_pass: int, steps_per_epoch: int | None, epoch: int, index: int) -> tuple[int, int]:
    """``(pass, batch of that pass)`` of batch ``index`` of Keras epoch ``epoch``.

    Without ``steps_per_epoch`` a Keras epoch is a pass: ``(epoch, index)``.
    """
    step = global_step(batches_per_pass, steps_per_epoch, epoch, index)
    return divmod(step, batches_per_pass)


def position_of_step(batches_per_pass: int, steps_per_epoch: int | None, step: int) -> tuple[int, int]:
    """``(Keras epoch, batch of that epoch)`` where global step ``step`` falls (the inverse of :func:`global_step`)."""
    return divmod(non_negative_int(step, "step"), epoch_length(batches_per_pass, steps_per_epoch))
