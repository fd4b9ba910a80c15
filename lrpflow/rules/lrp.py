"""The built-in LRP rules.

Each rule is a frozen dataclass of its parameters that connects parts of
:mod:`lrpflow.rules.base`: which contributions (input/weight/bias modifiers) form the
modified forward pass and how the denominator is stabilised. References: Bach et al.,
PLoS ONE 2015 (z, ε, αβ); Montavon et al., Pattern Recognition 2017 (z⁺, z^B, w²);
Montavon et al., "Layer-wise relevance propagation: an overview", 2019 (γ, flat).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from lrpflow.backend import can_overwrite, get_namespace
from lrpflow.errors import ConfigError, UnsupportedLayerError
from lrpflow.layers import _windows as win
from lrpflow.layers.base import Layer, input_times
from lrpflow.layers.conv import Conv2d
from lrpflow.layers.dense import Linear
from lrpflow.rules.base import (
    Constant,
    Contribution,
    NodeContext,
    Plus,
    Rule,
    Scaled,
    check_finite_param,
    divide_stabilized,
    keep,
    modified_gradient,
    negative,
    ones,
    positive,
    proportional_over_windows,
    safe_divide,
    square,
    uniform_over_windows,
)

#: the toolbox's stabiliser of LRP-0 ("simple") and of the αβ denominators
TINY = 1e-16


def _bias(use: bool, fn: Any = keep) -> Any:
    return fn if use else None


def _has_bias(layer: Layer, xs: Sequence[Any]) -> bool:
    return layer.lrp_params(xs)[1] is not None  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: ``R_i = Σ_j z_ij / (z_j + ε·s(z_j)) · R_j`` with ``s(0) = +1``.

    Notes
    -----
    ``z_ij = x_i w_ij``, ``z_j = Σ_i z_ij + b_j`` (``bias=False``: without ``b_j``).
    ε = 0 is allowed: a zero denominator then passes no relevance. Scope: given by name,
    it acts on layers with weights; pools and Add get ``norm`` (docs/conventions.md).
    """

    epsilon: float = 1e-6
    bias: bool = True

    def __post_init__(self) -> None:
        check_finite_param("epsilon", self.epsilon, "epsilon", low=0.0)

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        z = ctx.z if (self.bias or not _has_bias(layer, xs)) else None
        eps = self.epsilon
        return modified_gradient(layer, xs, r, [Contribution(bias=_bias(self.bias))], ctx,
                                 lambda a, d: divide_stabilized(a, d, eps), z=z)


@dataclass(frozen=True)
class Z(Epsilon):
    """LRP-0: ``R_i = Σ_j z_ij / z_j · R_j`` (stabilised by ``1e-16·s(z_j)`` as in the toolbox)."""

    epsilon: float = TINY
    bias: bool = True


