"""Conversion on a Dask cluster through joblib's dask backend: shard jobs run on the
workers of a ``LocalCluster(n_workers=2, processes=True)`` on loopback, write into the
output folder, and give a dataset byte-identical to a local conversion (manifest
included), also when a worker is killed part-way; sources travel as paths and handles,
never as rows; a folder the workers do not share is refused."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import npyseq
from npyseq.cli import main
from npyseq.errors import InvalidArgumentError, NpyseqError
from npyseq.storage.cluster import cluster_task

h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")

from cluster_sources import KillingArray  # noqa: E402  (tests/support, also on the workers' path)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ROWS = 4000


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None, host="127.0.0.1")
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((ROWS, 8)).astype(np.float16)
    y = rng.integers(-128, 127, ROWS, dtype=np.int8)
    z = rng.standard_normal((ROWS, 3)).astype(np.complex64)
    with h5py.File(folder / "d.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(77, 8), compression="gzip")
    np.save(folder / "y.npy", y)
    zarr.create_array(folder / "z.zarr", data=z, chunks=(123, 3))
    lengths = rng.integers(0, 5, ROWS)
    np.save(folder / "values.npy", rng.integers(0, 1000, int(lengths.sum()), dtype=np.int32))
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
    np.savez_compressed(folder / "a.npz", v=y.astype(np.uint16))
    return folder, {"x": x, "y": y, "z": z}


def _files(root) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            out[os.path.relpath(os.path.join(folder, n), root)] = open(os.path.join(folder, n), "rb").read()
    return out


def _arrays(folder):
    f = h5py.File(folder / "d.h5", "r")
    return f, {"x": f["x"], "y": str(folder / "y.npy"), "z": zarr.open_array(folder / "z.zarr", mode="r"),
               "w": da.from_zarr(str(folder / "z.zarr")).real * 2,
               "r": npyseq.RaggedSource(str(folder / "values.npy"), offsets=str(folder / "offsets.npy")),
               "v": npyseq.NpzMember(str(folder / "a.npz"), "v.npy")}  # compressed: one task, in order


def test_a_cluster_conversion_is_byte_identical_to_a_local_one(client, sources, tmp_path):
    folder, data = sources
    f, arrays = _arrays(folder)
    with f:
        npyseq.write_shards(tmp_path / "local", arrays, rows=450, progress=False)
        with joblib.parallel_config(backend="dask"):
            npyseq.write_shards(tmp_path / "cluster", arrays, rows=450, progress=False)
    local, cluster = _files(tmp_path / "local"), _files(tmp_path / "cluster")
    assert len(local) == 1 + 6 * 9 + 9  # the manifest, 6 arrays' shards, the ragged array's offsets
    assert cluster == local
    ds = npyseq.open_shards(tmp_path / "cluster")
    assert np.array_equal(ds["x"][:], data["x"]) and np.array_equal(ds["z"][:], data["z"])


def test_a_worker_killed_part_way_is_survived(client, sources, tmp_path):
    folder, data = sources
    marker = tmp_path / "killed"
    # Rows 1000-1499 are shard 2: the first worker to read row 1200 dies part-way through it.
    arrays = {"x": KillingArray(str(folder / "y.npy"), 1200, str(marker)), "y": str(folder / "y.npy")}
    npyseq.write_shards(tmp_path / "local", {"x": data["y"], "y": data["y"]}, rows=500, progress=False)
    pids = set(client.run(os.getpid).values())
    with joblib.parallel_config(backend="dask"):
        npyseq.write_shards(tmp_path / "cluster", arrays, rows=500, progress=False)
    assert int(marker.read_text()) in pids  # a worker of the cluster was killed
    assert _files(tmp_path / "cluster") == _files(tmp_path / "local")
    client.wait_for_workers(2, timeout=60)


def test_an_in_memory_array_is_not_shipped_to_the_cluster(client, tmp_path):
    with joblib.parallel_config(backend="dask"), pytest.raises(InvalidArgumentError, match="^" + re.escape(
            "array 'x': an in-memory numpy array cannot be sent to the Dask cluster's workers: npyseq sends "
            "them paths and array handles, never the rows themselves. Pass the path of its .npy file instead "
            "(np.save it first), or convert without the dask backend") + "$"):
        npyseq.write_shards(tmp_path / "out", {"x": np.arange(10)}, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_worker_that_does_not_see_the_output_folder_refuses_to_write(client, tmp_path):
    lock = tmp_path / ".npyseq.lock"
    lock.write_text("another token")
    future = client.submit(cluster_task, str(tmp_path), str(lock), "the caller's token", [], pure=False)
    with pytest.raises(NpyseqError, match=re.escape(
            f"{tmp_path}: the Dask worker on ") + r".* \(pid \d+\) " + re.escape(
            f"does not see the output folder the caller writes: its lock file {lock} holds 'another token', "
            "not the caller's token. The workers write the shards straight into the output folder, so it must "
            "be on a file system that the caller and every worker share (NFS, a cluster file system); nothing "
            "was published. Write to such a folder, or convert without the dask backend.")):
        future.result(timeout=60)


def test_the_cli_converts_on_a_scheduler(client, sources, tmp_path, capsys):
    folder, _ = sources
    argv = ["convert", str(folder / "d.h5"), str(folder / "y.npy"), "--rows-per-shard", "700", "-qq"]
    assert main(argv + ["-o", str(tmp_path / "local")]) == 0
    assert main(argv + ["-o", str(tmp_path / "cluster"), "--scheduler", client.scheduler.address]) == 0
    assert _files(tmp_path / "cluster") == _files(tmp_path / "local")


def test_the_cli_says_when_no_scheduler_answers(tmp_path, capsys, sources, monkeypatch):
    from npyseq.storage import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "2s")
    folder, _ = sources
    assert main(["convert", str(folder / "y.npy"), "-o", str(tmp_path / "out"), "--scheduler",
                 "tcp://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npyseq convert: error: --scheduler tcp://127.0.0.1:9: cannot connect to a Dask "
                          "scheduler there (")
    assert err.endswith("); start one (dask scheduler, dask worker ADDRESS) or check the address\n")
