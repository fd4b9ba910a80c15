"""ONNX import (plugin lrpflow-onnx): logits agree with onnxruntime, NCHW in and out, BatchNorm folding, errors."""
from __future__ import annotations

import numpy
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("lrpflow_onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lrpflow  # noqa: E402
from lrpflow.layers import BatchNorm, Conv2d, Linear  # noqa: E402

TOL = 1e-4


class Graph:
    """A tiny builder for ONNX graphs with random float32 initializers."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = numpy.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.k = 0

    def const(self, array, name=None):
        self.k += 1
        name = name or f"c{self.k}"
        self.inits.append(numpy_helper.from_array(numpy.asarray(array), name))
        return name

    def rand(self, *shape, scale=None):
        scale = scale if scale is not None else (1.0 / max(1, numpy.prod(shape[1:]))) ** 0.5
        return self.const(self.rng.normal(0, scale, shape).astype(numpy.float32))

    def op(self, op_type, inputs, name=None, outputs=1, **attrs):
        self.k += 1
        name = name or f"{op_type.lower()}{self.k}"
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x, cin, cout, k, name=None, **attrs):
        return self.op("Conv", [x, self.rand(cout, cin, k, k), self.rand(cout, scale=0.3)], name=name,
                       kernel_shape=[k, k], **attrs)

    def bn(self, x, c, name=None):
        r = self.rng
        params = [self.const(v.astype(numpy.float32)) for v in (
            r.uniform(0.5, 1.5, c), r.normal(0, 0.3, c), r.normal(0, 0.3, c), r.uniform(0.5, 2.0, c))]
        return self.op("BatchNormalization", [x, *params], name=name, epsilon=1e-5)

    def gemm(self, x, m, n, name=None):
        return self.op("Gemm", [x, self.rand(n, m), self.rand(n, scale=0.3)], name=name, transB=1)

    def model(self, x_shape, out, out_shape, batch="N"):
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *x_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, *out_shape])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="lrpflow-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def mlp():
    g = Graph(1)
    h = g.op("Relu", [g.gemm("x", 20, 16, name="fc1")])
    h = g.op("Add", [g.op("MatMul", [h, g.rand(16, 12)], name="mm"), g.rand(12, scale=0.3)], name="mm_bias")
    h = g.op("Tanh", [h])
    h = g.op("LeakyRelu", [g.gemm(h, 12, 8)], alpha=0.1)
    out = g.op("Softmax", [g.gemm(h, 8, 5, name="logits")], name="prob")
    return g.model([20], out, [5]), (20,)


def lenet_bn():
    g = Graph(2)
    h = g.op("Relu", [g.bn(g.conv("x", 1, 6, 5, name="conv1", pads=[2, 2, 2, 2]), 6, name="bn1")])
    h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("Relu", [g.bn(g.conv(h, 6, 16, 5, name="conv2"), 16, name="bn2")])
    h = g.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("Flatten", [h], axis=1)
    h = g.op("Dropout", [g.op("Relu", [g.gemm(h, 16 * 5 * 5, 32, name="fc1")]), g.const(numpy.array(0.3, numpy.float32))])
    out = g.gemm(h, 32, 10, name="fc2")
    return g.model([1, 28, 28], out, [10]), (1, 28, 28)


def resnet():
    g = Graph(3)
    stem = g.op("Relu", [g.conv("x", 3, 8, 3, name="stem", pads=[1, 1, 1, 1])])
    b = g.op("Relu", [g.bn(g.conv(stem, 8, 8, 3, name="b1", pads=[1, 1, 1, 1]), 8, name="b1_bn")])
    b = g.conv(g.op("Pad", [b, g.const(numpy.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=numpy.int64))], mode="constant"),
               8, 8, 3, name="b2")
    h = g.op("Relu", [g.op("Add", [b, stem], name="residual")])
    h = g.op("Identity", [g.op("Sigmoid", [h])])
    h = g.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h = g.op("GlobalAveragePool", [h])
    target = g.op("Constant", [], value=numpy_helper.from_array(numpy.array([-1, 8], dtype=numpy.int64)))
    h = g.op("Reshape", [h, target])
    out = g.gemm(h, 8, 4, name="fc")
    return g.model([3, 16, 16], out, [4]), (3, 16, 16)


def concat_net():
    g = Graph(4)
    a = g.op("Relu", [g.conv("x", 2, 4, 3, name="a", pads=[1, 1, 1, 1])])
    b = g.op("Tanh", [g.conv("x", 2, 3, 1, name="b")])
    h = g.op("Concat", [a, b], name="cat", axis=1)
    h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    f1 = g.op("Flatten", [h], axis=1)
    f2 = g.op("Flatten", [g.op("AveragePool", [b], kernel_shape=[2, 2], strides=[2, 2])], axis=1)
    h = g.op("Concat", [f1, f2], name="cat_flat", axis=1)
    out = g.gemm(g.op("Relu", [g.gemm(h, 7 * 6 * 6 + 3 * 6 * 6, 16)]), 16, 3, name="fc")
    return g.model([2, 12, 12], out, [3]), (2, 12, 12)


MODELS = {"mlp": mlp, "lenet_bn": lenet_bn, "resnet": resnet, "concat": concat_net}


def _save(proto, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fold", [False, True])
def test_logits_agree_with_onnxruntime(tmp_path, name, fold):
    proto, shape = MODELS[name]()
    path = _save(proto, tmp_path)
    model = lrpflow.load_model(path, fold_batchnorm=fold)
    assert model.layout == "NCHW"
    x = numpy.random.default_rng(5).normal(size=(4, *shape)).astype(numpy.float32)
    want = _ort(path, x)
    got, _ = model.run(model.to_nhwc(x))
    assert got.shape == want.shape
    numpy.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
    if fold:
        assert not any(isinstance(layer, BatchNorm) for layer in model.layers) or name == "mlp"


def test_explain_takes_and_returns_nchw(tmp_path):
    proto, shape = lenet_bn()
    model = lrpflow.load_model(_save(proto, tmp_path))
    x = numpy.random.default_rng(6).normal(size=(3, *shape)).astype(numpy.float32)
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=1e-3)
    assert out.relevance.shape == x.shape
    numpy.testing.assert_allclose(out.logits, _ort(tmp_path / "m.onnx", x), atol=TOL, rtol=TOL)
    # the same model declared NHWC, fed the transposed input, gives the transposed relevance
    model.layout = "NHWC"
    ref = lrpflow.explain(model, x.transpose(0, 2, 3, 1), rule="epsilon", epsilon=1e-3)
    numpy.testing.assert_allclose(out.relevance, ref.relevance.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-7)


def test_cnn_flatten_is_absorbed_into_the_dense_weights(tmp_path):
    """Flatten after a convolution needs no permutation layer: the next Gemm's rows are permuted."""
    proto, _ = lenet_bn()
    model = lrpflow.load_model(_save(proto, tmp_path), fold_batchnorm=False)
    assert {type(layer).__module__.split(".")[0] for layer in model.layers} == {"lrpflow"}
    assert [type(layer).__name__ for layer in model.layers][:3] == ["Conv2d", "BatchNorm", "ReLU"]


def test_mlp_matches_an_equivalent_lrpflow_network(tmp_path):
    """Gemm(transB) → Linear(W.T); MatMul + Add → one Linear with that bias; relevance identical."""
    proto, _ = mlp()
    model = lrpflow.load_model(_save(proto, tmp_path))
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    assert len(linears) == 4 and not any(isinstance(layer, BatchNorm) for layer in model.layers)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    mm = next(n for n in proto.graph.node if n.name == "mm")
    add = next(n for n in proto.graph.node if n.name == "mm_bias")
    numpy.testing.assert_array_equal(linears[1].weight, inits[mm.input[1]])
    numpy.testing.assert_array_equal(linears[1].bias, inits[add.input[1]])
    assert model.logits_node == "logits"  # the SoftMax output is dropped for explaining
    x = numpy.random.default_rng(0).normal(size=(2, 20))
    seq = lrpflow.Sequential([m.layer for m in model.nodes[:-1]])
    a = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, dtype="float64")
    b = lrpflow.explain(seq, x, rule="epsilon", epsilon=0.01, dtype="float64")
    numpy.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-12)


