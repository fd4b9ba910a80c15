"""The end of every run: summary, objective and heatmaps, computed from the finished store.

:func:`finalize_outputs` is the one place where a job's outputs are written once its
store is complete (and where reports built from the store belong); :func:`render_images`
draws the heatmaps of given rows. Reading everything back from the store makes a resumed
run, or the rerun of a complete job, write exactly the files of an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy

from lrpflow.errors import ConfigError, LrpflowError

log = logging.getLogger("lrpflow.pipeline")


def render_images(out: Path, r: Mapping[str, Any], rel: numpy.ndarray, x: numpy.ndarray, rows: Any,
                  method: str, *, pred: Any = (), true: Any = None, sources: Any = None,
                  classes: Any = None, tokens: Any = None, mask: Any = None) -> list[str]:
    """The run's figures of the given rows (:func:`lrpflow.render.run_figures.render_run`): heatmaps
    ``heatmaps/<row>_<cmap>.png`` named by the dataset row (or file) they show, the per-sample triples and the
    labelled ``heatmap_grid.png``. ``rel`` and ``x`` are channels-last (or flat vectors). Returns the files."""
    from lrpflow.render.run_figures import class_names, render_run
    from lrpflow.store.faults import checkpoint

    if not len(rel):
        return []
    try:
        files = render_run(x, rel, out, settings=r, rows=[int(v) for v in rows], pred=list(pred), true=true,
                           names=class_names(classes), sources=sources, method=method, tokens=tokens, mask=mask)
    except OSError as err:
        raise LrpflowError(f"cannot write the heatmaps into {out}: {err.strerror or err}"
                           f"{' (' + err.filename + ')' if getattr(err, 'filename', None) else ''}") from err
    for path in files:
        checkpoint("render", path)
    return files


class RenderJob:
    """The figures of the run's first rows, drawn on a background thread while later batches are explained.

    It is given exactly what the finished store will hold for those rows (relevance in the store's dtype,
    float64 logits, labels with −1 for none, source files), so its files equal what
    :func:`finalize_outputs` would draw from the store; ``finalize_outputs`` uses them only when the store's
    first rows are these rows (a run resumed past them renders from the store instead).
    """

    def __init__(self, out: Path, r: Mapping[str, Any], shown: Mapping[str, numpy.ndarray], x: numpy.ndarray,
                 cfg: Mapping[str, Any], model_layout: str, method: str, relevance_dtype: str) -> None:
        self.rows = [int(i) for i in shown["index"]]
        self.relevance_dtype = relevance_dtype
        self._files: list[str] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(out, r, shown, cfg, None, model_layout, method, x),
                                        name="lrpflow-render", daemon=True)
        self._thread.start()

    def _run(self, *args: Any) -> None:
        try:
            self._files = _render_from_store(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the pipeline's thread by result()
            self._error = err

    def result(self) -> list[str]:
        """Wait for the writer; its files, or its error re-raised in the caller's thread."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._files


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
    from lrpflow.steps import _get, _plain
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
            fields = ["relevance", "index", "logits"] + [k for k in ("label", "source", "mask", "tokens")
                                                          if k in store.fields]
            shown = store.read(fields, slice(0, n)) if n else None
            relevance_dtype = store.layout.relevance_dtype
        checkpoint("evaluate")
        job = state.extras.pop("render_job", None) if state is not None else None
        ahead = job.result() if job is not None else []  # joined first: it writes the same file names
        if shown and job is not None and job.rows == [int(i) for i in shown["index"]] \
                and job.relevance_dtype == relevance_dtype:
            images = ahead  # drawn while the batches ran, from the values the store now holds
        else:
            images = _render_from_store(out, r, shown, cfg, state, model_layout, method) if shown else []
        if "render" in names and r.get("enabled", True):
            from lrpflow.curve_store import plot_store_curves

            images += plot_store_curves(store_path, out, label=method or "explanation")
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
            index = [k[0] for k in kept]
            tokens, mask = getattr(state.source, "tokens", None), getattr(state.source, "mask", None)
            images = render_images(out, r, rel, x, index, str(state.extras.get("method", "")),
                                   classes=_get(cfg, "data.classes"), tokens=None if tokens is None else tokens[index],
                                   mask=None if mask is None else mask[index])
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
               "timings": dict(state.timings) if state is not None else {},
               "outputs": outputs, "lrp": cfg.get("lrp"), "model": _get(cfg, "model.name"),
               "data": _get(cfg, "data.name")}
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    log.info("done%s; objective %s", f" in {summary['seconds']:.1f} s" if started is not None else "", objective)
    if cfg.get("report", True):
        from lrpflow.report import write_run_report

        log.info("outputs in %s (report: %s)", out, write_run_report(out))
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
                       state: Any, model_layout: str, method: str, x: numpy.ndarray | None = None) -> list[str]:
    """Heatmaps of stored rows: relevance from the store, the input rows (for outlines) from the data
    (``x``: those rows, already read)."""
    from lrpflow.steps import _get, open_source

    index = numpy.asarray(shown["index"], dtype=numpy.int64)
    rel = shown["relevance"]
    if x is None:
        source = state.source if state is not None and state.source is not None \
            else open_source(dict(cfg.get("data") or {}))
        x = numpy.asarray(source[index])
    if x.ndim == 4 and (_get(cfg, "data.layout") or "NHWC") == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    if rel.ndim == 4 and model_layout == "NCHW":
        rel = rel.transpose(0, 2, 3, 1)
    labels = shown.get("label")
    sources = shown.get("source")
    return render_images(out, r, rel, x, index, method, pred=numpy.asarray(shown["logits"]).argmax(axis=1),
                         true=None if labels is None else [int(v) for v in numpy.asarray(labels)],
                         sources=None if sources is None else [str(v) for v in sources],
                         classes=_get(cfg, "data.classes"), tokens=shown.get("tokens"), mask=shown.get("mask"))
