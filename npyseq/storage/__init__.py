"""Layer 2 of npyseq, storage: the files of a dataset.

It builds on the format (what is on disk: :mod:`npyseq.format.manifest`, the
``.npy`` facts) and knows nothing of ordering or Keras. The write side:

* :mod:`~npyseq.storage.protocol`: the writing protocol both writers share
  (shard sizes and names, the atomic file-writing step, the manifest written
  last, disk full).
* :mod:`~npyseq.storage.output`: the output folder of one write (resolve,
  lock, decide, publish, swap, release).
* :mod:`~npyseq.storage.ownership`: what npyseq wrote and what a path is;
  creating files never through a link; deleting exactly a dataset's files.
* :mod:`~npyseq.storage.sources`: the inputs of fixed-size arrays.
* :mod:`~npyseq.storage.writer`: :func:`~npyseq.write_shards`.
* :mod:`~npyseq.storage.shard_writer`: :class:`~npyseq.ShardWriter`.
* :mod:`~npyseq.storage.ragged_sources`: the inputs of ragged arrays, and
  ``.npy`` inputs of either kind.

The read side:

* :mod:`~npyseq.storage.files`: the pinned dataset folder, opening a checked
  ``.npy`` file of it, open shards (memory map or ``pread``), the memory budget.
* :mod:`~npyseq.storage.not_found`: what a path that is not a dataset holds.
* :mod:`~npyseq.storage.dataset`: :func:`~npyseq.open_shards` and
  :class:`~npyseq.Dataset` (integrity checks, the shard cache, ``verify()``).
* :mod:`~npyseq.storage.arrays`: :class:`~npyseq.ShardedArray` and the
  indexing rules every array shares.
* :mod:`~npyseq.storage.ragged_array`: :class:`~npyseq.RaggedArray` and the
  offsets invariant.

The public names are re-exported by :mod:`npyseq`; import them from there.
"""
