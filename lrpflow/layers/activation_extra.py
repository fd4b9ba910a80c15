"""More elementwise activations (Keras' ReLU variants, PReLU, ELU, SELU, Softplus).

Like every :class:`~lrpflow.layers.base.Elementwise` layer, LRP passes relevance through
them unchanged; ``vjp`` is the true derivative (used by gradient methods).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import Elementwise, Shape

#: SELU's fixed constants (Klambauer et al. 2017)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class ClippedReLU(Elementwise):
    """Keras' general rectifier ``relu(x, negative_slope, max_value, threshold)``.

    ``y = clip(x·[x > t], 0, max) − slope · max(t − x, 0)`` (with ``t = 0``: ``min(max(x, 0), max)``
    minus ``slope·max(−x, 0)``), exactly as ``keras.activations.relu`` computes it.
    """

    kinds = Elementwise.kinds | {"relu", "clipped_relu"}

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0) -> None:
        super().__init__()
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)
        self.threshold = float(threshold)

    def config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "negative_slope": self.negative_slope, "threshold": self.threshold}

    def _pos(self, x: Any) -> tuple[Any, Any]:
        """The rectified part and its derivative."""
        xp = get_namespace(x)
        if self.threshold != 0:
            mask = x > self.threshold
            pos, d = x * mask, mask.astype(x.dtype)
        else:
            pos, d = xp.maximum(x, 0), (x > 0).astype(x.dtype)
        if self.max_value is not None:
            d = d * ((pos >= 0) & (pos <= self.max_value))
            pos = xp.clip(pos, 0, self.max_value)
        return pos, d

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        pos, _ = self._pos(x)
        if self.negative_slope != 0:
            pos = pos - self.negative_slope * xp.maximum(self.threshold - x, 0)
        return pos

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        x = xs[0]
        _, d = self._pos(x)
        if self.negative_slope != 0:
            d = d + self.negative_slope * (x < self.threshold)
        return [g * d]


class PReLU(Elementwise):
    """Parametric ReLU ``y = x`` for x > 0, ``α·x`` otherwise; ``alpha`` broadcasts over a sample."""

    kinds = Elementwise.kinds | {"prelu"}
    param_names = ("alpha",)

    def __init__(self, alpha: Any) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        a = self.params_like(xs[0])["alpha"]
        return xp.where(xs[0] > 0, xs[0], xs[0] * a)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        a = self.params_like(xs[0])["alpha"]
        return [xp.where(xs[0] > 0, g, g * a)]

    def output_shape(self, *shapes: Shape) -> Shape:
        a = tuple(self.alpha.shape)
        s = shapes[0]
        if len(a) > len(s) or any(p not in (1, q) for p, q in zip(a[::-1], s[::-1])):
            raise ShapeError(f"PReLU: alpha of shape {a} does not broadcast over samples of shape {s}")
        return s


class ELU(Elementwise):
    """``y = x`` for x > 0, ``α·(eˣ − 1)`` otherwise."""

    kinds = Elementwise.kinds | {"elu"}

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        return xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, 0)))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        return [xp.where(xs[0] > 0, g, g * (y + self.alpha))]


class SELU(Elementwise):
    """``y = λ·x`` for x > 0, ``λ·α·(eˣ − 1)`` otherwise, with SELU's fixed λ and α."""

    kinds = Elementwise.kinds | {"selu"}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        return SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(xp.minimum(x, 0)))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        return [xp.where(xs[0] > 0, g * SELU_SCALE, g * (y + SELU_SCALE * SELU_ALPHA))]


class Softplus(Elementwise):
    """``y = log(1 + eˣ)`` (computed as ``logaddexp(0, x)``)."""

    kinds = Elementwise.kinds | {"softplus"}
    nonneg_output = True

    def forward(self, *xs: Any) -> Any:
        return get_namespace(xs[0]).logaddexp(0, xs[0])

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        x = xs[0]
        e = xp.exp(-xp.abs(x))
        return [g * xp.where(x >= 0, 1 / (1 + e), e / (1 + e))]
