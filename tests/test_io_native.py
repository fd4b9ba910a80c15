"""The native HDF5 model format: lossless round trips of any DAG and every built-in layer; clear errors."""
from __future__ import annotations

import json

import h5py
import numpy
import pytest

import lrpflow
from lrpflow.graph import Model, Node
from lrpflow.io import fold_batchnorm
from lrpflow.layers import (
    Add, AvgPool, BatchNorm, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool, Identity, LeakyReLU, Linear, LRN, MaxPool,
    Pad, ReLU, Reshape, Sigmoid, SoftMax, SumPool, Tanh,
    Clip, ConvTranspose2d, PadEdges, Erf, Gelu, HardSigmoid, Resize, HardSwish, LayerNorm, Max, Mean, Multiply, SiLU, Slice, Take,
)
from lrpflow.layers import BUILTIN_LAYERS, ELU, SELU, Average, ClippedReLU, Crop, Embedding, Permute, PReLU, Softplus, Subtract
from lrpflow.layers import AddConstant, Broadcast, ConcatConstant, MatMul, MulConstant, Power, RMSNorm, Where


def every_layer_model(rng, dtype=numpy.float64):
    """A DAG that uses every built-in layer type at least once."""
    def r(*shape):
        return rng.normal(0, 0.5, shape).astype(dtype)

    nodes = [
        Node("pad", Pad((1, 0, 0, 1), value=-0.5), ("input",)),
        Node("conv", Conv2d(3, 3, 2, 4, stride=(1, 2), padding=(1, 1, 0, 2), weight=r(3, 3, 2, 4), bias=r(4)), ("pad",)),
        Node("bn", BatchNorm(4, gamma=rng.uniform(0.5, 1.5, 4).astype(dtype), beta=r(4), mean=r(4),
                             var=rng.uniform(0.5, 2, 4).astype(dtype), eps=1e-3), ("conv",)),
        Node("relu", ReLU(), ("bn",)),
        Node("leaky", LeakyReLU(0.2), ("bn",)),
        Node("add", Add(), ("relu", "leaky")),
        Node("sig0", Sigmoid(), ("add",)),
        Node("cclip", ClippedReLU(1.0, 0.1, 0.05), ("add",)),
        Node("prelu", PReLU(rng.uniform(0.1, 0.3, 4).astype(dtype)), ("cclip",)),
        Node("elu", ELU(0.7), ("prelu",)),
        Node("selu", SELU(), ("elu",)),
        Node("softplus", Softplus(), ("selu",)),
        Node("sub", Subtract(), ("softplus", "add")),
        Node("avg3", Average(), ("sub", "add", "relu")),
        Node("crop", Crop((1, 0, 0, 1)), ("avg3",)),
        Node("uncrop", Pad((1, 0, 0, 1)), ("crop",)),
        Node("perm", Permute((2, 1, 3)), ("uncrop",)),
        Node("unperm", Permute((2, 1, 3)), ("perm",)),
        Node("tanh0", Tanh(), ("unperm",)),
        Node("add2", Add(), ("sig0", "tanh0")),
        Node("gconv", Conv2d(3, 3, 4, 4, padding=1, groups=2, weight=r(3, 3, 2, 4), bias=r(4)), ("add2",)),
        Node("dw", Conv2d(3, 3, 4, 4, padding=(0, 2, 1, 1), groups=4, weight=r(3, 3, 1, 4), bias=r(4)), ("gconv",)),
        Node("hsig", HardSigmoid(1 / 6, 0.5), ("dw",)),
        Node("hswish", HardSwish(), ("add2",)),
        Node("gate", Multiply(gate=1), ("hswish", "hsig")),
        Node("clip", Clip(0.0, 6.0), ("gate",)),
        Node("erf", Erf(), ("clip",)),
        Node("gelu", Gelu(), ("erf",)),
        Node("silu", SiLU(), ("gelu",)),
        Node("ln", LayerNorm((4,), gamma=r(4), beta=r(4), eps=1e-3), ("silu",)),
        Node("mean", Mean((0,), keepdims=True), ("ln",)),
        Node("rowmax", Max((1,), keepdims=True), ("ln",)),
        Node("prod", Multiply(gate=None), ("mean", "rowmax")),
        Node("slice", Slice({2: (0, 4, 1), 0: (0, 8, 1)}), ("prod",)),
        Node("take", Take(numpy.arange(160)[::-1].reshape(8, 5, 4)), ("slice",)),
        Node("up", Resize((8, 5), (9, 7), mode="linear", coordinates="align_corners"), ("take",)),
        Node("deconv", ConvTranspose2d(3, 2, 4, 4, stride=(2, 1), padding=(1, 1, 0, 1), output_padding=(1, 0), groups=2,
                                       weight=r(3, 2, 2, 4), bias=r(4)), ("up",)),
        Node("reflect", PadEdges((1, 2, 0, 1), "reflect"), ("deconv",)),
        Node("sig", Sigmoid(), ("reflect",)),
        Node("tanh", Tanh(), ("reflect",)),
        Node("cat", Concat(axis=-1), ("sig", "tanh")),
        Node("lrn", LRN(3, alpha=0.5, beta=0.75, k=2.0), ("cat",)),
        Node("max", MaxPool(2, 2, stride=(1, 1), padding=(0, 1, 0, 1)), ("lrn",)),
        Node("sum", SumPool(2, 2, stride=(1, 1)), ("max",)),
        Node("avg", AvgPool(2, 2, stride=(2, 2), padding=1), ("sum",)),
        Node("gap", GlobalAvgPool(), ("avg",)),
        Node("drop", Dropout(0.25), ("gap",)),
        Node("id", Identity(), ("drop",)),
        Node("reshape", Reshape((2, 4)), ("id",)),
        Node("flat", Flatten(), ("reshape",)),
        # transformer layers on the (2, 4) tokens
        Node("rms", RMSNorm(1e-5), ("reshape",)),
        Node("pow", Power(2.0), ("rms",)),
        Node("mulc", MulConstant(r(2, 4)), ("pow",)),
        Node("addc", AddConstant(r(2, 4)), ("mulc",)),
        Node("where", Where(rng.random((2, 4)) > 0.3, r(2, 4)), ("addc",)),
        Node("cls", ConcatConstant(r(1, 4), axis=0), ("where",)),
        Node("clsT", Permute((2, 1)), ("cls",)),
        Node("mm", MatMul(), ("cls", "clsT")),
        Node("att", SoftMax(axis=0), ("mm",)),
        Node("att1", Reshape((1, 3, 3)), ("att",)),
        Node("bcast", Broadcast((2, 3, 3)), ("att1",)),
        Node("flat2", Flatten(), ("bcast",)),
        Node("cat2", Concat(axis=-1), ("flat", "flat2")),
        Node("fc", Linear(26, 3, weight=r(26, 3), bias=r(3)), ("cat2",)),
        Node("prob", SoftMax(), ("fc",)),
    ]
    return Model(nodes, input_shape=(7, 9, 2))


