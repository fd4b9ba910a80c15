"""The rule protocol and the "modified gradient" machinery every LRP rule is built from.

For a linear-like layer a rule picks one or more *contributions* ``(f, ρ, β)``: an input
modifier ``f``, a weight modifier ``ρ`` and a bias modifier ``β`` (or no bias). Then

    z = Σ_k apply(f_k(x), ρ_k(W), β_k(b)),   s = R ⊘ stab(z),   R_in = Σ_k f_k(x) ⊙ ρ_k(W)ᵀ s,

one modified forward and one vector–Jacobian product per contribution — the N×I×J
tensor of contributions ``z_ij`` is never built. Modified parameters are cached in the
:class:`NodeContext` (the Explainer keeps that cache between calls).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import UnsupportedLayerError
from lrpflow.layers.base import Layer, input_times


# --- stabilised division ------------------------------------------------------


def stabilize(z: Any, eps: float) -> Any:
    """``z + ε·s(z)`` with ``s(0) = +1`` (the toolbox's sign; ``np.sign`` would give 0)."""
    den = (z >= 0).astype(z.dtype)  # s(z) = 2·[z ≥ 0] − 1, without a where() on a random mask
    den *= 2 * eps
    den -= eps
    den += z
    return den


def safe_divide(a: Any, b: Any, overwrite_b: bool = False) -> Any:
    """``a / b`` where ``b ≠ 0`` and 0 where ``b = 0`` — never NaN or Inf from a zero denominator.

    ``overwrite_b=True``: ``b`` is a scratch array the caller no longer needs; on numpy
    the quotient is then written into it (where it is 0 it stays 0).
    """
    xp = get_namespace(a, b)
    if xp is numpy:  # a plain division, then 0 where b = 0 (a third faster than a masked division)
        shape, dtype = numpy.broadcast_shapes(numpy.shape(a), numpy.shape(b)), numpy.result_type(a, b)
        zero = None if numpy.all(b) else numpy.equal(b, 0)  # the mask only where a zero exists (rare)
        if overwrite_b and isinstance(b, numpy.ndarray) and b.shape == shape and b.dtype == dtype:
            q = b
        else:
            q = numpy.empty(shape, dtype=dtype)
        with numpy.errstate(divide="ignore", invalid="ignore"):
            numpy.divide(a, b, out=q)
        if zero is not None:
            numpy.copyto(q, 0, where=zero)
        return q
    zero = b == 0
    q = a / (b + zero)  # 1 where b = 0, so nothing divides by zero
    q *= ~zero
    return q


def divide_stabilized(r: Any, z: Any, eps: float) -> Any:
    """``r / (z + ε·s(z))``; with ε > 0 the denominator is never 0, with ε = 0 zeros give 0."""
    if eps > 0:
        den = stabilize(z, eps)  # a fresh array
        if den.shape == r.shape and den.dtype == r.dtype:
            return get_namespace(r).divide(r, den, out=den)  # in place: one activation-sized buffer less
        return r / den
    return safe_divide(r, z)


# --- modifiers ------------------------------------------------------------------

Modifier = Callable[[Any], Any]


def keep(a: Any) -> Any:
    return a


def positive(a: Any) -> Any:
    return get_namespace(a).maximum(a, 0)


def negative(a: Any) -> Any:
    return get_namespace(a).minimum(a, 0)


def square(a: Any) -> Any:
    return a * a


def ones(a: Any) -> Any:
    return get_namespace(a).ones_like(a)


@dataclass(frozen=True)
class Scaled:
    """``factor · inner(a)`` (e.g. ``γ·W⁺``); hashable so modified parameters can be cached."""

    factor: float
    inner: Modifier

    def __call__(self, a: Any) -> Any:
        return self.inner(a) * self.factor


@dataclass(frozen=True)
class Plus:
    """``a + factor · inner(a)`` (the gamma rule's ``W + γW⁺``)."""

    factor: float
    inner: Modifier

    def __call__(self, a: Any) -> Any:
        return a + self.inner(a) * self.factor


@dataclass(frozen=True)
class Constant:
    """An input modifier replacing x by a bound (``low``/``high`` of the z^B rule)."""

    value: Any  # float, or a hashable wrapper of an array
    per_sample: str | None = None  # "min"/"max": the sample's own bound

    def __call__(self, x: Any) -> Any:
        xp = get_namespace(x)
        if self.per_sample is not None:
            axes = tuple(range(1, x.ndim))
            v = x.min(axis=axes, keepdims=True) if self.per_sample == "min" else x.max(axis=axes, keepdims=True)
            return xp.broadcast_to(v, x.shape)
        import numpy

        return xp.broadcast_to(xp.asarray(numpy.asarray(self.value), dtype=x.dtype), x.shape)


@dataclass(frozen=True)
class Contribution:
    """One term of a modified forward pass: input modifier, weight modifier, bias modifier (None: no bias)."""

    inputs: Modifier = keep
    weight: Modifier = keep
    bias: Modifier | None = keep


# --- per-node context --------------------------------------------------------------


@dataclass
class NodeContext:
    """What a rule may know about the node it is applied to."""

    name: str
    cache: dict[Any, Any] = field(default_factory=dict)
    #: per input: True if the input is known to be ≥ 0 (after ReLU, for instance)
    nonneg: tuple[bool, ...] = ()
    #: z = apply(x, W, b) of the node, read from its forward output (None: recompute)
    z: Any = None
    #: device booleans "this denominator is finite", checked by propagate() once per pass (no sync per node):
    #: an overflowed z (inf) would otherwise turn R / z into a silent 0
    finite: list[Any] = field(default_factory=list)

    def check_finite(self, z: Any) -> None:
        """Record whether the denominator ``z`` is finite (see :attr:`finite`)."""
        self.finite.append(get_namespace(z).isfinite(z).all())

    def modified(self, layer: Layer, xs: Sequence[Any], weight_fn: Modifier, bias_fn: Modifier | None) -> tuple[Any, Any]:
        """``(ρ(W), β(b))`` for this node, cached by modifier and dtype/backend."""
        x0 = xs[0]
        key = (self.name, id(layer), getattr(layer, "_version", 0), weight_fn, bias_fn,
               type(x0).__module__, x0.dtype, tuple(x0.shape[1:]))
        hit = self.cache.get(key)
        if hit is None:
            w, b = layer.lrp_params(xs)  # type: ignore[attr-defined]
            hit = (weight_fn(w), None if (b is None or bias_fn is None) else bias_fn(b))
            self.cache[key] = hit
        return hit


@dataclass(frozen=True)
class Stacked:
    """``[ρ_1(W); ρ_2(W); ...]`` along the weight's input-channel axis (axis −2)."""

    parts: tuple[Modifier, ...]

    def __call__(self, w: Any) -> Any:
        return get_namespace(w).concatenate([f(w) for f in self.parts], axis=-2)


@dataclass(frozen=True)
class Summed:
    """``β_1(b) + β_2(b) + ...`` over the bias modifiers that are not None (the stacked product's bias)."""

    parts: tuple[Modifier | None, ...]

    def __call__(self, b: Any) -> Any:
        terms = [f(b) for f in self.parts if f is not None]
        return sum(terms[1:], terms[0])


def modified_gradient(layer: Layer, xs: Sequence[Any], r: Any, parts: Sequence[Contribution], ctx: NodeContext,
                      divide: Callable[[Any, Any], Any], z: Any | None = None) -> list[Any]:
    """Relevance through a linear-like layer by the modified-gradient scheme.

    ``z = Σ_k apply(f_k(x), ρ_k(W), β_k(b))`` (or the given ``z``), ``s = divide(r, z)``,
    ``R_in = Σ_k f_k(x) ⊙ ρ_k(W)ᵀ s``.

    On layers whose weight ends in (input, output) channels (``channel_blocks``) several
    contributions are one product: inputs ``[f_1(x), f_2(x), ...]`` stacked along the
    channels against ``[ρ_1(W); ρ_2(W); ...]`` give ``z`` in one modified forward, and one
    transpose gives every ``ρ_k(W)ᵀ s`` at once.
    """
    if len(parts) > 1 and len(xs) == 1 and getattr(layer, "channel_blocks", False):
        return _stacked_gradient(layer, xs[0], r, parts, ctx, divide, z)
    prepared = []
    for part in parts:
        fx = [part.inputs(x) for x in xs] if part.inputs is not keep else list(xs)
        w, b = ctx.modified(layer, xs, part.weight, part.bias)
        prepared.append((fx, w, b))
    if z is None:
        for fx, w, b in prepared:
            zk = layer.apply(fx, w, b)  # type: ignore[attr-defined]
            z = zk if z is None else z + zk
        ctx.check_finite(z)
    s = divide(r, z)
    out: list[Any] | None = None
    for fx, w, _ in prepared:
        grads = layer.apply_transpose(s, w, fx)  # type: ignore[attr-defined]
        terms = [_times(f, g, s, r) for f, g in zip(fx, grads)] if len(xs) == 1 else [f * g for f, g in zip(fx, grads)]
        out = terms if out is None else [o + t for o, t in zip(out, terms)]
    assert out is not None
    return out


def _times(f: Any, g: Any, *others: Any) -> Any:
    """``f ⊙ g``, computed in place in ``g`` when ``g`` is a fresh writeable array of the
    result's shape and dtype that shares no memory with ``others`` (saves one activation)."""
    xp = get_namespace(g)
    flags = getattr(g, "flags", None)
    if flags is not None and flags.owndata and not any(o is g or xp.may_share_memory(o, g) for o in others):
        return input_times(f, g)
    return f * g


def _stacked_gradient(layer: Layer, x: Any, r: Any, parts: Sequence[Contribution], ctx: NodeContext,
                      divide: Callable[[Any, Any], Any], z: Any | None) -> list[Any]:
    """:func:`modified_gradient` for several contributions as one product on stacked channels."""
    xp = get_namespace(x)
    fx = [part.inputs(x) for part in parts]
    biases = tuple(p.bias for p in parts)
    w, bias = ctx.modified(layer, [x], Stacked(tuple(p.weight for p in parts)),
                           Summed(biases) if any(b is not None for b in biases) else None)
    x_stack = xp.concatenate(fx, axis=-1)
    if z is None:
        z = layer.apply([x_stack], w, bias)  # type: ignore[attr-defined]
        ctx.check_finite(z)
    g = layer.apply_transpose(divide(r, z), w, [x_stack])[0]  # type: ignore[attr-defined]
    c = x.shape[-1]
    out = fx[0] * g[..., :c]
    for k in range(1, len(parts)):
        out += fx[k] * g[..., k * c : (k + 1) * c]
    return [out]


# --- the rule protocol --------------------------------------------------------------


class Rule:
    """Base of relevance rules: dispatches on the layer's role.

    A rule is a frozen dataclass of its parameters. Subclasses implement
    :meth:`linear` (affine layers) and may override :meth:`maxpool`; elementwise and
    SoftMax layers pass relevance through, shape layers move it.
    """

    #: relevance initialisation when the caller does not choose one
    default_init: ClassVar[str] = "logit"
    #: True for whole-model attribution methods (gradient, smoothgrad, ...): not for overrides
    global_only: ClassVar[bool] = False
    #: True if the result for a sample depends on the whole batch (random draws of the batch's
    #: shape): the batch is then explained in one piece, never in chunks
    batch_coupled: ClassVar[bool] = False

    def backward(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        role = layer.role
        if role == "linear":
            return self.linear(layer, xs, y, r, ctx)
        if role == "maxpool":
            return self.maxpool(layer, xs, y, r, ctx)
        if role in ("elementwise", "softmax"):
            return self.elementwise(layer, xs, y, r, ctx)
        if role == "shape":
            return layer.vjp(xs, y, r)
        raise UnsupportedLayerError(f"node {ctx.name!r}: layer {layer.type_name} has role {role!r}, which no rule handles "
                                    "(expected linear, maxpool, elementwise, softmax or shape)")

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        raise UnsupportedLayerError(f"node {ctx.name!r}: rule {self!r} does not apply to {layer.type_name} layers")

    def maxpool(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        """Winner-take-all: each window's relevance goes to its maxima (ties share equally)."""
        return [layer.winners(xs[0], y, r)]  # type: ignore[attr-defined]

    def elementwise(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return [r]

    # whole-model hooks (used by attribution methods) -------------------------------
    def samples(self, x: Any) -> Iterator[tuple[Any, float]] | None:
        """Perturbed inputs ``(x_k, weight_k)`` to average over, produced lazily; None (LRP): ``x`` itself."""
        return None

    def finalize(self, x: Any, r: Any) -> Any:
        """Map the relevance at the input to the final attribution; LRP: unchanged."""
        return r


def uniform_over_windows(layer: Layer, xs: Sequence[Any], r: Any) -> list[Any]:
    """Spread each window's relevance uniformly over its in-image members (flat on pools)."""
    xp = get_namespace(r)
    x = xs[0]
    count = layer.window_sum(xp.ones_like(x))  # type: ignore[attr-defined]
    return [layer.window_sum_t(safe_divide(r, count), x.shape)]  # type: ignore[attr-defined]


def proportional_over_windows(layer: Layer, xs: Sequence[Any], r: Any, eps: float) -> list[Any]:
    """``x_i / (Σ_window x + ε·s) · R_j`` over each window (MaxPool treated as a sum pool)."""
    x = xs[0]
    z = layer.window_sum(x)  # type: ignore[attr-defined]
    return [x * layer.window_sum_t(divide_stabilized(r, z, eps), x.shape)]  # type: ignore[attr-defined]


def check_finite_param(name: str, value: float, rule: str, *, low: float | None = None) -> None:
    """Reject NaN/Inf (and values below ``low``) in a rule parameter."""
    from lrpflow.errors import ConfigError

    if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(f"rule {rule!r}: parameter {name} must be a finite number, got {value!r}")
    if low is not None and float(value) < low:
        raise ConfigError(f"rule {rule!r}: parameter {name} must be ≥ {low}, got {value!r}")
