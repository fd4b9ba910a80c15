"""Transformers: the layers and rules of AttnLRP (hand-computed formulas), and real model families exported to
ONNX (tests/fixtures/make_transformers.py) against torch's logits, gradients and an explicit float64 AttnLRP-0."""
from __future__ import annotations

import os

import numpy as np
import pytest

import lrpflow
from lrpflow.graph import Model, Node
from lrpflow.layers import AddConstant, ConcatConstant, Embedding, Linear, MatMul, Multiply, RMSNorm, SoftMax, Where
from lrpflow.rules import AttnSoftmax, Epsilon, HeldFirst, NodeContext, ProductSplit

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "transformers")
rng = np.random.default_rng(0)


def _ctx(name: str = "n") -> NodeContext:
    return NodeContext(name)


# --- layers and rules, by hand -------------------------------------------------------------------------------


def test_matmul_epsilon_splits_half_per_attnlrp():
    a, b = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 5, 4))
    layer = MatMul()
    y = layer.forward(a, b)
    np.testing.assert_allclose(y, a @ b)
    r = rng.normal(size=y.shape)
    eps = 1e-3
    ra, rb = Epsilon(eps / 2).backward(layer, [a, b], y, r, _ctx())
    rn = r / (2 * y + eps * np.where(y >= 0, 1, -1))  # ATTNLRP.md: Rn = R ⊘ (2Y + ε), sign-aware stabiliser
    np.testing.assert_allclose(ra, a * (rn @ np.swapaxes(b, -1, -2)), rtol=1e-10)
    np.testing.assert_allclose(rb, b * (np.swapaxes(a, -1, -2) @ rn), rtol=1e-10)
    ra0, rb0 = Epsilon(0.0).backward(layer, [a, b], y, r, _ctx())
    np.testing.assert_allclose((ra0.sum() + rb0.sum()), r.sum(), rtol=1e-10)  # conservative at ε = 0
    g = rng.normal(size=y.shape)  # the true gradient, not the halves
    ga, gb = layer.vjp([a, b], y, g)
    np.testing.assert_allclose(ga, g @ np.swapaxes(b, -1, -2))
    np.testing.assert_allclose(gb, np.swapaxes(a, -1, -2) @ g)


def test_held_first_gives_everything_to_the_values():
    a, v = rng.random(size=(2, 4, 4)), rng.normal(size=(2, 4, 3))
    y = a @ v
    r = rng.normal(size=y.shape)
    ra, rv = HeldFirst(0.0).backward(MatMul(), [a, v], y, r, _ctx())
    assert not ra.any()
    np.testing.assert_allclose(rv, v * (np.swapaxes(a, -1, -2) @ (r / y)), rtol=1e-12)


def test_softmax_rule_and_masked_scores():
    x = rng.normal(size=(2, 3, 5))
    x[0, 0, 2] = -np.inf
    layer = SoftMax()
    p = layer.forward(x)
    r = rng.normal(size=x.shape)
    (rx,) = AttnSoftmax().backward(layer, [x], p, r, _ctx())
    x0 = np.where(np.isneginf(x), 0, x)
    np.testing.assert_allclose(rx, x0 * (r - p * r.sum(-1, keepdims=True)), rtol=1e-12)
    assert rx[0, 0, 2] == 0 and np.isfinite(rx).all()
    # any axis: the rule sums over the softmax axis
    layer1 = SoftMax(axis=0)
    p1 = layer1.forward(x[1:])
    np.testing.assert_allclose(p1.sum(axis=1), 1.0)
    (r1,) = AttnSoftmax().backward(layer1, [x[1:]], p1, r[1:], _ctx())
    np.testing.assert_allclose(r1, x[1:] * (r[1:] - p1 * r[1:].sum(1, keepdims=True)), rtol=1e-12)


def test_product_split_uniform_and_gate():
    a, b = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    r = rng.normal(size=(2, 4))
    ra, rb = ProductSplit().backward(Multiply(gate=None), [a, b], a * b, r, _ctx())
    np.testing.assert_allclose(ra, r / 2)
    np.testing.assert_allclose(rb, r / 2)
    ra, rb = ProductSplit().backward(Multiply(gate=1), [a, b], a * b, r, _ctx())
    np.testing.assert_allclose(ra, r)
    assert not rb.any()


