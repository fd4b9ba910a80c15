"""2-D convolution (cross-correlation) on NHWC activations."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers import _windows as win
from lrpflow.layers import ort_conv
from lrpflow.layers.base import LinearLike, Shape, add_bias, check_rank


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
    groups : int
        Grouped convolution: input and output channels split into ``groups`` blocks, block
        ``g`` of the output sees only block ``g`` of the input; the weight is then
        ``W[h, w, d/groups, n]`` (output channels of group ``g`` are ``g·n/groups …``).
        ``groups = d = n`` is the depthwise convolution.
    """

    kinds = frozenset({"affine", "conv", "convolution"})
    #: the weight's last two axes are (input, output) channels: rules may stack channel blocks
    channel_blocks = True
    param_names = ("weight", "bias")
    toolbox_name = "Convolution"

    def __init__(self, h: int, w: int, d: int, n: int, stride: Any = 1, padding: Any = 0,
                 weight: Any = None, bias: Any = None, rng: Any = None, groups: int = 1) -> None:
        super().__init__()
        self.kernel = (int(h), int(w))
        self.d, self.n = int(d), int(n)
        self.stride = win.pair(stride, "stride")
        self.pads = win.pads4(padding)
        self.groups = int(groups)
        if self.groups < 1 or self.d % self.groups or self.n % self.groups:
            raise ShapeError(f"Conv2d: groups={groups} must divide the input ({d}) and output ({n}) channels")
        if self.groups > 1:
            self.channel_blocks = False  # the weight's channel axes are per group: no stacked contributions
        shape = (*self.kernel, self.d // self.groups, self.n)
        if weight is None:
            weight = numpy.random.default_rng(rng).normal(0.0, (h * w * d // self.groups) ** -0.5, shape)
        if bias is None:
            bias = numpy.zeros(self.n)
        if tuple(weight.shape) != shape:
            raise ShapeError(f"Conv2d: weight must have shape {shape}, got {tuple(weight.shape)}")
        if tuple(bias.shape) != (self.n,):
            raise ShapeError(f"Conv2d: bias must have shape {(self.n,)}, got {tuple(bias.shape)}")
        self.weight, self.bias = weight, bias

    def config(self) -> dict[str, Any]:
        cfg = {"h": self.kernel[0], "w": self.kernel[1], "d": self.d, "n": self.n,
               "stride": self.stride, "padding": self.pads}
        if self.groups != 1:
            cfg["groups"] = self.groups
        return cfg

    def _bands(self) -> dict:
        """Banded weights of this layer's (modified) weights, kept across calls (cleared by :meth:`invalidate`)."""
        return self.__dict__.setdefault("_band_cache", {})

    def _sessions(self) -> dict:
        """onnxruntime sessions of this layer's (modified) weights (:mod:`lrpflow.layers.ort_conv`)."""
        return self.__dict__.setdefault("_ort_cache", {})

    def invalidate(self) -> None:
        self.__dict__.pop("_band_cache", None)
        self.__dict__.pop("_ort_cache", None)
        super().invalidate()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_band_cache", None)
        state.pop("_ort_cache", None)
        return state

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.d == self.n

    def _group_slices(self) -> list[tuple[slice, slice]]:
        di, do = self.d // self.groups, self.n // self.groups
        return [(slice(g * di, (g + 1) * di), slice(g * do, (g + 1) * do)) for g in range(self.groups)]

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        x = xs[0]
        if self.groups == 1:
            z = self._ort_forward(x, weight, bias, signed=False)
            if z is not None:
                return z
            z = win.conv_forward(x, weight, self.stride, self.pads, self._bands())
        elif self.depthwise:
            z = win.depthwise_forward(x, weight, self.stride, self.pads)
        else:
            xp = get_namespace(x, weight)
            z = xp.concatenate([win.conv_forward(xp.ascontiguousarray(x[..., i]), weight[..., o], self.stride, self.pads)
                                for i, o in self._group_slices()], axis=-1)
        return add_bias(z, bias)  # z is this call's own product

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        shape = xs[0].shape
        if self.groups == 1:
            g = ort_conv.conv_transpose(s, weight, self.stride, self.pads, shape, self._sessions())
            if g is None:
                g = win.conv_transpose(s, weight, self.stride, self.pads, shape, self._bands())
            return [g]
        if self.depthwise:
            return [win.depthwise_transpose(s, weight, self.stride, self.pads, shape)]
        xp = get_namespace(s, weight)
        part = (*shape[:3], self.d // self.groups)
        return [xp.concatenate([win.conv_transpose(xp.ascontiguousarray(s[..., o]), weight[..., o], self.stride,
                                                   self.pads, part) for _, o in self._group_slices()], axis=-1)]

    def _ort_forward(self, x: Any, weight: Any, bias: Any | None, signed: bool) -> Any | None:
        """``z + b`` through onnxruntime (the bias inside the graph where it fits), or None."""
        fuse = bias is not None and ort_conv.fusable_bias(bias, weight)
        z = ort_conv.conv_forward(x, weight, self.stride, self.pads, self._sessions(), bias=bias if fuse else None,
                                  signed=signed)
        return z if z is None or fuse else add_bias(z, bias)

    def apply_signed(self, x: Any, weight: Any, bias: Any | None) -> Any:
        if self.groups == 1:
            z = self._ort_forward(x, weight, bias, signed=True)
            if z is not None:
                return z
        return super().apply_signed(x, weight, bias)

    def input_times_transpose(self, x: Any, parts: Sequence[Any], weight: Any, signed: bool = False) -> Any:
        if self.groups == 1:
            out = ort_conv.conv_transpose_times(parts, weight, self.stride, self.pads, x, signed, self._sessions())
            if out is not None:
                return out
        return super().input_times_transpose(x, parts, weight, signed)

    def param_grads(self, xs: Sequence[Any], g: Any) -> dict[str, Any]:
        x = xs[0]
        if self.groups == 1:
            dw = win.conv_weight_grad(x, g, self.kernel, self.stride, self.pads)
        elif self.depthwise:
            dw = win.depthwise_weight_grad(x, g, self.kernel, self.stride, self.pads)
        else:
            xp = get_namespace(x, g)
            dw = xp.concatenate([win.conv_weight_grad(x[..., i], g[..., o], self.kernel, self.stride, self.pads)
                                 for i, o in self._group_slices()], axis=-1)
        return {"weight": dw, "bias": g.sum(axis=(0, 1, 2))}

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
