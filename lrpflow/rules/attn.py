"""AttnLRP's rules for the non-linear operations of transformers (Achtibat et al., ICML 2024).

- :class:`AttnSoftmax`: ``x0 = where(x == −∞, 0, x)``, ``R_x = x0 ⊙ (R_p − p ⊙ Σ_d R_p)``
  over the softmax axis ``d`` (no ε; the Taylor "bias" is absorbed, so not conservative).
- :class:`ProductSplit`: products of two activations ``a ⊙ b`` (:class:`~lrpflow.layers.Multiply`):
  the uniform rule, each operand gets ``R/2`` (summed over broadcast axes); where the importer
  identified a gate (SiLU's ``x·σ(x)``, GELU's ``x·Φ(x)``) the whole ``R`` goes to the gated
  operand — the identity of AttnLRP on those activations.
- :class:`HeldFirst`: CP-LRP (Ali et al., ICML 2022) on ``O = A @ V``: ``A`` held constant,
  ``R_V = V ⊙ (Aᵀ @ (R ⊘ (O + ε)))``, ``R_A = 0``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import UnsupportedLayerError
from lrpflow.layers.base import Layer
from lrpflow.rules.base import NodeContext, Rule, check_finite_param, divide_stabilized


@dataclass(frozen=True)
class AttnSoftmax(Rule):
    """AttnLRP's softmax rule ``R_x = x0 ⊙ (R − p ⊙ Σ_d R)``, ``x0 = x`` with −∞ replaced by 0."""

    def elementwise(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if "softmax" not in layer.kinds:
            return [r]
        xp = get_namespace(r)
        x = xs[0]
        x0 = xp.where(xp.isneginf(x), 0, x)
        ax = layer._ax(x)  # type: ignore[attr-defined]
        return [x0 * (r - y * r.sum(axis=ax, keepdims=True))]


@dataclass(frozen=True)
class ProductSplit(Rule):
    """``a ⊙ b``: ``R/2`` to each operand (uniform), or all of ``R`` to the gated operand of a gate."""

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        from lrpflow.layers.product import reduce_to

        gate = getattr(layer, "gate", "none")
        if gate == "none" or len(xs) != 2:
            raise UnsupportedLayerError(f"node {ctx.name!r}: rule product_split applies to Multiply layers, "
                                        f"not {layer.type_name}")
        xp = get_namespace(r)
        if gate is None:
            half = r * 0.5
            return [reduce_to(half, xs[0].shape), reduce_to(half, xs[1].shape)]
        moved = reduce_to(r, xs[1 - gate].shape)
        zero = xp.zeros(xs[gate].shape, dtype=r.dtype)
        return [zero, moved] if gate == 0 else [moved, zero]


@dataclass(frozen=True)
class HeldFirst(Rule):
    """CP-LRP on ``O = A @ V`` (:class:`~lrpflow.layers.MatMul`): ``R_V = V ⊙ (Aᵀ @ (R ⊘ (O + ε·s)))``, ``R_A = 0``."""

    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        check_finite_param("epsilon", self.epsilon, "held_first", low=0.0)

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if not hasattr(layer, "held_first"):
            raise UnsupportedLayerError(f"node {ctx.name!r}: rule held_first applies to MatMul layers, not {layer.type_name}")
        ctx.check_finite(y)
        s = divide_stabilized(r, y, self.epsilon)
        return [get_namespace(r).zeros(xs[0].shape, dtype=r.dtype), xs[1] * layer.held_first(s, xs)]  # type: ignore[attr-defined]
