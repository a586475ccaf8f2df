"""What the command line and the library say when a user gets something wrong, word for word.

A folder above datasets, a CSV file, a ``.npy`` file where a dataset folder
goes; counts in the singular; ``--quiet`` against ``--silent``; the ragged
progress bar's total; a closed pipe (``npyseq info DIR | head -1``).
Terminal behaviour is checked through ``python -m npyseq`` in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import npyseq
from npyseq.cli import main
from npyseq.errors import DatasetNotFoundError, IncompleteDatasetError, InvalidArgumentError

from _helpers import LOCK_NAME, flip_byte

pytestmark = pytest.mark.timeout(120)


def run_cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npyseq", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The only stderr line of a failed command (exit 1, no traceback, nothing on stdout)."""
    assert (proc.returncode, proc.stdout) == (1, ""), (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def write(root, rows: int = 6, **kwargs) -> npyseq.Dataset:
    arrays = {"x": np.arange(rows * 2, dtype=np.float64).reshape(rows, 2), "labels": np.arange(rows)}
    return npyseq.write_shards(root, arrays, progress=False, **kwargs)


# --- a folder that is not a dataset ------------------------------------------------------------


def test_a_folder_above_datasets_names_them_and_is_not_called_interrupted(tmp_path):
    for rel in ("train", "val", "runs/2024", "runs/2025", "a/b/too-deep"):
        write(tmp_path / "data" / rel)
    root = tmp_path / "data"

    with pytest.raises(DatasetNotFoundError) as info:
        npyseq.open_shards(root)

    assert type(info.value) is DatasetNotFoundError  # not IncompleteDatasetError
    assert str(info.value) == (
        f"{root}: not an npyseq dataset (manifest.json not found), but dataset folders are inside "
        f"it: runs/2024, runs/2025, train, val. Open one of those, e.g. {root}/runs/2024")


def test_at_most_five_dataset_folders_are_named(tmp_path):
    for k in range(7):
        write(tmp_path / "data" / f"part{k}")

    with pytest.raises(DatasetNotFoundError, match=re.escape(
            "inside it: part0, part1, part2, part3, part4 and 2 more. Open one of those, e.g. "
            f"{tmp_path / 'data' / 'part0'}")):
        npyseq.open_shards(tmp_path / "data")


def test_npyseq_info_on_a_folder_above_a_dataset(tmp_path):
    write(tmp_path / "data" / "train")

    line = one_error_line(run_cli("info", "data", cwd=tmp_path))

    assert line == (
        f"npyseq info: error: {tmp_path / 'data'}: not an npyseq dataset (manifest.json not found), "
        f"but dataset folders are inside it: train. Open one of those, e.g. {tmp_path / 'data' / 'train'}")


def test_a_folder_of_other_things_is_not_called_interrupted(tmp_path):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    (tmp_path / "photos" / "2024" / "cat.jpg").write_bytes(b"\xff\xd8")

    with pytest.raises(DatasetNotFoundError) as info:
        npyseq.open_shards(tmp_path / "photos")

    assert type(info.value) is DatasetNotFoundError
    assert str(info.value) == (
        f"{tmp_path / 'photos'}: not an npyseq dataset (manifest.json not found, nor in the folders "
        "inside it, two levels down); give the folder that holds manifest.json, or make a dataset "
        "with npyseq.write_shards or `npyseq convert`")


@pytest.mark.parametrize("leftover", ["shards", "lock and empty folders", "manifest.json.partial"])
def test_what_an_interrupted_write_leaves_is_still_called_incomplete(tmp_path, leftover):
    root = tmp_path / "ds"
    write(root, rows=6)
    os.unlink(root / "manifest.json")
    if leftover == "lock and empty folders":  # a SIGKILL before the first shard was renamed
        for name in ("x", "labels"):
            for entry in os.listdir(root / name):
                os.unlink(root / name / entry)
        (root / LOCK_NAME).write_bytes(b"")
    elif leftover == "manifest.json.partial":
        (root / "manifest.json.partial").write_text('{"format": "npy')

    with pytest.raises(IncompleteDatasetError, match=re.escape(
            f"{root}: incomplete dataset: shard folders exist but manifest.json does not. "
            "A conversion was interrupted; run it again to finish it")):
        npyseq.open_shards(root)


# --- a file where a dataset folder goes ---------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "verify"])
def test_info_and_verify_on_a_npy_file_say_it_is_a_file(tmp_path, command):
    np.save(tmp_path / "x.npy", np.zeros(3))

    line = one_error_line(run_cli(command, "x.npy", cwd=tmp_path))

    assert line == (
        f"npyseq {command}: error: x.npy: is a file, not a dataset folder; `npyseq {command}` takes a "
        "dataset folder (the one holding manifest.json); `npyseq convert x.npy -o DIR` makes one")


def test_open_shards_on_a_file_says_it_is_a_file(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))

    with pytest.raises(DatasetNotFoundError) as info:
        npyseq.open_shards(tmp_path / "x.npy")

    assert str(info.value) == (
        f"{tmp_path / 'x.npy'}: is a file, not a dataset folder; open_shards takes the folder that "
        "holds manifest.json. A .npy file becomes a dataset with npyseq.write_shards(folder, "
        "{name: path}) or `npyseq convert FILE -o FOLDER`")


