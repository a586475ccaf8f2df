"""npyseq's performance targets P1-P7, each a ratio of two figures measured in the same suite run.

A ratio of two figures from one run on one machine, rather than an absolute
rate, so that a target means the same on a laptop and on a shared server. This
module is where the targets are defined:

P1, reading from a warm page cache
    ``seq[i]`` over one epoch of the 1x dataset in dataset order
    (``shuffle=False``), no Keras adapter, warm page cache: GB/s of ``x`` and
    ``y`` at least **0.85x** a single-core memcpy measured in the same process.
    Reading cached data is a copy; npyseq's own work per batch must be small
    next to it.
P1b, the same in shuffled orders
    As P1 with ``shuffle="blocks"``: at least **0.75x** memcpy; with
    ``shuffle="global"`` (one read per row): at least **0.55x**. The figures
    also give what NumPy alone reaches gathering the same batches out of
    arrays in RAM (``np.take``), the bound of random reads.
P2, through Keras
    Rows/s through Keras' ``EpochIterator`` (as ``fit`` pulls batches, no
    model), dataset order (``fit`` shuffles the batch order), npyseq in its
    best worker setting (none, 2 threads or 2 processes): at least **1.0x** the
    minimal hand-written ``PyDataset`` over two memmaps in the same setting.
    npyseq must cost nothing over the simplest correct ``PyDataset``.
P3, a training epoch
    Seconds of a warm ``fit`` epoch of the MLP 3072-64-10 (TensorFlow
    backend), npyseq's fastest run in ``"blocks"`` or ``"global"`` order (the
    modes that mix at least as well as ``fit``'s shuffle of batch order), any
    worker setting: at most
    **0.75x** NumPy arrays in RAM (``fit(x, y)``), **0.6x** ``tf.data``
    (``from_tensor_slices``), **0.6x** a Python generator over a memmap.
P4, memory
    Peak anonymous memory (``Pss_Anon`` of the process tree) of npyseq's
    ``fit``: on the 4x dataset at most **1.1x** that on the 1x dataset (memory
    follows the batch, not the data), and on the 1x dataset at most **0.1x**
    that of NumPy arrays in RAM.
P5, reading from disk
    Cold page cache, dataset order, ``seq[i]``: at least **0.8x** ``dd bs=16M``
    of the same shard files.
P6, conversion
    ``npyseq convert`` of the ``.npy`` sources (cold), which fsyncs every
    shard: at least **0.8x** ``cp`` followed by ``sync`` of the same bytes,
    i.e. on equal durability.
P7, against other loaders
    Rows/s of the input pipeline alone (``EpochIterator``), npyseq
    ``"global"`` (a uniform shuffle) against PyTorch's ``DataLoader(shuffle=True)``
    and Grain's ``MapDataset.shuffle().batch()``, each over memmaps: at least
    **1.0x** theirs with no workers, and with 2 workers (each library's faster
    kind of worker). mosaicml-streaming (``StreamingDataset`` over local MDS
    shards of the same rows, its own shuffle) is compared the same way.
P8, process workers against thread workers
    Rows/s through Keras' adapter, npyseq with 2 process workers against 2
    thread workers, dataset order and ``"global"``: at least **0.8x**. A
    warm ``fit`` epoch of the MLP (``"blocks"``) with 2 processes: at most
    **1.1x** that with 2 threads; its peak anonymous memory (``Pss_Anon`` of
    the process tree) at most **1.2x** that with 2 threads, on the 1x and on
    the 4x dataset. Batches that arrive through shared memory are shmem
    pages, not anonymous ones: the figures give the trainer's peak
    ``RssShmem`` and the tree's ``Pss_Shmem`` next to them.
P9, the augmentation workload
    uint8 images of 64x64x3, a per-batch augmentation that holds the GIL
    (:mod:`benchmarks.suite.augment`), ``"global"`` order, rows/s of the
    pipeline alone: npyseq with 2 process workers at least **1.3x** npyseq
    with 2 threads, and at least **1.0x** PyTorch's ``DataLoader(num_workers=2)``
    doing the same augmentation per batch over the same rows (memmapped
    ``.npy``); mosaicml-streaming's figure is given next to them.

:func:`evaluate` takes the suite's report (see ``benchmarks/suite/__main__.py``)
and returns one row per comparison: what was compared, the measured ratio,
the bound and whether it is met. A target whose figures are missing (a method
not installed, a run that failed) is reported as not measured, never as met.

| # | what | target |
| --- | --- | --- |
| P1 | ``seq[i]`` loop, contiguous order, warm cache | >= 0.85x single-core memcpy GB/s |
| P1b | same, ``"blocks"`` / ``"global"`` | >= 0.75x / >= 0.55x memcpy |
| P2 | through Keras' adapter, npyseq's best worker setting | >= 1.0x the minimal PyDataset, same setting |
| P3 | ``fit`` epoch, MLP, warm cache | <= 0.75x numpy in RAM; <= 0.6x tf.data; <= 0.6x the generator |
| P4 | peak anonymous memory | 4x data: <= 1.1x; <= 0.1x numpy in RAM at 1x |
| P5 | cold cache, contiguous order | >= 0.8x ``dd`` of the same files |
| P6 | conversion | >= 0.8x ``cp`` + ``sync`` of the same bytes |
| P7 | vs PyTorch DataLoader, Grain, streaming, same workers, pipeline alone | >= 1.0x their rows/s |
| P8 | 2 processes vs 2 threads: pipeline; ``fit`` epoch; ``fit`` peak anon memory 1x, 4x | >= 0.8x; <= 1.1x; <= 1.2x |
| P9 | augmentation, 2 processes vs 2 threads; vs PyTorch ``DataLoader(num_workers=2)`` | >= 1.3x; >= 1.0x |
"""

