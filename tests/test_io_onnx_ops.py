"""ONNX operators of modern vision models: forward vs onnxruntime, exact gradients, their LRP conventions.

Grouped/depthwise Conv, ReduceMean/ReduceMax/GlobalMaxPool, HardSigmoid/HardSwish/Clip/Erf/Gelu,
products of two activations (gates), LayerNormalization and token-wise MatMul, Split/Slice/Gather/
Squeeze/Unsqueeze and channel shuffle on activations, shape arithmetic folded by ONNX's reference
evaluator (with size limits).
"""
from __future__ import annotations

import math

import numpy
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("lrpflow_onnx")

from onnx import TensorProto, helper  # noqa: E402
from test_io_onnx import Graph, _ort, _save  # noqa: E402

import lrpflow  # noqa: E402
from lrpflow.graph import Model, Node  # noqa: E402
from lrpflow.layers import Flatten, LayerNorm, Max, Mean, Multiply, Sigmoid, Slice  # noqa: E402


class OpsetGraph(Graph):
    def model(self, x_shape, out, out_shape, batch=2, opset=18):
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *x_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, *out_shape])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="lrpflow-tests")
        m.ir_version = 9
        onnx.checker.check_model(m)
        return m

    def ints(self, *v):
        return self.const(numpy.array(v, dtype=numpy.int64))

    def f32(self, v):
        return self.const(numpy.asarray(v, dtype=numpy.float32))


def grouped_conv():
    g = OpsetGraph(1)
    h = g.op("Conv", ["x", g.rand(6, 2, 3, 3), g.rand(6, scale=0.3)], group=2, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.op("Relu", [h])
    h = g.op("Conv", [h, g.rand(6, 1, 3, 3)], group=6, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1])
    h = g.op("ReduceMean", [h, g.ints(2, 3)], keepdims=0)
    return g.model([4, 8, 8], g.gemm(h, 6, 3), [3]), (4, 8, 8)


def se_gate():
    g = OpsetGraph(2)
    x1 = g.op("HardSwish", [g.conv("x", 3, 8, 3, pads=[1, 1, 1, 1])])
    s = g.op("ReduceMean", [x1, g.ints(2, 3)], keepdims=1)
    s = g.op("Relu", [g.conv(s, 8, 4, 1)])
    gate = g.op("HardSigmoid", [g.conv(s, 4, 8, 1)], alpha=1 / 6, beta=0.5)
    h = g.op("Mul", [x1, gate])
    h = g.op("ReduceMean", [h, g.ints(-1, -2)], keepdims=0)
    return g.model([3, 6, 6], g.gemm(h, 8, 3), [3]), (3, 6, 6)


def silu_gelu_clip():
    g = OpsetGraph(3)
    c = g.conv("x", 3, 6, 3)
    h = g.op("Mul", [c, g.op("Sigmoid", [c])])  # SiLU
    e = g.op("Erf", [g.op("Div", [h, g.f32(math.sqrt(2))])])  # GELU as the legacy exporter writes it
    h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [e, g.f32(1.0)])]), g.f32(0.5)])
    h = g.op("Clip", [h, g.f32(0.0), g.f32(6.0)])  # ReLU6
    h = g.op("GlobalMaxPool", [h])
    h = g.op("Flatten", [h])
    return g.model([3, 7, 7], g.gemm(h, 6, 4), [4]), (3, 7, 7)


