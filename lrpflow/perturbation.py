"""Perturbation analysis: pixel flipping (Samek et al. 2017, "Evaluating the visualization of what a deep neural
network has learned"): remove the regions a map calls most relevant step by step and follow the explained logit.

Registered as the metrics ``pixel_flipping`` (AOPC) and ``pixel_flipping_auc`` by :mod:`lrpflow.evaluate`.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.chunks import cpu_workers, map_chunks
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.graph import Model

from lrpflow.metric_args import _as_float, _check_model, _int_param

__all__ = ["FlipResult", "PIXEL_FLIPPING_DEFAULTS", "ORDERS", "BASELINES", "auto_patch_side", "pixel_flipping"]

#: Orders in which :func:`pixel_flipping` removes regions.
ORDERS = ("most_relevant_first", "least_relevant_first", "random")
#: Named baselines of :func:`pixel_flipping` (a number or an array is a constant baseline).
BASELINES = ("zero", "mean", "uniform_noise")




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

