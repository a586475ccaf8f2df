"""Several hosts: which rows of every global batch one host (or process) reads.

Data-parallel training on ``n`` hosts splits every *global* batch of
``batch_size`` rows into ``n`` equal *host parts* of ``batch_size // n``
rows: the union of the hosts' parts at step ``s`` is exactly global batch
``s`` of the unsharded sequence, so training on 1, 2 or 4 hosts sees the same
rows in the same steps. The global order never depends on the number of
hosts; only the cut of each batch does.

Host ``h`` takes positions ``[h*b/n, (h+1)*b/n)`` of the global batch's rows
in ascending order (``b`` rows in the batch). In dataset order
(``shuffle=False``) and under ``"batches"`` a global batch is one range of
rows, so each host's part is one contiguous read; under ``"blocks"`` and
``"global"`` each host reads a contiguous stretch of the batch's sorted rows,
so it opens only the shards that stretch lies in (about ``1/n`` of those the
whole batch touches).

A :class:`HostSlice` says which part a sequence serves:

* ``HostSlice(n, h)``: item ``s`` is host ``h``'s part of global batch ``s``;
  the sequence has as many items as the unsharded one.
* ``HostSlice(n, None)`` (*strided*): item ``j`` is part ``j % n`` of global
  batch ``j // n``, the same sequence on every host, ``n`` times as many
  items. It is for a Keras that itself strides batch indices over processes
  (process ``p`` asks for items ``p, p + n, p + 2n, ...``): process ``p`` then
  reads its part of every global batch, and nothing is sharded twice.

>>> import numpy as np
>>> rows = np.array([3, 8, 11, 20, 31, 40])       # a global batch, ascending
>>> [host_part(rows, HostSlice(3, h), h).tolist() for h in range(3)]
[[3, 8], [11, 20], [31, 40]]
>>> locate(5, HostSlice(2, None))                 # strided: item 5 is part 1 of batch 2
(2, 1)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from npyseq.arguments import integer, positive_int
from npyseq.errors import InvalidArgumentError

__all__ = ["HostSlice", "check_hosts", "num_items", "locate", "part_bounds", "host_part"]


@dataclasses.dataclass(frozen=True)
class HostSlice:
    """Which part of every global batch a sequence serves (see the module).

    ``num_hosts`` is a positive int; ``index`` an int in ``[0, num_hosts)``,
    or ``None`` for the strided form (every part in turn, for a Keras that
    strides batch indices over processes).
    """

    num_hosts: int
    index: int | None

    def __post_init__(self):
        num_hosts = positive_int(self.num_hosts, "num_hosts")
        index = self.index
        if index is not None:
            index = integer(index, "index")
            if not 0 <= index < num_hosts:
                raise InvalidArgumentError(
                    f"index must be in [0, {num_hosts}) for num_hosts={num_hosts}, got {index}"
                )
        object.__setattr__(self, "num_hosts", num_hosts)
        object.__setattr__(self, "index", index)

    @property
    def strided(self) -> bool:
        """Whether the sequence serves every host's part in turn (``index is None``)."""
        return self.index is None

    def describe(self) -> str:
        if self.strided:
            return f"all {self.num_hosts} host parts in turn"
        return f"host {self.index} of {self.num_hosts}"


def check_hosts(rows: int, batch_size: int, drop_remainder: bool, host: HostSlice | None,
                what: str) -> None:
    """Refuse a host slice whose hosts cannot share every global batch equally.

    Every host must run the same number of steps with the same shapes, so
    ``batch_size`` and the last partial batch (``drop_remainder=False``) must
    split into ``num_hosts`` equal parts. ``what`` names the sequence or view.
    """
    if host is None or host.num_hosts == 1:
        return
    n = host.num_hosts
    if batch_size % n:
        raise InvalidArgumentError(
            f"{what}: batch_size={batch_size} is the global batch, which {n} hosts share equally; "
            f"{batch_size} is not a multiple of {n}: use a batch_size that is (e.g. "
            f"{max(n, batch_size // n * n)})"
        )
    last = rows % batch_size
    if not drop_remainder and last % n:
        raise InvalidArgumentError(
            f"{what}: the last global batch has {last} rows ({rows} rows, batch_size={batch_size}), "
            f"which {n} hosts cannot share equally, and every host must run the same steps with "
            f"the same shapes: use drop_remainder=True (it leaves out {last} rows an epoch, other "
            f"ones each epoch when shuffling), or a number of rows whose remainder is a multiple of {n}"
        )


def num_items(global_batches: int, host: HostSlice | None) -> int:
    """Items of a sequence of ``global_batches`` global batches that serves ``host``."""
    return global_batches * host.num_hosts if host is not None and host.strided else global_batches


def locate(item: int, host: HostSlice) -> tuple[int, int]:
    """``(global batch, part)`` that item ``item`` of a sequence serving ``host`` is."""
    if host.strided:
        return divmod(item, host.num_hosts)
    return item, host.index


def part_bounds(size: int, num_hosts: int, part: int) -> tuple[int, int]:
    """``(start, stop)`` of part ``part`` of a global batch of ``size`` rows (a multiple of ``num_hosts``)."""
    per = size // num_hosts
    return part * per, (part + 1) * per


def host_part(rows: np.ndarray, host: HostSlice, part: int) -> np.ndarray:
    """Part ``part`` of the global batch ``rows`` (ascending): its ``part``-th contiguous stretch."""
    start, stop = part_bounds(len(rows), host.num_hosts, part)
    return rows[start:stop]
