"""The Keras reader (plugins/lrpflow-keras) against Keras' own outputs.

Fixtures: tests/fixtures/keras/make_keras_fixtures.py (Keras 3, torch backend, float64 weights).
Tolerance: Keras' torch backend runs matmul/conv in float32 even for float64 variables
(``keras.ops.matmul`` of two float64 tensors returns float32), so its logits and gradients carry
float32 rounding (~1e-7 relative); lrpflow computes in float64 here. We compare with 2e-6 of the
largest magnitude, ten times the observed difference and far below any mapping error.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile

import h5py
import numpy
import pytest

import lrpflow
from lrpflow.errors import LrpflowError, ModelFormatError, UnsupportedLayerError
from lrpflow.graph import Model, Node
from lrpflow.layers import BatchNorm, Conv2d, Embedding, Linear

lrpflow_keras = pytest.importorskip("lrpflow_keras")

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "keras")
MODELS = ["dense", "cnn", "resnet", "concat", "misc", "seq1d", "embed", "nested", "depthwise", "gating"]
FORMATS = [".keras", ".h5", "_tf2.h5"]
TOL = 2e-6


def fixture(name: str) -> str:
    return os.path.join(HERE, name)


def close(a, b, tol=TOL):
    a, b = numpy.asarray(a), numpy.asarray(b)
    assert a.shape == b.shape
    scale = max(float(numpy.abs(b).max()), 1e-12)
    err = float(numpy.abs(a - b).max()) / scale
    assert err < tol, f"relative error {err:.3g}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_logits_and_gradient_x_input_equal_keras(name, fmt):
    ref = numpy.load(fixture(name + ".npz"))
    if name in ("depthwise", "gating") and fmt == "_tf2.h5":
        pytest.skip("hard_sigmoid means 0.2·x + 0.5 in a Keras 2 file; this one was computed by Keras 3 "
                    "(test_hard_sigmoid_follows_the_keras_version, test_keras2_depthwise_layout_with_keras2_hard_sigmoid)")
    model = lrpflow.load_model(fixture(name + fmt))
    y, _ = model.forward(ref["x"])
    close(y, ref["logits"])
    if "gxi" in ref:
        out = lrpflow.explain(model, ref["x"], rule="gradient_x_input", dtype="float64")
        close(out.relevance, ref["gxi"])
        assert out.relevance.shape == ref["x"].shape  # Keras' own layout, (N, T, C) for 1-D models
        close(out.logits, ref["logits_pre_softmax"])  # a softmax output layer is dropped


def test_three_formats_give_the_same_model():
    a, b, c = (lrpflow.load_model(fixture("concat" + f)) for f in FORMATS)
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes] == [n.name for n in c.nodes]
    for na, nb, nc in zip(a.nodes, b.nodes, c.nodes):
        for k, v in na.layer.params().items():
            numpy.testing.assert_array_equal(v, nb.layer.params()[k])
            numpy.testing.assert_array_equal(v, nc.layer.params()[k])


def test_batchnorm_folded_by_default_and_kept_on_request():
    ref = numpy.load(fixture("resnet.npz"))
    folded = lrpflow.load_model(fixture("resnet.keras"))
    kept = lrpflow.load_model(fixture("resnet.keras"), fold_batchnorm=False)
    assert not any(isinstance(n.layer, BatchNorm) for n in folded.nodes)
    assert sum(isinstance(n.layer, BatchNorm) for n in kept.nodes) == 4
    assert "fold_batchnorm: b1_bn1 -> b1_conv1+b1_bn1" in folded.canonizers
    for m in (folded, kept):
        close(m.forward(ref["x"])[0], ref["logits"])
    # Conv1D → BN is not foldable through the 1-D reshapes: BN stays an affine layer, still exact
    seq = lrpflow.load_model(fixture("seq1d.keras"))
    assert any(isinstance(n.layer, BatchNorm) for n in seq.nodes)


def test_same_padding_with_stride_2_pads_bottom_right():
    model = lrpflow.load_model(fixture("resnet.keras"), fold_batchnorm=False)
    conv = model.node("b1_conv1").layer
    assert isinstance(conv, Conv2d) and conv.stride == (2, 2)
    assert conv.pads == (0, 1, 0, 1)  # 12 → 6 with k=3, s=2: one extra row/column at the end
    assert model.node("stem").layer.pads == (1, 1, 1, 1)
    assert lrpflow_keras.layers.same_pads(7, 3, 2) == (1, 1) and lrpflow_keras.layers.same_pads(8, 4, 2) == (1, 1)
    assert lrpflow_keras.layers.same_pads(5, 2, 1) == (0, 1)


def test_graph_names_follow_keras_layers():
    model = lrpflow.load_model(fixture("concat.keras"))
    names = [n.name for n in model.nodes]
    assert model.input_name == "x"
    assert "a_conv" in names and "a_conv/relu" in names and "b_conv/tanh" in names
    inner = [n for n in names if n.startswith("head/")]  # nested Sequential, inlined with a prefix
    assert len(inner) == 3 and isinstance(model.node(inner[0]).layer, Linear) and model.node(inner[0]).inputs == ("feat",)
    assert model.node("cat").inputs == ("a_conv/relu", "b_conv/tanh", "c_conv")


def test_dense_on_a_sequence_is_a_one_by_one_convolution():
    model = lrpflow.load_model(fixture("seq1d.keras"))
    layer = model.node("per_step").layer
    assert isinstance(layer, Conv2d) and layer.kernel == (1, 1)


def test_embedding_model_and_native_round_trip(tmp_path):
    ref = numpy.load(fixture("embed.npz"))
    model = lrpflow.load_model(fixture("embed.keras"))
    assert isinstance(model.node("emb").layer, Embedding)
    lrpflow.save_model(model, tmp_path / "m.h5")
    back = lrpflow.load_model(tmp_path / "m.h5")
    close(back.forward(ref["x"])[0], ref["logits"])
    out = lrpflow.explain(model, ref["x"], rule="epsilon", dtype="float64")
    assert out.relevance.shape == ref["x"].shape and numpy.isfinite(out.relevance).all()
    with pytest.raises(LrpflowError, match="token ids must be integers"):
        model.forward(ref["x"] + 0.5)


def test_h5_dispatch_by_content(tmp_path):
    native = Model([Node("fc", Linear(2, 3, rng=0))], input_shape=(2,))
    lrpflow.save_model(native, tmp_path / "native.h5")
    assert [n.name for n in lrpflow.load_model(tmp_path / "native.h5").nodes] == ["fc"]
    assert lrpflow_keras.is_keras_h5(fixture("dense.h5")) and not lrpflow_keras.is_keras_h5(str(tmp_path / "native.h5"))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = numpy.zeros(3)
    with pytest.raises(ModelFormatError, match=r"lrpflow model.*nor is it a Keras model"):
        lrpflow.load_model(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ModelFormatError, match="Keras"):
        lrpflow.load_model(tmp_path / "text.h5")
    assert len(lrpflow.load_model(fixture("dense.h5"), format="keras").nodes) == 5


# --- refusals -----------------------------------------------------------------------------


def keras2_h5(path, layers, input_shape=(8, 8, 3)):
    """A weight-less tf.keras 2 Sequential file with the given layer configs."""
    cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, *input_shape]}},
        *layers]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.14.0"
        f.create_group("model_weights").attrs["layer_names"] = numpy.zeros((0,), "S1")
    return path


def test_depthwise_separable_and_grouped_convolutions_map_to_grouped_conv2d():
    model = lrpflow.load_model(fixture("depthwise.keras"))
    dw = model.node("dw+dw_bn").layer  # the BatchNormalization after the depthwise conv is folded into it
    assert isinstance(dw, Conv2d) and dw.groups == 3 and dw.n == 6 and dw.weight.shape == (3, 3, 1, 6)
    assert "fold_batchnorm: dw_bn -> dw+dw_bn" in model.canonizers
    sep_dw, sep_pw = model.node("sep/depthwise").layer, model.node("sep").layer
    assert sep_dw.groups == 6 and sep_dw.stride == (2, 2) and sep_dw.pads == (0, 1, 0, 1)
    assert sep_pw.kernel == (1, 1) and sep_pw.groups == 1 and model.node("sep").inputs == ("sep/depthwise",)
    assert model.node("grouped").layer.groups == 2 and model.node("grouped").layer.weight.shape == (3, 3, 2, 4)
    assert type(model.node("grouped/silu").layer).__name__ == "SiLU"
    assert type(model.node("pw/hard_silu").layer).__name__ == "HardSwish"
    kept = lrpflow.load_model(fixture("depthwise.keras"), fold_batchnorm=False)
    assert isinstance(kept.node("dw_bn").layer, BatchNorm) and kept.node("dw").layer.groups == 3
    ref = numpy.load(fixture("depthwise.npz"))
    close(kept.forward(ref["x"])[0], ref["logits"])


def test_depthwise_kernel_layout_by_hand():
    """Output channel c·m + j of a depthwise conv is input channel c through kernel[..., c, j]."""
    from lrpflow_keras.layers import Builder, Ctx, _depthwise_layer

    rng = numpy.random.default_rng(0)
    kernel = rng.normal(size=(2, 2, 3, 2))
    b = Builder("t", "in", (4, 4, 3))
    _depthwise_layer(Ctx(b, "DepthwiseConv2D", {"padding": "valid"}, "dw", None, ["in"]), "in", kernel, None, "dw")
    x = rng.normal(size=(1, 4, 4, 3))
    y = b.nodes[0].layer.forward(x)
    want = numpy.zeros((1, 3, 3, 6))
    for c in range(3):
        for j in range(2):
            for p in range(3):
                for q in range(3):
                    want[0, p, q, c * 2 + j] = (x[0, p:p + 2, q:q + 2, c] * kernel[:, :, c, j]).sum()
    numpy.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_gates_upsampling_and_layer_norm():
    from lrpflow.layers import LayerNorm, Multiply, Resize

    model = lrpflow.load_model(fixture("gating.keras"))
    assert model.node("mul").layer.gate == 1 and model.node("mul").inputs[1] == "gate/sigmoid"
    assert model.node("se_mul").layer.gate == 0 and model.node("se_mul").inputs[0] == "excite/hard_sigmoid"
    up, bi = model.node("up").layer, model.node("up_bi").layer
    assert isinstance(up, Resize) and up.mode == "nearest" and bi.mode == "linear" and bi.size == (8, 8)
    # nearest with an integer factor repeats rows and columns (Keras' ops.repeat)
    numpy.testing.assert_array_equal(up._a[0], numpy.repeat(numpy.eye(3), 2, axis=0))
    # bilinear, half-pixel centres, factor 2: output row 1 = 3/4·row 0 + 1/4·row 1 (Keras/TF/torch)
    numpy.testing.assert_allclose(bi._a[0][1, :2], [0.75, 0.25])
    assert model.node("ln").layer.shape == (3,) and model.node("ln_all").layer.shape == (3, 3, 3)
    assert isinstance(model.node("ln").layer, LayerNorm) and model.node("ln").layer.eps == 1e-3
    uniform = lrpflow.load_model(fixture("gating.keras"), product_rule="uniform")
    assert uniform.node("mul").layer.gate is None and isinstance(uniform.node("mul").layer, Multiply)
    with pytest.raises(LrpflowError, match="product_rule"):
        lrpflow.load_model(fixture("gating.keras"), product_rule="half")


def test_gate_gets_no_relevance_and_the_gated_path_all():
    """Gate convention: the sigmoid gate's output gets no relevance from ``mul`` and the gated
    operand all of it (proportional rule on the product); ``product_rule="uniform"``: half each."""
    ref = numpy.load(fixture("gating.npz"))
    for rule, share in (("gate", 0.0), ("uniform", 0.5)):
        model = lrpflow.load_model(fixture("gating.keras"), product_rule=rule)
        out = lrpflow.explain(model, ref["x"], rule="epsilon", dtype="float64", keep=("mul", "gate/sigmoid"))
        r_mul = out.intermediate["mul"].reshape(4, -1).sum(1)
        r_gate = out.intermediate["gate/sigmoid"].reshape(4, -1).sum(1)
        assert numpy.abs(r_mul).min() > 1e-3
        numpy.testing.assert_allclose(r_gate, share * r_mul, rtol=1e-9, atol=1e-12)
        assert numpy.isfinite(out.relevance).all() and out.relevance.shape == ref["x"].shape


def test_keras2_depthwise_layout_with_keras2_hard_sigmoid():
    """The tf.keras 2 file of the depthwise model (weights named ``depthwise_kernel:0`` ...) equals Keras'
    logits once its one hard_sigmoid is given Keras 3's slope (the file says Keras 2.14: 0.2)."""
    ref = numpy.load(fixture("depthwise.npz"))
    model = lrpflow.load_model(fixture("depthwise_tf2.h5"))
    node = model.node("dw2/hard_sigmoid")
    assert node.layer.alpha == 0.2
    node.layer.alpha = 1 / 6
    close(model.forward(ref["x"])[0], ref["logits"])


