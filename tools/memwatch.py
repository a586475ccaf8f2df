"""Peak anonymous memory of a process and its children, sampled in a thread.

Memory-mapped pages count in RSS (and in USS: a shard mapped by one process
only is "private") but are page cache the kernel can drop, so npyseq reports
anonymous memory. Worker processes forked by Keras share most of their
anonymous pages with the parent, so the total is the sum of ``Pss_Anon``
(anonymous pages, each shared page divided among its sharers) over the
process and its children: every anonymous page is counted exactly once.

>>> from tools.memwatch import PeakMemory
>>> with PeakMemory() as peak:
...     model.fit(seq)
>>> peak.max_bytes, peak.main_bytes, peak.children_bytes
>>> peak.main_shmem_bytes, peak.shmem_bytes   # shared memory: RssShmem of the process, Pss_Shmem of the tree

Shared memory (``/dev/shm``, memfd, ``MAP_SHARED|MAP_ANONYMOUS``) is not
anonymous memory: batches that process workers hand over through it are
counted apart, as ``RssShmem`` of the process and the summed ``Pss_Shmem``
of the tree (each shared page counted once).

A sample reads ``smaps_rollup`` of every process of the tree, which walks
their page tables: with process workers that each map a 1 GB dataset it took
100-250 ms (measured on 2 cores), so sampling every 0.1 s took a whole core
from the run being measured, and more from runs with more processes. The
sampler therefore waits at least ``1 / duty - 1`` times as long as its last
sample took (``duty=0.05``: at most 5% of one core), and never less than
``interval``.
"""

from __future__ import annotations

import os
import re
import threading
import time

import psutil

__all__ = ["PeakMemory", "rss_anon", "pss_anon", "rss_shmem", "pss_shmem"]


def _field(path: str, name: str) -> int:
    try:
        with open(path) as f:
            m = re.search(rf"^{name}:\s+(\d+) kB", f.read(), re.M)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return int(m.group(1)) * 1024 if m else 0


def rss_anon(pid: int | str = "self") -> int:
    """``RssAnon`` of a process in bytes (0 if it is gone)."""
    return _field(f"/proc/{pid}/status", "RssAnon")


def pss_anon(pid: int | str = "self") -> int:
    """``Pss_Anon`` of a process in bytes: its share of the anonymous pages it maps."""
    return _rollup(pid)[0]


def _rollup(pid: int | str) -> tuple[int, int]:
    """``(Pss_Anon, Pss_Shmem)`` of a process in bytes, from one read of its ``smaps_rollup``."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0
    found = [re.search(rf"^{name}:\s+(\d+) kB", text, re.M) for name in ("Pss_Anon", "Pss_Shmem")]
    return tuple(int(m.group(1)) * 1024 if m else 0 for m in found)


def rss_shmem(pid: int | str = "self") -> int:
    """``RssShmem`` of a process in bytes: the shared-memory pages it maps (0 if it is gone)."""
    return _field(f"/proc/{pid}/status", "RssShmem")


def pss_shmem(pid: int | str = "self") -> int:
    """``Pss_Shmem`` of a process in bytes: its share of the shared-memory pages it maps."""
    return _rollup(pid)[1]


class PeakMemory:
    """Sample anonymous memory every ``interval`` seconds while the block runs.

    ``max_bytes``: peak of the tree's total (sum of ``Pss_Anon``);
    ``main_bytes``: peak ``RssAnon`` of the process itself; ``children_bytes``:
    peak of the children's summed ``Pss_Anon``; ``main_shmem_bytes``: peak
    ``RssShmem`` of the process itself; ``shmem_bytes``: peak of the tree's
    summed ``Pss_Shmem``.
    """

    def __init__(self, interval: float = 0.1, pid: int | None = None, duty: float = 0.05):
        self.interval, self.duty = interval, duty
        self.process = psutil.Process(pid or os.getpid())
        self.max_bytes = self.main_bytes = self.children_bytes = 0
        self.main_shmem_bytes = self.shmem_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        """Sample now; return the total anonymous memory of the process tree."""
        try:
            children = self.process.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        mine, theirs = _rollup(self.process.pid), [_rollup(c.pid) for c in children]
        kids = sum(anon for anon, _ in theirs)
        total = mine[0] + kids
        self.main_bytes = max(self.main_bytes, rss_anon(self.process.pid))
        self.children_bytes = max(self.children_bytes, kids)
        self.max_bytes = max(self.max_bytes, total)
        self.main_shmem_bytes = max(self.main_shmem_bytes, rss_shmem(self.process.pid))
        self.shmem_bytes = max(self.shmem_bytes, mine[1] + sum(shmem for _, shmem in theirs))
        return total

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            start = time.perf_counter()
            self.sample()
            wait = max(self.interval, (time.perf_counter() - start) * (1 / self.duty - 1))

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
