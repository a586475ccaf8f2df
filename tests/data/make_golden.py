"""Write the golden datasets of tests/format/test_golden.py: one per format version.

    python tests/data/make_golden.py

``golden-v1``: fixed-size arrays only (format version 1). ``golden-v2``: a
ragged array beside fixed ones (format version 2). Their content is a pure
function of the row index (see :func:`arrays`), so the test can check every
value. They are committed: run this again only to add a format version,
never to "fix" a failing golden test (that failure means old datasets or old
orders changed).
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = 23


def arrays(version: int) -> dict:
    i = np.arange(ROWS)
    out = {"x": (i[:, None] * 10 + np.arange(3)).astype(np.float32), "y": (i % 4).astype(np.int64)}
    if version == 2:
        out["tokens"] = [np.arange(k, 2 * k, dtype=np.int32) for k in i % 7]  # row k: lengths 0..6
    return out


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    import npyseq

    for version in (1, 2):
        root = os.path.join(HERE, f"golden-v{version}")
        if os.path.exists(root):
            shutil.rmtree(root)
        npyseq.write_shards(root, arrays(version), rows=5, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
