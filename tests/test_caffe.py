"""lrpflow-caffe's model reader: Caffe nets written with the shipped schema, checked against slow
NCHW reference implementations of Caffe's layers written here, against the same networks built
directly in lrpflow, and for its errors. Also the core LRN layer."""
from __future__ import annotations

import math

import numpy
import pytest

pytest.importorskip("lrpflow_caffe")

import caffe_nets  # noqa: E402
import lrpflow  # noqa: E402
from lrpflow.errors import ModelFormatError, UnsupportedLayerError  # noqa: E402
from lrpflow.layers import LRN  # noqa: E402
from lrpflow_caffe import layers as caffe_layers  # noqa: E402
from lrpflow_caffe import protofiles  # noqa: E402

# --- slow references of Caffe's layers (NCHW, one sample, float64) -----------------------------------


def ref_conv(x, w, b, stride=(1, 1), pad=(0, 0), group=1):
    c, h, wd = x.shape
    out, cg, kh, kw = w.shape
    xp = numpy.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho, wo = (h + 2 * pad[0] - kh) // stride[0] + 1, (wd + 2 * pad[1] - kw) // stride[1] + 1
    y = numpy.zeros((out, ho, wo))
    og = out // group
    for o in range(out):
        g = o // og
        for i in range(ho):
            for j in range(wo):
                win = xp[g * cg : (g + 1) * cg, i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw]
                y[o, i, j] = (win * w[o]).sum() + (0 if b is None else b[o])
    return y


def ref_pool(x, k, s, p, method, global_pooling=False):
    """Caffe's PoolingLayer::Forward_cpu, loop by loop."""
    c, h, w = x.shape
    if global_pooling:
        k, s, p = (h, w), (1, 1), (0, 0)
    ph_ = int(math.ceil((h + 2 * p[0] - k[0]) / s[0])) + 1
    pw_ = int(math.ceil((w + 2 * p[1] - k[1]) / s[1])) + 1
    if p[0] or p[1]:
        if (ph_ - 1) * s[0] >= h + p[0]:
            ph_ -= 1
        if (pw_ - 1) * s[1] >= w + p[1]:
            pw_ -= 1
    y = numpy.zeros((c, ph_, pw_))
    for ch in range(c):
        for i in range(ph_):
            for j in range(pw_):
                hs, ws_ = i * s[0] - p[0], j * s[1] - p[1]
                if method == "MAX":
                    he, we = min(hs + k[0], h), min(ws_ + k[1], w)
                    hs, ws_ = max(hs, 0), max(ws_, 0)
                    y[ch, i, j] = x[ch, hs:he, ws_:we].max()
                else:
                    he, we = min(hs + k[0], h + p[0]), min(ws_ + k[1], w + p[1])
                    size = (he - hs) * (we - ws_)
                    hs, ws_, he, we = max(hs, 0), max(ws_, 0), min(he, h), min(we, w)
                    y[ch, i, j] = x[ch, hs:he, ws_:we].sum() / size
    return y


def ref_lrn(x, n, alpha, beta, k):
    """Caffe's LRN ACROSS_CHANNELS: scale_c = k + α/n Σ_{c' = c − (n−1)/2}^{c − (n−1)/2 + n − 1} x_c'²."""
    c = x.shape[0]
    pre = (n - 1) // 2
    y = numpy.zeros_like(x)
    for ch in range(c):
        lo, hi = max(ch - pre, 0), min(ch - pre + n, c)
        scale = k + alpha / n * (x[lo:hi] ** 2).sum(axis=0)
        y[ch] = x[ch] * scale ** (-beta)
    return y


F32_EPS = float(numpy.float32(1e-5))  # Caffe's eps parameter is a float


