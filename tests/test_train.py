"""lrpflow.train: exact gradients, SGD as the toolbox's Sequential.train, evaluation, validation."""
from __future__ import annotations

import io
import logging
import math

import numpy
import pytest

import lrpflow
from lrpflow.errors import ConfigError, DataFormatError, LrpflowError, ShapeError
from lrpflow.graph import Model, Node
from lrpflow.layers import (
    Add, Concat, Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh,
)
from lrpflow.progress import ProgressBar
from lrpflow.train import TrainingDivergedError, TrainResult, gradients, score, train


# -- models and data -------------------------------------------------------------------

def randomize_biases(model, rng):
    for layer in model.layers:
        if "bias" in layer.param_names:
            layer.set_params(bias=rng.normal(0, 0.3, layer.bias.shape))
    return model


def mlp(rng):
    return lrpflow.Sequential([Linear(4, 6, rng=rng), Tanh(), Linear(6, 5, rng=rng), ReLU(), Linear(5, 3, rng=rng)])


def mlp_softmax(rng):
    return lrpflow.Sequential([Linear(4, 6, rng=rng), Tanh(), Linear(6, 3, rng=rng), SoftMax()])


def cnn_sumpool(rng):
    return lrpflow.Sequential([Conv2d(3, 3, 2, 3, rng=rng), ReLU(), SumPool(2, 2), Flatten(), Linear(12, 3, rng=rng)],
                              input_shape=(6, 6, 2))


def cnn_maxpool(rng):
    return lrpflow.Sequential([Conv2d(3, 3, 2, 3, stride=2, padding=1, rng=rng), Tanh(), MaxPool(2, 2), Flatten(),
                               Linear(12, 3, rng=rng)], input_shape=(7, 7, 2))


def dag(rng):
    """``h`` feeds three consumers (b, the Add and the Concat): their gradients must add up."""
    return Model([
        Node("a", Linear(4, 5, rng=rng), ("input",)),
        Node("h", Tanh(), ("a",)),
        Node("b", Linear(5, 5, rng=rng), ("h",)),
        Node("add", Add(), ("b", "h")),
        Node("cat", Concat(), ("add", "h")),
        Node("c", Linear(10, 3, rng=rng), ("cat",)),
    ])


MODELS = {"mlp": (mlp, (4,)), "mlp_softmax": (mlp_softmax, (4,)), "cnn_sumpool": (cnn_sumpool, (6, 6, 2)),
          "cnn_maxpool": (cnn_maxpool, (7, 7, 2)), "dag": (dag, (4,))}


def xor_data(rng, n):
    """Two classes by the sign of x0·x1 (XOR), one-hot, with a margin around the axes."""
    x = rng.uniform(-1, 1, (4 * n, 2))
    x = x[numpy.abs(x).min(axis=1) > 0.1][:n]
    labels = (x[:, 0] * x[:, 1] > 0).astype(numpy.int64)
    return x, labels, numpy.eye(2)[labels]


def xor_net(seed=0):
    return lrpflow.Sequential([Linear(2, 8, rng=seed), Tanh(), Linear(8, 8, rng=seed + 1), ReLU(),
                               Linear(8, 2, rng=seed + 2), SoftMax()])


def linear_data(rng, n=16):
    x = rng.normal(size=(n, 3))
    labels = rng.integers(0, 2, n)
    return x, labels, numpy.eye(2)[labels]


# -- gradients ------------------------------------------------------------------------

def numeric_gradients(model, x, grad_y, loss=None, h=1e-5):
    """Central differences of ``loss(model(x))`` (default ``Σ grad_y ⊙ y``) for every parameter entry."""
    loss = loss or (lambda y: float((grad_y * y).sum()))
    out = {}
    for node in model.nodes:
        if not node.layer.param_names or node.layer.type_name not in ("Linear", "Conv2d"):
            continue
        for name, p in node.layer.params().items():
            g = numpy.zeros_like(p)
            for i in numpy.ndindex(p.shape):
                old = p[i]
                p[i] = old + h
                node.layer.invalidate()
                up = loss(model.run(x)[0])
                p[i] = old - h
                node.layer.invalidate()
                down = loss(model.run(x)[0])
                p[i] = old
                node.layer.invalidate()
                g[i] = (up - down) / (2 * h)
            out[(node.name, name)] = g
    return out


