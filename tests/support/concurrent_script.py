"""Processes for tests/storage/test_concurrent_use.py: readers, a converter, an overwriting writer.

Usage:
  python concurrent_script.py read DATASET SECONDS
      read the whole dataset over and over; print {"passes": n, "digest": ...}
  python concurrent_script.py overwrite DATASET VERSIONS
      write versions 1..VERSIONS of a dataset at DATASET with overwrite=True
  python concurrent_script.py check DATASET SECONDS
      open, read and check the overwritten dataset over and over; print
      {"passes": n, "versions": distinct versions seen, "changed": n, "mixed": n,
       "other_errors": {error type: n}, "errors": [the first 10]}

Version ``v`` of the overwritten dataset has ``rows(v)`` rows in shards of 100
rows; every row of ``x`` is ``[v, i]`` and of ``y`` is ``v``. A reader that
mixed shards of two versions would see two values of ``v``, or rows out of
place.
"""

import json
import os
import sys
import time

import numpy as np
import xxhash

import npyseq


def rows(v: int) -> int:
    return 1000 + 100 * (v % 3) + 7 * (v % 5)


def version(v: int) -> dict:
    n = rows(v)
    x = np.empty((n, 2), np.float64)
    x[:, 0], x[:, 1] = v, np.arange(n)
    return {"x": x, "y": np.full(n, v, np.int32)}


_CAP = 150.0  # seconds: a bound on a run whose "done" file never comes (the test then fails)


def _until(done: str):
    """Keep going while the file ``done`` does not exist (the other process is still at work)."""
    end = time.monotonic() + _CAP
    while not os.path.exists(done) and time.monotonic() < end:
        yield
    yield  # one more pass after it finished


def read(path: str, done: str) -> dict:
    passes, digest = 0, None
    for _ in _until(done):
        ds = npyseq.open_shards(path, verify="checksums")
        h = xxhash.xxh3_64()
        for name in ds.names:
            h.update(ds[name][:].tobytes())
        if digest is not None and h.hexdigest() != digest:
            raise AssertionError(f"pass {passes} read different bytes")
        digest, passes = h.hexdigest(), passes + 1
    return {"passes": passes, "digest": digest}


def overwrite(path: str, versions: int, done: str) -> dict:
    for v in range(1, versions + 1):
        npyseq.write_shards(path, version(v), rows=100, overwrite=True, progress=False)
    open(done, "w").close()
    return {"versions": versions}


def check(path: str, done: str) -> dict:
    passes, changed, seen, errors, mixed, kinds = 0, 0, set(), [], 0, {}
    for _ in _until(done):
        try:
            ds = npyseq.open_shards(path)
            x, y = ds["x"][:], ds["y"][:]
        except npyseq.DatasetChangedError:
            changed += 1  # replaced under us after we opened it: the documented outcome
            continue
        except Exception as e:  # noqa: BLE001 - anything else is a failure, reported
            errors.append(f"{type(e).__name__}: {e}")
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
            continue
        v = int(y[0]) if len(y) else -1
        ok = (len(x) == len(y) == rows(v) and (y == v).all() and (x[:, 0] == v).all()
              and (x[:, 1] == np.arange(len(x))).all())
        if not ok:
            mixed += 1
            errors.append(f"mixed data: {sorted(set(y.tolist()))} in {len(y)} rows")
        seen.add(v)
        passes += 1
    return {"passes": passes, "versions": len(seen), "changed": changed, "mixed": mixed,
            "other_errors": kinds, "errors": errors[:10]}


if __name__ == "__main__":
    command, path, *args = sys.argv[1:]
    if command == "overwrite":
        print(json.dumps(overwrite(path, int(args[0]), args[1])))
    else:
        print(json.dumps({"read": read, "check": check}[command](path, args[0])))
