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
            tail = f"  [{'; '.join(extra)}]" if extra else ""
            print(f"  {e.name:<24} {e.plugin}{tail}")
    return 0