def assert_grads_close(got, want, rel=1e-6):
    assert set(got) == set(want)
    for key, g in want.items():
        err = numpy.abs(got[key] - g).max() / max(numpy.abs(g).max(), 1e-12)
        assert err < rel, (key, err)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_finite_differences(name, rng):
    make, shape = MODELS[name]
    model = randomize_biases(make(rng), rng)
    x = rng.normal(size=(3, *shape))
    grad_y = rng.normal(size=model.run(x)[0].shape)
    got = gradients(model, x, grad_y)
    assert all(g.dtype == numpy.float64 for g in got.values())
    assert_grads_close(got, numeric_gradients(model, x, grad_y))


def test_softmax_passthrough_is_the_cross_entropy_gradient(rng):
    """The toolbox's signal y − Y, passed through the output SoftMax, is ∂(−Σ Y log y)/∂θ."""
    model = randomize_biases(mlp_softmax(rng), rng)
    x = rng.normal(size=(5, 4))
    target = numpy.eye(3)[rng.integers(0, 3, 5)]
    got = gradients(model, x, model.run(x)[0] - target, softmax_passthrough=True)
    cross_entropy = lambda y: float(-(target * numpy.log(y)).sum())  # noqa: E731
    assert_grads_close(got, numeric_gradients(model, x, None, loss=cross_entropy))


def test_gradients_reject_a_misshapen_output_gradient(rng):
    model = mlp(rng)
    with pytest.raises(ShapeError, match="grad_y"):
        gradients(model, rng.normal(size=(2, 4)), numpy.zeros((2, 4)))


def test_shared_layer_gets_the_summed_gradient(rng):
    """One Linear used by two nodes is updated once with the sum of both nodes' gradients."""
    shared = Linear(3, 3, rng=rng)
    model = Model([Node("l1", shared), Node("t", Tanh(), ("l1",)), Node("l2", shared, ("t",)),
                   Node("out", Linear(3, 2, rng=rng), ("l2",))])
    x, _, y = linear_data(rng, 8)
    w0 = shared.weight.copy()
    g = gradients(model, x, model.run(x)[0] - y)
    train(model, x, y, batchsize=8, iters=1, lrate=0.1, status=10, progress=False)
    want = w0 - 0.1 * (g[("l1", "weight")] + g[("l2", "weight")]) / 8
    numpy.testing.assert_allclose(shared.weight, want, rtol=1e-12, atol=1e-14)


# -- the SGD step, decay and restore ---------------------------------------------------

@pytest.mark.parametrize("decay, factor_of", [(None, lambda a: None), ("none", lambda a: None),
                                              ("linear", lambda a: 1 - a), ("sublinear", lambda a: 1 - a * a)])
def test_sgd_steps_decay_and_restore_replicate_the_toolbox(decay, factor_of, rng):
    """Full-batch steps on one Linear layer (squared error), replayed by hand."""
    x, _, y = linear_data(rng)
    n = x.shape[0]
    w0, b0 = rng.normal(size=(3, 2)), rng.normal(size=2)
    model = lrpflow.Sequential([Linear(3, 2, weight=w0.copy(), bias=b0.copy())])
    lrate, lfactor = 0.3, 0.5
    result = train(model, x, y, batchsize=n, iters=2, lrate=lrate, lrate_decay=decay, lfactor_initial=lfactor,
                   status=1, progress=False)

    def step(w, b, factor):
        delta = x @ w + b - y
        return w - lrate * factor * x.T @ delta / n, b - lrate * factor * delta.sum(axis=0) / n

    def measure(w, b):
        ypred = x @ w + b
        return numpy.abs(ypred - y).sum() / n, (ypred.argmax(1) == y.argmax(1)).mean()

    w1, b1 = step(w0, b0, lfactor)
    loss1, acc1 = measure(w1, b1)
    factor = factor_of(acc1)
    assert factor is None or abs(factor - lfactor) > 0.05  # the data tells the decays apart
    w2, b2 = step(w1, b1, lfactor if factor is None else factor)
    loss2, acc2 = measure(w2, b2)
    assert [h[0] for h in result.history] == [1, 2]
    numpy.testing.assert_allclose([h[1] for h in result.history], [loss1, loss2], rtol=1e-12)
    assert [h[2] for h in result.history] == [acc1, acc2]
    best = 2 if loss2 < loss1 else 1
    assert result.best_iteration == best and result.iterations_run == 2
    numpy.testing.assert_allclose(model.modules[0].weight, (w2 if best == 2 else w1), rtol=1e-12, atol=1e-14)