def test_hard_sigmoid_follows_the_keras_version():
    k3 = lrpflow.load_model(fixture("gating.keras")).node("excite/hard_sigmoid").layer
    k2 = lrpflow.load_model(fixture("gating_tf2.h5")).node("excite/hard_sigmoid").layer  # keras_version 2.14.0
    legacy3 = lrpflow.load_model(fixture("gating.h5")).node("excite/hard_sigmoid").layer  # Keras 3's HDF5 writer
    assert (k3.alpha, k3.beta) == (1 / 6, 0.5) == (legacy3.alpha, legacy3.beta)
    assert (k2.alpha, k2.beta) == (0.2, 0.5)


@pytest.mark.parametrize("act, cls, probe", [
    ("swish", "SiLU", lambda x: x / (1 + numpy.exp(-x))),
    ("silu", "SiLU", lambda x: x / (1 + numpy.exp(-x))),
    ("gelu", "Gelu", None),
    ("hard_swish", "HardSwish", lambda x: x * numpy.clip(x + 3, 0, 6) / 6),
    ("hard_silu", "HardSwish", lambda x: x * numpy.clip(x + 3, 0, 6) / 6),
])
def test_smooth_activations_by_name(tmp_path, act, cls, probe):
    model = lrpflow.load_model(keras2_h5(tmp_path / "m.h5", [{"class_name": "Activation",
                                                              "config": {"name": "act", "activation": act}}]))
    layer = model.node("act").layer
    assert type(layer).__name__ == cls
    x = numpy.linspace(-5, 5, 11)
    if probe is not None:
        numpy.testing.assert_allclose(layer.forward(x), probe(x), rtol=1e-12, atol=1e-12)
    else:  # exact GELU x·Φ(x): Keras' "gelu" is approximate=False
        assert layer.approximate == "none"
        numpy.testing.assert_allclose(layer.forward(numpy.array([1.0])), [0.8413447460685429], rtol=1e-12)


