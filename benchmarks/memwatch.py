"""Peak anonymous memory of a process and its children, sampled in a thread.

Memory-mapped pages count in RSS but are page cache the kernel can drop, so
npyseq reports anonymous memory: ``RssAnon`` of the main process plus the
USS (pages no other process shares) of every child, such as Keras' worker
processes, which share most of their pages with the parent after a fork.

>>> with PeakMemory() as peak:
...     model.fit(seq)
>>> peak.max_bytes, peak.main_bytes, peak.children_bytes
"""

from __future__ import annotations

import os
import re
import threading

import psutil

__all__ = ["PeakMemory", "rss_anon"]


def rss_anon(pid: int | str = "self") -> int:
    """``RssAnon`` of a process in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"RssAnon:\s+(\d+) kB", f.read())
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(m.group(1)) * 1024 if m else 0


class PeakMemory:
    """Sample anonymous memory every ``interval`` seconds while the block runs."""

    def __init__(self, interval: float = 0.1, pid: int | None = None):
        self.interval = interval
        self.process = psutil.Process(pid or os.getpid())
        self.max_bytes = self.main_bytes = self.children_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        main = rss_anon(self.process.pid)
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_full_info().uss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        self.main_bytes = max(self.main_bytes, main)
        self.children_bytes = max(self.children_bytes, children)
        self.max_bytes = max(self.max_bytes, main + children)
        return main + children

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