def ref_zoo(x, w):
    """The ZOO net of caffe_nets, as Caffe computes it (one sample, NCHW)."""
    relu = lambda a: numpy.maximum(a, 0)  # noqa: E731
    y = ref_conv(x, w["conv1"][0], w["conv1"][1], stride=(2, 2))
    sf = w["bn1"][2][0]
    mean, var = w["bn1"][0] / sf, w["bn1"][1] / sf
    y = (y - mean[:, None, None]) / numpy.sqrt(var[:, None, None] + F32_EPS)
    y = y * w["scale1"][0][:, None, None] + w["scale1"][1][:, None, None]
    y = relu(y)
    y = ref_lrn(y, 3, 0.5, 0.75, 2.0)
    pool1 = ref_pool(y, (3, 3), (2, 2), (0, 0), "MAX")
    a = ref_conv(pool1, w["conv2a"][0], w["conv2a"][1], pad=(1, 1), group=2)
    a = numpy.where(a > 0, a, float(numpy.float32(0.1)) * a)
    bb = ref_conv(pool1, w["conv2b"][0], None)
    s = a + 0.5 * bb
    s2 = s + bb
    p2 = ref_pool(s2, (3, 3), (2, 2), (1, 1), "AVE")
    cat = numpy.concatenate([p2, p2])
    m2, v2 = w["bn2"][0], w["bn2"][1]
    cat = (cat - m2[:, None, None]) / numpy.sqrt(v2[:, None, None] + F32_EPS)
    cat = 1 / (1 + numpy.exp(-cat))
    f = cat.ravel()  # C, H, W order
    f1 = relu(w["fc1"][0] @ f + w["fc1"][1])
    logits = w["fc2"][0] @ f1 + w["fc2"][1]
    e = numpy.exp(logits - logits.max())
    return logits, e / e.sum()


@pytest.fixture
def nets(tmp_path):
    rng = numpy.random.default_rng(7)
    f32 = lambda w: {k: [a.astype(numpy.float32).astype(numpy.float64) for a in v] for k, v in w.items()}  # noqa: E731
    wl, wz = f32(caffe_nets.lenet_weights(rng)), f32(caffe_nets.zoo_weights(rng))  # as stored: float32
    out = {"lenet_w": wl, "zoo_w": wz, "dir": tmp_path}
    out["lenet"] = caffe_nets.write_net(tmp_path, "lenet", caffe_nets.LENET, wl)
    out["zoo"] = caffe_nets.write_net(tmp_path, "zoo", caffe_nets.ZOO, wz)
    out["zoo_snapshot"] = caffe_nets.write_net(tmp_path, "zoo_snap", caffe_nets.ZOO, wz, snapshot=True, legacy=True)
    return out


def _logits(model, x):
    """The scores below the output Softmax, and the output."""
    xh = model.to_nhwc(x)
    y, trace = model.run(xh)
    return numpy.asarray(trace[model.logits_node]), numpy.asarray(y)


def test_zoo_dag_matches_the_slow_caffe_reference(nets):
    proto, weights = nets["zoo"]
    model = lrpflow.load_model(proto, weights=weights)
    assert model.layout == "NCHW" and model.input_shape == (17, 17, 3)
    x = numpy.random.default_rng(0).normal(0, 50, (3, 3, 17, 17))
    logits, prob = _logits(model, x)
    for i in range(3):
        ref_logits, ref_prob = ref_zoo(x[i], nets["zoo_w"])
        numpy.testing.assert_allclose(logits[i], ref_logits, rtol=1e-9, atol=1e-9)
        numpy.testing.assert_allclose(prob[i], ref_prob, rtol=1e-9, atol=1e-12)
    # the Split Caffe inserts (pool1 feeds three layers, conv2b two) are counted in the layer indices
    types = [lay.type for lay in model.caffe.layers]
    assert types[:8] == ["Input", "Convolution", "BatchNorm", "Scale", "ReLU", "LRN", "Pooling", "Split"]
    assert model.caffe.layers[1].node == "conv1+bn1" and "fold_batchnorm: bn1 -> conv1+bn1" in model.canonizers
    unfolded = lrpflow.load_model(proto, weights=weights, fold_batchnorm=False)
    numpy.testing.assert_allclose(_logits(unfolded, x)[0], logits, rtol=1e-10, atol=1e-10)


