"""Explanation quality metrics: pixel flipping by hand and against a slow reference, sanity checks, registry."""
from __future__ import annotations

import copy
import math

import numpy
import pytest

import lrpflow
import nets
from lrpflow import evaluate as ev
from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError, ShapeError, UnknownNameError
from lrpflow.layers import Flatten, Linear, ReLU
from lrpflow.plugins import Registry, build_registries, make_plugin_manager

# f(x) = x @ W + b; sample 0 follows class 0, sample 1 class 1
W = numpy.array([[0.5, 1.0], [-1.0, 1.0], [2.0, -1.0], [0.25, 0.0]])
B = numpy.array([0.1, -0.3])
X = numpy.array([[1.0, 2.0, 3.0, 4.0], [2.0, -1.0, 1.0, 3.0]])
T = numpy.array([0, 1])


def linear_model():
    return lrpflow.Sequential([Linear(4, 2, weight=W.copy(), bias=B.copy())])


def contributions():
    """R_i = x_i · w_i of the followed class: LRP-0 without bias, known exactly."""
    return X * W[:, T].T


def np_(a):
    return numpy.asarray(to_numpy(a))


# -- pixel flipping: values computed by hand ------------------------------------------

def test_pixel_flipping_linear_by_hand(xp):
    # sample 0: contributions (0.5, -2, 6, 1), f = 5.6; most relevant first removes 2, 3, 0, 1
    # sample 1: contributions (2, -1, -1, 0), f = -0.3; order 0, 3, 1, 2 (the tie keeps index order)
    out = ev.pixel_flipping(linear_model(), xp.asarray(X), xp.asarray(contributions()), xp.asarray(T), steps=None, fraction=1.0)
    curve = np_(out.curve)
    numpy.testing.assert_allclose(curve[0], [5.6, -0.4, -1.4, -1.9, 0.1], atol=1e-12)
    numpy.testing.assert_allclose(curve[1], [-0.3, -2.3, -2.3, -1.3, -0.3], atol=1e-12)
    numpy.testing.assert_allclose(np_(out.fractions), [0, 0.25, 0.5, 0.75, 1.0])
    numpy.testing.assert_array_equal(out.removed, [0, 1, 2, 3, 4])
    # AOPC = 1/(L+1) Σ_k (f(x) − f(x^(k))): (0 + 6 + 7 + 7.5 + 5.5) / 5 and (0 + 2 + 2 + 1 + 0) / 5
    numpy.testing.assert_allclose(np_(out.aopc), [26 / 5, 5 / 5], atol=1e-12)
    # normalised trapezoid area over fractions 0..1 in quarters
    auc0 = 0.25 * ((5.6 - 0.4) + (-0.4 - 1.4) + (-1.4 - 1.9) + (-1.9 + 0.1)) / 2
    auc1 = 0.25 * ((-0.3 - 2.3) + (-2.3 - 2.3) + (-2.3 - 1.3) + (-1.3 - 0.3)) / 2
    numpy.testing.assert_allclose(np_(out.auc), [auc0, auc1], atol=1e-12)
    assert out.regions == 4 and out.curve.shape == (2, 5) and out.aopc.shape == (2,)
    assert type(out.curve) is type(xp.asarray(X))  # stays on the data's backend

    lerf = ev.pixel_flipping(linear_model(), xp.asarray(X), xp.asarray(contributions()), xp.asarray(T),
                             steps=None, fraction=1.0, order="least_relevant_first")
    numpy.testing.assert_allclose(np_(lerf.curve)[0], [5.6, 7.6, 7.1, 6.1, 0.1], atol=1e-12)
    assert np_(lerf.aopc)[0] < np_(out.aopc)[0]