def test_the_test_model_covers_every_builtin_layer():
    used = {type(layer) for layer in every_layer_model(numpy.random.default_rng(0)).layers}
    # Embedding takes integer ids: its round trip is tested in tests/test_io_keras.py
    assert {cls for cls, _ in BUILTIN_LAYERS.values()} - {Embedding} <= used


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_round_trip_every_layer_is_lossless(tmp_path, dtype):
    rng = numpy.random.default_rng(1)
    model = every_layer_model(rng, dtype)
    model.node("fc").layer.set_lrp_parameters("epsilon", 0.5)
    lrpflow.save_model(model, tmp_path / "m.h5")
    back = lrpflow.load_model(tmp_path / "m.h5")
    assert type(back) is Model and back.input_shape == model.input_shape and back.output == model.output
    for a, b in zip(model.nodes, back.nodes):
        assert a.name == b.name and a.inputs == b.inputs and type(a.layer) is type(b.layer)
        assert a.layer.config() == b.layer.config()
        for k in a.layer.param_names:
            pa, pb = getattr(a.layer, k), getattr(b.layer, k)
            assert pb.dtype == pa.dtype
            numpy.testing.assert_array_equal(pa, pb)
    assert back.node("fc").layer.lrp_var == "epsilon" and back.node("fc").layer.lrp_param == 0.5
    x = rng.normal(size=(3, 7, 9, 2))
    for rule in ("epsilon", "alpha_beta", "gradient"):
        a = lrpflow.explain(model, x, rule=rule, dtype="float64")
        b = lrpflow.explain(back, x, rule=rule, dtype="float64")
        numpy.testing.assert_array_equal(a.logits, b.logits)
        numpy.testing.assert_array_equal(a.relevance, b.relevance)