def test_native_round_trip_of_a_caffe_model(nets, tmp_path):
    proto, weights = nets["zoo"]
    model = lrpflow.load_model(proto, weights=weights)
    lrpflow.save_model(model, tmp_path / "zoo.h5")
    back = lrpflow.load_model(tmp_path / "zoo.h5")
    x = numpy.random.default_rng(3).normal(0, 50, (2, 3, 17, 17))
    numpy.testing.assert_array_equal(_logits(back, x)[1], _logits(model, x)[1])
    a = lrpflow.explain(model, x, rule="epsilon", epsilon=0.1, dtype="float64").relevance
    numpy.testing.assert_array_equal(lrpflow.explain(back, x, rule="epsilon", epsilon=0.1, dtype="float64").relevance, a)


def test_training_snapshot_weights_by_layer_name(nets):
    """A snapshot (Data layer, Split layers, SoftmaxWithLoss, phase TRAIN, legacy 4-D blobs) with the deploy net."""
    proto, _ = nets["zoo"]
    _, snap = nets["zoo_snapshot"]
    a = lrpflow.load_model(proto, weights=nets["zoo"][1])
    b = lrpflow.load_model(proto, weights=snap)
    x = numpy.random.default_rng(1).normal(0, 50, (2, 3, 17, 17))
    numpy.testing.assert_array_equal(_logits(a, x)[1], _logits(b, x)[1])
    ra = lrpflow.explain(a, x, rule="epsilon", epsilon=0.1, dtype="float64").relevance
    rb = lrpflow.explain(b, x, rule="epsilon", epsilon=0.1, dtype="float64").relevance
    numpy.testing.assert_array_equal(ra, rb)


def test_lenet_equals_the_same_network_built_in_lrpflow(nets):
    proto, weights = nets["lenet"]
    w = nets["lenet_w"]
    model = lrpflow.load_model(proto, weights=weights)
    L = lrpflow.layers
    # NHWC: conv weights (kh, kw, in, out); ip1 rows permuted from Caffe's C, H, W to lrpflow's H, W, C order
    ip1 = w["ip1"][0].reshape(10, 6, 6, 3).transpose(2, 3, 1, 0).reshape(108, 10)
    direct = lrpflow.Sequential([
        L.Conv2d(3, 3, 3, 4, weight=w["conv1"][0].transpose(2, 3, 1, 0), bias=w["conv1"][1]),
        L.MaxPool(2, 2, stride=2), L.ReLU(),
        L.Conv2d(2, 3, 4, 6, padding=(1, 1, 0, 0), weight=w["conv2"][0].transpose(2, 3, 1, 0), bias=w["conv2"][1]),
        L.ReLU(), L.Flatten(), L.Linear(108, 10, weight=ip1, bias=w["ip1"][1]), L.Tanh(),
        L.Linear(10, 7, weight=w["ip2"][0].T, bias=w["ip2"][1]), L.SoftMax()], input_shape=(12, 12, 3))
    x = numpy.random.default_rng(2).normal(0, 1, (4, 3, 12, 12))
    xh = x.transpose(0, 2, 3, 1)
    numpy.testing.assert_allclose(_logits(model, x)[1], direct.run(xh)[0], rtol=1e-12)
    for kw in ({"rule": "epsilon", "epsilon": 0.01}, {"rule": "alpha_beta", "alpha": 2.0}, {"composite": "epsilon_plus_flat"}):
        a = lrpflow.explain(model, x, dtype="float64", **kw)
        b = lrpflow.explain(direct, xh, dtype="float64", **kw)
        numpy.testing.assert_allclose(a.relevance, b.relevance.transpose(0, 3, 1, 2), rtol=1e-9, atol=1e-12)
    # and the slow reference of the forward pass
    for i in range(2):
        y = ref_conv(x[i], *w["conv1"])
        y = numpy.maximum(ref_pool(y, (2, 2), (2, 2), (0, 0), "MAX"), 0)
        y = numpy.maximum(ref_conv(y, *w["conv2"], pad=(1, 0)), 0)
        y = numpy.tanh(w["ip1"][0] @ y.ravel() + w["ip1"][1])
        numpy.testing.assert_allclose(_logits(model, x)[0][i], w["ip2"][0] @ y + w["ip2"][1], rtol=1e-10)


