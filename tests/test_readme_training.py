"""The README's training example on the toolbox's LeNet-5: it trains, and the old form stops early with advice."""
from __future__ import annotations

import math
import re
import pathlib

import numpy
import pytest

import lrpflow
from lrpflow.train import TrainingDivergedError

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_trains_through_a_softmax():
    text = README.read_text()
    assert "lrpflow.layers.SoftMax()" in text and "drop_softmax_output_layer()" in text
    assert re.search(r"nn\.train\(X, Y, Xval, Yval, batchsize=64, iters=1000, lrate=0\.01\)", text)


def test_lenet5_trains_with_the_readme_recipe(shared, mnist):
    x, y = mnist
    nn = lrpflow.Sequential([*lrpflow.load_model(str(shared / "models" / "MNIST" / "LeNet-5.txt")).modules,
                             lrpflow.layers.SoftMax()])
    result = nn.train(x[:256], y[:256], x[9000:9200], y[9000:9200], batchsize=64, iters=6, lrate=0.01, status=3,
                      rng=0, progress=False)
    assert all(math.isfinite(h[1]) for h in result.history)
    assert result.best_loss <= result.initial_loss and result.best_accuracy >= 0.98
    nn.drop_softmax_output_layer()
    assert nn.modules[-1].role != "softmax"


def test_lenet5_without_softmax_stops_at_the_first_nan(shared, mnist):
    # the README's former example: squared error on LeNet-5's logits diverges at lrate=0.01
    x, y = mnist
    nn = lrpflow.load_model(str(shared / "models" / "MNIST" / "LeNet-5.txt"))
    w0 = nn.modules[0].weight.copy()
    with pytest.raises(TrainingDivergedError, match=r"try lrate=0\.001"):
        nn.train(x[:640], y[:640], x[9000:9100], y[9000:9100], batchsize=64, iters=1000, lrate=0.01, status=250,
                 rng=0, progress=False)
    numpy.testing.assert_array_equal(nn.modules[0].weight, w0)  # the starting parameters are back
