"""One question each, each the evidence for one design decision; see ``benchmarks/README.md``.

    python -m benchmarks.studies.<name> --help
"""
