"""Matplotlib without global state: a Figure on its own Agg canvas, rendered to uint8 RGB."""
from __future__ import annotations

from typing import Any

import numpy


def new_figure(width: float, height: float, dpi: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` × ``height`` inches with an Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Any) -> numpy.ndarray:
    """Draw a figure and return its pixels as uint8 RGB, (round(h·dpi), round(w·dpi), 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return numpy.array(canvas.buffer_rgba(), dtype=numpy.uint8)[..., :3]