def convnext_block():
    g = OpsetGraph(4)
    c = g.op("Conv", ["x", g.rand(4, 1, 3, 3), g.rand(4, scale=0.3)], group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    t = g.op("Transpose", [c], perm=[0, 2, 3, 1])
    t = g.op("LayerNormalization", [t, g.f32(g.rng.uniform(0.5, 1.5, 4)), g.f32(g.rng.normal(0, 0.3, 4))],
             axis=-1, epsilon=1e-6)
    t = g.op("Add", [g.op("MatMul", [t, g.rand(4, 8)]), g.f32(g.rng.normal(0, 0.3, 8))])
    t = g.op("Gelu", [t])
    t = g.op("MatMul", [t, g.rand(8, 4)])
    t = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    t = g.op("Mul", [g.f32(g.rng.uniform(0.2, 1.0, (4, 1, 1))), t])  # layer scale
    h = g.op("Add", [t, c])
    h = g.op("ReduceMean", [h, g.ints(2, 3)], keepdims=1)
    h = g.op("Transpose", [h], perm=[0, 2, 3, 1])
    h = g.op("LayerNormalization", [h, g.f32(g.rng.uniform(0.5, 1.5, 4))], axis=-1)
    h = g.op("Reshape", [h, g.ints(0, -1)])
    return g.model([4, 5, 5], g.gemm(h, 4, 3), [3], opset=20), (4, 5, 5)


def channel_shuffle():
    g = OpsetGraph(5)
    c = g.conv("x", 3, 8, 3, pads=[1, 1, 1, 1])
    a, b = g.op("Split", [c, g.ints(4, 4)], outputs=2, axis=1)
    b = g.op("Relu", [g.conv(b, 4, 4, 1)])
    h = g.op("Concat", [a, b], axis=1)
    h = g.op("Reshape", [h, g.ints(2, 2, 4, 6, 6)])
    h = g.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = g.op("Reshape", [h, g.ints(2, 8, 6, 6)])
    h = g.op("Slice", [h, g.ints(1, 0), g.ints(7, 5), g.ints(1, 2), g.ints(1, 1)])  # channels 1..6, rows 0..4
    h = g.op("Unsqueeze", [h, g.ints(2)])
    h = g.op("Squeeze", [h, g.ints(2)])
    h = g.op("ReduceMax", [h, g.ints(3)], keepdims=0)  # (N, 6, 5)
    h = g.op("Gather", [h, g.const(numpy.array(2, dtype=numpy.int64))], axis=2)  # (N, 6)
    return g.model([3, 6, 6], g.gemm(h, 6, 3), [3]), (3, 6, 6)


def shape_arithmetic():
    """The legacy exporter's ZeroPad2d/F.pad: pads computed from Shape(start/end), ConstantOfShape, Range, Where..."""
    g = OpsetGraph(6)

    def scalar(v):
        return g.const(numpy.array(v, dtype=numpy.int64))

    c = g.conv("x", 2, 3, 3)
    hw = g.op("Shape", [c], start=2, end=4)  # (H, W) = (4, 4)
    zeros = g.op("ConstantOfShape", [g.ints(4)], value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    idx = g.op("Range", [scalar(0), scalar(8), scalar(1)])
    odd = g.op("Equal", [g.op("Mod", [idx, scalar(2)]), scalar(1)])
    one = g.op("Div", [hw, hw])  # [1, 1]
    pads8 = g.op("Where", [odd, g.op("Expand", [g.op("ReduceMax", [one], keepdims=1), g.ints(8)]),
                           g.op("Concat", [zeros, zeros], axis=0)])  # [0,1,0,1,0,1,0,1]
    keep = g.op("Cast", [g.op("Not", [g.op("Equal", [g.op("Mod", [idx, scalar(4)]), scalar(1)])])],
                to=TensorProto.INT64)  # no padding of the channels
    size = g.op("Size", [g.op("Shape", ["x"])])  # 4: a constant too
    pads8 = g.op("Mul", [g.op("Mul", [pads8, keep]), g.op("Div", [size, size])])  # [0,0,0,1,0,0,0,1]
    h = g.op("Pad", [c, pads8])
    h = g.op("Flatten", [g.op("Relu", [h])])
    return g.model([2, 6, 6], g.gemm(h, 3 * 4 * 6, 2), [2]), (2, 6, 6)


def conv_transpose():
    g = OpsetGraph(10)
    h = g.op("Relu", [g.conv("x", 2, 4, 3)])
    h = g.op("ConvTranspose", [h, g.rand(4, 3, 3, 3), g.rand(3 * 1, scale=0.3)], kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 0, 1, 1], output_padding=[1, 0])
    h = g.op("ConvTranspose", [h, g.rand(3, 1, 2, 2)], group=3, strides=[1, 2])
    h = g.op("ReduceMean", [h, g.ints(2, 3)], keepdims=0)
    return g.model([2, 5, 6], g.gemm(h, 3, 2), [2]), (2, 5, 6)


def resize():
    g = OpsetGraph(11)
    h = g.op("Relu", [g.conv("x", 2, 3, 3)])  # (3, 4, 5)
    empty = g.const(numpy.zeros(0, dtype=numpy.float32))
    a = g.op("Resize", [h, empty, g.f32([1, 1, 2, 2])], mode="nearest", coordinate_transformation_mode="asymmetric",
             nearest_mode="floor")  # F.interpolate(scale_factor=2)
    b = g.op("Resize", [h, empty, empty, g.ints(2, 3, 8, 10)], mode="linear",
             coordinate_transformation_mode="half_pixel")  # bilinear, align_corners=False
    c = g.op("Resize", [h, empty, empty, g.ints(2, 3, 7, 9)], mode="linear",
             coordinate_transformation_mode="align_corners")
    c = g.op("Resize", [c, empty, empty, g.ints(2, 3, 8, 10)], mode="nearest")
    h = g.op("Add", [g.op("Add", [a, b]), c])
    h = g.op("ReduceMean", [h, g.ints(2, 3)], keepdims=0)
    return g.model([2, 6, 7], g.gemm(h, 3, 2), [2]), (2, 6, 7)


def pads_and_softmax():
    g = OpsetGraph(12)
    h = g.conv("x", 2, 3, 3)  # (3, 4, 5)
    a = g.op("Pad", [h, g.ints(0, 0, 2, 1, 0, 0, 1, 3)], mode="reflect")
    b = g.op("Pad", [h, g.ints(0, 0, 2, 1, 0, 0, 1, 3)], mode="edge")
    c = g.op("Pad", [h, g.ints(0, 0, 2, 1, 0, 0, 1, 3), g.f32(0.5)], mode="constant")
    h = g.op("Add", [g.op("Add", [a, b]), g.op("Softmax", [c], axis=1)])
    h = g.op("Softmax", [h], axis=-1)
    h = g.op("ReduceMax", [h, g.ints(2, 3)], keepdims=0)
    return g.model([2, 6, 7], g.gemm(h, 3, 2), [2]), (2, 6, 7)


def tokens():
    """Rank-3 activations: patches flattened to tokens (N, T, D), token-wise LayerNorm/MatMul, pooling over tokens."""
    g = OpsetGraph(13)
    h = g.conv("x", 3, 4, 2, strides=[2, 2])  # (4, 3, 3)
    t = g.op("Transpose", [g.op("Reshape", [h, g.ints(2, 4, 9)])], perm=[0, 2, 1])  # (9, 4)
    t = g.op("LayerNormalization", [t, g.f32(g.rng.uniform(0.5, 1.5, 4)), g.f32(g.rng.normal(0, 0.3, 4))], axis=-1)
    t = g.op("Gelu", [g.op("Add", [g.op("MatMul", [t, g.rand(4, 6)]), g.f32(g.rng.normal(0, 0.3, 6))])],
             approximate="tanh")
    t = g.op("Mul", [t, g.op("Sigmoid", [g.op("MatMul", [t, g.rand(6, 6)])])])  # a gated MLP
    t = g.op("Softmax", [g.op("Mul", [t, g.f32(0.5)])], axis=-1)
    t = g.op("ReduceMean", [t, g.ints(1)], keepdims=0)  # mean over tokens
    return g.model([3, 6, 6], g.gemm(t, 6, 3), [3], opset=20), (3, 6, 6)


def sequence_input():
    g = OpsetGraph(14)
    t = g.op("LayerNormalization", ["x", g.f32(g.rng.uniform(0.5, 1.5, 5))], axis=-1)
    t = g.op("Relu", [g.op("MatMul", [t, g.rand(5, 4)])])
    t = g.op("ReduceMax", [t, g.ints(1)], keepdims=0)
    return g.model([7, 5], g.gemm(t, 4, 2), [2], opset=18), (7, 5)


def decomposed_layer_norm():
    """LayerNorm as the TorchScript exporter writes it below opset 17 (fused into one LayerNorm on import)."""
    g = OpsetGraph(15)
    c = g.conv("x", 2, 4, 3)
    t = g.op("Transpose", [c], perm=[0, 2, 3, 1])  # (4, 4, 4) tokens
    mean = g.op("ReduceMean", [t], axes=[-1], keepdims=1)
    d = g.op("Sub", [t, mean])
    two = g.op("Constant", [], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
    var = g.op("ReduceMean", [g.op("Pow", [d, two])], axes=[-1], keepdims=1)
    eps = g.op("Constant", [], value=helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]))
    h = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, eps])])])
    h = g.op("Add", [g.op("Mul", [h, g.f32(g.rng.uniform(0.5, 1.5, 4))]), g.f32(g.rng.normal(0, 0.3, 4))])
    h = g.op("ReduceMean", [g.op("Relu", [h])], axes=[1, 2], keepdims=0)
    return g.model([2, 6, 6], g.gemm(h, 4, 3), [3], opset=13), (2, 6, 6)


