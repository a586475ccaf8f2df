"""Writing never destroys what is not npyseq's (issue 10 items 1, 4, 5; issue 11 items 7, 8, 9).

* ``overwrite=True`` replaces only a dataset npyseq wrote: a folder holding
  anything else (a file, a folder, a link, a stray numbered shard) is refused,
  naming it, and nothing is written; the sources of a conversion are never
  inside the output folder, nor the output path itself.
* Reserved array names (``manifest.json``, temporary names) are refused up
  front, and a failed write leaves nothing that makes the next one fail.
* Ctrl-C (KeyboardInterrupt) deletes the ``.partial`` files of the run and
  says that running the same conversion again resumes it.
* The "no dataset here yet" decision is taken under the folder's lock.
* On abort, disk full or success, a write deletes only what it created or
  what the manifest being replaced names: not a user's ``x/000007.npy``, not a
  ``downloads/video.mkv.partial``. An empty output path is refused.
* No symbolic link inside a dataset is followed while writing; an output path
  that is a link is resolved once (the dataset goes into the folder it points
  to, the link stays).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import _thread

import numpy as np
import pytest

import npyseq
from npyseq.format import npy
from npyseq.storage import output
from npyseq.cli import main
from npyseq.errors import (
    DatasetExistsError,
    DiskFullError,
    ForeignFilesError,
    InvalidArgumentError,
    ManifestError,
)

from _helpers import LOCK_NAME, assert_same_array, tree_bytes

X = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
Y = np.arange(40, dtype=np.int64) % 7


def snapshot(root) -> dict[str, object]:
    """Everything under ``root``, links not followed: bytes of files, targets of links, folders."""
    root = os.fspath(root)
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("folder",)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def write(out, arrays=None, **kwargs):
    kwargs.setdefault("rows", 16)
    return npyseq.write_shards(out, {"x": X, "y": Y} if arrays is None else arrays, progress=False, **kwargs)


def reference(tmp_path, arrays=None, **kwargs) -> dict[str, bytes]:
    """The files an uninterrupted write of ``arrays`` into a fresh folder makes."""
    ref = tmp_path / "reference"
    if ref.exists():
        import shutil

        shutil.rmtree(ref)
    write(ref, arrays, **kwargs)
    return tree_bytes(ref)


def call_main(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, command: str = "convert") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"npyseq {command}: error: "), err
    return lines[0]


@pytest.fixture
def sources(tmp_path):
    """x.npy and y.npy in tmp_path/data."""
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "x.npy", X)
    np.save(data / "y.npy", Y)
    return data


# --- 1. overwrite replaces only what npyseq wrote; sources are never in the output -----------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_cli_convert_into_the_folder_of_its_sources_is_refused(tmp_path, capsys, sources, overwrite):
    """`npyseq convert data/x.npy data/y.npy -o data [--overwrite]` deleted the sources."""
    if overwrite:  # the folder already holds a dataset (written from copies elsewhere)
        write(sources, rows=16)
    before = snapshot(sources)
    rc, out, err = call_main(capsys, "convert", sources / "x.npy", sources / "y.npy", "-o", sources,
                             "--quiet", *(["--overwrite"] if overwrite else []))
    line = one_error_line(err)
    assert rc == 1 and out == ""
    assert re.search(re.escape(f"{sources}: the output folder holds {sources / 'x.npy'}, a source of this "
                               "conversion") + ".*could replace or delete it", line), line
    assert snapshot(sources) == before
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_cli_output_onto_a_source_file_is_refused(tmp_path, capsys, sources):
    before = snapshot(sources)
    rc, _, err = call_main(capsys, "convert", sources / "x.npy", "-o", sources / "x.npy", "--overwrite")
    line = one_error_line(err)
    assert rc == 1
    assert f"{sources / 'x.npy'}: the output path is {sources / 'x.npy'}, a source of this conversion" in line
    assert snapshot(sources) == before


def _source_kinds(data):
    x = str(data / "x.npy")
    np.savez(data / "a.npz", x=X)
    X.tofile(data / "x.bin")
    os.makedirs(data / "raw")
    np.save(data / "raw" / "deep.npy", X)
    np.save(data / "lengths.npy", np.full(40, 3, np.int64))
    return {
        "path": x,
        "pathlike": data / "x.npy",
        "memmap": np.load(x, mmap_mode="r"),
        "memmap view": np.asarray(np.load(x, mmap_mode="r")[::-1]),
        "raw": npyseq.RawSource(str(data / "x.bin"), "float32", (3,)),
        "npz member": npyseq.NpzMember(str(data / "a.npz"), "x.npy"),
        "ragged values": npyseq.RaggedSource(x, lengths=np.ones(40, np.int64)),
        "ragged lengths": npyseq.RaggedSource(X.reshape(-1), lengths=str(data / "lengths.npy")),
        "ragged rows of a memmap": list(np.load(x, mmap_mode="r")),
        "in a subfolder": str(data / "raw" / "deep.npy"),
    }


@pytest.mark.parametrize("kind", ["path", "pathlike", "memmap", "memmap view", "raw", "npz member",
                                  "ragged values", "ragged lengths", "ragged rows of a memmap",
                                  "in a subfolder"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_source_inside_the_output_folder_is_refused(sources, kind, overwrite):
    source = _source_kinds(sources)[kind]
    if overwrite:
        write(sources)
    before = snapshot(sources)
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{sources}: the output folder holds ")
                       + r".*, a source of this conversion"):
        npyseq.write_shards(sources, {"x": source}, rows=16, progress=False, overwrite=overwrite)
    assert snapshot(sources) == before


def test_a_source_reached_through_links_is_refused(tmp_path, sources):
    """The output folder holds a link to a source; or the output path is a link to the sources' folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(sources / "x.npy", outside / "link.npy")
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"{outside}: the output folder holds {outside / 'link.npy'}, a source of this conversion")):
        write(outside, {"x": str(outside / "link.npy")})
    os.symlink(sources, tmp_path / "alias")
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"{sources}: the output folder holds {sources / 'x.npy'}, a source of this conversion")):
        write(tmp_path / "alias", {"x": str(sources / "x.npy")})
    assert sorted(os.listdir(sources)) == ["x.npy", "y.npy"]
    assert os.listdir(outside) == ["link.npy"]


