"""Pipeline throughput against bare ``explain(x)``: heatmaps per second and their ratio.

    python benchmarks/bench_pipeline.py [--shared ../shared] [--rows 10000] [--repeat 2] [--only explain] [override ...]

Runs ``experiment=mnist_lenet5`` (the toolbox's LeNet-5 on the MNIST test set, batch 256,
float32, LRP-ε) through :func:`lrpflow.pipeline.run` in three settings — evaluation and
rendering off, pixel flipping on (rendering off), and the experiment's defaults — and
times ``Explainer.explain(x)`` on the same rows, model, batch and dtype (the data already
in memory); extra arguments are Hydra overrides for every run (e.g. ``store.compression=lzf``).
Prints one line per setting with heatmaps/s and the pipeline/explain ratio, and
a JSON line. No pass/fail: the numbers depend on the machine (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "explain only (evaluate=none render=none)": ["evaluate=none", "render=none"],
    "pixel flipping on (render=none)": ["render=none"],
    "experiment defaults": [],
}


def compose(overrides: list[str]):  # noqa: ANN201 - a DictConfig
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="lrpflow.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def bare_explain(cfg, rows: int, repeat: int) -> tuple[float, float]:  # noqa: ANN001
    """Seconds for ``explain(x)``, and for ``forward(x)`` alone, over ``rows`` rows in batches of
    ``data.batch_size`` (best of ``repeat``)."""
    from omegaconf import OmegaConf

    from lrpflow.io import load_model
    from lrpflow.pipeline import explainer_from_config, open_source

    plain = OmegaConf.to_container(cfg, resolve=True)
    model = load_model(plain["model"]["path"])
    if hasattr(model, "drop_softmax_output_layer"):
        model.drop_softmax_output_layer()
    source = open_source(plain["data"])
    bs = int(plain["data"]["batch_size"])
    x = numpy.ascontiguousarray(source[0:rows], dtype=numpy.float32)
    explainer = explainer_from_config(model, plain)
    explainer.explain(x[:bs])  # warm-up: rule caches, allocator
    best, best_forward = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for lo in range(0, rows, bs):
            explainer.explain(x[lo:lo + bs])
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for lo in range(0, rows, bs):
            explainer.forward(x[lo:lo + bs])
        best_forward = min(best_forward, time.perf_counter() - t0)
    return best, best_forward


def pipeline(overrides: list[str], out: Path, repeat: int) -> float:
    from lrpflow.pipeline import run

    best = float("inf")
    for i in range(repeat):
        cfg = compose([*overrides, f"paths.output_dir={out / str(i)}", "store.overwrite=true"])
        t0 = time.perf_counter()
        run(cfg)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("LRPFLOW_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", help="run only the settings whose name contains this")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every pipeline run")
    args = parser.parse_args(argv)
    base = ["experiment=mnist_lenet5", f"paths.shared={args.shared}", f"data.stop={args.rows}", "progress=false",
            *args.overrides]
    result: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(base)
        explain_s, forward_s = bare_explain(cfg, args.rows, args.repeat)
        steps = int(cfg.evaluate.params.pixel_flipping.steps)
        print(f"{'bare explain(x)':<44} {args.rows / explain_s:8.0f} heatmaps/s   (forward alone {forward_s:.2f} s)")
        result["explain"] = {"seconds": explain_s, "per_second": args.rows / explain_s, "forward_seconds": forward_s}
        # pixel flipping's own work: the explanation plus steps+1 forward passes of every batch
        flip_budget = explain_s + (steps + 1) * forward_s
        for name, extra in SETTINGS.items():
            if args.only and args.only not in name:
                continue
            s = pipeline([*base, *extra], Path(tmp) / str(len(result)), args.repeat)
            ratio = explain_s / s
            line = f"{name:<44} {args.rows / s:8.0f} heatmaps/s   {ratio:5.2f} × explain(x)"
            result[name] = {"seconds": s, "per_second": args.rows / s, "ratio_to_explain": ratio}
            if "evaluate=none" not in extra:
                result[name]["cost_over_flip_work"] = s / flip_budget
                line += f"   cost {s / flip_budget:4.2f} × (explain + {steps + 1} forwards)"
            print(line)
    print(json.dumps({"rows": args.rows, "results": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