def test_convergence_stops_after_evaluations_without_improvement(rng):
    x, _, y = linear_data(rng)
    # a step of 1e-300 leaves every parameter bit-identical: no evaluation after the first improves
    kwargs = dict(batchsize=4, iters=50, lrate=1e-300, status=1, progress=False, rng=0)
    first = train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, convergence=1, **kwargs)
    assert first.iterations_run == 2 < 50 and len(first.history) == 2 and first.best_iteration == 1
    third = train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, convergence=3, **kwargs)
    assert third.iterations_run == 4 and len(third.history) == 4
    off = train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, convergence=-1, **kwargs)
    assert off.iterations_run == 50 and len(off.history) == 50


def test_without_evaluation_the_last_parameters_stay(rng):
    x, _, y = linear_data(rng)
    model = lrpflow.Sequential([Linear(3, 2, rng=1)])
    w0 = model.modules[0].weight.copy()
    result = train(model, x, y, batchsize=4, iters=3, lrate=0.1, status=10, progress=False)
    assert result.best_iteration is None and result.best_loss is None and result.history == []
    assert result.iterations_run == 3 and not numpy.array_equal(model.modules[0].weight, w0)


# -- training end to end ----------------------------------------------------------------

def test_xor_mlp_reaches_high_accuracy_and_restores_the_best(rng, caplog):
    x, labels, y = xor_data(rng, 400)
    xval, _, yval = xor_data(rng, 200)
    model = xor_net()
    with caplog.at_level(logging.INFO, logger="lrpflow.train"):
        result = train(model, x, y, xval, yval, batchsize=20, iters=3000, lrate=0.5, status=250, rng=1,
                       progress=False)
    assert isinstance(result, TrainResult) and result.iterations_run == 3000
    assert [h[0] for h in result.history] == list(range(250, 3001, 250))
    assert result.best_loss == min(h[1] for h in result.history)
    assert (result.best_iteration, result.best_loss, result.best_accuracy) in result.history
    assert result.best_accuracy >= 0.95 and result.seconds > 0
    loss, acc = score(model, xval, yval)
    assert abs(loss - result.best_loss) <= 1e-12 and acc == result.best_accuracy
    assert (model.predict(x).argmax(axis=1) == labels).mean() >= 0.95
    assert any("validation data" in r.getMessage() for r in caplog.records)
    assert any("restored the parameters" in r.getMessage() for r in caplog.records)


def test_sequential_train_toolbox_surface(rng):
    """``nn.train(X, Y, Xval, Yval, batchsize=..., iters=..., lrate=...)`` as a toolbox script writes it."""
    x, _, y = xor_data(rng, 300)
    xval, _, yval = xor_data(rng, 100)
    nn = xor_net(3)
    result = nn.train(x, y, xval, yval, batchsize=25, iters=2000, lrate=0.5, lrate_decay="sublinear", status=200,
                      progress=False, rng=2)
    assert result.best_accuracy >= 0.95
    ypred = nn.forward(xval)
    assert (ypred.argmax(1) == yval.argmax(1)).mean() == result.best_accuracy


def test_integer_labels_equal_one_hot(rng):
    x, labels, y = xor_data(rng, 100)
    a, b = xor_net(), xor_net()
    ra = train(a, x, y, batchsize=10, iters=40, lrate=0.1, status=10, rng=5, progress=False)
    rb = train(b, x, labels, batchsize=10, iters=40, lrate=0.1, status=10, rng=5, progress=False)
    assert ra.history == rb.history
    for la, lb in zip(a.layers, b.layers):
        for k in la.param_names:
            numpy.testing.assert_array_equal(getattr(la, k), getattr(lb, k))


def test_dag_model_trains(rng):
    x, labels = rng.normal(size=(200, 4)), None
    labels = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = Model([*dag(rng).nodes[:-1], Node("c", Linear(10, 2, rng=rng), ("cat",)), Node("p", SoftMax(), ("c",))])
    result = train(model, x, labels, batchsize=20, iters=600, lrate=0.5, status=100, rng=0, progress=False)
    assert result.best_accuracy >= 0.95


