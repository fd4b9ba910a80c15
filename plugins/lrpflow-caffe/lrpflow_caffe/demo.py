"""The LRP Toolbox's Caffe heatmap demonstrator: ``lrpflow-caffe-demo CONFIG FILELIST PREFIX``.

Reproduces ``caffe-master-lrp/demonstrator`` (manual section 5 and ``compute_heatmaps.cpp``);
its inputs (config file, file list, mean, image preparation) are read by
:mod:`lrpflow_caffe.demo_inputs`.

- :func:`method_for`: ``relpropformulatype`` → lrpflow rules (the one place that maps them);
- :class:`Demonstrator`: runs it all and writes ``<image>_rawhm.txt``, ``<image>_heatmap.png``,
  ``<image>_as_inputted_into_the_dnn.png`` and ``<image>_toptenscores.txt``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from lrpflow.errors import ConfigError, LrpflowError
from lrpflow_caffe.demo_inputs import (  # noqa: F401 - part of this module's interface
    FORMULA_TYPES, DemoConfig, Entry, FileListSource, prepare_image, read_config, read_filelist, read_filelist_source,
    read_mean,
)

log = logging.getLogger("lrpflow_caffe.demo")

#: the manual's name of the top-10 file (the C++ wrote ``<image>_top10scores.txt``)
TOP_SCORES_SUFFIX = "_toptenscores.txt"

#: the proportional rule of parameter-free linear maps (AVE pooling, Eltwise SUM) under every LRP type:
#: ``norm``, ``x_i w_ij R_j / (z_j + 1e-16·sign z_j)`` (the engine's default for such layers, pinned here).
NORM_RULE: dict[str, Any] = {"rule": "norm"}


# --- rules ------------------------------------------------------------------------------------


def method_for(cfg: DemoConfig, model: Any) -> dict[str, Any]:
    """``relpropformulatype`` as lrpflow explainer arguments (``composite=`` or ``rule=``).

    0: ε = ``epsstab`` on Convolution/InnerProduct (``z + ε·sign z``); 2: αβ with β =
    ``alphabeta_beta``, α = 1 + β on Convolution/InnerProduct; under both, AVE pooling and
    Eltwise SUM use :data:`NORM_RULE`, MAX pooling winner-take-all, ReLU/LRN/Dropout pass
    relevance through, Concat splits it by channel; convolutions with Caffe layer index ≤
    ``auxiliaryvariable_maxlayerindexforflatdistinconv`` (0: none) use the flat rule.
    11 and 99: sensitivity (the gradient; the heatmap is its L2 norm over the channels);
    26: deconvolution (deconvnet).
    """
    t = cfg.relpropformulatype
    if t in (11, 99):
        return {"rule": "gradient"}
    if t == 26:
        return {"rule": "deconvnet"}
    if t == 0:
        default: dict[str, Any] = {"rule": "epsilon", "epsilon": float(cfg.epsstab)}
    else:
        beta = float(cfg.alphabeta_beta)
        default = {"rule": "alpha_beta", "alpha": 1.0 + beta, "beta": beta}
    overrides: list[dict[str, Any]] = []
    k = int(cfg.auxiliaryvariable_maxlayerindexforflatdistinconv)
    names = {n.name for n in model.nodes}
    if k > 0:
        for lay in model.caffe.layers:
            if lay.type == "Convolution" and lay.index <= k and lay.node in names:
                overrides.append({"name": lay.node, "rule": "flat"})  # grouped: flat within each group
    overrides += [{"kind": "avg_pool", **NORM_RULE}, {"kind": "add", **NORM_RULE}]
    return {"composite": {"default": default, "overrides": overrides, "maxpool": "winner_take_all"}}


# --- the demonstrator ---------------------------------------------------------------------------


def _start_node(cfg: DemoConfig, model: Any) -> str:
    """The node relevance starts at: lastlayerindex −1 (the input of the lowest Softmax), −2 (the highest InnerProduct) or k."""
    layers = model.caffe.layers
    k = cfg.lastlayerindex
    if k == -1:
        soft = next((lay for lay in layers if lay.type == "Softmax"), None)
        if soft is None:
            raise ConfigError(f"{cfg.where('lastlayerindex')}: lastlayerindex −1 needs a Softmax layer; the net has none")
        return model.node(soft.node).inputs[0]
    if k == -2:
        ip = next((lay for lay in reversed(layers) if lay.type == "InnerProduct"), None)
        if ip is None:
            raise ConfigError(f"{cfg.where('lastlayerindex')}: lastlayerindex −2 needs an InnerProduct layer; the net has none")
        return ip.node
    if k >= len(layers):
        raise ConfigError(f"{cfg.where('lastlayerindex')}: lastlayerindex {k} is out of range: the net has {len(layers)} "
                          "layers (Caffe's indices, with the Input layer and inserted Split layers)")
    lay = layers[k]
    if lay.node is None:
        raise ConfigError(f"{cfg.where('lastlayerindex')}: layer {k} ({lay.name}, {lay.type}) is the input")
    return lay.node


def softmax(z: numpy.ndarray) -> numpy.ndarray:
    e = numpy.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def format_rawhm(r: numpy.ndarray) -> str:
    """The C++'s ``_rawhm.txt``: ``C``, ``H W``, then per channel (R, G, B) each row's values, each followed by a space."""
    c, h, w = r.shape
    lines = [f"{c}", f"{h} {w}"]
    for ch in range(c):
        for row in r[c - 1 - ch]:
            lines.append("".join(f"{float(v):g} " for v in row))
    return "\n".join(lines) + "\n"


def heatmap_rgb(rgb_hm: numpy.ndarray) -> numpy.ndarray:
    """The C++'s heatmap PNG: v = channel mean; v ≥ 0 → yellow (R = G = v / max v), v < 0 → blue (−v / max v)."""
    v = rgb_hm.mean(axis=0)
    top = float(v.max())
    img = numpy.zeros((*v.shape, 3))
    if top > 0:
        pos = numpy.where(v >= 0, v / top, 0.0)
        img[:, :, 0] = pos
        img[:, :, 1] = pos
        img[:, :, 2] = numpy.where(v < 0, -v / top, 0.0)
    return numpy.round(numpy.clip(img, 0, 1) * 255).astype(numpy.uint8)