from __future__ import annotations

SETTINGS = ("sync", "threads", "processes")
SPEC_DEFAULTS = {"shared_memory": True, "augment": False}  # fields older reports lack
# npyseq modes P3 may use: those that mix at least as well as fit's shuffle of
# batch order (a fair match for numpy's and tf.data's shuffles).
P3_MODES = ("blocks", "global")


def _ok(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("status") == "ok"]


def find(report: dict, phase: str, size: str = "1x", model: str | None = None, **spec) -> dict | None:
    """The successful run of ``phase`` at ``size`` whose spec has the fields ``spec``.

    Unless ``spec`` says otherwise, the run of npyseq's default transport
    (``shared_memory=True``; reports older than that field have only it).
    """
    spec = {"shared_memory": True, **spec}
    for run in _ok(report.get("runs", [])):
        if run["phase"] != phase or run["size"] != size:
            continue
        if model is not None and run.get("model") != model:
            continue
        if all(run["spec"].get(k, SPEC_DEFAULTS.get(k)) == v for k, v in spec.items()):
            return run
    return None


def warm_rows_per_s(run: dict | None) -> float | None:
    """Best warm epoch of a pipeline run, rows/s."""
    if run is None:
        return None
    warm = [e["rows_per_s"] for e in run["result"]["epochs"] if e["cache"] == "warm" and e["complete"]]
    return max(warm) if warm else None


def warm_epoch_seconds(run: dict | None) -> float | None:
    """Shortest warm epoch of a fit run, seconds."""
    if run is None:
        return None
    warm = [e["seconds"] for e in run["result"]["epochs"] if e["cache"] == "warm"]
    return min(warm) if warm else None


def peak_anon(run: dict | None) -> int | None:
    return None if run is None else run["result"]["peak_anon_bytes"]