def test_fold_batchnorm_shows_in_the_ledger(tmp_path):
    proto, shape = lenet_bn()
    model = lrpflow.load_model(_save(proto, tmp_path), fold_batchnorm=True)
    assert model.canonizers == ["fold_batchnorm: bn1 -> conv1+bn1", "fold_batchnorm: bn2 -> conv2+bn2"]
    x = numpy.random.default_rng(7).normal(size=(2, *shape)).astype(numpy.float32)
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=1e-3)
    assert "conv1+bn1" in out.ledger and "bn1" not in out.ledger and "conv1" not in out.ledger
    plain = lrpflow.load_model(tmp_path / "m.onnx", fold_batchnorm=False)
    assert "bn1" in lrpflow.explain(plain, x, rule="epsilon", epsilon=1e-3).ledger


def test_fold_batchnorm_function_on_lrpflow_models():
    from lrpflow.io import fold_batchnorm

    rng = numpy.random.default_rng(3)
    bn = BatchNorm(4, gamma=rng.uniform(0.5, 2, 4), beta=rng.normal(size=4), mean=rng.normal(size=4),
                   var=rng.uniform(0.5, 2, 4), eps=1e-3)
    net = lrpflow.Sequential([Conv2d(3, 3, 2, 4, rng=rng), bn, lrpflow.layers.ReLU(), lrpflow.layers.Flatten(),
                              Linear(4 * 4 * 4, 3, rng=rng)])
    folded = fold_batchnorm(net)
    assert [type(m).__name__ for m in folded.modules] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert folded.canonizers == ["fold_batchnorm: 1_batchnorm -> 0_conv2d"]
    x = rng.normal(size=(2, 6, 6, 2))
    numpy.testing.assert_allclose(folded.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)
    assert len(net.modules) == 5  # the input model is untouched


