"""Small inline SVG charts for the HTML report: no matplotlib, vector, written in microseconds.

A report is written at the end of every run, also with ``render=none``; drawing its two
charts (conservation ledger, perturbation curve) with matplotlib cost about a second per
run (import, layout, PNG encoding). These charts are plain SVG markup embedded in the
page, with the numbers as ``<title>`` tooltips.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy

#: plot area inside the SVG canvas, in px: left, top, right, bottom margins
_MARGIN = (56, 28, 16, 86)
_BLUE, _ORANGE, _GREY = "#1f5fa8", "#d9822b", "#999"


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k)."""
    span = hi - lo if hi > lo else 1.0
    raw = span / max(1, count)
    step = 10.0 ** numpy.floor(numpy.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = numpy.ceil(lo / step) * step
    return [float(round(v / step) * step) + 0.0 for v in numpy.arange(first, hi + step * 0.5, step)]  # no -0


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class _Axes:
    """Maps data coordinates to SVG pixels for one plot area."""

    def __init__(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
        left, top, right, bottom = _MARGIN
        self.x0, self.x1, self.y0, self.y1 = left, width - right, height - bottom, top
        self.xlim, self.ylim = xlim, ylim

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.x0 + (v - lo) / ((hi - lo) or 1.0) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.y0 - (v - lo) / ((hi - lo) or 1.0) * (self.y0 - self.y1)

    def frame(self, ylabel: str) -> list[str]:
        out = []
        for t in _ticks(*self.ylim):
            yy = self.y(t)
            out.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                       f'<text x="{self.x0 - 4}" y="{yy + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')
        out.append(f'<line x1="{self.x0}" x2="{self.x0}" y1="{self.y1}" y2="{self.y0}" stroke="#333"/>')
        mid = (self.y0 + self.y1) / 2
        out.append(f'<text transform="translate(14 {mid:.1f}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
        return out


def _svg(width: int, height: int, title: str, body: list[str], legend: list[tuple[str, str]]) -> str:
    items = "".join(f'<rect x="{_MARGIN[0] + 8 + 230 * i}" y="8" width="10" height="10" fill="{c}"/>'
                    f'<text x="{_MARGIN[0] + 22 + 230 * i}" y="17">{escape(t)}</text>' for i, (c, t) in enumerate(legend))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10"><title>{escape(title)}</title>'
            f'{items}{"".join(body)}</svg>')


def ledger_svg(nodes: Sequence[str], entering: Sequence[float], absorbed: Sequence[float]) -> str:
    """Per node (input → output): bars of the share of R_init absorbed, a line of the share entering."""
    entering = numpy.asarray(entering, dtype=numpy.float64)
    absorbed = numpy.asarray(absorbed, dtype=numpy.float64)
    shown = numpy.concatenate([entering, absorbed, [0.0, 1.0]])
    shown = shown[numpy.isfinite(shown)]
    lo, hi = float(shown.min()), float(shown.max())
    pad = 0.05 * ((hi - lo) or 1.0)
    width, height = max(420, 48 * len(nodes) + 80), 300
    ax = _Axes(width, height, (-0.5, len(nodes) - 0.5), (lo - pad, hi + pad))
    body = ax.frame("share of R_init (mean over samples)")
    body.append(f'<line x1="{ax.x0}" x2="{ax.x1}" y1="{ax.y(1.0):.1f}" y2="{ax.y(1.0):.1f}" stroke="{_GREY}" '
                f'stroke-dasharray="4 3"/>')
    step = (ax.x1 - ax.x0) / max(1, len(nodes))
    points = []
    for i, (name, e, a) in enumerate(zip(nodes, entering, absorbed)):
        cx = ax.x(i)
        if numpy.isfinite(a):
            top, bottom = sorted((ax.y(a), ax.y(0.0)))
            body.append(f'<rect x="{cx - step * 0.3:.1f}" y="{top:.1f}" width="{step * 0.6:.1f}" '
                        f'height="{max(bottom - top, 0.5):.1f}" fill="{_ORANGE}" fill-opacity="0.8">'
                        f'<title>{escape(name)}: absorbed {_fmt(a)}</title></rect>')
        if numpy.isfinite(e):
            points.append((cx, ax.y(e)))
            body.append(f'<circle cx="{cx:.1f}" cy="{ax.y(e):.1f}" r="3" fill="{_BLUE}">'
                        f'<title>{escape(name)}: entering {_fmt(e)}</title></circle>')
        body.append(f'<text transform="translate({cx:.1f} {ax.y0 + 8}) rotate(45)">{escape(name)}</text>')
    if len(points) > 1:
        body.append(f'<polyline fill="none" stroke="{_BLUE}" points="'
                    + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')
    return _svg(width, height, "conservation ledger per layer (input → output)", body,
                [(_ORANGE, "absorbed by bias / ε"), (_BLUE, "entering the node")])


def curve_svg(fractions: Sequence[float], curves: numpy.ndarray, label: str, ylabel: str) -> str:
    """Mean curve over samples (rows of ``curves``) against ``fractions``, with a ± standard-error band."""
    c = numpy.asarray(curves, dtype=numpy.float64)
    x = numpy.asarray(fractions, dtype=numpy.float64)
    mean = c.mean(axis=0)
    sem = c.std(axis=0, ddof=1) / numpy.sqrt(c.shape[0]) if c.shape[0] > 1 else numpy.zeros_like(mean)
    lo, hi = float((mean - sem).min()), float((mean + sem).max())
    pad = 0.05 * ((hi - lo) or 1.0)
    width, height = 480, 300
    ax = _Axes(width, height, (float(x[0]), float(x[-1])), (lo - pad, hi + pad))
    body = ax.frame(ylabel)
    for t in _ticks(float(x[0]), float(x[-1])):
        body.append(f'<text x="{ax.x(t):.1f}" y="{ax.y0 + 14}" text-anchor="middle">{_fmt(t)}</text>')
    body.append(f'<text x="{(ax.x0 + ax.x1) / 2:.1f}" y="{ax.y0 + 34}" text-anchor="middle">'
                f'fraction of regions removed (most relevant first)</text>')
    upper = [f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in zip(x, mean + sem)]
    lower = [f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in zip(x[::-1], (mean - sem)[::-1])]
    body.append(f'<polygon points="{" ".join(upper + lower)}" fill="{_BLUE}" fill-opacity="0.2"/>')
    body.append(f'<polyline fill="none" stroke="{_BLUE}" stroke-width="1.5" points="'
                + " ".join(f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in zip(x, mean)) + '"/>')
    for a, b, s in zip(x, mean, sem):
        body.append(f'<circle cx="{ax.x(a):.1f}" cy="{ax.y(b):.1f}" r="2" fill="{_BLUE}">'
                    f'<title>{_fmt(a)}: {_fmt(b)} ± {_fmt(s)}</title></circle>')
    return _svg(width, height, f"perturbation curve ({c.shape[0]} samples)", body,
                [(_BLUE, f"{label} (mean ± standard error, {c.shape[0]} samples)")])
