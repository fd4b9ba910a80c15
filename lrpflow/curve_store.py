"""Perturbation curves of a run: kept per row in ``results.h5`` and plotted.

Metrics that hand back a curve through :func:`lrpflow.evaluate.evaluate`'s ``details=``
(pixel flipping's per-sample target logit after each step) are stored by the ``save``
step with every batch, like any per-row field (so a resumed run keeps them):

``metrics/<name>_curve``  (N, L+1) float64; the store attribute ``curve_fractions`` maps
each metric to its (L+1,) fractions of the regions removed at each step.

:func:`plot_store_curves` draws ``perturbation_curves.png`` (the mean curve with its
standard error) from a finished store.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy

#: the details key holding a metric's curve
CURVE = "curve"


def curve_dataset(metric: str) -> str:
    """Field (and HDF5 path) of a metric's curves in a result store."""
    return f"metrics/{metric}_curve"


def read_curves(store_path: str | Path) -> dict[str, tuple[numpy.ndarray, numpy.ndarray]]:
    """``{metric: (curves (N, L+1), fractions (L+1,))}`` of a result store (empty when none)."""
    from lrpflow.store import StoreReader

    out: dict[str, tuple[numpy.ndarray, numpy.ndarray]] = {}
    with StoreReader.open(store_path) as store:
        fractions = _fractions(store.attrs.get("curve_fractions"))
        for metric, length in store.layout.curves:
            curves = store.read(curve_dataset(metric))[curve_dataset(metric)]
            out[metric] = (curves, numpy.asarray(fractions.get(metric, numpy.arange(length)), dtype=numpy.float64))
    return out


def _fractions(value: Any) -> dict[str, Any]:
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return dict(value or {})


def plot_store_curves(store_path: str | Path, out_dir: str | Path, label: str = "explanation") -> list[str]:
    """``perturbation_curves.png`` of the first metric with curves in a finished store (files written)."""
    from lrpflow.render.curves import plot_perturbation_curves

    for metric, (curves, fractions) in read_curves(store_path).items():
        rows = curves[numpy.isfinite(curves).all(axis=1)]
        if len(rows):
            path = Path(out_dir) / "perturbation_curves.png"
            plot_perturbation_curves({label: rows}, fractions, path=str(path), ylabel="target logit",
                                     xlabel="fraction of regions removed", title=metric)
            return [str(path)]
    return []