def _add_foreign(ds, kind: str, tmp_path) -> str:
    """Put something npyseq did not write into the dataset folder ``ds``; return how it is named."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    if kind == "file":
        (ds / "notes.txt").write_text("my notes")
        return "notes.txt"
    if kind == "folder":
        (ds / "raw").mkdir()
        (ds / "raw" / "a.jpg").write_bytes(b"jpeg")
        return "raw/"
    if kind == "empty folder":
        (ds / "later").mkdir()
        return "later/"
    if kind == "link":
        os.symlink(victim, ds / "link")
        return f"link (a symbolic link (to {victim}))"
    if kind == "dangling link":
        os.symlink(tmp_path / "nowhere", ds / "gone")
        return "gone (a symbolic link"
    if kind == "file in an array folder":
        (ds / "x" / "notes.md").write_text("x is float32")
        return "x/notes.md"
    if kind == "numbered stray":
        (ds / "x" / "000099.npy").write_bytes((ds / "x" / "000000.npy").read_bytes())
        return "x/000099.npy"
    if kind == "folder in an array folder":
        (ds / "x" / "sub").mkdir()
        return "x/sub/"
    if kind == "fifo":
        os.mkfifo(ds / "pipe")
        return "pipe (a special file"
    if kind == "shard replaced by a link":
        os.unlink(ds / "x" / "000001.npy")
        os.symlink(victim, ds / "x" / "000001.npy")
        return "x/000001.npy (a symbolic link"
    raise AssertionError(kind)


FOREIGN = ["file", "folder", "empty folder", "link", "dangling link", "file in an array folder",
           "numbered stray", "folder in an array folder", "fifo", "shard replaced by a link"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", FOREIGN)
@pytest.mark.parametrize("writer", ["write_shards", "ShardWriter"])
def test_overwrite_refuses_a_folder_holding_what_npyseq_did_not_write(tmp_path, kind, writer):
    ds = tmp_path / "ds"
    write(ds)
    named = _add_foreign(ds, kind, tmp_path)
    before, victim = snapshot(ds), (tmp_path / "victim.txt").read_text()
    match = (re.escape(f"{ds}: overwrite=True replaces only a dataset npyseq wrote, but this folder also "
                       "holds what npyseq did not write (or its manifest does not name): ")
             + ".*" + re.escape(named) + r".*Replacing the dataset would delete them, so nothing was written")
    with pytest.raises(ForeignFilesError, match=match):
        if writer == "write_shards":
            write(ds, {"z": np.arange(5)}, overwrite=True)
        else:
            npyseq.ShardWriter(ds, rows=4, overwrite=True)
    assert snapshot(ds) == before
    assert (tmp_path / "victim.txt").read_text() == victim
    assert sorted(os.listdir(tmp_path)) == ["ds", "victim.txt"]  # no staging folder either


def test_overwrite_refusal_names_every_foreign_file_up_to_ten(tmp_path, capsys):
    ds = tmp_path / "ds"
    write(ds)
    for i in range(12):
        (ds / f"note{i:02d}.txt").write_text("mine")
    np.save(tmp_path / "x.npy", X)
    rc, _, err = call_main(capsys, "convert", tmp_path / "x.npy", "-o", ds, "--overwrite", "--quiet")
    line = one_error_line(err)
    assert rc == 1
    assert ", ".join(f"note{i:02d}.txt" for i in range(10)) + " and 2 more." in line
    assert len(os.listdir(ds)) == 3 + 12


def test_overwrite_of_a_dataset_with_npyseq_temporary_files_replaces_it_all(tmp_path):
    """What a killed earlier run leaves (a lock file, .partial files) is npyseq's: replaced with the rest."""
    ds = tmp_path / "ds"
    write(ds)
    (ds / LOCK_NAME).write_text("")
    (ds / "manifest.json.partial").write_text('{"form')
    (ds / "x" / "000007.npy.partial").write_bytes(b"half")
    (ds / "y" / "000000.offsets.npy.partial.tmp").write_bytes(b"half")
    new = {"z": np.arange(30.0)}
    got = write(ds, new, rows=7, overwrite=True)
    assert_same_array(got["z"][:], new["z"])
    assert tree_bytes(ds) == reference(tmp_path, new, rows=7)
    assert sorted(os.listdir(tmp_path)) == ["ds", "reference"]


