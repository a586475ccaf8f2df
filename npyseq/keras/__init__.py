"""Layer 4 of npyseq, the Keras classes: the only package that imports ``keras``.

It builds on the storage (datasets and their arrays) and the order
(:mod:`npyseq.order`) and imports ``keras`` only, never a backend
(TensorFlow, JAX, torch): what runs in a worker is NumPy and file I/O.

* :mod:`~npyseq.keras.sequence`: :class:`~npyseq.ShardSequence`, a
  ``keras.utils.PyDataset`` over a dataset's fixed-size arrays.
* :mod:`~npyseq.keras.ragged_sequence`: :class:`~npyseq.RaggedSequence`, the
  same with ragged arrays padded per batch and length bucketing.
* :mod:`~npyseq.keras.resume`: :class:`~npyseq.BackupAndRestore`, Keras' callback that
  also resumes the sequence at the exact step.
* :mod:`~npyseq.keras.structure`: the ``x``/``y``/``sample_weight`` specs.
* :mod:`~npyseq.keras.options`: a sequence's settings and rows, shared by its views.
* :mod:`~npyseq.keras.worker`: a transform's result checked, a worker's exception made sendable.
* :mod:`~npyseq.keras.pool`: batch buffers reused once free.
* :mod:`~npyseq.keras.transport`: batches of process workers through shared memory.
* :mod:`~npyseq.keras.watchdog`: a dead worker process becomes an error, not a hang.
* :mod:`~npyseq.keras.start_method`: how Keras' worker processes start.
* :mod:`~npyseq.keras.hosts`: the hosts ``seq.shard()`` serves, from the active distribution.

Importing this package imports nothing; ``import npyseq`` loads the
sequence classes (and Keras, about 2 s) on first use of
``npyseq.ShardSequence`` or ``npyseq.RaggedSequence``: import them from there.
Inside this package ``import keras`` is the real Keras (absolute imports).
"""
