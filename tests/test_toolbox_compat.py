"""The toolbox-compatible surface reproduces the LRP Toolbox's numbers (TOOLBOX_SEMANTICS.md).

Expectations come from tests/reference.py, a re-implementation of the toolbox written
from the spec (explicit loops, float64).
"""
from __future__ import annotations

import numpy
import pytest

import lrpflow
import reference as ref
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh

VARIANTS = [(None, None), ("simple", None), ("epsilon", 0.01), ("epsilon", 1.0), ("alphabeta", 2.0),
            ("alpha", 1.0), ("alphabeta", 0.0), ("alphabeta", 0.5), ("flat", None), ("ww", None), ("w^2", None)]


def assert_maps_close(got, want, rel=1e-9):
    scale = max(numpy.abs(want).max(), 1e-300)
    assert numpy.isfinite(got).all()
    assert numpy.abs(got - want).max() <= rel * scale, numpy.abs(got - want).max() / scale


@pytest.fixture(scope="module")
def lenet(shared):
    return lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")


@pytest.fixture(scope="module")
def lenet_ref(shared):
    return ref.read_toolbox_txt(str(shared / "models" / "MNIST" / "LeNet-5.txt"))


def test_lenet5_accuracy_matches_toolbox(lenet, mnist):
    x, labels = mnist
    y = lenet.predict(x)
    assert y.dtype == numpy.float64 and y.shape == (10000, 10)
    assert (y.argmax(axis=1) == labels).mean() == 0.9924


def test_lenet5_layers(lenet):
    assert [type(m).__name__ for m in lenet.modules] == [
        "Conv2d", "ReLU", "SumPool", "Conv2d", "ReLU", "SumPool", "Conv2d", "ReLU", "SumPool", "Conv2d", "Flatten"]


@pytest.mark.parametrize("lrp_var,param", VARIANTS)
def test_lenet5_maps_match_toolbox(lenet, lenet_ref, mnist, lrp_var, param):
    x = mnist[0][:12]
    y = lenet.forward(x)
    y_ref, _ = ref.toolbox_forward(lenet_ref, x)
    assert numpy.abs(y - y_ref).max() < 1e-12
    r_init = y * (y == y.max(axis=1, keepdims=True))
    got = lenet.lrp(r_init, lrp_var, param)
    want = ref.toolbox_lrp(lenet_ref, x, r_init, lrp_var, param)
    assert got.shape == x.shape and got.dtype == numpy.float64
    if lrp_var in ("alphabeta",) and param == 0.0:  # the toolbox's plain division gives NaN where we give 0
        ok = numpy.isfinite(want)
        want = numpy.where(ok, want, 0.0)
    assert_maps_close(got, want)


def test_lenet5_epsilon_conservation_as_the_formula_predicts(lenet, mnist):
    """ε conserves what the biases and ε do not absorb: ΣR_in = ΣR_init − Σ_nodes absorbed."""
    x = mnist[0][:32]
    exp = lrpflow.explain(lenet, x, rule="epsilon", epsilon=0.01, dtype="float64")
    absorbed = sum(e.absorbed for e in exp.ledger.values())
    numpy.testing.assert_allclose(exp.relevance.reshape(32, -1).sum(1), exp.r_init.sum(1) - absorbed, rtol=1e-9)
    # a larger ε absorbs more: less relevance reaches the input
    big = lrpflow.explain(lenet, x, rule="epsilon", epsilon=1.0, dtype="float64")
    assert (big.relevance.reshape(32, -1).sum(1) < exp.relevance.reshape(32, -1).sum(1)).all()


def test_lenet5_without_biases_conserves(lenet, mnist):
    """With all biases zero, LRP-0 and αβ(α=1) conserve to rounding (TOOLBOX_SEMANTICS.md)."""
    x = mnist[0][:32]
    net = lrpflow.Sequential([type(m)(**m.config()) for m in lenet.modules])
    for new, old in zip(net.modules, lenet.modules):
        if "bias" in old.param_names:
            new.set_params(weight=old.weight, bias=numpy.zeros_like(old.bias))
    y = net.forward(x)
    r_init = y * (y == y.max(1, keepdims=True))
    for var, p in [("simple", None), ("alphabeta", 1.0)]:
        r = net.lrp(r_init, var, p)
        numpy.testing.assert_allclose(r.reshape(32, -1).sum(1), y.max(1), rtol=1e-10)


def _with_head(layers, shape, rng, n_out=3):
    net = lrpflow.Sequential(layers)
    flat = net.infer_shapes(shape)[net.nodes[-1].name]
    layers.append(Linear(flat[0], n_out, rng=rng))
    for m in layers:
        if "bias" in m.param_names:
            m.set_params(bias=rng.normal(0, 0.3, m.bias.shape))
    return lrpflow.Sequential(layers)


