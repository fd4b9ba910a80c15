"""iNNvestigate's analyzer names (lrpflow.innvestigate) against a slow reference of their semantics.

The reference below writes every linear map as an explicit matrix M (flattened inputs × outputs,
built from basis vectors) and applies the rules of ../shared/INNVESTIGATE_SEMANTICS.md to the
explicit contributions ``x_i M_ij`` in loops: kernel layers get the analyzer's rule (the input
layer ``input_layer_rule``), Add / average pooling the Z rule on the sum, MaxPool winner-take-all,
ReLU passes relevance (deep_taylor: the gradient everywhere but on kernel layers).
"""
from __future__ import annotations

import numpy
import pytest

import lrpflow
from lrpflow import innvestigate as inn
from lrpflow.errors import ConfigError
from lrpflow.graph import Model, Node, Sequential
from lrpflow.layers import Add, AvgPool, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool, ReLU, SoftMax

RNG = numpy.random.default_rng(7)


def r(*shape, s=0.6):
    return RNG.normal(0, s, shape)


def dense_net():
    return Sequential([Linear(4, 6, weight=r(4, 6), bias=r(6, s=0.2)), ReLU(),
                       Linear(6, 5, weight=r(6, 5), bias=r(5, s=0.2)), ReLU(),
                       Linear(5, 3, weight=r(5, 3), bias=r(3, s=0.2))], input_shape=(4,))


def conv_net():
    return Sequential([Conv2d(3, 3, 2, 3, padding=1, weight=r(3, 3, 2, 3), bias=r(3, s=0.2)), ReLU(),
                       MaxPool(2, 2),
                       Conv2d(2, 2, 3, 4, weight=r(2, 2, 3, 4), bias=r(4, s=0.2)), ReLU(),
                       Flatten(), Linear(16, 5, weight=r(16, 5), bias=r(5, s=0.2)), ReLU(),
                       Linear(5, 3, weight=r(5, 3), bias=r(3, s=0.2))], input_shape=(6, 6, 2))


def res_net():
    nodes = [
        Node("c1", Conv2d(3, 3, 2, 3, padding=1, weight=r(3, 3, 2, 3), bias=r(3, s=0.2)), ("input",)),
        Node("a1", ReLU(), ("c1",)),
        Node("c2", Conv2d(3, 3, 3, 3, padding=1, stride=1, weight=r(3, 3, 3, 3), bias=r(3, s=0.2)), ("a1",)),
        Node("pool", AvgPool(2, 2, stride=1, padding=(1, 0, 1, 0)), ("c2",)),
        Node("add", Add(), ("a1", "pool")),
        Node("a2", ReLU(), ("add",)),
        Node("gap", GlobalAvgPool(), ("a2",)),
        Node("fc", Linear(3, 4, weight=r(3, 4), bias=r(4, s=0.2)), ("gap",)),
    ]
    return Model(nodes, input_shape=(5, 5, 2))


NETS = {"dense": (dense_net, (4,)), "conv": (conv_net, (6, 6, 2)), "res": (res_net, (5, 5, 2))}


# --- the slow reference -----------------------------------------------------------------------


def matrix(layer, in_shapes):
    """Explicit (Σ inputs, outputs) matrix of a linear layer without bias."""
    sizes = [int(numpy.prod(s)) for s in in_shapes]
    rows = []
    for k, s in enumerate(in_shapes):
        for i in range(sizes[k]):
            xs = [numpy.zeros((1, *t)) for t in in_shapes]
            xs[k].reshape(-1)[i] = 1.0
            w, _ = layer.lrp_params(xs)
            rows.append(numpy.asarray(layer.apply(xs, w, None)).reshape(-1))
    return numpy.array(rows)


def bias_of(layer, out_shape):
    b = layer.params().get("bias") if "bias" in layer.param_names else None
    return numpy.zeros(int(numpy.prod(out_shape))) if b is None else numpy.broadcast_to(b, out_shape).reshape(-1)


def div(a, b):
    return numpy.where(b == 0, 0.0, a / numpy.where(b == 0, 1.0, b))


