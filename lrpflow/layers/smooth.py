"""Further elementwise activations of exported networks: HardSigmoid, HardSwish, Clip (ReLU6), Erf, GELU, SiLU.

LRP passes relevance through every one of them unchanged (role ``elementwise``), as
through ReLU; their ``vjp`` is the true derivative (for gradient-based attributions).
Where an exporter writes a gate product instead (``x·HardSigmoid(x)``, ``x·σ(x)``,
``x·(1 + erf(x/√2))/2``), see :class:`lrpflow.layers.product.Multiply`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.layers.base import Elementwise


def erf(x: Any) -> Any:
    """The error function on numpy (scipy) or cupy (cupyx) arrays."""
    if type(x).__module__.startswith("cupy"):
        from cupyx.scipy.special import erf as _erf  # type: ignore[import-not-found]
    else:
        from scipy.special import erf as _erf
    return _erf(x)


class HardSigmoid(Elementwise):
    """``y = clip(α·x + β, 0, 1)`` (ONNX defaults α = 0.2, β = 0.5; PyTorch's: α = 1/6)."""

    kinds = Elementwise.kinds | {"hard_sigmoid"}
    nonneg_output = True

    def __init__(self, alpha: float = 0.2, beta: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        return xp.clip(xs[0] * self.alpha + self.beta, 0, 1)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        t = xs[0] * self.alpha + self.beta
        return [g * ((t > 0) & (t < 1)) * self.alpha]


class HardSwish(Elementwise):
    """``y = x · clip(x/6 + 1/2, 0, 1)`` (ONNX HardSwish, PyTorch Hardswish)."""

    kinds = Elementwise.kinds | {"hard_swish"}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        return xs[0] * xp.clip(xs[0] / 6 + 0.5, 0, 1)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(xs[0])
        x = xs[0]
        d = xp.where(x < -3, 0.0, xp.where(x > 3, 1.0, x / 3 + 0.5)).astype(g.dtype)
        return [g * d]


class Clip(Elementwise):
    """``y = clip(x, low, high)`` (ReLU6 is ``Clip(0, 6)``); ``None`` bounds are open."""

    kinds = Elementwise.kinds | {"clip"}

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        super().__init__()
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)

    @property
    def nonneg_output(self) -> bool:  # type: ignore[override]
        return self.low is not None and self.low >= 0

    def config(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        y = xs[0]
        if self.low is not None:
            y = xp.maximum(y, self.low)
        if self.high is not None:
            y = xp.minimum(y, self.high)
        return y

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        x = xs[0]
        mask = (x == x)
        if self.low is not None:
            mask = mask & (x > self.low)
        if self.high is not None:
            mask = mask & (x < self.high)
        return [g * mask]


class Erf(Elementwise):
    """The error function ``erf(x) = 2/√π ∫₀ˣ e^(−t²) dt`` (inside GELU as exported)."""

    kinds = Elementwise.kinds | {"erf"}

    def forward(self, *xs: Any) -> Any:
        return erf(xs[0])

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(xs[0])
        return [g * (2 / math.sqrt(math.pi)) * xp.exp(-xs[0] * xs[0])]


class Gelu(Elementwise):
    """``y = x·Φ(x)`` (exact, ``approximate="none"``) or its tanh approximation (``"tanh"``)."""

    kinds = Elementwise.kinds | {"gelu"}

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            from lrpflow.errors import ConfigError

            raise ConfigError(f"Gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def forward(self, *xs: Any) -> Any:
        x = xs[0]
        if self.approximate == "tanh":
            xp = get_namespace(x)
            return 0.5 * x * (1 + xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(xs[0])
        x = xs[0]
        if self.approximate == "tanh":
            k = math.sqrt(2 / math.pi)
            u = k * (x + 0.044715 * x ** 3)
            t = xp.tanh(u)
            return [g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x))]
        cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
        pdf = xp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return [g * (cdf + x * pdf)]


class SiLU(Elementwise):
    """``y = x·σ(x)`` (Swish)."""

    kinds = Elementwise.kinds | {"silu"}

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        x = xs[0]
        e = xp.exp(-xp.abs(x))
        return x * xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(xs[0])
        x = xs[0]
        e = xp.exp(-xp.abs(x))
        s = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return [g * (s * (1 + x * (1 - s)))]
