"""Attribution baselines behind the rule interface: gradient-based methods and random.

They are whole-model methods (``global_only``): every node uses the true
vector–Jacobian product (deconvnet: rectified at ReLUs), and SmoothGrad / Integrated
Gradients average over several forward/backward passes via :meth:`Rule.samples`.
Their relevance is initialised with the one-hot target (``init="one"``) by default.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ConfigError
from lrpflow.layers.base import Layer
from lrpflow.rules.base import NodeContext, Rule, check_finite_param


@dataclass(frozen=True)
class Gradient(Rule):
    """Sensitivity ``∂f_c/∂x`` (Simonyan et al. 2014)."""

    default_init = "one"
    global_only = True

    def backward(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return layer.vjp(xs, y, r)


@dataclass(frozen=True)
class GradientXInput(Gradient):
    """Gradient × input, ``x ⊙ ∂f_c/∂x`` (Shrikumar et al. 2016).

    Token ids are indices, not values: at a token embedding ``e`` the product is taken there,
    ``Σ_D e ⊙ ∂f_c/∂e`` per token (and the input is not multiplied again).
    """

    def backward(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if "embedding" in layer.kinds:
            return [(y * r).sum(axis=-1)]
        return layer.vjp(xs, y, r)

    def finalize(self, x: Any, r: Any) -> Any:
        return x * r


@dataclass(frozen=True)
class Deconvnet(Gradient):
    """Deconvnet (Zeiler & Fergus 2014): ReLUs rectify the backward signal, ``max(0, g)``."""

    def backward(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if "relu" in layer.kinds:
            return [get_namespace(r).maximum(r, 0)]
        return layer.vjp(xs, y, r)


@dataclass(frozen=True)
class SmoothGrad(Gradient):
    """Mean gradient over ``n`` noisy copies ``x + N(0, σ²)``, ``σ = noise · (max x − min x)`` per sample (Smilkov et al. 2017)."""

    n: int = 16
    noise: float = 0.1
    seed: int = 0
    batch_coupled = True

    def __post_init__(self) -> None:
        if int(self.n) < 1:
            raise ConfigError(f"rule 'smoothgrad': n must be ≥ 1, got {self.n}")
        check_finite_param("noise", self.noise, "smoothgrad", low=0.0)

    def samples(self, x: Any) -> Iterator[tuple[Any, float]]:
        xp = get_namespace(x)
        axes = tuple(range(1, x.ndim))
        sigma = (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)) * self.noise
        rng = xp.random.RandomState(self.seed)
        for _ in range(int(self.n)):
            yield x + rng.standard_normal(x.shape).astype(x.dtype) * sigma, 1.0 / self.n


@dataclass(frozen=True)
class IntegratedGradients(Gradient):
    """``(x − x̄) ⊙ mean_k ∇f(x̄ + (k − ½)/m · (x − x̄))`` (midpoint rule, Sundararajan et al. 2017)."""

    steps: int = 32
    baseline: float = 0.0

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise ConfigError(f"rule 'integrated_gradients': steps must be ≥ 1, got {self.steps}")
        check_finite_param("baseline", self.baseline, "integrated_gradients")

    def samples(self, x: Any) -> Iterator[tuple[Any, float]]:
        m = int(self.steps)
        b = self.baseline
        for k in range(m):
            yield b + (x - b) * ((k + 0.5) / m), 1.0 / m

    def finalize(self, x: Any, r: Any) -> Any:
        return (x - self.baseline) * r


@dataclass(frozen=True)
class Random(Rule):
    """Random relevance ``N(0, 1)`` of the input's shape: the floor any explanation must beat."""

    seed: int = 0
    global_only = True
    batch_coupled = True

    def backward(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        xp = get_namespace(r)
        return [xp.zeros_like(x) for x in xs]

    def finalize(self, x: Any, r: Any) -> Any:
        xp = get_namespace(x)
        return xp.random.RandomState(self.seed).standard_normal(x.shape).astype(x.dtype)