def test_float32_training_keeps_caller_arrays_and_dtypes(rng):
    x, _, y = xor_data(rng, 200)
    w0 = numpy.random.default_rng(1).normal(size=(2, 8)) / 2
    keep = w0.copy()
    model = lrpflow.Sequential([Linear(2, 8, weight=w0), Tanh(), Linear(8, 2, rng=2), SoftMax()])
    result = train(model, x.astype(numpy.float32), y, batchsize=20, iters=200, lrate=0.5, status=50, progress=False)
    assert numpy.array_equal(w0, keep)  # the caller's array was not updated in place
    assert model.modules[0].weight.dtype == numpy.float64 and not numpy.array_equal(model.modules[0].weight, w0)
    assert all(math.isfinite(h[1]) for h in result.history)
    loss, _ = score(model, x.astype(numpy.float32), y)
    assert abs(loss - result.best_loss) < 1e-12


def test_transform_and_rng(rng):
    x, _, y = linear_data(rng)
    seen = []

    def transform(batch):
        seen.append(batch.shape)
        return batch + 0.01

    runs = [train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, batchsize=4, iters=5, lrate=0.1, status=1,
                  transform=transform, rng=7, progress=False) for _ in range(2)]
    assert seen == [(4, 3)] * 10
    assert runs[0].history == runs[1].history


def test_progress_bar_only_on_a_terminal(rng, capsys):
    x, _, y = linear_data(rng)
    train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, batchsize=4, iters=20, lrate=0.1, status=10)
    err = capsys.readouterr().err
    assert "\r" not in err and "20/20" not in err  # stderr is captured here, not a terminal: no bar
    stream = io.StringIO()
    bar = ProgressBar(20, label="training", stream=stream, force=True)
    for _ in range(19):
        bar.update(1)
    bar.draw(20, "loss 0.5 lrate 0.1")  # draw() redraws now
    drawn = stream.getvalue()
    bar.close()
    assert "\r" in drawn and "20/20" in drawn and "loss 0.5 lrate 0.1" in drawn and "training" in drawn
    assert not ProgressBar(5, stream=io.StringIO()).enabled and not ProgressBar(5, False, force=True).enabled


def test_divergence_stops_with_a_suggested_learning_rate(rng):
    x, _, y = linear_data(rng)
    model = lrpflow.Sequential([Linear(3, 2, rng=1)])
    w0 = model.modules[0].weight.copy()
    with pytest.raises(TrainingDivergedError, match=r"lrate=1e\+30; try lrate=1e\+29") as err:
        train(model, x * 1e3, y, batchsize=4, iters=1000, lrate=1e30, status=1, progress=False)
    assert isinstance(err.value, LrpflowError) and "iteration" in str(err.value)
    assert int(str(err.value).split("iteration ")[1].split(":")[0]) < 50  # stopped early, not after 1000 steps
    numpy.testing.assert_array_equal(model.modules[0].weight, w0)  # the starting parameters are back


def test_never_restores_parameters_worse_than_the_start(rng):
    x, _, y = linear_data(rng)
    good = lrpflow.Sequential([Linear(3, 2, rng=1)])
    train(good, x, y, batchsize=len(x), iters=300, lrate=0.1, status=300, progress=False)
    w_good = good.modules[0].weight.copy()
    start_loss, _ = score(good, x, y)
    # training on flipped labels, scored on the true ones: every evaluation is worse than the start
    result = train(good, x, y[:, ::-1], x, y, batchsize=len(x), iters=3, lrate=0.5, status=1, progress=False)
    assert all(h[1] > start_loss for h in result.history)  # every evaluation was worse than the start
    assert result.best_iteration == 0 and result.best_loss == pytest.approx(start_loss, rel=1e-12)
    assert result.initial_loss == pytest.approx(start_loss, rel=1e-12)
    numpy.testing.assert_array_equal(good.modules[0].weight, w_good)


