"""Layer 1, the format: what an npyseq dataset is on disk.

- :mod:`npyseq.format.manifest`: the specification (its docstring), the
  manifest's dataclasses, reading its JSON, and validation;
- :mod:`npyseq.format.limits`: every limit the specification states, as a
  named constant, and the checks that enforce them;
- :mod:`npyseq.format.dtypes`: the dtypes stored and read back (ml_dtypes
  types as unsigned integers), what a writer may store and cast;
- :mod:`npyseq.format.npy`: the facts of ``.npy`` files npyseq relies on
  (headers, the size of a row, checksums), through ``numpy.lib.format``.

This package imports only numpy, json, xxhash, ml_dtypes (where data has a
logical dtype), :mod:`npyseq.errors` and :mod:`npyseq.forks`: a third party
can copy it to read (or write) npyseq datasets.
"""