def rule_on_matrix(rule, x, M, b, R):
    """R_in for one sample: x (I,), M (I, J), b (J,), R (J,)."""
    kind, p = rule
    Z = x[:, None] * M
    if kind in ("z", "eps"):
        z = Z.sum(0) + (b if p.get("bias", True) else 0)
        den = z + p.get("eps", 0.0) * numpy.where(z >= 0, 1.0, -1.0)
        return (div(Z, den[None, :]) * R).sum(1)
    if kind == "wsquare":
        W2 = M ** 2
        return (div(W2, W2.sum(0)[None, :]) * R).sum(1)
    if kind == "flat":
        C = (M != 0).astype(float)
        return (div(C, C.sum(0)[None, :]) * R).sum(1)
    if kind == "ab":
        a, be, bias = p["alpha"], p["beta"], p["bias"]
        P, N = numpy.maximum(Z, 0), numpy.minimum(Z, 0)
        Pj = P.sum(0) + (numpy.maximum(b, 0) if bias else 0)
        Nj = N.sum(0) + (numpy.minimum(b, 0) if bias else 0)
        return (a * div(P, Pj[None, :]) * R - be * div(N, Nj[None, :]) * R).sum(1)
    if kind == "zplusfast":
        Zp = x[:, None] * numpy.maximum(M, 0)
        return (div(Zp, Zp.sum(0)[None, :]) * R).sum(1)
    if kind == "bounded":
        lo, hi = p["low"], p["high"]
        Zb = Z - lo * numpy.maximum(M, 0) - hi * numpy.minimum(M, 0)
        return (div(Zb, Zb.sum(0)[None, :]) * R).sum(1)
    if kind == "grad":
        return M @ R
    raise AssertionError(kind)


def reference(model, x, kernel_rule, input_rule=None, deep_taylor=False, gradient=False, times_input=False,
              select=None, relu_head=False):
    """The analyzer's relevance for each sample (numpy float64 loops)."""
    out = []
    shapes = model.infer_shapes(x.shape[1:])
    cache: dict = {}

    def matrix_of(node):
        if node.name not in cache:
            cache[node.name] = matrix(node.layer, [shapes[i] for i in node.inputs])
        return cache[node.name]

    inputs = inn.InnvestigateComposite._input_kernel_nodes(model)
    for n in range(x.shape[0]):
        _, trace = model.forward(x[n : n + 1]) if not isinstance(model, Sequential) else model.run(x[n : n + 1])
        logits = trace.logits[0]
        k = int(logits.argmax()) if select is None else select
        R0 = numpy.zeros_like(logits)
        R0[k] = 1.0 if gradient else logits[k]
        if relu_head:
            R0 = numpy.maximum(R0, 0)
        rel = {trace.output: R0.reshape(-1)}
        for node in reversed(model.nodes):
            if node.name not in rel:
                continue
            R = rel.pop(node.name)
            layer = node.layer
            xs = [trace[i][0] for i in node.inputs]
            xin = numpy.concatenate([a.reshape(-1) for a in xs])
            if gradient or (deep_taylor and not {"dense", "conv"} & layer.kinds):
                if layer.role == "linear":
                    rin = matrix_of(node) @ R
                elif layer.role == "elementwise" and type(layer).__name__ == "ReLU":
                    rin = R * (xin > 0)
                elif layer.role == "elementwise":  # tanh, ...: the derivative
                    y = trace[node.name][0:1]
                    rin = layer.vjp([xs[0][None]], y, R.reshape(y.shape))[0].reshape(-1)
                elif layer.role == "maxpool":
                    rin = winners(layer, xs[0], R)
                else:  # shape layers: the layer's own (exact) vjp
                    y = trace[node.name][0:1]
                    rin = numpy.concatenate([g.reshape(-1) for g in layer.vjp([a[None] for a in xs], y,
                                                                                R.reshape(y.shape))])
            elif layer.role == "linear":
                M = matrix_of(node)
                if {"dense", "conv"} & layer.kinds:
                    rule = input_rule if (input_rule is not None and node.name in inputs) else kernel_rule(layer)
                    rin = rule_on_matrix(rule, xin, M, bias_of(layer, shapes[node.name]), R)
                else:
                    rin = rule_on_matrix(("z", {"bias": False}), xin, M, numpy.zeros(M.shape[1]), R)
            elif layer.role == "maxpool":
                rin = winners(layer, xs[0], R)
            elif layer.role == "shape":  # moved exactly (Flatten, Pad, Crop, Concat, ...): the layer's own vjp
                y = trace[node.name][0:1]
                rin = numpy.concatenate([g.reshape(-1) for g in layer.vjp([a[None] for a in xs], y, R.reshape(y.shape))])
            else:
                rin = R
            start = 0
            for i in node.inputs:
                size = int(numpy.prod(shapes[i]))
                part = rin[start : start + size]
                start += size
                rel[i] = rel[i] + part if i in rel else part
        res = rel[model.input_name].reshape(x.shape[1:])
        out.append(res * x[n] if times_input else res)
    return numpy.array(out)