def test_multiply_with_three_inputs_chains_products(tmp_path):
    """Multiply of three (non-gate) inputs chains two products, each split uniformly (no gate)."""
    from lrpflow.layers import Multiply

    cfg = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_input_shape": [None, 4]},
         "inbound_nodes": []},
        {"class_name": "ReLU", "name": "r", "config": {"name": "r"}, "inbound_nodes": [[["x", 0, 0, {}]]]},
        {"class_name": "Multiply", "name": "mul", "config": {"name": "mul"},
         "inbound_nodes": [[["x", 0, 0, {}], ["r", 0, 0, {}], ["x", 0, 0, {}]]]}],
        "input_layers": [["x", 0, 0]], "output_layers": [["mul", 0, 0]]}}
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.14.0"
        f.create_group("model_weights").attrs["layer_names"] = numpy.zeros((0,), "S1")
    model = lrpflow.load_model(path)
    muls = [n for n in model.nodes if isinstance(n.layer, Multiply)]
    assert [n.name for n in muls] == ["mul/1", "mul"] and all(n.layer.gate is None for n in muls)
    x = numpy.array([[1.0, -2.0, 3.0, 0.5]])
    numpy.testing.assert_allclose(model.forward(x)[0], x * numpy.maximum(x, 0) * x)


@pytest.mark.parametrize("layer, match", [
    ({"class_name": "LayerNormalization", "config": {"name": "ln", "axis": 1}}, r"axis=1: only trailing axes"),
    ({"class_name": "LayerNormalization", "config": {"name": "ln", "axis": -1, "rms_scaling": True,
                                                     "scale": False, "center": False}}, "rms_scaling"),
    ({"class_name": "UpSampling2D", "config": {"name": "up", "size": [2, 2], "interpolation": "bicubic"}},
     "interpolation='bicubic'"),
])
def test_unsupported_options_of_wired_layers_are_refused(tmp_path, layer, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        lrpflow.load_model(keras2_h5(tmp_path / "m.h5", [layer]))


@pytest.mark.parametrize("layer, match", [
    ({"class_name": "Lambda", "config": {"name": "lam", "function": "..."}}, "Python code"),
    ({"class_name": "Conv2DTranspose", "config": {"name": "ct"}}, "transposed"),
    ({"class_name": "LSTM", "config": {"name": "rnn"}}, "unsupported Keras layer class 'LSTM'"),
    ({"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": 3, "dilation_rate": 2}}, "dilation_rate"),
    ({"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": 3, "data_format": "channels_first"}},
     "channels_first"),
    ({"class_name": "Activation", "config": {"name": "a", "activation": "mish"}}, "activation 'mish'"),
    ({"class_name": "AveragePooling2D", "config": {"name": "p", "pool_size": [3, 3], "strides": [2, 2],
                                                   "padding": "same"}}, "average pooling"),
])
def test_unsupported_layers_are_refused_clearly(tmp_path, layer, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        lrpflow.load_model(keras2_h5(tmp_path / "m.h5", [layer]))


def test_variable_input_shape_and_missing_weights_are_refused(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="fixed input shape"):
        lrpflow.load_model(keras2_h5(tmp_path / "a.h5", [], input_shape=(None, 3)))
    dense = {"class_name": "Dense", "config": {"name": "fc", "units": 2}}
    with pytest.raises(ModelFormatError, match=r"layer 'fc'.*expected 2 weights"):
        lrpflow.load_model(keras2_h5(tmp_path / "b.h5", [{"class_name": "Flatten", "config": {"name": "f"}}, dense]))


def test_two_inputs_are_refused(tmp_path):
    cfg = json.loads(zipfile.ZipFile(fixture("resnet.keras")).read("config.json"))
    cfg["config"]["input_layers"] = [["image", 0, 0], ["image", 0, 0]]
    path = tmp_path / "two.keras"
    with zipfile.ZipFile(fixture("resnet.keras")) as src, zipfile.ZipFile(path, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, json.dumps(cfg) if n == "config.json" else src.read(n))
    with pytest.raises(UnsupportedLayerError, match="one input"):
        lrpflow.load_model(path)


# --- hostile files ------------------------------------------------------------------------


def rewrite_zip(src, dst, extra=()):
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for n in a.namelist():
            b.writestr(n, a.read(n))
        for name, data in extra:
            b.writestr(name, data)


def test_zip_member_names_and_sizes_are_checked(tmp_path):
    rewrite_zip(fixture("dense.keras"), tmp_path / "a.keras", [("../evil.txt", b"x")])
    with pytest.raises(ModelFormatError, match="unsafe member name '../evil.txt'"):
        lrpflow.load_model(tmp_path / "a.keras")
    rewrite_zip(fixture("dense.keras"), tmp_path / "b.keras", [("/etc/passwd", b"x")])
    with pytest.raises(ModelFormatError, match="unsafe member name"):
        lrpflow.load_model(tmp_path / "b.keras")
    with pytest.warns(UserWarning):
        rewrite_zip(fixture("dense.keras"), tmp_path / "c.keras", [("config.json", b"{}")])
    with pytest.raises(ModelFormatError, match="appears twice"):
        lrpflow.load_model(tmp_path / "c.keras")
    with pytest.raises(ModelFormatError, match="limit 1000"):
        lrpflow.load_model(fixture("dense.keras"), max_bytes=1000)
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", b"{}")
        z.writestr("model.weights.h5", b"\0" * (8 << 20))  # ~1030:1, at deflate's bound
    with pytest.raises(ModelFormatError):
        lrpflow.load_model(tmp_path / "bomb.keras", max_bytes=1 << 20)


def test_hdf5_links_and_external_storage_are_refused(tmp_path):
    for kind in ("external_link", "soft_link", "external_storage"):
        path = tmp_path / f"{kind}.h5"
        shutil.copy(fixture("dense_tf2.h5"), path)
        with h5py.File(path, "a") as f:
            g = f["model_weights"]
            if kind == "external_link":
                g["evil"] = h5py.ExternalLink("/etc/passwd", "/x")
            elif kind == "soft_link":
                g["loop"] = h5py.SoftLink("/model_weights")
            else:
                (tmp_path / "raw.bin").write_bytes(b"\0" * 64)
                g.create_dataset("ext", shape=(8,), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 64)])
        with pytest.raises(ModelFormatError, match="external link|soft link|external files"):
            lrpflow.load_model(path)


