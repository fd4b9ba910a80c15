"""Pooling layers on NHWC activations (per channel)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers import _windows as win
from lrpflow.layers.base import Layer, LinearLike, Shape, check_rank


class _Windowed:
    """Window geometry shared by the pools."""

    def _init_window(self, hp: int, wp: int, stride: Any, padding: Any) -> None:
        self.pool = (int(hp), int(wp))
        self.stride = win.pair(stride if stride is not None else self.pool, "stride")
        self.pads = win.pads4(padding)

    def config(self) -> dict[str, Any]:
        return {"hp": self.pool[0], "wp": self.pool[1], "stride": self.stride, "padding": self.pads}

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        check_rank(s, 3, type(self).__name__, "images H×W×C")
        t, b, l, r = self.pads
        ho = win.out_size(s[0], self.pool[0], self.stride[0], t, b)
        wo = win.out_size(s[1], self.pool[1], self.stride[1], l, r)
        if ho < 1 or wo < 1:
            raise ShapeError(f"{type(self).__name__} window {self.pool} does not fit the input {s}")
        return (ho, wo, s[2])

    def window_sum(self, x: Any) -> Any:
        """``Σ_window x`` per channel: one strided add per kernel offset (no window copies)."""
        return win.window_sum(win.pad(x, self.pads), self.pool, self.stride)

    def window_sum_t(self, g: Any, x_shape: tuple[int, ...]) -> Any:
        t, b, l, r = self.pads
        padded = (g.shape[0], x_shape[1] + t + b, x_shape[2] + l + r, x_shape[3])
        return win.window_sum_transpose(g, self.pool, self.stride, padded, self.pads)


class SumPool(_Windowed, LinearLike):
    """Sum pooling, scaled as in the toolbox: ``y = Σ_window x / √(hp·wp)``.

    For LRP the layer is the plain window sum (weight 1): the positive forward
    scaling cancels in every rule's ratio, as in the toolbox.
    """

    kinds = frozenset({"affine", "pool", "sum_pool"})
    keeps_nonneg = True
    nonneg_weight = True
    toolbox_name = "SumPool"
    forward_is_apply = False

    def __init__(self, hp: int = 2, wp: int = 2, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        self._init_window(hp, wp, stride, padding)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        xp = get_namespace(xs[0])
        return xp.ones((), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = self.window_sum(xs[0]) * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [self.window_sum_t(s * weight, xs[0].shape)]

    def forward(self, *xs: Any) -> Any:
        return self.window_sum(xs[0]) * (1.0 / math.sqrt(self.pool[0] * self.pool[1]))

    def z_from_output(self, y: Any) -> Any:
        """The window sum, ``S = Y / (1/√(hp·wp))``, exactly as the toolbox recovers it."""
        return y / (1.0 / math.sqrt(self.pool[0] * self.pool[1]))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [self.window_sum_t(g * (1.0 / math.sqrt(self.pool[0] * self.pool[1])), xs[0].shape)]


class AvgPool(_Windowed, LinearLike):
    """Average pooling ``y = Σ_window x / (hp·wp)`` (zero padding counts in the divisor)."""

    kinds = frozenset({"affine", "pool", "avg_pool"})
    keeps_nonneg = True
    nonneg_weight = True

    def __init__(self, hp: int = 2, wp: int = 2, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        self._init_window(hp, wp, stride, padding)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        xp = get_namespace(xs[0])
        return xp.asarray(1.0 / (self.pool[0] * self.pool[1]), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = self.window_sum(xs[0]) * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        return [self.window_sum_t(s * weight, xs[0].shape)]


class GlobalAvgPool(LinearLike):
    """Mean over the spatial axes: ``(N, H, W, C) → (N, C)``."""

    kinds = frozenset({"affine", "pool", "global_avg_pool"})
    keeps_nonneg = True
    nonneg_weight = True

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        xp = get_namespace(xs[0])
        h, w = xs[0].shape[1:3]
        return xp.asarray(1.0 / (h * w), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0].sum(axis=(1, 2)) * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        xp = get_namespace(s)
        return [xp.broadcast_to((s * weight)[:, None, None, :], xs[0].shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        check_rank(shapes[0], 3, "GlobalAvgPool", "images H×W×C")
        return (shapes[0][2],)


class MaxPool(_Windowed, Layer):
    """Max pooling ``y = max_window x`` (padding counts as −∞)."""

    role = "maxpool"
    kinds = frozenset({"pool", "max_pool"})
    keeps_nonneg = True
    toolbox_name = "MaxPool"

    def __init__(self, hp: int = 2, wp: int = 2, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        self._init_window(hp, wp, stride, padding)

    def _offsets(self, xpad: Any, ho: int, wo: int) -> Any:
        """``(a, b, x[:, a::s0, b::s1])``: each kernel offset's strided view of the padded input, one per window."""
        (s0, s1), (kh, kw) = self.stride, self.pool
        for a in range(kh):
            for b in range(kw):
                yield a, b, xpad[:, a : a + s0 * (ho - 1) + 1 : s0, b : b + s1 * (wo - 1) + 1 : s1, :]

    def forward(self, *xs: Any) -> Any:
        # kh·kw element-wise maxima of strided views (a reduction over a 6-d window view is ~5x slower)
        xp = get_namespace(xs[0])
        xpad = win.pad(xs[0], self.pads, value=-float("inf"))
        ho = (xpad.shape[1] - self.pool[0]) // self.stride[0] + 1
        wo = (xpad.shape[2] - self.pool[1]) // self.stride[1] + 1
        out = None
        for _, _, part in self._offsets(xpad, ho, wo):
            out = part.copy() if out is None else xp.maximum(out, part, out=out)
        return out

    def winners(self, x: Any, y: Any, r: Any) -> Any:
        """Spread ``r`` over each window's maxima (ties share equally): ``[x_i = y_j] / #ties · r_j``."""
        xp = get_namespace(x)
        xpad = win.pad(x, self.pads, value=-float("inf"))
        ho, wo = y.shape[1], y.shape[2]
        if tuple(self.stride) == tuple(self.pool):
            return win.unpad(self._tiled_winners(xpad, y, r), self.pads)
        count = xp.zeros(y.shape, dtype=r.dtype)
        for _, _, part in self._offsets(xpad, ho, wo):
            count += part == y
        share = r / xp.maximum(count, 1)
        # scatter the share to the winners: Σ_windows hit * share
        out = xp.zeros(xpad.shape, dtype=r.dtype)
        s0, s1 = self.stride
        for a, b, part in self._offsets(xpad, ho, wo):
            out[:, a : a + s0 * ho : s0, b : b + s1 * wo : s1, :] += xp.where(part == y, share, 0)
        return win.unpad(out, self.pads)

    def _tiled_winners(self, xpad: Any, y: Any, r: Any) -> Any:
        """:meth:`winners` for non-overlapping windows: the padded input seen as
        ``(N, Ho, kh, Wo, kw, C)`` tiles, compared and scaled with one broadcast each."""
        xp = get_namespace(xpad)
        (kh, kw), (n, ho, wo, c) = self.pool, y.shape
        hk, wk = ho * kh, wo * kw
        hits = xpad[:, :hk, :wk].reshape(n, ho, kh, wo, kw, c) == y[:, :, None, :, None, :]
        # ties per window, counted in bytes where they fit (kh·kw < 256): a quarter of the traffic of floats
        flags = hits.view(xp.uint8) if kh * kw < 256 else hits.astype(r.dtype)
        count = win.window_sum(flags.reshape(n, hk, wk, c), self.pool, self.pool)
        share = r / xp.maximum(count, 1)
        tiles = xp.empty(hits.shape, dtype=r.dtype)  # the shares spread over the windows, then masked in place:
        tiles[...] = share[:, :, None, :, None, :]  # 0.73× the time of one broadcasting bool × float product
        tiles *= hits
        tiles = tiles.reshape(n, hk, wk, c)
        if (hk, wk) == tuple(xpad.shape[1:3]):
            return tiles
        out = xp.zeros(xpad.shape, dtype=r.dtype)  # rows/columns no window reaches get nothing
        out[:, :hk, :wk] = tiles
        return out

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [self.winners(xs[0], y, g)]
