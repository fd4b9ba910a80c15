"""Layers that merge several inputs: Add (residual sums) and Concat."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import LinearLike, Shape, ShapeLayer


class Add(LinearLike):
    """Elementwise sum of the inputs, ``y = Σ_k x_k`` (residual connections).

    A linear map with weight 1 per input: rules split relevance between the branches
    in proportion to their (rule-modified) contributions.
    """

    kinds = frozenset({"affine", "merge", "add"})
    keeps_nonneg = True
    nonneg_weight = True
    n_inputs = None

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).ones((), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0]
        for x in xs[1:]:
            z = z + x
        z = z * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        g = s * weight
        return [g for _ in xs]

    def output_shape(self, *shapes: Shape) -> Shape:
        if any(s != shapes[0] for s in shapes):
            raise ShapeError(f"Add expects inputs of one shape, got {list(shapes)}")
        return shapes[0]


class Concat(ShapeLayer):
    """Concatenation along an axis of the activations (default: channels, the last axis)."""

    kinds = frozenset({"shape", "merge", "concat"})
    n_inputs = None

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = int(axis)

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def _axis(self, ndim: int) -> int:
        return self.axis if self.axis >= 0 else ndim + self.axis

    def forward(self, *xs: Any) -> Any:
        return get_namespace(xs[0]).concatenate(xs, axis=self._axis(xs[0].ndim))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        ax = self._axis(g.ndim)
        out, start = [], 0
        for x in xs:
            size = x.shape[ax]
            index = [slice(None)] * g.ndim
            index[ax] = slice(start, start + size)
            out.append(g[tuple(index)])
            start += size
        return out

    def output_shape(self, *shapes: Shape) -> Shape:
        nd = len(shapes[0])
        if self.axis == 0 or not -nd <= (self.axis - 1 if self.axis > 0 else self.axis) < nd:
            raise ShapeError(f"Concat(axis={self.axis}) needs a sample axis (1..{nd} or negative) for samples of shape {shapes[0]}")
        a = self.axis - 1 if self.axis > 0 else nd + self.axis
        for s in shapes:
            if len(s) != nd or any(s[i] != shapes[0][i] for i in range(nd) if i != a):
                raise ShapeError(f"Concat(axis={self.axis}) expects inputs equal but on that axis, got {list(shapes)}")
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return tuple(out)