def test_truncated_and_garbage_files(tmp_path):
    data = open(fixture("cnn.keras"), "rb").read()
    (tmp_path / "t.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError):
        lrpflow.load_model(tmp_path / "t.keras")
    (tmp_path / "g.keras").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ModelFormatError):
        lrpflow.load_model(tmp_path / "g.keras")
    with zipfile.ZipFile(tmp_path / "j.keras", "w") as z:
        z.writestr("config.json", b"[" * 100000)
        z.writestr("model.weights.h5", b"")
    with pytest.raises(ModelFormatError):
        lrpflow.load_model(tmp_path / "j.keras")


def test_zip_bomb_ratio_is_refused_before_inflating(tmp_path):
    import struct

    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", b"{}")
        z.writestr("model.weights.h5", b"\0" * 1000)
    data = bytearray(path.read_bytes())
    # declare 2 GiB uncompressed for the weights member (central directory and local header)
    for sig, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        pos = 0
        while (pos := data.find(sig, pos)) >= 0:
            name_at = pos + (46 if sig == b"PK\x01\x02" else 30)
            if bytes(data[name_at : name_at + 16]) == b"model.weights.h5":
                data[pos + offset : pos + offset + 4] = struct.pack("<I", 1 << 31)
            pos += 4
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="compression ratio"):
        lrpflow.load_model(path)


