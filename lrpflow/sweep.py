"""Sweep summaries: one table of every job's parameters and metrics, and a comparison grid.

Called by the multirun callback (:class:`lrpflow.cli.SweepSummary`) with the sweep
directory; each job directory holds ``summary.json`` (written by
:func:`lrpflow.pipeline.run`), ``results.h5`` and Hydra's ``.hydra/overrides.yaml``.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy

from lrpflow.errors import LrpflowError
from lrpflow.store import flatten_keys

log = logging.getLogger("lrpflow.sweep")


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def collect(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per job: job number, overrides, lrp parameters, objective and metric means."""
    rows = []
    root = Path(sweep_dir)
    jobs = sorted((p for p in root.iterdir() if (p / "summary.json").exists()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(_overrides(job)), "objective": summary.get("objective")}
        row.update(flatten_keys(summary.get("lrp") or {}, "lrp"))
        for k, v in (summary.get("metrics") or {}).items():
            row[f"metric.{k}"] = v
        row["seconds"] = summary.get("seconds")
        row["store"] = (summary.get("outputs") or {}).get("store")
        rows.append(row)
    return rows


def summarize_sweep(sweep_dir: str | os.PathLike[str], max_images: int = 4) -> dict[str, str]:
    """Write ``sweep_summary.csv``, ``sweep_summary.h5`` and ``sweep_grid.png``; returns their paths."""
    import h5py

    root = Path(sweep_dir)
    rows = collect(root)
    if not rows:
        raise LrpflowError(f"{root}: no job of the sweep wrote a summary.json")
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = {"csv": str(root / "sweep_summary.csv"), "h5": str(root / "sweep_summary.h5")}
    with open(out["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    with h5py.File(out["h5"], "w") as f:
        f.attrs["schema"] = "lrpflow-sweep"
        f.attrs["columns"] = json.dumps(columns)
        for col in columns:
            values = [row.get(col) for row in rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None) and \
                    any(v is not None for v in values):
                f.create_dataset(col, data=numpy.array([numpy.nan if v is None else float(v) for v in values]))
            else:
                f.create_dataset(col, data=numpy.array(["" if v is None else str(v) for v in values], dtype=h5py.string_dtype()))
    grid = _grid(rows, root, max_images)
    if grid:
        out["grid"] = grid
    from lrpflow.report import write_sweep_report

    out["report"] = write_sweep_report(root)
    log.info("sweep summary of %d jobs in %s (report: %s)", len(rows), root, out["report"])
    return out


def _grid(rows: list[dict[str, Any]], root: Path, max_images: int) -> str | None:
    from lrpflow import render
    from lrpflow.store import load

    relevances: dict[str, Any] = {}
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    for row in rows:
        store = row.get("store")
        if not store or not os.path.exists(store):
            continue
        data = load(store, fields=["relevance"], rows=slice(0, max_images))
        label = render.column_title([o for o in row["overrides"].split() if o not in common]) or f"job {row['job']}"
        relevances[label] = data["relevance"]
    if not relevances:
        return None
    n = min(len(r) for r in relevances.values())
    if n == 0:
        return None
    shape = next(iter(relevances.values())).shape[1:]
    if not (len(shape) == 3 or (len(shape) == 1 and int(numpy.sqrt(shape[0])) ** 2 == shape[0])):
        return None
    path = str(root / "sweep_grid.png")
    render.heatmap_grid({k: v[:n] for k, v in relevances.items()}, None, title="sweep", path=path, colorbar=True)
    return path
