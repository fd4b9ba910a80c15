"""Reductions over sample axes: the mean (``ReduceMean``, a parameter-free linear map) and the max.

``Mean`` is linear-like without weights: the rule scope gives it the proportional
``norm`` rule, ``R_i = x_i R_j / (Σ_window x + s·sign)`` (the 1/count factor cancels).
``Max`` is winner-take-all: each reduced slice's relevance goes to its maxima (ties share).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import Layer, LinearLike, Shape


class _Reduction:
    axes: tuple[int, ...]
    keepdims: bool

    def _init_axes(self, axes: Sequence[int], keepdims: bool) -> None:
        self.axes = tuple(sorted(int(a) for a in axes))
        self.keepdims = bool(keepdims)
        if not self.axes or min(self.axes) < 0 or len(set(self.axes)) != len(self.axes):
            raise ShapeError(f"{type(self).__name__}: axes must be distinct sample axes (0-based, no batch), got {axes}")

    def config(self) -> dict[str, Any]:
        return {"axes": self.axes, "keepdims": self.keepdims}

    def _batch_axes(self) -> tuple[int, ...]:
        return tuple(a + 1 for a in self.axes)

    def _expand(self, r: Any) -> Any:
        """``r`` with the reduced axes back (size 1) for broadcasting."""
        if self.keepdims:
            return r
        shape = list(r.shape)
        for a in self._batch_axes():
            shape.insert(a, 1)
        return r.reshape(shape)

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        if max(self.axes) >= len(s):
            raise ShapeError(f"{type(self).__name__}{self.axes} reduces axes a sample of shape {s} does not have")
        if self.keepdims:
            return tuple(1 if i in self.axes else d for i, d in enumerate(s))
        return tuple(d for i, d in enumerate(s) if i not in self.axes)


class Mean(_Reduction, LinearLike):
    """Mean over sample ``axes`` (0-based, without the batch axis): ``y = Σ_axes x / count``."""

    kinds = frozenset({"affine", "pool", "mean"})
    keeps_nonneg = True
    nonneg_weight = True

    def __init__(self, axes: Sequence[int], keepdims: bool = False) -> None:
        super().__init__()
        self._init_axes(axes, keepdims)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        count = math.prod(xs[0].shape[a] for a in self._batch_axes())
        return get_namespace(xs[0]).asarray(1.0 / count, dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0].sum(axis=self._batch_axes(), keepdims=self.keepdims) * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        xp = get_namespace(s)
        return [xp.broadcast_to(self._expand(s * weight), xs[0].shape)]


class Max(_Reduction, Layer):
    """Max over sample ``axes``; LRP: winner-take-all (ties share equally)."""

    role = "maxpool"
    kinds = frozenset({"pool", "max", "max_pool"})
    keeps_nonneg = True

    def __init__(self, axes: Sequence[int], keepdims: bool = False) -> None:
        super().__init__()
        self._init_axes(axes, keepdims)

    def forward(self, *xs: Any) -> Any:
        return xs[0].max(axis=self._batch_axes(), keepdims=self.keepdims)

    def winners(self, x: Any, y: Any, r: Any) -> Any:
        """``[x_i = y] / #ties · r``."""
        xp = get_namespace(x)
        hits = (x == self._expand(y)).astype(r.dtype)
        count = hits.sum(axis=self._batch_axes(), keepdims=True)
        return hits * self._expand(r) / xp.maximum(count, 1)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [self.winners(xs[0], y, g)]
