"""Spatial resizing of NHWC images (ONNX Resize/Upsample: nearest and linear), a parameter-free linear map.

``y[p, q] = Σ_ij A_h[p, i] A_w[q, j] x[i, j]`` per channel, with interpolation matrices
``A_h`` (Ho × H) and ``A_w`` (Wo × W) fixed by the sizes, the mode and ONNX's coordinate
transformation. LRP: linear-like without weights, so relevance goes back through the exact
transpose proportionally (the engine's ``norm`` rule): ``R_i = x_i Σ_p A_pi R_p / z_p``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.layers.base import LinearLike, Shape, check_rank

MODES = ("nearest", "linear")
COORDINATES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
#: entries of one axis' interpolation matrix at most (a hostile scale must not allocate out of proportion)
MAX_MATRIX = 1 << 24


def interpolation_matrix(n_in: int, n_out: int, scale: float, mode: str, coordinates: str,
                         nearest: str = "round_prefer_floor") -> numpy.ndarray:
    """``A`` (n_out × n_in) of one axis as ONNX Resize defines it (float64)."""
    p = numpy.arange(n_out, dtype=numpy.float64)
    if coordinates == "half_pixel":
        src = (p + 0.5) / scale - 0.5
    elif coordinates == "pytorch_half_pixel":
        src = (p + 0.5) / scale - 0.5 if n_out > 1 else numpy.zeros_like(p)
    elif coordinates == "asymmetric":
        src = p / scale
    else:  # align_corners
        src = p * (n_in - 1) / (n_out - 1) if n_out > 1 else numpy.zeros_like(p)
    a = numpy.zeros((n_out, n_in))
    rows = numpy.arange(n_out)
    if mode == "nearest":
        idx = {"round_prefer_floor": numpy.ceil(src - 0.5), "round_prefer_ceil": numpy.floor(src + 0.5),
               "floor": numpy.floor(src), "ceil": numpy.ceil(src)}[nearest]
        a[rows, numpy.clip(idx, 0, n_in - 1).astype(int)] = 1.0
        return a
    src = numpy.clip(src, 0, n_in - 1)
    i0 = numpy.floor(src).astype(int)
    i1 = numpy.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    numpy.add.at(a, (rows, i0), 1 - frac)
    numpy.add.at(a, (rows, i1), frac)
    return a


class Resize(LinearLike):
    """Resize ``(H, W) → size`` (nearest or linear) with ONNX's coordinate transformation.

    Parameters
    ----------
    in_size, size : (int, int)
        Input and output spatial size.
    scale : (float, float), optional
        The scale factors the coordinates use (default ``size / in_size``; ONNX uses the given
        ``scales`` when there are any).
    mode, coordinates, nearest : str
        ``nearest``/``linear``; ``half_pixel``, ``pytorch_half_pixel``, ``asymmetric``,
        ``align_corners``; the rounding of ``nearest``.
    """

    kinds = frozenset({"affine", "resize"})
    keeps_nonneg = True
    nonneg_weight = True

    def __init__(self, in_size: Sequence[int], size: Sequence[int], scale: Sequence[float] | None = None,
                 mode: str = "nearest", coordinates: str = "half_pixel", nearest: str = "round_prefer_floor") -> None:
        super().__init__()
        if mode not in MODES or coordinates not in COORDINATES or nearest not in NEAREST:
            raise ConfigError(f"Resize: mode {mode!r} (one of {MODES}), coordinates {coordinates!r} (one of "
                              f"{COORDINATES}), nearest {nearest!r} (one of {NEAREST})")
        self.in_size = tuple(int(s) for s in in_size)
        self.size = tuple(int(s) for s in size)
        self.scale = tuple(float(s) for s in scale) if scale is not None else \
            tuple(o / i for o, i in zip(self.size, self.in_size))
        self.mode, self.coordinates, self.nearest = mode, coordinates, nearest
        if min(self.size) < 1 or min(self.in_size) < 1 or not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise ShapeError(f"Resize: sizes {self.in_size} → {self.size} with scales {self.scale} are not valid")
        if max(o * i for o, i in zip(self.size, self.in_size)) > MAX_MATRIX:
            raise ShapeError(f"Resize: {self.in_size} → {self.size} needs interpolation matrices larger than "
                             f"{MAX_MATRIX} entries")
        self._a = [interpolation_matrix(i, o, s, mode, coordinates, nearest)
                   for i, o, s in zip(self.in_size, self.size, self.scale)]

    def config(self) -> dict[str, Any]:
        return {"in_size": self.in_size, "size": self.size, "scale": self.scale, "mode": self.mode,
                "coordinates": self.coordinates, "nearest": self.nearest}

    def _mats(self, x: Any) -> tuple[Any, Any]:
        xp = get_namespace(x)
        return xp.asarray(self._a[0], dtype=x.dtype), xp.asarray(self._a[1], dtype=x.dtype)

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).ones((), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        xp = get_namespace(xs[0])
        ah, aw = self._mats(xs[0])
        z = xp.einsum("qj,npjc->npqc", aw, xp.einsum("pi,nijc->npjc", ah, xs[0])) * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        xp = get_namespace(s)
        ah, aw = self._mats(s)
        return [xp.einsum("pi,npjc->nijc", ah, xp.einsum("qj,npqc->npjc", aw, s * weight))]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        check_rank(s, 3, "Resize", "images H×W×C")
        if tuple(s[:2]) != self.in_size:
            raise ShapeError(f"Resize from {self.in_size} expects images of that size, got shape {s}")
        return (*self.size, s[2])
