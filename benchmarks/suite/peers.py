"""mosaicml-streaming as a peer: MDS shards written from the suite's arrays, read by ``StreamingDataset``.

``StreamingDataset(local=<MDS folder>, remote=None)`` over shards that
``MDSWriter`` writes from the same ``x.npy``/``y.npy`` (``x`` as
``ndarray:<dtype>:<shape>``, ``y`` as ``int64``, no compression, the writer's
default shard size), read through a ``torch.utils.data.DataLoader(num_workers=2)``
as streaming's users read it. Local only: no remote, no download.

Importing streaming without torchvision
    ``import streaming`` runs ``streaming/__init__.py``, which imports
    ``streaming.vision`` (torchvision's datasets) and ``streaming.base``'s
    ``__init__``, which imports its ``StreamingDataLoader`` (transformers).
    Neither is needed to read local MDS shards, and no CPU build of
    torchvision matches the suite's torch here. :func:`streaming_modules`
    therefore registers ``streaming`` and ``streaming.base`` as bare packages
    (their real folders as ``__path__``, their ``__init__`` not run) and
    imports only ``streaming.base.dataset`` and ``streaming.base.format``:
    the code that writes and reads MDS, unchanged. It needs numpy, torch,
    filelock, Pillow, tqdm, xxhash, catalogue, zstd, Brotli and
    python-snappy, which ``make bench`` installs next to
    ``pip install --no-deps mosaicml-streaming`` (its metadata pins
    ``numpy<2.2``). DataLoader workers are forked (torch's default on
    Linux), so they inherit these modules.

Importing this module imports neither streaming, PyTorch nor Keras.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

import numpy as np

from benchmarks.suite.augment import augment

STREAMING_DEPS = ("torch", "filelock", "PIL", "tqdm", "xxhash", "catalogue", "zstd", "brotli", "snappy")


def streaming_available() -> tuple[bool, str]:
    """Whether mosaicml-streaming and what its MDS reader imports are installed; if not, why."""
    if "streaming" not in sys.modules and importlib.util.find_spec("streaming") is None:
        return False, "mosaicml-streaming is not installed (make bench installs it: pip install --no-deps)"
    missing = [m for m in STREAMING_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"mosaicml-streaming needs {', '.join(missing)} (make bench installs them)"
    return True, ""


def streaming_modules():
    """``(StreamingDataset, MDSWriter)``, imported without ``streaming``'s package ``__init__`` files."""
    if "streaming.base.dataset" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        root = list(spec.submodule_search_locations)[0]
        for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
            if name not in sys.modules:
                pkg = types.ModuleType(name)
                pkg.__path__ = [path]
                pkg.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
                pkg.__spec__.submodule_search_locations = [path]
                sys.modules[name] = pkg
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format import MDSWriter

    return StreamingDataset, MDSWriter


def mds_columns(x: np.ndarray) -> dict:
    return {"x": f"ndarray:{x.dtype.name}:{','.join(map(str, x.shape[1:]))}", "y": "int64"}


def write_mds(x_npy: str, y_npy: str, out: str, chunk: int = 4096) -> bool:
    """MDS shards of ``x.npy``/``y.npy`` in ``out`` (one sample per row); False if already there."""
    stamp = os.path.join(out, "done")
    if os.path.exists(stamp):
        return False
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    _, MDSWriter = streaming_modules()
    x, y = np.load(x_npy, mmap_mode="r"), np.load(y_npy, mmap_mode="r")
    with MDSWriter(out=out, columns=mds_columns(x)) as w:
        for a in range(0, len(x), chunk):
            xs, ys = np.array(x[a:a + chunk]), np.array(y[a:a + chunk])
            for i in range(len(xs)):
                w.write({"x": xs[i], "y": int(ys[i])})
    open(stamp, "w").close()
    return True


def mds_files(out: str) -> list[str]:
    return sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".mds") or f == "index.json")


_RNG = None


def _stack(samples):
    return np.stack([s["x"] for s in samples]), np.array([s["y"] for s in samples], np.int64)


def collate(samples):
    """A batch of streaming's samples as ``(x, y)`` tensors (shared with the trainer as torch does)."""
    import torch

    x, y = _stack(samples)
    return torch.from_numpy(x), torch.from_numpy(y)


def collate_augmented(samples):
    """:func:`collate` plus :func:`benchmarks.suite.augment.augment`, in the worker."""
    import torch

    global _RNG
    if _RNG is None:  # one generator per worker (streaming gives the collate no batch index)
        _RNG = np.random.default_rng([os.getpid()])
    x, y = augment(_stack(samples), _RNG)
    return torch.from_numpy(x), torch.from_numpy(y)


def streaming_loader(mds: str, *, rows: int, batch_size: int, workers: int, shuffle: bool, seed: int,
                     augmented: bool):
    """``DataLoader(StreamingDataset(local=mds), batch_size, num_workers=workers)``."""
    from torch.utils.data import DataLoader

    StreamingDataset, _ = streaming_modules()
    ds = StreamingDataset(local=mds, remote=None, shuffle=shuffle, shuffle_seed=seed, batch_size=batch_size)
    if len(ds) != rows:
        raise ValueError(f"{mds}: {len(ds)} samples, expected {rows}")
    return DataLoader(ds, batch_size=batch_size, num_workers=workers,
                      collate_fn=collate_augmented if augmented else collate)


def cleanup() -> None:
    """Unlink the shared memory streaming left (the suite's children end with ``os._exit``)."""
    if "streaming.base.dataset" in sys.modules:
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
