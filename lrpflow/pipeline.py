"""Pipelines: ordered steps of a config, streaming a dataset in batches.

A step is a registered plugin (``lrpflow_register_steps``; the built-in ones are in
:mod:`lrpflow.steps`): a class whose instances may define ``setup(state)``,
``process(state)`` (once per batch) and ``finish(state)``.
:func:`run` builds the steps named in ``cfg.pipeline``, calls every ``setup``, streams
the data in batches of ``data.batch_size`` (memory stays bounded), calls every
``process`` per batch, then every ``finish``, and returns the objective metric.
Everything here is a plain function of a config (a mapping or OmegaConf object); only
:mod:`lrpflow.cli` knows Hydra.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrpflow.errors import ConfigError, LrpflowError
from lrpflow.finalize import finalize_outputs, render_images  # noqa: F401 - the end of a run, re-exported
from lrpflow.progress import ProgressBar
from lrpflow.steps import (  # noqa: F401 - the steps and their helpers, re-exported
    LRP_KEYS, STEPS, Evaluate, Forward, LoadData, LoadModel, Lrp, Render, Save, State, _get, _model_sha, _plain,
    _require, build_layers, cached_model_path, class_labels, explainer_from_config, open_source, shard_rows,
    source_files, train_from_config)

log = logging.getLogger("lrpflow.pipeline")


#: config keys that may change between a killed run and its resumption (they do not change stored rows)
RESUME_IGNORES = ("progress", "render", "evaluate.objective", "store.overwrite", "paths.output_root")


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check every name a config refers to before any work (steps, rules, composites, metrics, objective, colormaps).

    Raises
    ------
    ConfigError / UnknownNameError
        Naming the config field and the names lrpflow knows.
    """
    from lrpflow.errors import UnknownNameError
    from lrpflow.targets import is_multi_target
    from lrpflow.plugins import registries

    regs = registries()

    def check(registry: Any, name: Any, field: str) -> None:
        if not isinstance(name, str):
            raise ConfigError(f"{field} must be a name, got {name!r}")
        if name not in registry:
            raise UnknownNameError(f"{field}: unknown {registry.kind[:-1].replace('_', ' ')} {name!r}; "
                                   f"known: {', '.join(sorted(registry.names()))}")

    names = list(cfg.get("pipeline") or [])
    if not names:
        raise ConfigError("the config's pipeline is empty")
    for i, name in enumerate(names):
        check(regs.steps, name, f"pipeline[{i}]")
    target = _get(cfg, "explain.target", "pred")
    if "lrp" in names and is_multi_target(target):
        raise ConfigError(f"explain.target={target!r} asks for one map per target, (N, K, ...), which the pipeline's "
                          "result store does not hold; use explain.target=topk:K (one map of the K classes together) "
                          "or the Python API: lrpflow.explain(model, x, target='each:topk:K')")
    lrp = dict(cfg.get("lrp") or {})
    if "lrp" in names or "forward" in names:
        if lrp.get("rule") is None and lrp.get("composite") is None:
            raise ConfigError("the lrp config needs 'rule' or 'composite'")
        if isinstance(lrp.get("rule"), str):
            check(regs.rules, lrp["rule"], "lrp.rule")
        if isinstance(lrp.get("composite"), str):
            check(regs.composites, lrp["composite"], "lrp.composite")
        elif isinstance(lrp.get("composite"), Mapping):
            from lrpflow.composites import Composite

            Composite.from_config(lrp["composite"])
    e = dict(cfg.get("evaluate") or {})
    metrics = list(e.get("metrics") or [])
    if "evaluate" in names:
        for i, name in enumerate(metrics):
            check(regs.metrics, name, f"evaluate.metrics[{i}]")
        objective = e.get("objective")
        if objective is not None and objective not in metrics:
            raise ConfigError(f"evaluate.objective {objective!r} is not among evaluate.metrics {metrics}")
    r = dict(cfg.get("render") or {})
    if "render" in names and r.get("enabled", True):
        for i, name in enumerate(r.get("cmaps") or []):
            check(regs.colormaps, name, f"render.cmaps[{i}]")