@dataclass(frozen=True)
class Gamma(Rule):
    """Generalised LRP-γ: favour the contributions that share the sign of the output.

    Notes
    -----
    With ``z_ij = x_i w_ij`` and ``z_j = Σ_i z_ij + b_j`` (the plain output):

    - where ``z_j > 0``: ``R_i = Σ_j z⁺γ_ij / (Σ_i' z⁺γ_i'j + b_j + γ·b⁺_j + stab·s) · R_j``
      with ``z⁺γ_ij = z_ij + γ·(z_ij)⁺`` — i.e. ``x⁺(W + γW⁺) + x⁻(W + γW⁻)``;
    - where ``z_j < 0``: the mirror image, ``z⁻γ_ij = z_ij + γ·(z_ij)⁻`` and ``b_j + γ·b⁻_j``;
    - where ``z_j = 0``: nothing is passed.

    This is zennit's ``Gamma`` (Montavon et al. 2019, generalised by Andéol et al. 2021);
    for inputs ≥ 0 and positive outputs it is the original γ-rule ``x (W + γW⁺)``. At
    γ = 0 it is LRP-ε with ε = ``stabilizer`` (up to outputs that are exactly 0).
    Computed as one modified forward of both sign cases and one vector–Jacobian product.
    Scope: layers with weights (see :mod:`lrpflow.composites`).
    """

    gamma: float = 0.25
    bias: bool = True
    stabilizer: float = TINY

    def __post_init__(self) -> None:
        check_finite_param("gamma", self.gamma, "gamma", low=0.0)
        check_finite_param("stabilizer", self.stabilizer, "gamma", low=0.0)

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        g, eps = float(self.gamma), self.stabilizer
        nonneg = bool(ctx.nonneg) and all(ctx.nonneg)
        z = ctx.z if self.bias or not _has_bias(layer, xs) else None  # the plain output decides the case
        if z is None:
            z = layer.apply(xs, *ctx.modified(layer, xs, keep, _bias(self.bias)))  # type: ignore[attr-defined]
        if getattr(layer, "channel_blocks", False) and len(xs) == 1:
            return self._blocked(layer, xs[0], z, r, ctx, g, eps, nonneg)
        return self._generic(layer, xs, z, r, ctx, g, eps, nonneg)

    def _shares(self, z: Any, zp: Any, zn: Any, r: Any, eps: float) -> tuple[Any, Any]:
        """``s = [z > 0]·R / stab(z⁺γ)``, ``t = [z < 0]·R / stab(z⁻γ)``."""
        s = divide_stabilized(r, zp, eps)
        s *= z > 0
        t = divide_stabilized(r, zn, eps)
        t *= z < 0
        return s, t

    def _blocked(self, layer: Layer, x: Any, z: Any, r: Any, ctx: NodeContext, g: float, eps: float,
                 nonneg: bool) -> list[Any]:
        """Both sign cases as one product: ``[x⁺, x⁻] · [[A, B], [B, A]]`` (``A = W + γW⁺``,
        ``B = W + γW⁻``), or ``x · [A, B]`` for inputs ≥ 0; one transpose for both shares."""
        bias = _bias(self.bias, _GammaBiasPair(g))
        if nonneg:
            w, b = ctx.modified(layer, [x], _GammaPair(g), bias)
            z2 = layer.apply([x], w, b)  # type: ignore[attr-defined]
        else:
            w, b = ctx.modified(layer, [x], _GammaBlocks(g), bias)
            z2 = layer.apply_signed(x, w, b)  # type: ignore[attr-defined]
        k = z2.shape[-1] // 2
        s, t = self._shares(z, z2[..., :k], z2[..., k:], r, eps)
        del z2
        return [layer.input_times_transpose(x, [s, t], w, signed=not nonneg)]  # type: ignore[attr-defined]

    def _generic(self, layer: Layer, xs: Sequence[Any], z: Any, r: Any, ctx: NodeContext, g: float, eps: float,
                 nonneg: bool) -> list[Any]:
        """Any linear-like layer: separate products for ``A = W + γW⁺`` and ``B = W + γW⁻``."""
        wa, ba = ctx.modified(layer, xs, Plus(g, positive), _bias(self.bias, Plus(g, positive)))
        wb, bb = ctx.modified(layer, xs, Plus(g, negative), _bias(self.bias, Plus(g, negative)))
        xpos = xs if nonneg else [positive(x) for x in xs]
        zp = layer.apply(xpos, wa, ba)  # type: ignore[attr-defined]
        zn = layer.apply(xpos, wb, bb)  # type: ignore[attr-defined]
        if not nonneg:
            xneg = [negative(x) for x in xs]
            zp = zp + layer.apply(xneg, wb, None)  # type: ignore[attr-defined]
            zn = zn + layer.apply(xneg, wa, None)  # type: ignore[attr-defined]
        s, t = self._shares(z, zp, zn, r, eps)
        vjp = layer.apply_transpose  # type: ignore[attr-defined]
        # R = x⁺ ⊙ (Aᵀs + Bᵀt) + x⁻ ⊙ (Bᵀs + Aᵀt)
        out = [xq * (ga + gb) for xq, ga, gb in zip(xpos, vjp(s, wa, xpos), vjp(t, wb, xpos))]
        if not nonneg:
            out = [o + xq * (ga + gb) for o, xq, ga, gb in zip(out, xneg, vjp(s, wb, xneg), vjp(t, wa, xneg))]
        return out


@dataclass(frozen=True)
class _GammaPair:
    """``[W + γW⁺, W + γW⁻]`` along the output channels (inputs ≥ 0: both sign cases at once)."""

    gamma: float

    def __call__(self, w: Any) -> Any:
        xp = get_namespace(w)
        return xp.concatenate([w + positive(w) * self.gamma, w + negative(w) * self.gamma], axis=-1)


