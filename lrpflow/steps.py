"""The pipeline's steps and what they share: the run's :class:`State`, config access, data and explainer set-up.

Each step is a class whose instances may define ``setup(state)``, ``process(state)`` (once per
batch) and ``finish(state)``; the built-in ones (``load_model``, ``load_data``, ``forward``,
``lrp``, ``evaluate``, ``render``, ``save``) register through ``lrpflow_register_steps``
like a third-party plugin's. :func:`lrpflow.pipeline.run` runs them.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError
from lrpflow.hookspecs import hookimpl

log = logging.getLogger("lrpflow.pipeline")

#: keys of an lrp config that select the method rather than parametrise it
LRP_KEYS = ("rule", "composite")


def _plain(cfg: Any) -> Any:
    """An OmegaConf node (or anything) as plain Python containers."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _require(cfg: Mapping[str, Any], key: str) -> Any:
    value = _get(cfg, key)
    if value is None or value == "???":
        raise ConfigError(f"config field {key!r} is required")
    return value


@dataclass
class State:
    """What the steps share during one run."""

    cfg: dict[str, Any]
    output_dir: Path
    model: Any = None
    source: Any = None
    rows: tuple[int, int] = (0, 0)  #: the dataset rows this job handles
    start_row: int = 0  #: where streaming starts (after resuming a store)
    explainer: Any = None
    batch: Any = None
    trace: Any = None
    explanation: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, list[float]] = field(default_factory=dict)  #: metric → [sum, count]
    store: Any = None
    objective: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  #: files written, for the summary
    extras: dict[str, Any] = field(default_factory=dict)  #: room for third-party steps
    #: seconds of the run's phases (setup, batches, finish) and rows computed, for the summary
    timings: dict[str, float] = field(default_factory=dict)


# --- building blocks ------------------------------------------------------------------


def build_layers(specs: list[Mapping[str, Any]], seed: Any = None) -> list[Any]:
    """Layers from ``[{type: linear, m: 64, n: 10}, {type: relu}, ...]`` via the layer registry.

    Layers that take an ``rng`` get one generator seeded with ``seed``: same seed, same initial weights.
    """
    import inspect

    from lrpflow.plugins import registries

    rng = numpy.random.default_rng(seed)

    layers = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind is None:
            raise ConfigError(f"model.train.layers[{i}] needs a 'type'")
        cls = registries().layers.get(kind)
        if "rng" in inspect.signature(cls).parameters and "rng" not in spec:
            spec["rng"] = rng
        try:
            layers.append(cls(**spec))
        except TypeError as err:
            raise ConfigError(f"model.train.layers[{i}] ({kind}): {err}") from err
    return layers


def open_source(dcfg: Mapping[str, Any], what: str = "data") -> Any:
    """A lazy data source for a data config (``source: digits|file``, path, labels, preprocess)."""
    from lrpflow.io import open_data

    source = dcfg.get("source", "file")
    pre = dict(dcfg.get("preprocess") or {})
    options = dict(dcfg.get("options") or {})
    if source == "file":
        path = dcfg.get("path")
        if not path or path == "???":
            raise ConfigError(f"{what}.path is required for source 'file'")
        return open_data(path, format=dcfg.get("format"), labels=dcfg.get("labels"), **pre, **options)
    return open_data(source, format=source, labels=dcfg.get("labels"), **pre, **options)