def winners(layer, x, R):
    """MaxPool winner-take-all, explicit loops over the windows; ties (all-zero windows after a ReLU,
    reached by lrp.flat / lrp.w_square relevance) share equally — TF would route them to the first maximum."""
    t, b_, l, r_ = layer.pads
    h0, w0 = x.shape[:2]
    x = numpy.pad(x, ((t, b_), (l, r_), (0, 0)), constant_values=-numpy.inf)
    h, w, c = x.shape
    (ph, pw), (sh, sw) = layer.pool, layer.stride
    out = numpy.zeros_like(x)
    ho, wo = (h - ph) // sh + 1, (w - pw) // sw + 1
    Rr = R.reshape(ho, wo, c)
    for p in range(ho):
        for q in range(wo):
            for ch in range(c):
                win = x[p * sh : p * sh + ph, q * sw : q * sw + pw, ch]
                hits = numpy.argwhere(win == win.max())
                for a, b in hits:
                    out[p * sh + a, q * sw + b, ch] += Rr[p, q, ch] / len(hits)
    return out[t : t + h0, l : l + w0].reshape(-1)


def ab(a, b, bias=True):
    return ("ab", {"alpha": a, "beta": b, "bias": bias})


def const(rule):
    return lambda layer: rule


def preset(conv_rule):
    return lambda layer: conv_rule if "conv" in layer.kinds else ("eps", {"eps": 0.1, "bias": True})


CASES = {
    "lrp.z": dict(kernel_rule=const(("z", {}))),
    "lrp.epsilon": dict(kernel_rule=const(("eps", {"eps": 1e-7}))),
    "lrp.w_square": dict(kernel_rule=const(("wsquare", {}))),
    "lrp.flat": dict(kernel_rule=const(("flat", {}))),
    "lrp.alpha_2_beta_1": dict(kernel_rule=const(ab(2, 1))),
    "lrp.alpha_2_beta_1_IB": dict(kernel_rule=const(ab(2, 1, False))),
    "lrp.alpha_1_beta_0": dict(kernel_rule=const(ab(1, 0))),
    "lrp.alpha_1_beta_0_IB": dict(kernel_rule=const(ab(1, 0, False))),
    "lrp.z_plus": dict(kernel_rule=const(ab(1, 0, False))),
    "lrp.z_plus_fast": dict(kernel_rule=const(("zplusfast", {}))),
    "lrp.sequential_preset_a": dict(kernel_rule=preset(ab(1, 0))),
    "lrp.sequential_preset_b": dict(kernel_rule=preset(ab(2, 1))),
    "lrp.sequential_preset_a_flat": dict(kernel_rule=preset(ab(1, 0)), input_rule=("flat", {})),
    "lrp.sequential_preset_b_flat": dict(kernel_rule=preset(ab(2, 1)), input_rule=("flat", {})),
    "deep_taylor": dict(kernel_rule=const(ab(1, 0, False)), deep_taylor=True, relu_head=True),
    "gradient": dict(kernel_rule=None, gradient=True),
    "input_t_gradient": dict(kernel_rule=None, gradient=True, times_input=True),
}


def check(a, b):
    scale = max(float(numpy.abs(b).max()), 1e-12)
    numpy.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_analyzer_matches_reference(name, net):
    build, shape = NETS[net]
    model = build()
    x = RNG.normal(0, 1, (3, *shape))
    got = inn.create_analyzer(name, model, dtype="float64").analyze(x)
    check(got, reference(model, x, **CASES[name]))


