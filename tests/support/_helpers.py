"""Helpers shared by the format, writer and reader tests.

They read datasets with nothing but ``json`` and ``np.load``, as the format
specification in :mod:`npyseq.format.manifest` promises anyone can, so that a test
does not check the library against itself.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
from unittest import mock

import ml_dtypes
import numpy as np

LOCK_NAME = ".npyseq.lock"

# The dtypes the property tests draw from: every kind of plain data, ml_dtypes'
# bfloat16 (stored as <u2), a non-native byte order and a structured dtype.
DTYPES = [np.dtype(d) for d in (
    "float16", "float32", "float64", "bool", "int8", "uint8", "int16", "int32", "int64",
    "uint64", ">f4", "S5",
)] + [np.dtype(ml_dtypes.bfloat16), np.dtype([("a", "<i2"), ("b", "S3")])]


def tree_bytes(root) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root``."""
    root = os.fspath(root)
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def load_manifest_json(root) -> dict:
    with open(os.path.join(os.fspath(root), "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def write_manifest_json(root, doc: dict) -> None:
    with open(os.path.join(os.fspath(root), "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f)


def npy_header_len(dtype, row_shape) -> int:
    """Length of the header numpy writes for an array of this dtype and row shape."""
    buf = io.BytesIO()
    np.save(buf, np.empty((0,) + tuple(row_shape), dtype))
    return len(buf.getvalue())


def concat_shards(root, name: str) -> np.ndarray:
    """Array ``name`` rebuilt from its shards with plain ``np.load``."""
    doc = load_manifest_json(root)
    spec = doc["arrays"][name]
    parts = [np.load(os.path.join(os.fspath(root), s["path"]), allow_pickle=False)
             for s in spec["shards"]]
    dtype = np.lib.format.descr_to_dtype(spec["dtype"])
    for part in parts:
        assert part.dtype == dtype, (part.dtype, dtype)
    # np.concatenate would turn a big-endian dtype into the native one.
    out = np.concatenate(parts, dtype=dtype) if parts else np.empty((0,) + tuple(spec["shape"]), dtype)
    if spec["logical_dtype"] is not None:
        out = out.view(getattr(ml_dtypes, spec["logical_dtype"]))
    return out


def assert_same_array(got, expected) -> None:
    """Same dtype, same shape, same bytes (NaN payloads included)."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes()


def random_array(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    """An array of ``dtype`` filled with random bytes (valid values for bool)."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
    if dtype == np.bool_:
        raw &= 1
    return raw.view(dtype).reshape(shape)


def flip_byte(path, offset_from_end: int = 1) -> None:
    """Invert one byte of a file in place (its size stays the same)."""
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))


def open_fds() -> int:
    # Datasets of earlier tests (a Dataset and its arrays refer to each other)
    # close their files when the cycle collector runs: run it first.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def no_fsync():
    """Make ``os.fsync`` a no-op, for tests that write many small shards.

    fsync only matters after a power cut, which no test can observe; on a busy
    disk it costs milliseconds per shard. Tests of the writing protocol itself
    (interruption, kill -9, resume) keep the real fsync.
    """
    with mock.patch.object(os, "fsync", lambda fd: None):
        yield


BACKENDS = ("tensorflow", "jax", "torch")  # Keras backends, named as their modules


def run_backend_script(script: str, backend: str, folder, timeout: float) -> dict:
    """Run ``tests/<script> FOLDER`` with ``KERAS_BACKEND=backend``; return its last JSON line.

    Skips where the backend is not installed, except under CI, where
    ``make test`` installs every backend and a missing one is a failure.
    """
    import importlib.util
    import subprocess
    import sys

    import pytest

    if importlib.util.find_spec(backend) is None:
        if os.environ.get("CI"):
            pytest.fail(f"backend {backend} is not installed; `make test` installs it")
        pytest.skip(f"{backend} is not installed (make test installs it)")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, script), str(folder)], capture_output=True,
                         text=True, timeout=timeout, env=dict(os.environ, KERAS_BACKEND=backend))
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    return result
