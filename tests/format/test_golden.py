"""Golden datasets: one per format version, committed under tests/data/.

They pin what must never change silently: that datasets written by earlier
npyseq versions still open with the same content, that the writer still
writes the same bytes, and that a seed still gives the same batch order
(an old training run can be resumed or replayed). Made by
``tests/data/make_golden.py``; golden-v1 was also written with the
version 1 writer of commit 7860eff, byte for byte the same.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import npyseq

from _helpers import assert_same_array, tree_bytes

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
sys.path.insert(0, os.path.join(HERE, "data"))
import make_golden  # noqa: E402

# Batches 0-2 of epoch 1, batch_size 4, seed 7, over the 23 golden rows.
PINNED = {
    False: [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],
    "batches": [[20, 21, 22], [16, 17, 18, 19], [0, 1, 2, 3]],
    "blocks": [[9, 14, 15, 17], [2, 8, 13, 21], [1, 5, 6, 19]],
    "global": [[3, 7, 13, 15], [0, 1, 6, 10], [2, 5, 12, 22]],
}
# RaggedSequence(shuffle="global", seed=7, batch_size=4, bucket=True, bucket_pool=2), epochs 0 and 1.
PINNED_BUCKETS = [
    [[0, 8, 15, 16], [13, 17, 19, 20], [1, 7, 9, 22], [3, 4, 5, 12], [2, 10, 14, 21], [6, 11, 18]],
    [[0, 1, 7, 15], [3, 6, 10, 13], [4, 5, 12, 18], [2, 14, 21, 22], [11, 19, 20], [8, 9, 16, 17]],
]


def golden(version: int) -> str:
    return os.path.join(HERE, "data", f"golden-v{version}")


@pytest.mark.parametrize("version", [1, 2])
def test_golden_datasets_open_with_their_content(version):
    ds = npyseq.open_shards(golden(version), verify="checksums")
    assert ds.manifest.version == version
    for name, expected in make_golden.arrays(version).items():
        if isinstance(expected, list):
            found = ds[name][:]
            assert len(found) == len(expected)
            for f, e in zip(found, expected):
                assert_same_array(f, e)
        else:
            assert_same_array(ds[name][:], expected)


@pytest.mark.parametrize("version", [1, 2])
def test_the_writer_still_writes_the_same_bytes(tmp_path, version):
    npyseq.write_shards(tmp_path / "ds", make_golden.arrays(version), rows=5, progress=False)
    assert tree_bytes(tmp_path / "ds") == tree_bytes(golden(version))


@pytest.mark.parametrize("mode", list(PINNED), ids=str)
def test_batch_order_is_pinned(mode):
    seq = npyseq.ShardSequence(golden(1), x="x", y="y", batch_size=4, shuffle=mode, seed=7)
    assert [seq.batch_rows(i, epoch=1).tolist() for i in range(3)] == PINNED[mode]
    rows = np.concatenate([seq.batch_rows(i, epoch=1) for i in range(len(seq))])
    assert sorted(rows.tolist()) == list(range(23))


def test_bucketed_order_is_pinned():
    from npyseq.keras.ragged_sequence import RaggedSequence

    seq = RaggedSequence(golden(2), x="tokens", y="y", batch_size=4, shuffle="global", seed=7,
                         bucket=True, bucket_pool=2)
    for epoch, expected in enumerate(PINNED_BUCKETS):
        assert [seq.batch_rows(i, epoch).tolist() for i in range(len(seq))] == expected
