"""Writing shards on a Dask cluster, through joblib's dask backend.

Under ``with joblib.parallel_config(backend="dask"):`` (a
``dask.distributed.Client`` connected), :func:`npyseq.write_shards` sends
its shard jobs (:class:`~npyseq.storage.jobs.ShardJob`) to the cluster's
workers. Each job opens its source itself (paths, HDF5 datasets by path,
Zarr and Dask array handles; never rows) and writes its shard straight into
the output folder, which must therefore be on a file system every worker
shares: the caller writes a random token into the folder's lock file, and a
job that does not find it there refuses to write. A job is idempotent (see
:mod:`npyseq.storage.jobs`), so a task that Dask reruns after losing its
worker rewrites the same shard under the same name; the caller writes the
manifest once, after every job returned, and the dataset is byte-identical
to one written locally.
"""

from __future__ import annotations

import os
import socket

from npyseq.errors import NpyseqError
from npyseq.storage.jobs import ShardJob, run_job

__all__ = ["dask_backend_active", "run_on_cluster", "check_shared", "connect"]

CONNECT_TIMEOUT = "20s"  # how long --scheduler waits for the scheduler to answer


def dask_backend_active() -> bool:
    """Whether joblib's active backend (``parallel_config``) is the dask one."""
    import joblib.parallel

    backend, _ = joblib.parallel.get_active_backend()
    return type(backend).__name__ == "DaskDistributedBackend"


def check_shared(root: str, lock_path: str, token: str) -> None:
    """Refuse to write unless this worker sees the caller's output folder (its lock file's token)."""
    try:
        with open(lock_path, encoding="ascii", errors="replace") as f:
            found = f.read()
    except OSError as e:
        found = f"nothing ({type(e).__name__}: {e.strerror})"
    if found != token:
        raise NpyseqError(
            f"{root}: the Dask worker on {socket.gethostname()} (pid {os.getpid()}) does not see the output "
            f"folder the caller writes: its lock file {lock_path} holds {found[:40]!r}, not the caller's "
            "token. The workers write the shards straight into the output folder, so it must be on a file "
            "system that the caller and every worker share (NFS, a cluster file system); nothing was "
            "published. Write to such a folder, or convert without the dask backend.")


def cluster_task(root: str, lock_path: str, token: str, task: list[tuple[tuple[str, int], ShardJob]]):
    """What one Dask task runs: check the folder is shared, then write its shards in order."""
    check_shared(root, lock_path, token)
    return [(key, run_job(job)) for key, job in task]


def run_on_cluster(output, tasks: list[list[tuple[tuple[str, int], ShardJob]]], progress, sizes) -> dict:
    """Run ``tasks`` (lists of ``(key, job)`` written in order) on the cluster; return each
    key's result. ``sizes``: the data bytes of each key, for the progress bar."""
    from joblib import Parallel, delayed

    lock_path, token = output.share_token()
    out = {}
    results = Parallel(return_as="generator_unordered")(
        delayed(cluster_task)(output.root, lock_path, token, task) for task in tasks)
    for done in results:
        for key, info in done:
            out[key] = info
            if progress is not None:
                progress.update(sizes.get(key, 0))
    return out


def connect(address: str):
    """A ``dask.distributed.Client`` connected to the scheduler at ``address`` (the CLI's --scheduler)."""
    try:
        from distributed import Client
    except ImportError:
        raise NpyseqError("--scheduler needs the dask.distributed package, which is not installed; install "
                          "it with pip install 'npyseq[dask]'") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise NpyseqError(f"--scheduler {address}: cannot connect to a Dask scheduler there ({e}); start one "
                          "(dask scheduler, dask worker ADDRESS) or check the address") from None