def test_overwrite_refuses_a_folder_whose_manifest_cannot_be_read(tmp_path):
    ds = tmp_path / "ds"
    write(ds)
    (ds / "manifest.json").write_text('{"format": "npy')
    before = snapshot(ds)
    with pytest.raises(ManifestError, match=re.escape(
            f"{ds}: overwrite=True replaces only a dataset npyseq wrote and tells its files by the "
            f"manifest, which cannot be read ({ds / 'manifest.json'}: not valid JSON")):
        write(ds, overwrite=True)
    assert snapshot(ds) == before
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_overwrite_deletes_exactly_the_old_datasets_files(tmp_path):
    """Something added to the old dataset after the check (here: while the new one is written) stays."""
    ds = tmp_path / "ds"
    write(ds)
    real = output._swap_in

    def swap(staging, target, check):
        (ds / "x" / "late.txt").write_text("added meanwhile")
        return real(staging, target, check)

    import unittest.mock as mock

    with mock.patch.object(output, "_swap_in", swap):
        got = write(ds, {"x": X[:5]}, rows=2, overwrite=True)
    assert_same_array(got["x"][:], X[:5])
    left = tmp_path / "ds.npyseq-new"
    assert snapshot(left) == {"x": ("folder",), "x/late.txt": ("file", b"added meanwhile")}


