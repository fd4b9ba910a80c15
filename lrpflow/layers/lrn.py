"""Local response normalisation across channels (AlexNet, Caffe's ``LRN`` layer)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import Elementwise, Shape


class LRN(Elementwise):
    """``y_c = x_c · (k + α/n · Σ_{c' ∈ window(c)} x_c'²)^(−β)`` over the last (channel) axis.

    The window of channel ``c`` is ``c − ⌊(n−1)/2⌋ … c − ⌊(n−1)/2⌋ + n − 1`` (Caffe's
    ``ACROSS_CHANNELS``), clipped to the existing channels (zero padding).

    LRP passes relevance through the layer unchanged (as the LRP Toolbox's Caffe does); the
    vector–Jacobian product (gradient methods) is the true derivative.

    Parameters
    ----------
    size : int
        Window length ``n`` (Caffe ``local_size``).
    alpha, beta, k : float
        Caffe's ``alpha``, ``beta`` and ``k``.
    """

    kinds = Elementwise.kinds | {"lrn", "norm"}

    def __init__(self, size: int = 5, alpha: float = 1.0, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        if int(size) < 1:
            raise ShapeError(f"LRN: size must be ≥ 1, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.pre = (self.size - 1) // 2

    def config(self) -> dict[str, Any]:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def _window_sum(self, a: Any, transpose: bool = False) -> Any:
        """``Σ_{j ∈ window(c)} a_j`` (or its transpose ``Σ_{c: j ∈ window(c)} a_c``) along the last axis."""
        xp = get_namespace(a)
        c = a.shape[-1]
        lo, hi = (self.size - 1 - self.pre, self.pre) if transpose else (self.pre, self.size - 1 - self.pre)
        widths = [(0, 0)] * (a.ndim - 1) + [(lo, hi)]
        padded = xp.pad(a, widths)
        out = padded[..., 0:c].copy()
        for d in range(1, self.size):
            out += padded[..., d : d + c]
        return out

    def _scale(self, x: Any) -> Any:
        return self._window_sum(x * x) * (self.alpha / self.size) + self.k

    def forward(self, *xs: Any) -> Any:
        x = xs[0]
        return x * self._scale(x) ** (-self.beta)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        # ∂y_c/∂x_j = δ_cj s_c^(−β) − (2αβ/n) x_c x_j s_c^(−β−1) for j in window(c)
        x = xs[0]
        s = self._scale(x)
        direct = g * s ** (-self.beta)
        coupled = self._window_sum(g * x * s ** (-self.beta - 1), transpose=True)
        return [direct - (2 * self.alpha * self.beta / self.size) * x * coupled]

    def output_shape(self, *shapes: Shape) -> Shape:
        return shapes[0]