def test_pixel_flipping_steps_fraction_patch_baseline():
    model, r = linear_model(), contributions()
    two = ev.pixel_flipping(model, X, r, T, steps=2, fraction=1.0)  # 4 regions in 2 steps: 0, 2, 4 removed
    numpy.testing.assert_allclose(two.curve[0], [5.6, -1.4, 0.1], atol=1e-12)
    numpy.testing.assert_allclose(two.fractions, [0, 0.5, 1.0])
    half = ev.pixel_flipping(model, X, r, T, steps=None, fraction=0.5)
    numpy.testing.assert_allclose(half.curve[0], [5.6, -0.4, -1.4], atol=1e-12)
    numpy.testing.assert_allclose(half.fractions, [0, 0.25, 0.5])
    # patches of 2 consecutive features: regions {0,1} (R = −1.5) and {2,3} (R = 7)
    patched = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, patch=2)
    assert patched.regions == 2
    numpy.testing.assert_allclose(patched.curve[0], [5.6, -1.4, 0.1], atol=1e-12)
    # a constant baseline c changes f by (c − x_i)·w_i per removed feature
    const = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, baseline=1.0)
    numpy.testing.assert_allclose(const.curve[0], [5.6, 1.6, 0.85, 0.85, 1.85], atol=1e-12)
    # "mean": every feature of sample 0 becomes 2.5 in the end
    mean = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, baseline="mean")
    numpy.testing.assert_allclose(mean.curve[0, -1], 0.1 + 2.5 * W[:, 0].sum(), atol=1e-12)
    # an array baseline of one sample's shape
    arr = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, baseline=numpy.ones(4))
    numpy.testing.assert_allclose(arr.curve[0], const.curve[0], atol=1e-12)
    # steps beyond the regions repeat a removal count; the curve stays exact
    many = ev.pixel_flipping(model, X, r, T, steps=8, fraction=1.0)
    numpy.testing.assert_array_equal(many.removed, [0, 1, 1, 2, 2, 3, 3, 4, 4])  # round half up of k·4/8
    numpy.testing.assert_allclose(many.curve[0, [0, 1, 3, 5, 7]], [5.6, -0.4, -1.4, -1.9, 0.1], atol=1e-12)


def test_pixel_flipping_random_order_and_noise():
    model, r = linear_model(), contributions()
    a = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, order="random", seed=3)
    b = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, order="random", seed=3)
    numpy.testing.assert_array_equal(a.curve, b.curve)
    numpy.testing.assert_allclose(a.curve[:, 0], [5.6, -0.3])  # nothing removed
    numpy.testing.assert_allclose(a.curve[:, -1], B, atol=1e-12)  # everything removed: f(0) = b
    orders = {tuple(ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, order="random", seed=s).curve[0]) for s in range(6)}
    assert len(orders) > 1
    noise = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, baseline="uniform_noise", seed=1)
    again = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, baseline="uniform_noise", seed=1)
    other = ev.pixel_flipping(model, X, r, T, steps=None, fraction=1.0, baseline="uniform_noise", seed=2)
    numpy.testing.assert_array_equal(noise.curve, again.curve)
    assert not numpy.allclose(noise.curve[:, -1], other.curve[:, -1])
    # the noise lies in [min x_n, max x_n]: f at full removal is bounded by the weights' signs
    lo, hi = X.min(1), X.max(1)
    w0 = W[:, 0]
    bound_hi = B[0] + numpy.where(w0 > 0, w0 * hi[0], w0 * lo[0]).sum()
    bound_lo = B[0] + numpy.where(w0 > 0, w0 * lo[0], w0 * hi[0]).sum()
    assert bound_lo <= noise.curve[0, -1] <= bound_hi


# -- pixel flipping on images: against a slow loop ---------------------------------------

def slow_flipping(model, x, r, target, steps, patch, baseline):
    """One region at a time, one sample at a time, explicit loops (NHWC images, MoRF)."""
    n, h, w, c = x.shape
    regions = [(i, j) for i in range(0, h, patch) for j in range(0, w, patch)]
    m = len(regions)
    removed = [(2 * s * m + steps) // (2 * steps) for s in range(steps + 1)]
    curves = numpy.zeros((n, steps + 1))
    for k in range(n):
        score = numpy.array([r[k, i:i + patch, j:j + patch, :].sum() for i, j in regions])
        ranking = numpy.argsort(-score, kind="stable")
        base = baseline(x[k])
        for s, count in enumerate(removed):
            xk = x[k].copy()
            for q in ranking[:count]:
                i, j = regions[q]
                xk[i:i + patch, j:j + patch, :] = base[i:i + patch, j:j + patch, :]
            y = model.run(xk[None], upto=model.logits_node)[0][0]
            curves[k, s] = y[target[k]].sum()
    return curves


def test_pixel_flipping_images_match_slow_loop(rng):
    model = nets.randomize_biases(nets.cnn(rng, channels=2, size=10, classes=4), rng)
    x = rng.normal(0, 1, (3, 10, 10, 2))
    r = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, dtype="float64").relevance
    target = numpy.array([[0, 2], [1, 3], [3, 0]])  # (N, K): the sum of two logits
    out = ev.pixel_flipping(model, x, r, target, steps=6, fraction=1.0, patch=3, baseline="mean", batch_size=5)
    assert out.regions == 16  # 4 × 4 patches of 3 (the last row/column 1 wide)
    ref = slow_flipping(model, x, r, target, 6, 3, lambda img: numpy.broadcast_to(img.mean((0, 1)), img.shape))
    numpy.testing.assert_allclose(out.curve, ref, rtol=1e-10, atol=1e-10)
    big = ev.pixel_flipping(model, x, r, target, steps=6, fraction=1.0, patch=3, baseline="mean", batch_size=1000)
    numpy.testing.assert_allclose(big.curve, out.curve, rtol=1e-12, atol=1e-12)  # batch size is memory only