# --- 2. reserved names; a failed write does not break the next -----------------------------------------


RESERVED = ["manifest.json", "Manifest.JSON", "manifest.json.partial", "x.partial", "x.partial.tmp",
            "x.npyseq-new", "x.npyseq-old"]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_array_names_are_refused_before_writing(tmp_path, name):
    message = re.escape(f"array name {name!r} is reserved: an array's folder has the array's name, and "
                        "npyseq uses such names for ")
    with pytest.raises(InvalidArgumentError, match=message):
        write(tmp_path / "new", {name: np.arange(10)})
    assert not (tmp_path / "new").exists()
    write(tmp_path / "ds")
    before = snapshot(tmp_path / "ds")
    with pytest.raises(InvalidArgumentError, match=message):
        write(tmp_path / "ds", {name: np.arange(10)}, overwrite=True)
    with pytest.raises(InvalidArgumentError, match=message):
        with npyseq.ShardWriter(tmp_path / "w", rows=4) as w:
            w.append(**{name: np.arange(10)})
    assert snapshot(tmp_path / "ds") == before
    assert os.listdir(tmp_path / "w") == []
    assert sorted(os.listdir(tmp_path)) == ["ds", "w"]


def test_array_names_differing_only_in_case_are_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array names 'x' and 'X' differ only in case: on a file system that ignores case")):
        write(tmp_path / "ds", {"x": np.arange(3), "X": np.arange(3)})
    assert not (tmp_path / "ds").exists()


def test_an_array_named_manifest_json_does_not_break_the_next_overwrite(tmp_path):
    """It used to leave ``ds.npyseq-new/manifest.json/``, and every later overwrite failed on it."""
    write(tmp_path / "ds")
    with pytest.raises(InvalidArgumentError, match="array name 'manifest.json' is reserved"):
        write(tmp_path / "ds", {"manifest.json": np.arange(10)}, overwrite=True)
    got = write(tmp_path / "ds", {"x": X[:9]}, rows=4, overwrite=True)
    assert_same_array(got["x"][:], X[:9])
    assert tree_bytes(tmp_path / "ds") == reference(tmp_path, {"x": X[:9]}, rows=4)


