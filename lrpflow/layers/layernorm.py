"""Layer normalisation over the trailing sample axes (ConvNeXt, transformers).

``y = (x − μ) / σ · γ + β`` with μ, σ² the mean and (biased) variance over the last
``len(γ.shape)`` axes and σ = √(σ² + eps). For LRP σ is held constant (AttnLRP,
Achtibat et al., ICML 2024): the layer is then affine per token — centring, scaling by
γ/σ, shift β — and relevance goes through that map proportionally:
``u = γ ⊙ R/z / σ``, ``R_x = x ⊙ (u − mean(u))`` (only β absorbs relevance). Its ``vjp``
is the true gradient, σ's dependence on ``x`` included.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import LinearLike, Shape


class LayerNorm(LinearLike):
    """Layer normalisation; ``gamma``/``beta`` have the shape of the normalised trailing axes."""

    kinds = frozenset({"layer_norm", "normalization"})
    param_names = ("gamma", "beta")

    def __init__(self, shape: Sequence[int], gamma: Any = None, beta: Any = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.gamma = numpy.ones(self.shape) if gamma is None else gamma
        self.beta = numpy.zeros(self.shape) if beta is None else beta
        for k in self.param_names:
            if tuple(getattr(self, k).shape) != self.shape:
                raise ShapeError(f"LayerNorm{self.shape}: {k} must have shape {self.shape}, got {tuple(getattr(self, k).shape)}")

    def config(self) -> dict[str, Any]:
        return {"shape": self.shape, "eps": self.eps}

    def _axes(self, x: Any) -> tuple[int, ...]:
        return tuple(range(x.ndim - len(self.shape), x.ndim))

    def _stats(self, x: Any) -> tuple[Any, Any]:
        xp = get_namespace(x)
        axes = self._axes(x)
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        return mu, xp.sqrt(var + self.eps)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        p = self.params_like(xs[0])
        return p["gamma"], p["beta"]

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        mu, sigma = self._stats(xs[0])
        z = (xs[0] - mu) / sigma * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        _, sigma = self._stats(xs[0])
        u = s * weight / sigma
        return [u - u.mean(axis=self._axes(u), keepdims=True)]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        x = xs[0]
        axes = self._axes(x)
        mu, sigma = self._stats(x)
        xhat = (x - mu) / sigma
        gg = g * self.params_like(x)["gamma"]
        return [(gg - gg.mean(axis=axes, keepdims=True) - xhat * (gg * xhat).mean(axis=axes, keepdims=True)) / sigma]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        if tuple(s[len(s) - len(self.shape):]) != self.shape or len(s) < len(self.shape):
            raise ShapeError(f"LayerNorm{self.shape} expects samples ending in {self.shape}, got shape {s}")
        return s