def test_pixel_flipping_follows_the_declared_layout(rng):
    nhwc = nets.cnn(rng, channels=2, size=10, classes=4)
    nchw = lrpflow.Sequential(copy.deepcopy(nhwc.modules), input_shape=(10, 10, 2), layout="NCHW")
    x = rng.normal(0, 1, (2, 10, 10, 2))
    r = rng.normal(0, 1, x.shape)
    a = ev.pixel_flipping(nhwc, x, r, "pred", steps=4, patch=(2, 5))
    b = ev.pixel_flipping(nchw, x.transpose(0, 3, 1, 2), r.transpose(0, 3, 1, 2), "pred", steps=4, patch=(2, 5),
                          baseline=numpy.zeros((2, 10, 10)))
    numpy.testing.assert_allclose(a.curve, b.curve, rtol=1e-12)
    numpy.testing.assert_array_equal(a.target, nhwc.run(x)[0].argmax(1))


def test_lrp_beats_random_heatmaps(rng):
    model = nets.randomize_biases(nets.mlp(rng, sizes=(24, 16, 12, 3)), rng, scale=0.1)
    x = rng.normal(0, 1, (40, 24))
    lrp = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, dtype="float64")
    rnd = lrpflow.explain(model, x, rule="random", dtype="float64")
    kw = {"steps": 12, "fraction": 0.5}
    aopc_lrp = ev.pixel_flipping(model, x, lrp.relevance, lrp.target, **kw).aopc
    aopc_rnd = ev.pixel_flipping(model, x, rnd.relevance, lrp.target, **kw).aopc
    aopc_lerf = ev.pixel_flipping(model, x, lrp.relevance, lrp.target, order="least_relevant_first", **kw).aopc
    assert aopc_lrp.mean() > aopc_rnd.mean() + 0.1
    assert aopc_lrp.mean() > aopc_lerf.mean()
    assert (aopc_lrp > aopc_rnd).mean() > 0.7


# -- conservation and the ledger ------------------------------------------------------------

def test_conservation_and_ledger(rng):
    model = nets.randomize_biases(nets.mlp(rng), rng)
    x = rng.normal(0, 1, (5, 6))
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.1, dtype="float64")
    cons = ev.conservation(out)
    assert cons is out.conservation and cons.shape == (5,)
    absorbed = ev.ledger_absorbed(out)
    assert set(absorbed) == {n.name for n in model.nodes}
    total = sum(absorbed.values())
    r_init, r_in = out.r_init.sum(1), out.relevance.sum(1)
    numpy.testing.assert_allclose(total, r_init - r_in, rtol=1e-9, atol=1e-12)  # the ledger telescopes
    rel = sum(ev.ledger_absorbed(out, relative=True).values())
    numpy.testing.assert_allclose(numpy.abs(rel), cons, rtol=1e-9, atol=1e-12)
    with pytest.raises(ConfigError, match="conservation"):
        ev.conservation(object())


# -- rank correlation and randomisation sanity ------------------------------------------------