def test_native_round_trip_of_an_onnx_model(tmp_path):
    proto, shape = concat_net()
    model = lrpflow.load_model(_save(proto, tmp_path))
    lrpflow.save_model(model, tmp_path / "m.h5")
    back = lrpflow.load_model(tmp_path / "m.h5")
    assert back.layout == "NCHW"
    x = numpy.random.default_rng(8).normal(size=(2, *shape)).astype(numpy.float32)
    a = lrpflow.explain(model, x, rule="epsilon", epsilon=1e-3)
    b = lrpflow.explain(back, x, rule="epsilon", epsilon=1e-3)
    numpy.testing.assert_array_equal(a.logits, b.logits)
    numpy.testing.assert_array_equal(a.relevance, b.relevance)


def test_layout_layers_are_exact_and_explainable(tmp_path):
    """A reshape of a vector into an image and a softmax over a permuted vector need Transpose/Permute layers."""
    g = Graph(9)
    h = g.op("Reshape", [g.gemm("x", 12, 2 * 3 * 3), g.const(numpy.array([0, 2, 3, 3], dtype=numpy.int64))])
    h = g.op("Relu", [g.conv(h, 2, 2, 2, name="conv")])
    h = g.op("Flatten", [h])
    h = g.op("Add", [h, g.op("Relu", [h])], name="mix")  # both flat with the same permutation: no layer needed
    out = g.op("Softmax", [h], name="prob")  # the output must be in ONNX order: a Permute layer
    proto = g.model([12], out, [8])
    path = _save(proto, tmp_path)
    model = lrpflow.load_model(path)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "Transpose" in kinds and "Permute" in kinds
    x = numpy.random.default_rng(1).normal(size=(3, 12)).astype(numpy.float32)
    numpy.testing.assert_allclose(model.run(x)[0], _ort(path, x), atol=TOL, rtol=TOL)
    out = lrpflow.explain(model, x, rule="z", dtype="float64")
    assert out.relevance.shape == x.shape


