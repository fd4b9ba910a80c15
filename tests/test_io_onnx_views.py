"""ONNX graphs whose layout moves or merges the batch axis (lrpflow_onnx.views): sequence-first attention with the
batch merged into the heads (torch's nn.MultiheadAttention), window partitions that merge the batch with the window
count (Swin). Built with onnx.helper in float64 and checked against onnxruntime, finite differences and the same
model written batch-first; operations across the batch are refused naming the node."""
from __future__ import annotations

import numpy as np
import pytest

import lrpflow
from lrpflow.errors import LrpflowError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lrpflow_onnx.convert import convert  # noqa: E402

rng = np.random.default_rng(7)
B, T, D, H = 2, 3, 4, 2
HD = D // H
W_QK = rng.normal(size=(D, D))
W_OUT = rng.normal(size=(D, D))
HEAD = rng.normal(size=(T * D, 3))


def _model(nodes, consts, in_shape, out_shape=(B, 3)):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, list(out_shape))], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return onnx.load_from_string(proto.SerializeToString())


def _shape(*s):
    return np.array(s, dtype=np.int64)


def _attention_tail(x_heads: str, merged: bool) -> list:
    """(·, T, hd) heads → softmax(q qᵀ) q per head."""
    return [helper.make_node("Transpose", [x_heads], ["kT"], perm=[0, 2, 1] if merged else [0, 1, 3, 2]),
            helper.make_node("MatMul", [x_heads, "kT"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", x_heads], ["o"])]


def sequence_first(b=B):
    """nn.MultiheadAttention's layout: (N, T, D) → (T, N, D) → (T, N·H, hd) → (N·H, T, hd), attention, back."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["xt", "Wqk"], ["q0"]),
             helper.make_node("Reshape", ["q0", "s1"], ["q1"]),
             helper.make_node("Transpose", ["q1"], ["q"], perm=[1, 0, 2]),
             *_attention_tail("q", merged=True),
             helper.make_node("Transpose", ["o"], ["ot"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["ot", "s2"], ["rows"]),
             helper.make_node("Gemm", ["rows", "Wout"], ["g"]),
             helper.make_node("Reshape", ["g", "s3"], ["g3"]),
             helper.make_node("Transpose", ["g3"], ["back"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["back"], ["f"]),
             helper.make_node("Gemm", ["f", "head"], ["y"])]
    consts = {"Wqk": W_QK, "Wout": W_OUT, "head": HEAD, "s1": _shape(T, b * H, HD), "s2": _shape(T * b, D),
              "s3": _shape(T, b, D)}
    return _model(nodes, consts, (b, T, D), (b, 3))


def batch_first(b=B):
    """The same model written batch-first: (N, T, D) → (N, T, H, hd) → (N, H, T, hd), attention, back."""
    nodes = [helper.make_node("MatMul", ["x", "Wqk"], ["q0"]),
             helper.make_node("Reshape", ["q0", "s1"], ["q1"]),
             helper.make_node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
             *_attention_tail("q", merged=False),
             helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["ot", "s2"], ["rows"]),
             helper.make_node("MatMul", ["rows", "Wout"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "head"], ["y"])]
    consts = {"Wqk": W_QK, "Wout": W_OUT, "head": HEAD, "s1": _shape(b, T, H, HD), "s2": _shape(b, T, D)}
    return _model(nodes, consts, (b, T, D), (b, 3))


def _ort(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _finite_diff_gradient(model, x, target):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += 1e-6
        xm[i] -= 1e-6
        g[i] = (model.run(model.to_nhwc(xp))[0][i[0], target[i[0]]] - model.run(model.to_nhwc(xm))[0][i[0], target[i[0]]]) / 2e-6
    return g


def _check_outputs_and_gradient(model, proto, x, target):
    """The converted model's logits equal onnxruntime's; its gradient equals finite differences."""
    np.testing.assert_allclose(model.run(model.to_nhwc(x))[0], _ort(proto, x), rtol=1e-12)
    g = lrpflow.explain(model, x, rule="gradient", dtype="float64", target=target).relevance
    np.testing.assert_allclose(g, _finite_diff_gradient(model, x, target), rtol=1e-6, atol=1e-8)


def test_sequence_first_attention_equals_onnxruntime_gradient_and_batch_first_model():
    proto = sequence_first()
    model = convert(proto)
    x = rng.normal(size=(B, T, D))
    target = np.array([0, 2])
    _check_outputs_and_gradient(model, proto, x, target)
    ref = convert(batch_first())
    np.testing.assert_allclose(ref.run(x)[0], _ort(proto, x), rtol=1e-12)
    for kw in (dict(composite="attnlrp", epsilon=0.0), dict(composite="attnlrp"), dict(rule="gradient_x_input")):
        a = lrpflow.explain(model, x, dtype="float64", target=target, **kw)
        b = lrpflow.explain(ref, x, dtype="float64", target=target, **kw)
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-10, atol=1e-12, err_msg=str(kw))
    # AttnLRP-0: only the softmax absorbs; the ledger accounts for every bit
    e = lrpflow.explain(model, x, composite="attnlrp", epsilon=0.0, dtype="float64", target=target)
    absorbed = sum(entry.absorbed for entry in e.ledger.values())
    np.testing.assert_allclose(e.relevance.sum((1, 2)) + absorbed, e.r_init.sum(1), rtol=1e-9)


@pytest.mark.parametrize("file_batch", [2, 1])
def test_views_keep_samples_apart_at_any_batch_size(file_batch):
    """The file fixes the batch in its Reshape shapes; lrpflow's graph is per sample and takes any batch. With a batch
    of 1 in the file each ONNX tensor is one sample (its batch axis of size 1 an ordinary axis)."""
    model = convert(sequence_first(file_batch))
    x = rng.normal(size=(5, T, D))
    ref = convert(batch_first())
    for kw in (dict(composite="attnlrp", epsilon=0.0), dict(rule="gradient_x_input")):
        np.testing.assert_allclose(lrpflow.explain(model, x, dtype="float64", target=1, **kw).relevance,
                                   lrpflow.explain(ref, x, dtype="float64", target=1, **kw).relevance, rtol=1e-10)
    e = lrpflow.explain(model, x, composite="attnlrp", epsilon=0.0, dtype="float64", target=1)
    for i in range(5):
        one = lrpflow.explain(model, x[i:i + 1], composite="attnlrp", epsilon=0.0, dtype="float64", target=1)
        np.testing.assert_allclose(one.relevance[0], e.relevance[i], rtol=1e-12)
        np.testing.assert_allclose(one.logits[0], e.logits[i], rtol=1e-12)


def test_dynamic_batch_axis_with_shapes_computed_from_it():
    """A file with a dynamic batch axis whose Reshape shapes the graph computes from Shape(x) (what exporters write
    for dynamic axes): read at batch 2 (automatically, or batch_size=), the model takes any batch like onnxruntime."""
    shape_nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "zero"], ["nb0"], axis=0),
                   helper.make_node("Unsqueeze", ["nb0", "zero1"], ["nb"]),
                   helper.make_node("Mul", ["nb", "h"], ["nbh"]), helper.make_node("Mul", ["nb", "t"], ["nbt"]),
                   helper.make_node("Concat", ["t", "nbh", "hd"], ["s1"], axis=0),
                   helper.make_node("Concat", ["nbt", "d"], ["s2"], axis=0),
                   helper.make_node("Concat", ["t", "nb", "d"], ["s3"], axis=0)]
    nodes = shape_nodes + list(sequence_first().graph.node)
    consts = {"Wqk": W_QK, "Wout": W_OUT, "head": HEAD, "zero": np.array(0, np.int64), "zero1": _shape(0),
              "h": _shape(H), "t": _shape(T), "hd": _shape(HD), "d": _shape(D)}
    proto = _model(nodes, consts, ("N", T, D), ("N", 3))
    x = rng.normal(size=(3, T, D))
    want = _ort(proto, x)
    for kw in ({}, {"batch_size": 2}, {"batch_size": 5}):
        model = convert(proto, **kw)
        np.testing.assert_allclose(model.run(x)[0], want, rtol=1e-12, err_msg=str(kw))
    with pytest.raises(LrpflowError, match="fixes the batch size 2; batch_size=3 does not apply"):
        convert(sequence_first(), batch_size=3)


def windows():
    """Swin's window partition: (N, C, 4, 4) → (N, 4, 4, C) → (N, 2, 2, 2, 2, C) → (N·4, 4, C) windows of 2×2 tokens,
    a per-window constant repeated per sample, softmax over the window's tokens, windows merged back."""
    c = 2
    mask = rng.normal(size=(4, 4, c))
    nodes = [helper.make_node("Transpose", ["x"], ["hwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["hwc", "s1"], ["p6"]),
             helper.make_node("Transpose", ["p6"], ["w6"], perm=[0, 1, 3, 2, 4, 5]),
             helper.make_node("Reshape", ["w6", "s2"], ["win"]),
             helper.make_node("MatMul", ["win", "Wc"], ["lin"]),
             helper.make_node("Add", ["lin", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["sm"], axis=1),
             helper.make_node("Mul", ["sm", "win"], ["gated"]),
             helper.make_node("Reshape", ["gated", "s3"], ["w6b"]),
             helper.make_node("Transpose", ["w6b"], ["p6b"], perm=[0, 1, 3, 2, 4, 5]),
             helper.make_node("Reshape", ["p6b", "s4"], ["img"]),
             helper.make_node("Flatten", ["img"], ["f"]),
             helper.make_node("Gemm", ["f", "head"], ["y"])]
    consts = {"Wc": rng.normal(size=(c, c)), "mask": np.tile(mask, (B, 1, 1)), "head": rng.normal(size=(4 * 4 * c, 3)),
              "s1": _shape(B, 2, 2, 2, 2, c), "s2": _shape(-1, 4, c), "s3": _shape(B, 2, 2, 2, 2, c),
              "s4": _shape(B, 4, 4, c)}
    return _model(nodes, consts, (B, c, 4, 4)), mask


def test_window_partition_merging_batch_and_windows():
    proto, mask = windows()
    model = convert(proto)
    x = rng.normal(size=(B, 2, 4, 4))
    _check_outputs_and_gradient(model, proto, x, np.array([1, 0]))
    assert "AddConstant" in {n.layer.type_name for n in model.nodes}  # the per-window constant, once per sample
    e = lrpflow.explain(model, x[:1], composite="attnlrp", epsilon=0.0, dtype="float64", target=0)
    assert np.isfinite(e.relevance).all() and e.relevance.shape == (1, 2, 4, 4)


def test_constant_concatenated_in_a_sequence_first_layout():
    """A CLS token concatenated to a (T, N, D) tensor: the constant holds the batch axis too (one row per sample,
    equal), mapped to the batch-first layout like the activation (it was taken as (N, D) rows before)."""
    cls = np.tile(rng.normal(size=(1, 1, D)), (1, B, 1))
    proto = _model([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                    helper.make_node("Concat", ["cls", "xt"], ["c"], axis=0),
                    helper.make_node("Transpose", ["c"], ["b"], perm=[1, 0, 2]),
                    helper.make_node("Flatten", ["b"], ["f"]), helper.make_node("Gemm", ["f", "head"], ["y"])],
                   {"cls": cls, "head": rng.normal(size=((T + 1) * D, 3))}, (B, T, D))
    model = convert(proto)
    x = rng.normal(size=(B, T, D))
    np.testing.assert_allclose(model.run(x)[0], _ort(proto, x), rtol=1e-12)
    assert [n.layer.type_name for n in model.nodes][0] == "ConcatConstant"
    bad = np.concatenate([cls[:, :1], cls[:, :1] + 1], 1)  # a different row per sample is refused
    with pytest.raises(LrpflowError, match="differs between the samples"):
        convert(_model(list(proto.graph.node), {"cls": bad, "head": rng.normal(size=((T + 1) * D, 3))}, (B, T, D)))


def test_pad_of_a_token_grid():
    """Swin pads its (N, H, W, C) token grid to whole windows: a Pad of ONNX axes 1 and 2 of a tensor that is not an
    NCHW image (refused as "padding the channel axis" before)."""
    proto = _model([helper.make_node("Transpose", ["x"], ["hwc"], perm=[0, 2, 3, 1]),
                    helper.make_node("Pad", ["hwc", "pads"], ["padded"]),
                    helper.make_node("Flatten", ["padded"], ["f"]), helper.make_node("Gemm", ["f", "head"], ["y"])],
                   {"pads": _shape(0, 0, 0, 0, 0, 1, 1, 0), "head": rng.normal(size=(4 * 4 * 2, 3))}, (B, 2, 3, 3))
    model = convert(proto)
    x = rng.normal(size=(B, 2, 3, 3))
    _check_outputs_and_gradient(model, proto, x, np.array([2, 1]))


def _refused(nodes, consts, in_shape, match):
    with pytest.raises(LrpflowError, match=match):
        convert(_model(nodes, consts, in_shape))


def test_operations_across_the_batch_are_refused_naming_the_node():
    head = {"head": rng.normal(size=(T * D, 3))}
    # a reduction over the ONNX axis that holds the batch
    _refused([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
              helper.make_node("ReduceMean", ["xt"], ["m"], axes=[1], keepdims=1, name="mean_over_batch"),
              helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0, 2])], {}, (B, T, D), "mean_over_batch.*batch")
    # a softmax over heads merged with the batch
    _refused([helper.make_node("Reshape", ["x", "s"], ["m"]),
              helper.make_node("Softmax", ["m"], ["p"], axis=0, name="softmax_mixes"),
              helper.make_node("Reshape", ["p", "s2"], ["f"]), helper.make_node("Gemm", ["f", "head"], ["y"])],
             {"s": _shape(B * T, D), "s2": _shape(B, T * D), **head}, (B, T, D), "softmax_mixes.*batch")
    # a reshape that splits the batch (4 samples into 2 × 2)
    _refused([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
              helper.make_node("Reshape", ["xt", "s"], ["r"], name="split_batch"),
              helper.make_node("Reshape", ["r", "s2"], ["y"])],
             {"s": _shape(T, 2, 2 * D), "s2": _shape(4, T * D)}, (4, T, D), "split_batch.*splits the batch")
    # a handler that knows no views, given a tensor whose batch is not the leading axis
    _refused([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
              helper.make_node("Expand", ["xt", "s"], ["e"], name="expand_moved"),
              helper.make_node("Transpose", ["e"], ["y"], perm=[1, 0, 2])],
             {"s": _shape(T, B, D)}, (B, T, D), "expand_moved.*batch axis at ONNX axis 1")
    # a batch of 1 in the file: a view-unaware operator on a tensor that does not lead with it
    _refused([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
              helper.make_node("Expand", ["xt", "s"], ["e"], name="expand_one"),
              helper.make_node("Transpose", ["e"], ["y"], perm=[1, 0, 2])],
             {"s": _shape(T, 1, D)}, (1, T, D), "expand_one.*does not lead with the batch")