def test_rank_and_spearman_with_ties(xp):
    a = numpy.array([[3.0, 1.0, 1.0, 2.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0, -1.0]])
    numpy.testing.assert_allclose(np_(ev.rank(xp.asarray(a))), [[4, 1, 1, 3, 5, 1], [2.5, 2.5, 2.5, 2.5, 5, 0]])
    b = numpy.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    rho = np_(ev.spearman(xp.asarray(a), xp.asarray(b)))
    # Pearson correlation of the average ranks, by hand
    expect = [numpy.corrcoef(numpy.array(ra), numpy.arange(6))[0, 1]
              for ra in ([4, 1, 1, 3, 5, 1], [2.5, 2.5, 2.5, 2.5, 5, 0])]
    numpy.testing.assert_allclose(rho, expect, rtol=1e-12)
    numpy.testing.assert_allclose(np_(ev.spearman(xp.asarray(a), xp.asarray(a))), [1.0, 1.0])
    numpy.testing.assert_allclose(np_(ev.spearman(xp.asarray(a), -xp.asarray(a))), [-1.0, -1.0])
    assert math.isnan(float(np_(ev.spearman(xp.ones((1, 4)), xp.asarray(b[:1, :4])))[0]))


def test_spearman_matches_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    a = rng.integers(0, 5, (4, 30)).astype(float)  # many ties
    b = rng.normal(0, 1, (4, 30))
    ours = ev.spearman(a, b)
    for k in range(4):
        assert ours[k] == pytest.approx(stats.spearmanr(a[k], b[k])[0], rel=1e-10)
    ours_abs = ev.spearman(a - 2, b, absolute=True)
    assert ours_abs[0] == pytest.approx(stats.spearmanr(numpy.abs(a[0] - 2), numpy.abs(b[0]))[0], rel=1e-10)


def test_randomization_sanity(rng, backend):
    model = nets.randomize_biases(nets.cnn(rng, channels=2, size=10, classes=4), rng)
    before = {n.name: {k: v.copy() for k, v in n.layer.params().items()} for n in model.nodes}
    x = rng.normal(0, 1, (6, 10, 10, 2))

    def factory(m):
        return lrpflow.Explainer(m, rule="epsilon", epsilon=0.01, dtype="float64", backend=backend)

    res = ev.randomization_sanity(factory, model, x, seed=1)
    assert res.layers == ("original", "6_linear", "3_conv2d", "0_conv2d")  # top-down
    corr = np_(res.correlation)
    assert corr.shape == (4, 6)
    numpy.testing.assert_allclose(corr[0], 1.0, rtol=1e-12)  # an unrandomised copy explains identically
    assert numpy.abs(corr[-1]).mean() < 0.3  # every layer randomised: the heatmaps are unrelated
    assert corr[-1].mean() < corr[0].mean() - 0.5
    for n in model.nodes:  # the model itself is untouched
        for k, v in n.layer.params().items():
            numpy.testing.assert_array_equal(v, before[n.name][k])
    numpy.testing.assert_array_equal(np_(res.target), model.run(x)[0].argmax(1))
    # independent randomisation of the top layer alone = the first cascade step (same seed, same draws)
    single = ev.randomization_sanity(factory, model, x, layers=["6_linear"], cascade=False, seed=1)
    assert single.layers == ("original", "6_linear") and set(single.as_dict()) == {"original", "6_linear"}
    numpy.testing.assert_allclose(np_(single.correlation[1]), corr[1], rtol=1e-12)


def test_randomize_layer_keeps_scale_and_running_statistics(rng):
    layer = Linear(50, 40, rng=rng)
    layer.set_params(bias=numpy.zeros(40))
    w = layer.weight.copy()
    assert ev.randomize_layer(layer, numpy.random.default_rng(0)) == ["weight"]  # the zero bias stays
    assert not numpy.allclose(layer.weight, w)
    assert layer.weight.std() == pytest.approx(w.std(), rel=0.1)
    assert (layer.bias == 0).all()
    from lrpflow.layers import BatchNorm

    bn = BatchNorm(3, mean=numpy.array([1.0, 2.0, 3.0]), var=numpy.array([1.0, 2.0, 3.0]))
    assert ev.randomize_layer(bn, numpy.random.default_rng(0)) == ["gamma"]  # beta is 0; mean/var kept
    numpy.testing.assert_array_equal(bn.var, [1.0, 2.0, 3.0])


# -- sparseness, complexity, top-k ---------------------------------------------------------------

