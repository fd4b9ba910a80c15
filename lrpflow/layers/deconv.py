"""Transposed convolution (ONNX ConvTranspose, PyTorch ConvTranspose2d) on NHWC activations."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers import _windows as win
from lrpflow.layers.base import LinearLike, Shape, check_rank
from lrpflow.layers.conv import Conv2d


class ConvTranspose2d(LinearLike):
    """``y = Cᵀ x + b``: the transpose (adjoint) of the convolution ``C`` with kernel ``W`` that maps
    ``n``-channel outputs back to ``d``-channel inputs — each input pixel adds ``x · W`` to its window.

    Parameters
    ----------
    h, w, d, n : int
        Kernel height, width, input channels ``d``, output channels ``n``.
    weight : array ``(h, w, n/groups, d)``
        The adjoint convolution's kernel (ONNX ``W[d, n/g, h, w]`` transposed ``(2, 3, 1, 0)``).
    stride, padding, groups
        As for :class:`~lrpflow.layers.Conv2d` (the padding is removed from the output).
    output_padding : (int, int)
        Extra rows/columns at the bottom/right of the output (ONNX ``output_padding``).
    """

    kinds = frozenset({"affine", "conv", "conv_transpose"})
    channel_blocks = False  # the weight's last axis is the input: no stacked contributions
    param_names = ("weight", "bias")

    def __init__(self, h: int, w: int, d: int, n: int, stride: Any = 1, padding: Any = 0, output_padding: Any = 0,
                 groups: int = 1, weight: Any = None, bias: Any = None, rng: Any = None) -> None:
        super().__init__()
        self.kernel = (int(h), int(w))
        self.d, self.n, self.groups = int(d), int(n), int(groups)
        self.stride = win.pair(stride, "stride")
        self.pads = win.pads4(padding)
        self.output_padding = win.pair(output_padding, "output_padding")
        if self.groups < 1 or self.d % self.groups or self.n % self.groups:
            raise ShapeError(f"ConvTranspose2d: groups={groups} must divide the input ({d}) and output ({n}) channels")
        shape = (*self.kernel, self.n // self.groups, self.d)
        if weight is None:
            weight = numpy.random.default_rng(rng).normal(0.0, (h * w * d // self.groups) ** -0.5, shape)
        if bias is None:
            bias = numpy.zeros(self.n)
        if tuple(weight.shape) != shape:
            raise ShapeError(f"ConvTranspose2d: weight must have shape {shape}, got {tuple(weight.shape)}")
        if tuple(bias.shape) != (self.n,):
            raise ShapeError(f"ConvTranspose2d: bias must have shape {(self.n,)}, got {tuple(bias.shape)}")
        self.weight, self.bias = weight, bias
        self._adjoint = Conv2d(h, w, n, d, stride=self.stride, padding=self.pads, weight=weight,
                               bias=numpy.zeros(d), groups=self.groups)

    def config(self) -> dict[str, Any]:
        return {"h": self.kernel[0], "w": self.kernel[1], "d": self.d, "n": self.n, "stride": self.stride,
                "padding": self.pads, "output_padding": self.output_padding, "groups": self.groups}

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        t, b, l, r = self.pads
        return ((h - 1) * self.stride[0] + self.kernel[0] + self.output_padding[0] - t - b,
                (w - 1) * self.stride[1] + self.kernel[1] + self.output_padding[1] - l - r)

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        x = xs[0]
        ho, wo = self._out_hw(x.shape[1], x.shape[2])

        class _Like:  # only the shape of the adjoint's input is needed
            shape = (x.shape[0], ho, wo, self.n)

        z = self._adjoint.apply_transpose(x, weight, [_Like])[0]
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        xp = get_namespace(s)
        return [self._adjoint.apply([xp.ascontiguousarray(s)], weight, None)]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        check_rank(s, 3, "ConvTranspose2d", "images H×W×C")
        if s[2] != self.d:
            raise ShapeError(f"ConvTranspose2d expects {self.d} input channels, got {s[2]} (shape {s})")
        if any(p >= st for p, st in zip(self.output_padding, self.stride)):
            raise ShapeError(f"ConvTranspose2d: output_padding {self.output_padding} must be below the stride {self.stride}")
        ho, wo = self._out_hw(s[0], s[1])
        if ho < 1 or wo < 1:
            raise ShapeError(f"ConvTranspose2d: padding {self.pads} leaves no output for input {s}")
        return (ho, wo, self.n)