def test_score_in_batches_equals_whole(rng):
    model = randomize_biases(mlp_softmax(rng), rng)
    x = rng.normal(size=(37, 4))
    labels = rng.integers(0, 3, 37)
    whole = score(model, x, labels, batchsize=1000)
    parts = score(model, x, numpy.eye(3)[labels], batchsize=5)
    assert whole[1] == parts[1] and abs(whole[0] - parts[0]) < 1e-12
    y = model.run(x)[0]
    assert abs(whole[0] - numpy.abs(y - numpy.eye(3)[labels]).sum() / 37) < 1e-12


# -- bad inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batchsize=0), ConfigError, "batchsize"),
    (dict(batchsize=17), ConfigError, "batchsize"),
    (dict(batchsize=2.5), ConfigError, "batchsize"),
    (dict(iters=0), ConfigError, "iters"),
    (dict(lrate=0.0), ConfigError, "lrate"),
    (dict(lrate=-1.0), ConfigError, "lrate"),
    (dict(lrate=float("nan")), ConfigError, "lrate"),
    (dict(lrate=float("inf")), ConfigError, "lrate"),
    (dict(lrate_decay="exponential"), ConfigError, "lrate_decay"),
    (dict(status=0), ConfigError, "status"),
    (dict(lfactor_initial=0), ConfigError, "lfactor_initial"),
    (dict(transform=3), ConfigError, "transform"),
])
def test_bad_configuration_raises(kwargs, error, match, rng):
    x, _, y = linear_data(rng)
    with pytest.raises(error, match=match):
        train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, progress=False, **kwargs)


def _bad_data(rng):
    x, labels, y = linear_data(rng)
    nan_x, inf_y = x.copy(), y.copy()
    nan_x[3, 1] = numpy.nan
    inf_y[2, 0] = numpy.inf
    return {
        "rows": (x, y[:-1], None, None, ShapeError, "Y has 15 rows"),
        "columns": (x, numpy.eye(3)[labels], None, None, ShapeError, "Y has 3 columns"),
        "features": (x[:, :2], y, None, None, ShapeError, "X"),
        "nan_x": (nan_x, y, None, None, DataFormatError, "X contains NaN"),
        "inf_y": (x, inf_y, None, None, DataFormatError, "Y contains NaN or Inf"),
        "nan_xval": (x, y, nan_x, y, DataFormatError, "Xval contains NaN"),
        "yval_rows": (x, y, x, y[:3], ShapeError, "Yval has 3 rows"),
        "only_xval": (x, y, x, None, ConfigError, "Xval and Yval"),
        "int_x": (x.astype(int), y, None, None, DataFormatError, "X must hold floating-point"),
        "label_range": (x, labels + 5, None, None, DataFormatError, "labels must lie in 0..1"),
        "fractional_labels": (x, labels + 0.5, None, None, DataFormatError, "non-integer"),
    }


@pytest.mark.parametrize("case", list(_bad_data(numpy.random.default_rng(0))))
def test_bad_data_raises(case, rng):
    x, y, xval, yval, error, match = _bad_data(rng)[case]
    with pytest.raises(error, match=match):
        train(lrpflow.Sequential([Linear(3, 2, rng=1)]), x, y, xval, yval, batchsize=4, progress=False)


# -- numpy and cupy ---------------------------------------------------------------------

def test_backends_agree(xp, rng):
    """One body on numpy and (with a GPU) cupy: gradients agree and training runs on the data's backend."""
    from lrpflow.backend import to_numpy

    model = randomize_biases(cnn_maxpool(rng), rng)
    x = rng.normal(size=(3, 7, 7, 2))
    grad_y = rng.normal(size=(3, 3))
    want = gradients(model, x, grad_y)
    got = gradients(model, xp.asarray(x), xp.asarray(grad_y))
    for key, g in want.items():
        numpy.testing.assert_allclose(to_numpy(got[key]), g, rtol=1e-10, atol=1e-12)

    data, _, y = xor_data(rng, 200)
    net = xor_net()
    result = train(net, xp.asarray(data, dtype=xp.float32), xp.asarray(y), batchsize=20, iters=300, lrate=0.5,
                   status=100, rng=0, progress=False)
    assert len(result.history) == 3 and all(math.isfinite(h[1]) for h in result.history)
    assert isinstance(net.modules[0].weight, numpy.ndarray) and net.modules[0].weight.dtype == numpy.float64
