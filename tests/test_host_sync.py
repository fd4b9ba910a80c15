"""The cupy path keeps the device free of host synchronisation (checked on the CPU).

Every rule and composite explains small networks through ``devicestub``, a stand-in for
cupy whose arrays raise on any device → host read. Inside the forward and backward pass
(``Explainer._explain_rows`` without the target check) even an explicit ``.get()`` is an
error; the input and target checks before it may read a few values with ``.get()``.
The results must equal numpy's.
"""
from __future__ import annotations

import importlib

import numpy
import pytest

import lrpflow
import nets
from devicestub import DeviceArray, HostSync, stub, to_device
from lrpflow.backend import get_namespace, register_array_type, to_numpy
from lrpflow.errors import LrpflowError
from lrpflow.layers import AvgPool, SumPool
from lrpflow.composites import Composite, Override
from lrpflow.plugins import registries
from lrpflow.rules import Epsilon, make_rule

explain_module = importlib.import_module("lrpflow.explain")  # lrpflow.explain is also the function

#: rules that need a parameter to be built, and what to give them
RULE_PARAMS = {"alpha_beta": {"alpha": 2.0, "beta": 1.0}, "smoothgrad": {"n": 2}, "integrated_gradients": {"steps": 2}}


@pytest.fixture
def device(monkeypatch):
    """Register the stand-in; forward and backward passes run with ``stub.strict`` set."""
    undo = register_array_type(DeviceArray, stub)
    rows, init = explain_module.Explainer._explain_rows, explain_module.initial_relevance

    def strict_rows(self, *args, **kwargs):
        stub.strict = True
        try:
            return rows(self, *args, **kwargs)
        finally:
            stub.strict = False

    def lenient_init(*args, **kwargs):  # the target checks may read the targets
        before, stub.strict = stub.strict, False
        try:
            return init(*args, **kwargs)
        finally:
            stub.strict = before

    monkeypatch.setattr(explain_module.Explainer, "_explain_rows", strict_rows)
    monkeypatch.setattr(explain_module, "initial_relevance", lenient_init)
    stub.transfers = 0
    yield stub
    undo()


def _nets():
    rng = numpy.random.default_rng(7)
    return {
        "mlp": (nets.randomize_biases(nets.mlp(rng), rng), (5, 6)),
        "cnn_maxpool": (nets.randomize_biases(nets.cnn(rng), rng), (3, 10, 10, 2)),
        "cnn_sumpool": (nets.cnn(rng, pool=SumPool), (3, 10, 10, 2)),
        "cnn_avgpool": (nets.cnn(rng, pool=AvgPool), (3, 10, 10, 2)),
        "residual": (nets.randomize_biases(nets.residual(rng), rng), (3, 8, 8, 3)),
        "concat": (nets.concat_net(rng), (3, 8, 8, 2)),
    }


NETS = _nets()


def _methods():
    out = []
    for entry in registries().rules:
        out.append(("rule", entry.name))
    for entry in registries().composites:
        out.append(("composite", entry.name))
    return out


def _run(model, x, kind, name, **kwargs):
    spec = {"rule": name, **RULE_PARAMS.get(name, {})} if kind == "rule" else {"composite": name}
    if name in ("winner_take_all", "proportional", "pass"):  # rules for max pools / shape-keeping layers
        where = "activation" if name == "pass" else "max_pool"
        spec = {"composite": Composite(Epsilon(0.01), overrides=[Override(make_rule(name), kind=where)])}
    return lrpflow.explain(model, x, dtype="float64", **spec, **kwargs)


def test_stub_raises_on_every_host_read():
    a = to_device(numpy.arange(4.0))
    s = a.sum()
    assert isinstance(s, DeviceArray) and s.shape == ()
    for read in (bool, float, int, lambda v: v.item(), lambda v: v.tolist(), numpy.asarray,
                 lambda v: v + numpy.ones(4), lambda v: [0, 1][v], lambda v: 1 if v > 0 else 0):
        with pytest.raises(HostSync):
            read(s if read is not numpy.asarray else a)
    assert not hasattr(a.flags, "writeable")  # cupy's flags have no writeable field
    assert numpy.array_equal((a * 2 + 1).get(), numpy.arange(4.0) * 2 + 1)