def run(cfg: Any, output_dir: str | os.PathLike[str] | None = None) -> float | None:
    """Run the pipeline of a config; returns the objective (mean of ``evaluate.objective`` over the store).

    ``output_dir`` (default ``paths.output_dir``, else the current directory) receives the
    store, the images and ``summary.json``; it is locked for the run (one run per
    directory). Every name in the config is checked before the first batch. A killed run
    resumes from its store; a job whose store is complete only finishes its missing
    outputs (:func:`finalize_outputs`), without computing relevance again.
    """
    from lrpflow.plugins import registries
    from lrpflow.store import RunLock

    cfg = _plain(cfg)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a config must be a mapping, got {type(cfg).__name__}")
    out = Path(output_dir or _get(cfg, "paths.output_dir") or ".")
    validate_config(cfg)
    with RunLock(out):
        state = State(cfg=dict(cfg), output_dir=out)
        steps = [(n, registries().steps.get(n)()) for n in cfg["pipeline"]]
        save = next((s for n, s in steps if isinstance(s, Save)), None)
        try:
            return _run_steps(state, steps, save)
        finally:
            if save is not None:
                try:
                    save.stop_writer()  # rows already computed reach the store before it closes
                except Exception as err:  # noqa: BLE001 - the run's own error is the one to report
                    log.warning("the store writer failed while the run stopped: %s", err)
                if save.store is not None:
                    save.store.close()


def _run_steps(state: State, steps: list[tuple[str, Any]], save: Save | None) -> float | None:
    cfg = state.cfg
    t0 = time.perf_counter()
    for name, step in steps:
        if hasattr(step, "setup"):
            log.debug("setup %s", name)
            step.setup(state)
    state.timings["setup"] = time.perf_counter() - t0
    processing = [(n, s) for n, s in steps if hasattr(s, "process")]
    complete = False
    if processing:
        if state.source is None:
            raise ConfigError("the pipeline processes batches but no step loaded data (add load_data)")
        start = state.rows[0]
        if save is not None:
            start, complete = _resume_point(save, state)
        if complete:
            log.info("%s is complete; finishing the job's outputs from it", save.path)
        else:
            lo, hi = state.rows
            bs = int(_get(cfg, "data.batch_size", 64))
            bar = ProgressBar(hi - start, enabled=bool(cfg.get("progress", True)), label="explaining")
            t_loop = time.perf_counter()
            try:
                for batch in state.source.batches(bs, start=start, stop=hi):
                    state.batch = batch
                    for name, step in processing:
                        step.process(state)
                    bar.update(len(batch.x))
            finally:
                bar.close()
            # the batches' wall time: heatmaps/s = rows computed / batches (the store's last writes are in finish)
            state.timings["batches"] = time.perf_counter() - t_loop
            state.timings["rows computed"] = hi - start
    t_finish = time.perf_counter()
    if not complete:
        for name, step in steps:
            if hasattr(step, "finish"):
                step.finish(state)
    state.timings["finish"] = time.perf_counter() - t_finish
    store_path = save.path if save is not None and save.path.exists() else None
    summary = finalize_outputs(state.output_dir, store_path, cfg, state=state, started=t0)
    return summary["objective"]


def _resume_point(save: Save, state: State) -> tuple[int, bool]:
    """(first row to compute, whether the store is already complete) for this job.

    An unfinished store of the same job is reopened and continued after its last complete
    row; a complete one is kept (its outputs are finished from it) if it was computed
    with the same config and model.
    """
    from lrpflow.store import ResultStore, StoreReader, config_diff

    partial = Path(str(save.path) + ".partial")
    overwrite = bool(save.settings.get("overwrite"))
    if save.path.exists() and not partial.exists():
        if overwrite:
            save.path.unlink()
            return state.rows[0], False
        with StoreReader.open(save.path) as done:
            stored_sha = str(done.attrs.get("model_sha256", ""))
            diff = config_diff(done.config, _config_yaml(state.cfg), RESUME_IGNORES)
            n = len(done)
        if diff or (stored_sha and stored_sha != _model_sha(state)):
            why = "; ".join(diff) if diff else "the model file differs"
            raise LrpflowError(f"{save.path} exists and is complete, from another run ({why}); set store.overwrite=true "
                               f"or choose another output directory")
        if n != state.rows[1] - state.rows[0]:
            raise LrpflowError(f"{save.path} is complete with {n} rows, this job has {state.rows[1] - state.rows[0]}; "
                               f"set store.overwrite=true or choose another output directory")
        return state.rows[1], True
    if not partial.exists():
        return state.rows[0], False
    if overwrite:
        partial.unlink()
        return state.rows[0], False
    save.store = state.store = ResultStore.open(save.path, "a", config=state.cfg, model_sha256=_model_sha(state),
                                  ignore_config_keys=RESUME_IGNORES)
    done = save.store.next_row
    log.info("resuming %s after %d complete rows", partial, done)
    return state.rows[0] + done, False


def _config_yaml(cfg: Mapping[str, Any]) -> str:
    from lrpflow.store import config_text

    return config_text(cfg)