def _row(tid: str, what: str, measured: float | None, op: str, bound: float, detail: str) -> dict:
    if measured is None:
        return {"id": tid, "what": what, "measured": None, "target": f"{op} {bound}x", "met": False,
                "detail": detail or "not measured"}
    met = measured >= bound if op == ">=" else measured <= bound
    return {"id": tid, "what": what, "measured": measured, "target": f"{op} {bound}x", "met": met,
            "detail": detail}


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def evaluate(report: dict) -> list[dict]:
    rows = []
    loop = report.get("read_loop")
    if loop:
        memcpy = loop["memcpy_gb_per_s"]
        for tid, mode, bound in (("P1", "False", 0.85), ("P1b", "blocks", 0.75), ("P1b", "global", 0.55)):
            gbps = loop["warm"][mode]["gb_per_s"]
            figures = f"{gbps:.2f} GB/s vs memcpy {memcpy:.2f} GB/s"
            ram = loop.get("in_ram_gather", {}).get(mode)
            if ram:  # what NumPy alone gets for the same batches out of RAM: the bound
                figures += (f"; np.take of the same batches from RAM: {ram['gb_per_s']:.2f} GB/s "
                            f"({ram['gb_per_s'] / memcpy:.2f}x memcpy)")
            rows.append(_row(tid, f"seq[i] loop, shuffle={mode}, warm, vs memcpy", gbps / memcpy, ">=", bound,
                             figures))
        cold, dd = loop["cold_sequential"]["gb_per_s"], loop["dd"]["gb_per_s"]
        p5 = _row("P5", "cold cache, contiguous seq[i] vs dd of the same files", cold / dd, ">=", 0.8,
                  f"{cold:.2f} GB/s vs dd {dd:.2f} GB/s")
    else:
        rows += [_row("P1", "seq[i] loop vs memcpy", None, ">=", 0.85, "")]
        p5 = _row("P5", "cold contiguous vs dd", None, ">=", 0.8, "")

    # P2: npyseq (dataset order; fit shuffles the batch order, as for the
    # minimal PyDataset) against the minimal PyDataset, through Keras' adapter.
    per_setting = {s: (warm_rows_per_s(find(report, "pipeline", method="npyseq", shuffle=False, setting=s)),
                       warm_rows_per_s(find(report, "pipeline", method="minimal", setting=s)))
                   for s in SETTINGS}
    measured = {s: v for s, v in per_setting.items() if v[0] is not None}
    if measured:
        best = max(measured, key=lambda s: measured[s][0])
        n, m = measured[best]
        others = ", ".join(f"{s} {_fmt(_ratio(*v))}" for s, v in per_setting.items() if s != best)
        rows.append(_row("P2", f"Keras adapter (EpochIterator), dataset order, npyseq's best setting "
                               f"({best}) vs minimal PyDataset",
                         _ratio(n, m), ">=", 1.0,
                         f"{n:,.0f} vs {m:,.0f} rows/s" if m else "minimal not measured")
                    | {"others": others})
    else:
        rows.append(_row("P2", "Keras adapter vs minimal PyDataset", None, ">=", 1.0, ""))

    # P3: fit epoch time, MLP, warm.
    candidates = [(warm_epoch_seconds(r), r) for r in _ok(report.get("runs", []))
                  if r["phase"] == "fit" and r["size"] == "1x" and r.get("model") == "mlp"
                  and r["spec"]["method"] == "npyseq" and r["spec"]["shuffle"] in P3_MODES]
    candidates = [c for c in candidates if c[0] is not None]
    floors = {m: warm_epoch_seconds(find(report, "fit", model="mlp", method=m))
              for m in ("model_alone", "constant_pydataset")}
    if candidates:
        t, best = min(candidates, key=lambda c: c[0])
        for other, bound in (("numpy", 0.75), ("tf.data", 0.6), ("generator", 0.6)):
            o = warm_epoch_seconds(find(report, "fit", model="mlp", method=other))
            detail = f"{t:.2f} s vs {o:.2f} s" if o else f"{other} not measured"
            if o and floors["model_alone"]:
                detail += (f"; model alone {floors['model_alone']:.2f} s "
                           f"({floors['model_alone'] / o:.2f}x {other})")
            if o and floors["constant_pydataset"]:
                detail += (f", PyDataset of a constant batch {floors['constant_pydataset']:.2f} s "
                           f"({floors['constant_pydataset'] / o:.2f}x)")
            rows.append(_row("P3", f"fit epoch (MLP), {best['label']} vs {other}", _ratio(t, o), "<=", bound,
                             detail))
    else:
        rows.append(_row("P3", "fit epoch (MLP) vs numpy / tf.data / generator", None, "<=", 0.75, ""))

    # P4: memory of npyseq's fit at 1x and 4x, and against numpy at 1x.
    spec = report.get("config", {}).get("memory_spec", {})
    one = find(report, "fit", "1x", model="mlp", **spec)
    four = find(report, "fit", "4x", model="mlp", **spec)
    numpy = find(report, "fit", "1x", model="mlp", method="numpy")
    label = one["label"] if one else "npyseq"
    a, b, c = peak_anon(one), peak_anon(four), peak_anon(numpy)
    rows.append(_row("P4", f"peak anonymous memory, fit (MLP), {label}: 4x data vs 1x", _ratio(b, a), "<=", 1.1,
                     f"{_mib(b)} vs {_mib(a)}"))
    rows.append(_row("P4", f"peak anonymous memory, fit (MLP), {label} vs numpy in RAM, 1x", _ratio(a, c),
                     "<=", 0.1, f"{_mib(a)} vs {_mib(c)}"))
    rows.append(p5)

    conv = report.get("conversion", {})
    for size, r in conv.items():
        rows.append(_row("P6", f"npyseq convert vs cp + sync of the same bytes ({size}, "
                               f"{r['bytes'] / 1e9:.1f} GB, cold source)",
                         r["convert_gb_per_s"] / r["cp_sync_gb_per_s"], ">=", 0.8,
                         f"{r['convert_gb_per_s']:.2f} vs {r['cp_sync_gb_per_s']:.2f} GB/s "
                         f"(cp without sync: {r['cp_gb_per_s']:.2f} GB/s, "
                         f"{r['convert_gb_per_s'] / r['cp_gb_per_s']:.2f}x)"))
    if not conv:
        rows.append(_row("P6", "npyseq convert vs cp", None, ">=", 0.8, ""))

    rows += _p7(report)
    rows += _p8(report)
    rows += _p9(report)
    return rows


