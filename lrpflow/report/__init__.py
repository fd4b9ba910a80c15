"""Static HTML reports of a run and of a sweep (Jinja2 templates, open from disk).

``write_run_report(run_dir)`` and ``write_sweep_report(sweep_dir)`` read everything from
the directory (``results.h5``, ``summary.json``, the rendered PNGs), so a report can be
rebuilt at any time, also after a resumed run::

    python -c "import lrpflow.report as r; print(r.write_run_report('outputs/runs/2026-12-01_14-00-00'))"
"""
from __future__ import annotations

from lrpflow.report.run import write_run_report
from lrpflow.report.sweep import write_sweep_report

__all__ = ["write_run_report", "write_sweep_report"]
