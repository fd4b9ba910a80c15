"""Transformer layers: the product of two activations ``A @ B`` and additive/selective constants.

- :class:`MatMul` ``Y = A @ B`` of two activations, batched over the leading axes (q·kᵀ and
  attention·v). Not affine in its inputs; its LRP convention is AttnLRP's (Achtibat et al.,
  ICML 2024): the ε-rule on ``Y`` and a 50/50 split between the operands,
  ``Rn = R ⊘ (2Y + ε)``, ``R_A = A ⊙ (Rn @ Bᵀ)``, ``R_B = B ⊙ (Aᵀ @ Rn)`` — the layer's
  ``apply_transpose`` carries the halves, so any proportional rule on it splits 50/50.
  ``vjp`` is the true gradient.
- :class:`AddConstant` ``y = x + c`` with ``c`` of the sample's shape (learned positional
  embeddings, additive attention masks): an affine map whose constant absorbs its share.
- :class:`MulConstant` ``y = x ⊙ c`` (RoPE's cos/sin, ``Neg``): the identity under AttnLRP.
- :class:`Where` ``y = where(mask, x, fill)`` with a constant mask and fill (attention masks):
  relevance moves with the kept values; what reaches the fill is absorbed.
- :class:`ConcatConstant` ``y = concat(c, x)`` along a sample axis (the CLS token): the constant
  absorbs the relevance that reaches it.
- :class:`Broadcast` ``Expand`` of an activation (grouped-query attention): copies; relevance adds up.
- :class:`RMSNorm` ``y = x / √(mean(x²) + eps)`` over the last axis: elementwise for LRP
  (AttnLRP's identity), ``vjp`` the true gradient.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import Elementwise, LinearLike, Shape, ShapeLayer


def _t(a: Any) -> Any:
    return get_namespace(a).swapaxes(a, -1, -2)


class MatMul(LinearLike):
    """``Y = A @ B`` of two activations ``A (..., T, K)``, ``B (..., K, S)`` (equal leading axes)."""

    kinds = frozenset({"bilinear", "matmul", "product"})
    n_inputs = 2

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).ones((), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = get_namespace(xs[0]).matmul(xs[0], xs[1])
        if weight.ndim or float(weight) != 1.0:
            z = z * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        """Half of the transposed products for each operand (the 50/50 split)."""
        xp = get_namespace(s)
        g = s * (weight * 0.5)
        return [xp.matmul(g, _t(xs[1])), xp.matmul(_t(xs[0]), g)]

    def held_first(self, s: Any, xs: Sequence[Any]) -> Any:
        """``Aᵀ @ s``: the whole signal to ``B`` with ``A`` held constant (CP-LRP)."""
        return get_namespace(s).matmul(_t(xs[0]), s)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        return [xp.matmul(g, _t(xs[1])), xp.matmul(_t(xs[0]), g)]

    def output_shape(self, *shapes: Shape) -> Shape:
        a, b = shapes
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise ShapeError(f"MatMul: operands of shapes {a} and {b} (without batch) do not multiply "
                             f"(expected (..., T, K) @ (..., K, S) with equal leading axes)")
        return (*a[:-1], b[-1])


class AddConstant(LinearLike):
    """``y = x + c`` with a constant ``c`` broadcast to the sample (its share of relevance is absorbed)."""

    kinds = frozenset({"affine", "add_constant", "bias"})
    param_names = ("constant",)

    def __init__(self, constant: Any) -> None:
        super().__init__()
        self.constant = numpy.asarray(constant)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).ones((), dtype=xs[0].dtype), self.params_like(xs[0])["constant"]

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0] * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [s * weight]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g]

    def output_shape(self, *shapes: Shape) -> Shape:
        try:
            out = tuple(numpy.broadcast_shapes(shapes[0], self.constant.shape))
        except ValueError:
            raise ShapeError(f"AddConstant: constant of shape {self.constant.shape} does not broadcast to "
                             f"samples of shape {shapes[0]}") from None
        if out != tuple(shapes[0]):
            raise ShapeError(f"AddConstant: constant of shape {self.constant.shape} would grow samples of shape {shapes[0]}")
        return out


class MulConstant(LinearLike):
    """``y = x ⊙ c`` with a constant ``c`` broadcast to the sample (RoPE's cos/sin, a sign flip): AttnLRP's identity."""

    kinds = frozenset({"affine", "mul_constant"})
    param_names = ("constant",)

    def __init__(self, constant: Any) -> None:
        super().__init__()
        self.constant = numpy.asarray(constant)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return self.params_like(xs[0])["constant"], None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0] * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        from lrpflow.layers.product import reduce_to

        return [reduce_to(s * weight, xs[0].shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        return AddConstant.output_shape(self, *shapes)  # type: ignore[arg-type]


class Where(ShapeLayer):
    """``y = where(mask, x, fill)`` with constant ``mask`` and ``fill`` (broadcast to the sample)."""

    kinds = frozenset({"shape", "where", "mask"})
    keeps_nonneg = False
    param_names = ("mask", "fill")

    def __init__(self, mask: Any, fill: Any) -> None:
        super().__init__()
        self.mask = numpy.asarray(mask).astype(numpy.uint8)  # stored as 0/1 (portable to every file format)
        self.fill = numpy.asarray(fill)

    def _mask(self, x: Any) -> Any:
        return get_namespace(x).asarray(self.mask) != 0

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        return xp.where(self._mask(xs[0]), xs[0], xp.asarray(self.fill, dtype=xs[0].dtype))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        from lrpflow.layers.product import reduce_to

        return [reduce_to(xp.where(self._mask(g), g, 0), xs[0].shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        try:
            return tuple(numpy.broadcast_shapes(shapes[0], self.mask.shape[-len(shapes[0]):] if self.mask.ndim else (),
                                                self.fill.shape[-len(shapes[0]):] if self.fill.ndim else ()))
        except ValueError:
            raise ShapeError(f"Where: mask {self.mask.shape} / fill {self.fill.shape} do not broadcast to {shapes[0]}") from None


class ConcatConstant(ShapeLayer):
    """``y = concat([c, x] or [x, c])`` along sample axis ``axis`` (0-based, no batch); ``c`` has the sample's rank."""

    kinds = frozenset({"shape", "concat", "concat_constant"})
    keeps_nonneg = False
    param_names = ("constant",)

    def __init__(self, constant: Any, axis: int, first: bool = True) -> None:
        super().__init__()
        self.constant = numpy.asarray(constant)
        self.axis = int(axis)
        self.first = bool(first)

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis, "first": self.first}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        c = xp.broadcast_to(xp.asarray(self.constant, dtype=x.dtype), (x.shape[0], *self.constant.shape))
        parts = [c, x] if self.first else [x, c]
        return xp.concatenate(parts, axis=self.axis + 1)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        k = self.constant.shape[self.axis]
        n = xs[0].shape[self.axis + 1]
        sl = [slice(None)] * g.ndim
        sl[self.axis + 1] = slice(k, k + n) if self.first else slice(0, n)
        return [g[tuple(sl)]]

    def output_shape(self, *shapes: Shape) -> Shape:
        s, c = list(shapes[0]), self.constant.shape
        if len(c) != len(s) or any(a != b for i, (a, b) in enumerate(zip(s, c)) if i != self.axis):
            raise ShapeError(f"ConcatConstant: constant of shape {c} does not fit samples of shape {tuple(s)} on axis {self.axis}")
        s[self.axis] += c[self.axis]
        return tuple(s)


