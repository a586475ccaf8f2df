"""Tables (markdown) and plots (PNG) of a suite report; see ``benchmarks/suite/__main__.py``.

>>> text = markdown(json.load(open("benchmarks/results/suite-quick.json")))
>>> plots(report, "benchmarks/results/suite-quick")   # -> ["...-rows.png", "...-memory.png", "...-augment.png",
...                                                   #     "...-fit.png"]

or from the command line: ``python -m benchmarks.suite.report benchmarks/results/suite-quick.json``.
"""

from __future__ import annotations

import os

from benchmarks.suite.targets import peak_anon, warm_epoch_seconds, warm_rows_per_s
from tools.synthetic import ROW_BYTES

FAMILY_COLORS = {"npyseq": "#1f77b4", "minimal": "#ff7f0e", "numpy": "#2ca02c", "tf.data": "#d62728",
                 "generator": "#9467bd", "raw_bytes": "#8c564b", "torch": "#e377c2", "grain": "#17becf",
                 "streaming": "#bcbd22",
                 "model_alone": "#c7c7c7", "constant_pydataset": "#c7c7c7"}


def _mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:,.0f}"


def _rows(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _epoch(run: dict, cache: str, key: str):
    vals = [e[key] for e in run["result"]["epochs"] if e["cache"] == cache]
    if not vals:
        return None
    return max(vals) if key != "seconds" else min(vals)


def _status(run: dict) -> str:
    if run["status"] == "ok":
        return "ok"
    return f"{run['status']}: {run.get('note') or run.get('error') or ''}".strip(": ")[:120]


def markdown(report: dict) -> str:
    cfg, d = report["config"], report["datasets"]
    m = report["machine"]
    out = [f"npyseq benchmark suite, `{report['command']}` ({report['suite']} plan), {report['started']}; "
           f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.0f} GiB RAM, "
           f"load average {m['load_average_start'][0]:.1f} at start; "
           + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
           + f". 1x = {d['1x']['rows']:,} rows ({d['1x']['bytes'] / 1e9:.2f} GB), 4x = {d['4x']['rows']:,} rows "
           f"({d['4x']['bytes'] / 1e9:.2f} GB) of 32x32x3 float32 + int64 label; batch {cfg['batch_size']}. "
           f"Took {report['seconds']:.0f} s.", ""]
    out += _targets(report) + [""] + _io(report) + [""] + _pipeline(report) + [""]
    out += _fit(report) + [""] + _augment(report) + [""] + _memory(report) + [""] + _capped(report)
    if report.get("skipped_methods"):
        out += ["", "Skipped methods: " + "; ".join(f"{k}: {v}" for k, v in report["skipped_methods"].items())]
    return "\n".join(out) + "\n"


def _targets(report: dict) -> list[str]:
    out = ["### Targets (ratios measured in this run)", "",
           "| # | what | measured | target | met | figures |", "| --- | --- | ---: | --- | --- | --- |"]
    for t in report.get("targets", []):
        measured = "–" if t["measured"] is None else _ratio_text(t["measured"], t["target"])
        detail = t["detail"] + (f"; other settings: {t['others']}" if t.get("others") else "")
        out.append(f"| {t['id']} | {t['what']} | {measured} | {t['target']} | "
                   f"{'met' if t['met'] else '**not met**'} | {detail} |")
    return out


def _ratio_text(value: float, target: str) -> str:
    """Two decimals, or three where two would round onto the bound."""
    bound = float(target.split()[1].rstrip("x"))
    text = f"{value:.2f}x"
    return f"{value:.3f}x" if float(text[:-1]) == bound and value != bound else text


