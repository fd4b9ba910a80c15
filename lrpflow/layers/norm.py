"""Batch normalisation at inference, an affine map per channel."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import LinearLike, Shape


class BatchNorm(LinearLike):
    """``y = (x − mean) / √(var + eps) · gamma + beta`` over the last (channel) axis.

    As an affine map: weight ``gamma / √(var + eps)``, bias ``beta − mean · weight``;
    every LRP rule applies to it like to a diagonal Linear layer.
    """

    kinds = frozenset({"affine", "norm", "batch_norm"})
    param_names = ("gamma", "beta", "mean", "var")

    def __init__(self, channels: int, gamma: Any = None, beta: Any = None, mean: Any = None,
                 var: Any = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = int(channels)
        self.eps = float(eps)
        c = self.channels
        self.gamma = numpy.ones(c) if gamma is None else gamma
        self.beta = numpy.zeros(c) if beta is None else beta
        self.mean = numpy.zeros(c) if mean is None else mean
        self.var = numpy.ones(c) if var is None else var
        for k in self.param_names:
            if tuple(getattr(self, k).shape) != (c,):
                raise ShapeError(f"BatchNorm({c}): {k} must have shape {(c,)}, got {tuple(getattr(self, k).shape)}")

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "eps": self.eps}

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        p = self.params_like(xs[0])  # the cached cast; the affine form is cached beside it
        if "_weight" not in p:
            xp = get_namespace(p["gamma"])
            p["_weight"] = p["gamma"] / xp.sqrt(p["var"] + self.eps)
            p["_bias"] = p["beta"] - p["mean"] * p["_weight"]
        return p["_weight"], p["_bias"]

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0] * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [s * weight]

    def output_shape(self, *shapes: Shape) -> Shape:
        if shapes[0][-1] != self.channels:
            raise ShapeError(f"BatchNorm({self.channels}) expects {self.channels} channels on the last axis, got shape {shapes[0]}")
        return shapes[0]
