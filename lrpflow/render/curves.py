"""Curves: pixel-flipping / perturbation curves and metric-versus-parameter plots.

Drawn with a matplotlib ``Figure`` on an Agg canvas (headless, no pyplot state).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError, DataFormatError
from lrpflow.render._figure import figure_to_rgb, new_figure
from lrpflow.render.image import PathLike, write_png

__all__ = ["perturbation_figure", "plot_perturbation_curves", "metric_figure", "plot_metric_curve", "curve_area"]

_BANDS = ("sem", "std", None)


def _series(values: Any, what: str) -> numpy.ndarray:
    a = numpy.asarray(to_numpy(values), dtype=numpy.float64)
    if a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise DataFormatError(f"{what}: expected shape (steps,) or (samples, steps), got {a.shape}")
    if not numpy.all(numpy.isfinite(a)):
        raise DataFormatError(f"{what}: contains NaN or infinite values")
    return a


def _mean_band(a: numpy.ndarray, band: str | None) -> tuple[numpy.ndarray, numpy.ndarray | None]:
    if a.ndim == 1:
        return a, None
    mean = a.mean(axis=0)
    if band is None or a.shape[0] < 2:
        return mean, None
    spread = a.std(axis=0, ddof=1)
    if band == "sem":
        spread = spread / numpy.sqrt(a.shape[0])
    return mean, spread


def curve_area(y: Any, steps: Any = None) -> float:
    """Normalised area under a curve (mean over samples first): ∫ y dx / (x_last − x_first).

    Parameters
    ----------
    y : array_like
        (steps,) or (samples, steps).
    steps : array_like, optional
        The x positions; default 0, 1, ..., steps−1.

    Notes
    -----
    Trapezoidal rule; equals the mean curve height, so curves over different step
    grids compare. Lower is better for a most-relevant-first pixel-flipping curve.
    """
    y = _series(y, "curve_area")
    mean = y.mean(axis=0) if y.ndim == 2 else y
    if steps is None:
        x = numpy.arange(mean.size, dtype=numpy.float64)
    else:
        x = numpy.asarray(to_numpy(steps), dtype=numpy.float64)
    if x.shape != mean.shape:
        raise DataFormatError(f"curve_area: {mean.size} values but {x.size} steps")
    if mean.size == 1 or x[-1] == x[0]:
        return float(mean[0])
    area = numpy.sum((mean[1:] + mean[:-1]) / 2.0 * numpy.diff(x))  # trapezoidal rule
    return float(area / (x[-1] - x[0]))


def perturbation_figure(
    curves: Mapping[str, Any], steps: Any = None, *, band: str | None = "sem", show_area: bool = True,
    xlabel: str = "fraction of input perturbed", ylabel: str = "model output", title: str | None = None,
    figsize: tuple[float, float] = (5.0, 3.6), dpi: float = 100,
) -> Any:
    """Pixel-flipping / perturbation curves, one line per method, as a figure.

    Parameters
    ----------
    curves : mapping of str to array_like
        Method label → model output after each perturbation step, (steps,) or
        (samples, steps); with samples the mean is drawn with a shaded band.
    steps : array_like, optional
        x positions (fraction or number of pixels perturbed); default 0 .. steps−1.
    band : {"sem", "std", None}
        Band around the mean: ± standard error, ± standard deviation, or none.
    show_area : bool
        Append the normalised area under the mean curve (:func:`curve_area`) to each label.
    xlabel, ylabel, title : str
        Axis labels and title.
    figsize : (float, float)
        Inches; the PNG is ``figsize · dpi`` pixels.
    dpi : float
        Pixels per inch.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if band not in _BANDS:
        raise ConfigError(f"perturbation curves: band must be one of {_BANDS}, got {band!r}")
    if not curves:
        raise DataFormatError("perturbation curves: no curves given")
    fig = new_figure(figsize[0], figsize[1], dpi)
    ax = fig.add_subplot(1, 1, 1)
    for label, values in curves.items():
        a = _series(values, f"curve {label!r}")
        x = (numpy.arange(a.shape[-1], dtype=numpy.float64) if steps is None
             else numpy.asarray(to_numpy(steps), dtype=numpy.float64))
        if x.shape != (a.shape[-1],):
            raise DataFormatError(f"curve {label!r} has {a.shape[-1]} steps but steps has shape {x.shape}")
        mean, spread = _mean_band(a, band)
        text = f"{label} (area {curve_area(a, x):.3g})" if show_area else str(label)
        (line,) = ax.plot(x, mean, label=text, linewidth=1.6)
        if spread is not None:
            ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def plot_perturbation_curves(curves: Mapping[str, Any], steps: Any = None, *, path: PathLike | None = None,
                             **options: Any) -> numpy.ndarray:
    """Renderer ``perturbation_curve``: :func:`perturbation_figure` as uint8 RGB, written to ``path`` if given."""
    rgb = figure_to_rgb(perturbation_figure(curves, steps, **options))
    return write_png(rgb, path) if path is not None else rgb