def test_a_failed_overwrite_leaves_nothing_that_the_next_one_publishes(tmp_path, monkeypatch):
    """A failed overwrite of other arrays leaves their shards in ds.npyseq-new: none is published."""
    write(tmp_path / "ds")
    real = os.replace

    def failing(src, dst, *args, **kwargs):
        if str(dst).endswith("manifest.json"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="Input/output error"):
        write(tmp_path / "ds", {"z": np.arange(100), "x": np.arange(100.0)}, rows=5, overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    assert sorted(os.listdir(tmp_path / "ds.npyseq-new")) == ["x", "z"]  # complete shards stay
    new = {"x": X[:10]}
    got = write(tmp_path / "ds", new, rows=4, overwrite=True)
    assert_same_array(got["x"][:], new["x"])
    assert tree_bytes(tmp_path / "ds") == reference(tmp_path, new, rows=4)
    assert sorted(os.listdir(tmp_path)) == ["ds", "reference"]
    got = write(tmp_path / "ds", overwrite=True)  # and once more
    assert tree_bytes(tmp_path / "ds") == reference(tmp_path)


def test_a_leftover_staging_folder_holding_foreign_files_is_refused(tmp_path):
    write(tmp_path / "ds")
    staging = tmp_path / "ds.npyseq-new"
    (staging / "x").mkdir(parents=True)
    (staging / "x" / "000003.npy").write_bytes(b"an interrupted overwrite's")
    (staging / "mine.txt").write_text("not npyseq's")
    before = snapshot(tmp_path)
    with pytest.raises(ForeignFilesError, match=re.escape(
            f"{staging}: npyseq uses this folder to replace the dataset at {tmp_path / 'ds'} (this one is "
            "left by an interrupted overwrite), but it holds what npyseq does not write there: mine.txt;")):
        write(tmp_path / "ds", overwrite=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("foreign", [False, True])
def test_overwrite_without_an_atomic_exchange(tmp_path, monkeypatch, foreign):
    """Where renameat2 is missing: two renames via ds.npyseq-old, which must hold only npyseq's files."""
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    write(tmp_path / "ds")
    old = tmp_path / "ds.npyseq-old"
    (old / "x").mkdir(parents=True)
    (old / "x" / "000000.npy").write_bytes(b"left by an interrupted swap")
    if foreign:
        (old / "x" / "keep.txt").write_text("mine")
        with pytest.raises(ForeignFilesError, match=re.escape(f"{old}: ") + ".*x/keep.txt"):
            write(tmp_path / "ds", {"x": X[:5]}, rows=2, overwrite=True)
        assert_same_array(npyseq.open_shards(tmp_path / "ds")["x"][:], X)  # the old dataset stays
        assert (old / "x" / "keep.txt").read_text() == "mine"
        return
    got = write(tmp_path / "ds", {"x": X[:5]}, rows=2, overwrite=True)
    assert_same_array(got["x"][:], X[:5])
    assert sorted(os.listdir(tmp_path)) == ["ds"]


# --- 3. Ctrl-C -----------------------------------------------------------------------------------------------


def _partials(root) -> list[str]:
    return sorted(p for p in tree_bytes(root) if p.endswith((".partial", ".tmp")))


@pytest.mark.timeout(120)
def test_ctrl_c_in_write_shards_deletes_its_partial_files_and_says_how_to_resume(tmp_path, monkeypatch):
    arrays = {"x": np.arange(64 * 1024, dtype=np.float32).reshape(256, 256), "y": np.arange(256)}
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.partial").write_text("not this run's")
    real, calls, lock = npy.hash_array_rows, [0], threading.Lock()

    def slow(hasher, chunk):
        with lock:
            calls[0] += 1
            if calls[0] == 12:  # mid-conversion: 4 jobs, each inside a shard
                _thread.interrupt_main()
        time.sleep(0.005)
        return real(hasher, chunk)

    monkeypatch.setattr(npy, "CHUNK_BYTES", 4096)  # 4 chunks per shard of 16 rows
    monkeypatch.setattr(npy, "hash_array_rows", slow)
    with pytest.raises(KeyboardInterrupt) as info:
        npyseq.write_shards(out, arrays, rows=16, jobs=4, progress=False)
    assert _partials(out) == ["keep.partial"]  # at once: no writing thread is left
    message = str(info.value)
    assert message == (f"{out}: writing was interrupted. Nothing was published: no manifest was written and "
                       "the .partial files of this run were removed; the complete shards were kept: run "
                       "the same conversion again (the same command or call) to resume it.")
    assert not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()
    time.sleep(0.05)
    assert _partials(out) == ["keep.partial"]
    monkeypatch.setattr(npy, "hash_array_rows", real)
    npyseq.write_shards(out, arrays, rows=16, jobs=4, progress=False)
    expected = reference(tmp_path, arrays, rows=16)
    assert tree_bytes(out) == dict(expected, **{"keep.partial": b"not this run's"})


CTRL_C_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from npyseq.format import npy
    from npyseq.cli import main

    real, calls, lock = npy.hash_array_rows, [0], threading.Lock()

    def slow(hasher, chunk):
        with lock:
            calls[0] += 1
            paused = calls[0] == 10
        if paused:  # inside a shard: its .partial file stays while the test looks
            print("PAUSED", flush=True)
            time.sleep(0.5)
        time.sleep(0.01)
        return real(hasher, chunk)

    npy.CHUNK_BYTES = 4096
    if sys.argv[1] == "slow":
        npy.hash_array_rows = slow
    sys.exit(main(["convert", *sys.argv[2:], "--rows-per-shard", "16", "--jobs", "2", "--quiet"]))
""")


@pytest.mark.timeout(180)
def test_ctrl_c_in_the_cli_leaves_no_partial_file_and_says_to_run_it_again(tmp_path):
    """The process exits at once after Ctrl-C: writing threads used to die there, leaving .partial files."""
    src = tmp_path / "src"
    src.mkdir()
    x = np.arange(64 * 1024, dtype=np.float32).reshape(256, 256)
    np.save(src / "x.npy", x)
    np.save(src / "y.npy", np.arange(256))
    out = tmp_path / "ds"
    args = [str(src / "x.npy"), str(src / "y.npy"), "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, "slow", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "PAUSED"
        assert _partials(out)  # shards are being written
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        f"npyseq convert: interrupted: {out}: writing was interrupted. Nothing was published: no manifest "
        "was written and the .partial files of this run were removed; the complete shards were kept: run "
        "the same conversion again (the same command or call) to resume it."]
    assert _partials(out) == []
    assert not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()
    assert any(p.endswith(".npy") for p in tree_bytes(out))  # complete shards stay
    done = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT, "fast", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(out) == reference(tmp_path, {"x": x, "y": np.arange(256)}, rows=16)


def test_ctrl_c_in_a_streamed_write_says_it_is_written_again(tmp_path):
    def rows():
        for i in range(3000):
            if i == 2500:
                raise KeyboardInterrupt
            yield np.arange(i % 5)

    with pytest.raises(KeyboardInterrupt, match=re.escape(
            f"{tmp_path / 'ds'}: writing was interrupted. Nothing was published") + ".*" + re.escape(
            "run it again to write the dataset (an iterable of rows is read again from its start).")):
        npyseq.write_shards(tmp_path / "ds", {"t": rows()}, rows=1000, progress=False)
    assert _partials(tmp_path / "ds") == []
    assert not (tmp_path / "ds" / LOCK_NAME).exists()


# --- 4. the "no dataset here yet" check is made under the lock ---------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_dataset_published_between_the_check_and_the_lock_is_not_written_over(tmp_path, monkeypatch,
                                                                                 overwrite):
    """Another writer publishes while this one is between its first check and taking the lock."""
    ds = tmp_path / "ds"
    other, mine = reference(tmp_path, rows=16), {"x": X[::-1].copy(), "y": Y}
    mine_tree = reference(tmp_path, mine, rows=8)
    real_flock, state = fcntl.flock, {"first": True}

    def flock(fd, operation):
        if state["first"] and operation & fcntl.LOCK_EX:
            state["first"] = False  # the pause point: the other writer runs to its end now
            write(ds, {"x": X, "y": Y}, rows=16)
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    if not overwrite:
        with pytest.raises(DatasetExistsError, match=re.escape(
                f"{ds} already holds a dataset; pass overwrite=True (--overwrite) to replace it")):
            write(ds, mine, rows=8)
        assert state["first"] is False
        assert tree_bytes(ds) == other  # the published dataset is intact
        return
    got = write(ds, mine, rows=8, overwrite=True)  # replaced as a whole, not rewritten in place
    assert state["first"] is False
    assert_same_array(got["x"][:], mine["x"])
    assert tree_bytes(ds) == mine_tree
    assert sorted(os.listdir(tmp_path)) == ["ds", "reference"]


# --- 5. only what this run created, or the replaced manifest names, is deleted -----------------------------


def test_numbered_files_of_the_user_in_an_array_folder_stay(tmp_path):
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / "000007.npy").write_bytes(b"my own frame 7")
    (out / "x" / "000003.offsets.npy").write_bytes(b"mine too")
    got = write(out, {"x": X}, rows=20)
    assert_same_array(got["x"][:], X)
    assert (out / "x" / "000007.npy").read_bytes() == b"my own frame 7"
    assert (out / "x" / "000003.offsets.npy").read_bytes() == b"mine too"


def _foreign_partials(out):
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "video.mkv.partial").write_bytes(b"half a video")
    (out / "keep.partial").write_text("mine")
    (out / "x").mkdir()
    (out / "x" / "notes.partial").write_text("mine")
    return snapshot(out)


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_deletes_only_the_runs_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _foreign_partials(out)
    real, calls = npy.hash_array_rows, []

    def failing(hasher, chunk):
        calls.append(1)
        if len(calls) == 5:
            _enospc()
        return real(hasher, chunk)

    monkeypatch.setattr(npy, "hash_array_rows", failing)
    with pytest.raises(DiskFullError, match=re.escape(f"{out}: the disk is full (ENOSPC")):
        write(out, {"x": X}, rows=4, jobs=2)
    after = snapshot(out)
    assert {p: after[p] for p in before} == before
    assert [p for p in after if p.endswith(".partial") and p not in before] == []


@pytest.mark.parametrize("how", ["exception", "disk full"])
def test_an_aborted_shard_writer_deletes_only_its_partial_files(tmp_path, monkeypatch, how):
    out = tmp_path / "out"
    before = _foreign_partials(out)
    with pytest.raises(RuntimeError if how == "exception" else DiskFullError):
        with npyseq.ShardWriter(out, rows=8) as w:
            w.append(x=X[:10])
            assert os.path.exists(out / "x" / "000001.npy.partial")
            if how == "disk full":
                monkeypatch.setattr(npy, "hash_array_rows", _enospc)
                w.append(x=X[:10])
            raise RuntimeError("the producer failed")
    after = snapshot(out)
    assert {p: after[p] for p in before} == before
    assert sorted(p for p in after if p not in before) == ["x/000000.npy"]  # the complete shard


def test_an_empty_output_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"x": X})  # the current folder holds a dataset and more
    (tmp_path / "notes.txt").write_text("mine")
    np.save(tmp_path / "other.npy", X)
    before = snapshot(tmp_path)
    message = re.escape("out_dir is empty ('')") + ".*" + re.escape("pass '.' to write there on purpose")
    for overwrite in (False, True):
        with pytest.raises(InvalidArgumentError, match=message):
            npyseq.write_shards("", {"x": np.arange(3)}, progress=False, overwrite=overwrite)
        with pytest.raises(InvalidArgumentError, match=message):
            npyseq.ShardWriter("", overwrite=overwrite)
        rc, _, err = call_main(capsys, "convert", tmp_path / "other.npy", "-o", "",
                               *(["--overwrite"] if overwrite else []))
        assert rc == 1
        assert "-o/--output is empty ('')" in one_error_line(err)
    with pytest.raises(InvalidArgumentError, match=re.escape("out_dir is empty ('  ')")):
        npyseq.write_shards("  ", {"x": np.arange(3)}, progress=False)
    assert snapshot(tmp_path) == before


# --- 6. links ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["write_shards", "ShardWriter", "cli"])
def test_an_array_folder_that_is_a_link_is_refused(tmp_path, capsys, writer):
    """It used to write (and delete) outside the output folder, publish, then refuse its own dataset."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "000001.npy").write_bytes(b"the user's file")
    (elsewhere / "000005.npy").write_bytes(b"another")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "x")
    before = snapshot(tmp_path)
    message = (f"{out}: x is a symbolic link (to {elsewhere}), where npyseq writes the folder of array "
               "'x'. npyseq never follows a symbolic link inside a dataset it writes")
    if writer == "cli":
        np.save(tmp_path / "x.npy", X)
        before = snapshot(tmp_path)
        rc, _, err = call_main(capsys, "convert", tmp_path / "x.npy", "-o", out, "--rows-per-shard", "8")
        assert rc == 1 and message in one_error_line(err)
    else:
        with pytest.raises(ForeignFilesError, match=re.escape(message)):
            if writer == "write_shards":
                write(out, {"x": X}, rows=8)
            else:
                with npyseq.ShardWriter(out, rows=8) as w:
                    w.append(x=X)
    assert snapshot(tmp_path) == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rel", ["x/000000.npy", "x/000002.npy.partial", "y/000001.npy",
                                 "manifest.json.partial", LOCK_NAME])
