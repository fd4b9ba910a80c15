"""Layers that only move values: Flatten, Reshape, Pad."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math

from lrpflow.errors import ShapeError
from lrpflow.layers import _windows as win
from lrpflow.layers.base import Shape, ShapeLayer, check_rank


class Flatten(ShapeLayer):
    """C-order reshape of each sample to a vector (NHWC → N×(H·W·C), as the toolbox)."""

    toolbox_name = "Flatten"
    kinds = frozenset({"shape", "flatten"})

    def forward(self, *xs: Any) -> Any:
        return xs[0].reshape(xs[0].shape[0], -1)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g.reshape(xs[0].shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        return (math.prod(shapes[0]),)


class Reshape(ShapeLayer):
    """Reshape each sample to ``shape`` (one entry may be −1)."""

    kinds = frozenset({"shape", "reshape"})

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def config(self) -> dict[str, Any]:
        return {"shape": self.shape}

    def forward(self, *xs: Any) -> Any:
        return xs[0].reshape((xs[0].shape[0], *self.shape))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g.reshape(xs[0].shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        size = math.prod(shapes[0])
        known = math.prod(s for s in self.shape if s != -1)
        if self.shape.count(-1) > 1 or (self.shape.count(-1) == 0 and known != size) or (known == 0 or size % known):
            raise ShapeError(f"Reshape{self.shape} cannot take a sample of shape {shapes[0]} ({size} values)")
        return tuple(size // known if s == -1 else s for s in self.shape)


class Pad(ShapeLayer):
    """Constant padding of the spatial axes of NHWC images.

    Relevance that reaches the padded border is dropped (the ledger records it).
    """

    kinds = frozenset({"shape", "pad"})

    def __init__(self, padding: Any, value: float = 0.0) -> None:
        super().__init__()
        self.pads = win.pads4(padding)
        self.value = float(value)

    @property
    def keeps_nonneg(self) -> bool:  # type: ignore[override]
        return self.value >= 0

    def config(self) -> dict[str, Any]:
        return {"padding": self.pads, "value": self.value}

    def forward(self, *xs: Any) -> Any:
        return win.pad(xs[0], self.pads, self.value)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [win.unpad(g, self.pads)]

    def output_shape(self, *shapes: Shape) -> Shape:
        check_rank(shapes[0], 3, "Pad", "images H×W×C")
        t, b, l, r = self.pads
        h, w, c = shapes[0]
        return (h + t + b, w + l + r, c)
