"""Command-line entry points (the only module that may import hydra)."""
from __future__ import annotations

import argparse
import sys

from lrpflow.errors import LrpflowError


def info(argv: list[str] | None = None) -> int:
    """``lrpflow-info [NAME]``: every registered name, or one of them in detail.

    Without NAME: every registered layer, rule, composite, reader, writer, renderer,
    colormap, metric and step with the plugin that provided it. With NAME (a name or an
    alias): what it is, its parameters with their defaults and its docstring. ``lrpflow-info
    conventions``: the LRP conventions lrpflow follows (rule scope, γ, BatchNorm folding, ...) and their papers.
    """
    from lrpflow import __version__
    from lrpflow.plugins import build_registries, make_plugin_manager

    parser = argparse.ArgumentParser(prog="lrpflow-info", description="Registered plugins of lrpflow; "
                                     "`lrpflow-info NAME` shows one rule, composite, reader, metric, ... in detail.")
    parser.add_argument("name", nargs="?", help="a registered name or alias (e.g. epsilon, pixel_flipping)")
    parser.add_argument("--kind", help="one registry only (e.g. rules)")
    args = parser.parse_args(argv)
    try:
        pm = make_plugin_manager()
        regs = build_registries(pm)
    except LrpflowError as err:
        print(f"lrpflow-info: {err}", file=sys.stderr)
        return 2
    if args.name == "conventions" and not args.kind:  # the field's conventions lrpflow follows, with their papers
        from lrpflow.conventions import CONVENTIONS

        print(CONVENTIONS)
        return 0
    if args.name:
        return _describe(regs, args.name, args.kind)
    print(f"lrpflow {__version__}; plugins: {', '.join(name for name, _ in pm.list_name_plugin())}")
    for registry in regs:
        if args.kind and registry.kind != args.kind:
            continue
        print(f"\n{registry.kind} ({len(registry)}):")
        for e in registry:
            extra = []
            if e.aliases:
                extra.append("aliases: " + ", ".join(e.aliases))
            if e.meta.get("suffixes"):
                extra.append("suffixes: " + ", ".join(e.meta["suffixes"]))
            if e.meta.get("patterns"):
                extra.append("patterns: " + ", ".join(e.meta["patterns"]))
            for flag, text in (("no_suffix", "files without suffix"), ("directories", "folders"),
                               ("globs", "glob patterns"), ("dataset", "bundled dataset")):
                if e.meta.get(flag):
                    extra.append(text)
            tail = f"  [{'; '.join(extra)}]" if extra else ""
            print(f"  {e.name:<24} {e.plugin}{tail}")
    return 0


# --- lrpflow-info NAME ------------------------------------------------------------------

#: leading arguments a kind's implementations take from lrpflow itself, not from the user
_FIXED_ARGS = {"metrics": ("model", "x", "explanation"), "renderers": ("relevance", "R", "r"),
               "colormaps": ("t",), "model_writers": ("model", "path"), "model_readers": ("path",),
               "data_readers": ("path",), "data_writers": ("data", "x", "path")}


def _describe(regs, name: str, kind: str | None) -> int:  # noqa: ANN001 - Registries
    """Print every registry entry called ``name``; 2 when there is none."""
    found = [(r.kind, r.entry(name)) for r in regs if (not kind or r.kind == kind) and name in r]
    if not found:
        from lrpflow.plugins import normalize

        known = sorted({e.name for r in regs for e in r})
        import difflib

        close = difflib.get_close_matches(normalize(name), known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"lrpflow-info: no registered name {name!r}{hint}; `lrpflow-info` lists them all", file=sys.stderr)
        return 2
    for i, (k, entry) in enumerate(found):
        if i:
            print()
        print(describe_entry(k, entry))
    return 0


