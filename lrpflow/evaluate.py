"""Explanation quality metrics: pixel flipping (AOPC), conservation, randomisation sanity, sparseness.

Every metric works on numpy and cupy alike (the namespace comes from the data) and gives
one value per sample, shape ``(N,)``. The built-ins register through
``lrpflow_register_metrics`` like any plugin; a registered metric is a callable

    ``metric(model, x, explanation, **params) -> per-sample array (N,)``

(see :class:`Metric`), and :func:`evaluate` runs several of them by name. The functions
behind them (:func:`pixel_flipping`, :func:`conservation`, :func:`randomization_sanity`,
:func:`sparseness`, :func:`complexity`, :func:`topk_intersection`, :func:`spearman`) take
plain arrays and return richer results.

Inputs ``x`` and relevance maps are in the layout the model declares (the layout
``explain()`` takes and returns); image samples are ``H×W×C`` (NHWC) inside.
"""
from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any, Protocol

import numpy

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.chunks import cpu_workers, map_chunks
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.graph import Model
from lrpflow.hookspecs import hookimpl

__all__ = [
    "FlipResult", "MetricValues", "PIXEL_FLIPPING_DEFAULTS", "auto_patch_side", "RandomizationResult", "Metric", "ORDERS", "BASELINES", "METRICS",
    "pixel_flipping", "conservation", "ledger_absorbed", "randomization_sanity", "randomize_layer",
    "spearman", "rank", "sparseness", "gini", "complexity", "topk_intersection", "evaluate",
]

#: Orders in which :func:`pixel_flipping` removes regions.
ORDERS = ("most_relevant_first", "least_relevant_first", "random")
#: Named baselines of :func:`pixel_flipping` (a number or an array is a constant baseline).
BASELINES = ("zero", "mean", "uniform_noise")
#: Parameters :func:`randomize_layer` leaves alone by default (running statistics, not learned weights).
RUNNING_STATISTICS = ("mean", "var", "running_mean", "running_var")


class Metric(Protocol):
    """What ``lrpflow_register_metrics`` registers: one value per sample."""

    def __call__(self, model: Model, x: Any, explanation: Any, **params: Any) -> Any:  # pragma: no cover
        ...


# -- helpers ----------------------------------------------------------------------


def _check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise ConfigError(f"model must be an lrpflow Model, got {type(model).__name__}")


def _int_param(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_float(xp: ModuleType, a: Any, name: str) -> Any:
    try:
        a = xp.asarray(a)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} cannot be read as an array: {err}") from err
    if a.dtype.kind != "f":
        a = a.astype(numpy.float64)
    return a


def _flat(a: Any) -> Any:
    return a.reshape(a.shape[0], -1)


def _relevance_of(explanation: Any, name: str = "explanation") -> Any:
    r = getattr(explanation, "relevance", explanation)
    if not hasattr(r, "shape") or len(r.shape) < 2:
        raise ShapeError(f"{name}: expected an Explanation or a relevance batch (N, ...), got {type(explanation).__name__}")
    return r


def _batch(a: Any, name: str) -> Any:
    xp = get_namespace(a)
    a = _as_float(xp, a, name)
    if a.ndim < 2:
        raise ShapeError(f"{name} must be a batch (N, ...) with at least one feature axis, got shape {tuple(a.shape)}")
    return a


# -- pixel flipping ------------------------------------------------------------------


@dataclass
class FlipResult:
    """Result of :func:`pixel_flipping`; arrays live on the data's backend.

    Attributes
    ----------
    curve : array (N, steps + 1)
        Target logit after each step; ``curve[:, 0]`` is ``f(x)`` (nothing removed).
    fractions : array (steps + 1,)
        Fraction of the regions removed at each step (``removed / regions``).
    removed : numpy array (steps + 1,)
        Number of regions removed at each step.
    aopc : array (N,)
        Area over the perturbation curve, ``1/(L+1) Σ_{k=0}^{L} (f(x) − f(x^(k)))``.
    auc : array (N,)
        Normalised area under the curve: trapezoidal rule over ``fractions``, divided by
        the fraction range (the mean curve height).
    regions : int
        Number of regions (pixels or patches) per sample.
    order, baseline, patch, target
        What was done (``target``: the class index or indices (N,) / (N, K) followed).
    """

    curve: Any
    fractions: Any
    removed: Any
    aopc: Any
    auc: Any
    regions: int
    order: str
    baseline: Any
    patch: tuple[int, ...]
    target: Any

    def to_numpy(self) -> FlipResult:
        """A copy with every array on the host."""
        return FlipResult(to_numpy(self.curve), to_numpy(self.fractions), numpy.asarray(self.removed),
                          to_numpy(self.aopc), to_numpy(self.auc), self.regions, self.order, self.baseline,
                          self.patch, to_numpy(self.target))


#: Default pixel-flipping settings after Samek et al. 2017: most relevant first, 20 steps up
#: to 20% of the regions, regions of side ``auto_patch_side`` (9 px on a 224 px image), baseline 0.
PIXEL_FLIPPING_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"order": "most_relevant_first", "steps": 20, "fraction": 0.2, "patch": "auto", "baseline": "zero"})


def auto_patch_side(spatial: tuple[int, ...]) -> int:
    """Region side for ``patch="auto"``: ``max(1, round(min(H, W) · 9 / 224))``, 1 on vectors.

    Samek et al. (2017) perturb 9×9 regions of 224×224 images; the same share of the image
    side keeps a region's share of the image when the input is smaller or larger
    (28 or 32 px: single pixels; 64 px: 3×3; 448 px: 18×18).
    """
    if len(spatial) < 2:
        return 1
    return max(1, int(math.floor(min(spatial) * 9 / 224 + 0.5)))


