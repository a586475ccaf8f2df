"""The benchmark suite (``benchmarks/suite/``), checked for correctness at a tiny size (not for speed).

Every method of ``benchmarks/suite/methods.py`` must feed ``fit`` the same rows:
over each epoch, every method's pipeline (driven through Keras'
``EpochIterator``, as the suite measures it) yields exactly the multiset of
rows ``(x row, y)`` of the dataset. The runner, the I/O figures, the targets
and the report are run end to end on the tiny dataset.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.common import ROOT, parse_result
from benchmarks.suite import child, data as bench_data, methods, report, targets
from npyseq.order import SHUFFLE_MODES
from tools.synthetic import CLASSES, ROW_BYTES, ROW_SHAPE

ROWS, BATCH = 1000, 64  # a partial last batch, several shards


def start_job(job: dict, backend: str = "numpy") -> subprocess.Popen:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "benchmarks.suite.child", json.dumps(job)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def job_result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    result = parse_result(stdout)
    assert result is not None, stdout[-2000:]
    return result


def run_job(job: dict, backend: str = "numpy") -> dict:
    return job_result(start_job(job, backend))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from benchmarks.suite.io import convert_vs_cp

    d = bench_data.Data(str(tmp_path_factory.mktemp("bench") / "tiny"), ROWS)
    assert bench_data.make_sources(d, chunk=300)
    assert not bench_data.make_sources(d)  # reused
    conv = convert_vs_cp(d, shard_size="600KB", repeats=1)
    assert conv["bytes"] == sum(os.path.getsize(f) for f in d.source_files())
    assert conv["convert_seconds"] > 0 and conv["cp_sync_seconds"] >= conv["cp_seconds"] > 0
    assert not os.path.exists(os.path.join(d.folder, "cp-copy"))
    if methods.available("streaming")[0]:
        assert bench_data.make_mds(d) and not bench_data.make_mds(d)  # reused
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The augmentation workload's dataset: uint8 images of 64x64x3, shards and (where streaming is) MDS."""
    from benchmarks.suite.io import convert_vs_cp

    d = bench_data.Data(str(tmp_path_factory.mktemp("bench") / "images"), ROWS // 2, "images")
    assert bench_data.make_sources(d, chunk=300)
    convert_vs_cp(d, shard_size="2MB", repeats=1)
    if methods.available("streaming")[0]:
        assert bench_data.make_mds(d)
    return d


def all_specs() -> list[methods.Spec]:
    specs = []
    for method, settings in methods.METHODS.items():
        if method in methods.REFERENCES or not methods.available(method)[0]:
            continue
        for setting in settings:
            modes = SHUFFLE_MODES if method == "npyseq" else [False, True] if method == "streaming" else [False]
            specs += [methods.Spec(method, setting, mode, batch_size=BATCH) for mode in modes]
    return specs


def augment_specs() -> list[methods.Spec]:
    return [s for s in (methods.Spec("npyseq", "threads", "global", batch_size=BATCH, augment=True),
                        methods.Spec("npyseq", "processes", "global", batch_size=BATCH, augment=True),
                        methods.Spec("torch", "processes", batch_size=BATCH, augment=True),
                        methods.Spec("streaming", "processes", True, batch_size=BATCH, augment=True))
            if methods.available(s.method)[0]]


def test_sources_and_shards_hold_the_same_rows(data):
    import npyseq

    x, y = bench_data.read_rows(data)
    assert x.shape == (ROWS,) + ROW_SHAPE and x.dtype == np.float32
    assert y.shape == (ROWS,) and set(np.unique(y)) <= set(range(CLASSES))
    ds = npyseq.open_shards(data.shards)
    assert ds.num_shards > 1
    np.testing.assert_array_equal(ds["x"][:], x)
    np.testing.assert_array_equal(ds["y"][:], y)
    assert data.nbytes == ROWS * ROW_BYTES


@pytest.mark.slow
def test_every_method_yields_every_row_exactly_once_per_epoch(data):
    specs = all_specs()
    assert {s.method for s in specs} >= {"npyseq", "minimal", "numpy", "tf.data", "generator", "raw_bytes"}
    x, y = bench_data.read_rows(data)
    expected = child.row_digest([(x, y)])
    # A reader that loses or repeats a row, or pairs it with another row's label, changes the digest.
    assert child.row_digest([(x[1:], y[1:]), (x[:1], y[:1])]) == expected
    assert child.row_digest([(x, np.roll(y, 1))]) != expected
    assert child.row_digest([(np.concatenate([x, x[:1]]), np.concatenate([y, y[:1]]))]) != expected

    # Two children at once (2 cores): the process-worker specs spend most of their time starting pools.
    jobs = [start_job({"job": "check", "data": data.to_json(), "specs": [s.to_json() for s in part],
                       "num_epochs": 2}) for part in (specs[0::2], specs[1::2])]
    result = {}
    for job in jobs:
        result.update(job_result(job))
    assert set(result) == {s.label for s in specs}
    for label, epochs in result.items():
        assert len(epochs) == 2, label
        for e in epochs:
            assert e["rows"] == ROWS, (label, e)
            assert e["max_batch"] == BATCH, (label, e)
            assert e["digest"] == expected, f"{label} does not yield the dataset's rows"


@pytest.mark.slow
def test_every_augmented_pipeline_yields_every_label_once_per_epoch_as_56x56_uint8(images):
    from benchmarks.suite.augment import CROP

    specs = augment_specs()
    assert {s.method for s in specs} >= {"npyseq"}
    _, y = bench_data.read_rows(images)
    expected = child.label_digest([y])
    result = run_job({"job": "check", "data": images.to_json(), "specs": [s.to_json() for s in specs],
                      "num_epochs": 2})
    assert set(result) == {s.label for s in specs}
    for label, epochs in result.items():
        assert len(epochs) == 2, label
        for e in epochs:
            assert (e["rows"], e["max_batch"]) == (images.rows, BATCH), (label, e)
            assert (e["x_shape"], e["x_dtype"]) == ([CROP, CROP, 3], "uint8"), (label, e)
            assert e["labels"] == expected, f"{label} does not yield the dataset's labels"


def test_augment_crops_flips_and_gamma_corrects_each_row_as_drawn_from_the_generator():
    from benchmarks.suite.augment import CROP, GAMMA, augment

    x = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    y = np.arange(40)
    out, labels = augment((x, y), np.random.default_rng(7))
    assert out.shape == (40, CROP, CROP, 3) and out.dtype == np.uint8 and labels is y
    rng = np.random.default_rng(7)  # the same draws, in the same order
    tops, lefts = rng.integers(0, 64 - CROP + 1, 40), rng.integers(0, 64 - CROP + 1, 40)
    flips, gammas = rng.random(40) < 0.5, rng.uniform(*GAMMA, 40)
    assert flips.any() and not flips.all() and (gammas < 1).any() and (gammas > 1).any()
    for i in range(40):
        crop = x[i, tops[i]:tops[i] + CROP, lefts[i]:lefts[i] + CROP]
        if flips[i]:
            crop = crop[:, ::-1]
        expected = np.floor(255 * (crop / 255.0) ** gammas[i] + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(out[i], expected, err_msg=str(i))
    flat, _ = augment((np.full((2, 64, 64, 3), 255, np.uint8), y[:2]), np.random.default_rng(3))
    assert (flat == 255).all()  # levels 0 and 255 stay put whatever the gamma
    dark, _ = augment((np.zeros((2, 64, 64, 3), np.uint8), y[:2]), np.random.default_rng(3))
    assert (dark == 0).all()
    again, _ = augment((x, y), np.random.default_rng(7))
    np.testing.assert_array_equal(again, out)


@pytest.mark.slow
def test_streaming_reads_local_mds_without_importing_torchvision_or_transformers(tmp_path):
    pytest.importorskip("streaming")
    if not methods.available("streaming")[0]:
        pytest.skip(methods.available("streaming")[1])
    d = bench_data.Data(str(tmp_path / "t"), 300)
    bench_data.make_sources(d, chunk=100)
    code = ("import sys, numpy as np; from benchmarks.suite import data, peers; "
            f"d = data.Data({d.folder!r}, 300); assert data.make_mds(d); "
            "loader = peers.streaming_loader(d.mds, rows=300, batch_size=64, workers=0, shuffle=True, seed=0, "
            "augmented=False); ys = np.concatenate([y.numpy() for _, y in loader]); peers.cleanup(); "
            "print(sorted(ys.tolist()) == sorted(np.load(d.y_npy).tolist()), "
            "[m for m in ('torchvision', 'transformers', 'streaming.vision') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True []"


@pytest.mark.slow
def test_pipeline_and_fit_jobs_then_targets_and_report(data, tmp_path):
    spec = methods.Spec("npyseq", "sync", "blocks", batch_size=BATCH)
    fit_job = start_job({"job": "fit", "model": "mlp", "data": data.to_json(), "epochs": ["warmup", "warm"],
                         "spec": methods.Spec("model_alone", batch_size=BATCH).to_json()}, backend="tensorflow")
    pipe = run_job({"job": "pipeline", "spec": spec.to_json(), "data": data.to_json(),
                    "epochs": ["cold", "warm"], "min_warm_seconds": 0.05})
    kinds = [e["cache"] for e in pipe["epochs"]]
    assert kinds[0] == "cold" and set(kinds[1:]) == {"warm"}
    assert all(e["rows"] == ROWS and e["complete"] for e in pipe["epochs"])
    assert pipe["peak_anon_bytes"] > 0

    fit = job_result(fit_job)
    assert [e["cache"] for e in fit["epochs"]] == ["warmup", "warm"]
    assert fit["backend"] == "tensorflow" and fit["rows"] == 16 * BATCH

    from benchmarks.suite.io import read_loop

    loop = read_loop(data, repeats=1, batch_size=BATCH, min_seconds=0.0)
    assert set(loop["warm"]) == {"False", "batches", "blocks", "global"}
    assert loop["memcpy_gb_per_s"] > 0 and loop["dd"]["gb_per_s"] > 0

    rep = {"suite": "test", "command": "pytest", "started": "now", "seconds": 1.0,
           "config": {"batch_size": BATCH, "memory_spec": spec.to_json()},
           "machine": {"cpus": 2, "cpu_model": "x", "memory_bytes": 2**30, "load_average_start": [0.0]},
           "versions": {}, "datasets": {"1x": {"rows": ROWS, "bytes": data.nbytes},
                                        "4x": {"rows": ROWS, "bytes": data.nbytes}},
           "read_loop": loop, "conversion": {}, "skipped_methods": {"grain": "not installed"},
           "runs": [{"phase": "pipeline", "size": "1x", "spec": spec.to_json(), "label": spec.label,
                     "model": None, "capped": False, "status": "ok", "result": pipe},
                    {"phase": "pipeline", "size": "4x", "spec": spec.to_json(), "label": spec.label,
                     "model": None, "capped": False, "status": "ok", "result": pipe},
                    {"phase": "fit", "size": "1x", "spec": methods.Spec("model_alone").to_json(),
                     "label": "reference: model alone", "model": "mlp", "capped": False, "status": "ok",
                     "result": fit},
                    {"phase": "pipeline", "size": "4x", "spec": methods.Spec("numpy").to_json(),
                     "label": "numpy", "model": None, "capped": True, "status": "killed",
                     "cgroup_max_usage_bytes": 2**20}]}
    aug = methods.Spec("npyseq", "processes", "global", augment=True)
    rep["runs"].append({"phase": "augment", "size": "img", "spec": aug.to_json(), "label": aug.label,
                        "model": None, "capped": False, "status": "ok", "result": pipe})
    rows = targets.evaluate(rep)
    ids = {r["id"] for r in rows}
    assert ids == {"P1", "P1b", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9"}
    p9 = [r for r in rows if r["id"] == "P9"]
    assert [r["measured"] for r in p9] == [None, None]  # threads and torch not measured
    assert p9[0]["detail"].startswith(f"{targets.warm_rows_per_s(rep['runs'][-1]):,.0f} vs n/a rows/s")
    # What was not measured is never reported as met.
    assert all(not r["met"] for r in rows if r["measured"] is None)
    p7 = [r for r in rows if r["id"] == "P7" and "grain" in r["what"]]
    assert p7 and "skipped" in p7[0]["detail"]
    rep["targets"] = rows
    rep["capped"] = {"available": True, "reason": "", "cap_bytes": 2**20, "dataset_bytes": data.nbytes,
                     "data_over_cap": data.nbytes / 2**20}
    text = report.markdown(rep)
    assert "| P1 |" in text and "| numpy | pipeline | **killed** (out of memory) |" in text
    assert f"| {spec.label} | pipeline |" in text  # memory at 1x and 4x
    assert "### Augmentation workload" in text and f"| {aug.label} | " in text
    paths = report.plots(rep, str(tmp_path / "suite-test"))
    if importlib.util.find_spec("matplotlib") is None:  # the bench extra; make test does not install it
        assert paths == ["(matplotlib is not installed: no plots)"]
    else:
        assert {os.path.basename(p) for p in paths} == {"suite-test-rows.png", "suite-test-memory.png",
                                                         "suite-test-augment.png", "suite-test-fit.png"}
        assert all(os.path.getsize(p) > 1000 for p in paths)


# -- the folder itself: provenance of every result, the README's map, modules that run ---------------

RESULTS = os.path.join(ROOT, "benchmarks", "results")
STUDIES = os.path.join(ROOT, "benchmarks", "studies")


def study_modules() -> list[str]:
    return sorted(f"benchmarks.studies.{f[:-3]}" for f in os.listdir(STUDIES)
                  if f.endswith(".py") and f != "__init__.py")


def test_every_results_file_says_which_commit_date_and_command_made_it():
    import datetime
    import re

    files = sorted(f for f in os.listdir(RESULTS) if f.endswith(".json"))
    assert {"suite-quick.json", "padding.json", "verify_cost.json"} <= set(files)
    for name in files:
        with open(os.path.join(RESULTS, name)) as f:
            prov = json.load(f).get("provenance")
        assert prov is not None, f"{name}: no provenance; write results with benchmarks.common.write_result"
        assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]), f"{name}: commit {prov['commit']!r}"
        assert datetime.datetime.fromisoformat(prov["date"]).year >= 2026, f"{name}: date {prov['date']!r}"
        words = prov["command"].split()
        assert words[:2] == ["python", "-m"], f"{name}: command {prov['command']!r}"
        assert importlib.util.find_spec(words[2]) is not None, f"{name}: {words[2]} is not a module"


def test_the_readme_table_names_every_script_and_every_results_file():
    import re

    with open(os.path.join(ROOT, "benchmarks", "README.md")) as f:
        text = f.read()
    listed = set(re.findall(r"^\| `python -m (benchmarks\.[\w.]+)", text, re.M))
    assert listed == set(study_modules()) | {"benchmarks.suite"}
    for name in os.listdir(RESULTS):
        if name.endswith(".json"):
            assert f"`{name}`" in text, f"benchmarks/README.md does not say which script writes {name}"


def test_the_suite_and_every_study_run_as_modules_and_answer_help():
    modules = ["benchmarks.suite", *study_modules()]
    procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in modules}
    for m, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"python -m {m} --help: {err[-2000:]}"
        assert out.startswith(f"usage: python -m {m} "), out[:200]
    for folder, _, files in os.walk(os.path.join(ROOT, "benchmarks")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    assert "sys.path" not in f.read(), f"{name}: run it as a module instead of editing sys.path"


def test_the_modules_children_import_load_neither_npyseq_nor_keras():
    # The suite's children measure their own memory, and Grain's spawned workers import
    # baselines to unpickle MemmapRows: none of this may pull in npyseq, Keras or a backend.
    code = ("import sys, benchmarks.common, benchmarks.suite.child, benchmarks.suite.baselines; "
            "print([m for m in ('npyseq', 'keras', 'tensorflow', 'torch', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_write_result_puts_provenance_first_and_prints_the_table(tmp_path, capsys):
    import datetime

    from benchmarks.common import write_result

    path = str(tmp_path / "r.json")
    command = "python -m benchmarks.studies.padding --rows 10"
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    assert write_result(path, {"figure": 1.5}, table="| a |\n| --- |", command=command) == path
    with open(path) as f:
        doc = json.load(f)
    assert list(doc) == ["provenance", "figure", "machine"]
    prov = doc["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert prov["commit"] == head and prov["command"] == command and isinstance(prov["modified"], list)
    assert before <= datetime.datetime.fromisoformat(prov["date"]) <= datetime.datetime.now(datetime.timezone.utc)
    assert doc["machine"]["cpus"] == os.cpu_count() and doc["figure"] == 1.5
    assert capsys.readouterr().out == f"| a |\n| --- |\n\nwrote {path}\n"


def test_markdown_table_aligns_each_column_and_refuses_a_wrong_alignment():
    from benchmarks.common import markdown_table

    assert markdown_table(["mode", "GB/s"], [("`global`", "10.86"), ("`False`", 23.9)], "lr") == (
        "| mode | GB/s |\n| --- | ---: |\n| `global` | 10.86 |\n| `False` | 23.9 |")
    with pytest.raises(ValueError, match=r"align needs one of 'l'/'r' per column \(2\), got 'l'"):
        markdown_table(["mode", "GB/s"], [], "l")


def test_shard_memmaps_copy_and_gather_the_rows_npyseq_reads(tmp_path):
    import npyseq
    from benchmarks.common import ShardMemmaps, drop_cache

    x = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    with npyseq.ShardWriter(tmp_path / "ds", shard_size="1KB") as w:
        w.append(x=x, y=np.arange(300))
    ds = w.dataset
    assert ds.num_shards > 3
    maps = ShardMemmaps(ds, "x")
    for a, b in [(0, 300), (10, 70), (61, 62), (299, 300)]:  # across shard boundaries and within one
        np.testing.assert_array_equal(maps.rows(a, b), x[a:b])
    idx = np.random.default_rng(0).permutation(300)[:97]
    np.testing.assert_array_equal(maps.take(idx), x[idx])
    drop_cache(ds)  # closes the dataset first; it reopens on the next read
    np.testing.assert_array_equal(ds["x"][idx], x[idx])


def test_peak_memory_counts_shared_memory_apart_from_anonymous_memory():
    # Batches that process workers hand over through shared memory are shmem pages: the suite's
    # memory figures give them next to the anonymous ones, never inside them.
    import mmap

    from tools.memwatch import PeakMemory

    with PeakMemory() as before:
        pass
    shared = mmap.mmap(-1, 64 * 2**20)  # MAP_SHARED | MAP_ANONYMOUS, as a memfd or /dev/shm segment maps
    shared.write(b"x" * (64 * 2**20))
    with PeakMemory() as after:
        pass
    shared.close()
    assert after.main_shmem_bytes - before.main_shmem_bytes >= 64 * 2**20
    assert after.shmem_bytes - before.shmem_bytes >= 64 * 2**20
    assert after.max_bytes - before.max_bytes < 16 * 2**20  # not anonymous memory


def test_peak_memory_spends_at_most_its_duty_of_a_core_sampling(monkeypatch):
    # A sample walks the page tables of every process of the tree (100-250 ms with workers mapping
    # 1 GB): sampled every 0.1 s, it would take a core from the run it measures.
    from tools import memwatch

    calls = []

    def slow_rollup(pid):
        calls.append(pid)
        time.sleep(0.05)
        return 0, 0

    monkeypatch.setattr(memwatch, "_rollup", slow_rollup)
    with memwatch.PeakMemory(interval=0.01, duty=0.25):  # waits 3x the last sample: one per 0.2 s
        time.sleep(1.0)
    samples = calls.count(os.getpid())  # one call a process a sample; earlier tests may leave children
    assert 3 <= samples <= 9  # 2 (enter, exit) + about 5; every 0.01 s it would be about 17
