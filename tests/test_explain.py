"""explain() and Explainer: targets, results, caching, composites, DAGs, errors, baselines."""
from __future__ import annotations

import numpy
import pytest

import lrpflow
import nets
from lrpflow.backend import to_numpy
from lrpflow.explain import initial_relevance, propagate
from lrpflow.rules import AlphaBeta, Epsilon, Flat, Gamma, WinnerTakeAll, ZBox, ZPlus


def per_sample(a):
    a = to_numpy(a)
    return a.reshape(a.shape[0], -1).sum(1)


@pytest.fixture
def cnn(rng):
    return nets.randomize_biases(nets.cnn(rng), rng)


def test_result_fields_and_dtypes(cnn, rng, backend):
    x = rng.normal(0, 1, (5, 10, 10, 2))
    out = lrpflow.explain(cnn, x, rule="epsilon", epsilon=0.1, backend=backend)
    assert out.relevance.shape == x.shape and out.relevance.dtype == numpy.float32
    assert out.logits.shape == (5, 4)
    numpy.testing.assert_array_equal(to_numpy(out.target), to_numpy(out.logits).argmax(1))
    r_init = to_numpy(out.r_init)
    numpy.testing.assert_allclose(r_init.sum(1), to_numpy(out.logits).max(1), rtol=1e-6)
    cons = numpy.abs(per_sample(out.relevance) - r_init.sum(1)) / numpy.abs(r_init.sum(1))
    numpy.testing.assert_allclose(to_numpy(out.conservation), cons, rtol=1e-4, atol=1e-6)
    out64 = lrpflow.explain(cnn, x, rule="epsilon", epsilon=0.1, dtype="float64", backend=backend)
    assert out64.relevance.dtype == numpy.float64
    numpy.testing.assert_allclose(to_numpy(out.relevance), to_numpy(out64.relevance), rtol=2e-3, atol=2e-5)


def test_targets(cnn, rng):
    x = rng.normal(0, 1, (4, 10, 10, 2))
    exp = lrpflow.Explainer(cnn, rule="epsilon", epsilon=0.01, dtype="float64")
    trace = exp.forward(x)
    y = trace.logits
    pred = exp(trace=trace)
    numpy.testing.assert_array_equal(pred.target, y.argmax(1))
    k2 = exp(trace=trace, target=2)
    numpy.testing.assert_array_equal(k2.r_init[:, 2], y[:, 2])
    assert (k2.r_init[:, [0, 1, 3]] == 0).all()
    labels = numpy.array([3, 2, 1, 0])
    true = exp(trace=trace, target="true", labels=labels)
    numpy.testing.assert_array_equal(true.target, labels)
    same = exp(trace=trace, target=labels)  # per-sample class indices
    numpy.testing.assert_array_equal(same.relevance, true.relevance)
    one_hot = exp(trace=trace, target="true", labels=numpy.eye(4)[labels])
    numpy.testing.assert_array_equal(one_hot.relevance, true.relevance)
    top2 = exp(trace=trace, target="topk:2")
    best2 = numpy.sort(y, axis=1)[:, -2:].sum(1)
    numpy.testing.assert_allclose(top2.r_init.sum(1), best2)
    assert top2.target.shape == (4, 2)
    # linearity of ε-LRP in R_init: topk:2 = sum of its two single-class explanations
    singles = sum(exp(trace=trace, target=top2.target[:, j]).relevance for j in range(2))
    numpy.testing.assert_allclose(top2.relevance, singles, rtol=1e-9, atol=1e-12)
    r = rng.normal(0, 1, y.shape)
    explicit = exp(trace=trace, target=r)
    numpy.testing.assert_array_equal(explicit.r_init, r)
    assert (explicit.target == -1).all()
    ones = exp(trace=trace, target=1, init="one")
    numpy.testing.assert_array_equal(ones.r_init, numpy.eye(4)[[1, 1, 1, 1]])
    numpy.testing.assert_allclose(ones.relevance * y[:, 1:2, None, None], k2.relevance * 0 + exp(trace=trace, target=1).relevance,
                                  rtol=1e-9, atol=1e-12)


