"""Elementwise activations and the output SoftMax."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.layers.base import Elementwise, Layer


class ReLU(Elementwise):
    """Rectifier ``max(0, x)`` (toolbox: Rect)."""

    toolbox_name = "Rect"
    nonneg_output = True
    kinds = Elementwise.kinds | {"relu"}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        return xp.maximum(xs[0], 0)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g * (xs[0] > 0)]


class LeakyReLU(Elementwise):
    """``x`` for x > 0, ``slope·x`` otherwise."""

    kinds = Elementwise.kinds | {"leaky_relu"}

    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        self.slope = float(slope)

    def config(self) -> dict[str, Any]:
        return {"slope": self.slope}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        return xp.where(xs[0] > 0, xs[0], xs[0] * self.slope)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        return [xp.where(xs[0] > 0, g, g * self.slope)]


class Tanh(Elementwise):
    """Hyperbolic tangent."""

    toolbox_name = "Tanh"
    kinds = Elementwise.kinds | {"tanh"}

    def forward(self, *xs: Any) -> Any:
        return get_namespace(xs[0]).tanh(xs[0])

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g * (1 - y * y)]


class Sigmoid(Elementwise):
    """Logistic function ``1 / (1 + exp(−x))``."""

    kinds = Elementwise.kinds | {"sigmoid"}
    nonneg_output = True

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        # stable for large |x|: exp of a non-positive number only
        e = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g * y * (1 - y)]


class Identity(Elementwise):
    """``y = x``."""

    kinds = Elementwise.kinds | {"identity"}
    keeps_nonneg = True

    def forward(self, *xs: Any) -> Any:
        return xs[0]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g]


class Dropout(Identity):
    """Dropout at inference: the identity (the rate is kept for writers)."""

    kinds = Elementwise.kinds | {"dropout"}

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = float(rate)

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate}


class SoftMax(Layer):
    """``exp(x_k) / Σ_k' exp(x_k')`` over ``axis`` (default the last; max-shifted for stability).

    Explanations drop a SoftMax output layer; inside LRP it passes relevance through
    unchanged, as in the toolbox. AttnLRP's rule for attention softmaxes is
    :class:`lrpflow.rules.AttnSoftmax` (the ``attnlrp`` composite).
    """

    role = "softmax"
    kinds = frozenset({"softmax", "activation"})
    toolbox_name = "SoftMax"
    nonneg_output = True
    axis = -1  # class default: models pickled before the axis existed

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = int(axis)

    def config(self) -> dict[str, Any]:
        return {} if self.axis == -1 else {"axis": self.axis}

    def _ax(self, x: Any) -> int:
        """The axis in the batched array (``axis`` counts sample axes when ≥ 0)."""
        return self.axis if self.axis < 0 else self.axis + 1

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        ax = self._ax(x)
        e = xp.exp(x - x.max(axis=ax, keepdims=True))
        return e / e.sum(axis=ax, keepdims=True)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [y * (g - (g * y).sum(axis=self._ax(g), keepdims=True))]
