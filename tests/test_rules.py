"""Every rule on every affine layer against the slow explicit formulas of tests/reference.py.

float64, max abs error < 1e-10; signed inputs (as after Tanh), with and without bias,
zero denominators; the engine's fast paths (inputs known ≥ 0, z read from the forward
output) are compared too.
"""
from __future__ import annotations

import numpy
import pytest

import lrpflow
import reference as ref
from lrpflow.backend import to_numpy
from lrpflow.layers import Add, AvgPool, BatchNorm, Conv2d, GlobalAvgPool, Linear, MaxPool, SumPool
from lrpflow.rules import make_rule
from lrpflow.rules.base import NodeContext

TOL = 1e-10


def close(got, want):
    """max abs error < 1e-10, scaled by the map's magnitude where near-zero denominators make it large."""
    return numpy.abs(got - want).max() < TOL * max(1.0, numpy.abs(want).max())

# (registry name, parameters) — reference names: see tests/reference.py
CASES = [
    ("z", {}), ("z", {"bias": False}),
    ("epsilon", {"epsilon": 0.1}), ("epsilon", {"epsilon": 0.1, "bias": False}), ("epsilon", {"epsilon": 0.0}),
    ("gamma", {"gamma": 0.25}), ("gamma", {"gamma": 1.0, "bias": False}),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("alpha_beta", {"alpha": 1.5, "beta": 0.5, "bias": False}),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}), ("zplus", {}), ("zplus", {"bias": False}),
    ("zbox", {"low": -1.0, "high": 2.0}), ("wsquare", {}), ("flat", {}),
]
REF_PARAMS = {"zplus": {}, "z": {}}


def engine(layer, xs, r, name, params, xp, nonneg=False):
    """Run one rule on one layer through the engine (with its fast paths as in a model)."""
    rule = make_rule(name, **params)
    xs = [xp.asarray(x) for x in xs]
    y = layer.forward(*xs)
    z = layer.z_from_output(y) if hasattr(layer, "z_from_output") else None
    ctx = NodeContext("n", {}, tuple(nonneg for _ in xs), z=z)
    out = rule.backward(layer, xs, y, xp.asarray(r), ctx)
    return [to_numpy(o) for o in out]


def signed(rng, shape):
    x = rng.normal(0, 1, shape)
    x[..., 0] = 0.0  # exact zeros among the inputs
    return x


@pytest.mark.parametrize("name,params", CASES, ids=lambda v: str(v))
def test_linear_matches_reference(name, params, rng, xp):
    layer = Linear(7, 5, rng=rng, bias=rng.normal(0, 0.5, 5))
    x = signed(rng, (4, 7))
    r = rng.normal(0, 1, (4, 5))
    got = engine(layer, [x], r, name, params, xp)[0]
    want = ref.linear_rule(x, layer.weight, layer.bias, r, name, **params)
    assert close(got, want)
    if name != "zbox":  # the nonneg fast path on non-negative inputs
        xn = numpy.abs(x)
        got = engine(layer, [xn], r, name, params, xp, nonneg=True)[0]
        want = ref.linear_rule(xn, layer.weight, layer.bias, r, name, **params)
        assert close(got, want)