class Broadcast(ShapeLayer):
    """``y = broadcast_to(x, shape)`` (``Expand``: LLaMA's grouped-query key/value heads); relevance at the copies
    adds up at their source."""

    kinds = frozenset({"shape", "broadcast", "expand"})
    keeps_nonneg = True

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def config(self) -> dict[str, Any]:
        return {"shape": self.shape}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        return xp.array(xp.broadcast_to(xs[0], (xs[0].shape[0], *self.shape)))  # a copy: later layers may write

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        from lrpflow.layers.product import reduce_to

        return [reduce_to(g, xs[0].shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        if len(s) != len(self.shape) or any(a != b and a != 1 for a, b in zip(s, self.shape)):
            raise ShapeError(f"Broadcast{self.shape}: samples of shape {s} do not broadcast to it (equal rank, 1 or equal)")
        return self.shape


class RMSNorm(Elementwise):
    """``y = x / √(mean(x², last axis) + eps)``; LRP passes relevance through (AttnLRP), ``vjp`` is the true gradient."""

    kinds = frozenset({"activation", "elementwise", "rms_norm", "normalization"})

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = float(eps)

    def config(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def _scale(self, x: Any) -> Any:
        return 1.0 / get_namespace(x).sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps)

    def forward(self, *xs: Any) -> Any:
        return xs[0] * self._scale(xs[0])

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        x = xs[0]
        r = self._scale(x)
        return [g * r - x * (r ** 3) * (g * x).mean(axis=-1, keepdims=True)]


class Power(Elementwise):
    """``y = x ** p`` for a constant exponent (inside gates: tanh-GELU's ``x³``); passes relevance through."""

    kinds = frozenset({"activation", "elementwise", "power"})

    def __init__(self, exponent: float) -> None:
        super().__init__()
        self.exponent = float(exponent)

    def config(self) -> dict[str, Any]:
        return {"exponent": self.exponent}

    def forward(self, *xs: Any) -> Any:
        p = self.exponent
        return xs[0] ** (int(p) if p.is_integer() else p)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        p = self.exponent
        return [g * p * xs[0] ** (int(p - 1) if p.is_integer() else p - 1)]
