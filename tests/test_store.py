"""The HDF5 result store: round trip, layout, read-only, crash/resume, atomic finish, shard joins."""
from __future__ import annotations

import datetime
import hashlib
import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy
import pytest
import yaml

import lrpflow
from lrpflow.errors import ConfigError, LrpflowError, ShapeError
from lrpflow.store import (
    PARTIAL_SUFFIX, SCHEMA, SCHEMA_VERSION, ResultStore, _lookup3, config_diff, join, join_main, load, sha256_file,
)

# One writer script serves the crash tests (run as a child process) and, loaded with
# runpy, gives the test the very same data: every row's values are a function of its row
# number, so a run resumed at any row must produce the uninterrupted run's file.
WRITER = textwrap.dedent('''
    import os, signal, sys, time
    import numpy
    from lrpflow.store import ResultStore

    SHAPE, CLASSES, NODES, METRICS, INTER = (6, 5, 2), 4, ("conv", "fc/out"), ("flip_auc",), {"fc/out": (3,)}
    CONFIG = "lrp:\\n  rule: epsilon\\n  epsilon: 0.01\\ndata:\\n  batch_size: 5\\n"
    MODEL = "ab" * 32

    def dataset(n):
        rng = numpy.random.default_rng(2024)
        return {
            "relevance": rng.normal(size=(n, *SHAPE)).astype(numpy.float32),
            "logits": rng.normal(size=(n, CLASSES)),
            "target": rng.integers(0, CLASSES, n),
            "label": rng.integers(0, CLASSES, n),
            "index": numpy.arange(n) + 1000,
            "conservation": rng.random(n),
            "metrics": {"flip_auc": rng.random(n)},
            "ledger": {node: LedgerEntry(rng.normal(size=n), rng.normal(size=n)) for node in NODES},
            "intermediate": {"fc/out": rng.normal(size=(n, 3)).astype(numpy.float32)},
        }

    class LedgerEntry:
        def __init__(self, entering, leaving):
            self.entering, self.leaving = entering, leaving

    def rows(data, a, b):
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out[key] = {k: (LedgerEntry(v.entering[a:b], v.leaving[a:b]) if isinstance(v, LedgerEntry)
                                else v[a:b]) for k, v in value.items()}
            else:
                out[key] = value[a:b]
        return out

    def open_store(path, chunk):
        return ResultStore.create(path, input_shape=SHAPE, n_classes=CLASSES, ledger_nodes=NODES,
                                  intermediate=INTER, metrics=METRICS, config=CONFIG, model_sha256=MODEL,
                                  backend="numpy", dtype="float32", chunk_rows=chunk)

    def write(store, data, n, batch, sleep=0.0, report=None):
        for a in range(store.next_row, n, batch):
            store.append(rows(data, a, min(n, a + batch)))
            if report is not None:
                report.write(f"{store.next_row}\\n")
                report.flush()
            time.sleep(sleep)

    def main(path, n, batch, chunk, sleep, kill_on_commit):
        data = dataset(n)
        with open_store(path, chunk) as store:
            if kill_on_commit >= 0:  # die after a batch's rows are written, before the counter moves
                calls = []
                commit = ResultStore._commit
                def dying_commit(self, rows):
                    calls.append(rows)
                    if len(calls) > kill_on_commit:
                        os.kill(os.getpid(), signal.SIGKILL)
                    commit(self, rows)
                ResultStore._commit = dying_commit
            write(store, data, n, batch, sleep, sys.stdout)
            store.finish()

    if __name__ == "__main__":
        a = sys.argv[1:]
        main(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]), int(a[5]))
''')

N_ROWS = 40


@pytest.fixture
def writer(tmp_path):
    """(path of the writer script, its namespace: dataset(), write(), open_store(), ...)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return str(script), runpy.run_path(str(script), run_name="writer")


def reference(tmp_path, w, n=N_ROWS, batch=5, chunk=5) -> str:
    """An uninterrupted run's store."""
    path = str(tmp_path / "reference.h5")
    with w["open_store"](path, chunk) as store:
        w["write"](store, w["dataset"](n), n, batch)
        store.finish()
    return path