def shard_rows(n: int, dcfg: Mapping[str, Any]) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of this job: ``start..stop`` split into ``num_shards`` contiguous parts."""
    start = int(dcfg.get("start") or 0)
    stop = dcfg.get("stop")
    stop = n if stop is None else min(int(stop), n)
    if not 0 <= start <= stop:
        raise ConfigError(f"data.start={start} and data.stop={stop} do not select rows of a dataset of {n}")
    k, i = int(dcfg.get("num_shards") or 1), int(dcfg.get("shard") or 0)
    if k < 1 or not 0 <= i < k:
        raise ConfigError(f"data.shard must lie in [0, data.num_shards), got shard={i}, num_shards={k}")
    total = stop - start
    lo = start + (total * i) // k
    hi = start + (total * (i + 1)) // k
    return lo, hi


def explainer_from_config(model: Any, cfg: Mapping[str, Any]) -> Any:
    """An :class:`~lrpflow.explain.Explainer` for the ``lrp``, ``backend`` and ``explain`` configs."""
    from lrpflow.composites import Composite
    from lrpflow.explain import Explainer

    lrp = dict(cfg.get("lrp") or {})
    params = {k: v for k, v in lrp.items() if k not in LRP_KEYS}
    rule, composite = lrp.get("rule"), lrp.get("composite")
    if rule is None and composite is None:
        raise ConfigError("the lrp config needs 'rule' or 'composite'")
    if isinstance(composite, Mapping):
        composite, params = Composite.from_config(composite), {}
    backend = _get(cfg, "backend.name", "numpy")
    dtype = _get(cfg, "backend.dtype", "float32")
    keep = list(_get(cfg, "explain.keep", []) or []) + list(_get(cfg, "store.intermediate", []) or [])
    return Explainer(model, composite=composite, rule=rule, backend=backend, dtype=dtype,
                     init=_get(cfg, "explain.init"), keep=keep, chunk_size=_get(cfg, "backend.chunk_size"),
                     workers=_get(cfg, "backend.workers"), **params)


# --- steps -------------------------------------------------------------------------------


class LoadModel:
    """Load the model file, or train it (``model.source: train``) and cache the result."""

    def setup(self, state: State) -> None:
        from lrpflow.io import load_model, save_model

        m = state.cfg.get("model") or {}
        source = m.get("source", "file")
        path = m.get("path")
        if source == "train" and path:
            path = cached_model_path(path, m.get("train") or {})
        if source == "file":
            state.model = load_model(_require(state.cfg, "model.path"), format=m.get("format"), **dict(m.get("options") or {}))
        elif source == "train":
            if path and os.path.exists(path) and not m.get("retrain"):
                log.info("using the cached model %s", path)
                state.model = load_model(path, format=m.get("format"))
            else:
                state.model = train_from_config(m, progress=bool(state.cfg.get("progress", True)))
                if path:
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                    save_model(state.model, path, format=m.get("format"))
                    log.info("trained model cached at %s", path)
        else:
            raise ConfigError(f"model.source must be 'file' or 'train', got {source!r}")
        if hasattr(state.model, "drop_softmax_output_layer"):
            state.model.drop_softmax_output_layer()
        state.outputs["model"] = path


def cached_model_path(path: str, train_cfg: Mapping[str, Any]) -> str:
    """``path`` with a digest of the training config: a changed recipe never reuses a stale model."""
    import hashlib

    digest = hashlib.sha256(json.dumps(train_cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
    base, ext = os.path.splitext(path)
    return f"{base}-{digest}{ext}"


def train_from_config(m: Mapping[str, Any], progress: bool = True) -> Any:
    """Build ``model.train.layers`` and train them with lrpflow's trainer on ``model.train.data``."""
    from lrpflow.graph import Sequential

    t = dict(m.get("train") or {})
    layers = build_layers(t.get("layers") or [], seed=t.get("seed", 0))
    if not layers:
        raise ConfigError("model.train.layers is empty")
    net = Sequential(layers)
    data = open_source(_require(t, "data"), "model.train.data")
    lo, hi = shard_rows(len(data), {**t["data"], "shard": 0, "num_shards": 1})
    x, y = data[lo:hi], data.labels
    if y is None:
        raise ConfigError("model.train.data has no labels")
    y = numpy.asarray(y)[lo:hi]
    xv = yv = None
    if t.get("validation"):
        val = open_source(t["validation"], "model.train.validation")
        vlo, vhi = shard_rows(len(val), {**t["validation"], "shard": 0, "num_shards": 1})
        xv, yv = val[vlo:vhi], numpy.asarray(val.labels)[vlo:vhi]
    net.train(x, y, xv, yv, batchsize=int(t.get("batchsize", 25)), iters=int(t.get("iters", 1000)),
              lrate=float(t.get("lrate", 0.005)), lrate_decay=t.get("lrate_decay"), status=int(t.get("status", 250)),
              rng=t.get("seed", 0), progress=progress)
    return net


class LoadData:
    """Open the dataset lazily and pick this job's rows (``data.start/stop``, ``data.shard/num_shards``).

    Image folders fit the model: without ``size``/``base_size``/``crop``/``channels`` options they
    get the model's input size and channels (:func:`lrpflow.io.images.fit_to_model`).
    """

    def setup(self, state: State) -> None:
        from lrpflow.io.images import fit_to_model, is_image_data

        d = dict(state.cfg.get("data") or {})
        layout = d.get("layout") or "NHWC"
        if layout not in ("NHWC", "NCHW"):
            raise ConfigError(f"data.layout must be NHWC or NCHW, got {layout!r}")
        state.extras["data_layout"] = layout
        if state.model is not None and is_image_data(d):  # size and channels from the model, recorded in the config
            d["options"] = fit_to_model(d.get("options"), getattr(state.model, "input_shape", None))
            state.cfg["data"] = {**dict(state.cfg.get("data") or {}), "options": d["options"]}
        state.source = open_source(d)
        state.rows = shard_rows(len(state.source), d)
        state.start_row = state.rows[0]


