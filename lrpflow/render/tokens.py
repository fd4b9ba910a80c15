"""Token heatmaps: each token on a background coloured by its relevance (a diverging colormap centred at zero).

``render_tokens(relevance, tokens=[...])`` draws a PNG-ready uint8 RGB image with matplotlib;
``tokens_html(relevance, tokens)`` returns an HTML snippet of coloured ``<span>``s. The tokens are
the user's (their tokenizer's strings); lrpflow never downloads a tokenizer. Relevance is scaled by
its largest magnitude (or ``vmax``), so white is zero, red positive and blue negative.
"""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.errors import ConfigError, ShapeError
from lrpflow.render.colormaps import get_colormap

PathLike = str | os.PathLike


def _prepare(relevance: Any, tokens: Sequence[str] | None) -> tuple[numpy.ndarray, list[str]]:
    r = numpy.asarray(relevance, dtype=numpy.float64)
    if r.ndim == 2 and r.shape[0] == 1:
        r = r[0]
    if r.ndim != 1:
        raise ShapeError(f"token heatmaps take one sequence of relevance (T,), got shape {r.shape}; "
                         f"sum over the embedding axis first (explain() does so for token-id inputs)")
    if not numpy.isfinite(r).all():
        raise ShapeError("token relevance contains NaN or Inf")
    names = [f"#{i}" for i in range(r.size)] if tokens is None else [str(t) for t in tokens]
    if len(names) != r.size:
        raise ConfigError(f"tokens=: {len(names)} tokens for {r.size} relevance values")
    return r, names


def token_colors(relevance: Any, cmap: Any = "blue_white_red", vmax: float | None = None) -> numpy.ndarray:
    """RGB in [0, 1] per token: ``cmap(R / max|R|)`` (``vmax`` instead of max|R| if given; zero stays white)."""
    r = numpy.asarray(relevance, dtype=numpy.float64)
    top = float(numpy.abs(r).max()) if vmax is None else float(vmax)
    v = r / top if top > 0 else numpy.zeros_like(r)
    return numpy.asarray(get_colormap(cmap)(numpy.clip(v, -1.0, 1.0)), dtype=numpy.float64)[..., :3]


def tokens_html(relevance: Any, tokens: Sequence[str] | None = None, *, cmap: Any = "blue_white_red",
                vmax: float | None = None) -> str:
    """An HTML snippet: one ``<span>`` per token, background coloured by relevance, the value as its tooltip."""
    r, names = _prepare(relevance, tokens)
    rgb = (token_colors(r, cmap, vmax) * 255).round().astype(int)
    spans = [f'<span style="background-color: rgb({c[0]},{c[1]},{c[2]}); padding: 0 2px; margin: 1px; '
             f'border-radius: 2px" title="{v:.4g}">{html.escape(t)}</span>' for t, v, c in zip(names, r, rgb)]
    return '<div class="lrpflow-tokens" style="font-family: monospace; line-height: 1.8">' + " ".join(spans) + "</div>"


def render_tokens(relevance: Any, tokens: Sequence[str] | None = None, *, cmap: Any = "blue_white_red",
                  vmax: float | None = None, width: int = 60, fontsize: int = 14, colorbar: bool = True,
                  path: PathLike | None = None, html_path: PathLike | None = None) -> numpy.ndarray:
    """Renderer ``tokens``: the tokens wrapped at ``width`` characters per line, each on its relevance colour,
    with a colorbar; uint8 RGB, written to ``path`` (PNG) and the HTML snippet to ``html_path`` if given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    r, names = _prepare(relevance, tokens)
    rgb = token_colors(r, cmap, vmax)
    lines, cur, used = [], [], 0
    for i, t in enumerate(names):
        n = len(t) + 1
        if cur and used + n > width:
            lines.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        lines.append(cur)
    char_w, line_h = 0.62 * fontsize / 72, 1.9 * fontsize / 72  # inches, monospace
    fig_w = max(2.5, (max(sum(len(names[i]) + 1 for i in ln) for ln in lines) + 1) * char_w)
    fig_h = (len(lines) + (2.2 if colorbar else 0.4)) * line_h
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    try:
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, fig_w)
        ax.set_ylim(fig_h, 0)
        ax.axis("off")
        for row, ln in enumerate(lines):
            x = 0.5 * char_w
            for i in ln:
                ax.text(x, (row + 0.7) * line_h, names[i], family="monospace", fontsize=fontsize, va="baseline",
                        bbox={"boxstyle": "square,pad=0.15", "facecolor": rgb[i], "edgecolor": "none"})
                x += (len(names[i]) + 1) * char_w
        if colorbar:
            top = float(numpy.abs(r).max()) if vmax is None else float(vmax)
            cax = fig.add_axes((0.15, 0.95 * line_h / fig_h, 0.7, 0.3 * line_h / fig_h))
            ramp = numpy.linspace(-1, 1, 256)
            cax.imshow(ramp[None], aspect="auto", cmap=ListedColormap(token_colors(ramp, cmap, 1.0)),
                       extent=(-top, top, 0, 1))
            cax.set_yticks([])
            cax.tick_params(labelsize=max(6, fontsize - 5))
        fig.canvas.draw()
        img = numpy.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
    if path is not None:
        from lrpflow.render.image import write_png

        write_png(img, path)
    if html_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(tokens_html(r, names, cmap=cmap, vmax=vmax) + "\n")
    return img
