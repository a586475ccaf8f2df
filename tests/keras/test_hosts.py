"""Several hosts: seq.shard() gives each host its part of every global batch; a real two-process JAX fit."""

import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

import npyseq
from npyseq import DistributionError, InvalidArgumentError, RaggedSequence, ShardSequence
from npyseq.keras import hosts
from npyseq.order import HostSlice

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")
MODES = [False, "batches", "blocks", "global"]
N = 96


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    arrays = {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None] + 0.1,
              "id": np.arange(N), "tokens": [rng.integers(1, 20, k).astype(np.int32) for k in rng.integers(1, 13, N)]}
    return npyseq.write_shards(tmp_path_factory.mktemp("hosts") / "data", arrays, rows=20, progress=False)


def ids(seq, b):
    return seq[b][1]


# --- shard() without arguments: the hosts of the active distribution ---------------------------


def _distribution(processes=2, replicas=2, index=1, auto_shard=False):
    return types.SimpleNamespace(num_processes=processes, num_model_replicas=replicas, data_shard_id=index,
                                 auto_shard_dataset=auto_shard)


@pytest.fixture
def active(monkeypatch):
    """Make ``keras.distribution.distribution()`` return what the test sets."""
    import keras

    current = {"value": None}
    monkeypatch.setattr(keras.distribution, "distribution", lambda: current["value"])
    return current


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_the_hosts_parts_are_the_global_batch_in_every_mode(ds, mode, n):
    seq = ShardSequence(ds, x="x", y="id", batch_size=16, shuffle=mode, seed=5, block_size=3)
    seq.epoch = 1
    parts = [seq.shard(n, h) for h in range(n)]
    for p in parts:
        p.epoch = 1
    assert {len(p) for p in parts} == {len(seq)} == {6} and all(p.host == HostSlice(n, h) for h, p in enumerate(parts))
    for b in range(len(seq)):
        got = [ids(p, b) for p in parts]
        assert {len(g) for g in got} == {16 // n}
        assert np.array_equal(np.concatenate(got), ids(seq, b))  # host h: the h-th stretch of the sorted batch
        if mode in (False, "batches"):  # one contiguous read per host
            assert all(np.array_equal(g, np.arange(g[0], g[0] + len(g))) for g in got)


def test_a_keras_that_strides_batches_gets_each_hosts_part_from_the_strided_sequence(ds, active, monkeypatch):
    """Keras 3.16 (auto_shard_dataset=True) asks process p for items p, p + n, ...: the strided form serves them."""
    seq = ShardSequence(ds, x="x", y="id", batch_size=16, shuffle="global", seed=2)
    active["value"] = _distribution(processes=4, replicas=4, index=3, auto_shard=True)
    monkeypatch.setattr(hosts, "keras_strides", lambda: True)
    strided = seq.shard()  # the same on every process
    assert len(strided) == 4 * len(seq) and strided.host.strided
    for p in range(4):
        mine = [ids(strided, j) for j in range(p, len(strided), 4)]  # what Keras' striding reads on process p
        assert len(mine) == len(seq)
        assert all(np.array_equal(a, ids(seq.shard(4, p), s)) for s, a in enumerate(mine))


def test_shard_needs_batches_that_the_hosts_share_equally(ds):
    seq = ShardSequence(ds, x="x", y="id", batch_size=12, shuffle="global")
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "shard(5, 0): batch_size=12 is the global batch, which 5 hosts share equally; 12 is not a multiple "
            "of 5: use a batch_size that is (e.g. 10)")):
        seq.shard(5, 0)
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "shard(4, 1): the last global batch has 10 rows (90 rows, batch_size=16), which 4 hosts cannot share "
            "equally, and every host must run the same steps with the same shapes: use drop_remainder=True (it "
            "leaves out 10 rows an epoch")):
        seq.with_options(batch_size=16).subset(0, 90).shard(4, 1)
    last = seq.with_options(batch_size=16).subset(0, 90).shard(2, 1)  # 10 rows: 5 for each host
    assert len(last[5][1]) == 5 and len(last) == 6
    host = seq.with_options(batch_size=16, drop_remainder=True).subset(0, 90).shard(4, 1)
    assert len(host) == 5 and {len(ids(host, b)) for b in range(5)} == {4}
    with pytest.raises(InvalidArgumentError, match=r"^setting batch_size=18: batch_size=18 is the global batch"):
        host.batch_size = 18  # a setting changed later is checked against the hosts too
    with pytest.raises(InvalidArgumentError, match=r"^with_options\(drop_remainder\): the last global batch has 10"):
        host.with_options(drop_remainder=False)
    with pytest.raises(InvalidArgumentError, match=r"^index must be in \[0, 4\) for num_hosts=4, got 4$"):
        seq.shard(4, 4)
    with pytest.raises(InvalidArgumentError, match=r"^num_hosts must be a positive int, got 0$"):
        seq.shard(0, 0)
    with pytest.raises(InvalidArgumentError, match=r"^shard takes num_hosts and index, or neither .*got "
                                                   r"num_hosts=2, index=None$"):
        seq.shard(2)
    with pytest.raises(InvalidArgumentError, match=r"is sharded already \(host 1 of 4\): shard the unsharded"):
        host.shard(2, 0)