def test_gini_and_complexity_by_hand(xp):
    n = 8
    one_hot = xp.zeros((1, n))
    one_hot[0, 3] = -2.0
    uniform = xp.full((1, n), 0.7)
    assert float(np_(ev.gini(one_hot))[0]) == pytest.approx(1 - 1 / n)
    assert float(np_(ev.gini(uniform))[0]) == pytest.approx(0.0, abs=1e-12)
    # |c| sorted (0, 1, 3), ‖c‖₁ = 4: G = 1 − 2·(1·1.5 + 3·0.5)/(3·4) = 0.5
    assert float(np_(ev.sparseness(xp.asarray([[0.0, -1.0, 3.0]])))[0]) == pytest.approx(0.5)
    assert float(np_(ev.complexity(one_hot))[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(np_(ev.complexity(uniform))[0]) == pytest.approx(math.log(n))
    # p = (1/4, 3/4): H = −(¼ log ¼ + ¾ log ¾)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(np_(ev.complexity(xp.asarray([[0.0, -1.0, 3.0]])))[0]) == pytest.approx(h)
    images = xp.zeros((2, 4, 4, 3))
    assert ev.sparseness(images).shape == (2,) and bool(xp.isnan(ev.sparseness(images)).all())


def test_topk_intersection():
    r = numpy.array([[[[5.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [2.0, 0.0]]]])  # (1, 2, 2, 2) NHWC
    mask = numpy.array([[True, False], [False, True]])  # per pixel (H, W): channels are summed
    # pixel sums: (0,0)=5, (0,1)=1, (1,0)=3, (1,1)=2 → top-2 pixels (0,0), (1,0): one inside
    numpy.testing.assert_allclose(ev.topk_intersection(r, mask, 2), [0.5])
    numpy.testing.assert_allclose(ev.topk_intersection(r, mask, 1), [1.0])
    full = numpy.zeros(r.shape, dtype=bool)
    full[0, 1, 0, 1] = True  # the feature with relevance 3
    numpy.testing.assert_allclose(ev.topk_intersection(r, full, 2), [0.5])
    with pytest.raises(ShapeError, match="mask"):
        ev.topk_intersection(r, numpy.ones((3, 3), dtype=bool), 1)
    with pytest.raises(ConfigError, match="k"):
        ev.topk_intersection(r, mask, 5)


# -- registry and evaluate() ---------------------------------------------------------------------

def test_metrics_are_registered_plugins():
    regs = build_registries(make_plugin_manager())
    names = regs.metrics.names()
    for name in ("pixel_flipping", "pixel_flipping_auc", "conservation", "randomization_sanity", "sparseness",
                 "complexity", "topk_intersection"):
        assert name in names
        assert regs.metrics.entry(name).plugin == "lrpflow.evaluate"
        assert regs.metrics.get(name) is ev.METRICS[name]
    assert regs.metrics.canonical("aopc") == "pixel_flipping"
    assert regs.metrics.canonical("gini") == "sparseness"


def test_evaluate_runs_metrics_by_name(rng):
    model = nets.randomize_biases(nets.mlp(rng, sizes=(10, 8, 3)), rng)
    x = rng.normal(0, 1, (5, 10))
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, dtype="float64")
    res = ev.evaluate(["aopc", "conservation", "sparseness", "complexity"], model, x, out,
                      pixel_flipping={"steps": 5, "patch": 2})
    assert list(res) == ["pixel_flipping", "conservation", "sparseness", "complexity"]
    assert all(v.shape == (5,) for v in res.values())
    direct = ev.pixel_flipping(model, x, out.relevance, out.target, steps=5, patch=2)
    numpy.testing.assert_allclose(res["pixel_flipping"], direct.aopc)
    res2 = ev.evaluate({"pixel_flipping_auc": {"steps": 5}, "randomization_sanity": {"rule": "epsilon", "epsilon": 0.01}},
                       model, x, out)
    numpy.testing.assert_allclose(res2["pixel_flipping_auc"], ev.pixel_flipping(model, x, out.relevance, out.target,
                                                                                 steps=5).auc)
    assert res2["randomization_sanity"].shape == (5,)
    with pytest.raises(ConfigError, match="explainer_factory"):
        ev.evaluate(["randomization_sanity"], model, x, out)
    with pytest.raises(ConfigError, match="'steps'"):
        ev.evaluate(["conservation"], model, x, out, steps=3)
    with pytest.raises(UnknownNameError, match="pixel_flipping"):
        ev.evaluate(["pixel_flopping"], model, x, out)

    reg = Registry("metrics")
    reg.add("bad", lambda model, x, explanation: numpy.zeros(3))
    with pytest.raises(ShapeError, match="'bad'"):
        ev.evaluate("bad", model, x, out, registry=reg)


# -- bad arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, word", [
    ({"order": "most_relevant_last"}, ConfigError, "order"),
    ({"steps": 0}, ConfigError, "steps"),
    ({"steps": 2.5}, ConfigError, "steps"),
    ({"fraction": 1.5}, ConfigError, "fraction"),
    ({"fraction": 0}, ConfigError, "fraction"),
    ({"patch": 0}, ConfigError, "patch"),
    ({"patch": 9}, ConfigError, "patch"),
    ({"patch": (1, 1)}, ConfigError, "patch"),
    ({"baseline": "blur"}, ConfigError, "baseline"),
    ({"baseline": numpy.zeros(3)}, ShapeError, "baseline"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"seed": -1}, ConfigError, "seed"),
    ({"target": 2}, ConfigError, "target"),
    ({"target": numpy.array([-1, -1])}, ConfigError, "target"),
    ({"target": numpy.array([0, 1, 1])}, ShapeError, "target"),
    ({"target": "true"}, ConfigError, "target"),
    ({"relevance": numpy.zeros((2, 3))}, ShapeError, "relevance"),
    ({"x": numpy.zeros((2, 5))}, ShapeError, "relevance"),
    ({"model": "model.txt"}, ConfigError, "model"),
])
def test_pixel_flipping_bad_arguments(kwargs, error, word):
    args = {"model": linear_model(), "x": X, "relevance": contributions(), "target": T}
    args.update(kwargs)
    model, x, r, t = args.pop("model"), args.pop("x"), args.pop("relevance"), args.pop("target")
    with pytest.raises(error, match=word):
        ev.pixel_flipping(model, x, r, t, **args)


