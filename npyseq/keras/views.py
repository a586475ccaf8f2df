"""Views of a sequence: other rows, or other settings, of the same data (no copy).

:class:`SequenceViews` is the part of :class:`npyseq.ShardSequence` that
makes views: ``subset``, ``split``, ``shard`` (a host's part of every global
batch) and ``with_options``. A view is a shallow copy of the sequence with
another :class:`~npyseq.keras.options.Rows`, host slice or
:class:`~npyseq.keras.options.Options`, at epoch 0; it shares no mutable
state with the sequence it came from.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from npyseq import order
from npyseq.arguments import flag, integer
from npyseq.errors import InvalidArgumentError
from npyseq.keras import hosts
from npyseq.keras.options import OPTION_NAMES, Rows

__all__ = ["SequenceViews"]


class SequenceViews:
    """Mixin of :class:`npyseq.ShardSequence`: its views (see the module)."""

    def subset(self, start: int, stop: int) -> "SequenceViews":
        """A sequence over positions ``[start, stop)`` of this one, with its settings (no copy)."""
        n = self.num_rows
        start, stop = integer(start, "start"), integer(stop, "stop")
        if not 0 <= start <= stop <= n:
            raise InvalidArgumentError(f"subset needs 0 <= start <= stop <= {n}, got start={start}, stop={stop}")
        return self._view(self._rows.part(start, stop), f"subset({start}, {stop})")

    def split(self, fraction_or_rows: float | int, *, shuffle_rows: bool = False,
              seed: int = 0) -> tuple["SequenceViews", "SequenceViews"]:
        """Training and validation parts: disjoint, together every row of this sequence (no copy).

        The first part takes ``fraction`` of the rows (or ``rows`` rows) and
        this sequence's settings. The second part is for validation, as
        Keras' ``validation_split`` does it: its rows in order, whole and
        untransformed (``shuffle=False``, ``drop_remainder=False``,
        ``transform=None``), so ``evaluate`` and ``predict`` see every row
        once, as stored. To change that, make a view of it:
        ``val.with_options(transform=center_crop)``.

        ``shuffle_rows=False`` (the default) cuts the rows where they stand:
        the first rows, then the last ones (contiguous reads). Use it when
        the rows are in no particular order, or the last rows are the right
        hold-out.

        ``shuffle_rows=True`` draws each part at random (a keyed permutation
        of the rows, keyed by ``seed`` alone, is cut in two; nothing is
        copied): for rows sorted by class, source or date. ``predict`` on
        such a part returns its rows in ``val.batch_rows(0), ...`` order;
        docs/guide.md, "Views", has the details.

        >>> train, val = seq.split(0.9)                     # or seq.split(90_000)
        >>> train, val = seq.split(0.9, shuffle_rows=True)  # data sorted by class
        """
        n = self.num_rows
        v = fraction_or_rows
        if isinstance(v, float) and 0.0 < v < 1.0:
            k = int(round(v * n))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= n:
            k = int(v)
        else:
            raise InvalidArgumentError(
                f"split takes a fraction in (0, 1) or a row count in [0, {n}], got {fraction_or_rows!r}"
            )
        shuffle_rows = flag(shuffle_rows, "shuffle_rows")
        rows = self._rows.shuffled(order.check_seed(seed)) if shuffle_rows else self._rows
        what = f"split({fraction_or_rows!r}) of {n} rows"
        train = self._view(rows.part(0, k), f"{what}, first part")
        val = self._view(rows.part(k, n), f"{what}, second part", shuffle=False, drop_remainder=False,
                         transform=None, steps_per_epoch=None)
        return train, val

    def shard(self, num_hosts: int | None = None, index: int | None = None) -> "SequenceViews":
        """Host ``index``'s part of every global batch, of ``num_hosts`` hosts (no copy).

        ``batch_size`` is the global batch: each host gets ``batch_size //
        num_hosts`` rows of every global batch (a contiguous stretch of its
        sorted rows), the same steps on every host, and the hosts' parts at
        step ``s`` together are global batch ``s`` of this sequence.
        Without arguments the hosts come from the active Keras distribution
        (or JAX). See "Several hosts" in docs/guide.md.

        >>> host = seq.shard()          # under keras.distribution, auto_shard_dataset=False
        >>> host = seq.shard(4, 1)      # host 1 of 4
        """
        host = hosts.host_slice(num_hosts, index, self._host, self)
        return self._view(self._rows, f"shard({host.num_hosts}, {host.index})", host=host)

    def with_options(self, **changes: Any) -> "SequenceViews":
        """A view of the same rows with some settings changed (no copy).

        Takes ``batch_size``, ``shuffle``, ``seed``, ``block_size``, ``drop_remainder``,
        ``transform`` and ``steps_per_epoch``, checked as the constructor checks them; the
        rest comes from this sequence as it is now. The view starts at epoch 0.
        ``val.with_options(batch_size=1024)``: bigger batches for evaluation.
        """
        unknown = sorted(set(changes) - set(OPTION_NAMES))
        if unknown:
            raise InvalidArgumentError(f"with_options takes {list(OPTION_NAMES)}, got {unknown}")
        return self._view(self._rows, f"with_options({', '.join(sorted(changes))})", **changes)

    def _view(self, rows: Rows, what: str, host: order.HostSlice | None = None, **changes: Any) -> "SequenceViews":
        """A copy over ``rows`` (for ``host``, else this one's), with ``changes`` to its options, at epoch 0."""
        options = dataclasses.replace(self._options, **changes) if changes else self._options
        view = copy.copy(self)
        view._host = self._host if host is None else host
        view._rows, view._options = rows, view._checked_options(options, rows, what)
        view._reset_state()
        return view
