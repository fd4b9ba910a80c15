"""The toolbox's plain-text model format: current and legacy layouts, lossless writing, clear errors."""
from __future__ import annotations

import numpy
import pytest

import lrpflow
from lrpflow.io import toolbox_txt
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh


def test_legacy_layout_equals_current(tmp_path):
    rng = numpy.random.default_rng(0)
    w1, b1, w2, b2 = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=(4, 2)), rng.normal(size=2)
    rows = lambda w: "\n".join(" ".join(repr(float(v)) for v in row) for row in w)  # noqa: E731
    legacy = f"Linear 3 4\n{rows(w1)}\n{' '.join(repr(float(v)) for v in b1)}\nRect\nLinear 4 2\n{rows(w2)}\n{' '.join(repr(float(v)) for v in b2)}\nSoftMax\n"
    (tmp_path / "legacy.txt").write_text(legacy)
    net = lrpflow.load_model(tmp_path / "legacy.txt")
    assert [type(m) for m in net.modules] == [Linear, ReLU, Linear, SoftMax]
    numpy.testing.assert_array_equal(net.modules[0].weight, w1)
    numpy.testing.assert_array_equal(net.modules[2].bias, b2)


def test_round_trip_is_lossless(tmp_path):
    rng = numpy.random.default_rng(1)
    net = lrpflow.Sequential([Conv2d(3, 3, 1, 2, stride=(1, 2), rng=rng), Tanh(), MaxPool(2, 2, stride=(1, 1)),
                              SumPool(2, 2, stride=(2, 2)), Flatten(), Linear(4, 3, rng=rng),
                              ReLU(), SoftMax()])
    net.modules[0].set_params(bias=rng.normal(size=2) / 3)
    x = rng.normal(size=(2, 8, 8, 1))
    assert net.infer_shapes((8, 8, 1))["4_flatten"] == (4,)
    lrpflow.save_model(net, tmp_path / "m.txt")
    back = lrpflow.load_model(tmp_path / "m.txt")
    for a, b in zip(net.modules, back.modules):
        assert type(a) is type(b) and a.config() == b.config()
        for k in a.param_names:
            numpy.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    numpy.testing.assert_array_equal(net.forward(x), back.forward(x))
    text = (tmp_path / "m.txt").read_text()
    assert "np.float64" not in text and text.endswith("\n")


def test_lenet_round_trip(shared, tmp_path):
    net = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    lrpflow.save_model(net, tmp_path / "lenet.txt")
    back = lrpflow.load_model(tmp_path / "lenet.txt")
    x = numpy.random.default_rng(0).normal(size=(2, 32, 32, 1))
    numpy.testing.assert_array_equal(net.forward(x), back.forward(x))


@pytest.mark.parametrize("text,line,what", [
    ("", None, "empty"),
    ("Linear 2 2\n1 2 3 4\n", 3, "end of file"),
    ("Linear 2 2\n1 2 3\n0 0\n", 2, "expected 4"),
    ("Linear 2 2\n1 2 3 4\n0 0 0\n", 3, "expected 2 values"),
    ("Linear 2 2\n1 2 x 4\n0 0\n", 2, "non-numeric token 'x'"),
    ("Linear 2 2\n1 2 3 4\n0 0\nSigmoid\n", 4, "unknown layer 'Sigmoid'"),
    ("Linear 2 2\n1 2 3 4\n0 0\n\nRect\n", 4, "blank line"),
    ("Convolution 2 2 1\n", 1, "needs 6 integers"),
    ("MaxPool 2 2 a 2\n", 1, "integers"),
    ("Rect 3\n", 1, "takes no arguments"),
    ("Linear 2 2\n1 2 nan 4\n0 0\n", 2, "NaN"),
])
def test_malformed_files_name_the_line(tmp_path, text, line, what):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(lrpflow.ModelFormatError, match=what) as info:
        lrpflow.load_model(p)
    assert str(p) in str(info.value)
    if line is not None:
        assert f"line {line}:" in str(info.value)


def test_binary_and_missing_files(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(lrpflow.ModelFormatError, match="not a text model"):
        lrpflow.load_model(p)
    with pytest.raises(lrpflow.ModelFormatError, match="cannot read"):
        lrpflow.load_model(tmp_path / "missing.txt")
    with pytest.raises(lrpflow.ModelFormatError, match="no model reader for suffix '.xyz'"):
        lrpflow.load_model(tmp_path / "m.xyz")


def test_writing_a_non_toolbox_layer_fails_cleanly(tmp_path):
    net = lrpflow.Sequential([Linear(2, 2, rng=0), lrpflow.layers.Sigmoid()])
    with pytest.raises(lrpflow.ModelFormatError, match="Sigmoid"):
        toolbox_txt.write(net, tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()