@dataclass
class Result:
    """What the demonstrator computed for one image."""

    entry: Entry
    outbase: str
    classes: tuple[int, ...]
    probabilities: numpy.ndarray
    rawhm: numpy.ndarray  #: (C, H, W) in the net's channel order (BGR)


class Demonstrator:
    """The demonstrator's run: model, mean, file list, explainer; :meth:`explain_batch` does the work.

    Parameters
    ----------
    config, filelist, prefix : str
        The three command-line arguments of ``lrp_demo``.
    dtype : str
        ``float32`` (default) or ``float64``.
    backend : str, optional
        ``numpy`` or ``cupy``.
    write : bool
        Write the demonstrator's output files.
    """

    def __init__(self, config: str, filelist: str, prefix: str, dtype: str = "float32", backend: str | None = None,
                 write: bool = True) -> None:
        from lrpflow.explain import Explainer
        from lrpflow.graph import Model
        from lrpflow.io import load_model

        self.cfg = read_config(config)
        self.entries = read_filelist(filelist, prefix)
        self.write = write
        for e in self.entries:
            if self.cfg.standalone_rootpath not in e.path:
                raise ConfigError(f"{filelist}:{e.line}: the image path {e.path!r} does not contain standalone_rootpath "
                                  f"{self.cfg.standalone_rootpath!r} ({self.cfg.where('standalone_rootpath')})")
        with open(self.cfg.synsetfile, encoding="utf-8", errors="replace") as f:
            self.classnames = f.read().splitlines()
        self.model = load_model(self.cfg.param_file, format="caffe", weights=self.cfg.model_file)
        c, h, w = self.model.caffe.input_chw
        if c != 3:
            raise ConfigError(f"{self.cfg.param_file}: the demonstrator needs a net input of 3 channels, got {c}")
        if self.cfg.baseimgsize < max(h, w):
            raise ConfigError(f"{self.cfg.where('baseimgsize')}: baseimgsize {self.cfg.baseimgsize} is smaller than the "
                              f"net input {h}×{w}")
        mean = read_mean(self.cfg.mean_file, self.cfg.use_mean_file_asbinaryprotoblob)
        self.source = FileListSource(self.entries, filelist, (h, w), self.cfg.baseimgsize, mean)
        self.start = _start_node(self.cfg, self.model)
        sub = self.model.ancestors(self.start)
        self.explain_model = Model(sub, output=self.start, input_shape=self.model.input_shape,
                                   input_name=self.model.input_name, layout=self.model.layout)
        self.explain_model.caffe = self.model.caffe  # type: ignore[attr-defined]
        width = self.explain_model.infer_shapes(self.model.input_shape)[self.start]
        if len(width) != 1:
            raise ConfigError(f"{self.cfg.where('lastlayerindex')}: relevance must start at a vector of class scores; "
                              f"node {self.start!r} has shape {width}")
        self.n_scores = int(width[0])
        if self.n_scores < self.cfg.numclasses:
            raise ConfigError(f"{self.cfg.where('numclasses')}: numclasses {self.cfg.numclasses} exceeds the "
                              f"{self.n_scores} scores of node {self.start!r} where relevance starts")
        for e in self.entries:
            if e.target >= self.cfg.numclasses:
                raise ConfigError(f"{filelist}:{e.line}: target class {e.target} is not below numclasses "
                                  f"{self.cfg.numclasses} ({self.cfg.where('numclasses')})")
        self.method = method_for(self.cfg, self.explain_model)
        self.explainer = Explainer(self.explain_model, backend=backend, dtype=dtype, **self.method)
        self.results: list[Result] = []

    # -- one batch ------------------------------------------------------------------------
    def probabilities(self, x: numpy.ndarray) -> numpy.ndarray:
        """The net's output (after its Softmax), as the C++ ranks classes by it; softmax of the output if it has none."""
        from lrpflow.backend import to_numpy

        prep = self.explainer.prepare(x)
        y = to_numpy(self.model.run(prep)[0]).astype(numpy.float64)
        if self.model.node(self.model.output).layer.role != "softmax":
            y = softmax(y)
        return y

    def r_init(self, scores: numpy.ndarray, probs: numpy.ndarray, targets: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
        """``(R_init, classes (N, 5) padded with −1)``: the target's score (LRP) or 1 (gradient types) at its classes."""
        n = scores.shape[0]
        classes = numpy.full((n, 5), -1, dtype=numpy.int64)
        mask = numpy.zeros_like(scores)
        order = numpy.argsort(-probs[:, : self.cfg.numclasses], axis=1, kind="stable")
        for i, t in enumerate(targets):
            chosen = order[i, :1] if t == -1 else order[i, : min(5, self.cfg.numclasses)] if t == -2 else numpy.array([t])
            classes[i, : chosen.size] = chosen
            mask[i, chosen] = 1.0
        gradient_type = self.cfg.relpropformulatype in (11, 99, 26)
        return (mask if gradient_type else scores * mask), classes

    def explain_batch(self, batch: Any) -> Any:
        """Explain one batch of the source (rows ``batch.start …``); writes the files of its readable images."""
        from lrpflow.backend import to_numpy

        x, targets = batch.x, numpy.asarray(batch.labels)
        probs = self.probabilities(x)
        trace = self.explainer.forward(x)
        scores = to_numpy(trace.logits).astype(numpy.float64)
        r0, classes = self.r_init(scores, probs, targets)
        exp = self.explainer.explain(trace=trace, target=r0.astype(scores.dtype))
        exp = dataclasses.replace(exp, target=classes)
        rel = to_numpy(exp.relevance).astype(numpy.float64)
        if self.cfg.relpropformulatype in (11, 99):
            norm = numpy.sqrt((rel * rel).sum(axis=1, keepdims=True))
            rel = numpy.repeat(norm, rel.shape[1], axis=1)
            exp = dataclasses.replace(exp, relevance=rel.astype(to_numpy(exp.relevance).dtype))
        for i in range(len(x)):
            row = batch.start + i
            if row in self.source.failed:
                continue
            entry = self.entries[row]
            pos = entry.path.find(self.cfg.standalone_rootpath)
            outbase = os.path.join(self.cfg.standalone_outpath, entry.path[pos:])
            chosen = tuple(int(c) for c in classes[i] if c >= 0)
            result = Result(entry, outbase, chosen, probs[i], rel[i])
            if self.write:
                self.write_outputs(result, self.source.as_inputted.get(row))
            self.results.append(result)
            log.info("%s: classes %s, top class %d (p = %g)", entry.path, chosen, int(probs[i].argmax()), probs[i].max())
        return exp

    def write_outputs(self, res: Result, shown: numpy.ndarray | None) -> None:
        """The four files of one image under ``standalone_outpath``."""
        from lrpflow.io.files import write_file
        from lrpflow.io.images import write_image

        os.makedirs(os.path.dirname(res.outbase) or ".", exist_ok=True)
        rgb_hm = res.rawhm[::-1]
        write_file(res.outbase + "_rawhm.txt", format_rawhm(res.rawhm))
        write_image(heatmap_rgb(rgb_hm), res.outbase + "_heatmap.png")
        if shown is not None:
            write_image(numpy.round(numpy.clip(shown, 0, 1) * 255).astype(numpy.uint8),
                        res.outbase + "_as_inputted_into_the_dnn.png")
        k = min(10, self.cfg.numclasses)
        p = res.probabilities[: self.cfg.numclasses]
        order = numpy.argsort(-p, kind="stable")[:k]
        write_file(res.outbase + TOP_SCORES_SUFFIX, "".join(f"{int(c)} {float(p[c]):g}\n" for c in order))

    def run(self, batch_size: int = 8) -> int:
        """Every image of the file list; the number of images that failed."""
        for batch in self.source.batches(batch_size):
            self.explain_batch(batch)
        return len(self.source.failed)


def main(argv: Sequence[str] | None = None) -> int:
    """``lrpflow-caffe-demo CONFIG FILELIST PREFIX``: the LRP Toolbox's Caffe demonstrator without Caffe."""
    parser = argparse.ArgumentParser(prog="lrpflow-caffe-demo", description=main.__doc__)
    parser.add_argument("config", help="the demonstrator's config file (e.g. config.txt)")
    parser.add_argument("filelist", help="lines '<image path relative to PREFIX> <target>' (−1, −2 or a class index)")
    parser.add_argument("prefix", help="the folder the file list's paths are relative to")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--backend", default=None, help="numpy (default) or cupy")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        demo = Demonstrator(args.config, args.filelist, args.prefix, dtype=args.dtype, backend=args.backend)
        failed = demo.run(max(1, args.batch_size))
    except LrpflowError as err:
        print(f"lrpflow-caffe-demo: {err}", file=sys.stderr)
        return 2
    for row, msg in sorted(demo.source.failed.items()):
        print(f"lrpflow-caffe-demo: {args.filelist}:{demo.entries[row].line}: {msg}", file=sys.stderr)
    print(f"lrpflow-caffe-demo: {len(demo.results)} heatmaps written under {demo.cfg.standalone_outpath}"
          + (f", {failed} image(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