def test_a_missing_path_is_still_no_such_dataset_folder(tmp_path):
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")

    for path in (tmp_path / "nope", tmp_path / "dangling"):
        with pytest.raises(DatasetNotFoundError, match=re.escape(f"{path}: no such dataset folder")):
            npyseq.open_shards(path)


# --- CSV files ---------------------------------------------------------------------------------


CSV_MESSAGE = (
    "array 'data': data.csv is a CSV file (text), not an array file; npyseq reads .npy files (and "
    ".npz archives and raw binary files). Make a .npy of it first, e.g. np.save('data.npy', "
    "np.loadtxt('data.csv', delimiter=',')) (skiprows=1 for a header row; a file bigger than "
    "memory: read it in chunks and append them to an npyseq.ShardWriter)")


@pytest.mark.parametrize("extra", [[], ["--dtype", "float32"]], ids=["plain", "with --dtype"])
def test_convert_a_csv_file_says_how_to_make_a_npy(tmp_path, extra):
    np.savetxt(tmp_path / "data.csv", np.arange(6.0).reshape(3, 2), delimiter=",")

    line = one_error_line(run_cli("convert", "data.csv", *extra, "-o", "out", cwd=tmp_path))

    assert line == f"npyseq convert: error: {CSV_MESSAGE}"
    assert not (tmp_path / "out").exists()


def test_the_csv_advice_works(tmp_path, monkeypatch):
    np.savetxt(tmp_path / "data.csv", np.arange(6.0).reshape(3, 2), delimiter=",")
    monkeypatch.chdir(tmp_path)
    np.save("data.npy", np.loadtxt("data.csv", delimiter=","))  # what the message says to run

    assert run_cli("convert", "data.npy", "-o", "out", "-qq", cwd=tmp_path).returncode == 0
    assert npyseq.open_shards(tmp_path / "out")["data"][:].tolist() == [[0, 1], [2, 3], [4, 5]]


def test_write_shards_of_a_csv_or_tsv_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("1,2\n3,4\n")
    (tmp_path / "t.TSV").write_text("1\t2\n")

    with pytest.raises(InvalidArgumentError) as info:
        npyseq.write_shards("ds", {"data": "data.csv"}, progress=False)
    assert str(info.value) == CSV_MESSAGE
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "array 't': t.TSV is a CSV file (text), not an array file; npyseq reads .npy files")
            + ".*" + re.escape("np.save('t.npy', np.loadtxt('t.TSV', delimiter='\\t'))")):
        npyseq.write_shards("ds", {"t": "t.TSV"}, progress=False)
    assert not (tmp_path / "ds").exists()


# --- counts in words ---------------------------------------------------------------------------


def test_one_array_one_shard_one_row_in_the_singular(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 2)))

    rc = main(["convert", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"), "-q"])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    assert out == f"wrote {tmp_path / 'out'}: 1 row, 1 array, 1 shard per array, 144 B\n"

    rc = main(["info", str(tmp_path / "out")])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "shards    1 per array, 1 row each" in out.splitlines()

    rc = main(["verify", str(tmp_path / "out"), "-q"])
    out, _ = capsys.readouterr()
    assert (rc, out) == (0, "OK: 1 shard, 144 B, its checksum matches\n")


def test_several_in_the_plural(tmp_path, capsys):
    write(tmp_path / "ds", rows=6)

    rc = main(["verify", str(tmp_path / "ds"), "-q"])
    out, _ = capsys.readouterr()
    assert (rc, out) == (0, "OK: 2 shards, 400 B, all checksums match\n")
    rc = main(["info", str(tmp_path / "ds")])
    out, _ = capsys.readouterr()
    assert "shards    1 per array, 6 rows each" in out.splitlines()


def test_one_bad_shard_of_several_is_bad(tmp_path):
    npyseq.write_shards(tmp_path / "ds4", {"x": np.arange(40.0), "y": np.arange(40)}, rows=10,
                        progress=False)
    flip_byte(tmp_path / "ds4" / "x" / "000002.npy")

    proc = run_cli("verify", "ds4", "-q", cwd=tmp_path)

    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == "1 of 8 shards is bad"
    flip_byte(tmp_path / "ds4" / "y" / "000001.npy")
    assert run_cli("verify", "ds4", "-q", cwd=tmp_path).stdout.splitlines()[-1] == "2 of 8 shards are bad"


def test_name_given_once_for_two_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(3), y=np.zeros(3))

    line = one_error_line(run_cli("convert", "a.npz", "--name", "only", "-o", "out", cwd=tmp_path))

    assert line == "npyseq convert: error: --name given 1 time but the sources hold 2 arrays (x, y)"


# --- --quiet keeps the summary, --silent prints nothing ----------------------------------------


@pytest.fixture
def x_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(12.0).reshape(6, 2))
    return tmp_path / "x.npy"


