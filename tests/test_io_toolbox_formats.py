"""The toolbox's pickles and Matlab models: identical LeNet-5 from .txt/.nn/.mat, safe unpickling, round trips."""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap

import numpy
import pytest

import lrpflow
from lrpflow.io import toolbox_pickle
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh


@pytest.fixture(scope="module")
def lenets(shared):
    folder = shared / "models" / "MNIST"
    return {ext: lrpflow.load_model(folder / f"LeNet-5.{ext}") for ext in ("txt", "nn", "mat")}


def test_three_lenet_files_give_identical_models(lenets):
    txt = lenets["txt"]
    for ext in ("nn", "mat"):
        other = lenets[ext]
        assert isinstance(other, lrpflow.Sequential) and len(other.modules) == len(txt.modules) == 11
        for a, b in zip(txt.modules, other.modules):
            assert type(a) is type(b) and a.config() == b.config()
            for k in a.param_names:
                pa, pb = getattr(a, k), getattr(b, k)
                assert pa.dtype == pb.dtype == numpy.float64
                numpy.testing.assert_array_equal(pa, pb)  # max difference 0
    x = numpy.random.default_rng(0).uniform(-1, 1, size=(4, 32, 32, 1))
    y = txt.forward(x)
    for ext in ("nn", "mat"):
        numpy.testing.assert_array_equal(lenets[ext].forward(x), y)
        r = lenets[ext].lrp(y * (y == y.max(axis=1, keepdims=True)), "epsilon", 0.01)
        numpy.testing.assert_array_equal(r, txt.lrp(y * (y == y.max(axis=1, keepdims=True)), "epsilon", 0.01))


@pytest.mark.slow
def test_lenet_accuracy_on_mnist_from_the_mat_model(lenets, mnist):
    x, labels = mnist
    pred = lenets["mat"].predict(x, batch_size=2000).argmax(axis=1)
    assert (pred == labels).mean() == pytest.approx(0.9924, abs=1e-12)


def _net(rng=None):
    rng = numpy.random.default_rng(4) if rng is None else rng
    net = lrpflow.Sequential([Conv2d(3, 3, 2, 3, stride=(1, 2), rng=rng), Tanh(), MaxPool(2, 2, stride=(1, 1)),
                              SumPool(2, 1, stride=(1, 1)), Flatten(), Linear(6, 4, rng=rng), ReLU(),
                              Linear(4, 3, rng=rng), SoftMax()])
    net.modules[0].set_params(bias=rng.normal(size=3))
    net.modules[5].set_lrp_parameters("alphabeta", 2.0)
    return net


@pytest.mark.parametrize("ext", ["nn", "pickle", "mat", "txt"])
def test_round_trip_every_toolbox_layer(tmp_path, ext):
    net = _net()
    lrpflow.save_model(net, tmp_path / f"m.{ext}")
    back = lrpflow.load_model(tmp_path / f"m.{ext}")
    for a, b in zip(net.modules, back.modules):
        assert type(a) is type(b) and a.config() == b.config()
        for k in a.param_names:
            numpy.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    if ext != "txt":  # the text format carries no LRP presets
        assert back.modules[5].lrp_var == "alphabeta" and back.modules[5].lrp_param == 2.0
    x = numpy.random.default_rng(1).normal(size=(3, 5, 8, 2))
    y = net.forward(x)
    numpy.testing.assert_array_equal(back.forward(x), y)
    numpy.testing.assert_array_equal(back.lrp(y, "epsilon", 0.1), net.lrp(y, "epsilon", 0.1))


def test_pickle_without_suffix_and_by_name(tmp_path):
    net = _net()
    lrpflow.save_model(net, tmp_path / "model")  # no suffix: the toolbox wrote pickles then
    assert isinstance(lrpflow.load_model(tmp_path / "model"), lrpflow.Sequential)
    lrpflow.save_model(net, tmp_path / "m.bin", format="pickle")
    lrpflow.load_model(tmp_path / "m.bin", format="toolbox_pickle")


