"""More merges: Subtract (``x₀ − x₁``) and Average (``Σ_k x_k / K``), parameter-free linear maps.

Both are :class:`~lrpflow.layers.base.LinearLike` without the ``dense``/``conv`` kinds, so a rule
given by name leaves them to the engine's proportional handling of parameter-free linear maps.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import LinearLike, Shape
from lrpflow.layers.merge import Add


def _same_shapes(name: str, shapes: Sequence[Shape]) -> Shape:
    if any(s != shapes[0] for s in shapes):
        raise ShapeError(f"{name} expects inputs of one shape, got {list(shapes)}")
    return shapes[0]


class Subtract(LinearLike):
    """``y = x₀ − x₁``: a linear map with weights ``(+1, −1)`` on its two inputs."""

    kinds = frozenset({"affine", "merge", "subtract"})
    n_inputs = 2

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).asarray([1.0, -1.0], dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0] * weight[0] + xs[1] * weight[1]
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [s * weight[0], s * weight[1]]

    def output_shape(self, *shapes: Shape) -> Shape:
        return _same_shapes("Subtract", shapes)


class Average(Add):
    """``y = Σ_k x_k / K``: :class:`~lrpflow.layers.merge.Add` with weight ``1/K`` per input."""

    kinds = frozenset({"affine", "merge", "average"})

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).asarray(1.0 / len(xs), dtype=xs[0].dtype), None

    def output_shape(self, *shapes: Shape) -> Shape:
        return _same_shapes("Average", shapes)
