"""Command-line entry points (the only module that may import hydra)."""
from __future__ import annotations

import argparse
import sys

from lrpflow.errors import LrpflowError


def info(argv: list[str] | None = None) -> int:
    """``lrpflow-info``: every registered layer, rule, composite, reader, writer, renderer and colormap."""
    from lrpflow import __version__
    from lrpflow.plugins import build_registries, make_plugin_manager

    parser = argparse.ArgumentParser(prog="lrpflow-info", description=info.__doc__)
    parser.add_argument("--kind", help="list one registry only (e.g. rules)")
    args = parser.parse_args(argv)
    try:
        pm = make_plugin_manager()
        regs = build_registries(pm)
    except LrpflowError as err:
        print(f"lrpflow-info: {err}", file=sys.stderr)
        return 2
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


def _hydra_main(cfg) -> float | None:  # noqa: ANN001 - a DictConfig
    from hydra.core.hydra_config import HydraConfig

    from lrpflow.pipeline import run

    output_dir = cfg.paths.get("output_dir") or HydraConfig.get().runtime.output_dir
    return run(cfg, output_dir=output_dir)


def main() -> None:
    """``lrpflow``: the Hydra app over ``lrpflow/conf`` (``lrpflow --help`` lists the config groups)."""
    import hydra

    from lrpflow.launchers import expand_auto_shards

    wrapped = hydra.main(version_base="1.3", config_path="pkg://lrpflow.conf", config_name="config")(_hydra_main)
    try:
        sys.argv[1:] = expand_auto_shards(sys.argv[1:])  # data.num_shards=auto: the cluster's CPU count
        wrapped()
    except LrpflowError as err:  # hydra re-raises after logging; keep the message short for users
        print(f"lrpflow: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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
