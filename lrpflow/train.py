"""Minibatch SGD training of a model: the LRP Toolbox's ``Sequential.train``, with a progress bar.

``train(model, X, Y, ...)`` draws random minibatches, back-propagates the toolbox's error
signal ``y − Y`` through the model's nodes (any DAG) with each layer's ``vjp`` and
``param_grads``, takes a plain SGD step, evaluates every ``status`` iterations and
restores the best parameters at the end. :func:`gradients` exposes the backward pass.
"""
from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.errors import ConfigError, DataFormatError, LrpflowError, ShapeError
from lrpflow.graph import Model, Node, Sequential, Trace
from lrpflow.layers.base import Layer
from lrpflow.progress import ProgressBar, clock

logger = logging.getLogger("lrpflow.train")

#: ``lrate_decay`` name → the learning factor set when a new best is found, as a function of its accuracy
DECAYS: Mapping[str, Callable[[float], float] | None] = {
    "none": None,
    "sublinear": lambda acc: 1.0 - acc * acc,
    "linear": lambda acc: 1.0 - acc,
}


class TrainingDivergedError(LrpflowError, FloatingPointError):
    """Training produced a non-finite loss (NaN/Inf): the learning rate is too large for the model."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    ``best_*`` describe the evaluation whose parameters the model holds after training;
    they are None when no evaluation happened (``iters < status``): the model then keeps
    its last parameters. ``best_iteration == 0`` means no evaluation beat the starting
    parameters, which were restored (``initial_*`` is their score).
    """

    best_iteration: int | None  #: iteration (1-based) of the best evaluation
    best_loss: float | None  #: its l1-loss ``Σ|Ypred − Y| / N``
    best_accuracy: float | None  #: its accuracy (argmax agreement)
    iterations_run: int  #: SGD steps taken (< iters when convergence stopped early)
    history: list[tuple[int, float, float]] = field(default_factory=list)  #: (iteration, loss, accuracy) per evaluation
    seconds: float = 0.0  #: wall-clock time of the whole call
    initial_loss: float | None = None  #: l1-loss of the starting parameters (None without evaluations)
    initial_accuracy: float | None = None  #: accuracy of the starting parameters


# -- the backward pass ----------------------------------------------------------

def is_trainable(layer: Any) -> bool:
    """True if the layer has parameters and computes their gradients (overrides ``param_grads``).

    Layers with parameters but no ``param_grads`` (BatchNorm at inference) stay frozen.
    """
    impl = getattr(type(layer), "param_grads", Layer.param_grads)
    return bool(getattr(layer, "param_names", ())) and impl is not Layer.param_grads


def _needs_grad(nodes: Sequence[Node]) -> set[str]:
    """Nodes whose output gradient matters: trainable ones and those fed by one."""
    needs: set[str] = set()
    for node in nodes:
        if is_trainable(node.layer) or any(i in needs for i in node.inputs):
            needs.add(node.name)
    return needs


def backward(model: Model, trace: Trace, grad_y: Any, *, softmax_passthrough: bool = False) -> dict[tuple[str, str], Any]:
    """Parameter gradients for the output gradient ``grad_y`` of a recorded forward pass.

    Parameters
    ----------
    model : Model
    trace : Trace
        The forward pass (``model.run(x)``); ``trace.output`` is the node ``grad_y`` belongs to.
    grad_y : array
        ``∂L/∂y`` at the output, shaped like it.
    softmax_passthrough : bool
        If the output node is a SoftMax, hand ``grad_y`` to its input unchanged (the toolbox's
        ``SoftMax.backward``), so that ``grad_y = y − Y`` is the cross-entropy gradient w.r.t.
        the logits. SoftMax layers elsewhere always use their true vjp.

    Returns
    -------
    dict
        ``(node name, parameter name) → ∂L/∂p``, summed over the batch, in the dtype and on
        the backend of the trace. A layer used by several nodes appears once per node.

    Notes
    -----
    Nodes are visited in reverse topological order; the gradient of a node's output is the
    sum over its consumers, ``∂L/∂x_i = Σ_{j ∈ consumers(i)} vjp_j(∂L/∂x_j)``. Nodes with no
    trainable layer upstream (e.g. the model input) are skipped.
    """
    nodes = model.ancestors(trace.output)
    needs = _needs_grad(nodes)
    pending: dict[str, Any] = {trace.output: grad_y}
    out: dict[tuple[str, str], Any] = {}
    for node in reversed(nodes):
        g = pending.pop(node.name, None)
        if g is None or node.name not in needs:
            continue
        layer = node.layer
        xs = trace.inputs_of(node)
        if is_trainable(layer):
            for k, v in layer.param_grads(xs, g).items():
                out[(node.name, k)] = v
        if not any(i in needs for i in node.inputs):
            continue
        if softmax_passthrough and node.name == trace.output and getattr(layer, "role", None) == "softmax":
            grads_in = [g]
        else:
            grads_in = layer.vjp(xs, trace[node.name], g)
        for i, gi in zip(node.inputs, grads_in):
            if i in needs:  # never in place: a vjp may hand one array to several inputs (Add)
                pending[i] = gi if i not in pending else pending[i] + gi
    return out