def test_round_trip_of_a_sequential_keeps_the_toolbox_surface(tmp_path, shared):
    net = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    lrpflow.save_model(net, tmp_path / "lenet.hdf5")
    back = lrpflow.load_model(tmp_path / "lenet.hdf5")
    assert isinstance(back, lrpflow.Sequential) and [n.name for n in back.nodes] == [n.name for n in net.nodes]
    x = numpy.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1))
    y = net.forward(x)
    numpy.testing.assert_array_equal(back.forward(x), y)
    numpy.testing.assert_array_equal(back.lrp(y, "alphabeta", 2.0), net.lrp(y, "alphabeta", 2.0))


def test_layout_and_canonizers_survive(tmp_path):
    rng = numpy.random.default_rng(2)
    model = Model([Node("conv", Conv2d(3, 3, 1, 2, rng=rng), ("input",)),
                   Node("bn", BatchNorm(2, gamma=numpy.array([2.0, 0.5])), ("conv",)),
                   Node("gap", GlobalAvgPool(), ("bn",))], layout="NCHW")
    folded = fold_batchnorm(model)
    assert [n.name for n in folded.nodes] == ["conv+bn", "gap"]
    lrpflow.save_model(folded, tmp_path / "m.h5")
    back = lrpflow.load_model(tmp_path / "m.h5")
    assert back.layout == "NCHW" and back.canonizers == ["fold_batchnorm: bn -> conv+bn"]
    x = rng.normal(size=(2, 1, 5, 5))
    numpy.testing.assert_allclose(lrpflow.explain(back, x).relevance, lrpflow.explain(model, x).relevance,
                                  rtol=1e-5, atol=1e-6)


