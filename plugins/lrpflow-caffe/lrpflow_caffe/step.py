"""Pipeline steps of the ``caffe_demo`` experiment (``lrpflow experiment=caffe_demo caffe.config=...``).

``caffe_demo`` builds a :class:`~lrpflow_caffe.demo.Demonstrator` from ``caffe.config``,
``caffe.filelist`` and ``caffe.prefix`` (dtype and backend from ``backend``), hands its
model, file-list source and explainer to the pipeline, explains every batch and writes the
demonstrator's files; the core ``save`` step then stores the batch in ``results.h5`` (targets
as (N, 5) class rows padded with −1, labels = the file list's target codes).
``caffe_demo_report`` comes last: it fails the job (after the store is complete) if an image
could not be read.
"""
from __future__ import annotations

from typing import Any

from lrpflow.errors import ConfigError, DataFormatError


def _node(cfg: Any, key: str) -> Any:
    cur = cfg
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


class CaffeDemo:
    """Set up the demonstrator and explain each batch (see the module doc)."""

    def setup(self, state: Any) -> None:
        from lrpflow_caffe.demo import Demonstrator

        c = dict(state.cfg.get("caffe") or {})
        for key in ("config", "filelist"):
            if not c.get(key) or c[key] == "???":
                raise ConfigError(f"caffe.{key} is required (the demonstrator's {key} file)")
        demo = Demonstrator(str(c["config"]), str(c["filelist"]), str(c.get("prefix") or "."),
                            dtype=str(_node(state.cfg, "backend.dtype") or "float32"),
                            backend=_node(state.cfg, "backend.name"), write=bool(c.get("write_files", True)))
        state.extras["caffe_demo"] = demo
        state.model = demo.explain_model
        state.explainer = demo.explainer
        state.source = demo.source
        state.rows = (0, len(demo.source))
        state.start_row = 0
        state.extras["data_layout"] = "NCHW"
        state.outputs["model"] = demo.cfg.model_file

    def process(self, state: Any) -> None:
        demo = state.extras["caffe_demo"]
        state.explanation = demo.explain_batch(state.batch)
        state.metrics = {}

    def finish(self, state: Any) -> None:
        demo = state.extras["caffe_demo"]
        state.outputs["caffe_demo"] = {"heatmaps": len(demo.results), "outpath": demo.cfg.standalone_outpath,
                                       "relpropformulatype": demo.cfg.relpropformulatype, "method": demo.method,
                                       "start_node": demo.start,
                                       "failed": {demo.entries[r].path: m for r, m in sorted(demo.source.failed.items())}}


class CaffeDemoReport:
    """Fail the job, after every other step finished, if an image of the file list could not be read."""

    def finish(self, state: Any) -> None:
        demo = state.extras.get("caffe_demo")
        if demo is not None and demo.source.failed:
            lines = "; ".join(f"{demo.entries[r].path} (line {demo.entries[r].line}): {m}"
                              for r, m in sorted(demo.source.failed.items()))
            raise DataFormatError(f"{len(demo.source.failed)} image(s) of {demo.source.path} could not be read: {lines}")
