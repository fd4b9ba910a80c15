"""Explainer.forward on a large batch runs in row chunks on the worker threads (like explain(x)).

``explain(trace=forward(x))`` must give exactly what ``explain(x)`` gives, and explain the
chunks the forward pass ran instead of re-slicing one single-threaded trace.
"""
from __future__ import annotations

import numpy
import pytest

import lrpflow
from lrpflow.explain import ChunkedTrace, Explainer


@pytest.fixture
def net():
    return lrpflow.Sequential([lrpflow.layers.Conv2d(3, 3, 1, 4, rng=0), lrpflow.layers.ReLU(),
                               lrpflow.layers.MaxPool(2, 2), lrpflow.layers.Flatten(),
                               lrpflow.layers.Linear(4 * 3 * 3, 5, rng=1)])


def test_forward_of_a_chunked_batch_is_explained_chunk_by_chunk(net, rng):
    x = rng.uniform(-1, 1, (64, 8, 8, 1)).astype(numpy.float32)
    exp = Explainer(net, rule="epsilon", epsilon=0.01, chunk_size=16, workers=2)
    trace = exp.forward(x)
    assert isinstance(trace, ChunkedTrace) and [(s.start, s.stop) for s, _ in trace.parts] == \
        [(0, 16), (16, 32), (32, 48), (48, 64)]
    direct, reused = exp.explain(x), exp.explain(trace=trace)
    for key in ("relevance", "logits", "target", "r_init", "conservation"):
        numpy.testing.assert_array_equal(getattr(reused, key), getattr(direct, key), err_msg=key)
    for name, entry in direct.ledger.items():
        numpy.testing.assert_array_equal(reused.ledger[name].entering, entry.entering)
    # whole-batch activations read from the chunked trace equal one unchunked forward pass
    _, whole = net.run(x, upto=net.logits_node)
    assert trace.input is not None and trace.input.shape == x.shape
    for name in whole.values:
        assert name in trace
        numpy.testing.assert_allclose(trace[name], whole[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # other rules, targets and a slice that is not a chunk reuse it too
    ab = exp.explain(trace=trace, rule="alpha_beta", alpha=2, beta=1, target=3)
    numpy.testing.assert_array_equal(ab.relevance, exp.explain(x, rule="alpha_beta", alpha=2, beta=1, target=3).relevance)
    part = trace.rows(slice(8, 40))
    numpy.testing.assert_array_equal(part.logits, whole.logits[8:40])
    small = Explainer(net, rule="epsilon", epsilon=0.01, workers=1)  # one chunk: a plain trace, as before
    assert not isinstance(small.forward(x[:8]), ChunkedTrace)
