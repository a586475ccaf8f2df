"""Tests of the ``npyseq`` command line: ``convert``, ``info`` and ``verify``.

Most tests call :func:`npyseq.cli.main` in-process (fast); those about what
a user sees on a terminal (one error line, no traceback, no progress output,
no Keras import) run ``python -m npyseq`` in a subprocess. Results are read
back with ``json`` and ``np.load`` alone, so the library is not checked
against itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npyseq
from npyseq.cli import main

N = 1000


# --- helpers ------------------------------------------------------------------


def run_cli(*args, cwd) -> subprocess.CompletedProcess:
    """``python -m npyseq ARGS`` in ``cwd``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "npyseq", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def call_main(capsys, *args) -> tuple[int, str, str]:
    """``npyseq.cli.main(ARGS)`` in-process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """The command failed with exit 1 and a single ``npyseq CMD: error:`` line holding ``fragments``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"npyseq {command}: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    return line


def manifest_json(root) -> dict:
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def shards_of(root, name: str) -> list[np.ndarray]:
    """Every shard of array ``name``, loaded with plain ``np.load``."""
    doc = manifest_json(root)
    return [np.load(os.path.join(root, s["path"]), allow_pickle=False)
            for s in doc["arrays"][name]["shards"]]


def array_of(root, name: str) -> np.ndarray:
    parts = shards_of(root, name)
    return np.concatenate(parts) if parts else None