@dataclass(frozen=True)
class _GammaBlocks:
    """``[[A, B], [B, A]]`` with ``A = W + γW⁺``, ``B = W + γW⁻`` (inputs ``[x⁺, x⁻]``)."""

    gamma: float

    def __call__(self, w: Any) -> Any:
        xp = get_namespace(w)
        a, b = w + positive(w) * self.gamma, w + negative(w) * self.gamma
        return xp.concatenate([xp.concatenate([a, b], axis=-1), xp.concatenate([b, a], axis=-1)], axis=-2)


@dataclass(frozen=True)
class _GammaBiasPair:
    """``[b + γb⁺, b + γb⁻]``."""

    gamma: float

    def __call__(self, b: Any) -> Any:
        return get_namespace(b).concatenate([b + positive(b) * self.gamma, b + negative(b) * self.gamma])


@dataclass(frozen=True)
class Norm(Rule):
    """The proportional rule of parameter-free linear maps: ``R_i = Σ_j x_i w_ij / (z_j + s·sign(z_j)) · R_j``.

    Notes
    -----
    ``s = 1e-16``, ``sign(0) = +1``. The rule of sum/average/global-average pooling, mean
    reductions and sums of activations (residual Add) in every composite and under every
    single rule (zennit's ``Norm``; Montavon et al. 2019). Without a bias it conserves
    relevance exactly wherever ``z_j ≠ 0``. It applies to any linear-like layer.
    """

    stabilizer: float = TINY

    def __post_init__(self) -> None:
        check_finite_param("stabilizer", self.stabilizer, "norm", low=0.0)

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        eps = self.stabilizer
        return modified_gradient(layer, xs, r, [Contribution()], ctx, lambda a, d: divide_stabilized(a, d, eps), z=ctx.z)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ: ``R_i = Σ_j (α·z⁺_ij / (P_j + s) − β·z⁻_ij / (N_j − s)) · R_j`` with α − β = 1.

    Notes
    -----
    ``z⁺_ij = (x_i w_ij)⁺``, ``P_j = Σ_i z⁺_ij + b⁺_j``, ``N_j = Σ_i z⁻_ij + b⁻_j`` (biases
    only with ``bias=True``), ``s = 1e-16``. Without ``beta`` it is ``α − 1`` (the toolbox's
    ``alphabeta`` parameter α). With inputs ≥ 0 and the bias included, ``N_j = z_j − P_j``
    is read from the forward output, as in the toolbox. Scope: given by name, it acts on
    layers with weights; pools and Add get ``norm`` (so α no longer multiplies relevance there).
    """

    alpha: float = 2.0
    beta: float | None = None
    bias: bool = True
    stabilizer: float = TINY

    def __post_init__(self) -> None:
        check_finite_param("alpha", self.alpha, "alpha_beta")
        if self.beta is None:
            object.__setattr__(self, "beta", float(self.alpha) - 1.0)
        check_finite_param("beta", self.beta, "alpha_beta")
        if abs(float(self.alpha) - float(self.beta) - 1.0) > 1e-9:
            raise ConfigError(f"rule 'alpha_beta': alpha - beta must be 1 (conservation), got alpha={self.alpha}, beta={self.beta}")

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        alpha, beta, eps = float(self.alpha), float(self.beta), self.stabilizer  # type: ignore[arg-type]
        # P ≥ 0 and N ≤ 0, so with s > 0 neither denominator can vanish; N read as z − P may
        # carry rounding of either sign, hence the safe division there
        pos_div, neg_div = _StabilizedDivision(eps), _StabilizedDivision(-eps)
        if ctx.nonneg and all(ctx.nonneg):
            return self._nonneg(layer, xs, y, r, ctx, alpha, beta, pos_div, neg_div)
        if getattr(layer, "channel_blocks", False) and len(xs) == 1:
            return self._blocked(layer, xs, r, ctx, alpha, beta, pos_div, neg_div)
        out = None
        if alpha != 0:
            pos = [Contribution(positive, positive, _bias(self.bias, positive)), Contribution(negative, negative, None)]
            out = [alpha * t for t in modified_gradient(layer, xs, r, pos, ctx, pos_div)]
        if beta != 0:
            neg = [Contribution(positive, negative, _bias(self.bias, negative)), Contribution(negative, positive, None)]
            rn = [beta * t for t in modified_gradient(layer, xs, r, neg, ctx, neg_div)]
            out = [-t for t in rn] if out is None else [o - t for o, t in zip(out, rn)]
        if out is None:
            xp = get_namespace(r)
            out = [xp.zeros_like(x) for x in xs]
        return out

    def _blocked(self, layer: Layer, xs: Sequence[Any], r: Any, ctx: NodeContext, alpha: float, beta: float,
                 pos_div: Any, neg_div: Any) -> list[Any]:
        """Signed inputs in one modified forward and one transpose, on stacked channels.

        ``[x⁺, x⁻]`` (channels stacked) times ``[W⁺; W⁻]`` gives ``P``; ``N = z − P`` is read
        from the forward output as the toolbox does (with the bias left out, ``[[W⁺, W⁻],
        [W⁻, W⁺]]`` gives ``[P, N]`` at once). The transpose of ``[R/P, R/N]`` against the
        block weight with its columns scaled by ``α`` and ``−β`` gives both input shares
        (:meth:`~lrpflow.layers.base.LinearLike.input_times_transpose`, ``signed``).
        """
        x = xs[0]
        if beta == 0 or alpha == 0:  # one share only: [x⁺, x⁻] · [W⁺; W⁻] = P (or [W⁻; W⁺] = N)
            wfn, bfn = (_pos_stack, positive) if beta == 0 else (_neg_stack, negative)
            wb, bb = ctx.modified(layer, xs, wfn, _bias(self.bias, bfn))
            z = layer.apply_signed(x, wb, bb)  # type: ignore[attr-defined]
            s = pos_div(r, z, scratch=True) if beta == 0 else neg_div(r, z, scratch=True)
            s *= alpha if beta == 0 else -beta
            return [layer.input_times_transpose(x, [s], wb, signed=True)]  # type: ignore[attr-defined]
        if self._n_from_z(layer, xs, ctx):
            zp = self._p_plus_s(layer, xs, ctx, _pos_stack, lambda w, b: layer.apply_signed(x, w, b))  # type: ignore[attr-defined]
            parts = self._quotients(r, zp, ctx.z - zp)
        else:
            wb, bb = ctx.modified(layer, xs, _sign_blocks, _bias(self.bias, _sign_split))
            z = layer.apply_signed(x, wb, bb)  # type: ignore[attr-defined]
            parts = [pos_div(r, z[..., : z.shape[-1] // 2]), neg_div(r, z[..., z.shape[-1] // 2 :])]
        wt, _ = ctx.modified(layer, xs, _SignBlocks(alpha, -beta), None)
        return [layer.input_times_transpose(x, parts, wt, signed=True)]  # type: ignore[attr-defined]

    def _n_from_z(self, layer: Layer, xs: Sequence[Any], ctx: NodeContext) -> bool:
        """True if ``N`` can be read as ``z − P`` from the forward output (it holds the bias the rule uses)."""
        return ctx.z is not None and (self.bias or not _has_bias(layer, xs))

    def _p_plus_s(self, layer: Layer, xs: Sequence[Any], ctx: NodeContext, weight_fn: Any, apply: Any) -> Any:
        """``P + s`` (a fresh array): the stabilizer rides in P's bias ``b⁺ + s`` (no pass of its own),
        or is added after the sum where there is no bias."""
        if self.bias and _has_bias(layer, xs):
            return apply(*ctx.modified(layer, xs, weight_fn, _Shifted(positive, self.stabilizer)))
        zp = apply(*ctx.modified(layer, xs, weight_fn, None))
        if can_overwrite(zp, self.stabilizer):
            zp += self.stabilizer
            return zp
        return zp + self.stabilizer

    def _quotients(self, r: Any, p: Any, n: Any) -> list[Any]:
        """``[R/(P + s), R/(N − s)]`` from ``p = P + s`` and ``n = z − p = N − s`` (both overwritten).

        ``P + s ≥ s > 0`` needs no search for zeros when ``s > 0``; ``N − s`` read as
        ``z − (P + s)`` may round to 0: a safe division there.
        """
        return [_divide_into(r, p, self.stabilizer > 0), _divide_into(r, n, False)]

    def _nonneg(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext, alpha: float, beta: float,
                pos_div: Any, neg_div: Any) -> list[Any]:
        """Inputs ≥ 0: ``z⁺ = x W⁺ + b⁺``, ``z⁻ = x W⁻ + b⁻``; one forward less via ``z⁻ = z − z⁺``."""
        wp, bp = ctx.modified(layer, xs, positive, _bias(self.bias, positive))
        if getattr(layer, "nonneg_weight", False):
            # pools and Add: every contribution is ≥ 0, so P = z, N = 0 and R_in = α·x ⊙ Wᵀ(R / P)
            zp = ctx.z if ctx.z is not None else layer.apply(xs, wp, bp)  # type: ignore[attr-defined]
            sp = pos_div(r, zp) * alpha
            return [x * g for x, g in zip(xs, layer.apply_transpose(sp, wp, xs))]  # type: ignore[attr-defined]
        one = len(xs) == 1 and hasattr(layer, "input_times_transpose")
        if alpha != 0 and beta != 0 and one and getattr(layer, "channel_blocks", False) and self._n_from_z(layer, xs, ctx):
            # one transpose for both shares: [αW⁺, −βW⁻]ᵀ [R/(P + s), R/(N − s)], N − s = z − (P + s)
            zp = self._p_plus_s(layer, xs, ctx, positive, lambda w, b: layer.apply(xs, w, b))  # type: ignore[attr-defined]
            wcat, _ = ctx.modified(layer, xs, _SignConcat(alpha, -beta), None)
            return [layer.input_times_transpose(xs[0], self._quotients(r, zp, ctx.z - zp), wcat)]  # type: ignore[attr-defined]
        wn, bn = ctx.modified(layer, xs, negative, _bias(self.bias, negative))
        zp = layer.apply(xs, wp, bp)  # type: ignore[attr-defined]
        if beta == 0:
            sp = pos_div(r, zp, scratch=True)
            sp *= alpha
            if one:
                return [layer.input_times_transpose(xs[0], [sp], wp)]  # type: ignore[attr-defined]
            return [input_times(x, g) for x, g in zip(xs, layer.apply_transpose(sp, wp, xs))]  # type: ignore[attr-defined]
        if self._n_from_z(layer, xs, ctx):
            zn = ctx.z - zp
        else:
            zn = layer.apply(xs, wn, bn)  # type: ignore[attr-defined]
        if alpha != 0 and one and getattr(layer, "channel_blocks", False):
            # one transpose for both shares: [αW⁺, −βW⁻]ᵀ [R/P, R/N]
            wcat, _ = ctx.modified(layer, xs, _SignConcat(alpha, -beta), None)
            parts = [pos_div(r, zp, scratch=True), neg_div(r, zn, scratch=True)]
            return [layer.input_times_transpose(xs[0], parts, wcat)]  # type: ignore[attr-defined]
        sn = neg_div(r, zn, scratch=True)
        sn *= beta
        gn = layer.apply_transpose(sn, wn, xs)  # type: ignore[attr-defined]
        if alpha == 0:
            return [-x * g for x, g in zip(xs, gn)]
        sp = pos_div(r, zp, scratch=True)
        sp *= alpha
        gp = layer.apply_transpose(sp, wp, xs)  # type: ignore[attr-defined]
        return [x * (a - b) for x, a, b in zip(xs, gp, gn)]


class _StabilizedDivision:
    """``a / (d + stabilizer)``, 0 where that denominator is 0 (the αβ shares' divisions).

    With a positive stabilizer the caller's denominators are sums of non-negative terms
    (``P``): ``P + s ≥ s > 0`` cannot vanish, so no search for zeros is needed.
    """

    def __init__(self, stabilizer: float) -> None:
        self.stabilizer = stabilizer

    def __call__(self, a: Any, d: Any, scratch: bool = False) -> Any:
        """``scratch=True``: ``d`` is the caller's to overwrite (no buffer for ``d + s``)."""
        if scratch and can_overwrite(d, a):
            d += self.stabilizer
        else:
            d = d + self.stabilizer
        return _divide_into(a, d, self.stabilizer > 0)  # d + s is ours: divide in place


def _divide_into(a: Any, d: Any, nonzero: bool) -> Any:
    """``a / d`` written into ``d``; ``nonzero``: ``d`` cannot vanish (no search for zeros),
    else 0 where ``d = 0`` (:func:`~lrpflow.rules.base.safe_divide`)."""
    if nonzero and can_overwrite(d, a):
        return get_namespace(a, d).divide(a, d, out=d)
    return safe_divide(a, d, overwrite_b=True)


def _sign_blocks(w: Any) -> Any:
    """``[[W⁺, W⁻], [W⁻, W⁺]]`` over the weight's last two axes (input, output channels)."""
    xp = get_namespace(w)
    wp, wn = positive(w), negative(w)
    return xp.concatenate([xp.concatenate([wp, wn], axis=-1), xp.concatenate([wn, wp], axis=-1)], axis=-2)


def _pos_stack(w: Any) -> Any:
    """``[W⁺; W⁻]`` along the input channels (pairs with inputs ``[x⁺, x⁻]``: the positive share)."""
    return get_namespace(w).concatenate([positive(w), negative(w)], axis=-2)


def _neg_stack(w: Any) -> Any:
    """``[W⁻; W⁺]`` along the input channels (pairs with inputs ``[x⁺, x⁻]``: the negative share)."""
    return get_namespace(w).concatenate([negative(w), positive(w)], axis=-2)


@dataclass(frozen=True)
class _Shifted:
    """``fn(b) + shift`` (a hashable bias modifier: cached per node)."""

    fn: Any
    shift: float

    def __call__(self, b: Any) -> Any:
        return self.fn(b) + self.shift


@dataclass(frozen=True)
class _SignConcat:
    """``[a·W⁺, b·W⁻]`` along the output channels (a hashable modifier: cached per node)."""

    a: float
    b: float

    def __call__(self, w: Any) -> Any:
        return get_namespace(w).concatenate([self.a * positive(w), self.b * negative(w)], axis=-1)


@dataclass(frozen=True)
class _SignBlocks:
    """``[[a·W⁺, b·W⁻], [a·W⁻, b·W⁺]]``: :func:`_sign_blocks` with its columns scaled by ``a`` and ``b``."""

    a: float
    b: float

    def __call__(self, w: Any) -> Any:
        xp = get_namespace(w)
        wp, wn = positive(w), negative(w)
        return xp.concatenate([xp.concatenate([self.a * wp, self.b * wn], axis=-1),
                               xp.concatenate([self.a * wn, self.b * wp], axis=-1)], axis=-2)


def _sign_split(b: Any) -> Any:
    """``[b⁺, b⁻]``."""
    return get_namespace(b).concatenate([positive(b), negative(b)])


@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """LRP-z⁺ = αβ with α = 1, β = 0: only positive contributions."""

    alpha: float = 1.0
    beta: float | None = 0.0


@dataclass(frozen=True)
class ZBox(Rule):
    """LRP-z^B for inputs bounded by ``low ≤ x ≤ high`` (input layer).

    Notes
    -----
    ``z_ij = x_i w_ij − l_i w⁺_ij − h_i w⁻_ij``, ``R_i = Σ_j z_ij / (Σ_i z_ij + 1e-16·s) · R_j``
    (no bias). ``low``/``high`` None: each sample's own minimum/maximum.
    """

    low: Any = None
    high: Any = None
    stabilizer: float = TINY

    def __post_init__(self) -> None:
        for n in ("low", "high"):
            v = getattr(self, n)
            if v is not None and not isinstance(v, (int, float)):
                # arrays are kept as tuples so the rule stays hashable
                object.__setattr__(self, n, _Frozen(numpy.asarray(v, dtype=float)))
            elif v is not None:
                check_finite_param(n, v, "zbox")

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if len(xs) != 1:
            raise UnsupportedLayerError(f"node {ctx.name!r}: rule 'zbox' needs a single-input layer")
        low = Constant(None, "min") if self.low is None else Constant(self.low)
        high = Constant(None, "max") if self.high is None else Constant(self.high)
        parts = [Contribution(keep, keep, None), Contribution(low, Scaled(-1.0, positive), None),
                 Contribution(high, Scaled(-1.0, negative), None)]
        eps = self.stabilizer
        return modified_gradient(layer, xs, r, parts, ctx, lambda a, d: divide_stabilized(a, d, eps))


class _Frozen:
    """A hashable read-only wrapper of a bound array (for ZBox low/high)."""

    def __init__(self, a: Any) -> None:
        self.a = a
        self.a.setflags(write=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        return self.a if dtype is None else self.a.astype(dtype)

    def __hash__(self) -> int:
        return hash((self.a.shape, self.a.tobytes()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and self.a.shape == other.a.shape and bool((self.a == other.a).all())

    def __repr__(self) -> str:
        return f"array{self.a.shape}"


@dataclass(frozen=True)
class WSquare(Rule):
    """LRP-w²: ``R_i = Σ_j w_ij² / Σ_i' w_i'j² · R_j`` (ignores x and bias; input layer)."""

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return modified_gradient(layer, xs, r, [Contribution(ones, square, None)], ctx, safe_divide)

    def maxpool(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return uniform_over_windows(layer, xs, r)


def _channel_sum(r: Any) -> Any:
    """``Σ_k r[..., k]`` keeping the axis, as a matrix–vector product: numpy's reduction over a short
    last axis is ~7× slower (LeNet-5's 10 channels at batch 32, 1 thread: 0.08 against 0.58 ms)."""
    c = r.shape[-1]
    return (r.reshape(-1, c) @ get_namespace(r).ones(c, dtype=r.dtype)).reshape(*r.shape[:-1], 1)


def _flat_conv(layer: Conv2d, x: Any, r: Any) -> Any:
    """LRP-flat on a convolution: ``R_i = Σ_{j ∋ i} R_j / |window(j)|``, one channel's work.

    ``|window(j)| = C_in · (in-image positions of window j)`` (zero padding holds no
    inputs), the same for every output channel, and every input channel of a position gets
    the same share: so ``Σ_k R[·, k] / |window|`` is spread over each window once (the
    window sum's transpose on one channel) and broadcast to the ``C_in`` channels, instead
    of two convolutions with all-ones weights. A window wholly in the padding passes
    nothing (as ``0/0 → 0`` there).
    """
    xp = get_namespace(r)
    n, h, w, cin = x.shape
    top, bottom, left, right = layer.pads
    ones = xp.ones((1, h, w, 1), dtype=r.dtype)
    count = win.window_sum(win.pad(ones, layer.pads), layer.kernel, layer.stride) * cin
    share = safe_divide(_channel_sum(r), count)  # Σ_k R[·, k] / |window|: one division per position
    spread = win.window_sum_transpose(share, layer.kernel, layer.stride, (n, h + top + bottom, w + left + right, 1),
                                      layer.pads)
    out = xp.empty(x.shape, dtype=r.dtype)
    out[...] = spread
    return out


@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat: ``R_i = Σ_j R_j / |window(j)|`` — uniform over each receptive field."""

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if isinstance(layer, Linear) and len(xs) == 1:
            # a dense layer's window is all m inputs: R_i = Σ_j R_j / m, the same for every i (no GEMM with ones)
            share = _channel_sum(r) / layer.m
            out = get_namespace(r).empty(xs[0].shape, dtype=r.dtype)
            out[...] = share
            return [out]
        if isinstance(layer, Conv2d) and layer.groups == 1 and len(xs) == 1:
            return [_flat_conv(layer, xs[0], r)]
        return modified_gradient(layer, xs, r, [Contribution(ones, ones, None)], ctx, safe_divide)

    def maxpool(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return uniform_over_windows(layer, xs, r)


@dataclass(frozen=True)
class Pass(Rule):
    """Pass relevance through unchanged (layers whose input and output shapes agree)."""

    def _pass(self, layer: Layer, xs: Sequence[Any], r: Any, ctx: NodeContext) -> list[Any]:
        if len(xs) != 1 or tuple(xs[0].shape) != tuple(r.shape):
            raise UnsupportedLayerError(f"node {ctx.name!r}: rule 'pass' needs one input shaped like the output "
                                        f"({layer.type_name} maps {[tuple(x.shape) for x in xs]} to {tuple(r.shape)})")
        return [r]

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return self._pass(layer, xs, r, ctx)

    def maxpool(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return self._pass(layer, xs, r, ctx)


@dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """MaxPool: each window's relevance to its maxima, ties shared equally (the default)."""

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        raise UnsupportedLayerError(f"node {ctx.name!r}: rule 'winner_take_all' applies to MaxPool nodes only, not {layer.type_name}")


@dataclass(frozen=True)
class Proportional(Rule):
    """MaxPool: relevance in proportion to the inputs, ``x_i / (Σ_window x + ε·s) · R_j``."""

    epsilon: float = TINY

    def __post_init__(self) -> None:
        check_finite_param("epsilon", self.epsilon, "proportional", low=0.0)

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        raise UnsupportedLayerError(f"node {ctx.name!r}: rule 'proportional' applies to MaxPool nodes only, not {layer.type_name}")

    def maxpool(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return proportional_over_windows(layer, xs, r, self.epsilon)