@pytest.mark.parametrize("ilr, rule", [
    ("Z", ("z", {})), ("Epsilon", ("eps", {"eps": 1e-7})), ("WSquare", ("wsquare", {})), ("Flat", ("flat", {})),
    ("Alpha1Beta0", ab(1, 0)), ("Alpha2Beta1IgnoreBias", ab(2, 1, False)), ("ZPlus", ab(1, 0, False)),
    ("ZPlusFast", ("zplusfast", {})), ("Bounded", ("bounded", {"low": -1.0, "high": 1.0})),
    ((-2.5, 3.0), ("bounded", {"low": -2.5, "high": 3.0})),
])
@pytest.mark.parametrize("net", ["dense", "res"])
def test_input_layer_rule(ilr, rule, net):
    build, shape = NETS[net]
    model = build()
    x = RNG.normal(0, 1, (3, *shape))
    got = inn.create_analyzer("lrp.alpha_1_beta_0_IB", model, input_layer_rule=ilr, dtype="float64").analyze(x)
    check(got, reference(model, x, kernel_rule=const(ab(1, 0, False)), input_rule=rule))


def test_epsilon_parameters_and_bounded_deep_taylor():
    model, x = conv_net(), RNG.normal(0, 1, (3, 6, 6, 2))
    got = inn.create_analyzer("lrp.epsilon", model, epsilon=0.5, bias=False, dtype="float64").analyze(x)
    check(got, reference(model, x, kernel_rule=const(("eps", {"eps": 0.5, "bias": False}))))
    got = inn.create_analyzer("deep_taylor.bounded", model, low=-3, high=3, dtype="float64").analyze(x)
    check(got, reference(model, x, kernel_rule=const(ab(1, 0, False)), deep_taylor=True, relu_head=True,
                         input_rule=("bounded", {"low": -3.0, "high": 3.0})))
    with pytest.raises(ConfigError, match="low= and high="):
        inn.create_analyzer("deep_taylor.bounded", model)


@pytest.mark.parametrize("net", sorted(NETS))
def test_lrp_z_equals_input_times_gradient_on_relu_nets(net):
    # LRP-0 with the biases in the denominators (absorbing their share layer by layer) is x ⊙ ∇f
    build, shape = NETS[net]
    model = build()
    x = RNG.normal(0, 1, (4, *shape))
    z = inn.create_analyzer("lrp.z", model, dtype="float64").analyze(x)
    gxi = inn.create_analyzer("input_t_gradient", model, dtype="float64").analyze(x)
    check(z, gxi)
    assert numpy.abs(z).max() > 0


def test_conservation_without_biases():
    model = dense_net()
    for layer in model.modules:
        if isinstance(layer, Linear):
            layer.set_params(bias=numpy.zeros_like(layer.bias))
    x = RNG.normal(0, 1, (5, 4))
    logits = model.run(x)[0]
    # without biases Z, w², flat conserve the max logit exactly (no zero denominators on random data)
    for name in ("lrp.z", "lrp.w_square", "lrp.flat"):
        rel = inn.create_analyzer(name, model, dtype="float64").analyze(x)
        numpy.testing.assert_allclose(rel.sum(axis=1), logits.max(axis=1), rtol=1e-9)


def test_neuron_selection_modes():
    model, x = dense_net(), RNG.normal(0, 1, (3, 4))
    a = inn.create_analyzer("lrp.epsilon", model, neuron_selection_mode="index", dtype="float64")
    check(a.analyze(x, neuron_selection=2), reference(model, x, kernel_rule=const(("eps", {"eps": 1e-7})), select=2))
    per_sample = a.analyze(x, neuron_selection=[0, 1, 2])
    for n in range(3):
        check(per_sample[n : n + 1], reference(model, x[n : n + 1], kernel_rule=const(("eps", {"eps": 1e-7})), select=n))
    everything = inn.create_analyzer("lrp.z", model, neuron_selection_mode="all", dtype="float64").analyze(x)
    parts = sum(reference(model, x, kernel_rule=const(("z", {})), select=k) for k in range(3))
    check(everything, parts)  # linear in the initial relevance
    g_all = inn.create_analyzer("gradient", model, neuron_selection_mode="all", dtype="float64").analyze(x)
    check(g_all, sum(reference(model, x, kernel_rule=None, gradient=True, select=k) for k in range(3)))
    with pytest.raises(ConfigError, match="neuron_selection"):
        inn.create_analyzer("lrp.z", model, neuron_selection_mode="index").analyze(x)
    with pytest.raises(ConfigError, match="neuron_selection_mode"):
        inn.create_analyzer("lrp.z", model, neuron_selection_mode="max")