@pytest.mark.parametrize("what", ["link", "folder", "fifo"])
def test_a_file_npyseq_writes_that_is_a_link_or_another_kind_is_refused(tmp_path, rel, what):
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"the user's data")
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "y").mkdir()
    if what == "link":
        os.symlink(victim, out / rel)
    elif what == "folder":
        (out / rel).mkdir()
    else:
        os.mkfifo(out / rel)
    before = snapshot(tmp_path)
    kind = {"link": f"a symbolic link (to {victim})", "folder": "a folder", "fifo": "a special file"}[what]
    with pytest.raises(ForeignFilesError, match=re.escape(f"{out}: {rel} is {kind}")):
        write(out, rows=16)
    assert snapshot(tmp_path) == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["link", "fifo"])
def test_a_shard_writer_never_writes_through_a_link(tmp_path, what):
    """The ShardWriter learns its files as it goes: a link met then is refused, the run aborted."""
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"the user's data")
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    if what == "link":
        os.symlink(victim, out / "x" / "000001.npy.partial")
    else:
        os.mkfifo(out / "x" / "000001.npy.partial")
    with pytest.raises(ForeignFilesError, match=re.escape(f"{out}: x/000001.npy.partial is a ")):
        with npyseq.ShardWriter(out, rows=8) as w:
            w.append(x=X)
    assert victim.read_bytes() == b"the user's data"
    assert os.path.lexists(out / "x" / "000001.npy.partial")
    assert not (out / "manifest.json").exists()
    assert sorted(os.listdir(out / "x")) == ["000000.npy", "000001.npy.partial"]


