"""zennit as the peer: lrpflow's float64 attributions of three small ONNX nets (VGG-, ResNet-
and DenseNet-style, BatchNorm with non-trivial statistics) agree with zennit's to 1e-6.

The references and models are made by ``tests/fixtures/make_zennit_refs.py`` (torch +
zennit; see its docstring for the stabilisers passed to zennit). lrpflow is run with its
defaults: BatchNorm folded on load, the rule on layers with weights, ``norm`` on pools and
residual sums, winner-take-all on MaxPool.
"""
from __future__ import annotations

import os

import numpy
import pytest

pytest.importorskip("onnx")
pytest.importorskip("lrpflow_onnx")

import lrpflow  # noqa: E402
from lrpflow.composites import Composite, Override, make_composite  # noqa: E402
from lrpflow.rules import Epsilon, Flat, Norm, Pass, WSquare, make_rule  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "zennit")
NETS = ("vgg", "resnet", "densenet")
TOL = 1e-9  # measured: ≤ 4e-12 (the issue asks 1e-6)

#: method name in refs.npz -> explain() keyword arguments (same parameters as the generator)
METHODS = {
    "epsilon": {"rule": "epsilon", "epsilon": 0.01},
    "zplus": {"rule": "zplus"},
    "alpha2beta1": {"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0},
    "gamma": {"rule": "gamma", "gamma": 0.25},
    "flat_first": {"composite": Composite(Epsilon(1e-6), Flat())},
    "wsquare_first": {"composite": Composite(Epsilon(1e-6), WSquare())},
    "epsilon_plus": {"composite": "epsilon_plus", "epsilon": 1e-6},
    "epsilon_plus_flat": {"composite": "epsilon_plus_flat", "epsilon": 1e-6},
    "epsilon_gamma_box": {"composite": "epsilon_gamma_box", "epsilon": 1e-6, "gamma": 0.25, "low": -3.0, "high": 3.0},
    "epsilon_alpha2_beta1": {"composite": "epsilon_alpha2_beta1", "epsilon": 1e-6},
}


@pytest.fixture(scope="module")
def refs():
    with numpy.load(os.path.join(HERE, "refs.npz")) as f:
        return dict(f)


@pytest.fixture(scope="module")
def explainers():
    return {name: lrpflow.Explainer(lrpflow.load_model(os.path.join(HERE, f"{name}.onnx")), dtype="float64")
            for name in NETS + ("preact",)}


def relative_error(a, b):
    return float(numpy.abs(a - b).max() / numpy.abs(b).max())


@pytest.mark.parametrize("net", NETS)
def test_logits_and_folding(net, refs, explainers):
    exp = explainers[net]
    assert any(c.startswith("fold_batchnorm") for c in exp.model.canonizers)  # folded by default
    trace = exp.forward(refs[f"{net}/x"])
    assert relative_error(numpy.asarray(trace.logits), refs[f"{net}/logits"]) < 1e-12


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("net", NETS)
def test_agrees_with_zennit(net, method, refs, explainers):
    e = explainers[net].explain(refs[f"{net}/x"], target=refs[f"{net}/target"], **METHODS[method])
    err = relative_error(numpy.asarray(e.relevance), refs[f"{net}/{method}"])
    assert err < TOL, f"{net} {method}: max relative error {err:.2e}"


def bn_passes(spec):
    """``spec`` with zennit's treatment of a BatchNorm that could not be merged: relevance passes."""
    spec = dict(spec)
    if "rule" in spec:
        base = Composite(make_rule(spec.pop("rule"), **spec))
    else:
        base = make_composite(spec.pop("composite"), **spec)
    return Composite(base.default, base.input_rule, [Override(Pass(), kind="batch_norm"), *base.overrides])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unmerged_batchnorm_pre_activation(method, refs, explainers):
    """DenseNet's BN-ReLU-Conv order: no BN can be folded. lrpflow gives such a BN `norm`
    (iNNvestigate's z-rule); with a `pass` override it reproduces zennit, which passes relevance."""
    exp = explainers["preact"]
    bns = [n.name for n in exp.model.nodes if "batch_norm" in n.layer.kinds]
    assert len(bns) == 3 and exp.model.canonizers == []
    assert all(exp.rules()[b] == Norm() for b in bns)
    e = exp.explain(refs["preact/x"], target=refs["preact/target"], composite=bn_passes(METHODS[method]))
    err = relative_error(numpy.asarray(e.relevance), refs[f"preact/{method}"])
    assert err < TOL, f"preact {method}: max relative error {err:.2e}"