class Forward:
    """Create the explainer (once) and run the forward pass of each batch.

    When ``lrp`` is the next step (the usual pipeline), the forward pass is left to it:
    ``explain(x)`` runs each row chunk's forward and backward pass back to back on one thread
    and frees the activations as it goes, which measured 7 % faster than ``forward(x)`` then
    ``explain(trace=...)`` (LeNet-5, batch 256); ``state.trace`` is then None.
    """

    def setup(self, state: State) -> None:
        state.explainer = explainer_from_config(state.model, state.cfg)
        steps = [str(s) for s in state.cfg.get("pipeline") or []]
        self.fused = ("forward", "lrp") in zip(steps, steps[1:])

    def process(self, state: State) -> None:
        x = state.batch.x
        data_layout = state.extras.get("data_layout", "NHWC")
        model_layout = getattr(state.model, "layout", "NHWC")
        if x.ndim == 4 and data_layout != model_layout:  # e.g. NHWC images into an NCHW (ONNX) model
            x = x.transpose(0, 3, 1, 2) if model_layout == "NCHW" else x.transpose(0, 2, 3, 1)
            state.batch = state.batch._replace(x=numpy.ascontiguousarray(x))
        state.trace = None if self.fused else state.explainer.forward(x)


class Lrp:
    """Explain each batch for ``explain.target`` (from the forward step's trace, or in one pass with it)."""

    def process(self, state: State) -> None:
        target = _get(state.cfg, "explain.target", "pred")
        if isinstance(target, str) and target.lstrip("-").isdigit():
            target = int(target)
        x = state.batch.x if state.trace is None else None
        state.explanation = state.explainer.explain(x, trace=state.trace, target=target,
                                                    labels=class_labels(state.batch.labels))


class Evaluate:
    """Per-sample metrics (``evaluate.metrics``), stored by ``save``.

    Their means and the objective (the mean of ``evaluate.objective``) are computed by
    :func:`finalize_outputs` from the store's ``metrics/`` datasets, so a resumed run
    reports what an uninterrupted one does (running totals serve pipelines without ``save``).
    """

    def process(self, state: State) -> None:
        from lrpflow.evaluate import evaluate

        e = dict(state.cfg.get("evaluate") or {})
        names = list(e.get("metrics") or [])
        params = {k: v for k, v in dict(e.get("params") or {}).items() if k in names}  # only the requested metrics
        if not names:
            state.metrics = {}
            return
        x = None
        if self._reads_input(names):
            x_in = state.trace.input if state.trace is not None else state.explainer.prepare(state.batch.x)
            x = x_in if state.model.layout == "NHWC" else state.model.from_nhwc(x_in)
        details = state.extras["metric_details"] = {}  # perturbation curves, stored per row by the save step
        state.metrics = {k: to_numpy(v) for k, v in evaluate(names, state.model, x, state.explanation, details=details,
                                                             **params).items()}
        for k, v in state.metrics.items():
            tot = state.totals.setdefault(k, [0.0, 0])
            tot[0] += float(numpy.sum(v))
            tot[1] += int(numpy.size(v))

    def _reads_input(self, names: list[str]) -> bool:
        """Whether a requested metric reads the batch (``uses_input``, default True); looked up once per run.

        An unknown name counts as reading it (``evaluate()`` then names the metrics it knows).
        """
        from lrpflow.plugins import registries

        key = tuple(names)
        if getattr(self, "_reads", (None, True))[0] != key:
            metrics = registries().metrics
            self._reads = (key, any(getattr(metrics.get(n), "uses_input", True) if n in metrics else True
                                    for n in names))
        return self._reads[1]


