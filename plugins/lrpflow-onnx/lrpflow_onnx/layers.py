"""Shape layers ONNX graphs may need between layouts: Transpose of sample axes, Permute of vector entries.

Both only move values; LRP moves relevance with them unchanged (role ``shape``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import Shape, ShapeLayer


class Transpose(ShapeLayer):
    """Permute the axes of each sample: ``y = x.transpose(0, 1 + axes[0], 1 + axes[1], ...)``."""

    kinds = frozenset({"shape", "transpose"})

    def __init__(self, axes: Sequence[int]) -> None:
        super().__init__()
        self.axes = tuple(int(a) for a in axes)
        if sorted(self.axes) != list(range(len(self.axes))):
            raise ShapeError(f"Transpose: axes must be a permutation of 0..{len(self.axes) - 1}, got {self.axes}")
        self._inverse = tuple(int(a) for a in numpy.argsort(self.axes))

    def config(self) -> dict[str, Any]:
        return {"axes": self.axes}

    def forward(self, *xs: Any) -> Any:
        return xs[0].transpose(0, *(a + 1 for a in self.axes))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g.transpose(0, *(a + 1 for a in self._inverse))]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        if len(s) != len(self.axes):
            raise ShapeError(f"Transpose{self.axes} expects samples with {len(self.axes)} axes, got shape {s}")
        return tuple(s[a] for a in self.axes)


class Permute(ShapeLayer):
    """Reorder the entries of vector samples: ``y[:, i] = x[:, index[i]]`` (``index`` a permutation)."""

    kinds = frozenset({"shape", "permute"})

    def __init__(self, index: Sequence[int]) -> None:
        super().__init__()
        self.index = numpy.asarray(index, dtype=numpy.int64).ravel()
        if not numpy.array_equal(numpy.sort(self.index), numpy.arange(self.index.size)):
            raise ShapeError(f"Permute: index must be a permutation of 0..{self.index.size - 1}")

    def config(self) -> dict[str, Any]:
        return {"index": self.index.tolist()}

    def _idx(self, x: Any) -> Any:
        return get_namespace(x).asarray(self.index)

    def forward(self, *xs: Any) -> Any:
        return xs[0][:, self._idx(xs[0])]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        out = get_namespace(g).zeros_like(g)
        out[:, self._idx(g)] = g
        return [out]

    def output_shape(self, *shapes: Shape) -> Shape:
        if shapes[0] != (self.index.size,):
            raise ShapeError(f"Permute of {self.index.size} entries expects vectors of that length, got shape {shapes[0]}")
        return shapes[0]
