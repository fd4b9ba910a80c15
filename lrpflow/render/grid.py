"""Comparison grids: rows are samples, columns are rules, parameters or colormaps; one PNG.

This is what a sweep shows a person: the same samples explained by every point of the
sweep side by side (like the LRP Toolbox demo's samples × colormaps figure). Drawn
with a matplotlib ``Figure`` on an Agg canvas (no pyplot, safe headless and in threads).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError, DataFormatError
from lrpflow.render._figure import figure_to_rgb, new_figure
from lrpflow.render.colormaps import DEFAULT_CMAP
from lrpflow.render.image import (
    PathLike, channels_last, digit_to_rgb, enlarge_image, hm_to_rgb, image_to_unit, to_uint8, write_png,
)

__all__ = ["grid_figure", "render_grid", "heatmap_grid", "colormap_grid", "column_title", "COMPARISON_CMAPS"]

#: Colormaps :func:`colormap_grid` compares by default: the toolbox's five, the default, jet.
COMPARISON_CMAPS: tuple[str, ...] = (
    "gray_red", "gray_red2", "black_green", "black_firered", "blue_black_yellow", "blue_white_red", "jet",
)

# layout in inches
_GAP = 0.06
_MARGIN = 0.08
_LABEL_W = 0.9
_COL_H = 0.3
_TITLE_H = 0.42
_BAR_H = 0.42  # a colorbar strip under the grid, with its tick labels


def column_title(overrides: Sequence[str] | str, width: int = 16) -> str:
    """A readable column title from ``key=value`` overrides: numbers rounded, long lines wrapped.

    ``["lrp.epsilon=0.0031622776601683794", "lrp=epsilon"]`` → ``"epsilon=0.00316\nlrp=epsilon"``
    (only the last part of a dotted key is kept).
    """
    import textwrap

    parts = overrides.split() if isinstance(overrides, str) else list(overrides)
    lines = []
    for part in parts:
        key, sep, value = str(part).partition("=")
        if sep:
            key = key.split(".")[-1] if "." in key else key
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if not value.strip().lstrip("-").isdigit():
                    value = f"{number:.3g}"
            part = f"{key}={value}"
        lines.extend(textwrap.wrap(part, width=width, break_on_hyphens=False) or [part])
    return "\n".join(lines)


def _wrap(label: str, cell_size: float, fontsize: float) -> str:
    """Wrap a label to the cell width (about 0.6·fontsize points per character)."""
    import textwrap

    chars = max(6, int(cell_size * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in str(label).split("\n"))


def _colorbar(fig: Any, cmap: Any, box: tuple[float, float, float, float], fontsize: float) -> None:
    """A horizontal colorbar of ``cmap`` over [-1, 1] (R / max|R|) in ``box`` (figure fractions)."""
    from lrpflow.render.colormaps import get_colormap

    t = numpy.linspace(-1.0, 1.0, 256)
    rgb = numpy.asarray(get_colormap(cmap)(t[None, :]), dtype=numpy.float64)
    ax = fig.add_axes(box)
    ax.imshow(numpy.clip(rgb, 0, 1), aspect="auto", extent=(-1, 1, 0, 1), interpolation="nearest")
    ax.set_yticks([])
    ax.set_xticks([-1, 0, 1])
    ax.set_xticklabels(["−1", "0", "+1"], fontsize=max(6.0, fontsize - 2))
    ax.tick_params(length=2, pad=1)


def grid_figure(
    images: Sequence[Sequence[Any]], *, row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None, title: str | None = None, cell_size: float = 1.4, dpi: float = 100,
    colorbars: Sequence[Any] | None = None,
) -> Any:
    """A figure showing ``images[row][col]`` in a grid with row and column labels and a title.

    Parameters
    ----------
    images : sequence of sequences of array_like
        Rows of RGB images (float in [0, 1] or uint8; gray (H, W) allowed); ``None``
        leaves a cell empty. Rows may be shorter than the longest one.
    row_labels, col_labels : sequence of str, optional
        Text left of each row and above each column.
    title : str, optional
        Title above the grid.
    cell_size : float
        Width and height of a cell in inches (images keep their aspect ratio, pixels
        are drawn without interpolation).
    dpi : float
        Pixels per inch.
    colorbars : sequence, optional
        One colormap (or None) per column: a colorbar of the relevance scale
        (−max|R| … +max|R|, each heatmap normalised on its own) under that column.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas; its size is fixed by the grid (no tight bounding box), so
        the PNG of an R × C grid with labels and title is
        ``dpi·(0.9 + C·cell + (C−1)·0.06 + 0.16)`` wide and
        ``dpi·(0.42 + 0.3 + R·cell + (R−1)·0.06 + 0.16)`` high (rounded).
    """
    rows = [list(r) for r in images]
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise DataFormatError("grid: no images given")
    if cell_size <= 0 or dpi <= 0:
        raise ConfigError(f"grid: cell_size and dpi must be positive, got {cell_size!r}, {dpi!r}")
    for labels, n, what in ((row_labels, n_rows, "row_labels"), (col_labels, n_cols, "col_labels")):
        if labels is not None and len(labels) != n:
            raise ConfigError(f"grid: {what} has {len(labels)} entries for {n} {what[:3]}s")
    if colorbars is not None and len(colorbars) != n_cols:
        raise ConfigError(f"grid: colorbars has {len(colorbars)} entries for {n_cols} columns")
    fontsize = max(6.0, min(11.0, 6.0 * cell_size))
    label_w = _LABEL_W
    if row_labels is not None:  # wide enough for the longest line of a row label
        longest = max((len(line) for lab in row_labels for line in str(lab).split("\n")), default=0)
        label_w = max(_LABEL_W, longest * 0.6 * fontsize / 72 + 0.1)
    col_h = _COL_H
    if col_labels is not None:
        col_labels = [_wrap(c, cell_size, fontsize) for c in col_labels]
        lines = max(str(c).count("\n") + 1 for c in col_labels)
        col_h = max(_COL_H, lines * 1.25 * fontsize / 72 + 0.08)
    bar_h = _BAR_H if colorbars is not None and any(c is not None for c in colorbars) else 0.0
    left = _MARGIN + (label_w if row_labels is not None else 0.0)
    top = _MARGIN + (col_h if col_labels is not None else 0.0) + (_TITLE_H if title else 0.0)
    width = left + n_cols * cell_size + (n_cols - 1) * _GAP + _MARGIN
    height = top + n_rows * cell_size + (n_rows - 1) * _GAP + _MARGIN + bar_h
    fig = new_figure(width, height, dpi)
    for i, row in enumerate(rows):
        y0 = height - top - (i + 1) * cell_size - i * _GAP  # bottom edge of the row, in inches
        for j, img in enumerate(row):
            x0 = left + j * (cell_size + _GAP)
            ax = fig.add_axes((x0 / width, y0 / height, cell_size / width, cell_size / height))
            if img is None:
                ax.set_axis_off()
                continue
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():  # a thin frame, so white heatmaps keep their edge
                spine.set_edgecolor("0.75")
                spine.set_linewidth(0.6)
            rgb = to_uint8(img)
            if rgb.ndim == 2:
                rgb = numpy.stack([rgb] * 3, axis=-1)
            if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
                raise DataFormatError(f"grid: image [{i}][{j}] has shape {rgb.shape}; expected (H, W, 3)")
            ax.imshow(rgb[..., :3], interpolation="nearest")
        if row_labels is not None:
            fig.text((left - _GAP) / width, (y0 + cell_size / 2) / height, str(row_labels[i]),
                     ha="right", va="center", fontsize=fontsize)
    if bar_h:
        for j, cmap in enumerate(colorbars):
            if cmap is None:
                continue
            x0 = left + j * (cell_size + _GAP) + 0.1 * cell_size
            _colorbar(fig, cmap, (x0 / width, (_MARGIN + 0.2) / height, 0.8 * cell_size / width, 0.12 / height),
                      fontsize)
        if row_labels is not None:
            fig.text((left - _GAP) / width, (_MARGIN + 0.26) / height, "R / max|R|", ha="right", va="center",
                     fontsize=max(5.0, fontsize - 2))
    if col_labels is not None:
        y = (height - _MARGIN - (_TITLE_H if title else 0.0) - col_h / 2) / height
        for j, label in enumerate(col_labels):
            x = (left + j * (cell_size + _GAP) + cell_size / 2) / width
            fig.text(x, y, str(label), ha="center", va="center", fontsize=fontsize)
    if title:
        fig.text(0.5, (height - _MARGIN - _TITLE_H / 2) / height, title, ha="center", va="center",
                 fontsize=fontsize + 2, weight="bold")
    return fig


def render_grid(
    images: Sequence[Sequence[Any]], *, row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None, title: str | None = None, cell_size: float = 1.4,
    dpi: float = 100, path: PathLike | None = None, colorbar: Any = None,
) -> numpy.ndarray:
    """:func:`grid_figure` as a uint8 RGB image, written as PNG to ``path`` if given.

    ``colorbar``: a colormap drawn as the relevance scale under every column but the first
    (the inputs), or a sequence of one colormap (or None) per column.
    """
    rows = [list(r) for r in images]
    if colorbar is not None and (isinstance(colorbar, str) or callable(colorbar)):
        n_cols = max((len(r) for r in rows), default=0)
        colorbar = [None] + [colorbar] * (n_cols - 1)
    fig = grid_figure(rows, row_labels=row_labels, col_labels=col_labels, title=title,
                      cell_size=cell_size, dpi=dpi, colorbars=colorbar)
    rgb = figure_to_rgb(fig)
    return write_png(rgb, path) if path is not None else rgb


def _samples(a: Any, what: str, layout: str | None = None) -> list[Any]:
    """A batch (N, ...) or a list of samples as a list of host arrays, images channels-last."""
    if isinstance(a, (list, tuple)):
        return [channels_last(s, layout, what) for s in a]
    a = to_numpy(a)
    if a.ndim < 2:
        raise DataFormatError(f"{what}: expected a batch of samples (N, ...), got shape {a.shape}")
    return [channels_last(s, layout, what) for s in a]


def _input_images(x: Any, n: int, scaling: int, shape: Sequence[int], image_range: tuple[float, float] | None,
                  layout: str | None = None) -> list:
    xs = _samples(x, "grid input x", layout)
    if len(xs) != n:
        raise DataFormatError(f"grid: x has {len(xs)} samples but the relevance has {n}")
    if image_range is None:  # one range for all samples, chosen as image_to_unit would choose it
        flat = numpy.concatenate([numpy.ravel(s) for s in xs])
        if numpy.issubdtype(flat.dtype, numpy.integer):
            image_range = (0.0, 255.0)
        elif flat.size and (flat.min() < 0 or flat.max() > 1):
            image_range = (float(flat.min()), float(flat.max()))
        else:
            image_range = (0.0, 1.0)
    if image_range[1] <= image_range[0]:  # constant inputs: any non-empty range draws them
        image_range = (image_range[0], image_range[0] + 1.0)
    out = []
    for s in xs:
        sq = numpy.squeeze(s)
        if len(shape) < 2 and sq.ndim == 3 and sq.shape[-1] in (3, 4):
            out.append(enlarge_image(image_to_unit(sq[..., :3], image_range), scaling))
        else:
            out.append(digit_to_rgb(s, scaling, shape, "binary", vmin=image_range[0], vmax=image_range[1]))
    return out


def heatmap_grid(
    relevances: Mapping[str, Any], x: Any = None, *, cmap: Any = DEFAULT_CMAP, scaling: int = 3,
    shape: Sequence[int] = (), sigma: float = 2, normalize: bool = True, outline: bool = True,
    input_label: str = "input", image_range: tuple[float, float] | None = None,
    row_labels: Sequence[str] | None = None, title: str | None = None, cell_size: float = 1.4,
    dpi: float = 100, path: PathLike | None = None, layout: str | None = None, colorbar: bool = False,
) -> numpy.ndarray:
    """Samples × rules (or parameter values): one heatmap per cell, one PNG.

    Parameters
    ----------
    relevances : mapping of str to array_like
        Column label (e.g. ``"epsilon=0.01"``) → relevance of all samples, (N, ...)
        each (numpy or cupy), in column order.
    x : array_like, optional
        The inputs (N, ...): shown in a first column (``input_label``) and, with
        ``outline``, drawn as the black Canny outline on each heatmap.
    cmap, scaling, shape, sigma, normalize
        As in :func:`~lrpflow.render.hm_to_rgb`; every heatmap is normalised on its own.
    image_range : (float, float), optional
        Values of ``x`` drawn as white and black (digits) or black and white (RGB);
        default chosen from the data (see :func:`~lrpflow.render.image_to_unit`).
    row_labels : sequence of str, optional
        Default ``"sample 0"``, ``"sample 1"``, ...
    title : str, optional
        Title of the figure.
    cell_size, dpi, path
        As in :func:`render_grid`.
    layout : str, optional
        Layout of the relevance and ``x``: ``"NHWC"`` or ``"NCHW"`` (an ONNX model's
        ``layout``); None: see :func:`~lrpflow.render.image.channels_last`.

    Returns
    -------
    numpy.ndarray
        The grid as uint8 RGB (written as PNG to ``path`` if given).
    """
    if not relevances:
        raise DataFormatError("heatmap_grid: no relevance given")
    columns = {str(k): _samples(v, f"heatmap_grid column {k!r}", layout) for k, v in relevances.items()}
    n = len(next(iter(columns.values())))
    for k, v in columns.items():
        if len(v) != n:
            raise DataFormatError(f"heatmap_grid: column {k!r} has {len(v)} samples, the first column {n}")
    return _samples_grid(
        n, lambda i, xi: [hm_to_rgb(col[i], xi, scaling, shape, sigma, cmap, normalize) for col in columns.values()],
        list(columns), x, scaling, shape, outline, input_label, image_range, row_labels, title, cell_size, dpi, path,
        layout, [cmap] * len(columns) if colorbar else None)


def colormap_grid(
    relevance: Any, x: Any = None, *, cmaps: Sequence[Any] = COMPARISON_CMAPS, scaling: int = 3,
    shape: Sequence[int] = (), sigma: float = 2, normalize: bool = True, outline: bool = True,
    input_label: str = "input", image_range: tuple[float, float] | None = None,
    row_labels: Sequence[str] | None = None, title: str | None = None, cell_size: float = 1.4,
    dpi: float = 100, path: PathLike | None = None, layout: str | None = None, colorbar: bool = False,
) -> numpy.ndarray:
    """Samples × colormaps: the same heatmaps in every colormap (the toolbox demo's figure).

    Parameters
    ----------
    relevance : array_like
        Relevance of all samples, (N, ...).
    cmaps : sequence of str or callable
        The colormaps, one column each (default :data:`COMPARISON_CMAPS`).
    x, scaling, shape, sigma, normalize, outline, input_label, image_range, row_labels, title, cell_size, dpi, path, layout
        As in :func:`heatmap_grid`.

    Returns
    -------
    numpy.ndarray
        The grid as uint8 RGB (written as PNG to ``path`` if given).
    """
    rs = _samples(relevance, "colormap_grid relevance", layout)
    n = len(rs)
    names = [c if isinstance(c, str) else getattr(c, "name", getattr(c, "__name__", repr(c))) for c in cmaps]
    return _samples_grid(
        n, lambda i, xi: [hm_to_rgb(rs[i], xi, scaling, shape, sigma, c, normalize) for c in cmaps],
        names, x, scaling, shape, outline, input_label, image_range, row_labels, title, cell_size, dpi, path, layout,
        list(cmaps) if colorbar else None)


def _samples_grid(n: int, cells: Callable[[int, Any], list[numpy.ndarray]], col_names: list[str], x: Any,
                  scaling: int, shape: Sequence[int], outline: bool, input_label: str,
                  image_range: tuple[float, float] | None, row_labels: Sequence[str] | None, title: str | None,
                  cell_size: float, dpi: float, path: PathLike | None, layout: str | None = None,
                  colorbars: Sequence[Any] | None = None) -> numpy.ndarray:
    """One row per sample: its input image (if ``x``), then ``cells(i, x_i)`` (``x_i`` None without outline)."""
    inputs = _input_images(x, n, scaling, shape, image_range, layout) if x is not None else None
    xs = _samples(x, "grid input x", layout) if x is not None and outline else [None] * n
    rows = [([inputs[i]] if inputs is not None else []) + cells(i, xs[i]) for i in range(n)]
    col_labels = ([input_label] if inputs is not None else []) + col_names
    row_labels = list(row_labels) if row_labels is not None else [f"sample {i}" for i in range(n)]
    if colorbars is not None:
        colorbars = ([None] if inputs is not None else []) + list(colorbars)
    return render_grid(rows, row_labels=row_labels, col_labels=col_labels, title=title, cell_size=cell_size,
                       dpi=dpi, path=path, colorbar=colorbars)