class Render:
    """Heatmaps of the first ``render.max_images`` rows in every colormap, and a grid.

    Each file is named by the dataset row it shows (``<row>_<cmap>.png``). With a ``save`` step, the
    images are drawn from exactly what the store holds for those rows: while later batches are
    explained, a background :class:`~lrpflow.finalize.RenderJob` draws them once the first rows are in
    (a run resumed past them has :func:`finalize_outputs` draw them from the store). Without a store,
    ``finalize_outputs`` draws the rows collected here.
    """

    def process(self, state: State) -> None:
        r = dict(state.cfg.get("render") or {})
        kept = state.extras.setdefault("render_rows", [])
        want = int(r.get("max_images", 0)) - len(kept)
        if not r.get("enabled", True) or want <= 0:
            return
        b, exp = state.batch, state.explanation
        x, rel = to_numpy(b.x[:want]), to_numpy(exp.relevance[:want])
        kept.extend((b.start + i, x[i], rel[i]) for i in range(len(x)))
        state.extras["method"] = exp.method
        if "save" in list(state.cfg.get("pipeline") or []) and kept[0][0] == state.rows[0]:
            head = state.extras.setdefault("render_head", {"logits": [], "label": [], "source": []})
            k = len(x)
            head["logits"].extend(to_numpy(exp.logits[:k]).astype(numpy.float64))
            labels = class_labels(b.labels)
            head["label"].extend([-1] * k if labels is None else [int(v) for v in labels[:k]])
            files = source_files(state.source)
            if files is not None:
                head["source"].extend(str(files[i]) for i in range(b.start, b.start + k))
            if len(kept) >= int(r.get("max_images", 0)):
                self._start(state, r)

    def finish(self, state: State) -> None:
        r = dict(state.cfg.get("render") or {})
        if "render_head" in state.extras and "render_job" not in state.extras:
            self._start(state, r)  # fewer rows than render.max_images

    @staticmethod
    def _start(state: State, r: dict[str, Any]) -> None:
        from lrpflow.finalize import RenderJob
        from lrpflow.store import StoreLayout

        kept, head = state.extras["render_rows"], state.extras.pop("render_head")
        dtype = StoreLayout.relevance_dtype  # what the save step's store keeps (its default)
        shown = {"relevance": numpy.stack([k[2] for k in kept]).astype(dtype),
                 "index": numpy.asarray([k[0] for k in kept], dtype=numpy.int64),
                 "logits": numpy.stack(head["logits"]), "label": numpy.asarray(head["label"], dtype=numpy.int64)}
        if head["source"]:
            shown["source"] = numpy.asarray(head["source"], dtype=object)
        token_ids = Save._token_ids(state)
        for key in ("mask", "tokens"):  # token data: what the store keeps of these rows (Save.process)
            values = getattr(state.source, key, None)
            if values is not None and token_ids:
                shown[key] = numpy.asarray(values)[shown["index"]]
        if "tokens" in shown:  # cut as the store cuts them
            from lrpflow.store.layout import cut_token

            shown["tokens"] = numpy.array([[cut_token(str(t)).decode("utf-8") for t in row]
                                           for row in shown["tokens"]], dtype=object)
        x = numpy.asarray(state.source[shown["index"]])  # the input rows, read here: the source is not shared
        state.extras["render_job"] = RenderJob(state.output_dir, r, shown, x, _plain(state.cfg),
                                               str(getattr(state.model, "layout", "NHWC")), state.explanation.method,
                                               dtype)


def class_labels(labels: Any) -> numpy.ndarray | None:
    """Labels as int64 class indices: one-hot rows become their argmax, integral floats are cast."""
    if labels is None:
        return None
    lab = numpy.asarray(labels)
    if lab.ndim == 2:
        lab = lab.argmax(axis=1) if lab.shape[1] > 1 else lab[:, 0]
    if lab.dtype.kind == "f":
        if not numpy.all(numpy.isfinite(lab)) or not numpy.all(lab == numpy.round(lab)):
            raise ConfigError("labels must be class indices (integers) or one-hot rows")
        lab = lab.astype(numpy.int64)
    return lab


