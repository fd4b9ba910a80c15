"""Pipeline throughput against bare ``explain(x)``: heatmaps per second and their ratio.

    python benchmarks/bench_pipeline.py [--shared ../shared] [--rows 10000] [--repeat 2] [--only explain] [override ...]

Runs ``experiment=mnist_lenet5`` (the toolbox's LeNet-5 on the MNIST test set, batch 256,
float32, LRP-ε) through :func:`lrpflow.pipeline.run` in three settings — evaluation and
rendering off, pixel flipping on (rendering off), and the experiment's defaults — and
times ``Explainer.explain(x)`` on the same rows, model, batch and dtype (the data already
in memory); extra arguments are Hydra overrides for every run (e.g. ``store.compression=lzf``).
Prints per setting the whole run's heatmaps/s and its ratio to explain(x) (best times,
and the median and range of each round's ratio to the bare run just before it), the same
for the batch loop alone (``timings.batches`` in ``summary.json``: no model or data
loading, no store finalisation or report), and a JSON line. No pass/fail: the numbers depend on the machine (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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


class BareExplain:
    """``explain(x)`` and ``forward(x)`` alone over ``rows`` rows in batches of ``data.batch_size``
    (the data already in memory, the explainer warmed up)."""

    def __init__(self, cfg, rows: int) -> None:  # noqa: ANN001
        from omegaconf import OmegaConf

        from lrpflow.io import load_model
        from lrpflow.pipeline import explainer_from_config, open_source

        plain = OmegaConf.to_container(cfg, resolve=True)
        model = load_model(plain["model"]["path"])
        if hasattr(model, "drop_softmax_output_layer"):
            model.drop_softmax_output_layer()
        source = open_source(plain["data"])
        self.bs, self.rows = int(plain["data"]["batch_size"]), rows
        self.x = numpy.ascontiguousarray(source[0:rows], dtype=numpy.float32)
        self.explainer = explainer_from_config(model, plain)
        self.explainer.explain(self.x[:self.bs])  # warm-up: rule caches, allocator

    def seconds(self, what: str = "explain") -> float:
        call = getattr(self.explainer, what)
        t0 = time.perf_counter()
        for lo in range(0, self.rows, self.bs):
            call(self.x[lo:lo + self.bs])
        return time.perf_counter() - t0


def pipeline(overrides: list[str], out: Path) -> tuple[float, float]:
    """Seconds of one whole ``run(cfg)`` (model and data loading, store, finalisation, report),
    and of its batch loop alone (``timings.batches`` of its ``summary.json``)."""
    from lrpflow.pipeline import run

    cfg = compose([*overrides, f"paths.output_dir={out}", "store.overwrite=true"])
    t0 = time.perf_counter()
    run(cfg)
    whole = time.perf_counter() - t0
    return whole, float(json.loads((out / "summary.json").read_text())["timings"]["batches"])


def per_round(bare: list[float], runs: list[float]) -> list[float]:
    """Each round's ratio of the bare explain(x) to the run timed just after it, sorted (robust to drifting load)."""
    return sorted(e / p for e, p in zip(bare, runs))


def spread(ratios: list[float]) -> str:
    return f"per round: median {statistics.median(ratios):4.2f}, {ratios[0]:4.2f}–{ratios[-1]:4.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("LRPFLOW_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--only", help="run only the settings whose name contains this")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every pipeline run")
    args = parser.parse_args(argv)
    base = ["experiment=mnist_lenet5", f"paths.shared={args.shared}", f"data.stop={args.rows}", "progress=false",
            *args.overrides]
    result: dict[str, dict[str, float]] = {}
    settings = {k: v for k, v in SETTINGS.items() if not args.only or args.only in k}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(base)
        bare = BareExplain(cfg, args.rows)
        times: dict[str, list[float]] = {"explain": [], "forward": [], **{k: [] for k in settings}}
        loops: dict[str, list[float]] = {k: [] for k in settings}
        for r in range(args.repeat):  # interleaved rounds: load drifting over the run hits every setting alike
            times["explain"].append(bare.seconds("explain"))
            times["forward"].append(bare.seconds("forward"))
            for k, (name, extra) in enumerate(settings.items()):
                whole, loop = pipeline([*base, *extra], Path(tmp) / f"{k}_{r}")
                times[name].append(whole)
                loops[name].append(loop)
        best = {k: min(v) for k, v in times.items()}
        explain_s, forward_s = best["explain"], best["forward"]
        steps = int(cfg.evaluate.params.pixel_flipping.steps)
        print(f"{'bare explain(x)':<44} {args.rows / explain_s:8.0f} heatmaps/s   (forward alone {forward_s:.2f} s; "
              f"best of {args.repeat} interleaved rounds)")
        result["explain"] = {"seconds": explain_s, "per_second": args.rows / explain_s, "forward_seconds": forward_s,
                             "all_seconds": times["explain"]}
        # pixel flipping's own work: the explanation plus steps+1 forward passes of every batch
        flip_budget = explain_s + (steps + 1) * forward_s
        for name, extra in settings.items():
            s = best[name]
            ratio = explain_s / s
            paired, steady = per_round(times["explain"], times[name]), per_round(times["explain"], loops[name])
            line = f"{name:<44} {args.rows / s:8.0f} heatmaps/s   {ratio:5.2f} × explain(x)   ({spread(paired)})"
            result[name] = {"seconds": s, "per_second": args.rows / s, "ratio_to_explain": ratio,
                            "ratio_per_round": paired, "all_seconds": times[name], "loop_seconds": loops[name],
                            "loop_ratio_per_round": steady}
            if "evaluate=none" not in extra:
                result[name]["cost_over_flip_work"] = s / flip_budget
                line += f"   cost {s / flip_budget:4.2f} × (explain + {steps + 1} forwards)"
            print(line)
            print(f"{'':<4}{'batch loop alone':<40} {args.rows / min(loops[name]):8.0f} heatmaps/s   "
                  f"({spread(steady)} × explain(x))")
    print(json.dumps({"rows": args.rows, "results": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
