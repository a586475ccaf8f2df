"""npyseq: train Keras models on NumPy arrays bigger than RAM.

Arrays are split into standard ``.npy`` shards plus a JSON manifest
(:func:`write_shards`, :class:`ShardWriter`, ``npyseq convert``), read back
lazily through memory maps (:func:`open_shards`), and fed to ``model.fit``
by ``keras.utils.PyDataset`` classes (:class:`ShardSequence`, and
:class:`RaggedSequence` for rows of different lengths).

Importing npyseq does not import Keras; the Sequence classes load it on
first use.
"""

from npyseq.errors import (
    ChecksumMismatchError,
    CorruptShardError,
    DatasetChangedError,
    DatasetExistsError,
    DatasetNotFoundError,
    DiskFullError,
    EmptySequenceError,
    ForeignFilesError,
    TooManyOpenFilesError,
    IncompleteDatasetError,
    InvalidArgumentError,
    ManifestError,
    MissingShardError,
    NpyseqError,
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

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Sequence classes import Keras (about 2 s); load them on first use so
    # that `npyseq convert`, `info` and `verify` start at once.
    if name == "ShardSequence":
        from npyseq.sequence import ShardSequence

        return ShardSequence
    if name == "RaggedSequence":
        from npyseq.ragged_sequence import RaggedSequence

        return RaggedSequence
    raise AttributeError(f"module 'npyseq' has no attribute {name!r}")


__all__ = [
    "ChecksumMismatchError",
    "CorruptShardError",
    "Dataset",
    "DatasetChangedError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DiskFullError",
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
    "ShardError",
    "ShardSequence",
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