def _is_numeric(values: Sequence[Any]) -> bool:
    try:
        numpy.asarray(values, dtype=numpy.float64)
    except (TypeError, ValueError):
        return False
    return True


def metric_figure(
    values: Sequence[Any], metrics: Mapping[str, Any] | Any, *, xlabel: str = "parameter", ylabel: str = "metric",
    title: str | None = None, logx: bool | None = None, band: str | None = "sem",
    figsize: tuple[float, float] = (5.0, 3.6), dpi: float = 100,
) -> Any:
    """A metric (or several) against a parameter of a sweep, as a figure.

    Parameters
    ----------
    values : sequence
        The parameter values (numbers, e.g. ε = 1e-3 … 1) or labels (e.g. rule names,
        drawn at equal spacing).
    metrics : array_like or mapping of str to array_like
        One metric (P,) or (P, samples), or label → such an array for several lines.
        With samples the mean is drawn with error bars (``band``).
    xlabel, ylabel, title : str
        Axis labels and title.
    logx : bool, optional
        Logarithmic x axis; default: when all values are positive numbers spanning at
        least two decades.
    band : {"sem", "std", None}
        Error bars: ± standard error, ± standard deviation, or none.
    figsize, dpi
        As in :func:`perturbation_figure`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if band not in _BANDS:
        raise ConfigError(f"metric plot: band must be one of {_BANDS}, got {band!r}")
    values = list(to_numpy(values)) if not isinstance(values, (list, tuple)) else list(values)
    if not values:
        raise DataFormatError("metric plot: no parameter values given")
    numeric = _is_numeric(values)
    if numeric:
        x = numpy.asarray(values, dtype=numpy.float64)
        if logx is None:
            logx = bool(numpy.all(x > 0) and x.max() / x.min() >= 100)
        elif logx and not numpy.all(x > 0):
            raise ConfigError("metric plot: logx needs positive parameter values")
    else:
        x = numpy.arange(len(values), dtype=numpy.float64)
        logx = False
    series = dict(metrics) if isinstance(metrics, Mapping) else {ylabel: metrics}
    fig = new_figure(figsize[0], figsize[1], dpi)
    ax = fig.add_subplot(1, 1, 1)
    for label, m in series.items():
        a = numpy.asarray(to_numpy(m), dtype=numpy.float64)
        if a.ndim not in (1, 2) or a.shape[0] != x.size:
            raise DataFormatError(
                f"metric {label!r}: expected shape ({x.size},) or ({x.size}, samples), got {a.shape}"
            )
        if not numpy.all(numpy.isfinite(a)):
            raise DataFormatError(f"metric {label!r}: contains NaN or infinite values")
        mean, spread = _mean_band(a.T, band) if a.ndim == 2 else (a, None)
        ax.errorbar(x, mean, yerr=spread, marker="o", markersize=4, capsize=3, linewidth=1.6, label=str(label))
    if logx:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(x)
        slanted = len(values) > 4
        ax.set_xticklabels([str(v) for v in values], rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def plot_metric_curve(values: Sequence[Any], metrics: Mapping[str, Any] | Any, *, path: PathLike | None = None,
                      **options: Any) -> numpy.ndarray:
    """Renderer ``metric_curve``: :func:`metric_figure` as uint8 RGB, written to ``path`` if given."""
    rgb = figure_to_rgb(metric_figure(values, metrics, **options))
    return write_png(rgb, path) if path is not None else rgb
