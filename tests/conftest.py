import os
import sys

# The measuring tools (tools/memcap.py, tools/memwatch.py, ...) and the benchmark suite
# (benchmarks/, tested by test_benchmarks.py) are packages at the repository root, which
# `python -m pytest` from the root already has on its path; the `pytest` command does not.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Test helpers (_helpers.py, ...) and the scripts tests run in subprocesses live in tests/support/.
SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)