MODELS = {f.__name__: f for f in (decomposed_layer_norm, tokens, sequence_input, pads_and_softmax, resize, conv_transpose, grouped_conv, se_gate, silu_gelu_clip, convnext_block, channel_shuffle,
                                  shape_arithmetic)}


def _numeric_gxi(model, x, target, h=1e-6):
    """Gradient×input by central differences of the target logits, one input element at a time."""
    def f(z):
        return model.run(model.to_nhwc(z))[0][numpy.arange(len(z)), target].sum()

    g = numpy.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f(x)
        flat[i] = old - h
        down = f(x)
        flat[i] = old
        gf[i] = (up - down) / (2 * h)
    return g * x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_operators_match_onnxruntime_and_their_gradients_are_exact(tmp_path, name):
    proto, shape = MODELS[name]()
    path = _save(proto, tmp_path)
    x = numpy.random.default_rng(7).normal(size=(2, *shape)).astype(numpy.float32)
    model = lrpflow.load_model(path)
    want = _ort(path, x)
    out = lrpflow.explain(model, x.astype(numpy.float64), rule="gradient_x_input", dtype="float64")
    numpy.testing.assert_allclose(out.logits, want, rtol=1e-4, atol=1e-5)
    numeric = _numeric_gxi(model, x.astype(numpy.float64), out.target)
    numpy.testing.assert_allclose(out.relevance, numeric, atol=1e-6 * numpy.abs(numeric).max())


