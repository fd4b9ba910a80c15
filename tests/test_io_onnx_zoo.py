"""The torchvision classification zoo through ONNX: every architecture, both torch exporters.

Fixtures (reduced widths, 3×32×32 inputs, random weights, BatchNorm with data statistics) are
made by ``tests/fixtures/make_onnx_zoo.py`` with torch; this test needs neither torch nor
torchvision. For each export: the model loads; its float64 logits equal the exported file's own
float64 evaluation by ``onnx.reference.ReferenceEvaluator`` (1e-9 relative) and torch's float64
logits (1e-6: both exporters fold BatchNorm into the weights in float32); ``gradient_x_input``
equals torch autograd's (1e-6; this checks the vector–Jacobian product of every operator); an
ε-LRP explanation has the input's shape, is finite and — with every bias set to zero — conserves
relevance.
"""
from __future__ import annotations

import os

import numpy
import pytest

pytest.importorskip("onnx")
pytest.importorskip("lrpflow_onnx")

import lrpflow  # noqa: E402

ZOO = os.path.join(os.path.dirname(__file__), "fixtures", "onnx_zoo")
EXPORTS = sorted(f[:-5] for f in os.listdir(ZOO) if f.endswith(".onnx")) if os.path.isdir(ZOO) else []
#: relative tolerances (float64): logits vs the file's float64 evaluation, vs torch; gradient×input vs torch
FILE_RTOL, TORCH_RTOL, GXI_RTOL = 1e-9, 1e-6, 1e-6
#: exports with float32 attributes the reference evaluator reads differently (HardSigmoid's α = 1/6 in float32)
FILE_RTOL_BY_EXPORT = {"mobilenet_v3_small_legacy": 1e-8, "mobilenet_v3_small_dynamo": 1e-8}


def _reference(export: str) -> dict[str, numpy.ndarray]:
    arch = export.rsplit("_", 1)[0]
    with numpy.load(os.path.join(ZOO, f"{arch}.npz")) as f:
        return dict(f)


def _rel(a: numpy.ndarray, b: numpy.ndarray) -> float:
    return float(numpy.abs(a - b).max() / numpy.abs(b).max())


def test_the_zoo_has_both_exporters_of_every_architecture():
    archs = {e.rsplit("_", 1)[0] for e in EXPORTS}
    assert len(archs) >= 13, sorted(archs)
    for arch in archs:
        assert {f"{arch}_legacy", f"{arch}_dynamo"} <= set(EXPORTS), arch


@pytest.mark.parametrize("export", EXPORTS)
def test_zoo_logits_and_gradient_x_input_match_torch(export):
    ref = _reference(export)
    model = lrpflow.load_model(os.path.join(ZOO, f"{export}.onnx"))
    out = lrpflow.explain(model, ref["x"].astype(numpy.float64), rule="gradient_x_input", target=ref["target"],
                          dtype="float64")
    file_logits = ref.get(f"logits_{export.rsplit('_', 1)[1]}")
    if file_logits is not None:  # None where onnx's reference evaluator cannot run the file (googlenet's pools)
        assert _rel(out.logits, file_logits) < FILE_RTOL_BY_EXPORT.get(export, FILE_RTOL)
    assert _rel(out.logits, ref["logits"]) < TORCH_RTOL
    assert out.relevance.shape == ref["x"].shape
    assert _rel(out.relevance, ref["gxi"]) < GXI_RTOL


def _zero_biases(model):
    for layer in model.layers:
        zero = {k: numpy.zeros_like(v) for k, v in layer.params().items() if k in ("bias", "beta", "mean") and v is not None}
        if zero:
            layer.set_params(**zero)


@pytest.mark.parametrize("export", [e for e in EXPORTS if e.endswith("_dynamo")])
def test_zoo_epsilon_lrp_is_finite_and_conservative_without_biases(export):
    ref = _reference(export)
    model = lrpflow.load_model(os.path.join(ZOO, f"{export}.onnx"))
    _zero_biases(model)
    out = lrpflow.explain(model, ref["x"].astype(numpy.float64), rule="epsilon", epsilon=0.0, dtype="float64")
    r = out.relevance
    assert r.shape == ref["x"].shape and numpy.isfinite(r).all()
    assert numpy.abs(r).sum() > 0
    numpy.testing.assert_allclose(r.reshape(len(r), -1).sum(1), out.logits.max(1), rtol=1e-6)