def test_add_constant_where_concat_constant_rmsnorm():
    x = rng.normal(size=(2, 3, 4))
    c = rng.normal(size=(3, 4))
    layer = AddConstant(c)
    y = layer.forward(x)
    np.testing.assert_allclose(y, x + c)
    r = rng.normal(size=y.shape)
    (rx,) = Epsilon(0.0).backward(layer, [x], y, r, _ctx())
    np.testing.assert_allclose(rx, x * r / (x + c), rtol=1e-10)  # the constant absorbs c·R/(x+c)
    mask = rng.random((3, 4)) > 0.5
    w = Where(mask, -np.inf)
    yw = w.forward(x)
    assert np.isneginf(yw[:, ~mask]).all() and np.array_equal(yw[:, mask], x[:, mask])
    (gw,) = w.vjp([x], yw, r)
    np.testing.assert_array_equal(gw, np.where(mask, r, 0))
    cls = ConcatConstant(np.ones((1, 4)), axis=0)
    yc = cls.forward(x)
    assert yc.shape == (2, 4, 4) and (yc[:, 0] == 1).all() and np.array_equal(yc[:, 1:], x)
    (gc,) = cls.vjp([x], yc, np.arange(32.0).reshape(2, 4, 4))
    np.testing.assert_array_equal(gc, np.arange(32.0).reshape(2, 4, 4)[:, 1:])
    rms = RMSNorm(1e-6)
    yr = rms.forward(x)
    np.testing.assert_allclose(yr, x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6))
    g = rng.normal(size=x.shape)
    (gx,) = rms.vjp([x], yr, g)
    h, i = 1e-6, (1, 2, 3)
    xp, xm = x.copy(), x.copy()
    xp[i] += h
    xm[i] -= h
    fd = ((rms.forward(xp) - rms.forward(xm)) * g).sum() / (2 * h)
    np.testing.assert_allclose(gx[i], fd, rtol=1e-6)


def _tiny_attention_model(d: int = 4, t: int = 3) -> Model:
    """ids → Embedding → (+pos) → q, k, v → softmax(q kᵀ) v → Linear(mean over tokens) as a graph."""
    w = rng.normal(size=(d, d))
    nodes = [
        Node("emb", Embedding(rng.normal(size=(7, d))), ("input",)),
        Node("pos", AddConstant(rng.normal(size=(t, d))), ("emb",)),
        Node("q", Linear(d, d, weight=rng.normal(size=(d, d)), bias=rng.normal(size=d)), ("pos",)),
        Node("kT", lrpflow.layers.Permute((2, 1)), ("pos",)),
        Node("s", MatMul(), ("q", "kT")),
        Node("p", SoftMax(), ("s",)),
        Node("o", MatMul(), ("p", "pos")),
        Node("res", lrpflow.layers.Add(), ("o", "pos")),
        Node("flat", lrpflow.layers.Flatten(), ("res",)),
        Node("out", Linear(t * d, 3, weight=rng.normal(size=(t * d, 3)), bias=np.zeros(3)), ("flat",)),
    ]
    del w
    return Model(nodes, output="out", input_shape=(t,))


def test_attnlrp_zero_conserves_through_a_bias_free_attention_graph():
    m = _tiny_attention_model()
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    e = lrpflow.explain(m, ids, composite="attnlrp", epsilon=0.0, dtype="float64", keep=["emb"])
    assert e.relevance.shape == (2, 3)
    np.testing.assert_allclose(e.relevance, e.intermediate["emb"].sum(-1), rtol=1e-12)  # per token = Σ over D
    # the products, the residual and the output layer are conservative at ε = 0; the softmax, q's bias and
    # the positional constant absorb: the ledger says where
    for name in ("o", "res", "out", "flat"):
        entry = e.ledger[name]
        np.testing.assert_allclose(entry.leaving, entry.entering, rtol=1e-9)
    assert all(np.isfinite(v.entering).all() and np.isfinite(v.leaving).all() for v in e.ledger.values())


def test_composites_registered_and_epsilon_sets_every_epsilon():
    from lrpflow.attnlrp import attnlrp, cp_lrp

    c = attnlrp(epsilon=0.25)
    eps = {o.kind: getattr(o.rule, "epsilon", None) for o in c.overrides}
    assert eps["dense"] == 0.25 and eps["add"] == 0.25 and eps["layer_norm"] == 0.25 and eps["bilinear"] == 0.125
    d = {o.kind: o.rule for o in attnlrp().overrides}
    assert d["dense"].epsilon == 1e-6 and d["add"].epsilon == 1e-8 and d["bilinear"].epsilon == 0.5e-8
    assert type(d["softmax"]).__name__ == "AttnSoftmax" and type(d["multiply"]).__name__ == "ProductSplit"
    g = {o.kind: o.rule for o in attnlrp(gamma_linear=0.05, gamma_conv=0.25).overrides}
    assert type(g["dense"]).__name__ == "Gamma" and g["dense"].gamma == 0.05 and g["conv"].gamma == 0.25
    assert type({o.kind: o.rule for o in cp_lrp().overrides}["bilinear"]).__name__ == "HeldFirst"
    from lrpflow.plugins import registries

    assert {"attnlrp", "cp_lrp"} <= set(registries().composites.names())