def _p7(report: dict) -> list[dict]:
    """npyseq "global" (a uniform shuffle, like DataLoader(shuffle=True) and Grain's) vs torch and Grain."""
    out = []
    npy = {s: warm_rows_per_s(find(report, "pipeline", method="npyseq", shuffle="global", setting=s))
           for s in SETTINGS}
    for other in ("torch", "grain", "streaming"):
        if report.get("skipped_methods", {}).get(other):
            out.append(_row("P7", f"vs {other}", None, ">=", 1.0,
                            f"skipped: {report['skipped_methods'][other]}"))
            continue
        shuffled = {"shuffle": True} if other == "streaming" else {}  # streaming's shuffle, as torch's and Grain's
        theirs = {s: warm_rows_per_s(find(report, "pipeline", method=other, setting=s, **shuffled))
                  for s in SETTINGS}
        n, t = npy["sync"], theirs["sync"]
        out.append(_row("P7", f"pipeline, npyseq global vs {other}, no workers", _ratio(n, t), ">=", 1.0,
                        f"{_fmt_rows(n)} vs {_fmt_rows(t)} rows/s"))
        # 2 workers: each library's best kind of worker (torch has only processes).
        nb = max(("threads", "processes"), key=lambda s: npy[s] or 0)
        tb = max(("threads", "processes"), key=lambda s: theirs[s] or 0)
        out.append(_row("P7", f"pipeline, npyseq global vs {other}, 2 workers "
                              f"(npyseq {nb}, {other} {tb})", _ratio(npy[nb], theirs[tb]), ">=", 1.0,
                        f"{_fmt_rows(npy[nb])} vs {_fmt_rows(theirs[tb])} rows/s; processes vs processes: "
                        f"{_fmt(_ratio(npy['processes'], theirs['processes']))}"))
    return out


