"""The npyseq demo (`make demo`): train on a dataset bigger than the memory the training may use.

1. writes synthetic source arrays ``x.npy`` (float32 rows of 32x32x3) and
   ``y.npy`` (labels that depend on x, so the model can learn) in chunks;
2. converts them with ``npyseq convert`` into shards;
3. shows the cap is real: ``np.load("x.npy")`` under the same memory cap is
   killed;
4. trains a small Keras MLP on the shards through ``npyseq.ShardSequence``
   with process workers, under a cgroup memory cap several times smaller than
   the data, and prints rows/s, peak anonymous memory and peak shared memory
   (the batches process workers hand over through it).

Where the cgroup v1 memory controller is unavailable (not root, cgroup v2),
the demo trains without a cap and says so.

    python examples/demo.py [--size-gb 3.2] [--cap-mb 1024] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the measuring tools of the repository (tools/), not part of npyseq

from tools.synthetic import CLASSES, ROW_SHAPE, X_ROW_BYTES, source_paths, write_sources  # noqa: E402

log = functools.partial(print, flush=True)


def train(args) -> None:
    """Child process: train on the shards, print one JSON line of results."""
    import keras

    import npyseq
    from tools.memwatch import PeakMemory
    from tools.timing import EpochTimer

    ds = npyseq.open_shards(args.data)
    seq = npyseq.ShardSequence(ds, x="x", y="y", batch_size=256, shuffle="blocks", seed=0,
                               workers=args.workers, use_multiprocessing=args.processes)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(ROW_SHAPE)
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    timer = EpochTimer()
    with PeakMemory() as peak:
        hist = model.fit(seq, epochs=args.epochs, verbose=2, callbacks=[timer])
    times = timer.seconds
    print(json.dumps({
        "rows": len(ds), "bytes": ds.nbytes, "epoch_seconds": times,
        "rows_per_second": [len(ds) / t for t in times],
        "accuracy": hist.history["accuracy"],
        "peak_anon_bytes": peak.max_bytes, "peak_main_anon_bytes": peak.main_bytes,
        "peak_workers_uss_bytes": peak.children_bytes,
        "peak_main_shmem_bytes": peak.main_shmem_bytes, "peak_shmem_bytes": peak.shmem_bytes,
    }), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=3.2, help="size of x in GB (default %(default)s)")
    p.add_argument("--cap-mb", type=int, default=1024, help="memory cap of the training, MiB")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", action="store_true", help="thread workers instead of processes")
    p.add_argument("--dir", default=os.path.join(ROOT, "demo-data"))
    p.add_argument("--clean", action="store_true", help="delete the demo data at the end")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--processes", action="store_true")
    args = p.parse_args()
    if args.command == "train":
        train(args)
        return 0

    from tools.memcap import cgroup_available, drop_page_cache, run_capped

    row_bytes = X_ROW_BYTES
    rows = int(args.size_gb * 1e9 // row_bytes)
    cap = args.cap_mb * 2**20
    capped, reason = cgroup_available()
    log(f"npyseq demo: {rows} rows of 32x32x3 float32 ({rows * row_bytes / 1e9:.2f} GB), "
        f"training under a {args.cap_mb} MiB memory cap" if capped else
        f"npyseq demo: {rows} rows ({rows * row_bytes / 1e9:.2f} GB); NO memory cap: {reason}")

    log("[1/4] writing the source arrays x.npy and y.npy in chunks")
    t = time.perf_counter()
    folder = os.path.join(args.dir, "source")
    x_path, y_path = source_paths(folder)
    if not write_sources(folder, rows):
        log(f"      reusing {x_path} and {y_path}")
    log(f"      {time.perf_counter() - t:.1f} s")

    out = os.path.join(args.dir, "train")
    log(f"[2/4] npyseq convert {x_path} {y_path} -o {out} --shard-size 256MB --overwrite")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "npyseq", "convert", x_path, y_path, "-o", out,
                    "--shard-size", "256MB", "--overwrite"], check=True)
    seconds = time.perf_counter() - t
    size = os.path.getsize(x_path) + os.path.getsize(y_path)
    log(f"      converted {size / 1e9:.2f} GB in {seconds:.1f} s ({size / 1e9 / seconds:.2f} GB/s)")

    if capped:
        log(f"[3/4] control: np.load('x.npy') under the same {args.cap_mb} MiB cap")
        drop_page_cache(x_path)
        r = run_capped([sys.executable, "-c", f"import numpy as np; x = np.load({x_path!r}); print(x.sum())"],
                       cap, timeout=300)
        verdict = "killed by the OOM killer" if r.oom_killed else (
            "failed: " + r.stderr.strip().splitlines()[-1] if r.returncode else "it fit?!")
        log(f"      numpy arrays in RAM: {verdict} (returncode {r.returncode})")
    else:
        log("[3/4] control skipped: no memory cap available")

    kind = "worker threads" if args.threads else "worker processes"
    log(f"[4/4] training an MLP 3072-64-10 for {args.epochs} epochs, batch 256, "
        f"shuffle='blocks', {args.workers} {kind}, cold page cache")
    for root, _, files in os.walk(out):
        for f in files:
            drop_page_cache(os.path.join(root, f))
    argv = [sys.executable, __file__, "train", "--data", out, "--epochs", str(args.epochs),
            "--workers", str(args.workers)] + ([] if args.threads else ["--processes"])
    if capped:
        r = run_capped(argv, cap, timeout=1800, capture=True)
        sys.stderr.write(r.stderr[-2000:] if r.returncode else "")
        for line in r.stdout.splitlines()[:-1]:
            log("      " + line)
        if r.returncode != 0:
            log(f"      training FAILED under the cap: returncode {r.returncode}, "
                f"oom_killed {r.oom_killed}")
            return 1
        stdout, cgroup_peak = r.stdout, r.max_usage_bytes
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, check=True)
        stdout, cgroup_peak = proc.stdout, None
        for line in stdout.splitlines()[:-1]:
            log("      " + line)
    res = json.loads(stdout.strip().splitlines()[-1])
    log("")
    log(f"dataset              {res['rows']} rows, {res['bytes'] / 1e9:.2f} GB of shards")
    for i, (sec, rps, acc) in enumerate(zip(res["epoch_seconds"], res["rows_per_second"], res["accuracy"])):
        log(f"epoch {i + 1}              {sec:.1f} s, {rps:,.0f} rows/s "
            f"({rps * row_bytes / 1e9:.2f} GB/s), accuracy {acc:.3f}")
    log(f"peak anonymous mem   {res['peak_anon_bytes'] / 2**20:.0f} MiB, Pss_Anon of trainer + workers "
        f"(trainer RssAnon {res['peak_main_anon_bytes'] / 2**20:.0f} MiB; workers' share "
        f"{res['peak_workers_uss_bytes'] / 2**20:.0f} MiB)")
    log(f"peak shared memory   {res['peak_shmem_bytes'] / 2**20:.0f} MiB, Pss_Shmem of trainer + workers, the "
        f"batches process workers hand over (trainer RssShmem {res['peak_main_shmem_bytes'] / 2**20:.0f} MiB)")
    if cgroup_peak is not None:
        log(f"cgroup peak          {cgroup_peak / 2**20:.0f} MiB of a {args.cap_mb} MiB cap "
            "(page cache included; the kernel reclaims it)")
        log(f"data / cap           {res['bytes'] / cap:.1f}x")
    if args.clean:
        shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
