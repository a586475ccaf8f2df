"""What the benchmark scripts share: rates, cold caches, the machine, results files, tables, datasets.

* :func:`memcpy_rate`: the single-core memcpy that read rates are compared with;
* :func:`drop_cache`: a cold page cache for a dataset's shards or for files;
* :func:`machine` and :func:`provenance`: where and from which commit a figure comes;
* :func:`write_result`: every results JSON (``benchmarks/results/``) is written
  through it, so each carries ``provenance`` (commit, date, command) and ``machine``;
* :func:`markdown_table`: the tables the scripts print;
* :func:`make_or_reuse_dataset` and :func:`image_dataset`: npyseq datasets kept
  in ``benchmarks/data/`` between runs, rebuilt when they do not match;
* :class:`ShardMemmaps`: a dataset's shards read through ``np.memmap``, the
  hand-written way npyseq's reads are compared with;
* :func:`print_result` and :func:`parse_result`: the ``RESULT {json}`` line a
  measuring child process ends with;
* :func:`log`.

The synthetic ``x.npy``/``y.npy`` sources, the epoch timer and the cgroup and
memory tools are shared with the demo and the tests, so they live in
``tools/`` (:mod:`tools.synthetic`, :mod:`tools.timing`, :mod:`tools.memcap`,
:mod:`tools.memwatch`); the shuffle modes are ``npyseq.order.SHUFFLE_MODES``.

Importing this module imports neither npyseq nor Keras: the suite's child
processes import it and measure their own memory.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from tools.memcap import drop_page_cache
from tools.synthetic import ROW_SHAPE, X_ROW_BYTES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
RESULTS = os.path.join(BENCH, "results")
DATA = os.path.join(BENCH, "data")
RESULT_PREFIX = "RESULT "


def log(msg: str) -> None:
    print(msg, flush=True)


# -- reference rates and cold caches ------------------------------------------------


def memcpy_rate(nbytes: int = 512 * 2**20, repeat: int = 5) -> float:
    """GB/s of a single-core memcpy of a 512 MiB float32 array (``np.copyto``), best of ``repeat``."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def shard_files(ds) -> list[str]:
    """The paths of every shard of an ``npyseq.Dataset`` (all arrays, in manifest order)."""
    return [os.path.join(ds.path, s.path) for info in ds.manifest.arrays.values() for s in info.shards]


def drop_cache(what) -> None:
    """Drop ``what`` from the page cache: an ``npyseq.Dataset``'s shards, or an iterable of paths.

    A dataset is closed first and garbage is collected: pages still mapped (npyseq
    copies out of memory maps when the data fits in memory) cannot be dropped.
    """
    if hasattr(what, "manifest"):  # an npyseq.Dataset
        what.close()
        gc.collect()
        what = shard_files(what)
    for path in what:
        drop_page_cache(path)


# -- where a figure comes from ------------------------------------------------------


def machine() -> dict:
    """CPUs, memory, platform and versions of this machine, and its load average now."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_bytes": total, "platform": platform.platform(),
            "kernel": platform.release(), "python": platform.python_version(), "numpy": np.__version__,
            "load_average_start": os.getloadavg()}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()


def git_commit(short: bool = False) -> str:
    """The commit checked out (``""`` outside a git checkout)."""
    try:
        return _git("rev-parse", *(["--short"] if short else []), "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return ""


def modified_code() -> list[str]:
    """Files of the measured code (``npyseq/``, ``benchmarks/`` but its results, ``tools/``) that differ
    from the commit."""
    try:
        out = _git("status", "--porcelain", "--", "npyseq", "benchmarks", "tools", ":!benchmarks/results")
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line[3:] for line in out.splitlines()]


def command_line() -> str:
    """The command that runs this process's main module again, as typed from the repository root."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = f"python -m {spec.name.removesuffix('.__main__')}" if spec else f"python {sys.argv[0]}"
    return " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])