def _memory_detail(run: dict | None) -> str:
    if run is None:
        return "not measured"
    r = run["result"]
    return (f"{_mib(r['peak_anon_bytes'])} (trainer RssAnon {_mib(r.get('main_anon_bytes'))}, RssShmem "
            f"{_mib(r.get('main_shmem_bytes'))}; tree Pss_Shmem {_mib(r.get('tree_shmem_bytes'))})")


def _p8(report: dict) -> list[dict]:
    """npyseq's process workers against its thread workers: pipeline rows/s, fit time, fit memory."""
    out = []
    for mode in (False, "global"):
        p, t = (warm_rows_per_s(find(report, "pipeline", method="npyseq", shuffle=mode, setting=s))
                for s in ("processes", "threads"))
        pickled = warm_rows_per_s(find(report, "pipeline", method="npyseq", shuffle=mode, setting="processes",
                                       shared_memory=False))
        out.append(_row("P8", f"pipeline, npyseq {mode or 'sequential'}, 2 processes vs 2 threads", _ratio(p, t),
                        ">=", 0.8, f"{_fmt_rows(p)} vs {_fmt_rows(t)} rows/s"
                        + (f"; processes with batches pickled: {_fmt_rows(pickled)}" if pickled else "")))
    cfg = report.get("config", {})
    threads, procs = cfg.get("memory_spec", {}), cfg.get("process_spec", {})
    p1, t1 = find(report, "fit", "1x", model="mlp", **procs), find(report, "fit", "1x", model="mlp", **threads)
    a, b = warm_epoch_seconds(p1 if procs else None), warm_epoch_seconds(t1 if threads else None)
    out.append(_row("P8", "fit epoch (MLP), npyseq blocks, 2 processes vs 2 threads", _ratio(a, b), "<=", 1.1,
                    f"{_fmt_s(a)} vs {_fmt_s(b)}"))
    for size in ("1x", "4x"):
        p, t = (find(report, "fit", size, model="mlp", **spec) if spec else None for spec in (procs, threads))
        out.append(_row("P8", f"peak anonymous memory, fit (MLP), npyseq blocks, 2 processes vs 2 threads, {size}",
                        _ratio(peak_anon(p), peak_anon(t)), "<=", 1.2,
                        f"processes {_memory_detail(p)} vs threads {_memory_detail(t)}"))
    return out


def _p9(report: dict) -> list[dict]:
    """The augmentation workload: npyseq 2 processes vs 2 threads and vs torch (streaming alongside)."""
    def rate(**spec):
        return warm_rows_per_s(find(report, "augment", "img", augment=True, **spec))

    npy = {s: rate(method="npyseq", shuffle="global", setting=s) for s in SETTINGS}
    pickled = rate(method="npyseq", shuffle="global", setting="processes", shared_memory=False)
    torch, streaming = rate(method="torch", setting="processes"), rate(method="streaming", setting="processes")
    skipped = report.get("skipped_methods", {})
    out = [_row("P9", "augmentation, npyseq global, 2 processes vs 2 threads",
                _ratio(npy["processes"], npy["threads"]), ">=", 1.3,
                f"{_fmt_rows(npy['processes'])} vs {_fmt_rows(npy['threads'])} rows/s; no workers "
                f"{_fmt_rows(npy['sync'])}" + (f"; processes with batches pickled {_fmt_rows(pickled)}"
                                               if pickled else ""))]
    note = f"streaming skipped: {skipped['streaming']}" if skipped.get("streaming") else (
        f"streaming (shuffled, 2 processes) {_fmt_rows(streaming)} rows/s, npyseq "
        f"{_fmt(_ratio(npy['processes'], streaming))} of it")
    out.append(_row("P9", "augmentation, npyseq global 2 processes vs torch DataLoader(num_workers=2)",
                    _ratio(npy["processes"], torch), ">=", 1.0,
                    (f"torch skipped: {skipped['torch']}" if skipped.get("torch") else
                     f"{_fmt_rows(npy['processes'])} vs {_fmt_rows(torch)} rows/s") + f"; {note}"))
    return out


def _fmt_s(v) -> str:
    return "n/a" if v is None else f"{v:.2f} s"


def _fmt(r) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _fmt_rows(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"