def _with_config(tmp_path, src, cfg, name="m.keras"):
    path = tmp_path / name
    with zipfile.ZipFile(fixture(src)) as a, zipfile.ZipFile(path, "w") as b:
        for n in a.namelist():
            b.writestr(n, json.dumps(cfg) if n == "config.json" else a.read(n))
    return path


def test_malformed_configs_raise_model_format_errors(tmp_path):
    base = json.loads(zipfile.ZipFile(fixture("concat.keras")).read("config.json"))
    layers = base["config"]["layers"]
    conv = next(i for i, l in enumerate(layers) if l["class_name"] == "Conv2D")
    cases = [
        lambda c: c.__setitem__("class_name", {"x": 1}),                                   # unhashable class name
        lambda c: c["config"]["layers"][conv]["config"].__setitem__("strides", [0, 0]),    # division by a zero stride
        lambda c: c["config"]["layers"][conv]["inbound_nodes"][0].__setitem__("args", 3),  # args not a list
        lambda c: c["config"]["layers"].__setitem__(2, None),                               # a layer that is no object
        lambda c: c["config"]["layers"][conv]["inbound_nodes"][0]["args"][0].__setitem__("config", 5),
    ]
    for k, mutate in enumerate(cases):
        cfg = json.loads(json.dumps(base))
        mutate(cfg)
        with pytest.raises(LrpflowError):
            lrpflow.load_model(_with_config(tmp_path, "concat.keras", cfg, f"m{k}.keras"))