def test_quiet_hides_the_bar_and_keeps_the_summary(tmp_path, x_npy):
    proc = run_cli("convert", "x.npy", "-o", "out", "--quiet", cwd=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"wrote {tmp_path / 'out'}: 6 rows, 1 array, 1 shard per array, 224 B\n"


@pytest.mark.parametrize("flag", [["-qq"], ["-q", "-q"], ["--silent"]])
def test_qq_and_silent_print_nothing(tmp_path, x_npy, flag):
    proc = run_cli("convert", "x.npy", "-o", "out", *flag, cwd=tmp_path)

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    verify = run_cli("verify", "out", *flag, cwd=tmp_path)
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")


def test_without_quiet_the_bar_and_the_summary(tmp_path, x_npy):
    proc = run_cli("convert", "x.npy", "-o", "out", cwd=tmp_path)

    assert proc.returncode == 0
    assert "npyseq write: 100%" in proc.stderr
    assert proc.stdout == f"wrote {tmp_path / 'out'}: 6 rows, 1 array, 1 shard per array, 224 B\n"


def test_silent_verify_still_reports_bad_shards(tmp_path, x_npy):
    assert run_cli("convert", "x.npy", "-o", "out", "--silent", cwd=tmp_path).returncode == 0
    flip_byte(tmp_path / "out" / "x" / "000000.npy")

    proc = run_cli("verify", "out", "--silent", cwd=tmp_path)

    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.splitlines()[0].startswith(f"BAD {tmp_path / 'out' / 'x' / '000000.npy'}: checksum")
    assert proc.stdout.splitlines()[1:] == ["1 of 1 shard is bad"]


@pytest.mark.parametrize("command", ["convert", "verify"])
def test_help_documents_quiet_and_silent(tmp_path, command):
    proc = run_cli(command, "--help", cwd=tmp_path)

    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "-q, --quiet no progress bar; -qq: no summary line either" in text
    assert "--silent the same as -qq: print nothing but errors" in text


# --- the progress bar of a ragged conversion -----------------------------------------------------


class RecordingBar:
    """Stands for tqdm: records the total and the count when the bar closes."""

    closed: list = []

    def __init__(self, total=None, **kwargs):
        self.total, self.n = total, 0

    def update(self, n):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        RecordingBar.closed.append((self.total, self.n))


def test_ragged_progress_total_is_the_bytes_written(tmp_path, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.closed = []
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 200, 1000)
    values = np.arange(lengths.sum(), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    labels = np.arange(1000, dtype=np.int32)
    arrays = {"tokens": npyseq.RaggedSource(values, offsets=offsets), "label": labels}

    ds = npyseq.write_shards(tmp_path / "ds", arrays, "64KB", progress=True)
    shards = ds.num_shards
    expected = values.nbytes + (1000 + shards) * 8 + labels.nbytes  # data bytes, headers left out
    assert shards > 5
    assert RecordingBar.closed == [(expected, expected)]

    # A rerun after an interruption keeps every shard: the bar still ends at its total.
    os.unlink(tmp_path / "ds" / "manifest.json")
    npyseq.write_shards(tmp_path / "ds", arrays, "64KB", progress=True)
    assert RecordingBar.closed[1] == (expected, expected)


# --- a closed pipe -------------------------------------------------------------------------------


def test_info_into_head_exits_quietly(tmp_path):
    # 2,000 arrays: an output of ~340 KB, more than a pipe holds, so npyseq is
    # still writing when `head -1` exits, whatever the buffering.
    names = [f"a{k:04d}" + "x" * 100 for k in range(2000)]
    npyseq.write_shards(tmp_path / "many", {n: np.zeros(0, np.int8) for n in names}, progress=False)
    script = f'{sys.executable} -m npyseq info "$1" | head -1; exit "${{PIPESTATUS[0]}}"'

    proc = subprocess.run(["bash", "-c", script, "bash", str(tmp_path / "many")],
                          capture_output=True, text=True, timeout=60)

    assert proc.stdout == f"dataset   {tmp_path / 'many'}\n"
    assert proc.stderr == ""
    assert proc.returncode == 141  # as for a program ended by SIGPIPE: 128 + 13


def test_a_closed_stdout_in_process_returns_141(tmp_path, monkeypatch, capsys):
    write(tmp_path / "ds")

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    rc = main(["info", str(tmp_path / "ds")])
    monkeypatch.undo()

    assert rc == 141
    assert capsys.readouterr().err == ""