@pytest.mark.parametrize("via", ["write_shards", "ShardWriter", "cli"])
def test_an_output_path_that_is_a_link_is_resolved_once(tmp_path, capsys, via):
    """The dataset is written into the folder the link points to; the link stays a link.

    ``overwrite=True`` used to exchange the link itself, publish, then fail with a raw
    ``OSError: Cannot call rmtree on a symbolic link``.
    """
    real = tmp_path / "versions" / "v3"
    write(real)
    link = tmp_path / "current"
    os.symlink(real, link)
    np.save(tmp_path / "x.npy", X[:9])
    for attempt in range(2):  # and again: the second replaces the first
        if via == "write_shards":
            got = write(link, {"x": X[:9]}, rows=4, overwrite=True)
            assert got.path == str(real)
        elif via == "ShardWriter":
            with npyseq.ShardWriter(link, rows=4, overwrite=True) as w:
                w.append(x=X[:9])
            assert w.dataset.path == str(real)
        else:
            rc, out, err = call_main(capsys, "convert", tmp_path / "x.npy", "-o", link, "--overwrite",
                                     "--rows-per-shard", "4")
            assert rc == 0, err
            assert out.splitlines()[-1].startswith(f"wrote {real}: 9 rows")
        assert os.readlink(link) == str(real)
        assert tree_bytes(real) == reference(tmp_path, {"x": X[:9]}, rows=4)
        assert sorted(os.listdir(tmp_path)) == ["current", "reference", "versions", "x.npy"]
        assert os.listdir(tmp_path / "versions") == ["v3"]
    assert_same_array(npyseq.open_shards(link)["x"][:], X[:9])


def test_a_link_to_a_missing_folder_gets_the_dataset_there(tmp_path):
    os.symlink(tmp_path / "target", tmp_path / "link")
    got = write(tmp_path / "link")
    assert got.path == str(tmp_path / "target")
    assert os.path.islink(tmp_path / "link")
    assert tree_bytes(tmp_path / "target") == reference(tmp_path)


def test_output_names_reserved_for_npyseqs_folders_are_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"{tmp_path / 'ds.npyseq-new'}: names ending in '.npyseq-new' or '.npyseq-old' are reserved")):
        write(tmp_path / "ds.npyseq-new")
    assert os.listdir(tmp_path) == []
