"""How fast does npyseq convert HDF5 and Zarr sources, against reading them alone, and on a Dask cluster?

For an HDF5 dataset (float32, 1 MiB chunks, uncompressed) and a Zarr v3 array
(the same rows, 1 MiB chunks, Zarr's default compression), from a cold page
cache: the source library's own sequential read of every row (16 MiB slices,
nothing written) against ``npyseq.write_shards`` of the same source into
32 MB shards (read, hash, write, fsync). The target is at least 0.8x of the
library's own read. For scale, the disk's own copy of the HDF5 file (its
bytes read in 16 MiB blocks, written to a new file and fsync'd, from a cold
cache), and the disk's write of as many bytes from memory alone (16 MiB
blocks, fsync): reading and writing share one disk, so a conversion that
overlaps them perfectly still takes about the read's time plus the write's,
and ``read / (read + write)`` is the ratio it can reach. Then the Zarr array as a Dask array (``da.from_zarr``)
converted on a ``LocalCluster`` of 1 and of 2 worker processes (one thread
each), through ``joblib.parallel_config(backend="dask")``. Prints a markdown
table and writes ``benchmarks/results/convert_sources.json``.

    python -m benchmarks.studies.convert_sources [--size-mb 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import numpy as np

import npyseq
from benchmarks.common import DATA, RESULTS, drop_cache, log, markdown_table, write_result

COLS = 1024  # float32: 4 KiB rows
CHUNK_ROWS = 256  # 1 MiB chunks
SLICE_ROWS = 4096  # 16 MiB reads for the baselines


def _pattern(a: int, b: int) -> np.ndarray:
    bits = np.arange(a * COLS, b * COLS, dtype=np.uint32).reshape(b - a, COLS) * np.uint32(2654435761)
    return (bits >> np.uint32(8)).astype(np.float32)  # compressible a little, like real data


def make_sources(folder: str, rows: int) -> tuple[str, str]:
    import h5py
    import zarr

    os.makedirs(folder, exist_ok=True)
    h5, zs = os.path.join(folder, "src.h5"), os.path.join(folder, "src.zarr")
    if not os.path.exists(h5):
        with h5py.File(h5 + ".tmp", "w") as f:
            d = f.create_dataset("x", shape=(rows, COLS), dtype="float32", chunks=(CHUNK_ROWS, COLS))
            for a in range(0, rows, SLICE_ROWS):
                d[a:a + SLICE_ROWS] = _pattern(a, min(rows, a + SLICE_ROWS))
        os.replace(h5 + ".tmp", h5)
    if not os.path.exists(zs):
        z = zarr.create_array(zs + ".tmp", shape=(rows, COLS), dtype="float32", chunks=(CHUNK_ROWS, COLS),
                              zarr_format=3)
        for a in range(0, rows, SLICE_ROWS):
            z[a:a + SLICE_ROWS] = _pattern(a, min(rows, a + SLICE_ROWS))
        os.replace(zs + ".tmp", zs)
    return h5, zs


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]


def read_alone(kind: str, path: str) -> float:
    """Seconds for the source library to read every row, sequentially, from a cold cache."""
    import h5py
    import zarr

    drop_cache(_files(path))
    t = time.perf_counter()
    if kind == "hdf5":
        with h5py.File(path, "r") as f:
            d = f["x"]
            for a in range(0, d.shape[0], SLICE_ROWS):
                d[a:a + SLICE_ROWS]
    else:
        z = zarr.open_array(path, mode="r")
        for a in range(0, z.shape[0], SLICE_ROWS):
            z[a:a + SLICE_ROWS]
    return time.perf_counter() - t


def file_copy(path: str, out: str) -> float:
    """Seconds to copy the bytes of ``path`` to a new file (16 MiB blocks, fsync), from a cold cache."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    drop_cache(_files(path))
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as src, open(os.path.join(out, "copy"), "wb", buffering=0) as dst:
        while block := src.read(SLICE_ROWS * COLS * 4):
            dst.write(block)
        os.fsync(dst.fileno())
    return time.perf_counter() - t


