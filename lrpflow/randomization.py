"""Rank correlation and the model-randomisation sanity check (Adebayo et al., "Sanity checks for
saliency maps", NeurIPS 2018): how much an explanation changes when the model's weights are
replaced by random ones, layer by layer from the top (cascading) or one layer at a time.

:func:`randomization_sanity` gives the Spearman correlation (:func:`spearman`, of ranks with
ties averaged) between the maps of the trained and the randomised model, per sample and step;
near 0 means the explanation depends on what the model learned.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.graph import Model
from lrpflow.metric_args import _as_float, _check_model, _flat, _int_param, _relevance_of

#: Parameters :func:`randomize_layer` leaves alone by default (running statistics, not learned weights).
RUNNING_STATISTICS = ("mean", "var", "running_mean", "running_var")


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
