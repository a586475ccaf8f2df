"""The error classes: exported, one hierarchy, one finished message, and every one survives pickle
(also raised in a worker process)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re

import numpy as np
import pytest

import npyseq
from npyseq import errors
from npyseq.errors import (
    MissingShardError,
    NpyseqError,
)

import _workers
from _helpers import assert_same_array

X = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
Y = np.arange(10, dtype=np.int64)


@pytest.fixture
def root(tmp_path):
    """A dataset of shards of 4, 4 and 2 rows; shard 1 of x holds rows 4 to 7."""
    npyseq.write_shards(tmp_path / "ds", {"x": X, "y": Y}, rows=4, progress=False)
    return tmp_path / "ds"


def _shard(root, name="x", k=1) -> str:
    return str(root / name / f"00000{k}.npy")


def _open_or_read(root, when: str):
    """Raise at open (default verify) or when the shard is first read (verify='none')."""
    if when == "open":
        return npyseq.open_shards(root)
    ds = npyseq.open_shards(root, verify="none")
    assert_same_array(ds["x"][:4], X[:4])  # shard 0 is fine
    return ds["x"][5]



# --- the error classes -------------------------------------------------------------

ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__]


def test_every_error_is_exported_and_an_npyseq_error():
    assert len(ERROR_CLASSES) == 22  # + WriteFailedError, ForeignFilesError, EmptySequenceError, TransformError, WorkerError, TooManyOpenFilesError, ResumeMismatchError, DistributionError
    for cls in ERROR_CLASSES:
        assert issubclass(cls, NpyseqError)
        assert getattr(npyseq, cls.__name__) is cls


@pytest.mark.parametrize("cls, bases", [
    (errors.InvalidArgumentError, (ValueError,)),
    (errors.UnsupportedDtypeError, (errors.InvalidArgumentError, ValueError)),
    (errors.ManifestError, (ValueError,)),
    (errors.DatasetNotFoundError, (FileNotFoundError,)),
    (errors.IncompleteDatasetError, (errors.DatasetNotFoundError, FileNotFoundError)),
    (errors.DatasetExistsError, (FileExistsError,)),
    (errors.ShardError, (ValueError,)),
    (errors.MissingShardError, (errors.ShardError,)),
    (errors.CorruptShardError, (errors.ShardError,)),
    (errors.ChecksumMismatchError, (errors.ShardError,)),
    (errors.WorkerDiedError, (RuntimeError,)),
    (errors.WorkerError, (RuntimeError,)),
    (errors.TransformError, (TypeError,)),
    (errors.EmptySequenceError, (errors.InvalidArgumentError, ValueError)),
    (errors.DiskFullError, (OSError,)),
    (errors.TooManyOpenFilesError, (OSError,)),
    (errors.ResumeMismatchError, (ValueError,)),
    (errors.DistributionError, (RuntimeError,)),
])
def test_error_hierarchy(cls, bases):
    for base in bases:
        assert issubclass(cls, base)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_survives_pickle(cls):
    e = cls("/data/train/x/000001.npy: shape (3, 4) found, the manifest says (4, 3)")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls
    assert str(back) == str(e)
    assert back.args == e.args


def test_raised_errors_survive_pickle(root):
    caught = []
    for action in (
        lambda: npyseq.open_shards(root / "missing"),
        lambda: npyseq.write_shards(root, {"x": X}, progress=False),
        lambda: npyseq.write_shards(root.parent / "o", {"x": np.array([None], dtype=object)}, progress=False),
        lambda: npyseq.parse_size("huge"),
    ):
        with pytest.raises(NpyseqError) as info:
            action()
        caught.append(info.value)
    os.unlink(_shard(root))
    with pytest.raises(MissingShardError) as info:
        npyseq.open_shards(root)
    caught.append(info.value)
    assert {type(e).__name__ for e in caught} == {
        "DatasetNotFoundError", "DatasetExistsError", "UnsupportedDtypeError", "InvalidArgumentError",
        "MissingShardError"}
    for e in caught:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)


@pytest.mark.timeout(120)
def test_error_in_a_worker_process_reaches_the_parent(root):
    x = npyseq.open_shards(root)["x"]
    path = _shard(root, "x", 2)
    os.unlink(path)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply_async(_workers.read_all_from, (x,))
        with pytest.raises(MissingShardError, match=re.escape(f"{path}: shard file is missing")):
            result.get(timeout=90)