def test_random_config_mutations_never_escape_as_other_exceptions(tmp_path):
    import random

    base = json.loads(zipfile.ZipFile(fixture("nested.keras")).read("config.json"))

    def paths(o, p=()):
        yield p
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from paths(v, p + (k,))

    every = list(paths(base))[1:]
    weird = [None, "x", -1, 0, 10**9, [], {}, [1], 1.5, True, [None, None]]
    rng = random.Random(0)
    for k in range(40):
        cfg = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            p = rng.choice(every)
            o = cfg
            try:
                for key in p[:-1]:
                    o = o[key]
                o[p[-1]] = json.loads(json.dumps(rng.choice(weird)))
            except (KeyError, IndexError, TypeError):
                pass
        try:
            m = lrpflow.load_model(_with_config(tmp_path, "nested.keras", cfg, f"r{k}.keras"))
            m.forward(numpy.zeros((1, *m.input_shape)))
        except LrpflowError:
            pass


def test_keras3_weights_found_by_the_name_on_their_vars_group(tmp_path):
    # Keras addresses weights by class-name path (conv2d, conv2d_1, ...); where the vars group names
    # its layer, that name wins over the order, so reordered groups still load correctly
    import io

    with zipfile.ZipFile(fixture("resnet.keras")) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "a") as f:
        layers = f["layers"]
        assert layers["conv2d/vars"].attrs["name"] == "stem"
        layers.move("conv2d", "tmp")
        layers.move("conv2d_1", "conv2d")
        layers.move("tmp", "conv2d_1")
    path = tmp_path / "swapped.keras"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, buf.getvalue() if n == "model.weights.h5" else d)
    ref = numpy.load(fixture("resnet.npz"))
    close(lrpflow.load_model(path).forward(ref["x"])[0], ref["logits"])