def test_views_of_a_sharded_sequence_are_the_same_views_sharded(ds):
    seq = ShardSequence(ds, x="x", y="id", batch_size=8, shuffle="blocks", seed=3, block_size=2)
    host = seq.shard(2, 1)
    train, val = host.split(0.5, shuffle_rows=True, seed=4)
    g_train, g_val = seq.split(0.5, shuffle_rows=True, seed=4)
    for view, whole in ((train, g_train), (val, g_val), (host.subset(8, 72), seq.subset(8, 72)),
                        (host.with_options(shuffle="global"), seq.with_options(shuffle="global"))):
        assert view.host == HostSlice(2, 1) and len(view) == len(whole)
        assert all(np.array_equal(ids(view, b), ids(whole, b)[4:]) for b in range(len(whole)))
        assert np.array_equal(view.global_batch_rows(1), whole.batch_rows(1))
    assert "host='host 1 of 2'" in repr(host) and seq.host is None
    back = pickle.loads(pickle.dumps(host))  # process workers get the host slice too
    assert back.host == host.host and np.array_equal(ids(back, 3), ids(host, 3))


def test_a_hosts_transform_draws_its_own_numbers_and_one_host_is_the_unsharded_sequence(ds):
    seq = ShardSequence(ds, x="x", y="id", batch_size=16, shuffle="global", transform=_noise)
    one = seq.shard(1, 0)
    assert all(np.array_equal(one[b][0], seq[b][0]) for b in range(len(seq)))
    a, b = seq.shard(2, 0)[2][0], seq.shard(2, 1)[2][0]
    noise = lambda s: s[2][0] - s.dataset["x"][s.batch_rows(2)]
    assert not np.allclose(noise(seq.shard(2, 0)), noise(seq.shard(2, 1)))
    assert a.shape == b.shape == (8, 4)


def _noise(batch, rng):
    return (batch[0] + rng.normal(size=batch[0].shape).astype("float32"),) + batch[1:]


@pytest.mark.parametrize("bucket", [False, True])
def test_ragged_hosts_pad_their_parts_to_the_global_batch(ds, bucket):
    seq = RaggedSequence(ds, x="tokens", y="id", batch_size=16, shuffle="global", seed=1, bucket=bucket, bucket_pool=2)
    parts = [seq.shard(4, h) for h in range(4)]
    for b in range(len(seq)):
        tokens, rows = seq[b]
        got = [p[b] for p in parts]
        assert {g[0].shape for g in got} == {(4, tokens.shape[1])}  # the same shape on every host
        assert np.array_equal(np.concatenate([g[0] for g in got]), tokens)
        assert np.array_equal(np.concatenate([g[1] for g in got]), rows)


def test_shard_without_arguments_takes_the_distributions_hosts(ds, active, monkeypatch):
    seq = ShardSequence(ds, x="x", y="id", batch_size=16)
    with pytest.raises(DistributionError, match=re.escape(
            "seq.shard() found no distributed setup to take the hosts from: no Keras distribution is set "
            "(keras.distribution.distribution() is None) and ")) as info:
        seq.shard()
    assert "keras.distribution.initialize(...)" in str(info.value) and "seq.shard(num_hosts, index)" in str(info.value)
    active["value"] = _distribution(index=1)
    assert seq.shard().host == HostSlice(2, 1)
    active["value"] = _distribution(processes=1, replicas=4, index=0)  # one process: all of every batch
    assert seq.shard().host == HostSlice(1, 0)
    active["value"] = _distribution(processes=4, replicas=2, index=1)  # 2 processes per model replica
    assert seq.shard().host == HostSlice(2, 1)
    # Keras 3.15 refuses a PyDataset when it would auto-shard; 3.16 strides batch indices itself.
    active["value"] = _distribution(auto_shard=True)
    monkeypatch.setattr(hosts, "keras_strides", lambda: False)
    with pytest.raises(DistributionError, match=r"auto_shard_dataset=True on 2 processes, and Keras .* refuses a "
                                                 r"PyDataset then .*: make it with auto_shard_dataset=False"):
        seq.shard()
    monkeypatch.setattr(hosts, "keras_strides", lambda: True)
    assert seq.shard().host == HostSlice(2, None)
    # Without a distribution, on the JAX backend: JAX's processes.
    import keras

    active["value"] = None
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(process_count=lambda: 3, process_index=lambda: 2))
    assert ShardSequence(ds, x="x", y="id", batch_size=15).shard().host == HostSlice(3, 2)


def test_keras_strides_is_read_from_the_enqueuer(monkeypatch):
    from keras.src.trainers.data_adapters import py_dataset_adapter

    class Enqueuer316:
        def __init__(self, py_dataset, workers=1, use_multiprocessing=False, max_queue_size=10, shuffle=False,
                     num_data_shards=1, data_shard_id=0):
            pass

    import keras

    installed = hosts.keras_strides()
    assert installed == (tuple(int(p) for p in keras.version().split(".")[:2]) >= (3, 16))
    monkeypatch.setattr(py_dataset_adapter, "OrderedEnqueuer", Enqueuer316)
    assert hosts.keras_strides() is True