def _patch_shape(patch: Any, spatial: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(patch, str):
        if patch.strip().lower() != "auto":
            raise ConfigError(f"patch must be 'auto', a positive int or one int per spatial axis, got {patch!r}")
        return (auto_patch_side(spatial),) * len(spatial)
    if isinstance(patch, (tuple, list)):
        if len(patch) != len(spatial):
            raise ConfigError(f"patch {tuple(patch)!r} has {len(patch)} sides but the samples have "
                              f"{len(spatial)} spatial axes {spatial}")
        sides = tuple(_int_param(p, "patch") for p in patch)
    else:
        side = _int_param(patch, "patch")
        sides = (side,) * len(spatial)
    for s, n in zip(sides, spatial):
        if s > n:
            raise ConfigError(f"patch {sides} is larger than the samples' spatial shape {spatial}")
    return sides


def _spatial(sample: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """Spatial shape of a sample (internal layout) and whether its last axis holds channels."""
    if len(sample) == 1:
        return sample, False
    if len(sample) == 2:
        return sample, False
    if len(sample) == 3:
        return sample[:2], True
    raise ShapeError(f"pixel flipping handles vectors (D,), maps (H, W) and images (H, W, C); got samples of shape {sample}")


def _region_relevance(xp: ModuleType, r: Any, spatial: tuple[int, ...], channels: bool, sides: tuple[int, ...]) -> Any:
    """Relevance summed over channels and over each patch: (N, regions)."""
    if channels:
        r = r.sum(axis=-1)
    n = r.shape[0]
    grid = tuple(-(-s // p) for s, p in zip(spatial, sides))
    pad = [(0, 0)] + [(0, g * p - s) for g, p, s in zip(grid, sides, spatial)]
    if any(after for _, after in pad):
        r = xp.pad(r, pad)
    if len(spatial) == 1:
        return r.reshape(n, grid[0], sides[0]).sum(axis=2)
    return r.reshape(n, grid[0], sides[0], grid[1], sides[1]).sum(axis=(2, 4)).reshape(n, -1)


def _pixel_regions(xp: ModuleType, spatial: tuple[int, ...], sides: tuple[int, ...]) -> Any:
    """Region index of every spatial position, flattened (P,)."""
    if len(spatial) == 1:
        return xp.arange(spatial[0]) // sides[0]
    gw = -(-spatial[1] // sides[1])
    rows = xp.arange(spatial[0])[:, None] // sides[0]
    cols = xp.arange(spatial[1])[None, :] // sides[1]
    return (rows * gw + cols).reshape(-1)


def _baseline(xp: ModuleType, baseline: Any, x: Any, model: Model, channels: bool, seed: int) -> Any:
    """A baseline broadcastable to ``x`` (internal layout) for every sample."""
    if isinstance(baseline, str):
        name = baseline.strip().lower()
        if name == "zero":
            return xp.zeros((1,) * x.ndim, dtype=x.dtype)
        if name == "mean":
            axes = tuple(range(1, x.ndim - 1)) if channels else tuple(range(1, x.ndim))
            return x.mean(axis=axes, keepdims=True)
        if name == "uniform_noise":
            axes = tuple(range(1, x.ndim))
            lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
            # drawn on the host (a stream apart from the random order's), so numpy and cupy agree
            rng = numpy.random.default_rng([seed, 1])
            u = xp.asarray(rng.random(x.shape), dtype=x.dtype)
            return lo + (hi - lo) * u
        raise ConfigError(f"baseline must be one of {BASELINES}, a number or an array, got {baseline!r}")
    if isinstance(baseline, bool):
        raise ConfigError(f"baseline must be one of {BASELINES}, a number or an array, got {baseline!r}")
    if isinstance(baseline, numbers.Real):
        if not math.isfinite(float(baseline)):
            raise ConfigError(f"baseline must be finite, got {baseline!r}")
        return xp.full((1,) * x.ndim, float(baseline), dtype=x.dtype)
    try:
        b = xp.asarray(baseline, dtype=x.dtype)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"baseline must be one of {BASELINES}, a number or an array, got {type(baseline).__name__}") from err
    shape = tuple(model.from_nhwc(x[:1]).shape)  # x's shape in the model's declared layout
    if b.ndim == len(shape) - 1:
        b = b[None]
    try:
        b = xp.broadcast_to(b, (x.shape[0], *shape[1:]))
    except ValueError as err:
        raise ShapeError(f"baseline of shape {tuple(b.shape)} does not broadcast to the samples' shape {shape[1:]}") from err
    if not bool(xp.isfinite(b).all()):
        raise ConfigError("baseline array contains NaN or Inf")
    return model.to_nhwc(b)


def _classes(model: Model, sample: tuple[int, ...]) -> int:
    shapes = model.infer_shapes(sample)
    out = shapes[model.logits_node]
    if len(out) != 1:
        raise ShapeError(f"pixel flipping needs a model with vector outputs (N, C); node {model.logits_node!r} "
                         f"gives samples of shape {out}")
    return int(out[0])


def _logits(model: Model, x: Any, batch_size: int) -> Any:
    xp = get_namespace(x)
    outs = [model.run(x[i:i + batch_size], upto=model.logits_node)[0] for i in range(0, x.shape[0], batch_size)]
    return xp.concatenate(outs) if outs else xp.zeros((0, 0), dtype=x.dtype)


def _resolve_target(xp: ModuleType, target: Any, model: Model, x: Any, classes: int, batch_size: int) -> Any:
    """Class indices (N,) or (N, K) on ``xp``."""
    n = x.shape[0]
    if isinstance(target, str):
        if target.strip().lower() != "pred":
            raise ConfigError(f"target must be 'pred', a class index or per-sample class indices, got {target!r}")
        return _logits(model, x, batch_size).argmax(axis=1)
    if isinstance(target, bool):
        raise ConfigError(f"target must be 'pred', a class index or per-sample class indices, got {target!r}")
    if isinstance(target, numbers.Integral):
        t = xp.full((n,), int(target), dtype=numpy.int64)
    else:
        try:
            t = xp.asarray(target)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"target cannot be read as class indices: {err}") from err
        if t.dtype.kind not in "iu":
            raise ConfigError(f"target must hold integer class indices, got dtype {t.dtype}")
        if t.ndim not in (1, 2) or t.shape[0] != n:
            raise ShapeError(f"target must have shape ({n},) or ({n}, K), got {tuple(t.shape)}")
        t = t.astype(numpy.int64)
    if t.size and int(t.min()) == -1:
        raise ConfigError("target: the explanation was made for an explicit R_init (target −1); "
                          "pass the class(es) to follow as target=")
    if t.size and (int(t.min()) < 0 or int(t.max()) >= classes):
        raise ConfigError(f"target classes must lie in [0, {classes}), got values from {int(t.min())} to {int(t.max())}")
    return t


def _pick(xp: ModuleType, logits: Any, t: Any) -> Any:
    """The target logit (or the sum of the K target logits) of each row."""
    idx = t if t.ndim == 2 else t[:, None]
    return xp.take_along_axis(logits, idx, axis=1).sum(axis=1)


def pixel_flipping(model: Model, x: Any, relevance: Any, target: Any = "pred", *, steps: int | None = 20,
                   fraction: float = 0.2, patch: int | Sequence[int] | str = "auto", order: str = "most_relevant_first",
                   baseline: Any = "zero", seed: int = 0, batch_size: int = 256) -> FlipResult:
    """Perturbation curve and AOPC: remove the most relevant regions step by step.

    The defaults follow Samek et al. (2017): most relevant regions first, 20 steps that
    remove up to 20% of the regions, regions whose side is 9/224 of the image side
    (``patch="auto"``: 9×9 on 224×224, single pixels on MNIST), baseline 0. Removing only
    a fraction keeps the curves of good and bad orders apart: at 100% every order ends at
    the same fully perturbed input and AOPC averages the difference away.

    Parameters
    ----------
    model : Model
    x : array (N, ...)
        Inputs in the model's declared layout (as ``explain()`` takes them).
    relevance : array
        Relevance maps of ``x`` (same shape), e.g. ``explanation.relevance``.
    target : 'pred', int, or int array (N,) or (N, K)
        Output(s) whose logit the curve follows (``explanation.target``); (N, K): their sum.
    steps : int or None
        Number of perturbation steps L; None: one region per step.
    fraction : float
        Fraction of the regions removed after the last step, in (0, 1] (default 0.2).
    patch : 'auto', int or (int, int)
        Side(s) of the square regions on images (H×W×C: regions span every channel); on
        vectors, ``patch`` consecutive features form a region. Edge regions may be smaller.
        ``"auto"``: :func:`auto_patch_side` of the image (1 on vectors).
    order : str
        ``"most_relevant_first"`` (MoRF), ``"least_relevant_first"`` (LeRF) or ``"random"``.
    baseline : 'zero', 'mean', 'uniform_noise', float or array
        What a removed feature becomes: 0; the sample's per-channel mean; noise drawn
        uniformly in [min xₙ, max xₙ] per sample (fixed per sample, seeded); a constant;
        or an array broadcastable to the samples (declared layout).
    seed : int
        Seed of the random order and the noise (drawn on the host: numpy and cupy agree).
    batch_size : int
        Perturbed inputs per forward pass; bounds the memory used.

    Returns
    -------
    FlipResult
        ``curve`` (N, L+1), ``fractions`` (L+1,), per-sample ``aopc`` and normalised ``auc``.

    Notes
    -----
    Region relevance is :math:`R_j = \\sum_{i \\in j} R_i` (over the patch and the channels).
    Regions are ranked by :math:`R_j` (stable: ties keep index order); after step
    :math:`k` the first :math:`m_k = \\mathrm{round}(k\\,K/L)` regions of the ranking are
    replaced by the baseline, :math:`K = \\max(1, \\mathrm{round}(\\text{fraction}\\cdot M))`
    of the :math:`M` regions in the end. With :math:`x^{(k)}` the perturbed input,

    .. math::

        \\mathrm{AOPC} = \\frac{1}{L+1} \\sum_{k=0}^{L} \\left(f(x^{(0)}) - f(x^{(k)})\\right)

    (Samek et al., "Evaluating the visualization of what a deep neural network has
    learned", IEEE TNNLS 2017, eq. 12). Higher MoRF AOPC means a better explanation.
    All ``N·(L+1)`` perturbed inputs are built by masking (``where(mask, baseline, x)``)
    and evaluated ``batch_size`` at a time.
    """
    _check_model(model)
    if not isinstance(order, str) or order.strip().lower() not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    order = order.strip().lower()
    if steps is not None:
        steps = _int_param(steps, "steps")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
    batch_size = _int_param(batch_size, "batch_size")
    seed = _int_param(seed, "seed", minimum=0)

    xp = get_namespace(x, relevance, target)
    x = _as_float(xp, x, "x")
    relevance = _as_float(xp, relevance, "relevance")
    if tuple(relevance.shape) != tuple(x.shape):
        raise ShapeError(f"relevance must have the shape of x {tuple(x.shape)}, got {tuple(relevance.shape)}")
    x, relevance = model.to_nhwc(x), model.to_nhwc(relevance)
    model.check_input(x)
    n, sample = x.shape[0], tuple(x.shape[1:])
    if n == 0:
        raise ShapeError("x holds no samples (N = 0)")
    spatial, channels = _spatial(sample)
    sides = _patch_shape(patch, spatial)
    classes = _classes(model, sample)
    t = _resolve_target(xp, target, model, x, classes, batch_size)

    # ranking of the regions
    r_reg = _region_relevance(xp, relevance, spatial, channels, sides)
    m = r_reg.shape[1]
    rng = numpy.random.default_rng([seed, 0])
    if order == "most_relevant_first":
        ranking = xp.argsort(-r_reg, axis=1, kind="stable")
    elif order == "least_relevant_first":
        ranking = xp.argsort(r_reg, axis=1, kind="stable")
    else:
        ranking = xp.asarray(numpy.argsort(rng.random((n, m)), axis=1, kind="stable"))
    position = xp.empty_like(ranking)  # position[n, region] = its place in the ranking
    position[xp.arange(n)[:, None], ranking] = xp.arange(m)[None, :]

    total = max(1, int(math.floor(float(fraction) * m + 0.5)))
    n_steps = total if steps is None else steps
    removed = numpy.array([(2 * s * total + n_steps) // (2 * n_steps) for s in range(n_steps + 1)], dtype=numpy.int64)
    base = _baseline(xp, baseline, x, model, channels, seed)
    pix = _pixel_regions(xp, spatial, sides)
    removed_xp = xp.asarray(removed)

    # every (sample, step) pair, batch_size perturbed inputs per forward pass
    width = n_steps + 1
    pairs = n * width
    values = xp.empty((pairs,), dtype=x.dtype)
    mask_shape = (-1, *spatial, 1) if channels else (-1, *spatial)

    def perturbed_pass(start: int) -> None:  # one batch of perturbed inputs; batches write disjoint rows
        p = xp.arange(start, min(pairs, start + batch_size))
        i, s = p // width, p % width
        gone = position[i] < removed_xp[s][:, None]  # (B, regions)
        mask = gone[:, pix].reshape(mask_shape)
        b = base[i] if base.shape[0] == n and n > 1 else base
        xb = xp.where(mask, b, x[i])
        logits = model.run(xb, upto=model.logits_node)[0]
        values[start:start + p.shape[0]] = _pick(xp, logits, t[i])

    # the threaded path of explanations (lrpflow.chunks): on numpy, batches run side by side
    map_chunks(perturbed_pass, range(0, pairs, batch_size), cpu_workers() if xp is numpy else 1)
    curve = values.reshape(n, width)

    fractions = xp.asarray(removed / m, dtype=x.dtype)
    aopc = curve[:, 0] - curve.mean(axis=1)
    widths = fractions[1:] - fractions[:-1]
    area = ((curve[:, 1:] + curve[:, :-1]) * 0.5 * widths[None, :]).sum(axis=1)
    auc = area / (fractions[-1] - fractions[0])
    return FlipResult(curve, fractions, removed, aopc, auc, m, order, baseline, sides, t)


# -- conservation -------------------------------------------------------------------------


def conservation(explanation: Any) -> Any:
    """Per-sample conservation error ``|ΣR_in − ΣR_init| / |ΣR_init|`` of an explanation.

    Reads ``explanation.conservation`` (computed by ``explain()``).

    Notes
    -----
    .. math:: c_n = \\frac{\\left|\\sum_i R_{n,i} - \\sum_c R^{\\mathrm{init}}_{n,c}\\right|}
                         {\\left|\\sum_c R^{\\mathrm{init}}_{n,c}\\right|}

    (the numerator alone where ``ΣR_init = 0``). 0 for a conservative explanation
    (LRP-0 without biases); the bias and ε absorb the rest (see :func:`ledger_absorbed`).
    """
    c = getattr(explanation, "conservation", None)
    if c is None:
        raise ConfigError(f"explanation has no conservation values ({type(explanation).__name__})")
    r = getattr(explanation, "relevance", None)
    if c.ndim != 1 or (r is not None and c.shape[0] != r.shape[0]):
        raise ShapeError(f"explanation.conservation must have shape (N,), got {tuple(c.shape)}")
    return c


def ledger_absorbed(explanation: Any, *, relative: bool = False) -> dict[str, Any]:
    """What each node's bias / stabiliser absorbed, per sample: ``{node: (N,)}``.

    Parameters
    ----------
    explanation : Explanation
        Made with the ledger on (the default).
    relative : bool
        Divide by ``|ΣR_init|`` (where it is non-zero), so values compare across samples.

    Notes
    -----
    Node :math:`v` absorbs :math:`a_v = \\sum R_{\\text{entering } v} - \\sum R_{\\text{leaving } v}`
    (negative: it injected relevance). Over all nodes this telescopes to
    :math:`\\sum_v a_v = \\sum R^{\\mathrm{init}} - \\sum R^{\\mathrm{in}}` before the rule's
    input finalisation; for plain LRP that is the signed conservation error.
    """
    ledger = getattr(explanation, "ledger", None)
    if not ledger:
        raise ConfigError("explanation has no ledger (explain with ledger=True)")
    out = {name: entry.absorbed for name, entry in ledger.items()}
    if relative:
        r_init = explanation.r_init
        xp = get_namespace(r_init)
        total = xp.abs(_flat(r_init).sum(axis=1))
        den = xp.where(total > 0, total, 1)
        out = {name: a / den for name, a in out.items()}
    return out


# -- rank correlation and randomisation sanity ------------------------------------------


def rank(a: Any) -> Any:
    """Per-row ranks (0-based) of a 2-D array, ties sharing their average rank.

    Notes
    -----
    Rows are sorted with a stable argsort; a tie group occupying sorted positions
    :math:`s..e` gets rank :math:`(s + e)/2` for each member (the "average" method of
    ``scipy.stats.rankdata``, minus one).
    """
    xp = get_namespace(a)
    n, m = a.shape
    if m == 0:
        return xp.zeros((n, 0), dtype=numpy.float64)
    order = xp.argsort(a, axis=1, kind="stable")
    v = xp.take_along_axis(a, order, axis=1)
    starts = xp.ones((n, m), dtype=bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    group = xp.cumsum(starts, axis=1) - 1  # row-local tie group of each sorted position
    counts = xp.bincount((group + xp.arange(n)[:, None] * m).ravel(), minlength=n * m).reshape(n, m)
    first = xp.cumsum(counts, axis=1) - counts  # first sorted position of every group
    average = first + (counts - 1) / 2.0
    sorted_ranks = xp.take_along_axis(average, group, axis=1)
    ranks = xp.empty((n, m), dtype=sorted_ranks.dtype)
    ranks[xp.arange(n)[:, None], order] = sorted_ranks
    return ranks


def spearman(a: Any, b: Any, *, absolute: bool = False) -> Any:
    """Per-sample Spearman rank correlation of two batches of maps (N, ...) → (N,).

    Parameters
    ----------
    a, b : array
        Same shape, batch first; each sample is flattened.
    absolute : bool
        Correlate ``|a|`` and ``|b|`` (Adebayo et al. report both).

    Notes
    -----
    :math:`\\rho_n = \\mathrm{corr}(\\mathrm{rank}(a_n), \\mathrm{rank}(b_n))` with average
    ranks for ties (:func:`rank`), i.e. the Pearson correlation of the ranks. NaN where a
    sample's map is constant (the correlation is undefined).
    """
    xp = get_namespace(a, b)
    a, b = _as_float(xp, a, "a"), _as_float(xp, b, "b")
    if tuple(a.shape) != tuple(b.shape) or a.ndim < 2:
        raise ShapeError(f"spearman needs two batches of the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = _flat(a), _flat(b)
    if absolute:
        a, b = xp.abs(a), xp.abs(b)
    ra, rb = rank(a), rank(b)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    num = (ra * rb).sum(axis=1)
    den = xp.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    safe = xp.where(den > 0, den, 1.0)
    return xp.where(den > 0, xp.clip(num / safe, -1.0, 1.0), xp.nan)


@dataclass
class RandomizationResult:
    """Result of :func:`randomization_sanity`.

    Attributes
    ----------
    layers : tuple of str
        ``"original"`` (an unrandomised deep copy, the check of the check), then the
        randomised nodes in the order they were randomised.
    correlation : array (len(layers), N)
        Spearman correlation of each step's heatmaps with the original heatmaps.
    cascade : bool
        True: step k has layers 1..k randomised; False: only layer k.
    target : array
        The classes explained (fixed to the original model's, so every step explains the same output).
    """

    layers: tuple[str, ...]
    correlation: Any
    cascade: bool
    target: Any

    def as_dict(self) -> dict[str, Any]:
        """``{layer: per-sample correlation (N,)}``."""
        return {name: self.correlation[k] for k, name in enumerate(self.layers)}


def randomize_layer(layer: Any, rng: numpy.random.Generator, *, skip: Sequence[str] = RUNNING_STATISTICS) -> list[str]:
    """Replace a layer's parameters by random draws of the same scale; returns the names changed.

    Notes
    -----
    Each parameter array :math:`p` becomes :math:`p' \\sim \\mathcal{N}(0, \\mathrm{rms}(p)^2)`,
    :math:`\\mathrm{rms}(p) = \\sqrt{\\mathrm{mean}(p^2)}`: weights keep their scale, all-zero
    biases stay zero (and are not reported), and a BatchNorm ``gamma`` of ones becomes
    standard normal. Running statistics (``skip``) are left alone. Arrays stay on their backend.
    """
    changed = {}
    for name, p in layer.params().items():
        if p is None or name in skip:
            continue
        host = numpy.asarray(to_numpy(p), dtype=numpy.float64)
        scale = float(numpy.sqrt(numpy.mean(host * host))) if host.size else 0.0
        if scale == 0.0:  # N(0, 0): an all-zero array stays as it is
            continue
        draw = rng.standard_normal(host.shape) * scale
        dtype = p.dtype if p.dtype.kind == "f" else numpy.float64
        changed[name] = get_namespace(p).asarray(draw.astype(dtype))
    if changed:
        layer.set_params(**changed)
    return list(changed)


def _parametrised(model: Model) -> list[str]:
    """Nodes with parameters that feed the logits, output first (top-down)."""
    nodes = model.ancestors(model.logits_node)
    return [n.name for n in reversed(nodes) if any(v is not None for v in n.layer.params().values())]


def _copy_model(model: Model) -> Model:
    twin = copy.deepcopy(model)
    clean = getattr(twin, "clean", None)
    if callable(clean):  # a Sequential's remembered forward pass is not needed
        clean()
    return twin


def randomization_sanity(explainer_factory: Callable[[Model], Callable[..., Any]], model: Model, x: Any, *,
                         target: Any = "pred", labels: Any = None, layers: Sequence[str] | None = None,
                         cascade: bool = True, absolute: bool = False, seed: int = 0) -> RandomizationResult:
    """Model-parameter randomisation test: do the heatmaps change when the weights do?

    Parameters
    ----------
    explainer_factory : callable
        ``factory(model) -> explainer`` with ``explainer(x, target=...) -> Explanation``
        (or a relevance array), e.g. ``lambda m: lrpflow.Explainer(m, rule="epsilon")``.
    model : Model
        Left unchanged; randomisation happens on deep copies.
    x : array (N, ...)
    target : target spec
        What the original model's explanation follows (``"pred"``, a class, ...); the
        randomised models then explain the *same* classes.
    labels : array, optional
        For ``target="true"``.
    layers : sequence of str, optional
        Node names to randomise, in this order; default every node with parameters
        that feeds the logits, from the output down to the input (top-down).
    cascade : bool
        True (cascading randomisation): each step randomises one more layer on top of
        the previous ones; False (independent): each step randomises one layer only.
    absolute : bool
        Correlate absolute heatmaps.
    seed : int
        Seed of the random parameters.

    Returns
    -------
    RandomizationResult
        Per-sample Spearman correlation with the original heatmaps per step; the first
        row is an unrandomised copy (exactly 1 for a deterministic explainer).

    Notes
    -----
    Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018. A method passes
    when the correlation drops towards 0 as layers are randomised
    (:func:`randomize_layer` draws :math:`\\mathcal{N}(0, \\mathrm{rms}(W)^2)`).
    """
    _check_model(model)
    if not callable(explainer_factory):
        raise ConfigError(f"explainer_factory must be a callable model -> explainer, got {type(explainer_factory).__name__}")
    seed = _int_param(seed, "seed", minimum=0)
    known = _parametrised(model)
    if layers is None:
        chosen = known
    else:
        if isinstance(layers, str):
            layers = [layers]
        chosen = list(layers)
        bad = [name for name in chosen if name not in known]
        if bad:
            raise ConfigError(f"layers: {bad} are not nodes with parameters feeding the logits; "
                              f"known: {', '.join(known) or '(none)'}")
    rng = numpy.random.default_rng(seed)

    def explain(m: Model, tgt: Any) -> Any:
        explainer = explainer_factory(m)
        if not callable(explainer):
            raise ConfigError(f"explainer_factory returned a {type(explainer).__name__}, which is not callable")
        out = explainer(x, target=tgt, labels=labels) if labels is not None else explainer(x, target=tgt)
        return out

    original = explain(model, target)
    r0 = _relevance_of(original, "explainer result")
    tgt = getattr(original, "target", None)
    follow = target
    if tgt is not None and getattr(tgt, "ndim", 0) in (1, 2) and tgt.dtype.kind in "iu" and not bool((tgt < 0).any()):
        follow = tgt
    rows = [spearman(r0, _relevance_of(explain(_copy_model(model), follow), "explainer result"), absolute=absolute)]
    names = ["original"]
    twin = _copy_model(model) if cascade else None
    for name in chosen:
        if not cascade:
            twin = _copy_model(model)
        randomize_layer(twin.node(name).layer, rng)
        r = _relevance_of(explain(twin, follow), "explainer result")
        rows.append(spearman(r0, r, absolute=absolute))
        names.append(name)
    xp = get_namespace(rows[0])
    return RandomizationResult(tuple(names), xp.stack(rows), bool(cascade), follow)


# -- complexity of a heatmap ----------------------------------------------------------------


def gini(a: Any) -> Any:
    """Per-sample Gini index of ``|a|`` (N, ...) → (N,): 0 for a uniform map, 1 − 1/n for a one-hot map.

    Notes
    -----
    With :math:`c_{(1)} \\le \\dots \\le c_{(n)}` the sorted :math:`|a_i|`,

    .. math:: G = 1 - 2 \\sum_{k=1}^{n} \\frac{c_{(k)}}{\\lVert c \\rVert_1}\\,\\frac{n - k + \\tfrac12}{n}

    (Hurley & Rickard, "Comparing measures of sparsity", IEEE Trans. Inf. Theory 2009;
    used as explanation sparseness by Chalasani et al., ICML 2020). NaN for an all-zero map.
    """
    xp = get_namespace(a)
    c = xp.sort(xp.abs(_flat(_batch(a, "relevance"))), axis=1)
    n = c.shape[1]
    total = c.sum(axis=1)
    k = xp.arange(1, n + 1, dtype=c.dtype)
    weights = (n - k + 0.5) / n
    safe = xp.where(total > 0, total, 1.0)
    g = 1.0 - 2.0 * (c * weights[None, :]).sum(axis=1) / safe
    return xp.where(total > 0, g, xp.nan)


def sparseness(relevance: Any) -> Any:
    """Sparseness of relevance maps: the Gini index of ``|R|`` per sample (see :func:`gini`); higher is sparser."""
    return gini(_relevance_of(relevance, "relevance"))


def complexity(relevance: Any) -> Any:
    """Complexity of relevance maps: entropy of the fractional contributions per sample.

    Notes
    -----
    .. math:: H = -\\sum_i p_i \\log p_i, \\qquad p_i = |R_i| / \\sum_j |R_j|

    with :math:`0 \\log 0 = 0`: 0 for a one-hot map, :math:`\\log n` for a uniform one
    (Bhatt et al., "Evaluating and aggregating feature-based model explanations", IJCAI
    2020). Lower is simpler. NaN for an all-zero map.
    """
    r = _relevance_of(relevance, "relevance")
    xp = get_namespace(r)
    c = xp.abs(_flat(_batch(r, "relevance")))
    total = c.sum(axis=1, keepdims=True)
    p = c / xp.where(total > 0, total, 1.0)
    h = -(p * xp.log(xp.where(p > 0, p, 1.0))).sum(axis=1)
    return xp.where(total[:, 0] > 0, h, xp.nan)


def topk_intersection(relevance: Any, mask: Any, k: int, *, channel_axis: int | None = -1) -> Any:
    """Fraction of the ``k`` most relevant features that lie inside a ground-truth mask, per sample.

    Parameters
    ----------
    relevance : array (N, ...)
    mask : bool array
        Shape of ``relevance`` (or of one sample), or without the channel axis (then
        relevance is summed over ``channel_axis`` first).
    k : int
        Number of top features compared.
    channel_axis : int or None
        The relevance axis summed when ``mask`` lacks it (default the last, NHWC).

    Notes
    -----
    :math:`\\frac{1}{k} \\left|\\operatorname{top}_k(R) \\cap \\{i : m_i\\}\\right|`
    (Theiner et al., "Interpretable semantic photo geolocation", WACV 2022).
    """
    r = _relevance_of(relevance, "relevance")
    xp = get_namespace(r, mask)
    r = _as_float(xp, r, "relevance")
    m = xp.asarray(mask).astype(bool)
    full = tuple(r.shape)

    def fits(shape: tuple[int, ...]) -> bool:  # a batch of masks, or one mask for every sample
        return tuple(m.shape) == shape or tuple(m.shape) == shape[1:]

    if not fits(full):
        reduced = None
        if channel_axis is not None:
            axis = channel_axis % r.ndim
            if axis == 0:
                raise ConfigError("channel_axis must not be the batch axis")
            reduced = full[:axis] + full[axis + 1:]
        if reduced is None or not fits(reduced):
            raise ShapeError(f"mask of shape {tuple(m.shape)} matches neither the relevance {full} "
                             f"nor the relevance without its channel axis (channel_axis={channel_axis})")
        r = r.sum(axis=axis)
    if m.ndim == r.ndim - 1:
        m = m[None]
    r = _flat(r)
    m = xp.broadcast_to(m.reshape(m.shape[0], -1), r.shape)
    k = _int_param(k, "k")
    if k > r.shape[1]:
        raise ConfigError(f"k={k} exceeds the {r.shape[1]} features per sample")
    top = xp.argsort(-r, axis=1, kind="stable")[:, :k]
    return xp.take_along_axis(m, top, axis=1).sum(axis=1) / float(k)


# -- registered metrics and evaluate() --------------------------------------------------


def _target_param(explanation: Any, params: dict[str, Any]) -> Any:
    if "target" in params:
        return params.pop("target")
    t = getattr(explanation, "target", None)
    return "pred" if t is None else t


class MetricValues(numpy.ndarray):
    """Per-sample metric values (N,) that also carry per-sample details, e.g. a curve.

    An ordinary array for every use; ``details`` maps a name to an array ``(N, ...)``
    (``"curve"``) or a per-run array (``"fractions"``). :func:`evaluate` hands the details
    to its ``details=`` mapping.
    """

    details: dict[str, Any]

    def __new__(cls, values: Any, details: Mapping[str, Any]) -> MetricValues:
        obj = numpy.asarray(to_numpy(values)).view(cls)
        obj.details = dict(details)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.details = getattr(obj, "details", {})


def _flip_values(result: FlipResult, which: str) -> Any:
    host = result.to_numpy()
    return MetricValues(getattr(host, which), {"curve": host.curve, "fractions": host.fractions})


def _metric_aopc(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """MoRF AOPC of :func:`pixel_flipping`: mean drop of the target logit while the most
    relevant regions are removed (logit units; higher is better; a random map is the floor).

    Defaults after Samek et al. 2017: 20 steps up to 20% of the regions, region side
    ``auto`` (9/224 of the image side), baseline 0. The full curve is kept
    (``metrics/pixel_flipping_curve`` in results.h5).
    """
    tgt = _target_param(explanation, params)
    return _flip_values(pixel_flipping(model, x, _relevance_of(explanation), tgt, **params), "aopc")


def _metric_auc(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """Normalised area under the :func:`pixel_flipping` curve (lower is better for MoRF)."""
    tgt = _target_param(explanation, params)
    return _flip_values(pixel_flipping(model, x, _relevance_of(explanation), tgt, **params), "auc")


_metric_aopc.parameters_of = pixel_flipping  # type: ignore[attr-defined]  # lrpflow-info shows these parameters
_metric_auc.parameters_of = pixel_flipping  # type: ignore[attr-defined]


def _metric_conservation(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """:func:`conservation` (no parameters)."""
    if params:
        raise ConfigError(f"metric 'conservation' takes no parameters, got {sorted(params)}")
    return conservation(explanation)


def _metric_randomization(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """Correlation after randomising every layer (last cascade step) of :func:`randomization_sanity`.

    Give the method as ``explainer_factory=`` or as ``rule=``/``composite=`` (+ its parameters,
    and ``dtype=``, ``init=``); ``layers``, ``cascade``, ``absolute``, ``seed``, ``target``,
    ``labels`` pass through.
    """
    from lrpflow.explain import Explainer

    own = {k: params.pop(k) for k in ("layers", "cascade", "absolute", "seed", "labels") if k in params}
    target = _target_param(explanation, params)
    factory = params.pop("explainer_factory", None)
    if factory is None:
        if "rule" not in params and "composite" not in params:
            raise ConfigError("metric 'randomization_sanity' needs explainer_factory= or rule=/composite= "
                              "(the method that made the explanation)")
        spec = dict(params)
        spec.setdefault("dtype", "float64")

        def factory(m: Model) -> Explainer:
            return Explainer(m, **spec)
    elif params:
        raise ConfigError(f"metric 'randomization_sanity': unexpected parameters {sorted(params)} beside explainer_factory")
    return randomization_sanity(factory, model, x, target=target, **own).correlation[-1]


def _metric_sparseness(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """:func:`sparseness` (Gini index of |R|)."""
    if params:
        raise ConfigError(f"metric 'sparseness' takes no parameters, got {sorted(params)}")
    return sparseness(explanation)


def _metric_complexity(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """:func:`complexity` (entropy of |R| / Σ|R|)."""
    if params:
        raise ConfigError(f"metric 'complexity' takes no parameters, got {sorted(params)}")
    return complexity(explanation)


def _metric_topk(model: Model, x: Any, explanation: Any, **params: Any) -> Any:
    """:func:`topk_intersection`; needs ``mask=`` and ``k=``."""
    if "mask" not in params or "k" not in params:
        raise ConfigError("metric 'topk_intersection' needs mask= (ground truth) and k=")
    return topk_intersection(explanation, **params)


#: Built-in metrics: registry name → ``metric(model, x, explanation, **params) -> (N,)``.
METRICS: Mapping[str, Metric] = MappingProxyType({
    "pixel_flipping": _metric_aopc,
    "pixel_flipping_auc": _metric_auc,
    "conservation": _metric_conservation,
    "randomization_sanity": _metric_randomization,
    "sparseness": _metric_sparseness,
    "complexity": _metric_complexity,
    "topk_intersection": _metric_topk,
})

#: Aliases of the built-in metrics.
METRIC_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "pixel_flipping": ("aopc",),
    "pixel_flipping_auc": ("flip_auc",),
    "randomization_sanity": ("model_randomization",),
    "sparseness": ("gini",),
})


@hookimpl
def lrpflow_register_metrics(registry):  # noqa: ANN001 - typed in the hookspec
    for name, fn in METRICS.items():
        registry.add(name, fn, aliases=METRIC_ALIASES.get(name, ()))


def evaluate(metric_names: str | Sequence[str] | Mapping[str, Mapping[str, Any] | None], model: Model, x: Any,
             explanation: Any, *, registry: Any = None, details: dict[str, Any] | None = None,
             **params: Any) -> dict[str, Any]:
    """Run registered metrics on one explained batch: ``{name: per-sample values (N,)}``.

    Parameters
    ----------
    metric_names : str, sequence of str, or mapping name → parameters
        Registered metric names or aliases; a mapping also gives each metric's parameters.
    model, x, explanation
        The model, its input batch (declared layout) and ``explain(model, x, ...)``.
    registry : Registry, optional
        Default: the metrics registry of the default plugin manager (built-ins and plugins).
    details : dict, optional
        Receives ``{name: {"curve": (N, L+1), "fractions": (L+1,)}}`` for metrics that
        return :class:`MetricValues` (pixel flipping's perturbation curves).
    **params : mapping
        Per-metric parameters keyed by metric name, e.g.
        ``pixel_flipping={"steps": 10, "patch": 2}``.

    Returns
    -------
    dict
        Keyed by the registered (canonical) names, in the order requested.
    """
    if registry is None:
        from lrpflow.plugins import registries

        registry = registries().metrics
    if isinstance(metric_names, str):
        requested: dict[str, Any] = {metric_names: None}
    elif isinstance(metric_names, Mapping):
        requested = dict(metric_names)
    elif isinstance(metric_names, Sequence):
        requested = {name: None for name in metric_names}
    else:
        raise ConfigError(f"metric_names must be a name, a list of names or a mapping, got {type(metric_names).__name__}")
    plan: dict[str, dict[str, Any]] = {}
    for name, own in requested.items():
        if not isinstance(name, str):
            raise ConfigError(f"metric_names: metric names must be strings, got {name!r}")
        canonical = registry.canonical(name)  # UnknownNameError lists the known metrics
        if own is not None and not isinstance(own, Mapping):
            raise ConfigError(f"metric_names[{name!r}]: parameters must be a mapping, got {type(own).__name__}")
        plan[canonical] = dict(own or {})
    for key, value in params.items():
        canonical = registry.canonical(key) if key in registry else None
        if canonical is None or canonical not in plan:
            raise ConfigError(f"evaluate(): keyword {key!r} is not one of the requested metrics {list(plan)}; "
                              f"pass parameters as <metric>={{...}}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"evaluate(): {key}= must be a mapping of that metric's parameters, got {type(value).__name__}")
        plan[canonical].update(value)
    n = _relevance_of(explanation).shape[0]
    results: dict[str, Any] = {}
    for name, own in plan.items():
        values = registry.get(name)(model, x, explanation, **own)
        if getattr(values, "shape", None) != (n,):
            raise ShapeError(f"metric {name!r} returned shape {getattr(values, 'shape', None)}; expected per-sample values ({n},)")
        if isinstance(values, MetricValues):
            if details is not None and values.details:
                details[name] = values.details
            values = numpy.asarray(values)
        results[name] = values
    return results
