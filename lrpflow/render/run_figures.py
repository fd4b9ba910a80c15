"""The figures of one run: heatmaps per sample, input / heatmap / overlay triples, a labelled grid.

:func:`render_run` is what the pipeline's ``render`` step draws into a run directory:

* ``heatmaps/<row>_<cmap>.png`` — one heatmap per sample and colormap;
* ``samples/<row>_{input,heatmap,overlay}.png`` — the triple a per-sample report page shows;
* ``heatmap_grid.png`` — samples × colormaps, each row labelled with the dataset row (or
  file name) and the predicted and true class (names when known), with a colorbar;
* ``samples.json`` — the index of all of that, which :mod:`lrpflow.report` reads.

Outlines (the input's Canny edges on the heatmap) help on digits and other line
drawings and turn natural images into a dense mesh, so ``outline="auto"`` draws them
only on single-channel inputs whose edges stay sparse: at most
:data:`AUTO_OUTLINE_MAX_EDGES` of the enlarged pixels on average (8×8 digits: 11%, MNIST: 4%; noise or
texture: 17–24%).
"""
from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy

from lrpflow.errors import ConfigError, DataFormatError

__all__ = ["render_run", "class_names", "sample_caption", "wants_outline", "AUTO_OUTLINE_MAX_EDGES"]

#: ``outline="auto"``: no outline when the inputs' Canny edges cover more than this share of the pixels
AUTO_OUTLINE_MAX_EDGES = 0.15


def class_names(spec: Any) -> list[str] | None:
    """Class names from ``data.classes``: a list, or a text file with one name per line.

    A synset file's WordNet id (``n01440764 tench, Tinca tinca``) is dropped, and only the
    first name before a comma is kept (``tench``).
    """
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"data.classes: {str(path)!r} is not a file (expected one class name per line)")
        names = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            head, _, rest = line.partition(" ")
            if rest and len(head) == 9 and head[0] == "n" and head[1:].isdigit():
                line = rest
            names.append(line.split(",")[0].strip())
        return names
    if isinstance(spec, Sequence):
        return [str(s) for s in spec]
    raise ConfigError(f"data.classes must be a list of names or a file path, got {type(spec).__name__}")


def _name(idx: int, names: Sequence[str] | None) -> str:
    if idx is None or idx < 0:
        return "?"
    if names is not None and idx < len(names):
        return f"{idx} {names[idx]}"
    return str(idx)


def sample_caption(row: Any, pred: int | None, true: int | None, names: Sequence[str] | None = None,
                   width: int = 18) -> str:
    """``row 12\\npred 3 three\\ntrue 3 three``: the row label of a grid."""
    head = str(row)
    if len(head) > width:
        head = "…" + head[-(width - 1):]
    lines = [head]
    if pred is not None:
        lines.append("pred " + _name(pred, names))
    if true is not None and true >= 0:
        lines.append("true " + _name(true, names))
    return "\n".join(textwrap.shorten(line, width=width + 6, placeholder="…") for line in lines)


def wants_outline(setting: Any, x: numpy.ndarray, scaling: int = 3, sigma: float = 2.0) -> bool:
    """``outline``: True/False, or ``"auto"``: never on RGB; on single-channel inputs only
    where their mean Canny edge density is at most :data:`AUTO_OUTLINE_MAX_EDGES`."""
    if isinstance(setting, bool):
        return setting
    if setting is None or str(setting).lower() == "auto":
        if x.ndim == 4 and x.shape[-1] >= 3:
            return False
        from lrpflow.render.image import outline

        density = numpy.mean([outline(xi, scaling, (), sigma).mean() for xi in x]) if len(x) else 0.0
        return bool(density <= AUTO_OUTLINE_MAX_EDGES)
    raise ConfigError(f"render.outline must be true, false or auto, got {setting!r}")


def _stem(row: int, source: Any) -> str:
    if source:
        base = os.path.splitext(os.path.basename(str(source)))[0]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:60]
        return f"{row:06d}_{safe}"
    return f"{row:06d}"