def _io(report: dict) -> list[str]:
    out = ["### Raw reads and conversion", ""]
    loop = report.get("read_loop")
    if loop:
        out += [f"`seq[i]` over one epoch of the 1x dataset (x and y), no Keras adapter; single-core memcpy "
                f"{loop['memcpy_gb_per_s']:.2f} GB/s in the same process.", "",
                "| shuffle | warm GB/s | warm / memcpy | warm rows/s |", "| --- | ---: | ---: | ---: |"]
        for mode, v in loop["warm"].items():
            out.append(f"| `{mode}` | {v['gb_per_s']:.2f} | {v['gb_per_s'] / loop['memcpy_gb_per_s']:.2f}x | "
                       f"{v['rows_per_s']:,.0f} |")
        c, dd = loop["cold_sequential"], loop["dd"]
        out += ["", f"Cold cache, dataset order: {c['gb_per_s']:.2f} GB/s ({c['rows_per_s']:,.0f} rows/s); "
                    f"`dd bs=16M` of the same shard files {dd['gb_per_s']:.2f} GB/s (best of "
                    f"{len(dd['runs'])}, alternated).", ""]
    pc = report.get("page_cache")
    if pc:
        out += ["Warm reads in shuffled batch order depend on how the page cache was filled "
                "(`python -m benchmarks.studies.page_cache`):", "",
                "| page cache filled by | npyseq `seq[i]`, `read=\"pread\"`, GB/s | copy out of a mapped memmap GB/s |",
                "| --- | ---: | ---: |"]
        out += [f"| {r['filled_by']} | {r['npyseq_pread']:.2f} | {r['memmap_copy']:.2f} |" for r in pc["results"]]
        out.append("")
    conv = report.get("conversion", {})
    if conv:
        out += ["| size | bytes | `npyseq convert` GB/s | `cp` GB/s | `cp` + `sync` GB/s |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for size, r in conv.items():
            out.append(f"| {size} | {r['bytes'] / 1e9:.2f} GB | {r['convert_gb_per_s']:.2f} | "
                       f"{r['cp_gb_per_s']:.2f} | {r['cp_sync_gb_per_s']:.2f} |")
    return out


def _runs(report: dict, phase: str, size: str, capped: bool = False, model=None) -> list[dict]:
    return [r for r in report.get("runs", []) if r["phase"] == phase and r["size"] == size
            and r.get("capped", False) == capped and r.get("model") == model]


def _shmem(r: dict) -> str:
    return _mib(r["result"].get("main_shmem_bytes"))


def _pipeline(report: dict, phase: str = "pipeline", size: str = "1x") -> list[str]:
    out = ["| method | cold rows/s | warm rows/s | warm GB/s | peak anon MiB | trainer RssShmem MiB | status |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in _runs(report, phase, size):
        if r["status"] != "ok":
            out.append(f"| {r['label']} | – | – | – | – | – | {_status(r)} |")
            continue
        cold, warm = _epoch(r, "cold", "rows_per_s"), warm_rows_per_s(r)
        gb = _epoch(r, "warm", "gb_per_s")
        out.append(f"| {r['label']} | {_rows(cold)} | {_rows(warm)} | {'–' if gb is None else f'{gb:.2f}'} | "
                   f"{_mib(peak_anon(r))} | {_shmem(r)} | ok |")
    if phase == "pipeline":
        out = ["### Input pipeline alone (1x), through Keras' `EpochIterator` as `fit` drives it", ""] + out
    return out


def _augment(report: dict) -> list[str]:
    """The augmentation workload (benchmarks/suite/augment.py), pipeline alone."""
    runs = _runs(report, "augment", "img")
    if not runs:
        return []
    d = report["datasets"].get("img", {})
    out = [f"### Augmentation workload: {_rows(d.get('rows'))} uint8 images of 64x64x3, random 56x56 crop, flip "
           "and gamma (a tone curve computed in Python) per row in a Python loop (holds the GIL), in the workers; "
           "`global` order; pipeline alone through `EpochIterator`", ""]
    out += _pipeline(report, "augment", "img")
    if report.get("skipped_methods", {}).get("streaming"):
        out += ["", f"streaming: skipped ({report['skipped_methods']['streaming']})"]
    return out


def _fit(report: dict) -> list[str]:
    out = []
    for model, title in (("mlp", "MLP 3072-64-10"), ("conv", "small conv net (2 conv layers)")):
        runs = _runs(report, "fit", "1x", model=model)
        if not runs:
            continue
        rows = next((r["result"]["rows"] for r in runs if r["status"] == "ok"), None)
        out += [f"### `fit` epoch, {title}, {_rows(rows)} rows, TensorFlow backend", "",
                "| method | warm epoch s | rows/s | cold epoch s | peak anon MiB | trainer RssAnon MiB | "
                "trainer RssShmem MiB | status |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in runs:
            if r["status"] != "ok":
                out.append(f"| {r['label']} | – | – | – | – | – | – | {_status(r)} |")
                continue
            w, c = warm_epoch_seconds(r), _epoch(r, "cold", "seconds")
            out.append(f"| {r['label']} | {w:.2f} | {r['result']['rows'] / w:,.0f} | "
                       f"{'–' if c is None else f'{c:.2f}'} | {_mib(peak_anon(r))} | "
                       f"{_mib(r['result'].get('main_anon_bytes'))} | {_shmem(r)} | ok |")
        out.append("")
    return out


def memory_points(report: dict) -> dict[str, dict]:
    """label -> {size: peak anonymous bytes, "partial": bool} of the pipeline runs (uncapped)."""
    out: dict[str, dict] = {}
    for size in ("1x", "4x"):
        for r in _runs(report, "pipeline", size):
            if r["status"] == "ok":
                v = out.setdefault(r["label"], {"partial": False})
                v[size] = peak_anon(r)
                v["partial"] |= not all(e["complete"] for e in r["result"]["epochs"])
    return {k: v for k, v in out.items() if "4x" in v and "1x" in v}


def _memory(report: dict) -> list[str]:
    out = ["### Peak anonymous memory against dataset size (Pss_Anon of the process tree)", "",
           "Batches that process workers hand over through shared memory are shmem pages, not anonymous "
           "memory: the `fit` rows give the trainer's peak RssShmem (1x, 4x) next to them.", "",
           "| method | what | 1x MiB | 4x MiB | 4x / 1x | trainer RssShmem MiB, 1x / 4x |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    points = memory_points(report)
    for label, v in points.items():
        mark = "*" if v["partial"] else ""
        out.append(f"| {label} | pipeline | {_mib(v['1x'])} | {_mib(v['4x'])}{mark} | {v['4x'] / v['1x']:.2f}x | – |")
    for r4 in _runs(report, "fit", "4x", model="mlp"):
        r1 = next((r for r in _runs(report, "fit", "1x", model="mlp") if r["spec"] == r4["spec"]), None)
        if r4["status"] == "ok" and r1 and r1["status"] == "ok":
            a, b = peak_anon(r1), peak_anon(r4)
            out.append(f"| {r4['label']} | fit (MLP) | {_mib(a)} | {_mib(b)} | {b / a:.2f}x | "
                       f"{_shmem(r1)} / {_shmem(r4)} |")
    skipped = [r for r in _runs(report, "pipeline", "4x") if r["status"] != "ok"]
    for r in skipped:
        out.append(f"| {r['label']} | pipeline | – | – | {_status(r)} | – |")
    if any(v["partial"] for v in points.values()):
        seconds = report["config"].get("memory_seconds")
        out += ["", f"\\* loading plus the first {seconds} s of the epoch (the {report['suite']} plan); "
                    "in-RAM methods hold all their data from the start."]
    return out


def _capped(report: dict) -> list[str]:
    c = report.get("capped")
    if not c:
        return []
    if not c["available"]:
        return [f"### Larger than memory: skipped ({c['reason']})"]
    out = [f"### Larger than memory: the 4x dataset ({c['dataset_bytes'] / 1e9:.2f} GB) under a "
           f"{c['cap_bytes'] / 2**20:.0f} MiB cgroup cap ({c['data_over_cap']:.1f}x), cold cache", "",
           "| method | what | outcome | rows/s | GB/s | cgroup peak MiB |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in [x for x in report.get("runs", []) if x.get("capped")]:
        what = f"fit ({r['model']})" if r.get("model") else "pipeline"
        if r["status"] == "ok":
            e = r["result"]["epochs"][0]
            rate = e["rows_per_s"]
            gb = e.get("gb_per_s", rate * ROW_BYTES / 1e9)
            outcome = "ran" if e.get("complete", True) else f"ran ({e['batches']} batches in {e['seconds']:.0f} s)"
        else:
            rate = gb = None
            outcome = "**killed** (out of memory)" if r["status"] == "killed" else _status(r)
        out.append(f"| {r['label']} | {what} | {outcome} | {_rows(rate)} | "
                   f"{'–' if gb is None else f'{gb:.2f}'} | {_mib(r.get('cgroup_max_usage_bytes'))} |")
    return out


# -- plots ----------------------------------------------------------------------


def plots(report: dict, base: str) -> list[str]:
    """Draw the PNG plots next to ``base``; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib is not installed: no plots)"]
    paths = []
    title = f"npyseq suite ({report['suite']}), {report['machine']['cpus']} CPUs"

    runs = [r for r in _runs(report, "pipeline", "1x") if r["status"] == "ok"]
    if runs:
        fig, ax = plt.subplots(figsize=(9, 0.32 * len(runs) + 1.5))
        labels = [r["label"] for r in runs]
        warm = [warm_rows_per_s(r) or 0 for r in runs]
        cold = [_epoch(r, "cold", "rows_per_s") or 0 for r in runs]
        ys = range(len(runs))
        colors = [FAMILY_COLORS.get(r["spec"]["method"], "gray") for r in runs]
        ax.barh([y - 0.2 for y in ys], warm, height=0.4, color=colors, label="warm cache")
        ax.barh([y + 0.2 for y in ys], cold, height=0.4, color=colors, alpha=0.45, label="cold cache")
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("rows/s (log), input pipeline alone through Keras' EpochIterator")
        ax.set_title(title + ": rows/s per method (1x)", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        paths.append(_save(fig, base + "-rows.png"))

    points = memory_points(report)
    if points:
        d = report["datasets"]
        gb = {s: d[s]["bytes"] / 1e9 for s in ("1x", "4x")}
        fig, ax = plt.subplots(figsize=(7, 5))
        markers = iter("osD^v<>p*h")
        for label, v in points.items():
            method = label.split(" ")[0].rstrip(",")
            ax.plot([gb["1x"], gb["4x"]], [v["1x"] / 2**20, v["4x"] / 2**20],
                    marker=next(markers, "o") if method == "npyseq" else "o",
                    color=FAMILY_COLORS.get(method, "gray"), label=label,
                    linestyle="-" if method == "npyseq" else "--")
        ax.set_xlabel("dataset size, GB")
        ax.set_ylabel("peak anonymous memory, MiB (log)")
        ax.set_yscale("log")
        ax.set_title(title + ": memory against dataset size", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        paths.append(_save(fig, base + "-memory.png"))

    augs = [r for r in _runs(report, "augment", "img") if r["status"] == "ok"]
    if augs:
        fig, ax = plt.subplots(figsize=(8, 0.36 * len(augs) + 1.5))
        ax.barh(range(len(augs)), [warm_rows_per_s(r) or 0 for r in augs],
                color=[FAMILY_COLORS.get(r["spec"]["method"], "gray") for r in augs])
        ax.set_yticks(range(len(augs)), [r["label"] for r in augs], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("rows/s, warm cache (uint8 64x64x3 images, per-batch augmentation)")
        ax.set_title(title + ": augmentation workload", fontsize=10)
        paths.append(_save(fig, base + "-augment.png"))

    fits = [r for r in _runs(report, "fit", "1x", model="mlp") if r["status"] == "ok"]
    if fits:
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(fits) + 1.5))
        secs = [warm_epoch_seconds(r) for r in fits]
        ax.barh(range(len(fits)), secs, color=[FAMILY_COLORS.get(r["spec"]["method"], "gray") for r in fits])
        ax.set_yticks(range(len(fits)), [r["label"] for r in fits], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds per warm epoch, fit of an MLP (lower is better)")
        ax.set_title(title + ": fit epoch time (1x)", fontsize=10)
        paths.append(_save(fig, base + "-fit.png"))
    return paths


def _save(fig, path: str) -> str:
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main() -> int:
    """Render the tables and plots of a suite JSON again: ``python -m benchmarks.suite.report JSON``."""
    import json
    import sys

    if len(sys.argv) != 2:
        print(main.__doc__)
        return 2
    with open(sys.argv[1]) as f:
        report = json.load(f)
    print(markdown(report))
    print("\n".join(plots(report, sys.argv[1].removesuffix(".json"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
