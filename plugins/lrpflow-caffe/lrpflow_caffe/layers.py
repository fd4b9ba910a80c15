"""Layers Caffe nets need beyond lrpflow's core ones.

- :class:`CaffeAvgPool`: average pooling with Caffe's geometry (ceil output size) and divisor
  (the window clipped to the symmetrically padded input, not to the ceil overhang);
- :class:`ScaledAdd`: Eltwise SUM with coefficients, ``y = Σ_k c_k x_k``;
- :class:`FlattenCHW`: Caffe's Flatten of an (H, W, C) activation in C, H, W order.

:func:`pool_geometry` computes Caffe's pooled size and the padding that reproduces it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import LinearLike, Shape, ShapeLayer
from lrpflow.layers.pool import AvgPool


def pooled_size(n: int, k: int, s: int, p: int, ceil: bool = True) -> int:
    """Caffe's pooled length: ``⌈(n + 2p − k) / s⌉ + 1`` (or floor), minus one if the last window starts in the padding."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_geometry(n: int, k: int, s: int, p: int, ceil: bool = True) -> tuple[int, int, int]:
    """``(out, pad_before, pad_after)``: the padding with which a valid window sweep gives Caffe's ``out`` windows."""
    out = pooled_size(n, k, s, p, ceil)
    after = max(0, (out - 1) * s + k - n - p)
    return out, p, after


def caffe_ave_divisor(n: int, k: int, s: int, p: int, out: int) -> numpy.ndarray:
    """Caffe's AVE divisor per output position: ``min(start + k, n + p) − start`` with ``start = i·s − p``."""
    start = numpy.arange(out) * s - p
    return (numpy.minimum(start + k, n + p) - start).astype(numpy.float64)


class CaffeAvgPool(AvgPool):
    """Average pooling exactly as Caffe's AVE: ``y = Σ_window x / |window ∩ padded input|``.

    The geometry is fixed for one input size ``(H, W)``: ``pads`` make the valid sweep
    produce Caffe's ceil-rounded output, and ``divisor`` holds Caffe's per-position
    window size (zero padding counts, the ceil overhang does not).
    """

    kinds = frozenset({"affine", "pool", "avg_pool"})
    param_names = ("divisor",)

    def __init__(self, hp: int, wp: int, stride: Any, padding: Any, in_hw: Sequence[int], divisor: Any) -> None:
        super().__init__(hp, wp, stride, padding)
        self.in_hw = (int(in_hw[0]), int(in_hw[1]))
        self.divisor = numpy.asarray(divisor)
        if self.divisor.ndim != 2 or not (self.divisor > 0).all():
            raise ShapeError(f"CaffeAvgPool: divisor must be a positive (H_out, W_out) array, got shape {self.divisor.shape}")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "in_hw": self.in_hw}

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        p = self.params_like(xs[0])  # the cast divisor; its reciprocal is cached beside it
        if "_weight" not in p:
            p["_weight"] = (1.0 / p["divisor"])[:, :, None]
        return p["_weight"], None

    def output_shape(self, *shapes: Shape) -> Shape:
        out = super().output_shape(*shapes)
        if tuple(shapes[0][:2]) != self.in_hw:
            raise ShapeError(f"CaffeAvgPool was built for inputs of {self.in_hw[0]}×{self.in_hw[1]}, got shape {shapes[0]}")
        return out


class ScaledAdd(LinearLike):
    """Caffe's Eltwise SUM with coefficients: ``y = Σ_k c_k x_k``.

    A linear map with weight ``c_k`` on input ``k``; rules split relevance between the inputs
    in proportion to their (rule-modified) contributions ``c_k x_k``.
    """

    kinds = frozenset({"affine", "merge", "add"})
    n_inputs = None

    def __init__(self, coeffs: Sequence[float]) -> None:
        super().__init__()
        self.coeffs = numpy.asarray([float(c) for c in coeffs], dtype=numpy.float64)
        if self.coeffs.ndim != 1 or self.coeffs.size < 1:
            raise ShapeError(f"ScaledAdd needs one coefficient per input, got {coeffs!r}")
        self.nonneg_weight = bool((self.coeffs >= 0).all())
        self.keeps_nonneg = self.nonneg_weight

    def config(self) -> dict[str, Any]:
        return {"coeffs": self.coeffs.tolist()}

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        if len(xs) != self.coeffs.size:
            raise ShapeError(f"ScaledAdd with {self.coeffs.size} coefficients got {len(xs)} inputs")
        return get_namespace(xs[0]).asarray(self.coeffs, dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0] * weight[0]
        for k in range(1, len(xs)):
            z = z + xs[k] * weight[k]
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [s * weight[k] for k in range(len(xs))]

    def output_shape(self, *shapes: Shape) -> Shape:
        if len(shapes) != self.coeffs.size:
            raise ShapeError(f"ScaledAdd with {self.coeffs.size} coefficients got {len(shapes)} inputs")
        if any(s != shapes[0] for s in shapes):
            raise ShapeError(f"ScaledAdd expects inputs of one shape, got {list(shapes)}")
        return shapes[0]


class FlattenCHW(ShapeLayer):
    """Flatten (H, W, C) samples in Caffe's C, H, W order (vectors pass unchanged)."""

    kinds = frozenset({"shape", "flatten"})

    def forward(self, *xs: Any) -> Any:
        x = xs[0]
        if x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        return x.reshape(x.shape[0], -1)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        shape = xs[0].shape
        if len(shape) == 4:
            n, h, w, c = shape
            return [g.reshape(n, c, h, w).transpose(0, 2, 3, 1)]
        return [g.reshape(shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        return (math.prod(shapes[0]),)
