"""Heatmap and input images: the LRP Toolbox's rendering API, and overlays on natural images.

Everything here runs on the host: arrays on the cupy backend are copied with
:func:`lrpflow.backend.to_numpy` on entry. Functions named like the toolbox's
(:func:`vec2im`, :func:`enlarge_image`, :func:`digit_to_rgb`, :func:`hm_to_rgb`,
:func:`save_image`) keep its signatures and return float RGB in [0, 1] (``save_image``
returns the uint8 image it wrote); the ``render_*`` functions are the registered
renderers and return uint8 RGB.
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError, DataFormatError
from lrpflow.render.colormaps import DEFAULT_CMAP, _check_finite, get_colormap, normalize_relevance

__all__ = [
    "vec2im", "enlarge_image", "digit_to_rgb", "hm_to_rgb", "save_image", "overlay", "to_uint8",
    "image_to_unit", "outline", "write_png", "render_heatmap", "render_digit", "render_overlay",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


# --- shapes -------------------------------------------------------------------


def vec2im(V: Any, shape: Sequence[int] = ()) -> numpy.ndarray:
    """Reshape an array into an image; square if no shape is given (toolbox ``vec2im``).

    Parameters
    ----------
    V : array_like
        A vector or array of ``M`` values (numpy or cupy).
    shape : sequence of int, optional
        The output shape; with fewer than two entries the output is square,
        ``(sqrt(M), sqrt(M))``.

    Returns
    -------
    numpy.ndarray
        ``V`` reshaped (a view where possible), on the host.

    Raises
    ------
    DataFormatError
        If ``M`` is not a square number (no shape given) or does not fit ``shape``.
    """
    V = to_numpy(V)
    if len(shape) < 2:
        side = math.isqrt(V.size)
        if side * side != V.size:
            raise DataFormatError(
                f"vec2im: {V.size} values (shape {V.shape}) do not form a square image; pass shape=(H, W)"
            )
        shape = (side, side)
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != V.size:
        raise DataFormatError(f"vec2im: cannot reshape {V.size} values (shape {V.shape}) into shape {shape}")
    return numpy.reshape(V, shape)


def enlarge_image(img: Any, scaling: int = 3) -> numpy.ndarray:
    """Repeat every pixel ``scaling`` times along height and width (toolbox ``enlarge_image``).

    Parameters
    ----------
    img : array_like
        Image of shape (H, W) or (H, W, D).
    scaling : int
        Integer factor >= 1.

    Returns
    -------
    numpy.ndarray
        Shape (scaling·H, scaling·W) or (scaling·H, scaling·W, D), same dtype as ``img``;
        ``out[i, j] = img[i // scaling, j // scaling]``. Vectorised (two ``numpy.repeat``).

    Raises
    ------
    ConfigError
        If ``scaling`` is not an integer >= 1.
    DataFormatError
        If ``img`` is not 2- or 3-dimensional.
    """
    scaling = _check_scaling(scaling)
    img = to_numpy(img)
    if img.ndim not in (2, 3):
        raise DataFormatError(f"enlarge_image: expected an image of shape (H, W) or (H, W, D), got {img.shape}")
    return numpy.repeat(numpy.repeat(img, scaling, axis=0), scaling, axis=1)


def _check_scaling(scaling: Any) -> int:
    if isinstance(scaling, bool) or not isinstance(scaling, (int, numpy.integer)) or scaling < 1:
        raise ConfigError(f"scaling must be an integer >= 1, got {scaling!r}")
    return int(scaling)


#: accepted spellings of the two layouts (a batch or one sample)
_CHANNELS_FIRST = {"NCHW", "CHW", "CHANNELS_FIRST"}
_CHANNELS_LAST = {"NHWC", "HWC", "CHANNELS_LAST"}


def _check_layout(layout: str | None) -> str | None:
    """``"first"``, ``"last"`` or None (auto) for a layout name."""
    if layout is None or str(layout).lower() == "auto":
        return None
    key = str(layout).upper()
    if key in _CHANNELS_FIRST:
        return "first"
    if key in _CHANNELS_LAST:
        return "last"
    raise ConfigError(f"layout must be 'NHWC' (channels last), 'NCHW' (channels first) or None (auto), got {layout!r}")


def channels_last(a: Any, layout: str | None = None, what: str = "array") -> numpy.ndarray:
    """One sample, or a batch, in channels-last order (what the renderers draw).

    ``layout``: ``"NHWC"``/``"HWC"`` (kept), ``"NCHW"``/``"CHW"`` (the channel axis moved
    last: (C, H, W) → (H, W, C), (N, C, H, W) → (N, H, W, C)), or None: decided from the
    shape where that is unambiguous — a 3-axis sample whose last axis has more than 4
    entries but whose first has at most 4 is channels-first (a (3, 224, 224) image); any
    other shape is taken as channels-last (lrpflow's own layout). ONNX models declare
    NCHW (``model.layout``, ``explanation.layout``): pass it to be explicit.
    """
    a = to_numpy(a)
    order = _check_layout(layout)
    if a.ndim not in (3, 4):
        return a
    axis = a.ndim - 3  # the channel axis of a channels-first sample (0) or batch (1)
    if order == "first" or (order is None and a.shape[-1] > 4 and a.shape[axis] <= 4):
        return numpy.moveaxis(a, axis, -1)
    return a


def _as_map(a: Any, shape: Sequence[int], what: str, reduce: str = "sum", layout: str | None = None) -> numpy.ndarray:
    """One sample as an (H, W) map: reshape by ``shape``, drop unit axes, reduce a channel axis.

    Without ``shape``: unit axes are dropped (the toolbox's (1, 784) or (1, 32, 32, 1)) and
    a vector is made square. Then (H, W) is kept and (H, W, C) with C <= 4 is summed
    (or averaged, ``reduce="mean"``) over C.
    """
    a = to_numpy(a)
    if len(shape) >= 2:
        a = vec2im(a, shape)  # the given shape is kept, unit axes included
        a = channels_last(a, layout, what)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
    else:
        if a.ndim == 4 and a.shape[0] == 1:  # one sample with its batch axis
            a = a[0]
        if a.ndim == 3:
            a = channels_last(a, layout, what)
        a = numpy.squeeze(a)
        if a.ndim <= 1:
            a = vec2im(a, ())
    if a.ndim == 3 and a.shape[-1] <= 4:
        a = a.sum(axis=-1) if reduce == "sum" else a.mean(axis=-1)
    elif a.ndim != 2:
        raise DataFormatError(
            f"{what}: expected one sample shaped (H, W), (H, W, C), (C, H, W) (layout='NCHW') or a square "
            f"vector, got shape {a.shape}"
        )
    return a


# --- colour -------------------------------------------------------------------


def to_uint8(rgb: Any) -> numpy.ndarray:
    """Float RGB in [0, 1] → uint8 (``round(255·clip(x, 0, 1))``); uint8 input is returned as is.

    Parameters
    ----------
    rgb : array_like
        Float image with values in [0, 1] (clipped) or a uint8 image.

    Returns
    -------
    numpy.ndarray
        A new uint8 array (or ``rgb`` itself if it already is uint8).
    """
    rgb = to_numpy(rgb)
    if rgb.dtype == numpy.uint8:
        return rgb
    rgb = numpy.asarray(rgb, dtype=numpy.float64)
    _check_finite(rgb, "image")
    return numpy.rint(numpy.clip(rgb, 0.0, 1.0) * 255.0).astype(numpy.uint8)


def image_to_unit(image: Any, image_range: tuple[float, float] | None = None) -> numpy.ndarray:
    """An input image as float64 in [0, 1] for display (a new host array).

    Parameters
    ----------
    image : array_like
        Any image (numpy or cupy).
    image_range : (float, float), optional
        The values that map to 0 and 1 (e.g. ``(-1, 1)`` for inputs scaled like the
        toolbox's MNIST, ``(0, 255)``). Default: (0, 255) for integer images; (0, 1) for
        float images within [0, 1]; otherwise the image's own minimum and maximum.

    Returns
    -------
    numpy.ndarray
        ``clip((image - lo) / (hi - lo), 0, 1)``; a constant image gives zeros.
    """
    image = to_numpy(image)
    if image_range is None:
        if numpy.issubdtype(image.dtype, numpy.integer):
            lo, hi = 0.0, 255.0
        else:
            image = numpy.asarray(image, dtype=numpy.float64)
            _check_finite(image, "image")
            within = image.size == 0 or (image.min() >= 0 and image.max() <= 1)
            lo, hi = (0.0, 1.0) if within else (float(image.min()), float(image.max()))
    else:
        lo, hi = (float(v) for v in image_range)
    image = numpy.asarray(image, dtype=numpy.float64)
    _check_finite(image, "image")
    if hi <= lo:
        return numpy.zeros_like(image)
    return numpy.clip((image - lo) / (hi - lo), 0.0, 1.0)


def digit_to_rgb(
    X: Any, scaling: int = 3, shape: Sequence[int] = (), cmap: Any = "binary", *,
    vmin: float = 0.0, vmax: float = 1.0, layout: str | None = None,
) -> numpy.ndarray:
    """An intensity image (e.g. an MNIST digit) as an enlarged RGB image (toolbox ``digit_to_rgb``).

    Parameters
    ----------
    X : array_like
        One sample, a square vector or (H, W) (or (H, W, C), averaged over C; unit axes are dropped).
    scaling : int
        Pixel replication factor.
    shape : sequence of int, optional
        Shape to reshape ``X`` to; square if not given.
    cmap : str or callable
        Colormap (any name :func:`~lrpflow.render.get_colormap` knows); default
        matplotlib's ``binary`` (0 white, 1 black), as in the toolbox.
    vmin, vmax : float
        The values drawn at the two ends of the colormap (values beyond are clipped).
        The defaults (0, 1) are the toolbox's: it passed ``X`` to the colormap as is,
        so inputs in [-1, 1] must be passed with ``vmin=-1`` (or shifted to [0, 1] first).
    layout : str, optional
        ``"NHWC"`` or ``"NCHW"`` (the model's ``layout``); None: see :func:`channels_last`.

    Returns
    -------
    numpy.ndarray
        Float RGB in [0, 1], shape (scaling·H, scaling·W, 3).

    Notes
    -----
    The colormap receives :math:`t = 2 (X - v_{min}) / (v_{max} - v_{min}) - 1`, so a
    matplotlib colormap sees :math:`u = (X - v_{min}) / (v_{max} - v_{min})`.
    """
    if not vmax > vmin:
        raise ConfigError(f"digit_to_rgb: vmax ({vmax}) must be greater than vmin ({vmin})")
    colormap = get_colormap(cmap)
    image = _as_map(X, shape, "digit_to_rgb", reduce="mean", layout=layout)
    image = numpy.asarray(image, dtype=numpy.float64)
    _check_finite(image, "digit_to_rgb input")
    u = (image - vmin) / (vmax - vmin)
    rgb = colormap.unit(u) if hasattr(colormap, "unit") else colormap(2.0 * u - 1.0)
    return enlarge_image(numpy.asarray(rgb, dtype=numpy.float64), scaling)


def outline(X: Any, scaling: int = 3, shape: Sequence[int] = (), sigma: float = 2,
            layout: str | None = None) -> numpy.ndarray:
    """The Canny edges of an input, enlarged like the heatmap: a boolean (scaling·H, scaling·W) mask.

    Parameters
    ----------
    X : array_like
        The input sample (vector, (H, W), or (H, W, C): channels are averaged to gray).
    scaling, shape, layout
        As in :func:`hm_to_rgb`.
    sigma : float
        Gaussian width of :func:`skimage.feature.canny`.

    Notes
    -----
    As in the toolbox, the edges are computed on the *enlarged* image,
    ``canny(enlarge_image(X, scaling), sigma=sigma)``, with skimage's default
    thresholds (0.1 and 0.2 for float images).
    """
    from skimage.feature import canny

    x = _as_map(X, shape, "outline", reduce="mean", layout=layout)  # a natural image becomes gray
    x = numpy.asarray(x, dtype=numpy.float64)
    _check_finite(x, "outline input")
    return canny(enlarge_image(x, scaling), sigma=sigma)


def hm_to_rgb(
    R: Any, X: Any = None, scaling: int = 3, shape: Sequence[int] = (), sigma: float = 2,
    cmap: Any = DEFAULT_CMAP, normalize: bool = True, layout: str | None = None,
) -> numpy.ndarray:
    """A relevance map as an enlarged RGB heatmap, optionally with the black outline of the input.

    The toolbox's ``hm_to_rgb`` with its parameters, on numpy or cupy input.

    Parameters
    ----------
    R : array_like
        Relevance of one sample: a square vector, (H, W), or (H, W, C) for natural
        images (summed over the channels); unit axes such as the toolbox's batch axis
        (1, 784) or (1, 32, 32, 1) are dropped.
    X : array_like, optional
        The input the heatmap explains; its Canny edges are drawn in black on top.
        Must give a map of the same (H, W) as ``R``.
    scaling : int
        Pixel replication factor: the image is (scaling·H, scaling·W, 3).
    shape : sequence of int, optional
        Shape to reshape ``R`` and ``X`` to; square if not given.
    sigma : float
        Gaussian width of the Canny edge detector.
    cmap : str or callable
        Colormap: a registered name (``"gray_red"`` or the toolbox's ``"gray-red"``, ...),
        ``"toolbox:gray-red2"`` (and the other four) for the toolbox's own pictures pixel
        for pixel (raw R, see :mod:`lrpflow.render.toolbox_colormaps`),
        any matplotlib colormap name (``"jet"``, the toolbox's default), a matplotlib
        ``Colormap`` or a callable on [-1, 1]. Default: :data:`DEFAULT_CMAP`, a
        symmetric diverging blue-white-red map.
    normalize : bool
        Divide ``R`` by max |R| first (an all-zero map stays zero). With ``False``, ``R``
        must already be in [-1, 1] (values beyond are clipped).
    layout : str, optional
        Layout of ``R`` and ``X``: ``"NHWC"`` ((H, W, C) samples) or ``"NCHW"`` ((C, H, W)
        samples, ONNX models: pass ``model.layout`` or ``explanation.layout``). None:
        channels-first only where the shape says so unambiguously (:func:`channels_last`).

    Returns
    -------
    numpy.ndarray
        Float64 RGB in [0, 1], shape (scaling·H, scaling·W, 3). ``R`` and ``X`` are
        not modified.

    Raises
    ------
    DataFormatError
        If ``R`` contains NaN/Inf or ``X`` has another size than ``R`` (the toolbox
        printed a warning and skipped the outline).

    Notes
    -----
    .. math:: \\mathrm{rgb} = \\mathrm{cmap}(R / \\max|R|) \\odot (1 - \\mathrm{canny}(X))

    For matplotlib colormaps ``cmap`` looks up :math:`(R / \\max|R| + 1) / 2`, exactly
    as the toolbox did. The toolbox's five colormaps normalised internally by max R;
    here every colormap gets R / max |R|.
    """
    colormap = get_colormap(cmap)
    r = _as_map(R, shape, "hm_to_rgb", layout=layout)
    if getattr(colormap, "raw_relevance", False):  # the toolbox's own maps ("toolbox:gray-red2"): raw R, as it did
        r = numpy.array(r, dtype=numpy.float64)
        _check_finite(r, "relevance")
        rgb = numpy.asarray(colormap(r), dtype=numpy.float64)
    else:
        r = normalize_relevance(r) if normalize else numpy.array(r, dtype=numpy.float64)
        _check_finite(r, "relevance")
        rgb = numpy.asarray(colormap(numpy.clip(r, -1.0, 1.0)), dtype=numpy.float64)
    if rgb.shape != r.shape + (3,):
        raise DataFormatError(f"colormap {cmap!r} returned shape {rgb.shape}; expected {r.shape + (3,)}")
    rgb = enlarge_image(rgb, scaling)
    if X is not None:
        edges = outline(X, scaling, shape, sigma, layout)
        if edges.shape != rgb.shape[:2]:
            raise DataFormatError(
                f"hm_to_rgb: the input X gives an outline of shape {edges.shape} but the heatmap is "
                f"{rgb.shape[:2]} (R.shape={numpy.shape(R)}, X.shape={numpy.shape(X)})"
            )
        rgb[edges] = 0.0
    return rgb


def overlay(
    R: Any, image: Any, *, cmap: Any = DEFAULT_CMAP, alpha: float = 0.5, weighted: bool = False,
    normalize: bool = True, scaling: int = 1, image_range: tuple[float, float] | None = None,
    layout: str | None = None,
) -> numpy.ndarray:
    """A heatmap alpha-blended onto the image it explains.

    Parameters
    ----------
    R : array_like
        Relevance of one sample, (H, W) or (H, W, C) (summed over the channels).
    image : array_like
        The image, (H, W) gray or (H, W, 3) RGB; see :func:`image_to_unit` for how its
        values are brought to [0, 1] (``image_range``).
    cmap : str or callable
        Colormap of the heatmap.
    alpha : float
        Opacity of the heatmap in [0, 1].
    weighted : bool
        If True the opacity of each pixel is ``alpha·|R|/max|R|``, so irrelevant
        regions show the plain image.
    normalize : bool
        As in :func:`hm_to_rgb`.
    scaling : int
        Pixel replication factor.
    image_range : (float, float), optional
        Values of ``image`` drawn as black and white.
    layout : str, optional
        Layout of ``R`` and ``image`` (``"NHWC"``, ``"NCHW"``; None: :func:`channels_last`).

    Returns
    -------
    numpy.ndarray
        Float64 RGB in [0, 1], shape (scaling·H, scaling·W, 3).

    Notes
    -----
    .. math:: \\mathrm{out} = (1 - a)\\,\\mathrm{image} + a\\,\\mathrm{cmap}(R / \\max|R|),
              \\qquad a = \\alpha \\text{ or } a = \\alpha |R| / \\max|R|
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"overlay: alpha must be in [0, 1], got {alpha!r}")
    r = _as_map(R, (), "overlay", layout=layout)
    img = to_numpy(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    img = image_to_unit(channels_last(img, layout, "overlay image"), image_range)
    img = numpy.squeeze(img)
    if img.ndim == 2:
        img = numpy.stack([img] * 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DataFormatError(f"overlay: expected an image of shape (H, W) or (H, W, 3), got {numpy.shape(image)}")
    if img.shape[:2] != r.shape:
        raise DataFormatError(f"overlay: relevance map {r.shape} and image {img.shape[:2]} differ in size")
    t = normalize_relevance(r) if normalize else numpy.clip(numpy.asarray(r, dtype=numpy.float64), -1.0, 1.0)
    heat = numpy.asarray(get_colormap(cmap)(t), dtype=numpy.float64)
    a = float(alpha) * (numpy.abs(t)[..., None] if weighted else 1.0)
    return enlarge_image((1.0 - a) * img + a * heat, scaling)


# --- files --------------------------------------------------------------------


def write_png(image: Any, path: PathLike) -> numpy.ndarray:
    """Write an RGB image (uint8, or float in [0, 1]) as an 8-bit RGB PNG; returns the uint8 image.

    Parent folders are created.
    """
    import skimage.io

    image = to_uint8(image)
    if image.ndim == 2:
        image = numpy.stack([image] * 3, axis=-1)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skimage.io.imsave(str(path), image, check_contrast=False)
    log.debug("wrote %s (%d x %d)", path, image.shape[1], image.shape[0])
    return image


def save_image(rgb_images: Sequence[Any], path: PathLike, gap: int = 2) -> numpy.ndarray:
    """Place images side by side with black gaps and write them to one PNG (toolbox ``save_image``).

    Parameters
    ----------
    rgb_images : sequence of array_like
        RGB images (float in [0, 1] or uint8) of equal height, each (H, W_i, 3)
        (gray (H, W_i) images are drawn in gray).
    path : str or path-like
        Output file (PNG by suffix; parent folders are created).
    gap : int
        Width in pixels of the black columns between neighbouring images.

    Returns
    -------
    numpy.ndarray
        The uint8 image written: (H, ΣW_i + gap·(n-1), 3); two 84×84 heatmaps with
        ``gap=2`` give 84 × 170. The caller's images are not modified.

    Raises
    ------
    DataFormatError
        If there are no images or their heights differ (the toolbox skipped such
        images with a printed warning).
    """
    if isinstance(gap, bool) or not isinstance(gap, (int, numpy.integer)) or gap < 0:
        raise ConfigError(f"save_image: gap must be an integer >= 0, got {gap!r}")
    images = [to_uint8(im) for im in rgb_images]
    if not images:
        raise DataFormatError("save_image: no images given")
    images = [numpy.stack([im] * 3, axis=-1) if im.ndim == 2 else im for im in images]
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[-1] != 3:
            raise DataFormatError(f"save_image: image {i} has shape {im.shape}; expected (H, W, 3)")
        if im.shape[0] != images[0].shape[0]:
            raise DataFormatError(
                f"save_image: image {i} is {im.shape[0]} pixels high but image 0 is {images[0].shape[0]}; "
                "images are placed side by side and must have equal height"
            )
    parts: list[numpy.ndarray] = []
    black = numpy.zeros((images[0].shape[0], int(gap), 3), dtype=numpy.uint8)
    for i, im in enumerate(images):
        if i:
            parts.append(black)
        parts.append(im)
    return write_png(numpy.concatenate(parts, axis=1), path)


# --- registered renderers (uint8 out, optional file) -----------------------------


def _finish(rgb: numpy.ndarray, path: PathLike | None) -> numpy.ndarray:
    return write_png(rgb, path) if path is not None else to_uint8(rgb)


def render_heatmap(
    relevance: Any, x: Any = None, *, scaling: int = 3, shape: Sequence[int] = (), sigma: float = 2,
    cmap: Any = DEFAULT_CMAP, normalize: bool = True, path: PathLike | None = None, layout: str | None = None,
) -> numpy.ndarray:
    """Renderer ``heatmap``: :func:`hm_to_rgb` as uint8 (outline of ``x`` if given), written to ``path`` if given."""
    return _finish(hm_to_rgb(relevance, x, scaling, shape, sigma, cmap, normalize, layout), path)


def render_digit(
    x: Any, *, scaling: int = 3, shape: Sequence[int] = (), cmap: Any = "binary", vmin: float = 0.0,
    vmax: float = 1.0, path: PathLike | None = None, layout: str | None = None,
) -> numpy.ndarray:
    """Renderer ``digit``: :func:`digit_to_rgb` of an input as uint8, written to ``path`` if given."""
    return _finish(digit_to_rgb(x, scaling, shape, cmap, vmin=vmin, vmax=vmax, layout=layout), path)


def render_overlay(
    relevance: Any, image: Any, *, cmap: Any = DEFAULT_CMAP, alpha: float = 0.5, weighted: bool = False,
    normalize: bool = True, scaling: int = 1, image_range: tuple[float, float] | None = None,
    path: PathLike | None = None, layout: str | None = None,
) -> numpy.ndarray:
    """Renderer ``overlay``: :func:`overlay` as uint8, written to ``path`` if given."""
    rgb = overlay(relevance, image, cmap=cmap, alpha=alpha, weighted=weighted, normalize=normalize,
                  scaling=scaling, image_range=image_range, layout=layout)
    return _finish(rgb, path)