# --- real model families -------------------------------------------------------------------------------------

FAMILIES = [(f, x) for f in ("bert", "gpt2", "llama", "vit", "swin") for x in ("legacy", "dynamo")]


def _fixture(family: str, exporter: str):
    path = os.path.join(FIX, f"{family}_{exporter}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{family} has no {exporter} export (see docs/transformers.md)")
    pytest.importorskip("onnx")
    return lrpflow.load_model(path), dict(np.load(os.path.join(FIX, f"{family}.npz")))


def _embedding(model):
    return next(n.name for n in model.nodes if isinstance(n.layer, Embedding))


@pytest.mark.parametrize("family,exporter", FAMILIES)
def test_family_logits_gradient_and_attnlrp(family, exporter):
    model, d = _fixture(family, exporter)
    x, target = d["ids"], d["target"]
    text = x.dtype.kind == "i"
    keep = [_embedding(model)] if text else []
    g = lrpflow.explain(model, x, rule="gradient", dtype="float64", target=target, keep=keep)
    scale = np.abs(d["logits"]).max()
    assert np.abs(g.logits - d["logits"]).max() / scale < 1e-6  # float32 weights and constants in the file
    if text:
        grad = g.intermediate[keep[0]]
        np.testing.assert_allclose(grad, d["grad_embed"], rtol=1e-6, atol=1e-6 * np.abs(d["grad_embed"]).max())
        _, trace = model.run(x.astype(np.float64))
        np.testing.assert_allclose((trace[keep[0]] * grad).sum(-1), d["gxi"], rtol=1e-6, atol=1e-6 * np.abs(d["gxi"]).max())
        # gradient × input of token ids: Σ_D e ⊙ ∂f/∂e per token (an id is not multiplied into it)
        gxi = lrpflow.explain(model, x, rule="gradient_x_input", dtype="float64", target=target).relevance
    else:
        gxi = lrpflow.explain(model, x, rule="gradient_x_input", dtype="float64", target=target).relevance
    np.testing.assert_allclose(gxi, d["gxi"], rtol=1e-6, atol=1e-6 * np.abs(d["gxi"]).max())
    e = lrpflow.explain(model, x, composite="attnlrp", epsilon=0.0, dtype="float64", target=target)
    ref = d["attnlrp"]
    assert e.relevance.shape == ref.shape
    assert np.abs(e.relevance - ref).max() / np.abs(ref).max() < 1e-6
    rinit = np.abs(e.r_init).sum(1)
    exact = {"MatMul", "Add", "Multiply", "RMSNorm", "Reshape", "Transpose", "Slice", "Flatten", "Permute", "Concat",
             "Broadcast"}
    for node in model.nodes:
        entry = e.ledger[node.name]
        assert np.isfinite(entry.entering).all() and np.isfinite(entry.leaving).all(), node.name
        if node.layer.type_name in exact:  # conservative at ε = 0: products, residual sums, identities, moves
            np.testing.assert_allclose(entry.leaving, entry.entering, atol=1e-9 * rinit.max(), err_msg=node.name)
    # the softmax bias (and positional constants, where the family adds them) absorb; the ledger adds up
    absorbed = sum(entry.absorbed for entry in e.ledger.values())
    per_sample = e.relevance.reshape(len(x), -1).sum(1)
    np.testing.assert_allclose(per_sample + absorbed, e.r_init.sum(1), rtol=1e-9)
    if family == "llama":  # no additive positions: only the softmaxes absorb, a few per cent
        assert np.all(np.abs(per_sample / e.r_init.sum(1) - 1) < 0.05)
    # float32 with LXT's default ε: finite and close to the exact float64 AttnLRP-0
    e32 = lrpflow.explain(model, x, composite="attnlrp", target=target)
    assert e32.relevance.dtype == np.float32 and np.isfinite(e32.relevance).all()
    assert np.corrcoef(e32.relevance.ravel(), ref.ravel())[0, 1] > 0.99
    if not text:  # vision transformers: image-shaped relevance renders as any heatmap (NCHW as the model declares)
        from lrpflow.render import render_heatmap

        img = render_heatmap(e.relevance[0], layout="NCHW")
        assert img.shape == (3 * x.shape[2], 3 * x.shape[3], 3)
        np.testing.assert_array_equal(img, render_heatmap(e.relevance[0].transpose(1, 2, 0), layout="NHWC"))


