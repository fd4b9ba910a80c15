"""Colormaps: relevance in [-1, 1] → RGB in [0, 1].

A colormap is any callable ``cmap(t) -> rgb`` taking an array ``t`` of values in
[-1, 1] (relevance normalised by :func:`normalize_relevance`) and returning a new
float64 array of shape ``t.shape + (3,)`` with values in [0, 1]. Colormaps never
modify their argument and never normalise it themselves: normalisation is the job of
the caller (:func:`lrpflow.render.hm_to_rgb`), which divides by max |R| so that zero
relevance always maps to the colormap's centre and the colours of both signs are on
one scale.

The five colormaps of the LRP Toolbox (``python/render.py``) are here with the
toolbox's colour formulas, written as pure functions of ``t``; the toolbox's own
versions divided by ``max(R)`` (not ``max |R|``), wrote into the caller's array and
returned NaN for all-zero maps. Every matplotlib colormap is available by name through
:func:`get_colormap` (the ``matplotlib`` colormap family).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import DataFormatError, UnknownNameError

if TYPE_CHECKING:
    from lrpflow.plugins import Registry

__all__ = [
    "Colormap", "MatplotlibColormap", "normalize_relevance", "get_colormap", "matplotlib_colormap",
    "colormap_names", "gray_red", "gray_red2", "black_green", "black_firered", "blue_black_yellow",
    "blue_white_red", "BUILTIN_COLORMAPS", "DEFAULT_CMAP",
]

#: The colormap :func:`~lrpflow.render.hm_to_rgb` uses when none is named: a symmetric
#: diverging map (negative blue, zero white, positive red), applied to R / max |R|.
DEFAULT_CMAP = "blue_white_red"


@runtime_checkable
class Colormap(Protocol):
    """What a registered colormap is: ``cmap(t) -> rgb`` with ``t`` in [-1, 1]."""

    def __call__(self, t: numpy.ndarray) -> numpy.ndarray:  # pragma: no cover - protocol
        ...


# --- helpers ----------------------------------------------------------------


def normalize_relevance(r: Any) -> numpy.ndarray:
    """Relevance scaled to [-1, 1] by its largest magnitude, as a new float64 host array.

    Parameters
    ----------
    r : array_like
        Relevance of any shape (numpy or cupy; cupy arrays are copied to the host).

    Returns
    -------
    numpy.ndarray
        ``r / max |r|``; an all-zero map gives zeros (never NaN).

    Raises
    ------
    DataFormatError
        If ``r`` contains NaN or infinity.

    Notes
    -----
    .. math:: t = R / \\max_i |R_i|, \\qquad t = 0 \\text{ if } \\max_i |R_i| = 0

    Dividing by max |R| (not max R, as some toolbox colormaps did) keeps the sign of
    every value, so all-negative maps are drawn in the negative colours.
    """
    r = numpy.array(to_numpy(r), dtype=numpy.float64)  # always a copy
    _check_finite(r, "relevance")
    peak = numpy.max(numpy.abs(r)) if r.size else 0.0
    if peak > 0:
        r /= peak
    else:
        r[...] = 0.0  # also turns -0.0 into 0.0
    return r


def _check_finite(a: numpy.ndarray, what: str) -> None:
    if not numpy.all(numpy.isfinite(a)):
        bad = int(numpy.size(a) - numpy.count_nonzero(numpy.isfinite(a)))
        raise DataFormatError(f"{what} contains {bad} NaN or infinite value(s); cannot render it")


def _unit_input(t: Any) -> numpy.ndarray:
    """``t`` as a float64 host array clipped to [-1, 1] (a new array; the argument is left alone)."""
    t = numpy.asarray(to_numpy(t), dtype=numpy.float64)
    _check_finite(t, "colormap input")
    return numpy.clip(t, -1.0, 1.0)


def _rgb(r: numpy.ndarray, g: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    return numpy.clip(numpy.stack([r, g, b], axis=-1), 0.0, 1.0)


def _ramp(x: numpy.ndarray, start: float, width: float) -> numpy.ndarray:
    """``clip(x - start, 0, width) / width``: 0 below ``start``, 1 above ``start + width``."""
    return numpy.clip(x - start, 0.0, width) / width


# --- the toolbox's colormaps ---------------------------------------------------


def gray_red(t: Any) -> numpy.ndarray:
    """Gray at zero, red for positive, blue for negative relevance (toolbox ``gray-red``).

    Parameters
    ----------
    t : array_like
        Normalised relevance in [-1, 1] (clipped); any shape.

    Returns
    -------
    numpy.ndarray
        RGB in [0, 1], shape ``t.shape + (3,)``.

    Notes
    -----
    With the base gray :math:`g = 0.8`:

    .. math::
        t \\ge 0:\\; (g + (1-g)t,\\; g - g t,\\; g - g t) \\qquad
        t < 0:\\; (g + g t,\\; g + g t,\\; g - (1-g)t)

    so -1 → (0, 0, 1), -0.5 → (0.4, 0.4, 0.9), 0 → (0.8, 0.8, 0.8),
    0.5 → (0.9, 0.4, 0.4), 1 → (1, 0, 0). (Grégoire Montavon's map in the LRP Toolbox.)
    """
    t = _unit_input(t)
    base = 0.8
    pos = t >= 0
    r = numpy.where(pos, base + (1 - base) * t, base + base * t)
    g = base - base * numpy.abs(t)
    b = numpy.where(pos, base - base * t, base - (1 - base) * t)
    return _rgb(r, g, b)


def gray_red2(t: Any) -> numpy.ndarray:
    """Light gray at zero, dark red for positive, dark blue for negative (toolbox ``gray-red2``).

    Parameters
    ----------
    t : array_like
        Normalised relevance in [-1, 1] (clipped); any shape.

    Returns
    -------
    numpy.ndarray
        RGB in [0, 1], shape ``t.shape + (3,)``.

    Notes
    -----
    With :math:`\\rho_{s,w}(x) = \\mathrm{clip}(x - s, 0, w) / w`, for :math:`t \\ge 0`

    .. math::
        r = 0.9 - 0.5\\,\\rho_{0.3,0.7}(t), \\quad
        g = b = 0.9 - 0.5\\,\\rho_{0,0.3}(t) - 0.4\\,\\rho_{0.3,0.7}(t)

    and for :math:`t < 0`, with :math:`u = -t`,

    .. math::
        r = g = 0.9 - 0.5\\,\\rho_{0,0.3}(u) - 0.4\\,\\rho_{0.3,0.7}(u), \\quad
        b = 0.9 - 0.5\\,\\rho_{0.3,0.7}(u)

    so 0 → (0.9, 0.9, 0.9), 1 → (0.4, 0, 0), -1 → (0, 0, 0.4).
    These are the toolbox's colour formulas for both signs. The toolbox additionally
    zeroed, in the caller's array, every value above ten times the map's variance and
    every negative value before dividing by max R; that scale-dependent outlier cut is
    not reproduced (negative relevance is shown in blue).
    """
    t = _unit_input(t)
    p = numpy.maximum(t, 0.0)
    n = numpy.maximum(-t, 0.0)
    pos = t >= 0
    # positive branch
    rp = 0.9 - _ramp(p, 0.3, 0.7) * 0.5
    gp = 0.9 - _ramp(p, 0.0, 0.3) * 0.5 - _ramp(p, 0.3, 0.7) * 0.4
    # negative branch
    rn = 0.9 - _ramp(n, 0.0, 0.3) * 0.5 - _ramp(n, 0.3, 0.7) * 0.4
    bn = 0.9 - _ramp(n, 0.3, 0.7) * 0.5
    r = numpy.where(pos, rp, rn)
    g = numpy.where(pos, gp, rn)
    b = numpy.where(pos, gp, bn)
    return _rgb(r, g, b)


def black_green(t: Any) -> numpy.ndarray:
    """Black at zero, green for positive, blue for negative relevance (toolbox ``black-green``).

    Parameters
    ----------
    t : array_like
        Normalised relevance in [-1, 1] (clipped); any shape.

    Returns
    -------
    numpy.ndarray
        RGB in [0, 1], shape ``t.shape + (3,)``.

    Notes
    -----
    .. math:: t \\ge 0:\\; (0, t, 0) \\qquad t < 0:\\; (0, 0, -t)
    """
    t = _unit_input(t)
    zero = numpy.zeros_like(t)
    return _rgb(zero, numpy.maximum(t, 0.0), numpy.maximum(-t, 0.0))


def black_firered(t: Any) -> numpy.ndarray:
    """Black at zero, red → yellow → white for positive, blue → cyan → white for negative.

    Parameters
    ----------
    t : array_like
        Normalised relevance in [-1, 1] (clipped); any shape.

    Returns
    -------
    numpy.ndarray
        RGB in [0, 1], shape ``t.shape + (3,)``.

    Notes
    -----
    The toolbox's ``black-firered``, with :math:`\\rho_{s,w}(x) = \\mathrm{clip}(x - s, 0, w) / w`:

    .. math::
        r = \\rho_{0,0.25}(t) + \\rho_{0.5,0.5}(-t), \\quad
        g = \\rho_{0.25,0.25}(t) + \\rho_{0.25,0.25}(-t), \\quad
        b = \\rho_{0.5,0.5}(t) + \\rho_{0,0.25}(-t)

    so 0.25 → (1, 0, 0), 0.5 → (1, 1, 0), 1 → (1, 1, 1); -0.25 → (0, 0, 1),
    -0.5 → (0, 1, 1), -1 → (1, 1, 1).
    """
    t = _unit_input(t)
    r = _ramp(t, 0.0, 0.25) + _ramp(-t, 0.5, 0.5)
    g = _ramp(t, 0.25, 0.25) + _ramp(-t, 0.25, 0.25)
    b = _ramp(t, 0.5, 0.5) + _ramp(-t, 0.0, 0.25)
    return _rgb(r, g, b)


def blue_black_yellow(t: Any) -> numpy.ndarray:
    """Black at zero, yellow for positive, blue for negative relevance (toolbox ``blue-black-yellow``).

    Parameters
    ----------
    t : array_like
        Normalised relevance in [-1, 1] (clipped); any shape.

    Returns
    -------
    numpy.ndarray
        RGB in [0, 1], shape ``t.shape + (3,)``.

    Notes
    -----
    .. math:: t \\ge 0:\\; (t, t, 0) \\qquad t < 0:\\; (0, 0, -t)

    (Alexander Binder's map in the LRP Toolbox.)
    """
    t = _unit_input(t)
    p = numpy.maximum(t, 0.0)
    return _rgb(p, p, numpy.maximum(-t, 0.0))


def blue_white_red(t: Any) -> numpy.ndarray:
    """The default: a symmetric diverging map, blue (-1) → white (0) → red (+1).

    Parameters
    ----------
    t : array_like
        Normalised relevance in [-1, 1] (clipped); any shape.

    Returns
    -------
    numpy.ndarray
        RGB in [0, 1], shape ``t.shape + (3,)``.

    Notes
    -----
    .. math:: t \\ge 0:\\; (1, 1 - t, 1 - t) \\qquad t < 0:\\; (1 + t, 1 + t, 1)

    Linear in each channel and symmetric: equal |t| gives equal colour intensity, and
    zero relevance is white (matplotlib's ``bwr`` without its 256-entry quantisation).
    """
    t = _unit_input(t)
    p = numpy.maximum(t, 0.0)
    n = numpy.maximum(-t, 0.0)
    return _rgb(1.0 - n, 1.0 - p - n, 1.0 - p)


# --- matplotlib ---------------------------------------------------------------


@dataclass(frozen=True)
class MatplotlibColormap:
    """A matplotlib colormap behind the lrpflow colormap interface.

    Parameters
    ----------
    name : str
        A name in ``matplotlib.colormaps`` (case-sensitive there; matched
        case-insensitively here when unambiguous), e.g. ``"jet"``, ``"bwr"``, ``"viridis_r"``.

    Notes
    -----
    ``t`` in [-1, 1] is mapped to :math:`u = (t + 1) / 2` in [0, 1] and looked up in the
    matplotlib colormap, exactly as the toolbox's ``hm_to_rgb`` did for matplotlib maps
    (alpha dropped).
    """

    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _matplotlib_name(self.name))

    def __call__(self, t: Any) -> numpy.ndarray:
        t = _unit_input(t)
        return self.unit((t + 1.0) / 2.0)

    def unit(self, u: Any) -> numpy.ndarray:
        """Look up values ``u`` in [0, 1] (clipped) directly, as matplotlib does."""
        import matplotlib

        u = numpy.clip(numpy.asarray(u, dtype=numpy.float64), 0.0, 1.0)
        return numpy.asarray(matplotlib.colormaps[self.name](u), dtype=numpy.float64)[..., :3]


def _matplotlib_names() -> list[str]:
    import matplotlib

    return list(matplotlib.colormaps)


def _matplotlib_name(name: str) -> str:
    names = _matplotlib_names()
    if name in names:
        return name
    folded = [n for n in names if n.lower() == str(name).lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(str(name), names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownNameError(f"unknown matplotlib colormap {name!r}{hint}")


def matplotlib_colormap(name: str) -> MatplotlibColormap | None:
    """Resolver of the ``matplotlib`` colormap family: the colormap, or None if matplotlib lacks it."""
    try:
        return MatplotlibColormap(name)
    except UnknownNameError:
        return None


# --- lookup ---------------------------------------------------------------------

#: registry name → (colormap, aliases). Aliases are the toolbox's names.
BUILTIN_COLORMAPS: dict[str, tuple[Callable[[Any], numpy.ndarray], tuple[str, ...]]] = {
    "blue_white_red": (blue_white_red, ("diverging", "default")),
    "gray_red": (gray_red, ("gray-red",)),
    "gray_red2": (gray_red2, ("gray-red2",)),
    "black_green": (black_green, ("black-green",)),
    "black_firered": (black_firered, ("black-firered",)),
    "blue_black_yellow": (blue_black_yellow, ("blue-black-yellow",)),
}


def _default_registry() -> Registry:
    from lrpflow.plugins import registries

    return registries().colormaps


def colormap_names(registry: Registry | None = None) -> list[str]:
    """Registered colormap names (not families such as ``matplotlib``)."""
    registry = _default_registry() if registry is None else registry
    return [e.name for e in registry if not e.meta.get("resolver")]


def get_colormap(cmap: Any = DEFAULT_CMAP, registry: Registry | None = None) -> Callable[[Any], numpy.ndarray]:
    """The colormap for a name, a matplotlib colormap object or a callable.

    Parameters
    ----------
    cmap : str, matplotlib.colors.Colormap or callable
        A registered colormap name or alias (case-insensitive, e.g. ``"gray_red"`` or
        the toolbox's ``"gray-red"``); ``"<family>:<name>"`` for a colormap family such
        as ``"matplotlib:viridis"``; a bare name any family knows (every matplotlib
        colormap: ``"jet"``, ``"seismic"``, ``"viridis_r"``); a
        ``matplotlib.colors.Colormap``; or a callable taking values in [-1, 1].
    registry : Registry, optional
        The colormap registry to search (default: that of the default plugin manager).

    Returns
    -------
    callable
        ``cmap(t) -> rgb`` with ``t`` in [-1, 1].

    Raises
    ------
    UnknownNameError
        If neither a registered colormap nor any family knows the name; the message
        lists the registered colormaps and the families.
    """
    if not isinstance(cmap, str):
        try:
            import matplotlib.colors

            if isinstance(cmap, matplotlib.colors.Colormap):
                return _WrappedMatplotlib(cmap)
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            pass
        if callable(cmap):
            return cmap
        raise UnknownNameError(f"a colormap must be a name or a callable, got {type(cmap).__name__}")
    registry = _default_registry() if registry is None else registry
    if cmap in registry and not registry.entry(cmap).meta.get("resolver"):
        return registry.get(cmap)
    resolvers = [e for e in registry if e.meta.get("resolver")]
    family, sep, rest = cmap.partition(":")
    if sep:
        if family not in registry or not registry.entry(family).meta.get("resolver"):
            families = ", ".join(e.name for e in resolvers) or "(none)"
            raise UnknownNameError(f"unknown colormap family {family!r} in {cmap!r}; known families: {families}")
        found = registry.get(family)(rest)
        if found is None:
            raise UnknownNameError(f"colormap family {family!r} has no colormap {rest!r}")
        return found
    for e in resolvers:
        found = e.impl(cmap)
        if found is not None:
            return found
    ours = colormap_names(registry)
    known = [n.lower() for n in ours] + [a for e in registry for a in e.aliases]
    close = difflib.get_close_matches(cmap.lower(), known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    families = ", ".join(e.name for e in resolvers) or "(none)"
    raise UnknownNameError(
        f"unknown colormap {cmap!r}{hint}; registered colormaps: {', '.join(ours) or '(none)'}; "
        f"families searched by name: {families} (e.g. any matplotlib colormap such as 'jet', 'bwr', 'viridis')"
    )


@dataclass(frozen=True)
class _WrappedMatplotlib:
    """A matplotlib ``Colormap`` object (not a name) behind the lrpflow interface."""

    cmap: Any

    def __call__(self, t: Any) -> numpy.ndarray:
        return self.unit((_unit_input(t) + 1.0) / 2.0)

    def unit(self, u: Any) -> numpy.ndarray:
        u = numpy.clip(numpy.asarray(u, dtype=numpy.float64), 0.0, 1.0)
        return numpy.asarray(self.cmap(u), dtype=numpy.float64)[..., :3]
