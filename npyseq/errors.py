"""The npyseq exception hierarchy.

Every error npyseq raises derives from :class:`NpyseqError`. Each exception
carries one finished message and nothing else, so that it survives a pickle
round trip: an exception raised inside a ``multiprocessing.Pool`` worker (which
is what Keras uses for process workers) is pickled back to the parent, and an
exception whose ``__init__`` needs several arguments cannot be unpickled, which
makes the parent wait forever.

Example:

>>> import npyseq
>>> try:
...     npyseq.open_shards("/nonexistent")
... except npyseq.NpyseqError as e:
...     print(type(e).__name__)
DatasetNotFoundError
"""

from __future__ import annotations

__all__ = [
    "NpyseqError",
    "InvalidArgumentError",
    "ManifestError",
    "DatasetNotFoundError",
    "IncompleteDatasetError",
    "DatasetExistsError",
    "DatasetChangedError",
    "ShardError",
    "MissingShardError",
    "CorruptShardError",
    "ChecksumMismatchError",
    "UnsupportedDtypeError",
    "WorkerDiedError",
    "WorkerError",
    "TransformError",
    "EmptySequenceError",
    "DiskFullError",
    "WriteFailedError",
    "ForeignFilesError",
    "TooManyOpenFilesError",
    "ResumeMismatchError",
    "DistributionError",
]


class NpyseqError(Exception):
    """Base class of every error npyseq raises."""


class InvalidArgumentError(NpyseqError, ValueError):
    """An argument has a value npyseq cannot use (e.g. ``batch_size=0``)."""


class EmptySequenceError(InvalidArgumentError):
    """A sequence (or a view made by ``split``, ``subset``, ``shard``) would have no batch.

    Keras refuses a PyDataset of length 0 with a message that does not say
    which one; npyseq refuses it when it is made, naming the rows, the batch
    size and ``drop_remainder``.
    """


class TransformError(NpyseqError, TypeError):
    """A ``transform`` returned something that is not a batch (e.g. ``None``, a forgotten ``return``).

    Keras skips a ``None`` batch and then waits for it forever; npyseq checks
    what every transform returns.
    """


class UnsupportedDtypeError(InvalidArgumentError):
    """An array's dtype cannot be stored (object dtype, or fields of objects)."""


class ManifestError(NpyseqError, ValueError):
    """``manifest.json`` is malformed, of an unknown version, or inconsistent."""


class DatasetNotFoundError(NpyseqError, FileNotFoundError):
    """The dataset folder or its manifest does not exist."""


class IncompleteDatasetError(DatasetNotFoundError):
    """The folder holds shards but no manifest: a conversion did not finish."""


class DatasetExistsError(NpyseqError, FileExistsError):
    """The output folder already holds a dataset and ``overwrite`` is false."""


class DatasetChangedError(NpyseqError):
    """The dataset folder was replaced after it was opened."""


class ShardError(NpyseqError, ValueError):
    """A shard file does not match what the manifest says of it."""


class MissingShardError(ShardError):
    """A shard named by the manifest does not exist."""


class CorruptShardError(ShardError):
    """A shard's size or ``.npy`` header differs from the manifest."""


class ChecksumMismatchError(ShardError):
    """A shard's bytes do not hash to the checksum in the manifest."""


class WorkerDiedError(NpyseqError, RuntimeError):
    """A Keras worker process died during ``fit`` (a signal such as the OOM killer's SIGKILL).

    Keras itself would wait forever for the batches the process held; npyseq
    detects the death and ends ``fit`` with this error instead.
    """


class WorkerError(NpyseqError, RuntimeError):
    """What went wrong in a Keras worker process could not reach the trainer as itself.

    Raised in the trainer in two cases. An exception raised in a worker
    (by a ``transform``, say) that does not survive a pickle round trip (an
    ``__init__`` that takes several arguments) is sent as a WorkerError whose
    message holds the original type, message and traceback: Keras' pool
    would otherwise fail to unpickle it and wait forever. And a batch the
    pool cannot unpickle kills the pool's result thread, which npyseq's
    watchdog reports with this error.
    """


class DiskFullError(NpyseqError, OSError):
    """Writing a dataset ran out of disk space (``ENOSPC``) or quota (``EDQUOT``).

    Nothing was published: no manifest points at the partial data, and the
    temporary ``.partial`` files were removed.
    """


class WriteFailedError(NpyseqError):
    """A writer stopped part-way through appending rows, and refuses to publish.

    Raised by :meth:`npyseq.ShardWriter.append` when writing a batch fails
    with an ``OSError`` (e.g. ``EFBIG`` from a file-size limit), and by every
    later ``append`` or ``close`` of a writer whose append failed part-way for
    any reason (an exception, ``KeyboardInterrupt``): some arrays may hold
    rows of the failed batch and others not, so no manifest is ever written.
    """


class ForeignFilesError(NpyseqError):
    """Writing would delete, replace or follow something npyseq did not write; nothing was written.

    Raised when ``overwrite=True`` finds files, folders or symbolic links in
    the dataset folder that are not the dataset's own, and when a path npyseq
    writes inside the dataset (an array folder, a shard, a temporary file,
    the lock) is a symbolic link or of the wrong kind.
    """


class TooManyOpenFilesError(NpyseqError, OSError):
    """The process ran out of file descriptors (``EMFILE``, or ``ENFILE`` system-wide).

    Each open shard holds one descriptor (up to ``max_open`` per dataset); the
    message gives the limit and what to do: close or drop unused datasets,
    lower ``max_open``, or raise the limit (``ulimit -n``).
    """


class ResumeMismatchError(NpyseqError, ValueError):
    """A training resumed from a checkpoint would not follow the order the checkpoint was taken in.

    Raised by :class:`npyseq.BackupAndRestore` when the sequence's
    ``order_fingerprint()`` (dataset, rows, batch size, shuffle, seed, ...)
    differs from the checkpoint's, and when ``fit`` is given a
    ``steps_per_epoch`` that would repeat rows. The message names each
    difference, old and new, and how to start afresh.
    """


class DistributionError(NpyseqError, RuntimeError):
    """Several hosts: ``seq.shard()`` found no distributed setup, or a sharded sequence meets a
    distribution that would shard it again (or not at all)."""