def gradients(model: Model, x: Any, grad_y: Any, *, softmax_passthrough: bool = False) -> dict[tuple[str, str], Any]:
    """Parameter gradients of ``L = Σ grad_y ⊙ model(x)``: forward pass plus :func:`backward`.

    Returns ``(node name, parameter name) → ∂L/∂p`` (summed over the batch, in x's dtype).
    """
    y, trace = model.run(x)
    if tuple(grad_y.shape) != tuple(y.shape):
        raise ShapeError(f"grad_y must have the shape of the model output {tuple(y.shape)}, got {tuple(grad_y.shape)}")
    return backward(model, trace, grad_y, softmax_passthrough=softmax_passthrough)


# -- evaluation -------------------------------------------------------------------

def score(model: Model, X: Any, Y: Any, *, batchsize: int = 1024) -> tuple[float, float]:
    """``(l1-loss, accuracy)`` of the model on (X, Y), computed in batches of ``batchsize``.

    ``Y`` is one-hot (N, C), or integer labels (N,) that are converted to one-hot; it is
    compared with the outputs in X's dtype.

    Notes
    -----
    The toolbox's measures: ``loss = Σ_n Σ_c |ŷ_nc − Y_nc| / N`` (summed in float64) and
    ``accuracy = mean_n [argmax ŷ_n = argmax Y_n]``.
    """
    xp = get_namespace(X)
    n = X.shape[0]
    if n == 0:
        raise ShapeError("X must hold at least one sample")
    if getattr(Y, "ndim", None) != 2 or get_namespace(Y) is not xp:
        classes = model.run(X[:1])[0].shape[-1]
        Y = _check_targets(Y, n, classes, xp, X.dtype, "Y", "X")
    Y = Y.astype(X.dtype, copy=False)  # compare in X's dtype, as train() does
    loss: Any = 0.0
    hits: Any = 0
    for i in range(0, n, batchsize):
        y = model.run(X[i : i + batchsize])[0]
        t = Y[i : i + batchsize]
        loss = loss + xp.abs(y - t).sum(dtype=xp.float64)
        hits = hits + (y.argmax(axis=1) == t.argmax(axis=1)).sum()
    return float(loss) / n, float(hits) / n


# -- validation and conversion --------------------------------------------------------

def _copy_to(a: Any, xp: ModuleType, dtype: Any) -> Any:
    """A fresh copy of ``a`` on the backend ``xp`` in ``dtype``."""
    return xp.array(to_numpy(a) if xp is numpy else a, dtype=dtype)


def _int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be {bounds}, got {value}")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _given(a: Any) -> bool:
    """The toolbox's 'not given' is an empty list; lrpflow's is None."""
    return a is not None and len(a) > 0


def _check_inputs(model: Model, X: Any, name: str) -> Any:
    if not hasattr(X, "shape"):
        X = numpy.asarray(X)
    if X.ndim < 2 or X.shape[0] == 0:
        raise ShapeError(f"{name} must be a non-empty batch (N, ...), got shape {tuple(X.shape)}")
    if numpy.dtype(X.dtype).kind != "f":
        raise DataFormatError(f"{name} must hold floating-point numbers (training computes in its dtype), "
                              f"got {numpy.dtype(X.dtype).name}; cast it, e.g. {name}.astype('float32')")
    if not bool(get_namespace(X).isfinite(X).all()):
        raise DataFormatError(f"{name} contains NaN or Inf")
    try:
        model.check_input(X[:1])
    except ShapeError as err:
        raise ShapeError(f"{name}: {err}") from err
    return X


