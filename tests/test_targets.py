"""Several targets at once: one map per target from one forward pass, equal to K separate explanations."""
from __future__ import annotations

import numpy
import pytest

import lrpflow
from lrpflow.errors import ConfigError

import nets


def _count_forwards(model, monkeypatch):
    calls = []
    run = model.run

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return run(x, *args, **kwargs)

    monkeypatch.setattr(model, "run", counting)
    return calls


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_each_topk_equals_separate_explanations(rng, monkeypatch, chunk_size):
    model = nets.randomize_biases(nets.cnn(rng, classes=5), rng, scale=0.2)
    x = rng.normal(0, 1, (7, 10, 10, 2))
    exp = lrpflow.Explainer(model, composite="epsilon_gamma_box", low=-3.0, high=3.0, dtype="float64",
                            chunk_size=chunk_size, workers=2)
    calls = _count_forwards(model, monkeypatch)
    out = exp.explain(x, target="each:topk:3")
    assert sum(calls) == 7  # ONE forward pass over every row (run in the explainer's row chunks), not one per target
    top = numpy.argsort(-out.logits, axis=1, kind="stable")[:, :3]
    assert out.relevance.shape == (7, 3, 10, 10, 2) and out.target.shape == (7, 3)
    numpy.testing.assert_array_equal(out.target, top)
    assert out.r_init.shape == (7, 3, 5) and out.conservation.shape == (7, 3) and out.logits.shape == (7, 5)
    for k in range(3):
        one = lrpflow.explain(model, x, composite="epsilon_gamma_box", low=-3.0, high=3.0, dtype="float64",
                              target=top[:, k])
        numpy.testing.assert_array_equal(out.relevance[:, k], one.relevance)
        numpy.testing.assert_array_equal(out.conservation[:, k], one.conservation)
        for node, entry in one.ledger.items():
            numpy.testing.assert_array_equal(out.ledger[node].entering[:, k], entry.entering)
    # the sum of the K maps is topk:K's map (its meaning is unchanged: the sum)
    summed = lrpflow.explain(model, x, composite="epsilon_gamma_box", low=-3.0, high=3.0, dtype="float64",
                             target="topk:3")
    assert summed.relevance.shape == x.shape
    numpy.testing.assert_allclose(out.relevance.sum(axis=1), summed.relevance, rtol=1e-10, atol=1e-12)


def test_targets_list_mixes_specs(rng):
    model = nets.randomize_biases(nets.mlp(rng, sizes=(6, 8, 5, 4)), rng)
    x = rng.normal(0, 1, (5, 6))
    labels = numpy.array([0, 1, 2, 3, 0])
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, dtype="float64", labels=labels,
                          targets=["pred", 2, "true"])
    assert out.relevance.shape == (5, 3, 6)
    for k, t in enumerate(["pred", 2, "true"]):
        one = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, dtype="float64", labels=labels, target=t)
        numpy.testing.assert_array_equal(out.relevance[:, k], one.relevance)
        numpy.testing.assert_array_equal(out.target[:, k], one.target)
    numpy.testing.assert_array_equal(out.target[:, 2], labels)


@pytest.mark.parametrize("kwargs,word", [
    ({"targets": []}, "non-empty"),
    ({"targets": "pred"}, "non-empty"),
    ({"targets": ["topk:2"]}, "not a single target"),
    ({"target": "each:topk:9"}, "K must be between"),
])
def test_bad_multi_targets(rng, kwargs, word):
    model = nets.mlp(rng)
    with pytest.raises(ConfigError, match=word):
        lrpflow.explain(model, rng.normal(0, 1, (2, 6)), rule="epsilon", **kwargs)