def test_written_pickle_loads_with_the_toolbox_classes(tmp_path):
    """A plain ``pickle.load`` with a stand-in of the toolbox's ``modules`` package reads our file."""
    lrpflow.save_model(_net(), tmp_path / "m.nn")
    pkg = tmp_path / "fake" / "modules"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for kind in toolbox_pickle.KINDS:
        (pkg / f"{kind.lower()}.py").write_text(f"class {kind}:\n    pass\n")
    script = textwrap.dedent(f"""
        import pickle, sys
        sys.path.insert(0, {str(tmp_path / 'fake')!r})
        net = pickle.load(open({str(tmp_path / 'm.nn')!r}, 'rb'))
        print(type(net).__module__, [type(m).__name__ for m in net.modules], net.modules[0].W.shape,
              net.modules[0].stride, net.modules[5].lrp_var)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["modules.sequential", "['Convolution',", "'Tanh',", "'MaxPool',", "'SumPool',", "'Flatten',",
                           "'Linear',", "'Rect',", "'Linear',", "'SoftMax']", "(3,", "3,", "2,", "3)", "(1,", "2)",
                           "alphabeta"]


# --------------------------------------------------------------------------- security


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.nn"
    path.write_bytes(pickle.dumps(_Payload(f"touch {marker}"), protocol=2))
    with pytest.raises(lrpflow.ModelFormatError, match=r"refused global (posix|os|nt)\.system") as info:
        lrpflow.load_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_payload_hidden_inside_a_valid_model_never_runs(tmp_path, shared):
    """A real toolbox model whose layer state also carries an os.system call."""
    marker = tmp_path / "pwned"
    stream = io.BytesIO()
    net = toolbox_pickle.unpickle((shared / "models" / "MNIST" / "LeNet-5.nn").read_bytes())
    net.state["modules"][0].state["extra"] = _Payload(f"touch {marker}")

    class P(toolbox_pickle._ToolboxPickler):
        pass

    P(stream, protocol=2).dump(net)
    path = tmp_path / "evil.nn"
    path.write_bytes(stream.getvalue())
    with pytest.raises(lrpflow.ModelFormatError, match="refused global"):
        lrpflow.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
    ("modules.linear", "Sigmoid"), ("modules", "Module"), ("copyreg", "__newobj__"), ("pickle", "loads"),
])
def test_non_admitted_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "bad.pickle"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")  # call the global with no arguments
    with pytest.raises(lrpflow.ModelFormatError, match=f"refused global {module}.{name}"):
        lrpflow.load_model(path)


def test_huge_memo_index_is_refused_before_unpickling(tmp_path):
    """A PUT at index 1.5e9 would make the C unpickler allocate a 12 GB memo."""
    path = tmp_path / "dos.nn"
    path.write_bytes(b"\x80\x02N" + b"r" + (1481519217).to_bytes(4, "little") + b".")
    with pytest.raises(lrpflow.ModelFormatError, match="memo index 1481519217 at byte 3 is out of range"):
        lrpflow.load_model(path)


def test_codecs_encode_is_latin1_only(tmp_path):
    path = tmp_path / "bad.nn"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(lrpflow.ModelFormatError, match="rot13"):
        lrpflow.load_model(path)


@pytest.mark.parametrize("payload,match", [
    (b"", "empty model file"),
    (b"\x80\x02", "not a toolbox model pickle"),
    (pickle.dumps([1, 2, 3], protocol=2), "holds a list"),
    (pickle.dumps(numpy.zeros(3), protocol=2), "holds a ndarray"),
])
def test_malformed_pickles(tmp_path, payload, match):
    path = tmp_path / "m.nn"
    path.write_bytes(payload)
    with pytest.raises(lrpflow.ModelFormatError, match=match) as info:
        lrpflow.load_model(path)
    assert str(path) in str(info.value)


def _pickle_of(state_by_layer):
    objs = [toolbox_pickle.STAND_INS[kind](state) for kind, state in state_by_layer]
    seq = toolbox_pickle.STAND_INS["Sequential"]({"modules": objs})
    buf = io.BytesIO()
    toolbox_pickle._ToolboxPickler(buf, protocol=2).dump(seq)
    return buf.getvalue()


@pytest.mark.parametrize("layers,match", [
    ([("Linear", {"W": numpy.zeros((3, 2)), "B": numpy.zeros(3)})], r"module 0 \(Linear\): B has shape \(3,\)"),
    ([("Linear", {"W": numpy.zeros((3, 2)), "B": numpy.zeros(2), "m": 4})], "m=4 does not match"),
    ([("Linear", {"B": numpy.zeros(2)})], "missing attribute 'W'"),
    ([("Convolution", {"W": numpy.zeros((3, 3, 1)), "B": numpy.zeros(1)})], "4 dimensions"),
    ([("SumPool", {"pool": (2, "x"), "stride": (2, 2)})], "pair of integers"),
    ([("Linear", {"W": numpy.full((1, 1), numpy.nan), "B": numpy.zeros(1)})], "NaN"),
])
def test_malformed_toolbox_objects_name_the_module(tmp_path, layers, match):
    path = tmp_path / "m.nn"
    path.write_bytes(_pickle_of(layers))
    with pytest.raises(lrpflow.ModelFormatError, match=match):
        lrpflow.load_model(path)


# --------------------------------------------------------------------------- Matlab files


def test_mat_data_file_is_not_a_model(shared):
    path = shared / "data" / "MNIST" / "test_labels.mat"
    with pytest.raises(lrpflow.ModelFormatError, match=r"no toolbox model.*variables: data"):
        lrpflow.load_model(path)


def test_mat_model_with_a_single_filter_convolution(tmp_path):
    """MATLAB drops trailing singleton dimensions (W of a 1-filter convolution is h×w×d); filtersize restores them."""
    rng = numpy.random.default_rng(0)
    net = lrpflow.Sequential([Conv2d(2, 2, 3, 1, rng=rng), ReLU(), Flatten()])
    lrpflow.save_model(net, tmp_path / "one.mat")
    back = lrpflow.load_model(tmp_path / "one.mat")
    numpy.testing.assert_array_equal(back.modules[0].weight, net.modules[0].weight)


def test_unsupported_layers_cannot_be_written_in_toolbox_formats(tmp_path):
    net = lrpflow.Sequential([Linear(3, 2, rng=0), lrpflow.layers.Sigmoid()])
    for ext in ("nn", "mat", "txt"):
        with pytest.raises(lrpflow.ModelFormatError, match="Sigmoid"):
            lrpflow.save_model(net, tmp_path / f"m.{ext}")
        assert not (tmp_path / f"m.{ext}").exists()