def render_run(x: numpy.ndarray, rel: numpy.ndarray, out_dir: str | os.PathLike[str], *,
               settings: Mapping[str, Any] | None = None, rows: Sequence[int] = (), pred: Sequence[int] = (),
               true: Sequence[int] | None = None, names: Sequence[str] | None = None,
               sources: Sequence[Any] | None = None, method: str = "", tokens: Any = None,
               mask: Any = None) -> list[str]:
    """Draw the run's figures (see the module docstring); returns the files written.

    ``x`` and ``rel`` are channels-last batches (N, H, W, C), (N, H, W) or vectors (N, D)
    (square vectors are drawn as images); ``settings`` is the ``render`` config
    (``cmaps``, ``scaling``, ``sigma``, ``outline``, ``grid``, ``overlay``). Token ids
    (integer (N, T)) get token heatmaps instead (:func:`_render_token_run`), with the text of
    every token from ``tokens`` (N, T) when given and padding (``mask`` False) left out.
    """
    from lrpflow import render

    r = dict(settings or {})
    out = Path(out_dir)
    x, rel = numpy.asarray(x), numpy.asarray(rel)
    n = len(x)
    if rel.shape[0] != n:
        raise DataFormatError(f"render: {n} inputs but {rel.shape[0]} relevance maps")
    if rel.ndim == x.ndim + 1:  # several targets per sample: draw the first
        rel = rel[:, 0]
    if x.ndim == 2 and x.dtype.kind in "iu" and rel.shape == x.shape:  # token ids, relevance per token
        return _render_token_run(x, rel, out, r, rows=list(rows) or list(range(n)), pred=list(pred) or [None] * n,
                                 true=list(true) if true is not None else [None] * n, names=names, tokens=tokens,
                                 mask=mask, method=method)
    image_like = x.ndim == 4 or x.ndim == 3 or (x.ndim == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1])
    if not image_like or n == 0:
        return []
    rows = list(rows) or list(range(n))
    true = list(true) if true is not None else [None] * n
    pred = list(pred) or [None] * n
    cmaps = list(r.get("cmaps") or ["blue_white_red"])
    scaling, sigma = int(r.get("scaling", 3)), float(r.get("sigma", 2.0))
    outline = wants_outline(r.get("outline", "auto"), x, scaling, sigma)
    rgb_input = x.ndim == 4 and x.shape[-1] == 3
    heat_dir, sample_dir = out / "heatmaps", out / "samples"
    heat_dir.mkdir(parents=True, exist_ok=True)
    sample_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    index = []
    grid_x = render.grid._input_images(x, n, 1, (), None)  # one value range for every input
    for i in range(n):
        stem = _stem(rows[i], sources[i] if sources is not None else None)
        xi = x[i] if outline else None
        for cmap in cmaps:
            path = heat_dir / f"{stem}_{cmap}.png"
            if r.get("overlay") and rgb_input:
                render.render_overlay(rel[i], x[i], cmap=cmap, path=str(path))
            else:
                render.save_image([render.hm_to_rgb(rel[i], X=xi, scaling=scaling, sigma=sigma, cmap=cmap)],
                                  str(path), gap=0)
            files.append(str(path))
        cmap = cmaps[0]
        big = max(1, 192 // max(grid_x[i].shape[:2]))  # ~200 px on the report page
        triple = {
            "input": render.enlarge_image(grid_x[i], big),
            "heatmap": render.hm_to_rgb(rel[i], X=xi, scaling=big, sigma=sigma, cmap=cmap),
            "overlay": render.overlay(_as_map(rel[i], x[i]), grid_x[i], cmap=cmap, alpha=0.6, weighted=True,
                                      scaling=big, image_range=(0.0, 1.0)),
        }
        entry = _sample_entry(rows[i], stem, None if sources is None else sources[i], pred[i], true[i], names, rel[i])
        for kind, img in triple.items():
            path = sample_dir / f"{stem}_{kind}.png"
            render.save_image([img], str(path), gap=0)
            entry[kind] = os.path.relpath(path, out)
            files.append(str(path))
        index.append(entry)
    if r.get("grid", True):
        grid = out / "heatmap_grid.png"
        labels = [sample_caption(e["source"] and os.path.basename(e["source"]) or f"row {e['row']}", e["pred"],
                                 e["true"], names) for e in index]
        if r.get("overlay") and rgb_input:
            cells = [[render.overlay(_as_map(rel[i], x[i]), grid_x[i], cmap=c, alpha=0.6, weighted=True,
                                     image_range=(0.0, 1.0))
                      for c in cmaps] for i in range(n)]
            cells = [[grid_x[i]] + row for i, row in enumerate(cells)]
            render.render_grid(cells, row_labels=labels, col_labels=["input"] + cmaps, title=method or None,
                               path=str(grid), colorbar=[None, *cmaps])
        else:
            render.colormap_grid(rel, x, cmaps=cmaps, title=method or None, row_labels=labels, outline=outline,
                                 path=str(grid), colorbar=True)
        files.append(str(grid))
    (out / "samples.json").write_text(json.dumps({"method": method, "cmap": cmaps[0], "outline": outline,
                                                  "samples": index}, indent=1))
    return files


def _sample_entry(row: Any, stem: str, source: Any, pred: Any, true: Any, names: Sequence[str] | None,
                  rel: numpy.ndarray) -> dict[str, Any]:
    """One sample of ``samples.json``: its row, file, predicted and true class (with names), ΣR and max|R|."""
    return {"row": int(row), "name": stem, "source": None if source is None else str(source),
            "pred": None if pred is None else int(pred), "true": None if true is None else int(true),
            "pred_name": None if pred is None else _name(int(pred), names),
            "true_name": None if true is None or true < 0 else _name(int(true), names),
            "relevance_sum": float(numpy.sum(rel)), "relevance_absmax": float(numpy.max(numpy.abs(rel)))}


def _render_token_run(ids: numpy.ndarray, rel: numpy.ndarray, out: Path, r: Mapping[str, Any], *, rows: list[int],
                      pred: list[Any], true: list[Any], names: Sequence[str] | None, tokens: Any, mask: Any,
                      method: str) -> list[str]:
    """Token heatmaps of a text run: ``heatmaps/<row>_tokens.png`` and ``.html`` per sample (the first colormap)."""
    from lrpflow.render.tokens import render_tokens, tokens_html

    cmap = list(r.get("cmaps") or ["blue_white_red"])[0]
    heat_dir = out / "heatmaps"
    heat_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    index = []
    for i in range(len(ids)):
        real = numpy.ones(ids.shape[1], dtype=bool) if mask is None else numpy.asarray(mask[i], dtype=bool)
        text = [str(t) for t in numpy.asarray(tokens[i])[real]] if tokens is not None \
            else [str(int(t)) for t in ids[i][real]]
        values = rel[i][real]
        stem = _stem(rows[i], None)
        png, page = heat_dir / f"{stem}_tokens.png", heat_dir / f"{stem}_tokens.html"
        render_tokens(values, text, cmap=cmap, path=str(png))
        snippet = tokens_html(values, text, cmap=cmap)
        page.write_text(f"<!DOCTYPE html><meta charset='utf-8'><title>row {rows[i]}</title>{snippet}\n",
                        encoding="utf-8")
        files += [str(png), str(page)]
        index.append({**_sample_entry(rows[i], stem, None, pred[i], true[i], names, values), "kind": "tokens",
                      "heatmap": os.path.relpath(png, out), "tokens_html": snippet})
    (out / "samples.json").write_text(json.dumps({"method": method, "cmap": cmap, "outline": False,
                                                  "samples": index}, indent=1))
    return files


def _as_map(r: numpy.ndarray, x: numpy.ndarray) -> numpy.ndarray:
    """A relevance sample as an (H, W[, C]) map matching its input's image."""
    if r.ndim == 1:
        side = math.isqrt(r.size)
        return r.reshape(side, side)
    return r