def test_products_of_activations_hold_the_gate_or_split_uniformly():
    """y = a ⊙ σ(b) for two halves a, b of the input: the gate rule gives a all of R and b none; the
    uniform rule gives each operand R/2 (b's half then passes the sigmoid unchanged)."""
    for gate, share_a in ((1, 1.0), (None, 0.5)):
        nodes = [Node("a", Slice({0: (0, 3, 1)})), Node("b", Slice({0: (3, 6, 1)})), Node("s", Sigmoid(), ("b",)),
                 Node("y", Multiply(gate=gate), ("a", "s"))]
        model = Model(nodes, input_shape=(6,))
        x = numpy.random.default_rng(0).normal(size=(4, 6))
        r = numpy.random.default_rng(1).normal(size=(4, 3))
        out = lrpflow.explain(model, x, rule="epsilon", epsilon=1e-12, target=r, dtype="float64")
        numpy.testing.assert_allclose(out.relevance[:, :3], share_a * r, rtol=1e-9)
        numpy.testing.assert_allclose(out.relevance[:, 3:], (1 - share_a) * r, rtol=1e-9, atol=1e-15)


def test_decomposed_layer_norm_becomes_one_layer(tmp_path):
    model = lrpflow.load_model(_save(decomposed_layer_norm()[0], tmp_path))
    assert [type(layer).__name__ for layer in model.layers].count("LayerNorm") == 1
    assert not any(isinstance(layer, (Mean, Multiply)) for layer in model.layers[:-2])