@pytest.mark.parametrize("h,k,s,p", [(8, 3, 2, 0), (7, 3, 2, 1), (4, 3, 2, 1), (9, 2, 2, 0), (5, 3, 3, 2), (6, 4, 1, 1),
                                     (13, 3, 2, 0), (10, 5, 3, 2)])
def test_pooling_sizes_and_ave_divisor_match_caffe(h, k, s, p):
    rng = numpy.random.default_rng(h * 100 + k * 10 + s + p)
    x = rng.normal(size=(2, h, h + 1))
    oh, t, b = caffe_layers.pool_geometry(h, k, s, p)
    ow, left, r = caffe_layers.pool_geometry(h + 1, k, s, p)
    ref_max = ref_pool(x, (k, k), (s, s), (p, p), "MAX")
    ref_ave = ref_pool(x, (k, k), (s, s), (p, p), "AVE")
    assert ref_max.shape[1:] == (oh, ow)
    xh = x.transpose(1, 2, 0)[None]
    mp = lrpflow.layers.MaxPool(k, k, stride=s, padding=(t, b, left, r))
    numpy.testing.assert_allclose(mp.forward(xh)[0].transpose(2, 0, 1), ref_max)
    div = numpy.outer(caffe_layers.caffe_ave_divisor(h, k, s, p, oh), caffe_layers.caffe_ave_divisor(h + 1, k, s, p, ow))
    ap = caffe_layers.CaffeAvgPool(k, k, (s, s), (t, b, left, r), (h, h + 1), div)
    numpy.testing.assert_allclose(ap.forward(xh)[0].transpose(2, 0, 1), ref_ave, rtol=1e-12)
    # the z (norm) rule through AVE gives each input its share x_i / divisor of every window: conserved
    xpos = numpy.abs(xh) + 0.1
    net = lrpflow.Sequential([ap, lrpflow.layers.Flatten()], input_shape=xpos.shape[1:])
    r_out = rng.uniform(0.5, 1, (1, oh * ow * 2))
    rel = lrpflow.explain(net, xpos, rule="z", target=r_out, dtype="float64").relevance
    numpy.testing.assert_allclose(rel.sum(), r_out.sum(), rtol=1e-10)
    z = ap.forward(xpos).reshape(-1)
    share = numpy.zeros_like(xpos)  # slow: R_i = Σ_j x_i / divisor_j / z_j · R_j over the windows j holding i
    rr = r_out.reshape(oh, ow, 2)
    for i in range(oh):
        for j in range(ow):
            for c in range(2):
                for a in range(i * s - p, i * s - p + k):
                    for bcol in range(j * s - p, j * s - p + k):
                        if 0 <= a < h and 0 <= bcol < h + 1:
                            share[0, a, bcol, c] += xpos[0, a, bcol, c] / div[i, j] / z.reshape(oh, ow, 2)[i, j, c] * rr[i, j, c]
    numpy.testing.assert_allclose(rel, share, rtol=1e-9)


