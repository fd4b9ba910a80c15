"""The LRP Toolbox's five colormaps as the toolbox drew them: ``cmap="toolbox:gray-red2"``.

lrpflow's own ``gray_red``, ``gray_red2``, ... (:mod:`lrpflow.render.colormaps`) keep the
toolbox's colour formulas but correct its defects. Scripts ported from the toolbox that
must reproduce its pictures pixel for pixel use the ``toolbox`` family instead, which
keeps every one of them:

* the maps see the *raw* relevance, not ``R / max|R|``: ``gray-red``, ``black-green``
  and ``blue-black-yellow`` divide by ``max R`` (not ``max |R|``), so negative values
  below ``−max R`` leave [0, 1];
* ``gray-red2`` first sets every value above ten times the map's variance to 0 (a cut
  that depends on the scale of R), then every negative value to 0, then divides by
  ``max R``: negative relevance is never shown;
* ``black-firered`` divides by ``max |R|`` (the one map that did);
* the toolbox wrote images with ``(rgb * 255).astype(uint8)``: values are truncated,
  not rounded, and values outside [0, 1] wrap around modulo 256.

:func:`toolbox_pixels` returns the toolbox's uint8 image; the colormap objects hand
:func:`~lrpflow.render.hm_to_rgb` float values that lrpflow's PNG writer turns into
exactly those bytes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy

__all__ = ["ToolboxColormap", "toolbox_colormap", "toolbox_pixels", "TOOLBOX_MAPS"]


def _ramp(x: numpy.ndarray, start: float, width: float) -> numpy.ndarray:
    return numpy.clip(x - start, 0.0, width) / width


def _stack(r: numpy.ndarray, g: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    return numpy.stack([r, g, b], axis=-1)


def _gray_red(R: numpy.ndarray) -> numpy.ndarray:
    """Gray 0.8 plus ``t = clip(R / max R, −1, 1)``: red up for t ≥ 0, blue up for t < 0."""
    base = 0.8
    t = numpy.clip(R / numpy.max(R), -1.0, 1.0)
    neg = R < 0
    r = numpy.where(neg, base + t * base, base + t * (1 - base))
    g = numpy.where(neg, base + t * base, base - t * base)
    b = numpy.where(neg, base - t * (1 - base), base - t * base)
    return _stack(r, g, b)


def _gray_red2(R: numpy.ndarray) -> numpy.ndarray:
    """Outlier cut at 10·var(R), negatives zeroed, ``x = R / max R``, then the gray-red2 ramps."""
    R = numpy.array(R, dtype=numpy.float64)  # the toolbox modified its argument; we modify a copy
    v = numpy.var(R)
    R[R > 10 * v] = 0
    R[R < 0] = 0
    x = R / numpy.max(R)
    hr_p = 0.9 - _ramp(x, 0.3, 0.7) * 0.5
    hg_p = 0.9 - _ramp(x, 0.0, 0.3) * 0.5 - _ramp(x, 0.3, 0.7) * 0.4
    hr_n = 0.9 - _ramp(-x, 0.0, 0.3) * 0.5 - _ramp(-x, 0.3, 0.7) * 0.4
    hb_n = 0.9 - _ramp(-x, 0.3, 0.7) * 0.5
    pos = x >= 0
    neg = x < 0
    return _stack(hr_p * pos + hr_n * neg, hg_p * pos + hr_n * neg, hg_p * pos + hb_n * neg)


def _black_green(R: numpy.ndarray) -> numpy.ndarray:
    """Green ``R / max R`` where R ≥ 0, blue ``−R / max R`` where R < 0."""
    m = numpy.max(R)
    z = numpy.zeros_like(R, dtype=numpy.float64)
    return _stack(z, numpy.where(R >= 0, R / m, 0.0), numpy.where(R < 0, -R / m, 0.0))


def _black_firered(R: numpy.ndarray) -> numpy.ndarray:
    """``x = R / max|R|``; red → yellow → white for x > 0, blue → cyan → white for x < 0."""
    x = R / numpy.max(numpy.abs(R))
    return _stack(_ramp(x, 0.0, 0.25) + _ramp(-x, 0.5, 0.5), _ramp(x, 0.25, 0.25) + _ramp(-x, 0.25, 0.25),
                  _ramp(x, 0.5, 0.5) + _ramp(-x, 0.0, 0.25))


def _blue_black_yellow(R: numpy.ndarray) -> numpy.ndarray:
    """Yellow ``R / max R`` where R ≥ 0, blue ``−R / max R`` where R < 0."""
    m = numpy.max(R)
    p = numpy.where(R >= 0, R / m, 0.0)
    return _stack(p, p, numpy.where(R < 0, -R / m, 0.0))


#: toolbox name → the map of the raw relevance (H, W) → RGB (H, W, 3), unquantised
TOOLBOX_MAPS: dict[str, Callable[[numpy.ndarray], numpy.ndarray]] = {
    "gray-red": _gray_red,
    "gray-red2": _gray_red2,
    "black-green": _black_green,
    "black-firered": _black_firered,
    "blue-black-yellow": _blue_black_yellow,
}


def toolbox_pixels(rgb: Any) -> numpy.ndarray:
    """``(rgb * 255).astype(uint8)`` as the toolbox's ``save_image`` did it on x86.

    Truncation toward zero, then the low 8 bits (values outside [0, 1] wrap around);
    NaN (an all-zero or all-negative map divided by its max) becomes 0.
    """
    v = numpy.asarray(rgb, dtype=numpy.float64) * 255.0
    v = numpy.where(numpy.isfinite(v), v, 0.0)
    return (numpy.trunc(v).astype(numpy.int64) & 0xFF).astype(numpy.uint8)


@dataclass(frozen=True)
class ToolboxColormap:
    """One of the toolbox's maps: applied to the raw relevance, quantised as the toolbox saved it.

    ``raw_relevance = True`` tells :func:`~lrpflow.render.hm_to_rgb` to hand it R itself
    (not ``R / max|R|``). Called with values in [-1, 1] (any other caller) it treats them
    as the relevance.
    """

    name: str
    raw_relevance: bool = True

    def __call__(self, R: Any) -> numpy.ndarray:
        R = numpy.asarray(R, dtype=numpy.float64)
        with numpy.errstate(divide="ignore", invalid="ignore"):
            rgb = TOOLBOX_MAPS[self.name](R)
        return toolbox_pixels(rgb).astype(numpy.float64) / 255.0


def toolbox_colormap(name: str) -> ToolboxColormap | None:
    """Resolver of the ``toolbox`` colormap family: ``"gray-red2"`` (or ``gray_red2``) → its map."""
    key = str(name).strip().lower().replace("_", "-")
    return ToolboxColormap(key) if key in TOOLBOX_MAPS else None
