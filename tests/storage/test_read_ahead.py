"""Reading ahead: a job's thread reads the next piece of an array-like source while the job
writes this one (at most two pieces alive); an unfiltered HDF5 source is read by threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import npyseq
from npyseq.errors import InvalidArgumentError
from npyseq.storage import protocol, writer
from npyseq.storage.array_sources import ArrayLikeSource, read_ahead

h5py = pytest.importorskip("h5py")


class Counting:
    """``read(a, b)`` that records how many pieces were read and not yet given back."""

    def __init__(self, fail_at: int | None = None):
        self.read, self.done, self.most, self.fail_at = 0, 0, 0, fail_at
        self.lock = threading.Lock()

    def __call__(self, a: int, b: int) -> np.ndarray:
        if a == self.fail_at:
            raise InvalidArgumentError(f"rows {a}:{b} cannot be read")
        with self.lock:
            self.read += 1
            self.most = max(self.most, self.read - self.done)
        return np.arange(a, b)


@pytest.mark.timeout(30)
def test_read_ahead_yields_every_span_in_order_with_two_pieces_alive_at_most():
    read = Counting()
    spans = [(a, a + 10) for a in range(0, 200, 10)]
    out = []
    for piece in read_ahead(read, spans):
        out.append(piece.copy())
        with read.lock:
            assert read.read - read.done <= 2
        read.done += 1
    assert np.array_equal(np.concatenate(out), np.arange(200))
    assert read.read == 20 and read.most == 2


@pytest.mark.timeout(30)
def test_read_ahead_raises_the_readers_error_and_stops_its_thread():
    before = threading.active_count()
    got = []
    with pytest.raises(InvalidArgumentError, match=r"^rows 30:40 cannot be read$"):
        for piece in read_ahead(Counting(fail_at=30), [(a, a + 10) for a in range(0, 100, 10)]):
            got.append(int(piece[0]))
    assert got == [0, 10, 20]
    assert threading.active_count() == before


@pytest.mark.timeout(30)
def test_read_ahead_left_early_stops_its_thread():
    before = threading.active_count()
    pieces = read_ahead(Counting(), [(a, a + 10) for a in range(0, 100, 10)])
    assert int(next(pieces)[0]) == 0
    pieces.close()
    assert threading.active_count() == before


def _h5(path, x, **kw):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(100, 16), **kw)


@pytest.mark.timeout(60)
def test_an_unfiltered_hdf5_source_is_read_by_threads_not_processes(tmp_path, monkeypatch):
    def no_pool(workers):
        raise AssertionError("an unfiltered HDF5 source started worker processes")

    monkeypatch.setattr(writer, "PROCESSES_FROM", 0)
    monkeypatch.setattr(writer, "process_pool", no_pool)
    monkeypatch.setattr("npyseq.storage.array_sources.PIECE_BYTES", 64 * 16 * 4)  # 64 rows a piece
    monkeypatch.setattr("npyseq.storage.array_sources.AHEAD_PIECE_BYTES", 32 * 16 * 4)
    x = np.arange(5000 * 16, dtype=np.float32).reshape(5000, 16)
    _h5(tmp_path / "plain.h5", x)
    _h5(tmp_path / "gzip.h5", x, compression="gzip")
    with h5py.File(tmp_path / "plain.h5", "r") as f:
        assert not ArrayLikeSource("x", f["x"]).filtered
        npyseq.write_shards(tmp_path / "out", {"x": f["x"]}, rows=700, jobs=2, progress=False)
    with h5py.File(tmp_path / "gzip.h5", "r") as f:
        assert ArrayLikeSource("x", f["x"]).filtered
    npyseq.write_shards(tmp_path / "ref", {"x": x}, rows=700, jobs=1, progress=False)
    for name in sorted(p.name for p in (tmp_path / "ref" / "x").iterdir()):
        assert (tmp_path / "out" / "x" / name).read_bytes() == (tmp_path / "ref" / "x" / name).read_bytes()
    assert (tmp_path / "out" / "manifest.json").read_bytes() == (tmp_path / "ref" / "manifest.json").read_bytes()


def test_start_writeback_flushes_and_returns_the_end(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 5000)
        assert protocol.start_writeback(f, 0) == 5000
        assert (tmp_path / "f").read_bytes() == b"x" * 5000  # flushed, not only buffered
        assert protocol.start_writeback(f, 5000) == 5000
