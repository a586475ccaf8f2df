"""Layer 1, the format: what an npyseq dataset is on disk.

- :mod:`npyseq.format.manifest`: the specification (its docstring), the
  manifest's dataclasses, reading and writing its JSON, and validation;
- :mod:`npyseq.format.npy`: the facts of ``.npy`` files npyseq relies on
  (headers, checksums), through ``numpy.lib.format``.

This package imports only numpy, json, ml_dtypes and :mod:`npyseq.errors`:
a third party can copy it to read (or write) npyseq datasets.
"""