@pytest.mark.parametrize("family,exporter", [(f, x) for f in ("vit", "swin") for x in ("legacy", "dynamo")])
def test_vision_transformers_exported_with_a_batch_of_one(family, exporter):
    """Exported with one image, each ONNX tensor is one sample (sequence-first and window layouts included): lrpflow
    explains any batch with it, matching the float64 references sample by sample."""
    path = os.path.join(FIX, f"{family}_{exporter}_batch1.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{family} has no {exporter} export")
    pytest.importorskip("onnx")
    model, d = lrpflow.load_model(path), dict(np.load(os.path.join(FIX, f"{family}.npz")))
    x, target = d["ids"], d["target"]
    e = lrpflow.explain(model, x, composite="attnlrp", epsilon=0.0, dtype="float64", target=target)
    assert np.abs(e.logits - d["logits"]).max() / np.abs(d["logits"]).max() < 1e-6
    assert np.abs(e.relevance - d["attnlrp"]).max() / np.abs(d["attnlrp"]).max() < 1e-6
    g = lrpflow.explain(model, x, rule="gradient_x_input", dtype="float64", target=target).relevance
    np.testing.assert_allclose(g, d["gxi"], rtol=1e-6, atol=1e-6 * np.abs(d["gxi"]).max())


# --- token heatmaps ------------------------------------------------------------------------------------------


def test_token_heatmap_colours_html_and_png(tmp_path):
    from lrpflow.errors import ConfigError
    from lrpflow.plugins import registries
    from lrpflow.render import render_tokens, token_colors, tokens_html

    r = np.array([2.0, 0.0, -1.0, -2.0])
    c = token_colors(r)
    np.testing.assert_allclose(c[1], [1, 1, 1], atol=0.02)  # zero is white
    assert c[0][0] > 0.9 and c[0][2] < 0.1 and c[3][2] > 0.9 and c[3][0] < 0.1  # red positive, blue negative
    assert c[2][2] > c[2][0] and c[2][0] > c[3][0]  # half as negative: lighter blue
    snippet = tokens_html(r, ["a", "<b>", "c", "d"])
    assert "&lt;b&gt;" in snippet and snippet.count("<span") == 4 and 'title="-2"' in snippet
    img = render_tokens(r, ["a", "<b>", "c", "d"], path=tmp_path / "t.png", html_path=tmp_path / "t.html")
    assert img.dtype == np.uint8 and img.ndim == 3 and (tmp_path / "t.png").stat().st_size > 100
    assert (tmp_path / "t.html").read_text().startswith('<div class="lrpflow-tokens"')
    with pytest.raises(ConfigError, match="3 tokens for 4"):
        tokens_html(r, ["a", "b", "c"])
    assert registries().renderers.get("tokens") is render_tokens


# --- the text data source and the text_classifier experiment -------------------------------------------------


def test_token_reader_pads_and_masks(tmp_path):
    from lrpflow.errors import DataFormatError
    from lrpflow.io import open_data

    p = tmp_path / "ids.txt"
    p.write_text("5 6 7\n\n1 2\n")
    src = open_data(str(p), format="tokens", pad_id=9)
    np.testing.assert_array_equal(src[:], [[5, 6, 7], [1, 2, 9]])
    np.testing.assert_array_equal(src.mask, [[1, 1, 1], [1, 1, 0]])
    np.save(tmp_path / "ids.npy", np.array([[1, 2], [3, 4]]))
    assert open_data(str(tmp_path / "ids.npy"), format="tokens", length=4)[:].tolist() == [[1, 2, 0, 0], [3, 4, 0, 0]]
    np.savez(tmp_path / "ids.npz", ids=np.array([[1, 2]]), mask=np.array([[1, 0]]), labels=np.array([2]))
    s = open_data(str(tmp_path / "ids.npz"), format="tokens")
    assert s.mask.tolist() == [[True, False]] and s.labels.tolist() == [2]
    (tmp_path / "bad.txt").write_text("1 2\n3 x\n")
    with pytest.raises(DataFormatError, match="bad.txt, line 2"):
        open_data(str(tmp_path / "bad.txt"), format="tokens")
    with pytest.raises(DataFormatError, match="more than length=2"):
        open_data(str(p), format="tokens", length=2)


