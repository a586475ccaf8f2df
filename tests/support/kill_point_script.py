"""Write a dataset, optionally pausing at a chosen point so that the test can SIGKILL it there.

Usage: python kill_point_script.py MODE OUT POINT
MODE: ``convert`` (``npyseq convert`` of ``src/x.npy`` and ``src/y.npy`` beside
OUT, 2 jobs) or ``writer``
(a ShardWriter fed by a deterministic producer loop).
POINT: ``none`` (run to the end), or ``KIND:K``, pausing (printing ``PAUSED``
and sleeping) at the K-th occurrence of:

``chunk``          the start of writing a chunk of rows: mid-shard, the
                   shard's ``.partial`` file holds its header and earlier chunks
``rename``         just after a shard was renamed to its final name: between shards
``hash``           the start of hashing an existing shard (a rerun deciding
                   what to keep)
``manifest``       the manifest written to ``manifest.json.partial``, not yet renamed
``published``      just after the manifest was renamed, before the lock is released

Chunks are made small (16 KB) so that every shard is written in several.
Every pause point is in code that the library runs anyway: the script only
wraps ``os.replace``, ``npy.hash_array_rows`` and ``npy.file_checksum``.
"""

import os
import sys
import threading
import time

import numpy as np

from npyseq.format import npy

ROWS, COLS, ROWS_PER_SHARD = 40 * 64 + 17, 256, 64  # 41 shards per array, the last one short


def source_arrays():
    x = (np.arange(ROWS * COLS, dtype=np.uint32).reshape(ROWS, COLS) * np.uint32(2654435761))
    return x.view(np.float32), (np.arange(ROWS) % 7).astype(np.int16)


def _pausing(kind: str, k: int):
    lock, count = threading.Lock(), [0]

    def hit(name: str) -> None:
        if name != kind:
            return
        with lock:
            count[0] += 1
            reached = count[0] == k
        if reached:
            print("PAUSED", flush=True)
            while True:
                time.sleep(1)

    return hit


def main() -> None:
    mode, out, point = sys.argv[1:4]
    npy.CHUNK_BYTES = 16 * 1024
    hit = (lambda name: None) if point == "none" else _pausing(point.split(":")[0], int(point.split(":")[1]))

    real_replace, real_hash, real_checksum = os.replace, npy.hash_array_rows, npy.file_checksum

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("manifest.json"):
            hit("manifest")
        real_replace(src, dst, *args, **kwargs)
        if str(dst).endswith(".npy"):
            hit("rename")
        elif str(dst).endswith("manifest.json"):
            hit("published")

    def hash_rows(hasher, chunk):
        hit("chunk")
        return real_hash(hasher, chunk)

    def checksum(path, progress=None):
        hit("hash")
        return real_checksum(path, progress)

    os.replace = replace
    npy.hash_array_rows = hash_rows
    npy.file_checksum = checksum

    import npyseq
    from npyseq.cli import main as cli_main

    if mode == "convert":
        src = os.path.join(os.path.dirname(out), "src")
        code = cli_main(["convert", os.path.join(src, "x.npy"), os.path.join(src, "y.npy"), "-o", out,
                         "--rows-per-shard", str(ROWS_PER_SHARD), "--jobs", "2", "--quiet"])
        sys.exit(code)
    x, y = source_arrays()
    with npyseq.ShardWriter(out, rows=ROWS_PER_SHARD) as writer:
        for start in range(0, ROWS, 50):  # batches that do not line up with shards
            writer.append(x=x[start:start + 50], y=y[start:start + 50])


if __name__ == "__main__":
    main()
