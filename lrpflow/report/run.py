"""The HTML report of one run, built from the run directory alone (works after a resume).

Reads ``summary.json``, ``results.h5`` (h5py: attributes, ``metrics/``, ``ledger/``,
``metrics/<name>_curve``) and the PNGs and ``samples.json`` the render step wrote;
writes ``report.html`` (its ledger and perturbation-curve charts inline SVG, see
:mod:`lrpflow.report.svg`) and one page per rendered sample under ``samples/``.
Static: open it from disk, no server.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy

from lrpflow.report.metrics_help import metric_help
from lrpflow.report.svg import curve_svg, ledger_svg
from lrpflow.report.templates import render_template

log = logging.getLogger("lrpflow.report")

#: root attributes of a result store shown as provenance (the config is shown on its own)
_SKIP_ATTRS = ("config",)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, numpy.ndarray):
        return value.tolist()
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def read_store(path: Path) -> dict[str, Any]:
    """What a report shows from ``results.h5``: attributes, per-sample metrics, ledger, curves."""
    import h5py

    out: dict[str, Any] = {"attrs": {}, "metrics": {}, "ledger": None, "curves": {}, "rows": 0, "config": ""}
    if not path.exists():
        return out
    with h5py.File(path, "r") as f:
        has_curves = "metrics" in f and any(key.endswith("_curve") for key in f["metrics"])
        out["attrs"] = {k: _attr(v) for k, v in f.attrs.items() if k not in _SKIP_ATTRS}
        out["config"] = str(_attr(f.attrs.get("config", "")))
        out["rows"] = int(f["relevance"].shape[0]) if "relevance" in f else 0
        if "metrics" in f:
            for key in f["metrics"]:
                ds = f["metrics"][key]
                if ds.ndim == 1:
                    out["metrics"][key] = ds[()]
        if "ledger" in f and "entering" in f["ledger"]:
            g = f["ledger"]
            nodes = [str(_attr(n)) for n in g.attrs.get("nodes", [])]
            out["ledger"] = {"nodes": nodes, "entering": g["entering"][()], "leaving": g["leaving"][()]}
    if has_curves:  # opens the store once more, through its reader
        from lrpflow.curve_store import read_curves

        out["curves"] = read_curves(path)
    return out


def _metric_rows(metrics: dict[str, numpy.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for name, values in metrics.items():
        v = numpy.asarray(values, dtype=numpy.float64)
        v = v[numpy.isfinite(v)]
        text, higher = metric_help(name)
        rows.append({"name": name, "help": text, "n": int(v.size),
                     "direction": {True: "higher is better", False: "lower is better", None: ""}[higher],
                     "mean": float(v.mean()) if v.size else float("nan"),
                     "std": float(v.std()) if v.size else float("nan"),
                     "min": float(v.min()) if v.size else float("nan"),
                     "max": float(v.max()) if v.size else float("nan")})
    return rows


def ledger_shares(ledger: dict[str, Any]) -> dict[str, Any] | None:
    """Per node, from the input to the output: mean share of R_init entering it and absorbed by it.

    share_entering(node) = mean_n R_in(node)_n / R_init_n and share_absorbed = mean_n (R_in − R_out)_n / R_init_n
    (samples with R_init = 0 divide by 1). ``None`` when the store holds no usable ledger.
    """
    nodes = list(ledger["nodes"])
    entering, leaving = numpy.asarray(ledger["entering"]), numpy.asarray(ledger["leaving"])
    if entering.ndim == 3:  # several targets: the first
        entering, leaving = entering[:, 0], leaving[:, 0]
    if not nodes or entering.ndim != 2 or entering.shape[0] == 0 or entering.shape[1] != len(nodes):
        return None
    # the ledger lists nodes from the output back to the input; the output node receives R_init
    total = entering[:, :1]
    nodes, entering, leaving = nodes[::-1], entering[:, ::-1], leaving[:, ::-1]
    scale = numpy.where(numpy.abs(total) > 0, total, 1.0)
    with numpy.errstate(invalid="ignore"):
        ent = numpy.nanmean(entering / scale, axis=0)
        absorbed = numpy.nanmean((entering - leaving) / scale, axis=0)
    return {"nodes": nodes, "entering": [float(v) for v in ent], "absorbed": [float(v) for v in absorbed]}


def _ledger_chart(ledger: dict[str, Any]) -> dict[str, Any] | None:
    shares = ledger_shares(ledger)
    if shares is None:
        return None
    rows = [{"node": n, "entering": e, "absorbed": a}
            for n, e, a in zip(shares["nodes"], shares["entering"], shares["absorbed"])]
    return {"svg": ledger_svg(shares["nodes"], shares["entering"], shares["absorbed"]), "rows": rows}


def _curve_chart(curves: dict[str, tuple[numpy.ndarray, numpy.ndarray]], method: str) -> dict[str, Any] | None:
    for name, (c, fractions) in curves.items():
        c = c[numpy.isfinite(c).all(axis=1)]
        if len(c):
            return {"svg": curve_svg(fractions, c, method or name, "logit of the explained class"), "metric": name}
    return None


def _rel(path: str | os.PathLike[str] | None, root: Path) -> str | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute():
        p = (Path.cwd() / p)
    try:
        return os.path.relpath(p.resolve(), root.resolve()).replace(os.sep, "/")
    except ValueError:  # another drive
        return None


def write_run_report(run_dir: str | os.PathLike[str]) -> str:
    """Write ``<run_dir>/report.html`` (and per-sample pages); returns its path."""
    root = Path(run_dir)
    summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").exists() else {}
    outputs = summary.get("outputs") or {}
    store_path = Path(outputs.get("store") or root / "results.h5")
    if not store_path.is_absolute() and not store_path.exists():
        store_path = root / store_path.name
    store = read_store(store_path)
    samples_index = json.loads((root / "samples.json").read_text()) if (root / "samples.json").exists() else {}
    method = samples_index.get("method") or str(store["attrs"].get("method", ""))
    ledger = _ledger_chart(store["ledger"]) if store["ledger"] else None
    curves = _curve_chart(store["curves"], method) if store["curves"] else None
    samples = []
    for s in samples_index.get("samples", []):
        page = Path("samples") / f"{s['name']}.html"
        samples.append({**s, "page": page.as_posix()})
    if samples:
        (root / "samples").mkdir(exist_ok=True)
    for i, s in enumerate(samples):
        html = render_template("sample.html.j2", sample=s, method=method, base="../", cmap=samples_index.get("cmap", ""),
                               prev=samples[i - 1]["name"] + ".html" if i > 0 else None,
                               next=samples[i + 1]["name"] + ".html" if i + 1 < len(samples) else None)
        (root / s["page"]).write_text(html, encoding="utf-8")
    provenance = dict(store["attrs"])
    timings = {"total (s)": summary.get("seconds")}
    for k, v in (summary.get("timings") or {}).items():
        timings[k if k.startswith("rows") else f"{k} (s)"] = v
    config = store["config"]
    if not config and (root / ".hydra" / "config.yaml").exists():
        config = (root / ".hydra" / "config.yaml").read_text()
    html = render_template(
        "run.html.j2", title=f"lrpflow run: {method or root.name}", method=method, run_dir=str(root),
        summary=summary, objective=summary.get("objective"), rows=store["rows"], metrics=_metric_rows(store["metrics"]),
        provenance=provenance, timings={k: v for k, v in timings.items() if v is not None}, config=config,
        grid=_rel(root / "heatmap_grid.png", root) if (root / "heatmap_grid.png").exists() else None,
        ledger=ledger, curves=curves, samples=samples,
        store=_rel(store_path, root) if store_path.exists() else None, base="")
    out = root / "report.html"
    out.write_text(html, encoding="utf-8")
    log.debug("wrote %s", out)
    return str(out)
