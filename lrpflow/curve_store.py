"""Perturbation curves of a run: kept in ``results.h5`` and plotted.

The pipeline step ``save_curves`` collects the curves that metrics hand back through
:func:`lrpflow.evaluate.evaluate`'s ``details=`` (pixel flipping's per-sample target
logit after each step) and, after the store is complete, writes them next to the metric:

``metrics/<name>_curve``  (N, L+1) float64, attribute ``fractions`` (L+1,): the fraction
of the regions removed at each step. Rows follow the store's rows; rows written by an
earlier, resumed attempt of the job have no curve (NaN).

It also draws ``perturbation_curves.png`` (the mean curve with its standard error).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy

from lrpflow.hookspecs import hookimpl

log = logging.getLogger("lrpflow.curves")

#: the details key holding a metric's curve
CURVE = "curve"


def curve_dataset(metric: str) -> str:
    """HDF5 path of a metric's curves in a result store."""
    return f"metrics/{metric}_curve"


def write_curves(store_path: str | Path, metric: str, curves: numpy.ndarray, fractions: numpy.ndarray) -> None:
    """Write (or replace) ``metrics/<metric>_curve`` in a complete result store."""
    import h5py

    with h5py.File(store_path, "a") as f:
        name = curve_dataset(metric)
        if name in f:
            del f[name]
        ds = f.create_dataset(name, data=numpy.asarray(curves, dtype=numpy.float64), compression="gzip")
        ds.attrs["fractions"] = numpy.asarray(fractions, dtype=numpy.float64)


def read_curves(store_path: str | Path) -> dict[str, tuple[numpy.ndarray, numpy.ndarray]]:
    """``{metric: (curves (N, L+1), fractions (L+1,))}`` of a result store (empty when none)."""
    import h5py

    out: dict[str, tuple[numpy.ndarray, numpy.ndarray]] = {}
    with h5py.File(store_path, "r") as f:
        group = f.get("metrics")
        if group is None:
            return out
        for key in group:
            if key.endswith("_curve"):
                ds = group[key]
                out[key[: -len("_curve")]] = (ds[()], numpy.asarray(ds.attrs.get("fractions", numpy.arange(ds.shape[1]))))
    return out


class SaveCurves:
    """Step ``save_curves``: store and plot the perturbation curves of the run's metrics."""

    def setup(self, state: Any) -> None:
        self.parts: dict[str, list[numpy.ndarray]] = {}
        self.fractions: dict[str, numpy.ndarray] = {}
        self.first_row: int | None = None

    def process(self, state: Any) -> None:
        details = state.extras.get("metric_details") or {}
        if self.first_row is None:
            self.first_row = int(state.batch.start)
        for metric, d in details.items():
            if CURVE in d:
                self.parts.setdefault(metric, []).append(numpy.asarray(d[CURVE], dtype=numpy.float64))
                self.fractions[metric] = numpy.asarray(d.get("fractions"), dtype=numpy.float64)

    def finish(self, state: Any) -> None:
        if not self.parts:
            return
        lo, hi = state.rows
        store = state.outputs.get("store")
        if getattr(state, "store", None) is not None and hasattr(state.store, "close"):
            state.store.close()  # the finished store stays open read-only; the curves are appended to it
        curves = {}
        for metric, parts in self.parts.items():
            got = numpy.concatenate(parts)
            full = numpy.full((hi - lo, got.shape[1]), numpy.nan)
            start = (self.first_row or lo) - lo
            full[start:start + len(got)] = got
            curves[metric] = full
            if store and Path(store).exists():
                write_curves(store, metric, full, self.fractions[metric])
        if (state.cfg.get("render") or {}).get("enabled", True):
            from lrpflow.render.curves import plot_perturbation_curves

            path = Path(state.output_dir) / "perturbation_curves.png"
            label = str(getattr(state.explanation, "method", "explanation"))
            for metric, full in curves.items():
                rows = full[~numpy.isnan(full).any(axis=1)]
                if len(rows):
                    plot_perturbation_curves({f"{label}": rows}, self.fractions[metric], path=str(path),
                                             ylabel="target logit", xlabel="fraction of regions removed",
                                             title=metric)
                    state.outputs.setdefault("images", []).append(str(path))
                    break


@hookimpl
def lrpflow_register_steps(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("save_curves", SaveCurves)
