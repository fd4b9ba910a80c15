"""The end of every run: summary, objective and heatmaps, computed from the finished store.

:func:`finalize_outputs` is the one place where a job's outputs are written once its
store is complete (and where reports built from the store belong); :func:`render_images`
draws the heatmaps of given rows. Reading everything back from the store makes a resumed
run, or the rerun of a complete job, write exactly the files of an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy

from lrpflow.errors import ConfigError, LrpflowError

log = logging.getLogger("lrpflow.pipeline")


def render_images(out: Path, r: Mapping[str, Any], rel: numpy.ndarray, x: numpy.ndarray, rows: Any,
                  method: str) -> list[str]:
    """Write ``heatmaps/<row>_<cmap>.png`` for every row and colormap, and ``heatmap_grid.png``.

    ``rel`` and ``x`` are channels-last (or flat vectors); ``rows`` are the dataset rows
    they show. Returns the files written.
    """
    if not len(rel):
        return []
    try:
        return _render_images(out, r, rel, x, rows, method)
    except OSError as err:
        raise LrpflowError(f"cannot write the heatmaps into {out}: {err.strerror or err}"
                           f"{' (' + err.filename + ')' if getattr(err, 'filename', None) else ''}") from err


def _render_images(out: Path, r: Mapping[str, Any], rel: numpy.ndarray, x: numpy.ndarray, rows: Any,
                   method: str) -> list[str]:
    from lrpflow import render
    from lrpflow.store.faults import checkpoint

    folder = out / "heatmaps"
    folder.mkdir(parents=True, exist_ok=True)
    cmaps = list(r.get("cmaps") or ["blue_white_red"])
    image_like = x.ndim == 4 or (x.ndim == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1])
    files = []
    for i, row in enumerate(rows):
        for cmap in cmaps:
            path = folder / f"{int(row):06d}_{cmap}.png"
            if r.get("overlay") and x.ndim == 4 and x.shape[-1] == 3:
                render.render_overlay(rel[i], x[i], cmap=cmap, path=str(path))
            elif image_like:
                rgb = render.hm_to_rgb(rel[i], X=x[i] if r.get("outline", True) else None,
                                       scaling=int(r.get("scaling", 3)), sigma=float(r.get("sigma", 2.0)), cmap=cmap)
                render.save_image([rgb], str(path), gap=0)
            else:
                continue
            files.append(str(path))
            checkpoint("render", str(path))
    if r.get("grid", True) and image_like:
        grid = out / "heatmap_grid.png"
        render.colormap_grid(rel, x, cmaps=cmaps, title=method, path=str(grid))
        files.append(str(grid))
    return files


def finalize_outputs(run_dir: str | os.PathLike[str], store_path: str | os.PathLike[str] | None, cfg: Mapping[str, Any],
                     *, state: Any = None, started: float | None = None) -> dict[str, Any]:
    """The end of every run: metric means, objective, heatmaps and ``summary.json``, from the store.

    Everything here is computed from what the finished store holds (its ``metrics/``
    datasets, its first ``render.max_images`` rows), never from the running process, so a
    resumed run, or a rerun of a complete job, writes exactly the outputs of an
    uninterrupted run. Without a store (no ``save`` step) the rows kept by ``evaluate`` and
    ``render`` are used. This is the one place where a run's outputs are finalised; reports
    built from the store belong here.

    Parameters
    ----------
    run_dir : path
        The job's output directory.
    store_path : path or None
        Its finished ``results.h5``.
    cfg : mapping
        The run's (plain) configuration.
    state : State, optional
        The run's state (model path, data source); a bare call opens the data source itself.
    started : float, optional
        ``time.perf_counter()`` at the start of the run, for ``seconds``.

    Returns
    -------
    dict
        The summary written to ``summary.json`` (``objective``, ``metrics``, ``rows``, ...).
    """
    from lrpflow.pipeline import _get, _plain
    from lrpflow.store import StoreReader
    from lrpflow.store.faults import checkpoint

    out = Path(run_dir)
    cfg = _plain(cfg)
    names = list(cfg.get("pipeline") or [])
    outputs = dict(state.outputs) if state is not None else {}
    outputs.pop("metrics", None)
    r = dict(cfg.get("render") or {})
    want_images = int(r.get("max_images", 0)) if "render" in names and r.get("enabled", True) else 0
    rows: list[int] = list(state.rows) if state is not None else []
    if store_path is not None:
        with StoreReader.open(store_path) as store:
            means = {m: _mean(store.read(f"metrics/{m}")[f"metrics/{m}"]) for m in store.metrics}
            stored_rows = store.attrs.get("rows")
            if isinstance(stored_rows, list) and len(stored_rows) == 2:
                rows = [int(v) for v in stored_rows]
            method = str(store.attrs.get("method", ""))
            model_layout = str(store.attrs.get("model_layout", "NHWC"))
            n = min(want_images, len(store))
            shown = store.read(["relevance", "index"], slice(0, n)) if n else None
        checkpoint("evaluate")
        images = _render_from_store(out, r, shown, cfg, state, model_layout, method) if shown else []
    else:
        totals = state.totals if state is not None else {}
        means = {k: (s / c if c else float("nan")) for k, (s, c) in totals.items()}
        checkpoint("evaluate")
        kept = state.extras.get("render_rows", []) if state is not None else []
        images = []
        if want_images and kept:
            x, rel = numpy.stack([k[1] for k in kept]), numpy.stack([k[2] for k in kept])
            layout = str(getattr(state.model, "layout", "NHWC"))
            if layout == "NCHW" and x.ndim == 4:
                x, rel = x.transpose(0, 2, 3, 1), rel.transpose(0, 2, 3, 1)
            images = render_images(out, r, rel, x, [k[0] for k in kept], str(state.extras.get("method", "")))
    if images:
        outputs["images"] = images
    objective = None
    obj_name = _get(cfg, "evaluate.objective")
    if "evaluate" in names and obj_name is not None:
        if obj_name not in means:
            raise ConfigError(f"evaluate.objective {obj_name!r} is not among the computed metrics {sorted(means)}")
        objective = means[obj_name]
    summary = {"objective": objective, "metrics": means, "rows": rows,
               "seconds": time.perf_counter() - started if started is not None else None,
               "outputs": outputs, "lrp": cfg.get("lrp"), "model": _get(cfg, "model.name"),
               "data": _get(cfg, "data.name")}
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    log.info("done%s; objective %s", f" in {summary['seconds']:.1f} s" if started is not None else "", objective)
    return summary


def _mean(values: numpy.ndarray) -> float:
    return float(numpy.mean(values)) if len(values) else float("nan")


def _write_text_atomic(path: Path, text: str) -> None:
    from lrpflow.store.faults import checkpoint

    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        checkpoint("summary", str(tmp))
        os.replace(tmp, path)
    except OSError as err:
        raise LrpflowError(f"cannot write {path}: {err.strerror or err}") from err


def _render_from_store(out: Path, r: Mapping[str, Any], shown: Mapping[str, numpy.ndarray], cfg: Mapping[str, Any],
                       state: Any, model_layout: str, method: str) -> list[str]:
    """Heatmaps of stored rows: relevance from the store, the input rows (for outlines) from the data."""
    from lrpflow.pipeline import _get, open_source

    source = state.source if state is not None and state.source is not None else open_source(dict(cfg.get("data") or {}))
    index = numpy.asarray(shown["index"], dtype=numpy.int64)
    rel = shown["relevance"]
    x = numpy.asarray(source[index])
    if x.ndim == 4 and (_get(cfg, "data.layout") or "NHWC") == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    if rel.ndim == 4 and model_layout == "NCHW":
        rel = rel.transpose(0, 2, 3, 1)
    return render_images(out, r, rel, x, index, method)
