"""What a sequence's views share and what sets them apart: :class:`Options` and :class:`Rows`.

A view of a :class:`npyseq.ShardSequence` (``split``, ``subset``, ``shard``,
``with_options``) is a copy of the sequence with another :class:`Rows` (which
dataset rows it reads, in its own order) and possibly other :class:`Options`
(how it batches them). Both are small frozen dataclasses: a view never
shares mutable state with the sequence it came from, and nothing in them
grows with the data.

>>> Options(batch_size=64, shuffle=True).shuffle
'global'
>>> Rows(0, 100).part(10, 20).span
(10, 20)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from npyseq.arguments import flag, positive_int
from npyseq.errors import InvalidArgumentError
from npyseq.order import check_seed, check_shuffle, split_rows

__all__ = ["Options", "OPTION_NAMES", "Rows"]


@dataclasses.dataclass(frozen=True)
class Options:
    """The settings of a sequence that its views may change (``ShardSequence.with_options``).

    Checked and normalized when made, so a sequence never holds a bad one;
    ``seq.batch_size = 64`` replaces the whole object, and views made after
    that use it.
    """

    batch_size: int = 32
    shuffle: bool | str = False
    seed: int = 0
    block_size: int | None = None
    drop_remainder: bool = False
    transform: Callable | None = None
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("batch_size", positive_int(self.batch_size, "batch_size"))
        put("shuffle", check_shuffle(self.shuffle))
        put("seed", check_seed(self.seed))
        put("block_size", None if self.block_size is None else positive_int(self.block_size, "block_size"))
        put("drop_remainder", flag(self.drop_remainder, "drop_remainder"))
        if self.steps_per_epoch is not None:
            put("steps_per_epoch", positive_int(self.steps_per_epoch, "steps_per_epoch"))
        if self.transform is not None and not callable(self.transform):
            raise InvalidArgumentError(f"transform must be callable, got {self.transform!r:.80}")


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options))


@dataclasses.dataclass(frozen=True)
class Rows:
    """Which dataset rows a sequence reads, in its own order.

    Position ``i`` (``0 <= i < count``) is position ``offset + i`` of the
    parent's order, first put through the keyed permutation of the
    parent's rows that ``ShardSequence.split`` draws when ``permuted``
    holds its ``(rows, seed)``. The parent is the dataset itself (position
    = row) when ``parent`` is None. Nothing here grows with the data.
    """

    offset: int
    count: int
    permuted: tuple[int, int] | None = None
    parent: "Rows | None" = None

    @property
    def span(self) -> tuple[int, int] | None:
        """``(start, stop)`` when the rows are one range of the dataset, in dataset order."""
        if self.permuted is None and self.parent is None:
            return self.offset, self.offset + self.count
        return None

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The dataset rows at ``positions`` (int64, in ``[0, count)``), in the same order."""
        p = positions + self.offset if self.offset else positions
        if self.permuted is not None:
            p = split_rows(p, *self.permuted)
        return p if self.parent is None else self.parent.rows(p)

    def part(self, start: int, stop: int) -> "Rows":
        """Positions ``[start, stop)`` of this selection."""
        return dataclasses.replace(self, offset=self.offset + start, count=stop - start)

    def shuffled(self, seed: int) -> "Rows":
        """All rows of this selection, in the order of the split permutation keyed by ``seed``."""
        return Rows(0, self.count, (self.count, seed), self)

    def describe(self) -> str:
        if self.span is not None:
            return f"rows [{self.span[0]}, {self.span[1]})"
        return f"{self.count} rows drawn by split(shuffle_rows=True)"