def test_names_work_in_explain():
    model, x = conv_net(), RNG.normal(0, 1, (3, 6, 6, 2))
    via_inn = inn.create_analyzer("lrp.alpha_2_beta_1_IB", model, input_layer_rule="Flat", dtype="float64").analyze(x)
    via_explain = lrpflow.explain(model, x, composite="lrp.alpha_2_beta_1_IB", input_layer_rule="Flat", dtype="float64")
    check(via_explain.relevance, via_inn)
    # rule names: one rule on the weighted layers (the engine's handling elsewhere)
    for name, cls in (("lrp.w_square", "WSquare"), ("lrp.z_plus_fast", "ZPlusFast"), ("lrp.z_plus", "IgnoreBiasZPlus"),
                      ("lrp.alpha_1_beta_0_IB", "ZPlus"), ("lrp.alpha_2_beta_1_IB", "AlphaBeta")):
        rules = lrpflow.Explainer(model, rule=name).rules()
        assert type(rules["0_conv2d"]).__name__ == cls
    assert lrpflow.Explainer(model, rule="lrp.alpha_2_beta_1_IB").rules()["0_conv2d"].bias is False
    assert lrpflow.Explainer(model, rule="lrp.z_plus").rules()["0_conv2d"].bias is False
    with pytest.raises(ConfigError, match="unknown analyzer"):
        inn.create_analyzer("lrp.nonsense", model)
    with pytest.raises(ConfigError, match="alpha and beta"):
        inn.create_analyzer("lrp.z", model, input_layer_rule="AlphaBeta")


def test_model_wo_softmax():
    seq = Sequential([Linear(4, 3, rng=0), SoftMax()], input_shape=(4,))
    assert len(inn.model_wo_softmax(seq).modules) == 1
    dag = Model([Node("fc", Linear(4, 3, rng=0)), Node("p", SoftMax(), ("fc",))], input_shape=(4,))
    assert inn.model_wo_softmax(dag).output == "fc"
    assert inn.model_wo_softmax(dense_net()).output == dense_net().output


def test_keras_model_ports_line_by_line():
    pytest.importorskip("lrpflow_keras")
    import os

    path = os.path.join(os.path.dirname(__file__), "fixtures", "keras", "resnet.h5")
    model = lrpflow.load_model(path)
    x = numpy.load(os.path.join(os.path.dirname(__file__), "fixtures", "keras", "resnet.npz"))["x"]
    a = inn.create_analyzer("lrp.alpha_1_beta_0_IB", model, input_layer_rule="WSquare").analyze(x)
    assert a.shape == x.shape and a.dtype == numpy.float32 and numpy.isfinite(a).all()
    check(inn.create_analyzer("lrp.z", model, dtype="float64").analyze(x),
          inn.create_analyzer("input_t_gradient", model, dtype="float64").analyze(x))
    out = lrpflow.explain(model, x, composite="lrp.alpha_1_beta_0_IB", input_layer_rule=(-1, 1), dtype="float64")
    check(out.relevance, inn.create_analyzer("lrp.alpha_1_beta_0_IB", model, input_layer_rule=(-1, 1),
                                             dtype="float64").analyze(x))


@pytest.mark.parametrize("fixture", ["cnn.keras", "resnet.h5", "concat_tf2.h5"])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.w_square", "deep_taylor",
                                  "lrp.sequential_preset_a_flat"])
def test_keras_fixtures_match_reference(fixture, name):
    pytest.importorskip("lrpflow_keras")
    import os

    base = os.path.join(os.path.dirname(__file__), "fixtures", "keras")
    model = lrpflow.load_model(os.path.join(base, fixture))
    x = numpy.load(os.path.join(base, fixture.split(".")[0].replace("_tf2", "") + ".npz"))["x"][:2]
    got = inn.create_analyzer(name, model, dtype="float64").analyze(x)
    check(got, reference(model, x, **CASES[name]))
