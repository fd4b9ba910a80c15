"""Rendering: colormaps, heatmaps, digits, overlays, comparison grids and curves.

The LRP Toolbox's rendering API (``vec2im``, ``enlarge_image``, ``digit_to_rgb``,
``hm_to_rgb``, ``save_image``) with its signatures, plus overlays on natural images,
samples × rules/colormaps grids and pixel-flipping / metric curves. Colormaps and
renderers are plugins: this module registers the built-ins through
``lrpflow_register_colormaps`` and ``lrpflow_register_renderers`` like any third-party
plugin, and ``lrpflow-info --kind colormaps`` lists them.

Everything runs on the host: cupy inputs are copied to numpy on entry. Images are
float RGB in [0, 1] (toolbox functions) or uint8 RGB (renderers, PNG files).

Examples
--------
>>> from lrpflow import render                                      # doctest: +SKIP
>>> hm = render.hm_to_rgb(R, X=x, scaling=3, cmap="gray-red2")      # doctest: +SKIP
>>> render.save_image([render.digit_to_rgb(x), hm], "heatmap.png")  # doctest: +SKIP
"""
from __future__ import annotations

from lrpflow.hookspecs import hookimpl
from lrpflow.render.colormaps import (
    BUILTIN_COLORMAPS, DEFAULT_CMAP, Colormap, MatplotlibColormap, black_firered, black_green, blue_black_yellow,
    blue_white_red, colormap_names, get_colormap, gray_red, gray_red2, matplotlib_colormap, normalize_relevance,
)
from lrpflow.render.curves import (
    curve_area, metric_figure, perturbation_figure, plot_metric_curve, plot_perturbation_curves,
)
from lrpflow.render.toolbox_colormaps import toolbox_colormap
from lrpflow.render.grid import COMPARISON_CMAPS, colormap_grid, column_title, grid_figure, heatmap_grid, render_grid
from lrpflow.render.image import (
    channels_last, digit_to_rgb, enlarge_image, hm_to_rgb, image_to_unit, outline, overlay, render_digit, render_heatmap,
    render_overlay, save_image, to_uint8, vec2im, write_png,
)

__all__ = [
    # toolbox API
    "vec2im", "enlarge_image", "digit_to_rgb", "hm_to_rgb", "save_image",
    # images
    "overlay", "outline", "channels_last", "to_uint8", "image_to_unit", "write_png", "render_heatmap", "render_digit",
    "render_overlay",
    # colormaps
    "Colormap", "MatplotlibColormap", "get_colormap", "colormap_names", "matplotlib_colormap",
    "normalize_relevance", "gray_red", "gray_red2", "black_green", "black_firered", "blue_black_yellow",
    "blue_white_red", "BUILTIN_COLORMAPS", "DEFAULT_CMAP",
    # grids and curves
    "grid_figure", "render_grid", "heatmap_grid", "colormap_grid", "column_title", "COMPARISON_CMAPS",
    "perturbation_figure", "plot_perturbation_curves", "metric_figure", "plot_metric_curve", "curve_area",
    "BUILTIN_RENDERERS",
]

from lrpflow.render.tokens import render_tokens, token_colors, tokens_html  # noqa: E402

__all__ += ["render_tokens", "tokens_html", "token_colors"]

#: registry name → renderer; each returns uint8 RGB and writes a PNG when given ``path=``.
BUILTIN_RENDERERS = {
    "heatmap": render_heatmap,
    "digit": render_digit,
    "overlay": render_overlay,
    "grid": heatmap_grid,
    "colormap_grid": colormap_grid,
    "perturbation_curve": plot_perturbation_curves,
    "metric_curve": plot_metric_curve,
    "tokens": render_tokens,
}


@hookimpl
def lrpflow_register_colormaps(registry):  # noqa: ANN001 - typed in the hookspec
    for name, (cmap, aliases) in BUILTIN_COLORMAPS.items():
        registry.add(name, cmap, aliases=aliases)
    # a family: resolver(name) -> colormap or None; get_colormap asks it for names it does not know
    registry.add("matplotlib", matplotlib_colormap, aliases=("mpl",), resolver=True)
    registry.add("toolbox", toolbox_colormap, resolver=True)  # "toolbox:gray-red2": the toolbox's pictures


@hookimpl
def lrpflow_register_renderers(registry):  # noqa: ANN001 - typed in the hookspec
    for name, renderer in BUILTIN_RENDERERS.items():
        registry.add(name, renderer)
