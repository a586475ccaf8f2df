"""npyseq's benchmarks: the suite (``python -m benchmarks.suite``, ``make bench``) and the studies
(``python -m benchmarks.studies.<name>``), each answering one question; see ``benchmarks/README.md``.

Run them as modules from the repository root. Not part of the installed package.
"""
