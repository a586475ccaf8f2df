"""npyseq: train Keras models on NumPy arrays bigger than RAM.

Arrays are split into standard ``.npy`` shards plus a JSON manifest
(:func:`write_shards`, :class:`ShardWriter`, ``npyseq convert``), read back
lazily through memory maps (:func:`open_shards`), and fed to ``model.fit``
by ``keras.utils.PyDataset`` classes (:class:`ShardSequence`, and
:class:`RaggedSequence` for rows of different lengths).

Importing npyseq does not import Keras; the Sequence classes load it on
first use. The pure functions that order the rows are :mod:`npyseq.order`.
"""

import importlib
from typing import TYPE_CHECKING

from npyseq.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    DatasetChangedError,
    DatasetExistsError,
    DatasetNotFoundError,
    DiskFullError,
    DistributionError,
    EmptySequenceError,
    ForeignFilesError,
    TooManyOpenFilesError,
    IncompleteDatasetError,
    InvalidArgumentError,
    ManifestError,
    MissingShardError,
    NpyseqError,
    ResumeMismatchError,
    ShardError,
    TransformError,
    UnsupportedDtypeError,
    WorkerDiedError,
    WorkerError,
    WriteFailedError,
)
from npyseq.format.manifest import FORMAT_VERSION, Manifest
from npyseq.storage.arrays import ShardedArray
from npyseq.storage.dataset import Dataset, open_shards
from npyseq.storage.ragged_array import RaggedArray
from npyseq.storage.ragged_sources import RaggedSource
from npyseq.storage.protocol import parse_size
from npyseq.storage.shard_writer import ShardWriter
from npyseq.storage.sources import NpzMember, RawSource
from npyseq.storage.writer import write_shards

if TYPE_CHECKING:  # loaded on first use (see __getattr__); type checkers and IDEs see them here
    from npyseq.keras.ragged_sequence import RaggedSequence
    from npyseq.keras.resume import BackupAndRestore
    from npyseq.keras.sequence import ShardSequence
    from npyseq.keras.transport import SharedMemoryWarning

__version__ = "0.1.0"

# The Sequence classes and BackupAndRestore import Keras (about 2 s); they are loaded on first use
# so that `npyseq convert`, `info` and `verify` start at once.
_LAZY = {
    "ShardSequence": "npyseq.keras.sequence",
    "BackupAndRestore": "npyseq.keras.resume",
    "RaggedSequence": "npyseq.keras.ragged_sequence",
    "SharedMemoryWarning": "npyseq.keras.transport",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'npyseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)


__all__ = [
    "BackupAndRestore",
    "ChecksumMismatchError",
    "CorruptShardError",
    "Dataset",
    "DatasetChangedError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DiskFullError",
    "DistributionError",
    "EmptySequenceError",
    "TooManyOpenFilesError",
    "FORMAT_VERSION",
    "ForeignFilesError",
    "IncompleteDatasetError",
    "InvalidArgumentError",
    "Manifest",
    "ManifestError",
    "MissingShardError",
    "NpyseqError",
    "NpzMember",
    "RaggedArray",
    "RaggedSequence",
    "RaggedSource",
    "RawSource",
    "ResumeMismatchError",
    "ShardError",
    "ShardSequence",
    "SharedMemoryWarning",
    "ShardWriter",
    "ShardedArray",
    "TransformError",
    "UnsupportedDtypeError",
    "WorkerDiedError",
    "WorkerError",
    "WriteFailedError",
    "open_shards",
    "parse_size",
    "write_shards",
]