def assert_same_store(path, ref):
    with ResultStore.open(path) as a, ResultStore.open(ref) as b:
        assert a.complete and b.complete
        assert len(a) == len(b)
        assert a.fields == b.fields
        da, db = a.read(), b.read()
        for field in b.fields:
            numpy.testing.assert_array_equal(da[field], db[field], err_msg=field)
        for name in ("relevance", "logits", "index", "ledger/entering", "intermediate/fc%2Fout"):
            assert a.file[name].shape == b.file[name].shape  # no row beyond rows_complete either
        assert a.config == b.config


def spawn(script, path, *, n=N_ROWS, batch=5, chunk=5, sleep=0.0, kill_on_commit=-1):
    return subprocess.Popen([sys.executable, script, path, str(n), str(batch), str(chunk), str(sleep),
                             str(kill_on_commit)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def small_store(path, **kw):
    args = dict(input_shape=(3, 2), n_classes=3, chunk_rows=4, config={"a": 1}, model_sha256="0" * 64)
    args.update(kw)
    return ResultStore.create(path, **args)


def small_batch(rng, n, **extra):
    out = {"relevance": rng.normal(size=(n, 3, 2)), "logits": rng.normal(size=(n, 3)),
           "target": rng.integers(0, 3, n)}
    out.update(extra)
    return out


def finished_small(path, rng, rows, **kw):
    with small_store(path, **kw) as store:
        store.append(small_batch(rng, rows, index=numpy.arange(rows)))
        store.finish()
    return path


# --------------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------------
def test_round_trip_values_and_attributes(tmp_path, writer):
    _, w = writer
    model_file = tmp_path / "model.txt"
    model_file.write_bytes(b"Linear 2 2\n1 2 3 4\n0 0\n")
    sha = sha256_file(model_file)
    assert sha == hashlib.sha256(model_file.read_bytes()).hexdigest()
    data = w["dataset"](13)
    config = {"lrp": {"rule": "epsilon", "epsilon": 0.01}, "data": {"batch_size": 5}}
    path = str(tmp_path / "results.h5")
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    with ResultStore.create(path, input_shape=w["SHAPE"], n_classes=w["CLASSES"], ledger_nodes=w["NODES"],
                            intermediate=w["INTER"], metrics=w["METRICS"], config=config, model_sha256=sha,
                            backend="numpy", dtype="float64", attrs={"experiment": "demo", "params": {"k": 1}},
                            chunk_rows=5) as store:
        assert store.next_row == 0 and len(store) == 0 and store.writable
        assert store.append(w["rows"](data, 0, 5)) == slice(0, 5)
        assert store.append(w["rows"](data, 5, 10)) == slice(5, 10)
        assert store.append(w["rows"](data, 10, 13)) == slice(10, 13)
        assert len(store) == 10 and store.pending_rows == 3 and store.next_row == 13  # 3 wait for a chunk
        assert store.finish() == path
        assert len(store) == 13 and not store.writable
    with ResultStore.open(path) as store:
        got = store.read()
        assert len(store) == 13
        numpy.testing.assert_array_equal(got["relevance"], data["relevance"])
        assert got["relevance"].dtype == numpy.float32
        for key in ("logits", "target", "label", "index", "conservation"):
            numpy.testing.assert_array_equal(got[key], data[key], err_msg=key)
        assert got["target"].dtype == numpy.int64 and got["index"].dtype == numpy.int64
        numpy.testing.assert_array_equal(got["metrics/flip_auc"], data["metrics"]["flip_auc"])
        numpy.testing.assert_array_equal(got["intermediate/fc/out"], data["intermediate"]["fc/out"])
        for j, node in enumerate(w["NODES"]):
            numpy.testing.assert_array_equal(got["ledger/entering"][:, j], data["ledger"][node].entering)
            numpy.testing.assert_array_equal(got["ledger/leaving"][:, j], data["ledger"][node].leaving)
            entry = store.read_ledger()[node]
            numpy.testing.assert_array_equal(entry.absorbed, data["ledger"][node].entering
                                             - data["ledger"][node].leaving)
        numpy.testing.assert_array_equal(got["ledger/absorbed"], got["ledger/entering"] - got["ledger/leaving"])
        assert [n.decode() for n in store.file["ledger"].attrs["nodes"]] == list(w["NODES"])  # fixed-length text
        attrs = store.attrs
        assert attrs["schema"] == SCHEMA == "lrpflow-results" and attrs["schema_version"] == SCHEMA_VERSION == 2
        assert yaml.safe_load(store.config) == config == store.config_dict
        assert attrs["lrpflow_version"] == lrpflow.__version__
        assert attrs["backend"] == "numpy" and attrs["dtype"] == "float64" and attrs["model_sha256"] == sha
        created = datetime.datetime.fromisoformat(attrs["created"])
        assert created.utcoffset() == datetime.timedelta(0)
        assert before <= created <= datetime.datetime.now(datetime.timezone.utc)
        assert attrs["rows_complete"] == 13 and attrs["complete"] is True
        assert attrs["experiment"] == "demo" and yaml.safe_load(attrs["params"]) == {"k": 1}
        assert attrs["input_shape"] == list(w["SHAPE"]) and attrs["n_classes"] == w["CLASSES"]
        # row selections
        sub = store.read(["index", "relevance"], rows=[7, 2, 2, -1])
        numpy.testing.assert_array_equal(sub["index"], data["index"][[7, 2, 2, 12]])
        numpy.testing.assert_array_equal(sub["relevance"], data["relevance"][[7, 2, 2, 12]])
        numpy.testing.assert_array_equal(store.read("index", rows=slice(None, None, -3))["index"],
                                         data["index"][::-3])
        mask = data["label"] == 1
        numpy.testing.assert_array_equal(store.read("index", rows=mask)["index"], data["index"][mask])
        numpy.testing.assert_array_equal(store["target"], data["target"])
        batches = list(store.iter_batches(6, ["index"]))
        assert [b[0] for b in batches] == [slice(0, 6), slice(6, 12), slice(12, 13)]
        with pytest.raises(LrpflowError, match="no field 'nope'"):
            store.read("nope")
    numpy.testing.assert_array_equal(load(path, "conservation")["conservation"], data["conservation"])


def test_append_explanation_from_explain(tmp_path, rng):
    from nets import residual

    model = residual(rng)
    x = rng.normal(size=(5, 8, 8, 3))
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, keep=["add"], dtype="float64")
    nodes = tuple(out.ledger)
    path = str(tmp_path / "r.h5")
    with ResultStore.create(path, input_shape=(8, 8, 3), n_classes=3, ledger_nodes=nodes,
                            intermediate={"add": out.intermediate["add"].shape[1:]}, metrics=["m"]) as store:
        store.append(out, label=numpy.arange(5), metrics={"m": numpy.ones(5)})
        store.finish()
    with ResultStore.open(path) as store:
        got = store.read()
        numpy.testing.assert_allclose(got["relevance"], out.relevance, rtol=1e-6)
        numpy.testing.assert_array_equal(got["logits"], out.logits)
        numpy.testing.assert_array_equal(got["target"], out.target)
        numpy.testing.assert_array_equal(got["conservation"], out.conservation)
        numpy.testing.assert_array_equal(got["index"], numpy.arange(5))  # default: store rows
        numpy.testing.assert_allclose(got["intermediate/add"], out.intermediate["add"], rtol=1e-6)
        for node, entry in store.read_ledger().items():
            numpy.testing.assert_array_equal(entry.entering, out.ledger[node].entering)
            numpy.testing.assert_array_equal(entry.leaving, out.ledger[node].leaving)


def test_chunked_and_compressed(tmp_path, rng):
    with small_store(str(tmp_path / "g.h5"), ledger_nodes=["a"], intermediate={"n": (5,)}) as store:
        f = store.file
        for name in ("relevance", "intermediate/n"):
            assert f[name].chunks == (4, *f[name].shape[1:])
            assert f[name].compression == "gzip" and f[name].shuffle
            assert f[name].maxshape[0] is None
        for name in ("logits", "target", "label", "index", "conservation", "ledger/entering"):
            # small per-row data: larger uncompressed chunks (rewritten in place, so crash-safe)
            assert f[name].chunks[0] >= 4 and f[name].maxshape[0] is None and f[name].compression is None
    with small_store(str(tmp_path / "l.h5"), compression="lzf") as store:
        assert store.file["relevance"].compression == "lzf"
    with pytest.raises(ConfigError, match="compression"):
        small_store(str(tmp_path / "x.h5"), compression="zstd")


def test_topk_targets(tmp_path, rng):
    path = str(tmp_path / "t.h5")
    with small_store(path, target_width=2) as store:
        store.append(small_batch(rng, 4, target=numpy.array([[0, 1], [2, 1], [1, 0], [0, 2]])))
        with pytest.raises(ShapeError, match="'target' has shape"):
            store.append(small_batch(rng, 4))
        store.finish()
    assert load(path, "target")["target"].shape == (4, 2)


def test_bad_batches_are_rejected(tmp_path, rng):
    with small_store(str(tmp_path / "b.h5"), metrics=["auc"], ledger_nodes=["a"]) as store:
        good = dict(metrics={"auc": numpy.ones(2)}, ledger={"a": (numpy.ones(2), numpy.ones(2))})
        with pytest.raises(ShapeError, match="'relevance' has shape"):
            store.append({**small_batch(rng, 2, **good), "relevance": numpy.ones((2, 3, 3))})
        with pytest.raises(ConfigError, match="metrics/auc"):
            store.append(small_batch(rng, 2, ledger=good["ledger"]))
        with pytest.raises(ConfigError, match=r"\['a'\]"):
            store.append(small_batch(rng, 2, metrics=good["metrics"], ledger={}))
        with pytest.raises(ConfigError, match="unknown field 'relevances'"):
            store.append({"relevances": 1})
        with pytest.raises(ConfigError, match="not declared"):
            store.append(small_batch(rng, 2, metrics={"auc": numpy.ones(2), "other": numpy.ones(2)},
                                     ledger=good["ledger"]))
        with pytest.raises(ShapeError, match="integers"):
            store.append(small_batch(rng, 2, target=numpy.ones(2) * 0.5, **good))
        assert store.next_row == 0  # nothing half-appended
        store.append(small_batch(rng, 2, **good))
        assert store.next_row == 2
    with pytest.raises(ConfigError, match="own attributes"):
        small_store(str(tmp_path / "c.h5"), attrs={"rows_complete": 3})


# --------------------------------------------------------------------------------------------------
# read-only, partial file, atomic finish
# --------------------------------------------------------------------------------------------------
def test_read_only_cannot_write(tmp_path, rng):
    path = finished_small(str(tmp_path / "r.h5"), rng, 4)
    with ResultStore.open(path, "r") as store:
        assert store.mode == "r" and not store.writable and store.file.mode == "r"
        with pytest.raises(LrpflowError, match="read-only"):
            store.append(small_batch(rng, 4))
        with pytest.raises(LrpflowError, match="read-only"):
            store.finish()
        assert len(store) == 4
    with pytest.raises(LrpflowError, match="closed"):
        store.read()
    with pytest.raises(LrpflowError, match="nothing to resume"):
        ResultStore.open(path, "a")
    with pytest.raises(ConfigError, match="mode"):
        ResultStore.open(path, "w")


def test_partial_file_and_atomic_finish(tmp_path, rng):
    final = str(tmp_path / "results.h5")
    partial = final + PARTIAL_SUFFIX
    store = small_store(final)
    assert store.path == partial and store.final_path == final
    assert os.path.exists(partial) and not os.path.exists(final)
    store.append(small_batch(rng, 8))
    with ResultStore.open(final) as progress:  # a reader sees the running store's complete rows
        assert progress.path == partial and len(progress) == 8 and not progress.complete
    assert not os.path.exists(final)
    store.finish()
    assert os.path.exists(final) and not os.path.exists(partial)
    assert [p.name for p in tmp_path.iterdir()] == ["results.h5"]  # no temporary files left
    store.close()
    with h5py.File(final, "r") as f:
        assert bool(f.attrs["complete"]) and int(f.attrs["rows_complete"]) == 8

    # a finished store is never replaced by accident, and replaced only when the new one finishes
    with pytest.raises(LrpflowError, match="exists"):
        small_store(final)
    with small_store(final, overwrite=True) as again:
        again.append(small_batch(rng, 3))
        assert len(load(final)["index"]) == 8  # the old store is intact while the new one runs
        again.finish()
    assert len(load(final)["index"]) == 3


def test_finish_killed_before_rename(tmp_path, rng):
    """A partial file marked complete (killed between flag and rename) resumes and finishes."""
    final = str(tmp_path / "k.h5")
    with small_store(final) as store:
        store.append(small_batch(rng, 8))
        store.file.attrs["complete"] = True
    with ResultStore.open(final, "a") as store:
        assert store.next_row == 8 and not store.complete
        store.finish()
    assert len(load(final)["index"]) == 8


# --------------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, chunk", [(0, 5), (1, 5), (2, 3)])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, writer, seed, chunk):
    script, w = writer
    ref = reference(tmp_path, w, chunk=chunk)
    path = str(tmp_path / "run.h5")
    draw = random.Random(seed)
    batches = N_ROWS // 5
    k = draw.randint(1, batches - 4)  # kill after the writer reported k batches ...
    proc = spawn(script, path, chunk=chunk, sleep=0.05)
    for _ in range(k):
        assert proc.stdout.readline(), proc.stderr.read()
    if draw.random() < 0.5:  # ... right away, or a random moment later (possibly mid-batch)
        import time

        time.sleep(draw.uniform(0, 0.06))
    assert proc.poll() is None, "the writer finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert not os.path.exists(path) and os.path.exists(path + PARTIAL_SUFFIX)

    with ResultStore.open(path, "a", config=w["CONFIG"], model_sha256=w["MODEL"]) as store:
        start = store.next_row
        assert 0 < start <= N_ROWS and start % chunk == 0  # resumes at a complete chunk
        assert start >= (k * 5) // chunk * chunk  # every reported batch was kept (up to the chunk)
        numpy.testing.assert_array_equal(store["index"], numpy.arange(start) + 1000)
        w["write"](store, w["dataset"](N_ROWS), N_ROWS, 5)
        store.finish()
        assert store.attrs["resumes"] == 1
    assert_same_store(path, ref)


def test_resume_after_half_written_batch(tmp_path, writer):
    script, w = writer
    ref = reference(tmp_path, w)
    path = str(tmp_path / "run.h5")
    proc = spawn(script, path, kill_on_commit=3)  # rows 15:20 written, counter still at 15
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    with h5py.File(path + PARTIAL_SUFFIX, "r") as f:
        assert int(f.attrs["rows_complete"]) == 15
        assert f["relevance"].shape[0] == 20 and f["metrics/flip_auc"].shape[0] == 20  # the half-written batch
    # resume as the runner does: the same script, create() resumes the .partial
    proc = spawn(script, path)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert out.split()[0] == "20"  # continued at row 15 with a batch of 5
    assert_same_store(path, ref)


def test_uncommitted_rows_are_dropped_on_reopen(tmp_path, rng):
    path = str(tmp_path / "u.h5")
    with small_store(path) as store:
        store.append(small_batch(rng, 8, index=numpy.arange(8)))
        f = store.file  # simulate a batch whose rows reached the file but whose counter did not
        for name in ("relevance", "logits", "target", "index"):
            f[name].resize(12, axis=0)
            f[name][8:12] = 7
    with ResultStore.open(path, "a") as store:
        assert store.next_row == 8
        assert store.file["relevance"].shape[0] == 8 and store.file["index"].shape[0] == 8
        store.append(small_batch(rng, 4, index=numpy.arange(8, 12)))
        store.finish()
    numpy.testing.assert_array_equal(load(path, "index")["index"], numpy.arange(12))


def test_stale_end_of_allocation_is_repaired(tmp_path, rng):
    """A writer killed mid-flush can leave metadata past the superblock's end address (h5clear -i case)."""
    path = str(tmp_path / "e.h5")
    store = small_store(path)
    header_size = os.path.getsize(store.path)
    store.append(small_batch(rng, 8, index=numpy.arange(8)))
    store.close()
    with open(path + PARTIAL_SUFFIX, "r+b") as fh:  # the superblock as it was before the batch was flushed
        head = bytearray(fh.read(48))
        head[28:36] = header_size.to_bytes(8, "little")
        head[44:48] = _lookup3(bytes(head[:44])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(head)
    with pytest.raises(OSError, match="addr overflow"), h5py.File(path + PARTIAL_SUFFIX, "r") as f:
        f["relevance"][:]
    with ResultStore.open(path, "a") as store:
        assert store.next_row == 8
        store.append(small_batch(rng, 4, index=numpy.arange(8, 12)))
        store.finish()
    numpy.testing.assert_array_equal(load(path, "index")["index"], numpy.arange(12))
    # the checksum HDF5 uses for its superblock: Bob Jenkins' lookup3 test vectors
    assert _lookup3(b"") == 0xDEADBEEF
    assert _lookup3(b"Four score and seven years ago") == 0x17770551
    assert _lookup3(b"Four score and seven years ago", 1) == 0xCD628161


@pytest.mark.skipif(sys.platform == "win32", reason="HDF5 file locks are POSIX flocks")
def test_a_store_being_written_is_not_resumed_twice(tmp_path, rng):
    path = str(tmp_path / "w.h5")
    with small_store(path) as running:
        running.append(small_batch(rng, 4))
        with pytest.raises(LrpflowError, match="open in another process"):
            small_store(path)
        running.append(small_batch(rng, 4))
    with small_store(path) as store:
        assert store.next_row == 8


def test_unaligned_batches_wait_for_a_full_chunk(tmp_path, rng):
    path = str(tmp_path / "a.h5")
    with small_store(path) as store:  # chunk_rows=4
        store.append(small_batch(rng, 3))
        assert (len(store), store.pending_rows, store.next_row) == (0, 3, 3)
        store.append(small_batch(rng, 3))
        assert (len(store), store.pending_rows, store.next_row) == (4, 2, 6)
        assert store.file.attrs["rows_complete"] == 4
    with ResultStore.open(path, "a") as store:  # the 2 pending rows were not written: redo them
        assert store.next_row == 4
        store.append(small_batch(rng, 2, index=numpy.arange(4, 6)))
        store.finish()
    numpy.testing.assert_array_equal(load(path, "index")["index"], numpy.arange(6))


def test_resume_refuses_another_run(tmp_path, rng):
    path = str(tmp_path / "c.h5")
    cfg = {"lrp": {"rule": "epsilon", "epsilon": 0.01}, "data": {"shard": 0}}
    with small_store(path, config=cfg) as store:
        store.append(small_batch(rng, 4))
    other = {"lrp": {"rule": "epsilon", "epsilon": 0.1}, "data": {"shard": 0}}
    with pytest.raises(LrpflowError, match=r"config differs at lrp\.epsilon: stored 0\.01, this run 0\.1"):
        small_store(path, config=other)
    with pytest.raises(LrpflowError, match="config differs at lrp.epsilon"):
        ResultStore.open(path, "a", config=other)
    with pytest.raises(LrpflowError, match="model_sha256 differs"):
        small_store(path, config=cfg, model_sha256="1" * 64)
    with pytest.raises(LrpflowError, match="input_shape"):
        small_store(path, config=cfg, input_shape=(2, 3))
    with pytest.raises(LrpflowError, match="resume=True"):
        small_store(path, config=cfg, resume=False)
    with ResultStore.open(path) as store:  # refusing changed nothing
        assert len(store) == 4 and store.attrs["resumes"] == 0
    with small_store(path, config=cfg) as store:  # the same run resumes
        assert store.next_row == 4
    with small_store(path, config=other, overwrite=True) as store:  # overwrite starts again
        assert store.next_row == 0 and store.config_dict == other
    assert config_diff("a: 1\nb: {c: 2}\n", "a: 1\nb: {c: 3}\n", ignore=["b"]) == []


# --------------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------------
def make_shards(folder, w, sizes=(7, 0, 11)):
    """Finished shard stores over consecutive rows of one dataset (a 0-row shard included)."""
    os.makedirs(folder, exist_ok=True)
    data = w["dataset"](sum(sizes))
    paths, start = [], 0
    for i, n in enumerate(sizes):
        path = os.path.join(folder, f"shard_{i}.h5")
        with w["open_store"](path, 4) as store:
            for a in range(start, start + n, 3):
                store.append(w["rows"](data, a, min(start + n, a + 3)))
            store.finish()
        paths.append(path)
        start += n
    return paths, data


def test_join_virtual_datasets(tmp_path, writer, monkeypatch):
    _, w = writer
    root = tmp_path / "run"
    paths, data = make_shards(str(root / "shards"), w)
    out = str(root / "joined" / "results.h5")
    os.makedirs(os.path.dirname(out))
    assert join(paths, out) == out

    def check(path):
        with ResultStore.open(path) as store:
            assert len(store) == 18 and store.complete
            assert store.file["relevance"].is_virtual and store.file["ledger/leaving"].is_virtual
            got = store.read()
            numpy.testing.assert_array_equal(got["relevance"], data["relevance"])
            numpy.testing.assert_array_equal(got["index"], data["index"])
            numpy.testing.assert_array_equal(got["metrics/flip_auc"], data["metrics"]["flip_auc"])
            numpy.testing.assert_array_equal(got["intermediate/fc/out"], data["intermediate"]["fc/out"])
            numpy.testing.assert_array_equal(got["ledger/entering"][:, 1], data["ledger"]["fc/out"].entering)
            numpy.testing.assert_array_equal(store.read("index", rows=[17, 0])["index"], data["index"][[17, 0]])
            attrs = store.attrs
            assert attrs["shards"] == [os.path.join("..", "shards", f"shard_{i}.h5") for i in range(3)]
            assert attrs["shard_rows"] == [7, 0, 11] and attrs["rows_complete"] == 18
            assert attrs["config"] == w["CONFIG"] and attrs["model_sha256"] == w["MODEL"]

    check(out)
    monkeypatch.chdir(tmp_path)  # another working directory
    check(out)
    moved = tmp_path / "elsewhere"
    shutil.move(str(root), str(moved))  # shards referenced relative to the joined file: move together
    check(str(moved / "joined" / "results.h5"))
    with pytest.raises(LrpflowError, match="nothing to resume"):
        ResultStore.open(str(moved / "joined" / "results.h5"), "a")

    # absolute references: the joined file may move alone, its shards may not
    shards = sorted(str(p) for p in (moved / "shards").iterdir())
    absolute = str(tmp_path / "abs.h5")
    join(shards, absolute, relative=False)
    alone = str(tmp_path / "alone" / "abs.h5")
    os.makedirs(os.path.dirname(alone))
    shutil.move(absolute, alone)
    check_abs = ResultStore.open(alone)
    numpy.testing.assert_array_equal(check_abs["relevance"], data["relevance"])
    check_abs.close()
    # a relative joined file moved without its shards fails loudly instead of reading fill values
    lonely = str(tmp_path / "lonely.h5")
    shutil.copy(str(moved / "joined" / "results.h5"), lonely)
    with pytest.raises(LrpflowError, match="shard_0.h5.*missing"):
        ResultStore.open(lonely)


def test_join_refuses_bad_shards(tmp_path, writer, rng):
    _, w = writer
    paths, _ = make_shards(str(tmp_path / "s"), w, sizes=(4, 4))
    running = str(tmp_path / "s" / "running.h5")
    with w["open_store"](running, 4) as store:
        store.append(w["rows"](w["dataset"](4), 0, 4))
    with pytest.raises(LrpflowError, match="running.h5 is incomplete"):
        join([*paths, running], str(tmp_path / "j.h5"))
    with pytest.raises(LrpflowError, match="running.h5.partial is incomplete"):
        join([*paths, running + PARTIAL_SUFFIX], str(tmp_path / "j.h5"))
    unfinished = str(tmp_path / "s" / "unfinished.h5")
    shutil.copy(paths[0], unfinished)
    with h5py.File(unfinished, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(LrpflowError, match="unfinished.h5 is incomplete"):
        join([*paths, unfinished], str(tmp_path / "j.h5"))
    other_shape = finished_small(str(tmp_path / "s" / "small.h5"), rng, 4)
    with pytest.raises(LrpflowError, match="small.h5 has another layout.*input_shape"):
        join([*paths, other_shape], str(tmp_path / "j.h5"))
    with pytest.raises(LrpflowError, match="given twice"):
        join([paths[0], paths[0]], str(tmp_path / "j.h5"))
    assert not os.path.exists(tmp_path / "j.h5") and not os.path.exists(str(tmp_path / "j.h5") + PARTIAL_SUFFIX)


def test_join_main(tmp_path, writer, capsys):
    _, w = writer
    paths, data = make_shards(str(tmp_path / "s"), w, sizes=(3, 5))
    out = str(tmp_path / "all.h5")
    assert join_main([out, *paths]) == 0
    numpy.testing.assert_array_equal(load(out, "index")["index"], data["index"])
    assert join_main([out, *paths]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert join_main(["--overwrite", "--absolute", out, *paths]) == 0
    with ResultStore.open(out) as store:
        assert store.attrs["shards"] == [os.path.abspath(p) for p in paths]
    assert join_main([out]) == 2  # usage error from argparse
    assert "lrpflow-join" in capsys.readouterr().err
    assert join_main([str(tmp_path / "x.h5"), str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5 does not exist" in capsys.readouterr().err


def test_read_only_attrs_are_read_once_and_handed_out_as_copies(tmp_path, monkeypatch):
    from lrpflow.store import StoreReader, write_results
    from lrpflow.store import reader as reader_module

    rel = numpy.ones((2, 3), dtype=numpy.float32)
    exp = type("E", (), {"relevance": rel, "logits": numpy.zeros((2, 4)), "target": numpy.array([0, 1]),
                         "ledger": {}, "intermediate": {}, "method": "m"})()
    write_results(exp, tmp_path / "r.h5", attrs={"rows": [0, 2]})
    calls = []
    real = reader_module.read_attrs
    monkeypatch.setattr(reader_module, "read_attrs", lambda obj: calls.append(1) or real(obj))
    with StoreReader.open(tmp_path / "r.h5") as s:
        first = s.attrs
        first["rows"].append(99)  # a caller's change stays its own
        assert s.attrs["rows"] == [0, 2] and s.attrs["method"] == "m"
    assert len(calls) == 1