def write_alone(nbytes: int, out: str) -> float:
    """Seconds to write ``nbytes`` from memory to a new file (16 MiB blocks, fsync)."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    block = _pattern(0, SLICE_ROWS).tobytes()
    t = time.perf_counter()
    with open(os.path.join(out, "written"), "wb", buffering=0) as dst:
        for a in range(0, nbytes, len(block)):
            dst.write(block[:nbytes - a])
        os.fsync(dst.fileno())
    return time.perf_counter() - t


def convert(kind: str, path: str, out: str) -> float:
    """Seconds for write_shards of the source, from a cold cache (the output deleted first)."""
    import h5py
    import zarr

    shutil.rmtree(out, ignore_errors=True)
    drop_cache(_files(path))
    t = time.perf_counter()
    if kind == "hdf5":
        with h5py.File(path, "r") as f:
            npyseq.write_shards(out, {"x": f["x"]}, shard_size="32MB", progress=False)
    else:
        npyseq.write_shards(out, {"x": zarr.open_array(path, mode="r")}, shard_size="32MB", progress=False)
    return time.perf_counter() - t


def on_cluster(path: str, out: str, workers: int, repeat: int) -> list[float]:
    import dask.array as da
    import joblib
    from distributed import Client, LocalCluster

    times = []
    with LocalCluster(n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster):
        for i in range(repeat + 1):  # the first run warms the workers up (imports): not kept
            shutil.rmtree(out, ignore_errors=True)
            drop_cache(_files(path))
            t = time.perf_counter()
            with joblib.parallel_config(backend="dask"):
                npyseq.write_shards(out, {"x": da.from_zarr(path)}, shard_size="32MB", progress=False)
            if i:
                times.append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.convert_sources",
                                description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=1024, help="size of each source (default %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is kept")
    p.add_argument("--data", default=os.path.join(DATA, "convert_sources"), help="where the sources are made")
    args = p.parse_args()
    rows = int(args.size_mb * 1e6) // (COLS * 4)
    nbytes = rows * COLS * 4
    log(f"sources: {rows} rows, {nbytes / 1e6:.0f} MB each, in {args.data}")
    h5, zs = make_sources(args.data, rows)
    out = os.path.join(args.data, "out")
    report, table = {"rows": rows, "bytes": nbytes, "chunk_rows": CHUNK_ROWS, "shard_size": "32MB"}, []
    try:
        for kind, path in (("hdf5", h5), ("zarr", zs)):
            alone = statistics.median(read_alone(kind, path) for _ in range(args.repeat))
            conv = statistics.median(convert(kind, path, out) for _ in range(args.repeat))
            ratio = alone / conv
            report[kind] = {"read_alone_s": alone, "convert_s": conv, "read_alone_gb_s": nbytes / alone / 1e9,
                            "convert_gb_s": nbytes / conv / 1e9, "ratio": ratio}
            table.append([kind, f"{nbytes / alone / 1e9:.2f}", f"{nbytes / conv / 1e9:.2f}", f"{ratio:.2f}x",
                          "yes" if ratio >= 0.8 else "no"])
            log(f"{kind}: {report[kind]}")
        copy = statistics.median(file_copy(h5, out) for _ in range(args.repeat))
        size = os.path.getsize(h5)
        report["hdf5_file_copy"] = {"seconds": copy, "gb_s": size / copy / 1e9, "bytes": size}
        table.append(["the HDF5 file's own copy (read, write, fsync)", "", f"{size / copy / 1e9:.2f}", "", ""])
        log(f"file copy: {report['hdf5_file_copy']}")
        write = statistics.median(write_alone(nbytes, out) for _ in range(args.repeat))
        report["write_alone"] = {"seconds": write, "gb_s": nbytes / write / 1e9}
        for kind in ("hdf5", "zarr"):
            report[kind]["disk_bound_ratio"] = report[kind]["read_alone_s"] / (report[kind]["read_alone_s"] + write)
        table.append(["the disk's write alone (from memory, fsync)", "", f"{nbytes / write / 1e9:.2f}", "", ""])
        table.append(["ratio a perfect overlap reaches, read / (read + write)", "", "",
                      f"hdf5 {report['hdf5']['disk_bound_ratio']:.2f}x, zarr {report['zarr']['disk_bound_ratio']:.2f}x",
                      ""])
        log(f"write alone: {report['write_alone']}")
        cluster = {}
        for workers in (1, 2):
            t = statistics.median(on_cluster(zs, out, workers, args.repeat))
            cluster[workers] = t
            log(f"dask cluster, {workers} worker(s): {t:.2f} s")
        report["dask_cluster"] = {f"{w}_workers_s": t for w, t in cluster.items()}
        report["dask_cluster"]["speedup_2_over_1"] = cluster[1] / cluster[2]
        table.append(["zarr as dask, cluster of 1 worker", "", f"{nbytes / cluster[1] / 1e9:.2f}", "", ""])
        table.append(["zarr as dask, cluster of 2 workers", "", f"{nbytes / cluster[2] / 1e9:.2f}",
                      f"{cluster[1] / cluster[2]:.2f}x of 1 worker", ""])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    text = markdown_table(["source", "library's own read GB/s", "npyseq convert GB/s", "ratio", ">= 0.8x"],
                          table, "lrrrl")
    write_result(os.path.join(RESULTS, "convert_sources.json"), report, table=text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