def _check_targets(Y: Any, n: int, classes: int, xp: ModuleType, dtype: Any, name: str, xname: str) -> Any:
    """One-hot (n, classes) targets in ``xp``/``dtype`` from one-hot rows or an integer label vector."""
    if not hasattr(Y, "shape"):
        Y = numpy.asarray(Y)
    if Y.ndim not in (1, 2):
        raise ShapeError(f"{name} must be one-hot (N, C) or labels (N,), got shape {tuple(Y.shape)}")
    if Y.shape[0] != n:
        raise ShapeError(f"{name} has {Y.shape[0]} rows but {xname} has {n} samples")
    if Y.ndim == 2:
        if Y.shape[1] != classes:
            raise ShapeError(f"{name} has {Y.shape[1]} columns but the model has {classes} outputs")
        if numpy.dtype(Y.dtype).kind not in "biuf":
            raise DataFormatError(f"{name} must be numeric, got {numpy.dtype(Y.dtype).name}")
        Y = xp.asarray(to_numpy(Y)) if xp is numpy else xp.asarray(Y)
        Y = Y.astype(dtype, copy=False)
        if not bool(xp.isfinite(Y).all()):
            raise DataFormatError(f"{name} contains NaN or Inf")
        return Y
    labels = to_numpy(Y)
    if labels.dtype.kind == "f":
        if not numpy.isfinite(labels).all():
            raise DataFormatError(f"{name} contains NaN or Inf")
        if (labels != numpy.round(labels)).any():
            raise DataFormatError(f"{name} is a label vector but holds non-integer values")
    elif labels.dtype.kind not in "iu":
        raise DataFormatError(f"{name} is a label vector but has dtype {labels.dtype.name}; expected integers")
    labels = labels.astype(numpy.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataFormatError(f"{name}: labels must lie in 0..{classes - 1} (the model has {classes} outputs), "
                              f"got {labels.min()}..{labels.max()}")
    onehot = numpy.zeros((n, classes), dtype=dtype)
    onehot[numpy.arange(n), labels] = 1
    return onehot if xp is numpy else xp.asarray(onehot)


# -- training ------------------------------------------------------------------------

def train(model: Model, X: Any, Y: Any, Xval: Any = None, Yval: Any = None, batchsize: int = 25, iters: int = 10000,
          lrate: float = 0.005, lrate_decay: str | None = None, lfactor_initial: float = 1.0, status: int = 250,
          convergence: int = -1, transform: Callable[[Any], Any] | None = None, *, rng: Any = None,
          progress: bool = True, log: logging.Logger | None = None, eval_batchsize: int = 1024) -> TrainResult:
    """Train the model with minibatch SGD, as the LRP Toolbox's ``Sequential.train``.

    Parameters
    ----------
    model : Model
        Any DAG of layers; layers with ``param_grads`` (Linear, Conv2d) are trained, the
        others (BatchNorm at inference, parameter-free layers) stay fixed.
    X : array (N, ...)
        Training inputs (numpy or cupy, floating point); training computes in X's dtype and
        on X's backend.
    Y : array (N, C) or (N,)
        One-hot targets, or integer labels that are converted to one-hot.
    Xval, Yval : array, optional
        Validation data for the periodic evaluation (both or neither; default: the training data).
    batchsize : int
        Samples per SGD step, drawn without replacement, 1..N.
    iters : int
        Maximal number of SGD steps.
    lrate : float
        Learning rate (> 0).
    lrate_decay : {None, 'none', 'sublinear', 'linear'}
        When an evaluation finds a new best, set the learning factor to ``1 − acc²``
        ('sublinear') or ``1 − acc`` ('linear'); None/'none' keeps it.
    lfactor_initial : float
        Initial learning factor (the effective rate is ``lrate · factor``).
    status : int
        Evaluate every ``status`` iterations.
    convergence : int
        Stop after this many consecutive evaluations without a new best; ≤ 0 disables.
    transform : callable, optional
        ``transform(batch) -> batch`` applied to each training batch (augmentation, noise).
    rng : int or numpy.random.Generator, optional
        Seed or generator for the batch draws (``numpy.random.default_rng(rng)``, on the host).
    progress : bool
        Draw a progress bar on stderr.
    log : logging.Logger, optional
        Where status lines go (default: the logger ``"lrpflow.train"``): one INFO line at the
        end, each evaluation at DEBUG.
    eval_batchsize : int
        Batch size of the evaluations (bounds their memory).

    Returns
    -------
    TrainResult

    Notes
    -----
    Each step draws a batch B, computes ``ŷ = f(X_B)`` and the toolbox's error signal
    ``δ = ŷ − Y_B`` at the output. With a SoftMax output layer δ is handed to the logits
    unchanged (the toolbox's ``SoftMax.backward``), which makes it the gradient of the
    cross-entropy ``−Σ Y log ŷ`` w.r.t. the logits; without one it is the gradient of the
    squared error ``½‖ŷ − Y‖²``. Every trainable parameter then takes the step

    .. math:: p \\leftarrow p - \\eta \\lambda \\frac{1}{|B|} \\sum_{n \\in B} \\frac{\\partial L_n}{\\partial p}

    with learning rate η and learning factor λ: plain SGD on the batch *mean* gradient.
    This deviates from the toolbox, whose layers sum over the batch and rescale their
    gradients by ad-hoc layer-size factors (Linear: ``dW / √m``, backward ``·√m/√n``), so a
    learning rate tuned for the toolbox needs rescaling here.

    Every ``status`` steps the model is scored on (Xval, Yval), or the training data, with
    the toolbox's l1-loss ``Σ|ŷ − Y| / N`` and accuracy. A strictly lower loss than all
    before is a new best: its parameters are copied, the decay is applied and the
    convergence counter reset. At the end (or on an exception) the best parameters are
    restored, unless the starting parameters (scored once before the first step) were
    better: those are restored then (``best_iteration == 0``). A non-finite batch or
    evaluation loss stops training with :class:`TrainingDivergedError`, which suggests a
    smaller learning rate; the best parameters so far are restored first. Training works on copies of the parameters in X's namespace and dtype; the
    restored parameters are stored back in each parameter's original namespace and dtype,
    so arrays the caller passed to the layers are never modified in place.
    """
    t_start = time.perf_counter()
    log = log if log is not None else logger

    # configuration
    iters = _int(iters, "iters", 1)
    status = _int(status, "status", 1)
    convergence = _int(convergence, "convergence")
    eval_batchsize = _int(eval_batchsize, "eval_batchsize", 1)
    lrate = _positive(lrate, "lrate")
    factor = _positive(lfactor_initial, "lfactor_initial")
    key = "none" if lrate_decay is None else str(lrate_decay).lower()
    if key not in DECAYS:
        raise ConfigError(f"unknown lrate_decay {lrate_decay!r}; expected None or one of {', '.join(map(repr, DECAYS))}")
    decay = DECAYS[key]
    if transform is not None and not callable(transform):
        raise ConfigError(f"transform must be callable or None, got {type(transform).__name__}")
    if _given(Xval) != _given(Yval):
        raise ConfigError("give both Xval and Yval (validation inputs and targets) or neither")

    # data
    X = _check_inputs(model, X, "X")
    xp, dtype, n = get_namespace(X), X.dtype, X.shape[0]
    batchsize = _int(batchsize, "batchsize", 1, n)
    probe = model.run(X[:1])[0]
    if probe.ndim != 2:
        raise ShapeError(f"training needs a model output of shape (N, C), got per-sample shape {tuple(probe.shape[1:])}")
    classes = probe.shape[1]
    Y = _check_targets(Y, n, classes, xp, dtype, "Y", "X")
    if _given(Xval):
        Xval = _check_inputs(model, Xval, "Xval")
        if tuple(Xval.shape[1:]) != tuple(X.shape[1:]):
            raise ShapeError(f"Xval samples have shape {tuple(Xval.shape[1:])}, X samples {tuple(X.shape[1:])}")
        Xval = _copy_to(Xval, xp, dtype) if get_namespace(Xval) is not xp or Xval.dtype != dtype else Xval
        Yval = _check_targets(Yval, Xval.shape[0], classes, xp, dtype, "Yval", "Xval")
        X_eval, Y_eval, where = Xval, Yval, "validation data"
    else:
        X_eval, Y_eval, where = X, Y, "training data"

    # working copies of the trainable parameters, in X's namespace and dtype
    nodes = model.ancestors(model.output)
    layer_of = {node.name: node.layer for node in nodes}
    layers: dict[int, Any] = {}
    for node in nodes:
        if is_trainable(node.layer):
            layers.setdefault(id(node.layer), node.layer)
    original: dict[int, dict[str, tuple[ModuleType, Any]]] = {}
    work: dict[int, dict[str, Any]] = {}
    for lid, layer in layers.items():
        params = {k: v for k, v in layer.params().items() if v is not None}
        original[lid] = {k: (get_namespace(v), v.dtype) for k, v in params.items()}
        work[lid] = {k: _copy_to(v, xp, dtype) for k, v in params.items()}
        layer.set_params(**work[lid])

    draw = numpy.random.default_rng(rng)
    bar = ProgressBar(iters, bool(progress))
    history: list[tuple[int, float, float]] = []
    best: dict[int, dict[str, Any]] | None = None
    best_iteration = best_loss = best_accuracy = None
    stale = 0
    it = 0
    initial: dict[int, dict[str, Any]] | None = None
    initial_loss = initial_accuracy = None
    if status <= iters:  # the starting point: never restore parameters worse than these
        initial_loss, initial_accuracy = score(model, X_eval, Y_eval, batchsize=eval_batchsize)
        if math.isfinite(initial_loss):
            initial = {lid: {k: v.copy() for k, v in ps.items()} for lid, ps in work.items()}

    def say(level: int, msg: str, *args: Any) -> None:
        bar.clear()
        log.log(level, msg, *args)

    try:
        for it in range(1, iters + 1):
            index = draw.choice(n, size=batchsize, replace=False)
            if xp is not numpy:
                index = xp.asarray(index)
            batch = X[index]
            if transform is not None:
                batch = transform(batch)
            y, trace = model.run(batch)
            delta = y - Y[index]
            if not bool(xp.isfinite(delta).all()):
                raise TrainingDivergedError(
                    f"training diverged at iteration {it}: the batch loss is not finite (NaN/Inf) with "
                    f"lrate={lrate:g}; try lrate={lrate / 10:g}")
            step = lrate * factor / batchsize
            summed: dict[tuple[int, str], Any] = {}
            for (node_name, k), g in backward(model, trace, delta, softmax_passthrough=True).items():
                slot = (id(layer_of[node_name]), k)
                summed[slot] = g if slot not in summed else summed[slot] + g
            for (lid, k), g in summed.items():
                p = work[lid].get(k)
                if p is not None:
                    p -= step * g
            for layer in layers.values():
                layer.invalidate()

            if it % status == 0:
                loss, acc = score(model, X_eval, Y_eval, batchsize=eval_batchsize)
                history.append((it, loss, acc))
                say(logging.DEBUG, "iteration %d: accuracy %.2f%% on %s (l1-loss %.4g)", it, 100 * acc, where, loss)
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"training diverged at iteration {it}: the l1-loss on {where} is {loss} with "
                        f"lrate={lrate:g}; try lrate={lrate / 10:g}")
                if best_loss is None or loss < best_loss:
                    best = {lid: {k: v.copy() for k, v in ps.items()} for lid, ps in work.items()}
                    best_iteration, best_loss, best_accuracy = it, loss, acc
                    stale = 0
                    if decay is not None:
                        factor = decay(acc)
                        say(logging.DEBUG, "new best; learning rate set to %.4g (%.2f%% of lrate)", lrate * factor,
                            100 * factor)
                    else:
                        say(logging.DEBUG, "new best")
                else:
                    stale += 1
                    if 0 < convergence <= stale:
                        say(logging.INFO, "no improvement in %d evaluations: accepting convergence", stale)
                        break
                bar.draw(it, f"loss {loss:.4g} lrate {lrate * factor:.3g}")
            elif bar.due():
                bar.draw(it, f"loss {float(xp.abs(delta).sum()) / batchsize:.4g} lrate {lrate * factor:.3g}")
    finally:
        # install the best (or, without any evaluation, the last) parameters in their original storage;
        # the starting parameters when no evaluation beat them
        if initial is not None and (best is None or not best_loss <= initial_loss):
            best, best_iteration, best_loss, best_accuracy = initial, 0, initial_loss, initial_accuracy
        final = best if best is not None else work
        for lid, layer in layers.items():
            layer.set_params(**{k: _copy_to(v, *original[lid][k]) for k, v in final[lid].items()})
            layer.invalidate()
        if isinstance(model, Sequential):
            model.clean()  # a remembered forward pass used other parameters
        bar.close()

    seconds = time.perf_counter() - t_start
    if best_iteration == 0:
        log.info("training ran %d iterations (%s) without beating the starting parameters (l1-loss %.4g); "
                 "restored them", it, clock(seconds), initial_loss)
    elif best is not None:
        log.info("training ran %d iterations (%s); restored the parameters of iteration %d: accuracy %.2f%% on %s, "
                 "l1-loss %.4g", it, clock(seconds), best_iteration, 100 * best_accuracy, where, best_loss)
    else:
        log.info("training ran %d iterations (%s) without an evaluation (status=%d); kept the last parameters",
                 it, clock(seconds), status)
    return TrainResult(best_iteration, best_loss, best_accuracy, it, history, seconds, initial_loss, initial_accuracy)