def assert_same(found: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and bytes (exact, NaN-safe)."""
    assert found.dtype == expected.dtype, (found.dtype, expected.dtype)
    assert found.shape == expected.shape, (found.shape, expected.shape)
    assert np.ascontiguousarray(found).tobytes() == np.ascontiguousarray(expected).tobytes()


def npy_header_len(path) -> int:
    with open(path, "rb") as f:
        if np.lib.format.read_magic(f) == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


@pytest.fixture
def sources(tmp_path):
    """x.npy (float32, rows of 3x2) and labels.npy (int64) with N rows; returns the arrays."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3, 2)).astype(np.float32)
    labels = rng.integers(-(2**40), 2**40, N, dtype=np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    return {"x": x, "labels": labels}


# --- convert: sources -------------------------------------------------------------


def test_convert_npy_names_arrays_after_file_stems(tmp_path, sources):
    proc = run_cli("convert", "x.npy", "labels.npy", "-o", "out", "--silent", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")  # --silent: nothing at all
    doc = manifest_json(tmp_path / "out")
    assert list(doc["arrays"]) == ["x", "labels"]
    assert doc["rows"] == N
    assert_same(array_of(tmp_path / "out", "x"), sources["x"])
    assert_same(array_of(tmp_path / "out", "labels"), sources["labels"])
    ds = npyseq.open_shards(tmp_path / "out")
    assert_same(ds["x"][:], sources["x"])
    assert_same(ds["labels"][:], sources["labels"])


def test_convert_without_quiet_shows_progress_and_a_summary(tmp_path, sources):
    proc = run_cli("convert", "x.npy", "labels.npy", "-o", "out", "--rows-per-shard", "300",
                   cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert "npyseq write" in proc.stderr  # the tqdm bar
    assert "100%" in proc.stderr
    nbytes = sum(os.path.getsize(tmp_path / "out" / s["path"])
                 for a in manifest_json(tmp_path / "out")["arrays"].values() for s in a["shards"])
    assert nbytes == N * (24 + 8) + 8 * 128  # 24 + 8 bytes a row, 8 shards with 128-byte headers
    assert proc.stdout == f"wrote {tmp_path / 'out'}: {N} rows, 2 arrays, 4 shards per array, 33.02 KB\n"


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["savez", "savez_compressed"])
def test_convert_npz_names_arrays_after_members(tmp_path, save):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    target = rng.standard_normal(50)
    save(tmp_path / "data.npz", images=images, target=target)

    # 7 rows per shard: a compressed member is streamed across 8 shards.
    proc = run_cli("convert", "data.npz", "-o", "out", "--rows-per-shard", "7", "--quiet",
                   cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    doc = manifest_json(tmp_path / "out")
    assert list(doc["arrays"]) == ["images", "target"]
    assert doc["shard_rows"] == [7] * 7 + [1]
    assert_same(array_of(tmp_path / "out", "images"), images)
    assert_same(array_of(tmp_path / "out", "target"), target)


def test_convert_npz_positional_members_and_npy_together(tmp_path, sources):
    a, b = np.arange(N, dtype=np.int16), np.linspace(0, 1, N)
    np.savez_compressed(tmp_path / "ab.npz", a, b)

    rc = main(["convert", str(tmp_path / "x.npy"), str(tmp_path / "ab.npz"),
               "-o", str(tmp_path / "out"), "--quiet"])

    assert rc == 0
    assert list(manifest_json(tmp_path / "out")["arrays"]) == ["x", "arr_0", "arr_1"]
    assert_same(array_of(tmp_path / "out", "x"), sources["x"])
    assert_same(array_of(tmp_path / "out", "arr_0"), a)
    assert_same(array_of(tmp_path / "out", "arr_1"), b)


@pytest.mark.parametrize("shape_arg", ["4,2", "(4, 2)", "[4,2]"])
def test_convert_raw_binary_with_dtype_shape_offset(tmp_path, capsys, shape_arg):
    rows = np.arange(37 * 8, dtype="<u2").reshape(37, 4, 2) * 257
    header = b"RAWHDR" + bytes(range(10))  # 16 bytes a raw reader must skip
    (tmp_path / "frames.bin").write_bytes(header + rows.tobytes())

    rc, out, err = call_main(capsys, "convert", tmp_path / "frames.bin", "--dtype", "<u2",
                             "--shape", shape_arg, "--offset", "16", "-o", tmp_path / "out",
                             "--rows-per-shard", "10", "--silent")

    assert (rc, out, err) == (0, "", "")
    doc = manifest_json(tmp_path / "out")
    assert list(doc["arrays"]) == ["frames"]
    assert doc["arrays"]["frames"]["shape"] == [4, 2]
    assert doc["shard_rows"] == [10, 10, 10, 7]
    assert_same(array_of(tmp_path / "out", "frames"), rows)


def test_convert_raw_scalar_rows_without_shape(tmp_path, capsys):
    values = np.arange(-50, 50, dtype="<i4")
    (tmp_path / "v.raw").write_bytes(values.tobytes())

    rc, _, _ = call_main(capsys, "convert", tmp_path / "v.raw", "--dtype", "int32",
                         "-o", tmp_path / "out", "--quiet")

    assert rc == 0
    assert_same(array_of(tmp_path / "out", "v"), values)


def test_convert_raw_binary_bfloat16(tmp_path, capsys):
    """bfloat16 is a first-class dtype (issue 2), so ``--dtype bfloat16`` must work."""
    import ml_dtypes

    values = np.arange(24, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(12, 2)
    (tmp_path / "w.bin").write_bytes(values.tobytes())

    proc = run_cli("convert", "w.bin", "--dtype", "bfloat16", "--shape", "2", "-o", "out",
                   "--quiet", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    found = npyseq.open_shards(tmp_path / "out")["w"][:]
    assert_same(found, values)


def test_convert_raw_binary_partial_row_is_an_error_naming_file_and_numbers(tmp_path):
    # 16-byte header, 5 rows of 2x3 uint16 (12 bytes each), then 5 stray bytes.
    (tmp_path / "r.bin").write_bytes(b"\0" * 16 + bytes(5 * 12 + 5))

    proc = run_cli("convert", "r.bin", "--dtype", "uint16", "--shape", "2,3", "--offset", "16",
                   "-o", "out", "--quiet", cwd=tmp_path)

    assert_one_error_line(proc, "convert", "r.bin", "65 bytes after offset 16",
                          "not a whole number of rows", "12 bytes per row", "uint16", "(2, 3)")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_convert_raw_without_dtype_is_an_error(tmp_path):
    (tmp_path / "data.bin").write_bytes(bytes(64))

    proc = run_cli("convert", "data.bin", "-o", "out", cwd=tmp_path)

    assert_one_error_line(proc, "convert", "data.bin", "not a .npy or .npz file", "--dtype")


# --- convert: options -------------------------------------------------------------


def test_name_overrides_the_default_names_in_order(tmp_path, capsys, sources):
    np.savez(tmp_path / "more.npz", w=np.arange(N, dtype=np.uint8))

    rc, _, _ = call_main(capsys, "convert", tmp_path / "x.npy", tmp_path / "labels.npy",
                         tmp_path / "more.npz", "--name", "inputs", "--name", "y",
                         "--name", "weights", "-o", tmp_path / "out", "--quiet")

    assert rc == 0
    assert list(manifest_json(tmp_path / "out")["arrays"]) == ["inputs", "y", "weights"]
    assert_same(array_of(tmp_path / "out", "inputs"), sources["x"])
    assert_same(array_of(tmp_path / "out", "y"), sources["labels"])
    assert_same(array_of(tmp_path / "out", "weights"), np.arange(N, dtype=np.uint8))


@pytest.mark.parametrize("names", [["a"], ["a", "b", "c"]])
def test_name_count_differing_from_arrays_is_an_error(tmp_path, sources, names):
    args = [a for n in names for a in ("--name", n)]

    proc = run_cli("convert", "x.npy", "labels.npy", *args, "-o", "out", cwd=tmp_path)

    times = "1 time" if len(names) == 1 else f"{len(names)} times"
    assert_one_error_line(proc, "convert", f"--name given {times}",
                          "the sources hold 2 arrays (x, labels)")
    assert not (tmp_path / "out").exists()


def test_duplicate_names_are_an_error(tmp_path, sources):
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "x.npy", sources["x"])

    proc = run_cli("convert", "x.npy", "b/x.npy", "-o", "out", cwd=tmp_path)

    assert_one_error_line(proc, "convert", "names must be unique", "['x', 'x']", "--name")


@pytest.mark.parametrize("size_arg, limit", [("4000", 4000), ("4KB", 4000), ("4KiB", 4096)])
def test_shard_size_caps_every_shard_of_every_array(tmp_path, capsys, sources, size_arg, limit):
    # x rows are 24 bytes and labels rows 8: x decides the boundaries.
    rc, _, _ = call_main(capsys, "convert", tmp_path / "x.npy", tmp_path / "labels.npy",
                         "-o", tmp_path / "out", "--shard-size", size_arg, "--quiet")

    assert rc == 0
    out = tmp_path / "out"
    doc = manifest_json(out)
    per = doc["shard_rows"][0]
    assert all(r == per for r in doc["shard_rows"][:-1]) and 0 < doc["shard_rows"][-1] <= per
    assert sum(doc["shard_rows"]) == N
    x0 = out / doc["arrays"]["x"]["shards"][0]["path"]
    # As many rows as fit: one more x row would pass the limit.
    assert npy_header_len(x0) + (per + 1) * 24 > limit
    for name in ("x", "labels"):
        for s in doc["arrays"][name]["shards"]:
            assert os.path.getsize(out / s["path"]) <= limit
            assert os.path.getsize(out / s["path"]) == s["bytes"]
    assert [len(p) for p in shards_of(out, "labels")] == doc["shard_rows"]
    assert_same(array_of(out, "x"), sources["x"])
    assert_same(array_of(out, "labels"), sources["labels"])


def test_shard_size_smaller_than_a_row_is_an_error(tmp_path, sources):
    proc = run_cli("convert", "x.npy", "-o", "out", "--shard-size", "100", cwd=tmp_path)

    assert_one_error_line(proc, "convert", "shard_size 100 bytes is smaller than one row",
                          "'x'", "24 bytes")


def test_rows_per_shard(tmp_path, capsys, sources):
    rc, _, _ = call_main(capsys, "convert", tmp_path / "x.npy", tmp_path / "labels.npy",
                         "-o", tmp_path / "out", "--rows-per-shard", "300", "--quiet")

    assert rc == 0
    out = tmp_path / "out"
    doc = manifest_json(out)
    assert doc["shard_rows"] == [300, 300, 300, 100]
    assert [s["path"] for s in doc["arrays"]["x"]["shards"]] == [
        "x/000000.npy", "x/000001.npy", "x/000002.npy", "x/000003.npy"]
    for k, part in enumerate(shards_of(out, "x")):
        assert_same(part, sources["x"][300 * k:300 * (k + 1)])
    for k, part in enumerate(shards_of(out, "labels")):
        assert_same(part, sources["labels"][300 * k:300 * (k + 1)])


def test_jobs_do_not_change_the_bytes_written(tmp_path, capsys, sources):
    trees = {}
    for jobs in (1, 3):
        out = tmp_path / f"out{jobs}"
        rc, _, _ = call_main(capsys, "convert", tmp_path / "x.npy", tmp_path / "labels.npy",
                             "-o", out, "--rows-per-shard", "90", "--jobs", jobs, "--quiet")
        assert rc == 0
        trees[jobs] = {
            os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(out) for f in files
        }
    assert trees[1] == trees[3]
    assert len(trees[1]) == 1 + 2 * 12  # manifest + 12 shards per array
    assert_same(array_of(tmp_path / "out3", "x"), sources["x"])


@pytest.mark.parametrize("args, fragment", [
    (["--jobs", "0"], "jobs must be a positive int"),
    (["--rows-per-shard", "0"], "must be a positive int, got 0"),
    (["--shard-size", "12XB"], "'12XB'"),
])
def test_bad_option_values_are_one_line_errors(tmp_path, sources, args, fragment):
    proc = run_cli("convert", "x.npy", "-o", "out", *args, cwd=tmp_path)

    assert_one_error_line(proc, "convert", fragment)


def test_existing_dataset_is_not_replaced_without_overwrite(tmp_path, sources):
    assert run_cli("convert", "x.npy", "-o", "out", "--quiet", cwd=tmp_path).returncode == 0
    np.save(tmp_path / "x.npy", sources["x"][:10] + 1)
    before = (tmp_path / "out" / "manifest.json").read_bytes()

    proc = run_cli("convert", "x.npy", "-o", "out", cwd=tmp_path)  # no --quiet: still one line

    assert_one_error_line(proc, "convert", str(tmp_path / "out"), "already holds a dataset",
                          "--overwrite")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert_same(array_of(tmp_path / "out", "x"), sources["x"])


def test_overwrite_replaces_the_dataset(tmp_path, sources):
    assert run_cli("convert", "x.npy", "labels.npy", "-o", "out", "--quiet",
                   cwd=tmp_path).returncode == 0
    new = sources["x"][:10] + 1
    np.save(tmp_path / "x.npy", new)

    proc = run_cli("convert", "x.npy", "-o", "out", "--overwrite", "--quiet", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    doc = manifest_json(tmp_path / "out")
    assert list(doc["arrays"]) == ["x"] and doc["rows"] == 10
    assert_same(array_of(tmp_path / "out", "x"), new)
    assert not (tmp_path / "out" / "labels").exists()
    assert sorted(os.listdir(tmp_path)) == ["labels.npy", "out", "x.npy"]  # no staging folders


# --- info -------------------------------------------------------------------------


def test_info_describes_rows_arrays_dtypes_shapes_shards_bytes(tmp_path, capsys, sources):
    import ml_dtypes

    w = np.arange(N * 4, dtype=np.float32).reshape(N, 4).astype(ml_dtypes.bfloat16)
    npyseq.write_shards(tmp_path / "out", {"x": sources["x"], "labels": sources["labels"], "w": w},
                        rows=300, progress=False)
    out = tmp_path / "out"
    sizes = {n: sum(os.path.getsize(out / s["path"]) for s in a["shards"])
             for n, a in manifest_json(out)["arrays"].items()}

    rc, text, err = call_main(capsys, "info", out)

    assert (rc, err) == (0, "")
    lines = text.splitlines()
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines[:5]}
    assert fields["dataset"] == str(out)
    assert fields["format"].startswith("npyseq v1, manifest xxh3_64:")
    assert fields["rows"] == str(N)
    assert fields["shards"] == "4 per array, 100-300 rows each"
    assert fields["bytes"] == f"{sum(sizes.values())} ({sum(sizes.values()) / 1000:.2f} KB)"
    assert lines[5] == "arrays"
    arrays = {line.split()[0]: line for line in lines[6:]}
    assert list(arrays) == ["x", "labels", "w"]
    assert arrays["x"].split()[1] == "float32" and "row shape (3, 2)" in arrays["x"]
    assert arrays["labels"].split()[1] == "int64" and "row shape ()" in arrays["labels"]
    assert "bfloat16 (stored as uint16)" in arrays["w"] and "row shape (4,)" in arrays["w"]
    assert arrays["x"].endswith(f"{sizes['x'] / 1000:.2f} KB")


def test_info_of_an_empty_dataset(tmp_path, capsys):
    np.save(tmp_path / "e.npy", np.zeros((0, 3), np.float32))
    assert call_main(capsys, "convert", tmp_path / "e.npy", "-o", tmp_path / "out", "--quiet")[0] == 0

    rc, text, _ = call_main(capsys, "info", tmp_path / "out")

    assert rc == 0
    assert "rows      0" in text.splitlines()
    assert "shards    0" in text.splitlines()


# --- verify -----------------------------------------------------------------------


def test_verify_passes_a_good_dataset(tmp_path, sources):
    assert run_cli("convert", "x.npy", "labels.npy", "-o", "out", "--rows-per-shard", "300",
                   "--quiet", cwd=tmp_path).returncode == 0

    proc = run_cli("verify", "out", "--quiet", cwd=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("OK: 8 shards, ")
    assert proc.stdout.rstrip().endswith("all checksums match")

    noisy = run_cli("verify", "out", cwd=tmp_path)  # the progress bar goes to stderr
    assert noisy.returncode == 0 and "npyseq verify" in noisy.stderr


def test_verify_lists_each_bad_shard(tmp_path, sources):
    assert run_cli("convert", "x.npy", "labels.npy", "-o", "out", "--rows-per-shard", "300",
                   "--quiet", cwd=tmp_path).returncode == 0
    out = tmp_path / "out"
    flipped, truncated, missing = out / "x/000001.npy", out / "labels/000002.npy", out / "x/000003.npy"
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 0x01  # one bit of the data, header intact: only the checksum sees it
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-8])

    proc = run_cli("verify", "out", "--quiet", cwd=tmp_path)

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    bad = [line for line in proc.stdout.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 2, proc.stdout
    assert bad[0].startswith(f"BAD {flipped}: checksum ")
    assert bad[1].startswith(f"BAD {truncated}: ")
    assert "2520 bytes found, the manifest says 2528" in bad[1]
    assert proc.stdout.splitlines()[-1] == "2 of 8 shards are bad"

    missing.unlink()
    proc = run_cli("verify", "out", "--quiet", cwd=tmp_path)
    assert proc.returncode == 1
    bad = sorted(line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("BAD "))
    assert bad == sorted(f"BAD {p}" for p in (flipped, truncated, missing))
    assert proc.stdout.splitlines()[-1] == "3 of 8 shards are bad"


# --- errors -----------------------------------------------------------------------


def _garbage(tmp_path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)


@pytest.mark.parametrize("case", [
    "info-missing", "verify-missing", "info-no-manifest", "info-truncated-shard",
    "convert-missing-source", "convert-object-dtype", "convert-truncated-npy",
    "convert-row-mismatch", "convert-bad-dtype", "convert-output-is-a-file",
    "convert-corrupt-npz",
])
def test_errors_are_one_line_without_traceback(tmp_path, sources, case):
    if case == "info-missing":
        args, fragments = ["info", "nothere"], [str(tmp_path / "nothere"), "no such dataset"]
    elif case == "verify-missing":
        args, fragments = ["verify", "nothere"], [str(tmp_path / "nothere"), "no such dataset"]
    elif case == "info-no-manifest":
        (tmp_path / "empty").mkdir()
        args, fragments = ["info", "empty"], [str(tmp_path / "empty"), "manifest.json"]
    elif case == "info-truncated-shard":
        assert run_cli("convert", "x.npy", "-o", "out", "--quiet", cwd=tmp_path).returncode == 0
        shard = tmp_path / "out" / "x" / "000000.npy"
        shard.write_bytes(shard.read_bytes()[:-1])
        args, fragments = ["info", "out"], [str(shard), "bytes found, the manifest says"]
    elif case == "convert-missing-source":
        args, fragments = ["convert", "nope.npy", "-o", "out"], ["nope.npy", "no such file"]
    elif case == "convert-object-dtype":
        np.save(tmp_path / "obj.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
        args, fragments = ["convert", "obj.npy", "-o", "out"], [
            "array 'obj': obj.npy: cannot be read as .npy", "Python objects in dtype"]
    elif case == "convert-truncated-npy":
        _garbage(tmp_path, "t.npy", (tmp_path / "x.npy").read_bytes()[:-10])
        args, fragments = ["convert", "t.npy", "-o", "out"], [
            "array 't': t.npy: cannot be read as .npy", "greater than file size"]
    elif case == "convert-row-mismatch":
        np.save(tmp_path / "short.npy", np.zeros(N - 1))
        args, fragments = ["convert", "x.npy", "short.npy", "-o", "out"], [
            "same number of rows", "'x': 1000", "'short': 999"]
    elif case == "convert-bad-dtype":
        _garbage(tmp_path, "r.bin", bytes(8))
        args, fragments = ["convert", "r.bin", "--dtype", "floaty", "-o", "out"], ["floaty"]
    elif case == "convert-output-is-a-file":
        _garbage(tmp_path, "taken", b"")
        args, fragments = ["convert", "x.npy", "-o", "taken"], [f"{tmp_path / 'taken'} exists and is not a folder"]
    elif case == "convert-corrupt-npz":
        _garbage(tmp_path, "bad.npz", b"this is not a zip archive" * 4)
        args, fragments = ["convert", "bad.npz", "-o", "out"], ["bad.npz: not a valid .npz archive"]
    command = args[0]

    proc = run_cli(*args, cwd=tmp_path)

    assert_one_error_line(proc, command, *fragments)
    assert proc.stdout == ""


def test_usage_errors_end_with_an_error_line(tmp_path):
    proc = run_cli("convert", "x.npy", cwd=tmp_path)  # -o missing

    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "npyseq convert: error: the following arguments are required: -o/--output")


# --- start-up -----------------------------------------------------------------------


HEAVY = ("keras", "tensorflow", "jax", "torch")


def test_cli_commands_do_not_import_keras_or_tensorflow(tmp_path, sources):
    script = (
        "import sys\n"
        "from npyseq.cli import main\n"
        "codes = [main(['convert', 'x.npy', 'labels.npy', '-o', 'out', '--quiet']),\n"
        "         main(['info', 'out']), main(['verify', 'out', '--quiet'])]\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('RESULT', codes, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "RESULT [0, 0, 0] []"


def test_python_m_npyseq_convert_imports_no_keras(tmp_path, sources):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "npyseq", "convert", "x.npy", "-o", "out",
         "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line]
    assert "npyseq.cli" in imported and "numpy" in imported  # the listing is real
    assert [m for m in imported if m.split(".")[0] in HEAVY] == []


def test_version(tmp_path):
    proc = run_cli("--version", cwd=tmp_path)

    assert proc.returncode == 0
    assert proc.stdout.strip() == f"npyseq {npyseq.__version__}"
