"""The HTML report of a sweep: one sortable row per job, the best job highlighted.

Built from the sweep directory alone: each job's ``summary.json`` and Hydra overrides
(via :func:`lrpflow.sweep.collect`), ``sweep_grid.png`` and the jobs' own ``report.html``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lrpflow.report.metrics_help import metric_help
from lrpflow.report.templates import render_template


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return v
    return v


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def write_sweep_report(sweep_dir: str | os.PathLike[str]) -> str:
    """Write ``<sweep_dir>/report.html``; returns its path."""
    from lrpflow.sweep import collect

    root = Path(sweep_dir)
    rows = collect(root)
    objective_name = None
    for job in sorted(p for p in root.iterdir() if (p / ".hydra" / "config.yaml").exists()):
        from omegaconf import OmegaConf

        objective_name = OmegaConf.load(job / ".hydra" / "config.yaml").get("evaluate", {}).get("objective")
        break
    params: list[str] = []
    metrics: list[str] = []
    jobs = []
    for row in rows:
        p = {k: _number(v) for k, v in row.items() if k.startswith("lrp.")}
        for o in str(row.get("overrides") or "").split():  # overrides outside lrp (e.g. data.batch_size)
            key, _, value = o.partition("=")
            if key and not key.startswith("lrp.") and key != "lrp" and not key.startswith("hydra"):
                p[key] = _number(value)
        m = {k[len("metric."):]: v for k, v in row.items() if k.startswith("metric.")}
        params += [k for k in p if k not in params]
        metrics += [k for k in m if k not in metrics]
        report = root / row["job"] / "report.html"
        jobs.append({"job": row["job"], "params": p, "metrics": m, "objective": row.get("objective"),
                     "seconds": row.get("seconds"), "report": f"{row['job']}/report.html" if report.exists() else None,
                     "best": False, "params_text": row.get("overrides") or ""})
    # only the parameters that vary between jobs are columns (a constant one is in every job's report)
    varying = [k for k in params if len({json.dumps(j["params"].get(k), default=str) for j in jobs}) > 1]
    params = varying or params
    for j in jobs:
        j["params"] = {k: j["params"].get(k) for k in params}
        j["params_text"] = ", ".join(f"{k}={v}" for k, v in j["params"].items()) or j["params_text"]
        j["metrics"] = {k: j["metrics"].get(k) for k in metrics}
    higher = metric_help(objective_name)[1] if objective_name else True
    scored = [j for j in jobs if _finite(j["objective"])]
    best = None
    if scored:
        best = (max if higher is not False else min)(scored, key=lambda j: j["objective"])
        best["best"] = True
    direction = {True: "higher is better", False: "lower is better", None: ""}[higher]
    html = render_template(
        "sweep.html.j2", title=f"lrpflow sweep: {root.name}", sweep_dir=str(root), jobs=jobs, params=params,
        metrics=metrics, help={m: metric_help(m)[0] for m in metrics}, best=best, objective_name=objective_name,
        direction=direction, grid="sweep_grid.png" if (root / "sweep_grid.png").exists() else None)
    out = root / "report.html"
    out.write_text(html, encoding="utf-8")
    return str(out)