def test_nhwc_graph_with_input_transpose(tmp_path):
    """TensorFlow-style graphs take NHWC and transpose to NCHW: the model keeps NHWC, no layout layers."""
    g = Graph(10)
    h = g.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    h = g.op("Relu", [g.conv(h, 3, 4, 3, name="conv", pads=[1, 1, 1, 1])])
    h = g.op("Transpose", [h], perm=[0, 2, 3, 1])  # back to NHWC ...
    h = g.op("Transpose", [h], perm=[0, 3, 1, 2])  # ... and to NCHW again
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    path = _save(g.model([6, 7, 3], g.gemm(h, 4, 2, name="fc"), [2]), tmp_path)
    model = lrpflow.load_model(path)
    assert model.layout == "NHWC" and model.input_shape == (6, 7, 3)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2d", "ReLU", "GlobalAvgPool", "Linear"]
    x = numpy.random.default_rng(3).normal(size=(2, 6, 7, 3)).astype(numpy.float32)
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=1e-3)
    numpy.testing.assert_allclose(out.logits, _ort(path, x), atol=TOL, rtol=TOL)
    assert out.relevance.shape == x.shape


def test_unsupported_operators_are_all_listed(tmp_path):
    g = Graph(0)
    h = g.op("Softsign", [g.gemm("x", 4, 4)], name="my_softsign")
    h = g.op("Relu", [h])
    h = g.op("Elu", [h], name="my_elu")
    out = g.gemm(h, 4, 2)
    path = _save(g.model([4], out, [2]), tmp_path)
    with pytest.raises(lrpflow.UnsupportedLayerError) as info:
        lrpflow.load_model(path)
    msg = str(info.value)
    assert "Softsign (node 'my_softsign')" in msg and "Elu (node 'my_elu')" in msg and str(path) in msg
    assert isinstance(info.value, lrpflow.LrpflowError)


@pytest.mark.parametrize("attrs,match", [
    ({"dilations": [2, 2]}, "dilations"),
])
def test_unsupported_attributes_name_the_node(tmp_path, attrs, match):
    g = Graph(0)
    cin = 2
    w = g.rand(4, cin // attrs.get("group", 1), 3, 3)
    h = g.op("Conv", ["x", w], name="odd_conv", kernel_shape=[3, 3], **attrs)
    out = g.op("GlobalAveragePool", [h])
    path = _save(g.model([cin, 8, 8], out, [4, 1, 1]), tmp_path)
    with pytest.raises(lrpflow.UnsupportedLayerError, match=f"odd_conv.*{match}"):
        lrpflow.load_model(path)


def test_padded_average_pool_without_count_include_pad_is_refused(tmp_path):
    g = Graph(0)
    out = g.op("AveragePool", ["x"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    path = _save(g.model([1, 6, 6], out, [1, 6, 6]), tmp_path)
    with pytest.raises(lrpflow.UnsupportedLayerError, match="count_include_pad"):
        lrpflow.load_model(path)
    g = Graph(0)
    out = g.op("AveragePool", ["x"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    path = _save(g.model([1, 6, 6], out, [1, 6, 6]), tmp_path, "ok.onnx")
    model = lrpflow.load_model(path)
    x = numpy.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(numpy.float32)
    numpy.testing.assert_allclose(model.run(model.to_nhwc(x))[0], _ort(path, x), atol=TOL)  # output in ONNX layout


def test_not_onnx_files(tmp_path):
    for name, data in [("garbage.onnx", b"\x08\x07this is not a protobuf \xff\xfe"), ("empty.onnx", b""),
                       ("text.onnx", b"Linear 2 2\n1 2 3 4\n0 0\n")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(lrpflow.ModelFormatError, match=name):
            lrpflow.load_model(p)


def test_pytorch_export(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(6, 12, 3), nn.ReLU(), nn.AvgPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(12 * 3 * 3, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 10))

        def forward(self, x):
            x = self.features(x)
            return self.classifier(x.view(x.size(0), -1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        bn = net.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    net.eval()
    path = tmp_path / "torch.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 16, 16),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=False)  # keeps BatchNormalization (and x.view's Shape arithmetic)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = numpy.random.default_rng(2).normal(size=(5, 1, 16, 16)).astype(numpy.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(_ort(path, x), want, atol=TOL)
    for fold in (False, True):
        model = lrpflow.load_model(path, fold_batchnorm=fold)
        out = lrpflow.explain(model, x, rule="epsilon", epsilon=1e-3)
        numpy.testing.assert_allclose(out.logits, want, atol=TOL, rtol=TOL)
        assert out.relevance.shape == x.shape
        assert any(isinstance(layer, BatchNorm) for layer in model.layers) != fold