def test_explainer_reuses_forward_and_cached_parameters(cnn, rng, monkeypatch):
    x = rng.normal(0, 1, (3, 10, 10, 2))
    exp = lrpflow.Explainer(cnn, rule="alpha_beta", alpha=2.0, beta=1.0)
    first = exp(x)
    cached = dict(exp.cache)
    assert cached, "modified parameters are cached"
    calls = []
    orig = type(cnn).run
    monkeypatch.setattr(type(cnn), "run", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    results = exp.explain_many(x, targets=["pred", 0, 1], methods=[None, {"rule": "epsilon", "epsilon": 0.1},
                                                                    "epsilon_plus" and {"composite": "epsilon_plus"}])
    assert len(calls) == 1 and len(results) == 9
    numpy.testing.assert_array_equal(results[0].relevance, first.relevance)
    for key, value in cached.items():  # W⁺, W⁻ were not recomputed
        assert exp.cache[key] is value


def test_mixed_composite_puts_the_right_rule_on_each_node(cnn):
    comp = lrpflow.Composite(default=Epsilon(0.2), input_rule="flat",
                             overrides=[{"kind": "conv", "rule": "gamma", "gamma": 0.5},
                                        {"name": "6_*", "rule": "zplus"},
                                        {"index": [3, 4], "rule": "alpha_beta", "alpha": 3.0}])
    rules = lrpflow.Explainer(cnn, composite=comp).rules()
    # node order: 0_conv2d 1_relu 2_maxpool 3_conv2d 4_relu 5_flatten 6_linear
    assert rules["0_conv2d"] == Flat()  # the input rule beats a kind override
    assert rules["3_conv2d"] == Gamma(0.5)  # first matching override wins
    assert rules["6_linear"] == ZPlus()
    assert rules["1_relu"] == Epsilon(0.2)
    assert rules["2_maxpool"] == WinnerTakeAll()  # rule scope: MaxPool is winner-take-all whatever the default
    comp2 = lrpflow.Composite(default="epsilon", input_rule="flat", overrides=[{"index": "3:4", "rule": "alpha_beta", "alpha": 3.0}])
    rules2 = lrpflow.Explainer(cnn, composite=comp2).rules()
    assert rules2["0_conv2d"] == Flat() and rules2["3_conv2d"] == AlphaBeta(3.0, 2.0)
    box = lrpflow.Explainer(cnn, composite="epsilon_gamma_box", low=-1.0, high=1.0, gamma=0.1).rules()
    assert box["0_conv2d"] == ZBox(-1.0, 1.0) and box["3_conv2d"] == Gamma(0.1) and box["6_linear"] == Epsilon(1e-6)
    a2b1 = lrpflow.Explainer(cnn, composite="epsilon_alpha2_beta1").rules()
    assert a2b1["3_conv2d"] == AlphaBeta(2.0, 1.0) and a2b1["0_conv2d"] == AlphaBeta(2.0, 1.0)
    plus_flat = lrpflow.Explainer(cnn, composite="epsilon_plus_flat").rules()
    assert plus_flat["0_conv2d"] == Flat() and plus_flat["3_conv2d"] == ZPlus() and plus_flat["6_linear"] == Epsilon(1e-6)
    by_index = lrpflow.Composite(default="epsilon", input_rule="flat", overrides=[{"index": 0, "rule": "zplus"}]).assign(cnn)
    assert by_index["0_conv2d"] == ZPlus()  # an index override beats the input rule
    flat_in = lrpflow.Composite(default="epsilon", input_rule="flat").assign(cnn)
    assert flat_in["0_conv2d"] == Flat() and flat_in["3_conv2d"] == Epsilon()


def test_composite_output_matches_per_node_rules(cnn, rng):
    """A composite's heatmap equals the layer-by-layer propagation with its rules (float64)."""
    from lrpflow.explain import propagate

    x = rng.normal(0, 1, (2, 10, 10, 2))
    exp = lrpflow.Explainer(cnn, composite="epsilon_gamma_box", dtype="float64", low=-3.0, high=3.0)
    out = exp(x, target=1)
    _, trace = cnn.run(x)
    manual = propagate(cnn, trace, out.r_init, exp.rules())
    numpy.testing.assert_allclose(out.relevance, manual.relevance, rtol=1e-12)


def test_residual_net_conserves_through_both_branches(rng):
    model = nets.randomize_biases(nets.residual(rng), rng, zero=True)
    x = rng.normal(0, 1, (4, 8, 8, 3))
    out = lrpflow.explain(model, x, rule="z", bias=False, dtype="float64", keep=["add", "b2", "stem_relu"])
    numpy.testing.assert_allclose(per_sample(out.relevance), out.r_init.sum(1), rtol=1e-6)
    # the Add node splits relevance between the branch and the skip, both non-trivially
    into_add = per_sample(out.intermediate["add"])
    via_branch = out.ledger["b2"].entering
    via_skip = into_add - via_branch
    assert (numpy.abs(via_branch) > 1e-6 * numpy.abs(into_add)).all() and (numpy.abs(via_skip) > 1e-6 * numpy.abs(into_add)).all()
    numpy.testing.assert_allclose(out.ledger["add"].leaving, into_add, rtol=1e-9)
    # stem_relu collects from both consumers
    numpy.testing.assert_allclose(per_sample(out.intermediate["stem_relu"]),
                                  out.ledger["b1_relu"].leaving + via_skip, rtol=1e-9)
    # what entered a node is the per-sample sum of its relevance: handed over by one consumer (b2, add) or
    # summed from two (stem_relu)
    for name in ("b2", "add", "stem_relu"):
        numpy.testing.assert_allclose(out.ledger[name].entering, per_sample(out.intermediate[name]), rtol=1e-12)


def test_concat_batchnorm_net(rng):
    model = nets.randomize_biases(nets.concat_net(rng), rng, zero=True)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNorm":
            layer.set_params(beta=layer.mean * layer.gamma / numpy.sqrt(layer.var + layer.eps))  # zero affine bias
    x = rng.normal(0, 1, (3, 8, 8, 2))
    out = lrpflow.explain(model, x, rule="z", dtype="float64")
    numpy.testing.assert_allclose(per_sample(out.relevance), out.r_init.sum(1), rtol=1e-6)
    assert out.ledger["cat"].entering.shape == (3,)


@pytest.mark.parametrize("rule,params", [("z", {}), ("epsilon", {"epsilon": 0.0}), ("epsilon", {"epsilon": 0.1}),
                                         ("gamma", {}), ("alpha_beta", {}), ("zplus", {}), ("zbox", {}),
                                         ("wsquare", {}), ("flat", {}), ("gradient", {}), ("deconvnet", {}),
                                         ("gradient_x_input", {}), ("smoothgrad", {"n": 2}),
                                         ("integrated_gradients", {"steps": 3}), ("random", {})])
def test_no_nan_for_zero_inputs_or_zero_epsilon(cnn, rule, params):
    for x in (numpy.zeros((2, 10, 10, 2)), numpy.full((1, 10, 10, 2), 1e-30)):
        out = lrpflow.explain(cnn, x, rule=rule, **params)
        assert numpy.isfinite(out.relevance).all() and numpy.isfinite(out.conservation).all()
    dead = lrpflow.Sequential([lrpflow.layers.Linear(3, 2, weight=numpy.zeros((3, 2)), bias=numpy.zeros(2))])
    out = lrpflow.explain(dead, numpy.ones((2, 3)), rule=rule, **params)
    assert numpy.isfinite(out.relevance).all()


def test_bad_input_raises(cnn, rng):
    x = rng.normal(0, 1, (2, 10, 10, 2))
    with pytest.raises(lrpflow.ShapeError, match=r"\(10, 10, 2\)"):
        lrpflow.explain(cnn, x[:, :9], rule="epsilon")
    with pytest.raises(lrpflow.ShapeError, match="channels"):
        lrpflow.explain(lrpflow.Sequential(cnn.modules), x[..., :1], rule="epsilon")
    bad = x.copy()
    bad[0, 0, 0, 0] = numpy.nan
    with pytest.raises(lrpflow.DataFormatError, match="NaN"):
        lrpflow.explain(cnn, bad)
    bad[0, 0, 0, 0] = numpy.inf
    with pytest.raises(lrpflow.DataFormatError):
        lrpflow.explain(cnn, bad)
    with pytest.raises(lrpflow.UnknownNameError, match="known rules: .*epsilon"):
        lrpflow.explain(cnn, x, rule="epsilom")
    with pytest.raises(lrpflow.UnknownNameError, match="known composites"):
        lrpflow.explain(cnn, x, composite="nope")
    with pytest.raises(lrpflow.UnknownNameError, match="known layers: .*conv2d"):
        lrpflow.registries().layers.get("Convolution3D")
    with pytest.raises(lrpflow.ShapeError, match="R_init"):
        lrpflow.explain(cnn, x, target=numpy.zeros((2, 3)))
    with pytest.raises(lrpflow.ConfigError, match="alpha - beta"):
        lrpflow.explain(cnn, x, rule="alpha_beta", alpha=2.0, beta=0.5)
    with pytest.raises(lrpflow.ConfigError, match="out of range"):
        lrpflow.explain(cnn, x, target=7)
    with pytest.raises(lrpflow.ConfigError, match="labels"):
        lrpflow.explain(cnn, x, target="true")
    with pytest.raises(lrpflow.ConfigError, match="unknown target"):
        lrpflow.explain(cnn, x, target="best")
    with pytest.raises(lrpflow.ConfigError, match="whole-model"):
        lrpflow.Composite(default="epsilon", overrides=[{"kind": "conv", "rule": "gradient"}])
    with pytest.raises(lrpflow.BackendError):
        lrpflow.explain(cnn, x, dtype="int32")
    with pytest.raises(lrpflow.ConfigError, match="unknown field"):
        lrpflow.Composite.from_config({"default": "epsilon", "overides": []})


def test_cupy_missing_is_a_clear_error(cnn, rng):
    from lrpflow.backend import cupy_available

    if cupy_available():
        pytest.skip("cupy is available here")
    with pytest.raises(lrpflow.BackendError, match="cupy"):
        lrpflow.Explainer(cnn, backend="cupy")


def test_softmax_output_is_dropped_for_explanation(rng):
    net = nets.mlp(rng)
    net.modules.append(lrpflow.layers.SoftMax())
    x = rng.normal(0, 1, (3, 6))
    out = lrpflow.explain(net, x, rule="epsilon", dtype="float64")
    logits = lrpflow.Sequential(net.modules[:-1]).run(x)[0]
    numpy.testing.assert_allclose(out.logits, logits)


def numeric_gradient(model, x, c, h=1e-6):
    g = numpy.zeros_like(x)
    for idx in numpy.ndindex(*x.shape[1:]):
        for sgn in (1, -1):
            xx = x.copy()
            xx[(slice(None),) + idx] += sgn * h
            g[(slice(None),) + idx] += sgn * model.run(xx)[0][:, c] / (2 * h)
    return g


def test_gradient_baselines(rng):
    net = nets.randomize_biases(nets.mlp(rng, act=lrpflow.layers.Tanh), rng)
    x = rng.normal(0, 1, (3, 6))
    grad = lrpflow.explain(net, x, rule="gradient", target=1, dtype="float64")
    numpy.testing.assert_allclose(grad.relevance, numeric_gradient(net, x, 1), rtol=1e-6, atol=1e-9)
    gxi = lrpflow.explain(net, x, rule="gradient_x_input", target=1, dtype="float64")
    numpy.testing.assert_allclose(gxi.relevance, x * grad.relevance, rtol=1e-12)
    sg = lrpflow.explain(net, x, rule="smoothgrad", noise=0.0, n=3, target=1, dtype="float64")
    numpy.testing.assert_allclose(sg.relevance, grad.relevance, rtol=1e-12)
    # integrated gradients: completeness Σ IG = f(x) − f(0) (midpoint rule, smooth net)
    ig = lrpflow.explain(net, x, rule="integrated_gradients", steps=256, target=1, dtype="float64")
    f = lambda v: net.run(v)[0][:, 1]  # noqa: E731
    numpy.testing.assert_allclose(ig.relevance.sum(1), f(x) - f(numpy.zeros_like(x)), rtol=1e-4, atol=1e-6)
    relu = nets.randomize_biases(nets.mlp(rng), rng)
    dec = lrpflow.explain(relu, x, rule="deconvnet", target=0, dtype="float64")
    # deconvnet: hand-rolled backward with ReLU replaced by rectification of the signal
    w = [m for m in relu.modules if hasattr(m, "weight")]
    g = numpy.tile(numpy.eye(3)[0], (3, 1))
    g = numpy.maximum(g @ w[2].weight.T, 0)
    g = numpy.maximum(g @ w[1].weight.T, 0)
    numpy.testing.assert_allclose(dec.relevance, g @ w[0].weight.T, rtol=1e-12)
    r1 = lrpflow.explain(relu, x, rule="random", seed=3).relevance
    r2 = lrpflow.explain(relu, x, rule="random", seed=3).relevance
    assert r1.shape == x.shape and numpy.array_equal(r1, r2) and r1.std() > 0.5


def test_maxpool_proportional_composite_option(rng):
    net = nets.randomize_biases(nets.cnn(rng), rng)
    x = numpy.abs(rng.normal(0, 1, (2, 10, 10, 2)))
    wta = lrpflow.explain(net, x, composite=lrpflow.Composite("epsilon"), dtype="float64")
    prop = lrpflow.explain(net, x, composite=lrpflow.Composite("epsilon", maxpool="proportional"), dtype="float64")
    assert not numpy.allclose(wta.relevance, prop.relevance)
    numpy.testing.assert_allclose(wta.ledger["2_maxpool"].entering, wta.ledger["2_maxpool"].leaving, rtol=1e-9)
    numpy.testing.assert_allclose(prop.ledger["2_maxpool"].entering, prop.ledger["2_maxpool"].leaving, rtol=1e-9)


def test_propagate_release_frees_activations_and_keeps_results(cnn, rng):
    x = rng.normal(0, 1, (3, 10, 10, 2))
    exp = lrpflow.Explainer(cnn, rule="epsilon", epsilon=0.01, dtype="float64")
    trace = exp.forward(x)
    kept = dict(trace.values)
    r_init, _ = initial_relevance(trace.logits, "pred", "logit")
    rules = exp.rules()
    full = propagate(cnn, trace, r_init, rules)
    assert trace.values.keys() == kept.keys()  # a shared trace is left alone
    freed = propagate(cnn, trace, r_init, rules, release=True)
    assert list(trace.values) == ["input"]  # every node output dropped once its node was done
    numpy.testing.assert_array_equal(freed.relevance, full.relevance)


class _PassThrough(lrpflow.layers.Linear):
    """A plugin-style layer whose transpose hands back the very array it was given (identity weight)."""

    channel_blocks = False  # one transpose per contribution, all sharing one s

    def apply_transpose(self, s, weight, xs):
        return [s] if numpy.array_equal(weight, numpy.eye(4)) else [s @ weight.T]


def test_in_place_products_never_touch_arrays_a_layer_hands_back(rng):
    x = rng.normal(0, 1, (5, 4))
    r = rng.normal(0, 1, (5, 4))
    layer = _PassThrough(4, 4, weight=numpy.eye(4), bias=numpy.zeros(4))
    plain = lrpflow.layers.Linear(4, 4, weight=numpy.eye(4), bias=numpy.zeros(4))
    for rule in ({"rule": "gamma", "gamma": 0.5}, {"rule": "epsilon", "epsilon": 0.0}):
        got = lrpflow.Explainer(lrpflow.Sequential([layer]), dtype="float64", **rule)(x, target=r)
        ref = lrpflow.Explainer(lrpflow.Sequential([plain]), dtype="float64", **rule)(x, target=r)
        numpy.testing.assert_allclose(got.relevance, ref.relevance, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_array_equal(got.r_init, r)  # R_init was not overwritten in place


@pytest.mark.parametrize("rule,params", [("alpha_beta", {}), ("alpha_beta", {"alpha": 1.0}), ("epsilon", {"epsilon": 0.1})])
def test_a_reused_trace_is_left_as_it_was(rng, rule, params):
    """The rules write into their own scratch (z⁺, z − z⁺, transposes' outputs), never into the trace."""
    model = nets.randomize_biases(nets.residual(rng), rng)
    x = rng.normal(0, 1, (3, 8, 8, 3)).astype(numpy.float32)
    exp = lrpflow.Explainer(model, rule=rule, dtype="float32", **params)
    trace = exp.forward(x)
    before = {k: numpy.array(v, copy=True) for k, v in trace.values.items()}
    first = exp.explain(trace=trace, target=0)
    assert all(numpy.array_equal(before[k], trace.values[k]) for k in before)
    numpy.testing.assert_array_equal(exp.explain(trace=trace, target=0).relevance, first.relevance)
    numpy.testing.assert_array_equal(exp.explain(x, target=0).relevance, first.relevance)


@pytest.mark.parametrize("kernel", ["numpy", "auto"])
def test_epsilon_peak_memory_stays_within_one_and_a_half_traces(shared, rng, kernel):
    """ε on the toolbox's LeNet-5, one worker: everything one explanation allocates (tracemalloc,
    the Trace included) stays ≤ 1.5× the forward Trace. The sum pools' transposes hand back
    their own buffer, so ``x ⊙ g`` is formed in it (1.56× before, at the first pool)."""
    import tracemalloc

    from lrpflow.layers.ort_conv import use_conv_kernel

    model = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    x = rng.uniform(-1, 1, (64, 32, 32, 1)).astype(numpy.float32)
    explainer = lrpflow.Explainer(model, dtype="float32", rule="epsilon", epsilon=0.01, workers=1)
    with use_conv_kernel(kernel):
        explainer(x)
        _, trace = model.run(x)
        trace_bytes = sum(v.nbytes for v in trace.values.values())
        del trace
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            explainer(x)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert peak <= 1.5 * trace_bytes, peak / trace_bytes