def test_file_layout(tmp_path):
    lrpflow.save_model(lrpflow.Sequential([Linear(3, 2, rng=0), ReLU()]), tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["format"] == b"lrpflow-model" and f.attrs["format_version"] == 2
        for name in ("format", "format_version", "lrpflow_version"):  # nothing in the global heap
            assert h5py.check_vlen_dtype(f.attrs.get_id(name).dtype) is None
        assert f["graph"].dtype == numpy.uint8 and f["graph"].compression is None
        graph = json.loads(bytes(f["graph"][()]))
        assert graph["kind"] == "sequential"
        assert graph["nodes"][0] == {"name": "0_linear", "type": "linear", "config": {"m": 3, "n": 2},
                                     "inputs": ["input"], "params": ["bias", "weight"], "lrp_var": None,
                                     "lrp_param": None}
        assert f["params/0/weight"].shape == (3, 2)


def _set_graph(f, text):
    del f["graph"]
    f.create_dataset("graph", data=numpy.frombuffer(text.encode(), dtype=numpy.uint8))


def _edit(path, graph=None, attrs=None, drop=None, data=None):
    with h5py.File(path, "r+") as f:
        if graph is not None:
            g = json.loads(bytes(f["graph"][()]))
            graph(g) if callable(graph) else None
            _set_graph(f, json.dumps(g) if callable(graph) else graph)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        if drop:
            del f[drop]
        for k, v in (data or {}).items():
            del f[k]
            f.create_dataset(k, data=v)


@pytest.mark.parametrize("edit,match", [
    (dict(attrs={"format": numpy.bytes_("something")}), "not an lrpflow model file"),
    (dict(attrs={"format": "lrpflow-model"}), "variable-length"),
    (dict(attrs={"format_version": 99}), "unsupported format_version 99"),
    (dict(attrs={"format_version": numpy.zeros(3, dtype=numpy.int64)}), "attribute 'format_version' must be"),
    (dict(graph="{not json"), "not valid JSON"),
    (dict(drop="graph"), "missing dataset 'graph'"),
    (dict(data={"graph": numpy.zeros(3, dtype=numpy.float32)}), "must be uint8 bytes"),
    (dict(graph=lambda g: g["nodes"][0].update(type="conv3d")), r"node 0 \('0_linear'\): unknown layer 'conv3d'"),
    (dict(graph=lambda g: g["nodes"][0].pop("config")), "missing field 'config'"),
    (dict(graph=lambda g: g["nodes"][0].update(config={"m": 3, "n": 2, "size": 4})), "cannot build linear"),
    (dict(graph=lambda g: g["nodes"][1].update(inputs=["nowhere"])), "nowhere"),
    (dict(graph=lambda g: g.update(kind="tree")), "graph kind"),
    (dict(graph=lambda g: g["nodes"][1].update(type="maxpool", config={"hp": 10**9, "wp": 10**9, "stride": [1, 1]})),
     r"node 1 \('1_relu'\): config hp=1000000000 exceeds 65536"),
    (dict(drop="params/0/weight"), "missing dataset params/0/weight"),
    (dict(data={"params/0/weight": numpy.zeros((4, 2))}), "weight must have shape"),
    (dict(data={"params/0/weight": numpy.array([["a", "b"]] * 3, dtype="S1")}), "not numeric"),
])
def test_malformed_native_files(tmp_path, edit, match):
    path = tmp_path / "m.h5"
    lrpflow.save_model(lrpflow.Sequential([Linear(3, 2, rng=0), ReLU()]), path)
    _edit(path, **edit)
    with pytest.raises(lrpflow.ModelFormatError, match=match) as info:
        lrpflow.load_model(path)
    assert str(path) in str(info.value)


def test_declared_size_beyond_the_file_is_refused(tmp_path):
    """A dataset whose declared shape is not stored (huge, unallocated) is refused before it is read."""
    path = tmp_path / "m.h5"
    lrpflow.save_model(lrpflow.Sequential([Linear(3, 2, rng=0)]), path)
    with h5py.File(path, "r+") as f:
        g = json.loads(bytes(f["graph"][()]))
        g["nodes"][0]["config"] = {"m": 100000, "n": 100000}
        _set_graph(f, json.dumps(g))
        del f["params/0/weight"]
        f.create_dataset("params/0/weight", shape=(100000, 100000), dtype="f8", chunks=(100, 100))
    with pytest.raises(lrpflow.ModelFormatError, match="declares shape"):
        lrpflow.load_model(path)


def test_not_hdf5_and_missing(tmp_path):
    p = tmp_path / "m.h5"
    p.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(lrpflow.ModelFormatError, match="not a readable lrpflow model"):
        lrpflow.load_model(p)
    with pytest.raises(lrpflow.ModelFormatError, match="missing.h5"):
        lrpflow.load_model(tmp_path / "missing.h5")


def test_unregistered_layer_cannot_be_written(tmp_path):
    class Custom(Identity):
        pass

    with pytest.raises(lrpflow.ModelFormatError, match="Custom is not registered"):
        lrpflow.save_model(lrpflow.Sequential([Custom()]), tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
