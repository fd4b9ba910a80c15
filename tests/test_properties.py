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
    out = lrpflow.explain(net, x, rule=rule, dtype="float64")
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
