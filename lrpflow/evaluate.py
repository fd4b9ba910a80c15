"""Explanation quality metrics: pixel flipping (AOPC, :mod:`lrpflow.perturbation`), conservation, randomisation
sanity, sparseness.

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

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

import numpy

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.graph import Model
from lrpflow.hookspecs import hookimpl
from lrpflow.metric_args import _as_float, _batch, _flat, _int_param, _relevance_of
from lrpflow.perturbation import (
    BASELINES, ORDERS, PIXEL_FLIPPING_DEFAULTS, FlipResult, auto_patch_side, pixel_flipping,
)
from lrpflow.randomization import RandomizationResult, randomization_sanity, randomize_layer, rank, spearman

__all__ = [
    "FlipResult", "MetricValues", "PIXEL_FLIPPING_DEFAULTS", "auto_patch_side", "RandomizationResult", "Metric", "ORDERS", "BASELINES", "METRICS",
    "pixel_flipping", "conservation", "ledger_absorbed", "randomization_sanity", "randomize_layer",
    "spearman", "rank", "sparseness", "gini", "complexity", "topk_intersection", "evaluate",
]

class Metric(Protocol):
    """What ``lrpflow_register_metrics`` registers: one value per sample.

    A metric computed from the explanation alone may set the attribute ``uses_input = False``;
    the pipeline then passes ``x=None`` instead of bringing every batch to the model's layout.
    """

    def __call__(self, model: Model, x: Any, explanation: Any, **params: Any) -> Any:  # pragma: no cover
        ...


# -- helpers ----------------------------------------------------------------------

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


for _fn in (_metric_conservation, _metric_sparseness, _metric_complexity, _metric_topk):
    _fn.uses_input = False  # type: ignore[attr-defined]  # computed from the explanation alone


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
