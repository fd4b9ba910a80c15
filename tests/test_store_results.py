"""Results read back as objects (load_results), explanations written as stores (to_results), joins, damage."""
from __future__ import annotations

import h5py
import numpy
import pytest

import lrpflow
from lrpflow.errors import LrpflowError, StoreError
from lrpflow.store import ResultStore, join, load, load_results


@pytest.fixture
def explained():
    rng = numpy.random.default_rng(3)
    net = lrpflow.Sequential([lrpflow.layers.Flatten(), lrpflow.layers.Linear(12, 6, rng=1), lrpflow.layers.ReLU(),
                              lrpflow.layers.Linear(6, 3, rng=2)])
    x = rng.normal(size=(7, 4, 3, 1)).astype(numpy.float32)
    return net, x, lrpflow.explain(net, x, rule="epsilon", epsilon=0.01)


def test_an_explanation_round_trips_through_a_store(tmp_path, explained):
    net, x, exp = explained
    path = exp.to_results(tmp_path / "api.h5", label=[0, 1, 2, 0, 1, 2, 0], config={"lrp": {"rule": "epsilon"}},
                          source=[f"img{i}.png" for i in range(7)])
    res = lrpflow.load_results(path)
    assert len(res) == 7 and res.method == exp.method
    numpy.testing.assert_array_equal(res.relevance, exp.relevance)  # bitwise
    numpy.testing.assert_array_equal(res.logits, exp.logits.astype(numpy.float64))
    numpy.testing.assert_array_equal(res.target, exp.target)
    numpy.testing.assert_array_equal(res.label, [0, 1, 2, 0, 1, 2, 0])
    numpy.testing.assert_array_equal(res.index, numpy.arange(7))
    numpy.testing.assert_allclose(res.conservation, exp.conservation)
    assert list(res.source) == [f"img{i}.png" for i in range(7)]
    assert res.config == {"lrp": {"rule": "epsilon"}}
    assert set(res.ledger) == set(exp.ledger)
    for node, entry in exp.ledger.items():
        numpy.testing.assert_allclose(res.ledger[node].entering, entry.entering)
        numpy.testing.assert_allclose(res.ledger[node].absorbed, entry.entering - entry.leaving)
    batches = list(res.batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    numpy.testing.assert_array_equal(numpy.concatenate([b.relevance for b in batches]), exp.relevance)
    assert [list(b.source) for b in batches][2] == ["img6.png"]
    assert sum(len(b) for b in res) == 7  # iterable in batches


def test_a_store_without_files_has_no_source(tmp_path, explained):
    _, _, exp = explained
    res = load_results(exp.to_results(tmp_path / "plain.h5"))
    assert res.source is None and "source" not in res.fields and res.metrics == {}


def test_cli_and_api_stores_are_one_format(tmp_path, explained):
    """A store written from Python resumes and reads with the same classes as a CLI run's."""
    _, _, exp = explained
    path = exp.to_results(tmp_path / "a.h5", metrics={"m": numpy.arange(7.0)})
    with ResultStore.open(path) as store:
        assert store.complete and store.metrics == ("m",) and store.attrs["method"] == exp.method
    numpy.testing.assert_array_equal(load(path, "metrics/m")["metrics/m"], numpy.arange(7.0))
    with pytest.raises(LrpflowError, match="exists"):
        exp.to_results(path)
    exp.to_results(path, overwrite=True)


def shard(path, rng, lo, hi):
    with ResultStore.create(path, input_shape=(2,), n_classes=2, chunk_rows=4, config={"data": {"shard": lo}},
                            model_sha256="c" * 64, attrs={"rows": [lo, hi]}, expected_rows=hi - lo) as store:
        n = hi - lo
        store.append({"relevance": rng.normal(size=(n, 2)), "logits": rng.normal(size=(n, 2)),
                      "target": numpy.zeros(n, int), "index": numpy.arange(lo, hi)})
        store.finish()
    return str(path)


def test_joined_store_attributes_describe_the_joined_rows(tmp_path):
    """Issue 15.8: not the first shard's rows [0 500] and expected_rows 500 beside rows_complete 1000."""
    rng = numpy.random.default_rng(0)
    paths = [shard(tmp_path / f"s{i}.h5", rng, lo, hi) for i, (lo, hi) in enumerate([(0, 5), (5, 9), (9, 16)])]
    join(paths, tmp_path / "joined.h5")
    with ResultStore.open(tmp_path / "joined.h5") as store:
        a = store.attrs
        assert a["rows"] == [0, 16] and a["expected_rows"] == 16 and a["rows_complete"] == 16 and len(store) == 16
        numpy.testing.assert_array_equal(store["index"], numpy.arange(16))
    gap = [paths[0], paths[2]]  # rows 0..5 and 9..16: not one range
    join(gap, tmp_path / "gap.h5")
    with ResultStore.open(tmp_path / "gap.h5") as store:
        assert "rows" not in store.attrs and store.attrs["expected_rows"] == 12


def damage(path, where):
    """Zero 64 bytes of the file at ``where`` (a fraction of its size)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    data[at:at + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_damage_is_a_store_error_naming_the_file(tmp_path, explained):
    _, _, exp = explained
    path = tmp_path / "d.h5"
    exp.to_results(path)
    with h5py.File(path, "a") as f:  # the counter claims rows the datasets do not have
        f.attrs["rows_complete"] = 10**12
    with pytest.raises(StoreError, match=r"d.h5: dataset 'relevance' has 7 rows but rows_complete is 1000000000000"):
        load(path)
    with h5py.File(path, "a") as f:
        f.attrs["rows_complete"] = 7
        del f["logits"]
    with pytest.raises(StoreError, match=r"d.h5: dataset 'logits' \(logits\) is missing"):
        load_results(path)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match=r"cannot open result store .*d.h5: not an HDF5 file"):
        load_results(path)


def test_a_variable_length_attribute_in_a_v2_store_is_damage(tmp_path, explained):
    _, _, exp = explained
    path = exp.to_results(tmp_path / "v.h5")
    with h5py.File(path, "a") as f:
        f.attrs["config"] = "a: 1"  # h5py writes str as variable-length text: what lrpflow 2 never writes
    with pytest.raises(StoreError, match="attribute 'config' of / has a variable-length type"):
        load_results(path)


def test_version_1_stores_with_variable_length_text_still_read(tmp_path, explained):
    _, _, exp = explained
    path = exp.to_results(tmp_path / "v1.h5", config={"a": 1})
    with h5py.File(path, "a") as f:  # as lrpflow wrote them before the fixed-length format
        f.attrs["schema_version"] = 1
        for key in ("schema", "config", "backend", "method"):
            f.attrs[key] = f.attrs[key].decode()
        f["ledger"].attrs["nodes"] = numpy.array([n.decode() for n in f["ledger"].attrs["nodes"]],
                                                 dtype=h5py.string_dtype())
    res = load_results(path)
    assert res.config == {"a": 1} and set(res.ledger) == set(exp.ledger)
    numpy.testing.assert_array_equal(res.relevance, exp.relevance)


def test_resuming_a_damaged_store_says_what_can_be_salvaged(tmp_path):
    rng = numpy.random.default_rng(1)
    final = tmp_path / "r.h5"
    with ResultStore.create(final, input_shape=(2,), n_classes=2, chunk_rows=4, compression=None) as store:
        store.append({"relevance": rng.normal(size=(8, 2)), "logits": rng.normal(size=(8, 2)),
                      "target": numpy.zeros(8, int)})
    partial = tmp_path / "r.h5.partial"
    with h5py.File(partial, "a") as f:
        del f["label"]  # a dataset lost: the rows of the others are intact
    with pytest.raises(StoreError, match=r"cannot resume: .*'label'.* is missing; its first 8 of 8 complete row\(s\) "
                                         r"read back intact"):
        ResultStore.open(final, "a")
    partial.write_bytes(partial.read_bytes()[:100])
    with pytest.raises(StoreError, match="cannot resume .*r.h5.partial.*nothing in it can be read back"):
        ResultStore.open(final, "a")


def test_a_new_store_never_replaces_another_runs_partial(tmp_path, monkeypatch):
    """Issue 10.5: create() publishes its header exclusively; a store that appeared meanwhile is kept."""
    import lrpflow.store.writer as writer

    final = tmp_path / "x.h5"
    real = writer.publish

    def racing(tmp, partial):  # another run creates the partial between our check and our publish
        (tmp_path / "x.h5.partial").write_bytes(b"the other run's store")
        real(tmp, partial)

    monkeypatch.setattr(writer, "publish", racing)
    with pytest.raises(LrpflowError, match="appeared while this run was creating it"):
        ResultStore.create(final, input_shape=(2,), n_classes=2)
    assert (tmp_path / "x.h5.partial").read_bytes() == b"the other run's store"
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5.partial"]  # no temporary left behind