@pytest.mark.parametrize("name", ["misc", "concat", "seq1d", "nested"])
def test_backends_agree_with_keras(name, backend):
    from lrpflow.backend import to_numpy

    ref = numpy.load(fixture(name + ".npz"))
    model = lrpflow.load_model(fixture(name + ".keras"))
    out = lrpflow.explain(model, ref["x"], rule="gradient_x_input", dtype="float64", backend=backend)
    close(to_numpy(out.relevance), ref["gxi"])
    close(to_numpy(out.logits), ref["logits_pre_softmax"])
    eps = lrpflow.explain(model, ref["x"], composite="lrp.epsilon", dtype="float64", backend=backend)
    assert numpy.isfinite(to_numpy(eps.relevance)).all()


def test_innvestigate_analyzers_give_the_new_layers_the_z_rule():
    """Multiply, UpSampling2D and LayerNormalization get the Z rule in iNNvestigate composites (iNNvestigate
    has none for them); the analyzer's own rule would zero relevance at a LayerNorm (flat: z = LN(1) = 0)."""
    from lrpflow import innvestigate as inn
    from lrpflow.innvestigate import InnvestigateComposite
    from lrpflow.rules.lrp import Z, Flat

    ref = numpy.load(fixture("gating.npz"))
    model = lrpflow.load_model(fixture("gating.keras"))
    rules = InnvestigateComposite(Flat()).assign(model)
    for node in ("up", "up_bi", "ln", "mul", "se_mul", "ln_all"):
        assert isinstance(rules[node], Z), node
    assert isinstance(rules["c_gelu"], Flat) and isinstance(rules["out"], Flat)
    for name in ("lrp.flat", "lrp.w_square"):
        r = inn.create_analyzer(name, model).analyze(ref["x"])
        assert numpy.isfinite(r).all() and (numpy.abs(r).reshape(4, -1).sum(1) > 1e-3).all(), name