def test_text_classifier_experiment_stores_relevance_per_token(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("onnx")
    import h5py

    ids = np.load(os.path.join(FIX, "bert.npz"))["ids"]
    (tmp_path / "ids.txt").write_text("\n".join(" ".join(map(str, r)) for r in ids) + "\n")
    model = os.path.join(FIX, "bert_legacy.onnx")
    cmd = [sys.executable, "-c", "from lrpflow.cli import main; main()", "progress=false", f"hydra.run.dir={tmp_path / 'run'}",
           "experiment=text_classifier", f"model.path={model}", f"data.path={tmp_path / 'ids.txt'}", "lrp.epsilon=0.0"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, LRPFLOW_CACHE=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "run" / "results.h5", "r") as f:
        rel = f["relevance"][:]
    assert rel.shape == ids.shape
    want = lrpflow.explain(lrpflow.load_model(model), ids, composite="attnlrp", epsilon=0.0).relevance
    np.testing.assert_allclose(rel, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_fold_gather_elements_with_indices_smaller_than_the_data():
    """BERT's buffered token types: GatherElements(data (16, 512), indices (1, 128), axis=1) — onnx's reference
    evaluator fails there ("cannot reshape array of size 1"); lrpflow folds it by the operator's definition."""
    pytest.importorskip("onnx")
    from onnx import helper

    from lrpflow_onnx.fold import FoldError, fold

    data = np.arange(16 * 512).reshape(16, 512)
    idx = np.array([[5, 0, -1, 7]])
    node = helper.make_node("GatherElements", ["d", "i"], ["o"], axis=1)
    out, = fold(node, [data, idx], 17, 1 << 20)
    np.testing.assert_array_equal(out, [[5, 0, 511, 7]])
    with pytest.raises(FoldError, match="out of range"):
        fold(node, [data, np.array([[512]])], 17, 1 << 20)


def test_onnx_additive_minus_inf_mask_attention_by_hand():
    """x → s = (x W)(x)ᵀ + mask (0 / −∞, causal) → softmax → p x → Flatten → Gemm, built with onnx.helper;
    AttnLRP-0 of lrpflow equals the rules applied by hand (no NaN from −∞ · 0)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    t, d = 3, 2
    w = rng.normal(size=(d, d))
    mask = np.triu(np.full((t, t), -np.inf), 1)
    head = rng.normal(size=(t * d, 2))
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (mask, "M"), (head, "H"),
                                                        (np.array([0, -1], dtype=np.int64), "shape"))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["q"]), helper.make_node("Transpose", ["x"], ["xT"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "xT"], ["s0"]), helper.make_node("Add", ["s0", "M"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "x"], ["o"]),
             helper.make_node("Reshape", ["o", "shape"], ["f"]), helper.make_node("Gemm", ["f", "H"], ["y"])]
    graph = helper.make_graph(nodes, "att", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, t, d])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 2])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from lrpflow_onnx.convert import convert

    model = convert(onnx.load_from_string(proto.SerializeToString()))
    assert "Where" in {n.layer.type_name for n in model.nodes}
    x = rng.normal(size=(2, t, d))
    e = lrpflow.explain(model, x, composite="attnlrp", epsilon=0.0, dtype="float64", target=0)
    # by hand
    q = x @ w
    xt = np.swapaxes(x, 1, 2)
    s = q @ xt + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = p @ x
    y = o.reshape(2, -1) @ head
    r_y = np.zeros_like(y)
    r_y[:, 0] = y[:, 0]
    r_o = (o.reshape(2, -1) * ((r_y / y) @ head.T)).reshape(o.shape)
    rn = r_o / (2 * o)
    r_p, r_x1 = p * (rn @ np.swapaxes(x, 1, 2)), x * (np.swapaxes(p, 1, 2) @ rn)
    s0 = np.where(np.isneginf(s), 0, s)
    r_s = s0 * (r_p - p * r_p.sum(-1, keepdims=True))
    rn2 = np.where(np.isneginf(s), 0, r_s / (2 * np.where(np.isneginf(s), 1, q @ xt)))
    r_q, r_xt = q * (rn2 @ np.swapaxes(xt, 1, 2)), xt * (np.swapaxes(q, 1, 2) @ rn2)
    r_x = r_x1 + np.swapaxes(r_xt, 1, 2) + x * ((r_q / q) @ w.T)
    assert np.isfinite(e.relevance).all()
    np.testing.assert_allclose(e.relevance, r_x, rtol=1e-9, atol=1e-12)