def random_toolbox_net(rng, kind):
    """Small random toolbox-style nets with MaxPool and Tanh (signed inputs after Tanh)."""
    if kind == "mlp_tanh":
        return _with_head([Linear(6, 5, rng=rng), Tanh(), Linear(5, 4, rng=rng), ReLU()], (6,), rng), (6,)
    if kind == "cnn_max_tanh":
        layers = [Conv2d(3, 3, 2, 4, rng=rng), Tanh(), MaxPool(2, 2, stride=(2, 2)), Conv2d(2, 2, 4, 5, rng=rng),
                  ReLU(), MaxPool(2, 2, stride=(1, 1)), Flatten()]
        return _with_head(layers, (8, 8, 2), rng), (8, 8, 2)
    layers = [Conv2d(3, 3, 1, 3, rng=rng), ReLU(), SumPool(2, 2, stride=(2, 2)), Conv2d(2, 2, 3, 4, stride=(2, 1), rng=rng),
              Tanh(), Flatten()]
    return _with_head(layers, (9, 9, 1), rng), (9, 9, 1)


def to_ref_layers(net):
    out = []
    for m in net.modules:
        name = m.toolbox_name
        d = {"type": name}
        if name in ("Linear", "Convolution"):
            d.update(W=m.weight, B=m.bias)
            if name == "Convolution":
                d["stride"] = m.stride
        if name in ("SumPool", "MaxPool"):
            d.update(pool=m.pool, stride=m.stride)
        out.append(d)
    return out


@pytest.mark.parametrize("kind", ["mlp_tanh", "cnn_max_tanh", "cnn_sum_tanh"])
@pytest.mark.parametrize("lrp_var,param", VARIANTS)
def test_random_nets_match_toolbox(kind, lrp_var, param):
    rng = numpy.random.default_rng(7)
    net, shape = random_toolbox_net(rng, kind)
    x = rng.normal(0, 1, (5, *shape))
    if kind == "cnn_max_tanh":  # plateaus: identical windows must give identical conv outputs (MaxPool ties)
        x[:, :4, :4, :] = -1.0
    y = net.forward(x)
    layers = to_ref_layers(net)
    y_ref, _ = ref.toolbox_forward(layers, x)
    assert numpy.abs(y - y_ref).max() < 1e-12
    r_init = y * (y == y.max(axis=1, keepdims=True))
    got = net.lrp(r_init, lrp_var, param)
    want = ref.toolbox_lrp(layers, x, r_init, lrp_var, param)
    finite = numpy.isfinite(want)
    assert_maps_close(got, numpy.where(finite, want, 0.0))


def test_per_layer_presets_match_toolbox(lenet, lenet_ref, mnist):
    """set_lrp_parameters per module, then lrp(R) without a rule, as toolbox scripts do."""
    x = mnist[0][:6]
    presets = [("alphabeta", 1.0), (None, None), (None, None), ("epsilon", 0.1), (None, None), ("flat", None),
               ("ww", None), (None, None), ("epsilon", 0.01), ("epsilon", 1e-3), (None, None)]
    for m, (v, p) in zip(lenet.modules, presets):
        m.set_lrp_parameters(v, p)
    try:
        y = lenet.forward(x)
        r_init = y * (y == y.max(1, keepdims=True))
        got = lenet.lrp(r_init)
        want = ref.toolbox_lrp(lenet_ref, x, r_init, [v for v, _ in presets], [p for _, p in presets])
        assert_maps_close(got, want)
        # an explicit rule overrides every preset
        assert_maps_close(lenet.lrp(r_init, "epsilon", 0.5), ref.toolbox_lrp(lenet_ref, x, r_init, "epsilon", 0.5))
    finally:
        lenet.set_lrp_parameters(None, None)


def test_xor_net_loads_and_drops_softmax(shared):
    net = lrpflow.load_model(shared / "models" / "XOR" / "xor_net_small.txt")
    assert isinstance(net.modules[-1], SoftMax)
    x = numpy.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    p = net.forward(x)
    numpy.testing.assert_allclose(p.sum(1), 1.0)
    assert list(p.argmax(1)) == [0, 1, 1, 0] or list(p.argmax(1)) == [1, 0, 0, 1]
    net.drop_softmax_output_layer()
    assert not isinstance(net.modules[-1], SoftMax)
    y = net.forward(x)
    layers = ref.read_toolbox_txt(str(shared / "models" / "XOR" / "xor_net_small.txt"))[:-1]
    r_init = y * (y == y.max(1, keepdims=True))
    for v, p in VARIANTS:
        want = ref.toolbox_lrp(layers, x, r_init, v, p)
        assert_maps_close(net.lrp(r_init, v, p), numpy.where(numpy.isfinite(want), want, 0.0))


def test_lrp_errors(lenet, mnist):
    lenet.clean()
    with pytest.raises(lrpflow.LrpflowError, match="forward"):
        lenet.lrp(numpy.zeros((1, 10)))
    y = lenet.forward(mnist[0][:2])
    with pytest.raises(lrpflow.ShapeError):
        lenet.lrp(numpy.zeros((3, 10)))
    with pytest.raises(lrpflow.UnknownNameError, match="known"):
        lenet.lrp(y, "nonsense", 1.0)
    with pytest.raises(lrpflow.ConfigError, match="parameter"):
        lenet.lrp(y, "epsilon")