class Save:
    """Write every batch to the job's HDF5 result store; resume a killed run where it stopped.

    Batches are appended on a background thread (:class:`~lrpflow.store.background.BackgroundAppender`)
    while the next batch is explained; ``finish`` waits for them before the store is finished.
    """

    store: Any = None
    writer: Any = None

    def setup(self, state: State) -> None:
        s = dict(state.cfg.get("store") or {})
        path = state.output_dir / s.get("path", "results.h5")
        state.outputs["store"] = str(path)
        self.path = path
        self.settings = s
        self.store = None
        self.writer = None

    def _open(self, state: State) -> Any:
        from lrpflow.store import ResultStore

        from lrpflow.curve_store import CURVE

        exp = state.explanation
        ids = self._token_ids(state)
        attrs: dict[str, Any] = {"rows": list(state.rows), "method": exp.method,
                                 "model_layout": str(getattr(state.model, "layout", "NHWC"))}
        details = {m: d for m, d in (state.extras.get("metric_details") or {}).items() if CURVE in d}
        if details:
            attrs["curve_fractions"] = {m: [float(v) for v in numpy.asarray(d["fractions"])] for m, d in details.items()}
        return ResultStore.create(
            self.path, input_shape=exp.relevance.shape[1:], n_classes=exp.logits.shape[1], ledger_nodes=list(exp.ledger),
            intermediate={k: tuple(v.shape[1:]) for k, v in exp.intermediate.items()}, metrics=list(state.metrics),
            config=state.cfg, model_sha256=_model_sha(state), backend=str(_get(state.cfg, "backend.name", "numpy")),
            dtype=str(_get(state.cfg, "backend.dtype", "float32")), attrs=attrs,
            expected_rows=state.rows[1] - state.rows[0], target_width=1 if exp.target.ndim == 1 else exp.target.shape[1],
            chunk_rows=self.settings.get("chunk_rows") or int(_get(state.cfg, "data.batch_size", 64)),
            compression=self.settings.get("compression", "gzip"), resume=False,
            overwrite=bool(self.settings.get("overwrite", False)), source=source_files(state.source) is not None,
            curves={m: int(numpy.asarray(d[CURVE]).shape[1]) for m, d in details.items()},
            ids=ids, tokens=ids and getattr(state.source, "tokens", None) is not None)

    @staticmethod
    def _token_ids(state: State) -> bool:
        """Token-id data (a source with a padding mask) explained per token: ids and mask are stored."""
        mask = getattr(state.source, "mask", None)
        return mask is not None and tuple(state.explanation.relevance.shape[1:]) == tuple(mask.shape[1:])

    def process(self, state: State) -> None:
        from lrpflow.store.background import BackgroundAppender

        if self.store is None:
            self.store = state.store = self._open(state)
        if self.writer is None:
            self.writer = BackgroundAppender(self.store)
        b = state.batch
        extras: dict[str, Any] = {} if b.labels is None else {"label": class_labels(b.labels)}
        files = source_files(state.source)
        if files is not None and self.store.layout.has_source:
            extras["source"] = [str(files[i]) for i in range(b.start, b.start + len(b.x))]
        if self.store.layout.has_ids:
            rows = slice(b.start, b.start + len(b.x))
            extras["input_ids"] = numpy.asarray(to_numpy(b.x), dtype=numpy.int64)
            extras["mask"] = numpy.asarray(state.source.mask[rows], dtype=numpy.int8)
            if self.store.layout.has_tokens:
                extras["tokens"] = state.source.tokens[rows]
        metrics = dict(state.metrics)
        for m, _ in self.store.layout.curves:
            metrics[f"{m}_curve"] = numpy.asarray(state.extras["metric_details"][m]["curve"], dtype=numpy.float64)
        self.writer.append(state.explanation, index=numpy.arange(b.start, b.start + len(b.x)), **extras,
                           metrics=metrics)

    def stop_writer(self) -> None:
        """Wait for the queued batches (they are committed to the store) and end the writer thread."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.stop()

    def finish(self, state: State) -> None:
        self.stop_writer()
        if self.store is not None:
            self.store.finish()
            self.store.close()


def source_files(source: Any) -> Any:
    """The files a data source reads row by row (an image folder's ``files``), or None."""
    files = getattr(source, "files", None)
    return files if isinstance(files, (list, tuple)) and len(files) == len(source) else None


#: built-in steps, by registry name
STEPS = {"load_model": LoadModel, "load_data": LoadData, "forward": Forward, "lrp": Lrp, "evaluate": Evaluate,
         "render": Render, "save": Save}


@hookimpl
def lrpflow_register_steps(registry):  # noqa: ANN001 - typed in the hookspec
    for name, cls in STEPS.items():
        registry.add(name, cls)


def _model_sha(state: State) -> str:
    """sha256 of the model file, hashed once per run."""
    from lrpflow.store import sha256_file

    if "model_sha256" not in state.extras:
        path = state.outputs.get("model")
        state.extras["model_sha256"] = sha256_file(path) if path and os.path.exists(path) else ""
    return state.extras["model_sha256"]
