"""Which host this process is, from the active Keras distribution (or JAX), for ``seq.shard()``.

``seq.shard()`` without arguments asks :func:`detect` for the number of
hosts and this process' index: the active ``keras.distribution``'s data
shards (``min(num_model_replicas, num_processes)``, as Keras counts them)
and ``data_shard_id``; without a distribution, on the JAX backend, JAX's
process count and index. It raises a :class:`~npyseq.DistributionError`
when there is neither.

Keras 3.15 refuses a ``PyDataset`` on several processes unless the
distribution has ``auto_shard_dataset=False``; then each process must yield
its own part of every global batch (``HostSlice(n, index)``). Keras 3.16
strides batch indices over processes itself when ``auto_shard_dataset`` is
on: process ``p`` asks for batches ``p, p + n, ...``. :func:`keras_strides`
detects that Keras, and :func:`detect` then returns the strided
``HostSlice(n, None)``, whose item ``j`` is part ``j % n`` of global batch
``j // n``: Keras' striding picks this process' part, and nothing is
sharded twice. :func:`check_distribution` (run when an epoch begins)
refuses a sharded sequence that the active distribution would shard again,
or not at all.

It reads JAX only from ``sys.modules`` (on the JAX backend Keras has
imported it): npyseq never imports a backend.
"""

from __future__ import annotations

import inspect
import sys

import keras

from npyseq.errors import DistributionError, InvalidArgumentError
from npyseq.order.hosts import HostSlice

__all__ = ["keras_strides", "detect", "host_slice", "check_distribution"]

_FIX = ("call keras.distribution.initialize(...) on every process and keras.distribution.set_distribution("
        "keras.distribution.DataParallel(devices=keras.distribution.list_devices(), auto_shard_dataset=False)) "
        "before seq.shard(), or pass the hosts yourself: seq.shard(num_hosts, index)")


def keras_strides() -> bool:
    """Whether the running Keras strides a ``PyDataset``'s batch indices over processes (3.16 and later).

    Read from the signature of Keras' ``OrderedEnqueuer`` (it takes
    ``num_data_shards`` where Keras shards), else from Keras' version.
    """
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import OrderedEnqueuer
    except ImportError:  # a Keras laid out otherwise: trust the version
        major, minor = (int(p) for p in keras.version().split(".")[:2])
        return (major, minor) >= (3, 16)
    return "num_data_shards" in inspect.signature(OrderedEnqueuer.__init__).parameters


def _shards(distribution) -> tuple[int, int, int]:
    """``(data shards, this process' shard, processes)`` of a Keras distribution, as Keras counts them."""
    processes = int(distribution.num_processes)
    shards = min(int(distribution.num_model_replicas), processes)
    return shards, int(distribution.data_shard_id), processes


def _keras_will_stride(distribution) -> bool:
    shards, _, processes = _shards(distribution)
    return processes > 1 and shards > 1 and bool(getattr(distribution, "auto_shard_dataset", False)) \
        and keras_strides()


def detect() -> HostSlice:
    """This process' :class:`~npyseq.order.HostSlice` from the active distribution (see the module)."""
    distribution = keras.distribution.distribution()
    if distribution is not None:
        shards, index, processes = _shards(distribution)
        if processes > 1 and shards > 1 and getattr(distribution, "auto_shard_dataset", False):
            if keras_strides():
                return HostSlice(shards, None)
            raise DistributionError(
                f"seq.shard(): the active {type(distribution).__name__} has auto_shard_dataset=True on "
                f"{processes} processes, and Keras {keras.version()} refuses a PyDataset then (it shards "
                "only tf.data datasets): make it with auto_shard_dataset=False (or set "
                "distribution.auto_shard_dataset = False); seq.shard() then gives this process its part "
                "of every global batch"
            )
        return HostSlice(shards, index)
    jax = sys.modules.get("jax") if keras.backend.backend() == "jax" else None
    if jax is not None and jax.process_count() > 1:
        return HostSlice(jax.process_count(), jax.process_index())
    found = (f"JAX runs {jax.process_count()} process" if jax is not None
             else f"the {keras.backend.backend()} backend has no npyseq-known process group")
    raise DistributionError(
        f"seq.shard() found no distributed setup to take the hosts from: no Keras distribution is set "
        f"(keras.distribution.distribution() is None) and {found}; {_FIX}"
    )


def host_slice(num_hosts, index, current: HostSlice | None, seq) -> HostSlice:
    """The :class:`HostSlice` ``seq.shard(num_hosts, index)`` serves (``current``: ``seq``'s own, if any)."""
    if current is not None:
        raise InvalidArgumentError(f"{seq!r} is sharded already ({current.describe()}): shard the unsharded "
                                   "sequence")
    if num_hosts is None and index is None:
        return detect()
    if num_hosts is None or index is None:
        raise InvalidArgumentError(f"shard takes num_hosts and index, or neither (the hosts of the active "
                                   f"distribution), got num_hosts={num_hosts!r}, index={index!r}")
    return HostSlice(num_hosts, index)


def check_distribution(host: HostSlice, what: str) -> None:
    """Refuse ``host`` when the active multi-process distribution would shard it again, or not at all."""
    distribution = keras.distribution.distribution()
    if distribution is None or host is None:
        return
    shards, _, processes = _shards(distribution)
    if processes == 1:
        return
    strides = _keras_will_stride(distribution)
    if strides and not host.strided and host.num_hosts > 1:
        raise DistributionError(
            f"{what} serves {host.describe()}, but Keras {keras.version()} also strides its batches over "
            f"the {processes} processes (auto_shard_dataset=True): that shards twice and each process would "
            "see a fraction of its part. Use seq.shard() without arguments (it serves every part in turn "
            "and lets Keras pick), or set auto_shard_dataset=False"
        )
    if host.strided and not strides:
        raise DistributionError(
            f"{what} serves {host.describe()} for a Keras that strides batches over processes, but the "
            f"active {type(distribution).__name__} does not (auto_shard_dataset="
            f"{getattr(distribution, 'auto_shard_dataset', None)}, Keras {keras.version()}): every process "
            "would read every part. Call seq.shard() again under this distribution"
        )
    if host.num_hosts != shards:
        raise DistributionError(
            f"{what} serves {host.describe()}, but the active {type(distribution).__name__} has {shards} "
            f"data shards over {processes} processes: call seq.shard() under the distribution you train with"
        )
