"""Properties of the rules on random networks (hypothesis): conservation, zero in → zero out, shapes."""
from __future__ import annotations

import numpy
from hypothesis import assume, given, settings, strategies as st

import lrpflow
import nets
from lrpflow.layers import Conv2d, Linear, ReLU, Tanh

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def per_sample(a):
    return a.reshape(a.shape[0], -1).sum(1)


def random_net(seed, kind):
    rng = numpy.random.default_rng(seed)
    if kind == "mlp":
        sizes = tuple(int(v) for v in rng.integers(2, 9, size=rng.integers(2, 5)))
        net = nets.mlp(rng, sizes=sizes, act=ReLU)
        shape = (sizes[0],)
    else:
        net = nets.cnn(rng, channels=int(rng.integers(1, 3)), size=int(rng.integers(6, 11)),
                       pool=[lrpflow.layers.MaxPool, lrpflow.layers.SumPool, lrpflow.layers.AvgPool][seed % 3])
        shape = net.input_shape
    return nets.randomize_biases(net, rng), shape, rng


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mlp", "cnn"]), batch=st.integers(1, 4))
def test_z_without_bias_conserves(seed, kind, batch):
    net, shape, rng = random_net(seed, kind)
    x = rng.normal(0, 1, (batch, *shape))
    out = lrpflow.explain(net, x, rule="z", bias=False, dtype="float64")
    # with the bias ignored, a logit made of its bias alone (every unit below it dead) has
    # nothing to pass relevance through: conservation is claimed only where z_j ≠ 0
    last = net.layers[-1]
    z_top = out.logits[numpy.arange(batch), out.target] - last.bias[out.target]
    assume((numpy.abs(z_top) > 1e-6).all())
    assert out.relevance.shape == x.shape
    numpy.testing.assert_allclose(per_sample(out.relevance), out.r_init.sum(1), rtol=1e-6, atol=1e-9)
    assert (out.conservation < 1e-6).all()


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mlp", "cnn"]), rule=st.sampled_from(["flat", "wsquare"]))
def test_flat_and_wsquare_conserve(seed, kind, rule):
    net, shape, rng = random_net(seed, kind)
    x = rng.normal(0, 1, (3, *shape))
    # flat/wsquare give relevance to zero activations too; `norm`, the default on pools, would drop
    # what reaches an all-zero pool window, so the pools keep the rule here (a kind override)
    out = lrpflow.explain(net, x, composite={"default": rule, "overrides": [{"kind": "pool", "rule": rule}]},
                          dtype="float64")
    numpy.testing.assert_allclose(per_sample(out.relevance), out.r_init.sum(1), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(1.0, 4.0), conv=st.booleans())
def test_alpha_beta_conserves_when_both_shares_exist(seed, alpha, conv):
    """α − β = 1 conserves at a layer where every neuron has positive and negative contributions."""
    rng = numpy.random.default_rng(seed)
    if conv:
        w = rng.normal(0, 1, (3, 3, 2, 4))
        w[0, 0, 0, :], w[0, 1, 0, :] = 1.0, -1.0  # both signs in every filter, inputs > 0
        layer, x = Conv2d(3, 3, 2, 4, weight=w, bias=numpy.zeros(4)), rng.uniform(0.1, 1, (2, 5, 6, 2))
    else:
        w = rng.normal(0, 1, (6, 4))
        w[0, :], w[1, :] = 1.0, -1.0
        layer, x = Linear(6, 4, weight=w, bias=numpy.zeros(4)), rng.uniform(0.1, 1, (2, 6))
    net = lrpflow.Sequential([layer, *( [lrpflow.layers.Flatten()] if conv else [])])
    r = rng.normal(0, 1, net.run(x)[0].shape)
    out = lrpflow.explain(net, x, rule="alpha_beta", alpha=alpha, bias=False, target=r, dtype="float64")
    numpy.testing.assert_allclose(per_sample(out.relevance), r.sum(1), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mlp", "cnn"]),
       rule=st.sampled_from(["z", "epsilon", "gamma", "alpha_beta", "zplus", "zbox", "flat", "wsquare"]))
def test_zero_relevance_in_gives_zero_out(seed, kind, rule):
    net, shape, rng = random_net(seed, kind)
    x = rng.normal(0, 1, (2, *shape))
    n_out = net.run(x)[0].shape[1]
    out = lrpflow.explain(net, x, rule=rule, target=numpy.zeros((2, n_out)))
    assert out.relevance.shape == x.shape and out.relevance.dtype == numpy.float32
    assert (out.relevance == 0).all()


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_float32_agrees_with_float64(seed):
    net, shape, rng = random_net(seed, "cnn")
    x = rng.normal(0, 1, (2, *shape))
    a = lrpflow.explain(net, x, rule="epsilon", epsilon=0.1, dtype="float32").relevance
    b = lrpflow.explain(net, x, rule="epsilon", epsilon=0.1, dtype="float64").relevance
    assert numpy.abs(a - b).max() <= 1e-4 * max(1.0, numpy.abs(b).max())


def test_tanh_nets_alpha_beta_is_finite():
    rng = numpy.random.default_rng(1)
    net = nets.randomize_biases(nets.mlp(rng, sizes=(5, 7, 6, 3), act=Tanh), rng)
    out = lrpflow.explain(net, rng.normal(0, 1, (4, 5)), rule="alpha_beta", alpha=2.0, beta=1.0)
    assert numpy.isfinite(out.relevance).all()


# --- the field's conventions (issue 11): norm on parameter-free layers, generalised γ, BN folding ----


