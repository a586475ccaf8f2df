"""The npyseq benchmark suite (``make bench``, ``make bench-full``): every method, one run, ratios.

Runs, on the same data and in this order:

1. **data**: synthetic ``x.npy``/``y.npy`` at 1x and 4x (reused when present),
   converted with ``npyseq convert`` and copied with ``cp`` (target P6);
2. **read**: ``seq[i]`` loops against memcpy and ``dd`` (P1, P1b, P5);
3. **pipeline**: every method's input pipeline alone, through Keras'
   ``EpochIterator`` as ``fit`` drives it, cold then warm page cache (P2, P7);
   then a subset at 4x, for memory against dataset size;
4. **fit**: epochs of a cheap MLP (P3, P4, P8: 2 processes against 2
   threads, time and memory at 1x and 4x) and of a small conv net;
5. **augment**: the augmentation workload (uint8 images of 64x64x3, a
   per-batch augmentation that holds the GIL, :mod:`benchmarks.suite.augment`):
   npyseq with 2 processes against 2 threads, PyTorch's ``DataLoader`` and
   mosaicml-streaming, each augmenting in its workers (P9);
6. **capped**: the 4x dataset under a cgroup memory cap at least 3x smaller:
   which methods are killed, and npyseq's throughput.

Each measurement runs in its own process (``python -m benchmarks.suite.child``),
so memory peaks never mix. Writes ``benchmarks/results/suite-<plan>.json`` (machine,
versions, every figure), ``.md`` (the tables) and ``.png`` plots, and prints
the tables.

The targets P1-P7 that the ratios are checked against are defined in
``benchmarks/suite/targets.py``.

mosaicml-streaming (``streaming``) reads MDS shards written from the same
sources (:mod:`benchmarks.suite.peers`); the suite skips it, saying so, where
it is not installed. The ``tiny`` plan (64 MB and 256 MB datasets, short
timings, only the runs with workers and the augmentation runs) is for trying
the suite's plumbing, not for figures; ``--match REGEX`` keeps only the runs
whose label it matches (``re.search``).

    python -m benchmarks.suite [--plan tiny|quick|full] [--only pipeline,fit] [--match "2 (processes|threads)"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.common import ROOT, log
from benchmarks.suite import report, targets
from benchmarks.suite.data import Data, make_sources, rows_for
from benchmarks.suite.methods import IN_RAM, METHODS, SETTINGS, Spec, available

# The npyseq setting of the memory figures (P4) and of the capped training.
MEMORY_SPEC = {"method": "npyseq", "setting": "threads", "shuffle": "blocks"}
# Its process-worker twin, which P8 compares with it (fit time, memory at 1x and 4x).
PROCESS_SPEC = dict(MEMORY_SPEC, setting="processes")

PLANS = {
    "quick": dict(size_gb=1.0, scale=4, cap_mb=1024, repeats=2, conv_fraction=0.25,
                  pipeline_epochs=["cold", "warm"], min_warm_seconds=0.75,
                  fit_epochs=["warmup", "warm", "warm"], capped_seconds=6, memory_seconds=4,
                  convert_repeats=3, child_timeout=300, full=False),
    # Plumbing only: the runs with workers (and every augmentation run), data smaller than the cap
    # (a process with Keras alone takes more anonymous memory than 3x less than 256 MB).
    "tiny": dict(size_gb=0.064, scale=4, cap_mb=512, repeats=1, conv_fraction=0.25,
                 pipeline_epochs=["cold", "warm"], min_warm_seconds=0.3,
                 fit_epochs=["warmup", "warm"], capped_seconds=3, memory_seconds=2,
                 convert_repeats=1, child_timeout=300, full=False, match=r", 2 (processes|threads)|augment"),
    "full": dict(size_gb=2.0, scale=4, cap_mb=2048, repeats=3, conv_fraction=1.0,
                 pipeline_epochs=["cold", "warm"], min_warm_seconds=3.0,
                 fit_epochs=["warmup", "warm", "warm", "warm"], capped_seconds=60, memory_seconds=600,
                 convert_repeats=3, child_timeout=1200, full=True),
}


# -- what runs ---------------------------------------------------------------


def pipeline_specs(full: bool) -> list[Spec]:
    """Every method at 1x; pairs that a target compares run next to each other.

    The quick plan leaves out npyseq's "batches" and "blocks" modes with
    process workers, and "batches" with threads.
    """
    out = []
    for setting in SETTINGS:
        out.append(Spec("npyseq", setting, False))
        out.append(Spec("minimal", setting))
        out.append(Spec("npyseq", setting, "global"))
        out += [Spec(m, setting) for m in ("torch", "grain") if setting in METHODS[m]]
        if setting in METHODS["streaming"]:
            out += [Spec("streaming", setting, True)] + ([Spec("streaming", setting)] if setting != "sync" or full
                                                          else [])
        if full or setting == "sync":
            out.append(Spec("npyseq", setting, "batches"))
        if full or setting != "processes":
            out.append(Spec("npyseq", setting, "blocks"))
        if setting == "processes":  # what the shared-memory transport replaces
            out.append(Spec("npyseq", setting, "global", shared_memory=False))
    out += [Spec(m) for m in ("numpy", "tf.data", "generator", "raw_bytes")]
    return out


def memory_specs(full: bool) -> list[Spec]:
    """The 4x pipeline runs, for memory against dataset size."""
    out = [Spec("npyseq", "sync", False), Spec(**MEMORY_SPEC), Spec("npyseq", "processes", "global"),
           Spec("minimal", "threads"), Spec("numpy"), Spec("generator"), Spec("torch", "processes"),
           Spec("grain", "threads")]
    if full:
        out += [Spec("tf.data"), Spec("raw_bytes")]
    return out


def fit_specs(full: bool) -> list[Spec]:
    out = [Spec("model_alone"), Spec("constant_pydataset"), Spec("numpy"), Spec("tf.data"),
           Spec("generator"), Spec("minimal", "threads"), Spec("npyseq", "sync", "blocks"),
           Spec(**MEMORY_SPEC), Spec(**PROCESS_SPEC), Spec("torch", "processes"), Spec("grain", "threads")]
    if full:
        out += [Spec("npyseq", "threads", "global"), Spec("raw_bytes"), Spec("minimal", "sync"),
                Spec("minimal", "processes"),
                Spec("npyseq", "threads", False), Spec("npyseq", "sync", "global"),
                Spec("torch", "sync"), Spec("grain", "processes")]
    return out


def augment_specs(full: bool) -> list[Spec]:
    """The augmentation workload: npyseq 2 processes vs 2 threads (and none), torch and streaming."""
    out = [Spec("npyseq", "sync", "global", augment=True), Spec("npyseq", "threads", "global", augment=True),
           Spec("npyseq", "processes", "global", augment=True),
           Spec("npyseq", "processes", "global", augment=True, shared_memory=False),
           Spec("torch", "processes", augment=True),
           Spec("streaming", "processes", True, augment=True)]
    if full:
        out += [Spec("npyseq", "threads", "blocks", augment=True), Spec("npyseq", "processes", "blocks", augment=True),
                Spec("torch", "sync", augment=True)]
    return out


def conv_specs() -> list[Spec]:
    return [Spec("model_alone"), Spec("numpy"), Spec("tf.data"), Spec("generator"), Spec("minimal", "threads"),
            Spec(**MEMORY_SPEC)]


def capped_specs() -> list[Spec]:
    return [Spec("numpy"), Spec("tf.data"), Spec("generator"), Spec("raw_bytes"),
            Spec("minimal", "threads"), Spec("npyseq", "sync", False), Spec(**MEMORY_SPEC),
            Spec("npyseq", "threads", "global"), Spec("torch", "processes"), Spec("grain", "threads")]


# -- running children --------------------------------------------------------


def _env(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    return env


def run_child(module: str, *args: str, backend: str, timeout: float, cap: int | None = None) -> dict:
    """Run ``python -m module args`` from the repository root; {status: ok|failed|killed|timeout, result, ...}."""
    argv = [sys.executable, "-m", module, *args]
    start = time.perf_counter()
    env = _env(backend)
    if cap is None:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "wall_seconds": time.perf_counter() - start}
        code, out, err, extra = p.returncode, p.stdout, p.stderr, {}
    else:
        from tools.memcap import run_capped

        r = run_capped(argv, cap, timeout=timeout, env=env, cwd=ROOT)
        code, out, err = r.returncode, r.stdout, r.stderr
        extra = {"cap_bytes": cap, "cgroup_max_usage_bytes": r.max_usage_bytes, "oom_killed": r.oom_killed,
                 "returncode": r.returncode}
        if r.timed_out:
            return {"status": "timeout", "wall_seconds": r.seconds, **extra}
        if r.oom_killed:
            return {"status": "killed", "wall_seconds": r.seconds, **extra}
    result = common.parse_result(out)
    if code != 0 or result is None:
        tail = (err or "").strip().splitlines()[-3:]
        return {"status": "failed", "returncode": code, "error": " | ".join(tail)[-600:],
                "wall_seconds": time.perf_counter() - start, **extra}
    return {"status": "ok", "result": result, "wall_seconds": time.perf_counter() - start, **extra}


class Suite:
    def __init__(self, plan: str, folder: str, out_dir: str, match: str | None = None, **overrides):
        self.plan_name = plan
        self.plan = dict(PLANS[plan], **{k: v for k, v in overrides.items() if v is not None})
        match = match or self.plan.get("match")
        self.match = re.compile(match) if match else None
        rows = rows_for(self.plan["size_gb"])
        self.data = {"1x": Data(os.path.join(folder, f"suite-{rows}"), rows),
                     "4x": Data(os.path.join(folder, f"suite-{rows * self.plan['scale']}"),
                                rows * self.plan["scale"]),
                     "img": Data(os.path.join(folder, f"suite-images-{rows}"), rows, "images")}
        self.out_dir = out_dir
        self.skipped = {m: why for m in METHODS for ok, why in [available(m)] if not ok}
        self.report = {"suite": plan, "command": f"make bench{'-full' if plan == 'full' else ''}",
                       "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "config": dict(self.plan, memory_spec=MEMORY_SPEC, process_spec=PROCESS_SPEC, batch_size=256,
                                      keras_backend_pipeline="numpy", keras_backend_fit="tensorflow"),
                       "machine": common.machine(), "versions": versions(), "skipped_methods": self.skipped,
                       "datasets": {k: {"rows": d.rows, "bytes": d.nbytes, "folder": d.folder, "kind": d.kind}
                                    for k, d in self.data.items()},
                       "conversion": {}, "runs": []}

    # -- phases

    def make_data(self, only: set[str]) -> None:
        from benchmarks.suite.data import make_mds
        from benchmarks.suite.io import convert_vs_cp

        needs = {"1x": {"read", "pipeline", "fit"}, "4x": {"pipeline", "fit", "capped"}, "img": {"augment"}}
        for size, data in self.data.items():
            if not needs[size] & only:  # no phase asked for reads this dataset
                continue
            t = time.perf_counter()
            made = make_sources(data)
            log(f"[data {size}] {data.rows:,} rows, {data.nbytes / 1e9:.2f} GB: sources "
                f"{'written' if made else 'reused'} ({time.perf_counter() - t:.1f} s)")
            if size == "img":  # not a conversion figure: only the shards are needed
                if made or not os.path.exists(os.path.join(data.shards, "manifest.json")):
                    subprocess.run([sys.executable, "-m", "npyseq", "convert", *data.source_files(), "-o",
                                    data.shards, "--shard-size", "256MB", "--overwrite", "--quiet"],
                                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            else:
                r = convert_vs_cp(data, repeats=self.plan["convert_repeats"] if size == "1x" else 1)
                self.report["conversion"][size] = r
                log(f"[data {size}] npyseq convert {r['convert_gb_per_s']:.2f} GB/s; cp {r['cp_gb_per_s']:.2f} "
                    f"GB/s, cp + sync {r['cp_sync_gb_per_s']:.2f} GB/s (cold source)")
            if "streaming" not in self.skipped and (size == "img" or size == "1x" and "pipeline" in only):
                t = time.perf_counter()
                if made:  # new sources: new MDS shards
                    shutil.rmtree(data.mds, ignore_errors=True)
                made = make_mds(data)
                log(f"[data {size}] MDS shards for streaming {'written' if made else 'reused'} "
                    f"({time.perf_counter() - t:.1f} s)")

    def read(self) -> None:
        job = {"data": self.data["1x"].to_json(), "repeats": self.plan["repeats"],
               "min_seconds": self.plan["min_warm_seconds"] / 2}
        r = run_child("benchmarks.suite.io", "read-loop", json.dumps(job), backend="numpy",
                      timeout=self.plan["child_timeout"])
        if r["status"] != "ok":
            log(f"[read] {r['status']}: {r.get('error', '')}")
            return
        self.report["read_loop"] = loop = r["result"]
        modes = ", ".join(f"{m} {v['gb_per_s']:.2f}" for m, v in loop["warm"].items())
        log(f"[read] memcpy {loop['memcpy_gb_per_s']:.2f} GB/s; seq[i] warm GB/s: {modes}; cold "
            f"{loop['cold_sequential']['gb_per_s']:.2f} vs dd {loop['dd']['gb_per_s']:.2f} GB/s")
        out = os.path.join(self.out_dir, "page_cache.json")
        r = subprocess.run([sys.executable, "-m", "benchmarks.studies.page_cache", "--data",
                            self.data["1x"].folder, "--repeats", str(self.plan["repeats"]), "--out", out],
                           capture_output=True, text=True, env=_env("numpy"), cwd=ROOT,
                           timeout=self.plan["child_timeout"])
        if r.returncode == 0:
            with open(out) as f:
                self.report["page_cache"] = pc = json.load(f)
            log("[read] warm pread / memcpy-from-memmap GB/s, page cache filled by: " + "; ".join(
                f"{x['filled_by']} {x['npyseq_pread']:.2f} / {x['memmap_copy']:.2f}" for x in pc["results"]))
        else:
            log(f"[read] page-cache check failed: {r.stderr.strip().splitlines()[-1:]}")

    def measure(self, phase: str, size: str, spec: Spec, *, model: str | None = None,
                epochs: list[str] | None = None, cap: int | None = None, **job_extra) -> None:
        run = {"phase": phase, "size": size, "spec": spec.to_json(), "label": spec.label, "model": model,
               "capped": cap is not None}
        if self.match and not self.match.search(spec.label):
            return
        if spec.method in self.skipped:
            run.update(status="skipped", note=self.skipped[spec.method])
            self.report["runs"].append(run)
            return
        data = self.data[size]
        if spec.method in IN_RAM and cap is None:
            # Measured: numpy ~1.1x the data (pipeline), ~3.2x (fit); tf.data ~2.9x.
            need = data.nbytes * (1.2 if spec.method == "numpy" else 3.0) * (2.7 if model else 1.0)
            if need > 0.6 * mem_available():
                run.update(status="skipped", note=f"needs about {need / 1e9:.1f} GB of RAM; "
                                                  f"{mem_available() / 1e9:.1f} GB available")
                self.report["runs"].append(run)
                log(f"[{phase} {size}] {spec.label}: skipped ({run['note']})")
                return
        job = {"job": "fit" if model else "pipeline", "spec": spec.to_json(), "data": data.to_json(),
               "epochs": epochs, "model": model, **job_extra}
        run.update(run_child("benchmarks.suite.child", json.dumps(job), backend="tensorflow" if model else "numpy",
                             timeout=self.plan["child_timeout"], cap=cap))
        self.report["runs"].append(run)
        log(f"[{phase} {size}{' capped' if cap else ''}{' ' + model if model else ''}] {spec.label}: "
            f"{summary(run)}")

    def pipelines(self) -> None:
        for spec in pipeline_specs(self.plan["full"]):
            self.measure("pipeline", "1x", spec, epochs=self.plan["pipeline_epochs"],
                         min_warm_seconds=self.plan["min_warm_seconds"])
        for spec in memory_specs(self.plan["full"]):
            self.measure("pipeline", "4x", spec, epochs=["any"], max_seconds=self.plan["memory_seconds"])

    def fits(self) -> None:
        for spec in fit_specs(self.plan["full"]):
            self.measure("fit", "1x", spec, model="mlp", epochs=self.plan["fit_epochs"])
        rows = int(self.data["1x"].rows * self.plan["conv_fraction"])
        for spec in conv_specs():
            spec = Spec(**{**spec.to_json(), "rows": rows})
            self.measure("fit", "1x", spec, model="conv", epochs=self.plan["fit_epochs"])
        for spec in (MEMORY_SPEC, PROCESS_SPEC):
            self.measure("fit", "4x", Spec(**spec), model="mlp", epochs=["any"])

    def augments(self) -> None:
        for spec in augment_specs(self.plan["full"]):
            self.measure("augment", "img", spec, epochs=self.plan["pipeline_epochs"],
                         min_warm_seconds=self.plan["min_warm_seconds"])

    def capped(self) -> None:
        from tools.memcap import cgroup_available

        ok, why = cgroup_available()
        cap = self.plan["cap_mb"] * 2**20
        data = self.data["4x"]
        self.report["capped"] = {"available": ok, "reason": why, "cap_bytes": cap, "dataset_bytes": data.nbytes,
                                 "data_over_cap": data.nbytes / cap}
        if not ok:
            log(f"[capped] skipped: {why}")
            return
        for spec in capped_specs():
            self.measure("pipeline", "4x", spec, epochs=["cold"], cap=cap,
                         max_seconds=self.plan["capped_seconds"])
        self.measure("fit", "4x", Spec(**MEMORY_SPEC), model="mlp", epochs=["cold"], cap=cap)

    # -- all

    def run(self, only: set[str]) -> dict:
        start = time.perf_counter()
        log(f"npyseq benchmark suite, plan {self.plan_name!r}: 1x = {self.data['1x'].nbytes / 1e9:.2f} GB, "
            f"4x = {self.data['4x'].nbytes / 1e9:.2f} GB; {os.cpu_count()} CPUs; load "
            f"{os.getloadavg()[0]:.1f}")
        if self.skipped:
            log(f"skipped methods: {self.skipped}")
        phases = [("data", lambda: self.make_data(only)), ("read", self.read), ("pipeline", self.pipelines),
                  ("fit", self.fits), ("augment", self.augments), ("capped", self.capped)]
        for name, fn in phases:
            if name == "data" or name in only:
                t = time.perf_counter()
                fn()
                self.report.setdefault("phase_seconds", {})[name] = time.perf_counter() - t
        self.report["seconds"] = time.perf_counter() - start
        self.report["load_average_end"] = os.getloadavg()
        return self.report


def summary(run: dict) -> str:
    if run["status"] != "ok":
        extra = run.get("error") or run.get("note") or ""
        return f"{run['status'].upper()} {extra}".strip()
    r = run["result"]
    mem = f"{r['peak_anon_bytes'] / 2**20:,.0f} MiB anon"
    if run.get("model"):
        epochs = ", ".join(f"{e['cache']} {e['seconds']:.2f} s" for e in r["epochs"])
        return f"{epochs}; {mem}"
    parts = []
    for kind in dict.fromkeys(e["cache"] for e in r["epochs"]):
        rates = [e["rows_per_s"] for e in r["epochs"] if e["cache"] == kind]
        parts.append(f"{kind} {max(rates):,.0f}" + (f" (best of {len(rates)})" if len(rates) > 1 else ""))
    return f"rows/s {', '.join(parts)}; {mem} ({run['wall_seconds']:.1f} s)"


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("npyseq", "numpy", "keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "grain",
                 "mosaicml-streaming", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    dirty = any(path.startswith("npyseq/") for path in common.modified_code())
    out["git"] = common.git_commit(short=True) + (" (npyseq/ modified)" if dirty else "")
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    p.add_argument("--plan", choices=sorted(PLANS), default="quick")
    p.add_argument("--only", default="read,pipeline,fit,augment,capped",
                   help="comma-separated phases after data (default: all)")
    p.add_argument("--data", default=common.DATA, help="where the datasets go (default: benchmarks/data)")
    p.add_argument("--out", help="where the results go (default: benchmarks/results; for the tiny plan, "
                                 "benchmarks/data/results-tiny, which git ignores)")
    p.add_argument("--size-gb", type=float, help="size of the 1x dataset (default: the plan's)")
    p.add_argument("--cap-mb", type=int, help="memory cap of the capped runs (default: the plan's)")
    p.add_argument("--match", metavar="REGEX", help="measure only the runs whose label it matches (re.search)")
    p.add_argument("--clean", action="store_true", help="delete the datasets at the end")
    args = p.parse_args()
    if args.out is None:
        args.out = os.path.join(common.DATA, "results-tiny") if args.plan == "tiny" else common.RESULTS

    suite = Suite(args.plan, args.data, args.out, match=args.match, size_gb=args.size_gb, cap_mb=args.cap_mb)
    result = suite.run(set(args.only.split(",")))
    result["targets"] = targets.evaluate(result)
    base = os.path.join(args.out, f"suite-{args.plan}")
    common.write_result(base + ".json", result)
    text = report.markdown(result)
    with open(base + ".md", "w") as f:
        f.write(text)
    plots = report.plots(result, base)
    log("")
    log(text)
    log(f"wrote {base}.md, " + ", ".join(plots))
    log(f"suite took {result['seconds']:.0f} s")
    if args.clean:
        for data in suite.data.values():
            shutil.rmtree(data.folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