@pytest.mark.parametrize("name,params", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("stride,padding", [((1, 1), (0, 0)), ((2, 1), (1, 2)), ((2, 2), (1, 1))])
def test_conv2d_matches_reference(name, params, stride, padding, rng, xp):
    layer = Conv2d(3, 2, 3, 4, stride=stride, padding=padding, rng=rng, bias=rng.normal(0, 0.5, 4))
    x = signed(rng, (2, 7, 6, 3))
    y = layer.forward(x)
    r = rng.normal(0, 1, y.shape)
    numpy.testing.assert_allclose(y, ref.conv2d_forward(x, layer.weight, layer.bias, stride, padding), atol=1e-12)
    got = engine(layer, [x], r, name, params, xp)[0]
    want = ref.conv2d_rule(x, layer.weight, layer.bias, r, stride, padding, name, **params)
    assert got.shape == x.shape
    assert close(got, want)
    if name != "zbox":
        xn = numpy.abs(x)
        got = engine(layer, [xn], r, name, params, xp, nonneg=True)[0]
        want = ref.conv2d_rule(xn, layer.weight, layer.bias, r, stride, padding, name, **params)
        assert close(got, want)


@pytest.mark.parametrize("kernel,stride,padding", [((4, 4), (1, 1), (0, 0)), ((5, 5), (1, 1), (2, 2)),
                                                   ((7, 7), (2, 2), (3, 3)), ((3, 5), (1, 2), (1, 0))])
def test_flat_on_large_kernels_matches_reference(kernel, stride, padding, rng, xp):
    """LRP-flat's one-channel window transpose (separable from 4×4 windows) and its channel sum, with
    windows reaching into the padding (smaller |window|)."""
    layer = Conv2d(*kernel, 3, 5, stride=stride, padding=padding, rng=rng, bias=rng.normal(0, 0.5, 5))
    x = signed(rng, (2, 11, 9, 3))
    r = rng.normal(0, 1, layer.forward(x).shape)
    got = engine(layer, [x], r, "flat", {}, xp)[0]
    assert close(got, ref.conv2d_rule(x, layer.weight, layer.bias, r, stride, padding, "flat"))


def test_zero_denominators_give_zero_not_nan(xp):
    """A neuron whose contributions cancel exactly (z_j = 0) with ε = 0 passes no relevance."""
    w = numpy.array([[1.0, 1.0], [-1.0, 2.0]])
    layer = Linear(2, 2, weight=w, bias=numpy.zeros(2))
    x = numpy.array([[1.0, 1.0], [0.0, 0.0]])  # neuron 0: 1 − 1 = 0; second sample all zero
    r = numpy.ones((2, 2))
    for name, params in CASES:
        got = engine(layer, [x], r, name, params, xp)[0]
        assert numpy.isfinite(got).all(), name
        want = ref.linear_rule(x, w, layer.bias, r, name, **params)
        assert numpy.abs(got - want).max() < 1e-6 * max(1.0, numpy.abs(want).max()), name
    got = engine(layer, [x], r, "epsilon", {"epsilon": 0.0}, xp)[0]
    numpy.testing.assert_array_equal(got[1], [0.0, 0.0])
    # neuron 0 gets nothing, neuron 1 (z = 3) splits 1/3 : 2/3
    numpy.testing.assert_allclose(got[0], [1 / 3, 2 / 3])


@pytest.mark.parametrize("rule", ["z", "epsilon", "alpha_beta", "zplus", "flat", "wsquare"])
def test_sumpool_and_avgpool_match_reference(rule, rng, xp):
    params = {"epsilon": {"epsilon": 0.05}, "alpha_beta": {"alpha": 2.0, "beta": 1.0}}.get(rule, {})
    x = signed(rng, (2, 6, 7, 2))
    for layer, fn in [(SumPool(2, 3, stride=(2, 2)), ref.sumpool_rule), (AvgPool(3, 2, stride=(1, 2)), ref.avgpool_rule)]:
        y = layer.forward(x)
        r = rng.normal(0, 1, y.shape)
        got = engine(layer, [x], r, rule, params, xp)[0]
        want = fn(x, r, layer.pool, layer.stride, rule, **params)
        assert close(got, want), type(layer).__name__


def test_maxpool_rules_match_reference(rng, xp):
    x = numpy.round(rng.normal(0, 1, (2, 6, 6, 3)), 1)  # rounding makes ties
    x[:, :3, :3, :] = 0.5  # a plateau: every window there is a tie
    layer = MaxPool(2, 2, stride=(1, 1))
    y = layer.forward(x)
    r = rng.normal(0, 1, y.shape)
    numpy.testing.assert_array_equal(y, ref.maxpool_forward(x, (2, 2), (1, 1)))
    for rule, want in [("epsilon", ref.maxpool_wta(x, r, (2, 2), (1, 1))),
                       ("winner_take_all", ref.maxpool_wta(x, r, (2, 2), (1, 1))),
                       ("proportional", ref.maxpool_proportional(x, r, (2, 2), (1, 1))),
                       ("flat", ref.maxpool_flat(x, r, (2, 2), (1, 1))),
                       ("wsquare", ref.maxpool_flat(x, r, (2, 2), (1, 1)))]:
        got = engine(layer, [x], r, rule, {}, xp)[0]
        assert close(got, want), rule


@pytest.mark.parametrize("name,params", [c for c in CASES if c[0] != "zbox"], ids=lambda v: str(v))
def test_add_and_batchnorm_match_reference(name, params, rng, xp):
    xs = [signed(rng, (3, 4, 4, 2)), signed(rng, (3, 4, 4, 2))]
    r = rng.normal(0, 1, xs[0].shape)
    got = engine(Add(), xs, r, name, params, xp)
    want = ref.add_rule(xs, r, name, **params)
    for g, w in zip(got, want):
        assert close(g, w)
    bn = BatchNorm(2, gamma=rng.normal(1, 0.5, 2), beta=rng.normal(0, 0.5, 2), mean=rng.normal(0, 0.5, 2),
                   var=rng.uniform(0.5, 2, 2), eps=1e-5)
    scale = bn.gamma / numpy.sqrt(bn.var + bn.eps)
    shift = bn.beta - bn.mean * scale
    numpy.testing.assert_allclose(bn.forward(xs[0]), xs[0] * scale + shift, rtol=1e-12)
    got = engine(bn, [xs[0]], r, name, params, xp)[0]
    want = ref.batchnorm_rule(xs[0], scale, shift, r, name, **params)
    assert close(got, want)


def test_global_avg_pool_epsilon_is_proportional(rng, xp):
    x = rng.normal(0, 1, (2, 3, 4, 5))
    r = rng.normal(0, 1, (2, 5))
    got = engine(GlobalAvgPool(), [x], r, "z", {}, xp)[0]
    want = x / x.sum(axis=(1, 2), keepdims=True) * r[:, None, None, :]
    numpy.testing.assert_allclose(got, want, rtol=1e-9)


def test_alpha_beta_validation():
    with pytest.raises(lrpflow.ConfigError, match="alpha - beta must be 1"):
        make_rule("alpha_beta", alpha=2.0, beta=2.0)
    assert make_rule("alphabeta", alpha=3.0).beta == 2.0  # toolbox: β from α
    with pytest.raises(lrpflow.ConfigError):
        make_rule("epsilon", epsilon=-1.0)
    with pytest.raises(lrpflow.ConfigError, match="no parameter"):
        make_rule("epsilon", gama=1.0)
    with pytest.raises(lrpflow.UnknownNameError, match="known rules"):
        make_rule("epsilonn")
    assert make_rule("lrp.epsilon_IB", epsilon=0.1).bias is False
    assert make_rule("ww") == make_rule("wsquare")


# --- rule scope (issue 11): rules act on layers with weights, `norm` on parameter-free linear layers ---


def _scope_net(rng):
    from lrpflow.graph import Model, Node

    nodes = [
        Node("conv", Conv2d(3, 3, 2, 3, padding=1, rng=rng), ("input",)),
        Node("relu", lrpflow.layers.ReLU(), ("conv",)),
        Node("avg", AvgPool(2, 2), ("relu",)),
        Node("max", MaxPool(2, 2, stride=(1, 1)), ("avg",)),
        Node("add", Add(), ("max", "max")),
        Node("gap", GlobalAvgPool(), ("add",)),
        Node("fc", Linear(3, 2, rng=rng), ("gap",)),
    ]
    return Model(nodes, input_shape=(6, 6, 2))


def test_rule_scope_single_rule_and_composites(rng):
    from lrpflow.rules import AlphaBeta, Epsilon, Gradient, Norm, WinnerTakeAll, ZBox

    net = _scope_net(rng)
    rules = lrpflow.Explainer(net, rule="epsilon", epsilon=0.25).rules()
    assert rules["conv"] == rules["fc"] == Epsilon(0.25)
    assert rules["avg"] == rules["add"] == rules["gap"] == Norm() and rules["max"] == WinnerTakeAll()
    assert Norm().stabilizer == 1e-16 and make_rule("norm") == Norm()
    for preset in ("epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus_flat"):
        rules = lrpflow.Explainer(net, composite=preset).rules()
        assert rules["avg"] == rules["add"] == rules["gap"] == Norm(), preset
    box = lrpflow.Explainer(net, composite="epsilon_gamma_box", low=-1.0, high=1.0).rules()
    assert box["conv"] == ZBox(-1.0, 1.0)
    # overrides by kind still set any rule; whole-model methods are not scoped
    comp = {"default": "alpha_beta", "overrides": [{"kind": "pool", "rule": "epsilon", "epsilon": 0.25},
                                                   {"kind": "add", "rule": "z"}]}
    rules = lrpflow.Explainer(net, composite=comp).rules()
    assert rules["avg"] == rules["gap"] == rules["max"] == Epsilon(0.25) and rules["add"] == make_rule("z")
    assert rules["conv"] == AlphaBeta(2.0, 1.0) and rules["fc"] == AlphaBeta(2.0, 1.0)
    assert set(lrpflow.Explainer(net, rule="gradient").rules().values()) == {Gradient()}
    # a BatchNorm that is not folded (here: after a concatenation) has no weights in this sense: norm
    import nets

    rules = lrpflow.Explainer(nets.concat_net(rng), rule="alpha_beta").rules()
    assert rules["bn"] == rules["pool"] == Norm() and rules["a"] == AlphaBeta(2.0, 1.0)


def test_input_rule_skips_parameter_free_layers(rng):
    from lrpflow.composites import Composite
    from lrpflow.graph import Model, Node
    from lrpflow.rules import Flat, Norm

    net = Model([Node("pool", AvgPool(2, 2), ("input",)), Node("flat", lrpflow.layers.Flatten(), ("pool",)),
                 Node("fc", Linear(8, 2, rng=rng), ("flat",))], input_shape=(4, 4, 2))
    rules = Composite("epsilon", input_rule="flat").assign(net)
    assert rules["pool"] == Norm() and rules["fc"] == Flat()


def test_single_rule_puts_norm_on_pools_end_to_end(rng):
    """ε = 0.25 on the conv and the dense layer, the plain proportional split on the AvgPool."""
    conv = Conv2d(3, 3, 2, 3, padding=1, rng=rng, bias=rng.normal(0, 0.3, 3))
    fc = Linear(27, 2, rng=rng, bias=rng.normal(0, 0.3, 2))
    net = lrpflow.Sequential([conv, lrpflow.layers.ReLU(), AvgPool(2, 2, stride=(2, 2)), lrpflow.layers.Flatten(), fc],
                             input_shape=(6, 6, 2))
    x = signed(rng, (2, 6, 6, 2))
    out = lrpflow.explain(net, x, rule="epsilon", epsilon=0.25, dtype="float64", target=1)
    a = numpy.maximum(ref.conv2d_forward(x, conv.weight, conv.bias, (1, 1), (1, 1)), 0)
    p = ref.avgpool_forward(a, (2, 2), (2, 2))
    logits = ref.linear_forward(p.reshape(2, -1), fc.weight, fc.bias)
    r = numpy.zeros_like(logits)
    r[:, 1] = logits[:, 1]
    r = ref.linear_rule(p.reshape(2, -1), fc.weight, fc.bias, r, "epsilon", epsilon=0.25).reshape(p.shape)
    r = ref.avgpool_rule(a, r, (2, 2), (2, 2), "z")  # norm: z_j + 1e-16·sign(z_j)
    want = ref.conv2d_rule(x, conv.weight, conv.bias, r, (1, 1), (1, 1), "epsilon", epsilon=0.25)
    assert close(out.relevance, want)


def test_flat_on_token_rows_spreads_each_rows_relevance_over_its_inputs(rng, xp):
    """(N, T, m) inputs: each token's relevance goes to its own m inputs, R_i = Σ_j R_j / m (by hand)."""
    layer = Linear(6, 4, rng=rng)
    x = signed(rng, (2, 3, 6))
    r = rng.normal(0, 1, (2, 3, 4))
    got = engine(layer, [x], r, "flat", {}, xp)[0]
    assert got.shape == x.shape
    numpy.testing.assert_allclose(got, numpy.repeat(r.sum(axis=-1, keepdims=True) / 6, 6, axis=-1), rtol=1e-12)
    numpy.testing.assert_allclose(got.sum(axis=-1), r.sum(axis=-1), rtol=1e-12)  # conserved per token


def test_flat_on_convolutions_is_the_all_ones_product(rng):
    """LRP-flat on a Conv2d (one channel's window sums, broadcast) equals the generic modified gradient with
    all-ones inputs and weights (z = in-image window size · C_in) on random geometries: strides, asymmetric
    padding, windows partly or wholly in the padding."""
    from test_layers import random_geometry

    from lrpflow.rules.base import Contribution, modified_gradient, ones, safe_divide

    flat = make_rule("flat")
    for _ in range(60):
        (kh, kw, cin, cout), stride, pads, xshape = random_geometry(rng, max_channels=5)
        layer = Conv2d(kh, kw, cin, cout, stride=stride, padding=pads, rng=0)
        x = rng.normal(size=xshape)
        r = rng.normal(size=layer.apply([x], layer.weight, None).shape)
        want = modified_gradient(layer, [x], r, [Contribution(ones, ones, None)], NodeContext("c", {}, (False,)), safe_divide)[0]
        got = flat.linear(layer, [x], None, r, NodeContext("c", {}, (False,)))[0]
        numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * numpy.abs(want).max())
        assert got.shape == x.shape and got.dtype == numpy.float64
        got32 = flat.linear(layer, [x.astype(numpy.float32)], None, r.astype(numpy.float32), NodeContext("c", {}, (False,)))[0]
        assert got32.dtype == numpy.float32
        numpy.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5 * numpy.abs(want).max())
    # every input of a window gets the same share: with no padding a sample's relevance is conserved
    layer = Conv2d(3, 3, 2, 4, stride=1, padding=0, rng=0)
    x = rng.normal(size=(2, 7, 6, 2))
    r = rng.normal(size=(2, 5, 4, 4))
    got = flat.linear(layer, [x], None, r, NodeContext("c", {}, (False,)))[0]
    numpy.testing.assert_allclose(got.sum(axis=(1, 2, 3)), r.sum(axis=(1, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("params", [dict(alpha=2.0, beta=1.0), dict(alpha=1.0, beta=0.0),
                                    dict(alpha=1.5, beta=0.5, bias=False)], ids=str)
def test_alpha_beta_stabilizer_enters_each_denominator_once(rng, nonneg, params):
    """With s = 0.5 the stabilizer is visible: ``R_i = Σ_j (α z⁺_ij/(P_j + s) − β z⁻_ij/(N_j − s)) R_j``,
    whether s rides in P's bias (N − s then read as z − (P + s)) or is added after the sum;
    on a dense layer and on a convolution with one window (the same map)."""
    s = 0.5
    w, b = rng.normal(size=(12, 4)), rng.normal(0, 0.5, 4)
    x = signed(rng, (3, 12))
    if nonneg:
        x = numpy.abs(x)
    r = rng.normal(size=(3, 4))
    alpha, beta, use_b = params["alpha"], params["beta"], params.get("bias", True)
    zij = x[:, :, None] * w[None]
    zp, zn = numpy.maximum(zij, 0), numpy.minimum(zij, 0)
    p = zp.sum(axis=1) + (numpy.maximum(b, 0) if use_b else 0)
    n = zn.sum(axis=1) + (numpy.minimum(b, 0) if use_b else 0)
    want = ((alpha * zp / (p + s)[:, None] - beta * zn / (n - s)[:, None]) * r[:, None]).sum(axis=2)
    dense = Linear(12, 4, weight=w, bias=b)
    conv = Conv2d(2, 2, 3, 4, weight=w.reshape(2, 2, 3, 4), bias=b)  # one 2×2 window over a 2×2×3 input
    for layer, xin, rin in ((dense, x, r), (conv, x.reshape(3, 2, 2, 3), r.reshape(3, 1, 1, 4))):
        got = engine(layer, [xin], rin, "alpha_beta", dict(params, stabilizer=s), numpy, nonneg=nonneg)[0]
        numpy.testing.assert_allclose(got.reshape(3, 12), want, rtol=1e-12, atol=1e-12)
