"""Fully connected layer."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.layers.base import LinearLike, Shape, add_bias, check_rank
from lrpflow.errors import ShapeError


class Linear(LinearLike):
    """Dense layer ``y = x @ W + b`` with ``W[m_in, n_out]`` (toolbox layout).

    Parameters
    ----------
    m, n : int
        Input and output dimensionality.
    weight, bias : array, optional
        Initial parameters; by default ``W ~ N(0, 1/m)`` (the toolbox's init) and ``b = 0``.
    rng : numpy.random.Generator or int, optional
        Source of the random initial weights.
    """

    kinds = frozenset({"affine", "dense"})
    #: the weight's last two axes are (input, output) channels: rules may stack channel blocks
    channel_blocks = True
    param_names = ("weight", "bias")
    toolbox_name = "Linear"

    def __init__(self, m: int, n: int, weight: Any = None, bias: Any = None, rng: Any = None) -> None:
        super().__init__()
        self.m, self.n = int(m), int(n)
        if weight is None:
            weight = numpy.random.default_rng(rng).normal(0.0, self.m ** -0.5, (self.m, self.n))
        if bias is None:
            bias = numpy.zeros(self.n)
        if tuple(weight.shape) != (self.m, self.n):
            raise ShapeError(f"Linear({self.m}, {self.n}): weight must have shape {(self.m, self.n)}, got {tuple(weight.shape)}")
        if tuple(bias.shape) != (self.n,):
            raise ShapeError(f"Linear({self.m}, {self.n}): bias must have shape {(self.n,)}, got {tuple(bias.shape)}")
        self.weight, self.bias = weight, bias

    def config(self) -> dict[str, Any]:
        return {"m": self.m, "n": self.n}

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        x = xs[0]
        if x.ndim > 2:  # tokens: one GEMM over all positions (a broadcast matmul would loop over them)
            z = (x.reshape(-1, x.shape[-1]) @ weight).reshape((*x.shape[:-1], weight.shape[-1]))
        else:
            z = x @ weight
        return add_bias(z, bias)  # z is this call's own product

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        if s.ndim > 2:
            return [(s.reshape(-1, s.shape[-1]) @ weight.T).reshape((*s.shape[:-1], weight.shape[0]))]
        return [s @ weight.T]

    def param_grads(self, xs: Sequence[Any], g: Any) -> dict[str, Any]:
        x, g2 = xs[0].reshape(-1, self.m), g.reshape(-1, self.n)
        return {"weight": x.T @ g2, "bias": g2.sum(axis=0)}

    def output_shape(self, *shapes: Shape) -> Shape:
        """``(m,) → (n,)``; on tensors (tokens ``(T, m)``, ``(H, W, m)``) the map acts on the last axis."""
        if len(shapes[0]) < 1:
            check_rank(shapes[0], 1, f"Linear({self.m}, {self.n})", f"vectors of length {self.m}")
        if shapes[0][-1] != self.m:
            raise ShapeError(f"Linear({self.m}, {self.n}) expects inputs of length {self.m}, got {shapes[0][-1]}")
        return (*shapes[0][:-1], self.n)