def describe_entry(kind: str, entry) -> str:  # noqa: ANN001 - plugins.Entry
    """Text of ``lrpflow-info NAME``: kind, plugin, aliases, parameters with defaults, docstring."""
    import inspect

    impl = getattr(entry.impl, "parameters_of", entry.impl)  # a wrapper naming the function it forwards to
    singular = kind[:-1] if kind.endswith("s") else kind
    lines = [f"{entry.name} ({singular}, plugin {entry.plugin})"]
    if entry.aliases:
        lines.append("  aliases: " + ", ".join(entry.aliases))
    for key in ("suffixes", "patterns"):
        if entry.meta.get(key):
            lines.append(f"  {key}: " + ", ".join(entry.meta[key]))
    target = getattr(impl, "__module__", None), getattr(impl, "__qualname__", type(impl).__name__)
    lines.append(f"  implementation: {target[0]}.{target[1]}" if target[0] else f"  implementation: {target[1]}")
    try:
        sig = inspect.signature(impl)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        fixed = set(_FIXED_ARGS.get(kind, ()))
        params = [p for p in sig.parameters.values()
                  if p.name not in fixed and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if impl is not entry.impl and kind == "metrics":  # pixel_flipping(model, x, relevance, target, ...)
            params = [p for p in params if p.name != "relevance"]
        lines.append("  parameters:" if params else "  parameters: none")
        for p in params:
            default = "required" if p.default is p.empty else f"default {p.default!r}"
            note = "" if p.annotation is p.empty else f"  ({p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)})"
            lines.append(f"    {p.name}: {default}{note}")
    doc = inspect.getdoc(impl) or inspect.getdoc(entry.impl) or "(no docstring)"
    lines.append("")
    lines.extend("  " + line if line else "" for line in doc.splitlines())
    return "\n".join(lines)


# --- lrpflow (the Hydra app) --------------------------------------------------------------

#: exit status of a run stopped by bad config, files or data (an LrpflowError)
EXIT_USAGE = 2


class _UserError(SystemExit):
    """Leaves Hydra's task wrapper untouched (it only catches Exception) and exits with :data:`EXIT_USAGE`."""


def _log_to_files(err: BaseException) -> None:
    """The full traceback of ``err`` into the run's log files only (the terminal gets one line)."""
    import logging

    record = logging.getLogger("lrpflow").makeRecord(
        "lrpflow", logging.ERROR, __file__, 0, "run failed: %s", (err,), (type(err), err, err.__traceback__))
    seen = set()
    for logger in (logging.getLogger(), logging.getLogger("lrpflow")):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and id(handler) not in seen:
                seen.add(id(handler))
                handler.handle(record)
                handler.flush()


def _hydra_main(cfg) -> float | None:  # noqa: ANN001 - a DictConfig
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lrpflow.pipeline import run

    hc = HydraConfig.get()
    output_dir = cfg.paths.get("output_dir") or hc.runtime.output_dir
    try:
        return run(cfg, output_dir=output_dir)
    except Exception as err:
        _log_to_files(err)  # the log file keeps the traceback of every failure
        if not isinstance(err, LrpflowError) or os.environ.get("HYDRA_FULL_ERROR") == "1" or \
                hc.mode == RunMode.MULTIRUN:
            raise  # a bug, a developer asking for the traceback, or one job of a sweep: Hydra reports it
        print(f"lrpflow: error: {err}", file=sys.stderr)
        print(f"lrpflow: the full traceback is in {os.path.join(hc.runtime.output_dir, hc.job.name + '.log')}",
              file=sys.stderr)
        raise _UserError(EXIT_USAGE) from None


def main() -> None:
    """``lrpflow``: the Hydra app over ``conf/`` (the package ``lrpflow.conf``) (``lrpflow --help`` lists the config groups).

    A run stopped by bad config, files or data (an :class:`LrpflowError`) prints one short
    message and exits with status 2; the job's ``lrpflow.log`` keeps the full traceback
    (``HYDRA_FULL_ERROR=1`` shows it on the terminal too).
    """
    import hydra
    from omegaconf import OmegaConf

    from lrpflow import __version__
    from lrpflow.launchers import expand_auto_shards

    if "--version" in sys.argv[1:] or "-V" in sys.argv[1:]:  # lrpflow's version, not Hydra's
        print(f"lrpflow {__version__} (Hydra {hydra.__version__})")
        raise SystemExit(0)
    OmegaConf.register_new_resolver("lrpflow_version", lambda: __version__, replace=True)
    wrapped = hydra.main(version_base="1.3", config_path="pkg://lrpflow.conf", config_name="config")(_hydra_main)
    try:
        sys.argv[1:] = expand_auto_shards(sys.argv[1:])  # data.num_shards=auto: the cluster's CPU count
        wrapped()
    except LrpflowError as err:  # raised outside the task function (e.g. by a plugin while composing)
        import os

        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"lrpflow: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def join(argv: list[str] | None = None) -> int:
    """``lrpflow-join OUT SHARD...``: join shard stores into one file of HDF5 virtual datasets."""
    from lrpflow.store import join_main

    return join_main(argv)


class SweepSummary:
    """Hydra callback: after a multirun, a table of every job's parameters and metrics and a grid.

    Writes ``sweep_summary.csv``, ``sweep_summary.h5`` and ``sweep_grid.png`` into the sweep
    directory (the jobs' ``summary.json`` and ``results.h5`` are read back).
    """

    def __init__(self, max_images: int = 4) -> None:
        self.max_images = int(max_images)

    # the other callback events of Hydra's Callback protocol: nothing to do
    def on_run_start(self, config, **kwargs) -> None:  # noqa: ANN001
        pass

    def on_run_end(self, config, **kwargs) -> None:  # noqa: ANN001
        pass

    def on_multirun_start(self, config, **kwargs) -> None:  # noqa: ANN001
        pass

    def on_job_start(self, config, **kwargs) -> None:  # noqa: ANN001
        pass

    def on_job_end(self, config, job_return, **kwargs) -> None:  # noqa: ANN001
        pass

    def on_compose_config(self, config, config_name, overrides) -> None:  # noqa: ANN001
        pass

    def on_multirun_end(self, config, **kwargs) -> None:  # noqa: ANN001 - hydra's callback signature
        from lrpflow.sweep import summarize_sweep

        try:
            summarize_sweep(str(config.hydra.sweep.dir), max_images=self.max_images)
        except LrpflowError as err:
            print(f"lrpflow: sweep summary failed: {err}", file=sys.stderr)