def test_lrn_forward_and_gradient():
    rng = numpy.random.default_rng(0)
    x = rng.normal(0, 2, (2, 3, 4, 7))
    for n in (1, 3, 4, 5):
        layer = LRN(n, alpha=0.7, beta=0.75, k=1.5)
        y = layer.forward(x)
        ref = numpy.stack([ref_lrn(xi.transpose(2, 0, 1), n, 0.7, 0.75, 1.5).transpose(1, 2, 0) for xi in x])
        numpy.testing.assert_allclose(y, ref, rtol=1e-12)
        g = rng.normal(size=y.shape)
        num = numpy.zeros_like(x)
        eps = 1e-6
        for idx in [(0, 0, 0, c) for c in range(7)] + [(1, 2, 3, 3)]:
            d = numpy.zeros_like(x)
            d[idx] = eps
            num[idx] = ((layer.forward(x + d) - layer.forward(x - d)) * g).sum() / (2 * eps)
            numpy.testing.assert_allclose(layer.vjp([x], y, g)[0][idx], num[idx], rtol=1e-6, atol=1e-8)
    # relevance passes through LRN unchanged
    net = lrpflow.Sequential([LRN(3), lrpflow.layers.Flatten()], input_shape=(3, 4, 7))
    r0 = rng.normal(size=(2, 84))
    rel = lrpflow.explain(net, x, rule="epsilon", target=r0, dtype="float64").relevance
    numpy.testing.assert_array_equal(rel.reshape(2, -1), r0)


def test_grouped_convolution_relevance_stays_in_its_groups(tmp_path):
    """A grouped conv (``Conv2d(groups=2)``) explains like two separate convs on the channel halves, flat too."""
    txt = """
input: "data"
input_dim: 1 input_dim: 4 input_dim: 6 input_dim: 6
layer { name: "g" type: "Convolution" bottom: "data" top: "g" convolution_param { num_output: 6 kernel_size: 3 group: 2 } }
layer { name: "r" type: "ReLU" bottom: "g" top: "g" }
layer { name: "fc" type: "InnerProduct" bottom: "g" top: "fc" inner_product_param { num_output: 3 } }
"""
    rng = numpy.random.default_rng(4)
    w = {"g": [rng.normal(size=(6, 2, 3, 3)), rng.normal(size=(6,))], "fc": [rng.normal(size=(3, 96)), rng.normal(size=(3,))]}
    w = {k: [a.astype(numpy.float32).astype(numpy.float64) for a in v] for k, v in w.items()}  # as stored
    proto, weights = caffe_nets.write_net(tmp_path, "g", txt, w)
    model = lrpflow.load_model(proto, weights=weights)
    assert model.caffe.layers[1].group == 2
    g = model.node("g").layer
    assert g.groups == 2 and g.weight.shape == (3, 3, 2, 6)
    x = rng.normal(size=(2, 4, 6, 6))
    L = lrpflow.layers
    from lrpflow.graph import Model, Node

    class Slice(lrpflow.layers.ShapeLayer):
        def __init__(self, lo, hi):
            super().__init__()
            self.lo, self.hi = lo, hi

        def forward(self, x):
            return x[..., self.lo : self.hi]

        def vjp(self, xs, y, g):
            out = numpy.zeros_like(xs[0])
            out[..., self.lo : self.hi] = g
            return [out]

        def output_shape(self, s):
            return (*s[:-1], self.hi - self.lo)

    fcw = w["fc"][0].reshape(3, 6, 4, 4).transpose(2, 3, 1, 0).reshape(96, 3)
    nodes = [Node("s0", Slice(0, 2)), Node("s1", Slice(2, 4)),
             Node("c0", L.Conv2d(3, 3, 2, 3, weight=w["g"][0][:3].transpose(2, 3, 1, 0), bias=w["g"][1][:3]), ("s0",)),
             Node("c1", L.Conv2d(3, 3, 2, 3, weight=w["g"][0][3:].transpose(2, 3, 1, 0), bias=w["g"][1][3:]), ("s1",)),
             Node("cat", L.Concat(), ("c0", "c1")), Node("r", L.ReLU(), ("cat",)), Node("f", L.Flatten(), ("r",)),
             Node("fc", L.Linear(96, 3, weight=fcw, bias=w["fc"][1]), ("f",))]
    direct = Model(nodes, input_shape=(6, 6, 4), layout="NCHW")
    for kw in ({"rule": "epsilon", "epsilon": 0.1}, {"rule": "alpha_beta", "alpha": 2.0}, {"rule": "gamma"}):
        a = lrpflow.explain(model, x, dtype="float64", **kw).relevance
        b = lrpflow.explain(direct, x, dtype="float64", **kw).relevance
        numpy.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    flat_caffe = {"default": "epsilon", "overrides": [{"name": "g", "rule": "flat"}]}
    flat_direct = {"default": "epsilon", "overrides": [{"name": "c*", "rule": "flat"}]}
    a = lrpflow.explain(model, x, composite=flat_caffe, dtype="float64").relevance
    b = lrpflow.explain(direct, x, composite=flat_direct, dtype="float64").relevance
    numpy.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)  # flat stays within each group
    # the same conv as one ungrouped block-diagonal weight: equal forward, but flat mixes the groups there
    full = numpy.zeros((3, 3, 4, 6))
    full[:, :, :2, :3], full[:, :, 2:, 3:] = g.weight[:, :, :, :3], g.weight[:, :, :, 3:]
    dense_nodes = [Node("g", L.Conv2d(3, 3, 4, 6, weight=full, bias=g.bias)), Node("r", L.ReLU(), ("g",)),
                   Node("f", L.Flatten(), ("r",)), Node("fc", L.Linear(96, 3, weight=fcw, bias=w["fc"][1]), ("f",))]
    block = Model(dense_nodes, input_shape=(6, 6, 4), layout="NCHW")
    mixed = lrpflow.explain(block, x, composite=flat_caffe, dtype="float64")
    numpy.testing.assert_allclose(mixed.logits, lrpflow.explain(model, x, rule="z", dtype="float64").logits, rtol=1e-9)
    assert numpy.abs(mixed.relevance - b).max() > 1e-3