def test_an_epoch_refuses_a_sequence_the_distribution_would_shard_twice_or_not_at_all(ds, active, monkeypatch):
    seq = ShardSequence(ds, x="x", y="id", batch_size=16)
    explicit = seq.shard(2, 0)
    explicit.on_epoch_begin()  # no distribution: nothing to check
    active["value"] = _distribution(auto_shard=True)
    monkeypatch.setattr(hosts, "keras_strides", lambda: True)
    strided = seq.shard()
    with pytest.raises(DistributionError, match=r"serves host 0 of 2, but Keras .* also strides its batches over "
                                                 r"the 2 processes \(auto_shard_dataset=True\): that shards twice"):
        explicit.on_epoch_begin()
    strided.on_epoch_begin()
    active["value"] = _distribution(auto_shard=False)
    with pytest.raises(DistributionError, match=r"serves all 2 host parts in turn .* does not \(auto_shard_dataset="
                                                 r"False.*every process would read every part"):
        strided.on_epoch_begin()
    explicit.on_epoch_begin()
    active["value"] = _distribution(processes=4, replicas=4, index=0)
    with pytest.raises(DistributionError, match=r"serves host 0 of 2, but the active SimpleNamespace has 4 data "
                                                 r"shards over 4 processes"):
        explicit.on_epoch_begin()


# --- the real thing: two JAX processes on loopback --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, out) -> subprocess.Popen:
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, os.path.join(HERE, "hosts_script.py"), *args], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_jax_processes_train_like_one_on_the_global_batch(ds, tmp_path):
    pytest.importorskip("jax")
    cases = ["global", "blocks", "ragged"]
    port, procs = _free_port(), []
    (tmp_path / "hosts").mkdir()
    (tmp_path / "one").mkdir()
    runs = [("hosts", 2, 0, port), ("hosts", 2, 1, port), ("one", 1, 0, 0)]
    try:
        for folder, n, index, p in runs:
            log = open(tmp_path / f"{folder}-{index}.log", "wb")
            procs.append((_start([str(ds.path), str(tmp_path / folder), ",".join(cases), str(n), str(index), str(p)],
                                 log), log))
        for proc, _ in procs:
            proc.wait(timeout=360)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    logs = {f.name: f.read_text(errors="replace")[-3000:] for f in tmp_path.glob("*.log")}
    assert [proc.returncode for proc, _ in procs] == [0, 0, 0], logs
    host = [np.load(tmp_path / "hosts" / f"process-{i}.npz") for i in range(2)]
    one = np.load(tmp_path / "one" / "process-0.npz")
    chosen = [json.loads((tmp_path / "hosts" / f"process-{i}.json").read_text()) for i in range(2)]
    assert [c["processes"] for c in chosen] == [2, 2]
    assert [c["hosts"] for c in chosen] == [{case: [2, i] for case in cases} for i in range(2)]
    for case in cases:
        steps = [h[f"{case}/rows"] for h in host]
        whole = one[f"{case}/rows"]
        assert len(whole) > 1 and all(len(s) == len(whole) for s in steps)
        for a, b, w in zip(*steps, whole):
            assert np.array_equal(a[:2], w[:2]) and np.array_equal(b[:2], w[:2])  # the same (epoch, step)
            assert len(a) == len(b) == 2 + 8 and not set(a[2:]) & set(b[2:])   # disjoint halves
            assert np.array_equal(np.concatenate([a[2:], b[2:]]), w[2:])       # together the global batch
        weights = [k for k in one.files if k.startswith(f"{case}/w")]
        assert weights
        for k in weights:
            np.testing.assert_allclose(host[0][k], one[k], atol=1e-5, rtol=0)
            np.testing.assert_array_equal(host[0][k], host[1][k])


def test_each_host_opens_only_the_shards_its_stretch_of_a_batch_lies_in(ds):
    """The counts the README's "Several hosts" shows, on 96 rows in 5 shards of 20 (benchmarks.studies.hosts)."""
    from benchmarks.studies.hosts import shard_counts

    for mode in ("global", "blocks"):
        counts = shard_counts(ds, 20, 16, mode)
        assert [c["hosts"] for c in counts] == [1, 2, 4, 8]
        per_step = [c["shards_per_step"] for c in counts]
        assert per_step == sorted(per_step, reverse=True) and per_step[-1] < per_step[0]
        assert all(c["shards_per_epoch"] <= 5 for c in counts)
    # "global": a batch of 16 random rows of 96 touches every shard; host 0 of 8 (2 rows) touches 1 or 2.
    counts = shard_counts(ds, 20, 16, "global")
    assert counts[0]["shards_per_step"] > 4 and counts[0]["shards_per_epoch"] == 5
    assert 1.0 <= counts[-1]["shards_per_step"] <= 2.0 and counts[-1]["shards_per_epoch"] < 5