def test_product_rule_uniform_is_offered_by_the_reader(tmp_path):
    proto, shape = se_gate()
    path = _save(proto, tmp_path)
    gates = [layer.gate for layer in lrpflow.load_model(path).layers if isinstance(layer, Multiply)]
    uniform = [layer.gate for layer in lrpflow.load_model(path, product_rule="uniform").layers
               if isinstance(layer, Multiply)]
    assert gates == [1] and uniform == [None]


def test_layer_norm_relevance_is_proportional_through_the_centred_map():
    rng = numpy.random.default_rng(1)
    gamma = rng.uniform(0.5, 1.5, 5)
    model = Model([Node("ln", LayerNorm((5,), gamma=gamma, beta=numpy.zeros(5))), Node("f", Flatten(), ("ln",))],
                  input_shape=(3, 5))
    x = rng.normal(size=(2, 3, 5))
    r_out = rng.normal(size=(2, 15))
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.0, target=r_out, dtype="float64")
    mu, sigma = x.mean(-1, keepdims=True), numpy.sqrt(x.var(-1, keepdims=True) + 1e-5)
    z = (x - mu) / sigma * gamma
    u = r_out.reshape(2, 3, 5) / z * gamma / sigma  # R/z · γ/σ
    want = x * (u - u.mean(-1, keepdims=True))  # AttnLRP: σ constant, R_x = x ⊙ (u − mean u)
    numpy.testing.assert_allclose(out.relevance, want, rtol=1e-9, atol=1e-12)
    numpy.testing.assert_allclose(out.relevance.sum((1, 2)), r_out.reshape(2, 3, 5).sum((1, 2)), rtol=1e-9)


def test_mean_is_proportional_and_max_winner_take_all():
    x = numpy.abs(numpy.random.default_rng(2).normal(size=(2, 3, 4))) + 0.1
    for layer, want in ((Mean((1,)), lambda r: x * (r / x.sum(2))[..., None]),
                        (Max((1,), keepdims=False), lambda r: (x == x.max(2, keepdims=True)) * r[..., None])):
        model = Model([Node("m", layer)], input_shape=(3, 4))
        r = numpy.random.default_rng(3).normal(size=(2, 3))
        out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.0, target=r, dtype="float64")
        numpy.testing.assert_allclose(out.relevance, want(r), rtol=1e-12)


def test_constant_folding_refuses_huge_constants(tmp_path):
    g = OpsetGraph(8)
    big = g.op("ConstantOfShape", [g.ints(1 << 20, 1 << 20)], name="huge")
    h = g.op("Add", [g.gemm("x", 4, 4), g.op("ReduceSum", [big], keepdims=0)])
    path = _save(g.model([4], h, [4]), tmp_path)
    with pytest.raises(lrpflow.ModelFormatError, match="huge.*elements"):
        lrpflow.load_model(path)


def test_operators_on_activations_without_handler_are_listed_with_their_nodes(tmp_path):
    g = OpsetGraph(9)
    h = g.op("Softsign", [g.gemm("x", 4, 4)], name="soft")
    h = g.op("Div", [h, g.op("Abs", [h], name="absolute")], name="ratio")
    path = _save(g.model([4], h, [4]), tmp_path)
    with pytest.raises(lrpflow.UnsupportedLayerError, match=r"Softsign \(node 'soft'\).*Abs \(node 'absolute'\)"):
        lrpflow.load_model(path)