@pytest.mark.parametrize("net", sorted(NETS))
def test_explain_never_synchronises(device, net):
    model, shape = NETS[net]
    x = numpy.random.default_rng(3).uniform(-1, 1, shape)
    ran = []
    for kind, name in _methods():
        try:
            ref = _run(model, x, kind, name)
        except LrpflowError:
            continue  # the method does not apply to this network (e.g. winner_take_all on dense layers)
        got = _run(model, to_device(x), kind, name)
        assert get_namespace(got.relevance) is stub
        got = got.to_numpy()
        if name != "random" and name != "smoothgrad":  # draws differ between numpy and the device stream
            numpy.testing.assert_allclose(got.relevance, ref.relevance, rtol=1e-10, atol=1e-12, err_msg=f"{kind} {name}")
        numpy.testing.assert_allclose(got.conservation, ref.conservation, rtol=1e-8, atol=1e-12)
        for node, entry in ref.ledger.items():
            numpy.testing.assert_allclose(got.ledger[node].leaving, entry.leaving, rtol=1e-10, atol=1e-12)
        ran.append(name)
    assert {"epsilon", "alpha_beta", "gamma", "flat", "gradient", "epsilon_plus_flat", "pass"} <= set(ran), ran
    if "max_pool" in {k for layer in model.layers for k in layer.kinds}:
        assert {"winner_take_all", "proportional"} <= set(ran), ran


def test_targets_chunks_and_ledger_never_synchronise(device):
    model, shape = NETS["cnn_maxpool"]
    x = numpy.random.default_rng(4).uniform(-1, 1, (7,) + shape[1:])
    classes = numpy.array([0, 1, 2, 3, 0, 1, 2])
    r_init = numpy.random.default_rng(5).uniform(0, 1, (7, 4))
    for target in ("pred", 2, "topk:2", to_device(classes), to_device(r_init)):
        ref_target = to_numpy(target) if isinstance(target, DeviceArray) else target
        ref = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, target=ref_target, chunk_size=3, dtype="float64")
        exp = lrpflow.Explainer(model, rule="epsilon", epsilon=0.01, chunk_size=3, dtype="float64",
                                keep=("input", model.nodes[2].name))
        stub.transfers = 0
        got = exp.explain(to_device(x), target=target)
        # the ledger, conservation and kept relevance stay on the device until the caller reads them
        assert all(isinstance(e.entering, DeviceArray) and isinstance(e.leaving, DeviceArray) for e in got.ledger.values())
        assert isinstance(got.conservation, DeviceArray) and all(isinstance(v, DeviceArray) for v in got.intermediate.values())
        # two reads: the input check before the passes and the finiteness verdict after all of them;
        # target arrays are checked once per chunk (3 chunks), before its passes
        assert stub.transfers == (2 if isinstance(target, (str, int)) else 5), f"target {ref_target!r}"
        got = got.to_numpy()
        numpy.testing.assert_allclose(got.relevance, ref.relevance, rtol=1e-10, atol=1e-12)
        assert set(got.intermediate) == {"input", model.nodes[2].name}


def test_toolbox_lrp_never_synchronises(device):
    model, shape = NETS["cnn_sumpool"]
    x = numpy.random.default_rng(6).uniform(-1, 1, shape)
    ref_y = model.forward(x)
    ref = model.lrp(ref_y, "alphabeta", 2.0)
    y = model.forward(to_device(x))
    stub.transfers = 0
    r = model.lrp(y, "alphabeta", 2.0)  # any implicit read inside the pass raises HostSync
    r_eps = model.lrp(y, "epsilon", 0.01)
    assert stub.transfers == 2  # per call one explicit read: the finiteness verdict, after the backward pass
    numpy.testing.assert_allclose(r.get(), ref, rtol=1e-10, atol=1e-12)
    assert r_eps.shape == x.shape