def _pools_and_add_net(rng, pool):
    """conv → relu → pool → [conv → relu] + skip → GAP → linear, every bias 0."""
    from lrpflow.graph import Model, Node
    from lrpflow.layers import Add, GlobalAvgPool

    nodes = [
        Node("stem", Conv2d(3, 3, 2, 4, padding=1, rng=rng), ("input",)),
        Node("stem_relu", ReLU(), ("stem",)),
        Node("pool", pool(2, 2), ("stem_relu",)),
        Node("b1", Conv2d(3, 3, 4, 4, padding=1, rng=rng), ("pool",)),
        Node("b1_relu", ReLU(), ("b1",)),
        Node("add", Add(), ("b1_relu", "pool")),
        Node("gap", GlobalAvgPool(), ("add",)),
        Node("fc", Linear(4, 3, rng=rng), ("gap",)),
    ]
    return nets.randomize_biases(Model(nodes, input_shape=(8, 8, 2)), rng, zero=True)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), pool=st.sampled_from(["SumPool", "AvgPool"]),
       rule=st.sampled_from([("epsilon", {"epsilon": 0.25}), ("alpha_beta", {"alpha": 2.0, "beta": 1.0}),
                             ("gamma", {"gamma": 0.5}), ("zplus", {})]))
def test_norm_conserves_on_pools_and_add(seed, pool, rule):
    """Whatever the rule, pools, Add and GAP get `norm`: each conserves exactly (no bias)."""
    rng = numpy.random.default_rng(seed)
    net = _pools_and_add_net(rng, getattr(lrpflow.layers, pool))
    x = rng.normal(0, 1, (2, 8, 8, 2))
    name, params = rule
    exp = lrpflow.Explainer(net, rule=name, dtype="float64", **params)
    assert {n: type(r).__name__ for n, r in exp.rules().items() if n in ("pool", "add", "gap")} == \
        {"pool": "Norm", "add": "Norm", "gap": "Norm"}
    out = exp.explain(x)
    for node in ("pool", "add", "gap"):
        entry = out.ledger[node]
        numpy.testing.assert_allclose(entry.leaving, entry.entering, rtol=1e-12, atol=1e-14)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mlp", "cnn"]), eps=st.sampled_from([1e-16, 1e-3, 0.1]))
def test_gamma_at_zero_is_epsilon(seed, kind, eps):
    """The generalised γ-rule with γ = 0 is LRP-ε with ε = its stabiliser (signed and ≥ 0 inputs)."""
    net, shape, rng = random_net(seed, kind)
    x = rng.normal(0, 1, (3, *shape))
    g = lrpflow.explain(net, x, rule="gamma", gamma=0.0, stabilizer=eps, dtype="float64")
    e = lrpflow.explain(net, x, rule="epsilon", epsilon=eps, dtype="float64")
    numpy.testing.assert_allclose(g.relevance, e.relevance, rtol=1e-10, atol=1e-12 * numpy.abs(e.relevance).max())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), dense=st.booleans())
def test_batchnorm_folding_is_exact_in_float64(seed, dense):
    """conv/linear + BN (float32 parameters, non-trivial statistics): the merge is the float64
    formula exactly, and the folded model's float64 logits equal the unfolded model's to 1e-12."""
    from lrpflow.io import fold_batchnorm
    from lrpflow.layers import BatchNorm, Flatten

    rng = numpy.random.default_rng(seed)

    def bn(c):
        return BatchNorm(c, gamma=rng.uniform(0.2, 3, c).astype(numpy.float32),
                         beta=rng.normal(0, 1, c).astype(numpy.float32),
                         mean=rng.normal(0, 2, c).astype(numpy.float32),
                         var=rng.uniform(0.01, 5, c).astype(numpy.float32), eps=1e-5)

    def f32(layer):
        layer.set_params(**{k: v.astype(numpy.float32) for k, v in layer.params().items()})
        return layer

    if dense:
        layers, shape = [f32(Linear(6, 5, rng=rng)), bn(5), ReLU(), f32(Linear(5, 3, rng=rng))], (6,)
    else:
        layers, shape = [f32(Conv2d(3, 3, 2, 4, padding=1, rng=rng)), bn(4), ReLU(), Flatten(),
                         f32(Linear(4 * 25, 3, rng=rng))], (5, 5, 2)
    nets.randomize_biases(lrpflow.Sequential(layers), rng)
    for layer in layers:
        if "bias" in layer.param_names:
            f32(layer)
    net = lrpflow.Sequential(layers, input_shape=shape)
    assert net.canonizers == []  # every model has the list (issue 15: it raised AttributeError)
    folded = fold_batchnorm(net)
    assert len(folded.layers) == len(layers) - 1 and folded.layers[0].weight.dtype == numpy.float64
    assert folded.canonizers == ["fold_batchnorm: 1_batchnorm -> 0_" + type(layers[0]).__name__.lower()]
    # the merge by hand, in float64: W' = W s, b' = (b − μ) s + β with s = γ / √(σ² + ε)
    first, norm = layers[0], layers[1]
    s = norm.gamma.astype(numpy.float64) / numpy.sqrt(norm.var.astype(numpy.float64) + norm.eps)
    numpy.testing.assert_array_equal(folded.layers[0].weight, first.weight.astype(numpy.float64) * s)
    numpy.testing.assert_allclose(folded.layers[0].bias, (first.bias.astype(numpy.float64) - norm.mean) * s + norm.beta,
                                  rtol=1e-15, atol=1e-15)
    x = rng.normal(0, 1, (3, *shape))
    a = lrpflow.explain(folded, x, rule="epsilon", epsilon=1e-6, dtype="float64", target=0)
    b = lrpflow.explain(net, x, rule="epsilon", epsilon=1e-6, dtype="float64", target=0)
    numpy.testing.assert_allclose(a.logits, b.logits, rtol=1e-12, atol=1e-12 * numpy.abs(b.logits).max())