def test_randomization_bad_arguments(rng):
    model = nets.mlp(rng)
    x = rng.normal(0, 1, (2, 6))
    with pytest.raises(ConfigError, match="explainer_factory"):
        ev.randomization_sanity("epsilon", model, x)
    with pytest.raises(ConfigError, match="layers"):
        ev.randomization_sanity(lambda m: lrpflow.Explainer(m), model, x, layers=["1_relu"])
    with pytest.raises(ShapeError, match="same shape"):
        ev.spearman(numpy.zeros((2, 3)), numpy.zeros((2, 4)))


def test_the_evaluate_step_prepares_the_batch_only_for_metrics_that_read_it(rng, tmp_path):
    """Metrics marked ``uses_input = False`` get x=None; the batch is brought to the model only when one reads it."""
    from lrpflow.io.source import Batch
    from lrpflow.steps import Evaluate, State

    model = nets.mlp(rng, sizes=(10, 8, 3))
    x = rng.normal(0, 1, (4, 10)).astype(numpy.float32)
    explainer = lrpflow.Explainer(model, rule="epsilon", epsilon=0.01)
    prepared = []

    class Counting:
        def prepare(self, batch):
            prepared.append(batch)
            return explainer.prepare(batch)

    for names, reads in ((["conservation", "gini", "complexity"], False), (["conservation", "pixel_flipping"], True)):
        state = State(cfg={"evaluate": {"metrics": names, "params": {"pixel_flipping": {"steps": 2}}}},
                      output_dir=tmp_path, model=model, explainer=Counting(), batch=Batch(0, x, None),
                      explanation=explainer.explain(x))
        prepared.clear()
        Evaluate().process(state)
        assert len(prepared) == int(reads)
        numpy.testing.assert_array_equal(state.metrics["conservation"], to_numpy(ev.conservation(state.explanation)))
        numpy.testing.assert_array_equal(state.metrics["sparseness" if not reads else "pixel_flipping"],
                                         ev.sparseness(state.explanation) if not reads else
                                         ev.pixel_flipping(model, x, state.explanation.relevance,
                                                           state.explanation.target, steps=2).aopc)
