"""2-D convolution (cross-correlation) on NHWC activations."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.errors import ShapeError
from lrpflow.layers import _windows as win
from lrpflow.layers.base import LinearLike, Shape, check_rank


class Conv2d(LinearLike):
    """Convolution ``y[n,p,q,k] = Σ_abc x[n, p·s0+a, q·s1+b, c] W[a,b,c,k] + b[k]`` (zero padding).

    Parameters
    ----------
    h, w, d, n : int
        Kernel height, width, input channels, output channels (``W[h, w, d, n]``, toolbox layout).
    stride : int or (int, int)
    padding : int, (rows, cols) or (top, bottom, left, right)
        Zero padding of the input (the toolbox uses none).
    weight, bias : array, optional
        Initial parameters; default ``W ~ N(0, 1/(h·w·d))``, ``b = 0``.
    """

    kinds = frozenset({"affine", "conv", "convolution"})
    #: the weight's last two axes are (input, output) channels: rules may stack channel blocks
    channel_blocks = True
    param_names = ("weight", "bias")
    toolbox_name = "Convolution"

    def __init__(self, h: int, w: int, d: int, n: int, stride: Any = 1, padding: Any = 0,
                 weight: Any = None, bias: Any = None, rng: Any = None) -> None:
        super().__init__()
        self.kernel = (int(h), int(w))
        self.d, self.n = int(d), int(n)
        self.stride = win.pair(stride, "stride")
        self.pads = win.pads4(padding)
        shape = (*self.kernel, self.d, self.n)
        if weight is None:
            weight = numpy.random.default_rng(rng).normal(0.0, (h * w * d) ** -0.5, shape)
        if bias is None:
            bias = numpy.zeros(self.n)
        if tuple(weight.shape) != shape:
            raise ShapeError(f"Conv2d: weight must have shape {shape}, got {tuple(weight.shape)}")
        if tuple(bias.shape) != (self.n,):
            raise ShapeError(f"Conv2d: bias must have shape {(self.n,)}, got {tuple(bias.shape)}")
        self.weight, self.bias = weight, bias

    def config(self) -> dict[str, Any]:
        return {"h": self.kernel[0], "w": self.kernel[1], "d": self.d, "n": self.n,
                "stride": self.stride, "padding": self.pads}

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = win.conv_forward(xs[0], weight, self.stride, self.pads)
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [win.conv_transpose(s, weight, self.stride, self.pads, xs[0].shape)]

    def param_grads(self, xs: Sequence[Any], g: Any) -> dict[str, Any]:
        return {"weight": win.conv_weight_grad(xs[0], g, self.kernel, self.stride, self.pads),
                "bias": g.sum(axis=(0, 1, 2))}

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        check_rank(s, 3, "Conv2d", "images H×W×C")
        if s[2] != self.d:
            raise ShapeError(f"Conv2d({self.kernel[0]}x{self.kernel[1]}, {self.d}→{self.n}) expects {self.d} input channels, got {s[2]} (shape {s})")
        t, b, l, r = self.pads
        ho = win.out_size(s[0], self.kernel[0], self.stride[0], t, b)
        wo = win.out_size(s[1], self.kernel[1], self.stride[1], l, r)
        if ho < 1 or wo < 1:
            raise ShapeError(f"Conv2d kernel {self.kernel} does not fit the padded input {s}")
        return (ho, wo, self.n)