def test_scaled_add_and_norm_rule_split_by_contribution():
    rng = numpy.random.default_rng(5)
    a, b = rng.uniform(0.5, 1, (2, 3)), rng.uniform(0.5, 1, (2, 3))
    layer = caffe_layers.ScaledAdd([1.0, 0.5])
    from lrpflow.graph import Model, Node

    model = Model([Node("a", lrpflow.layers.Identity()), Node("sum", layer, ("a", "a"))], input_shape=(3,))
    x = numpy.concatenate([a], axis=0)
    out = lrpflow.explain(model, x, rule="z", target=numpy.ones((2, 3)), dtype="float64")
    numpy.testing.assert_allclose(out.relevance, numpy.ones((2, 3)), rtol=1e-12)  # both branches meet again
    numpy.testing.assert_allclose(layer.forward(a, b), a + 0.5 * b)


def _net_with(tmp_path, body, weights=None, name="t"):
    txt = 'input: "data"\ninput_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n' + body
    return caffe_nets.write_net(tmp_path, name, txt, weights or {})


def test_errors_name_the_file_layer_and_what_was_expected(tmp_path, monkeypatch):
    rng = numpy.random.default_rng(0)
    conv = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }\n'
    good = {"c": [rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3,))]}
    proto, weights = _net_with(tmp_path, conv, good)
    # weights of the wrong shape name the layer
    _, bad = _net_with(tmp_path, conv, {"c": [rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3,))]}, name="bad")
    with pytest.raises(ModelFormatError, match=r"layer 'c' \(Convolution\): weight blob has shape \(3, 2, 2, 2\)"):
        lrpflow.load_model(proto, weights=bad)
    # a blob whose declared shape disagrees with its data
    from lrpflow_caffe import caffe_subset_pb2 as pb

    net = pb.NetParameter()
    lay = net.layer.add(name="c", type="Convolution")
    blob = lay.blobs.add()
    blob.shape.dim.extend([3, 2, 3, 3])
    blob.data.extend([0.0] * 10)
    (tmp_path / "lying.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(ModelFormatError, match=r"lying.caffemodel: layer 'c' blob 0: blob declares shape \(3, 2, 3, 3\) \(54 values\) but stores 10"):
        lrpflow.load_model(proto, weights=str(tmp_path / "lying.caffemodel"))
    # missing weights
    _, none = _net_with(tmp_path, conv, {}, name="none")
    with pytest.raises(ModelFormatError, match=r"layer 'c' \(Convolution\): no weights for this layer in .*none.caffemodel"):
        lrpflow.load_model(proto, weights=none)
    # an unknown layer type, with its name
    p2, w2 = _net_with(tmp_path, 'layer { name: "w" type: "Swish" bottom: "data" top: "w" }\n', name="sw")
    with pytest.raises(UnsupportedLayerError, match=r"layer 'w' \(Swish\): unsupported layer type 'Swish'"):
        lrpflow.load_model(p2, weights=w2)
    # syntax errors name the line
    (tmp_path / "syntax.prototxt").write_text('name: "x"\nlayer {\n  name: "c"\n  typo: 3\n}\n')
    with pytest.raises(ModelFormatError, match=r"syntax.prototxt:4"):
        lrpflow.load_model(str(tmp_path / "syntax.prototxt"))
    (tmp_path / "v1.prototxt").write_text('name: "old"\n\nlayers {\n  name: "c"\n  type: CONVOLUTION\n}\n')
    with pytest.raises(ModelFormatError, match=r"v1.prototxt:3: old V1 'layers"):
        lrpflow.load_model(str(tmp_path / "v1.prototxt"))
    # refused features
    dil = conv.replace("kernel_size: 3", "kernel_size: 3 dilation: 2")
    p3, w3 = _net_with(tmp_path, dil, good, name="dil")
    with pytest.raises(UnsupportedLayerError, match="dilation"):
        lrpflow.load_model(p3, weights=w3)
    bn = 'layer { name: "b" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { use_global_stats: false } }\n'
    p4, w4 = _net_with(tmp_path, bn, {"b": [numpy.zeros(2), numpy.ones(2), numpy.ones(1)]}, name="bn")
    with pytest.raises(UnsupportedLayerError, match="use_global_stats"):
        lrpflow.load_model(p4, weights=w4)
    prod = 'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" eltwise_param { operation: PROD } }\n'
    p5, w5 = _net_with(tmp_path, prod, name="prod")
    with pytest.raises(UnsupportedLayerError, match="only Eltwise SUM"):
        lrpflow.load_model(p5, weights=w5)
    # size limits are checked before reading
    monkeypatch.setattr(protofiles, "MAX_TEXT_BYTES", 50)
    with pytest.raises(ModelFormatError, match="exceeds the limit of 50 bytes"):
        lrpflow.load_model(proto, weights=weights)


def test_weights_by_name_from_v1_binary_layers(tmp_path):
    """Old caffemodels store V1 'layers': their blobs are copied by name too."""
    from lrpflow_caffe import caffe_subset_pb2 as pb

    rng = numpy.random.default_rng(1)
    conv = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }\n'
    w = [rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3,))]
    proto, weights = _net_with(tmp_path, conv, {"c": w})
    old = pb.NetParameter()
    lay = old.layers.add(name="c")
    for a in w:
        blob = lay.blobs.add(num=1 if a.ndim == 1 else a.shape[0], channels=1 if a.ndim == 1 else a.shape[1],
                             height=1 if a.ndim == 1 else a.shape[2], width=a.shape[-1])
        blob.data.extend(a.ravel().tolist())
    (tmp_path / "v1.caffemodel").write_bytes(old.SerializeToString())
    a = lrpflow.load_model(proto, weights=weights)
    b = lrpflow.load_model(proto, weights=str(tmp_path / "v1.caffemodel"))
    x = rng.normal(size=(1, 2, 5, 5))
    numpy.testing.assert_allclose(_logits(a, x)[1], _logits(b, x)[1], rtol=1e-6)