def provenance(command: str | None = None) -> dict:
    """``{"commit", "modified", "date", "command"}`` of a result produced now."""
    return {"commit": git_commit(), "modified": modified_code(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command or command_line()}


def write_result(path: str, report: dict, *, table: str | None = None, command: str | None = None) -> str:
    """Write ``report`` as JSON to ``path`` with ``provenance`` (and ``machine`` if absent) first.

    Prints ``table`` (if given) and where the file went; returns ``path``.
    """
    doc = {"provenance": provenance(command), **report}
    doc.setdefault("machine", machine())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    if table is not None:
        print(table)
    print(f"\nwrote {path}", flush=True)
    return path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` (text) or ``r`` (figures)."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(header)}), got {align!r}")
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- measuring children -------------------------------------------------------------


def print_result(result: dict) -> None:
    """End a measuring child's output with its figures: ``RESULT {json}``."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict | None:
    """The figures of the last ``RESULT {json}`` line of a child's output, or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def child_result(module: str, *args: str, env: dict | None = None, timeout: float = 1200) -> dict:
    """Run ``python -m module args`` from the repository root; its :func:`parse_result` figures.

    Raises ``RuntimeError`` with the end of its stderr if it fails or prints no result.
    """
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    result = parse_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"python -m {module} {' '.join(args)} exited {proc.returncode} without a result:\n"
                           f"{proc.stderr[-3000:]}")
    return result


class ShardMemmaps:
    """One array of an ``npyseq.Dataset`` read the hand-written way: an ``np.memmap`` of each shard file.

    What npyseq's own reads are compared with: :meth:`rows` copies a range of
    rows out of the maps (as a minimal ``PyDataset`` does), :meth:`take`
    gathers rows by index (``mm[rows]``).
    """

    def __init__(self, ds, name: str):
        self.maps = [np.load(os.path.join(ds.path, s.path), mmap_mode="r") for s in ds.manifest.arrays[name].shards]
        self.offsets = np.concatenate(([0], np.cumsum(ds.manifest.shard_rows)))

    def rows(self, a: int, b: int):
        """Rows ``[a, b)`` copied out of the maps (a range may straddle shards)."""
        k = int(np.searchsorted(self.offsets, a, side="right")) - 1
        parts = []
        while a < b:
            hi = min(b, int(self.offsets[k + 1]))
            parts.append(self.maps[k][a - self.offsets[k]:hi - self.offsets[k]])
            a, k = hi, k + 1
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def take(self, idx):
        """Rows ``idx`` (an int array), gathered shard by shard with ``mm[rows]``."""
        first = self.maps[0]
        out = np.empty((len(idx),) + first.shape[1:], first.dtype)
        k_of = np.searchsorted(self.offsets, idx, side="right") - 1
        for k in np.unique(k_of):
            sel = k_of == k
            out[sel] = self.maps[k][idx[sel] - self.offsets[k]]
        return out


# -- datasets kept between runs -----------------------------------------------------


def make_or_reuse_dataset(path: str, is_current: Callable[[Any], bool], chunks: Callable[[], Iterable[dict]],
                          **writer_options):
    """The npyseq dataset at ``path`` if ``is_current(dataset)``, else written again from ``chunks()``.

    ``chunks()`` yields the keyword arguments of each ``ShardWriter.append``.
    """
    import npyseq

    try:
        ds = npyseq.open_shards(path)
        if is_current(ds):
            return ds
    except (npyseq.NpyseqError, KeyError):
        pass
    with npyseq.ShardWriter(path, overwrite=True, **writer_options) as w:
        for chunk in chunks():
            w.append(**chunk)
    return w.dataset


def image_dataset(path: str, size_gb: float, chunk: int = 8192):
    """A dataset of ``size_gb`` GB of ``x`` (float32 rows of 32x32x3, random) and ``y`` (the row index).

    Shards of 256 MB; reused when it has the right number of rows.
    """
    rows = int(size_gb * 1e9) // X_ROW_BYTES

    def chunks():
        rng = np.random.default_rng(0)
        for a in range(0, rows, chunk):
            n = min(rows, a + chunk) - a
            yield {"x": rng.random((n,) + ROW_SHAPE, dtype=np.float32), "y": np.arange(a, a + n)}

    return make_or_reuse_dataset(path, lambda ds: len(ds) == rows, chunks, shard_size="256MB")
