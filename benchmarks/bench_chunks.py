#!/usr/bin/env python
"""Does splitting a batch over CPU worker threads pay? ``Explainer(workers=1)`` against the default split.

    python benchmarks/bench_chunks.py --threads 2 --points lenet:64,lenet:256,vgg11:64,resnet18:32,wide:16

For each point (network:batch) and rule, times the Explainer with ``workers=1`` (one chunk;
BLAS and onnxruntime use ``--threads`` threads), with the default plan (``chunks``: how many
it makes; ``--threads`` workers, one thread each) and forced into ``--threads`` equal chunks
(``chunk_size``), interleaved in one process (see bench_lrp.measure), and prints the medians
and the ratios to the whole batch. Networks as in
bench_lrp.py (vgg11, resnet18, wide need torch and lrpflow-onnx).
"""
from __future__ import annotations

import argparse
import sys

import bench_lrp  # this script's folder is on sys.path when it runs

RULES = {"epsilon": dict(rule="epsilon", epsilon=0.01), "alpha2beta1": dict(rule="alpha_beta", alpha=2.0, beta=1.0),
         "epsilon_plus_flat": dict(composite="epsilon_plus_flat")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--points", default="lenet:64,lenet:256,vgg11:64,resnet18:32,wide:16")
    p.add_argument("--rules", default="epsilon,alpha2beta1")
    p.add_argument("--min-runs", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--shared", default=bench_lrp.DEFAULT_SHARED)
    args = p.parse_args(argv)
    bench_lrp.set_threads(args.threads)
    import numpy as np

    import lrpflow
    from lrpflow.chunks import cpu_workers

    x_all = None
    print(f"threads {args.threads}, cpu_workers() = {cpu_workers()}")
    print(f"{'point':<14} {'rule':<18} {'chunks':>7} {'whole ms':>9} {'split ms':>9} {'split/whole':>11} {'forced ms':>9} {'forced/whole':>12}")
    for point in args.points.split(","):
        net, batch = point.split(":")
        n = int(batch)
        if net in ("lenet", "mlp") and x_all is None:
            x_all, _ = bench_lrp.load_mnist(args.shared, 256)
        model = bench_lrp.build_lrpflow(net, args.shared)
        x = bench_lrp.net_input(net, x_all, n).astype(np.float32)
        for rule in args.rules.split(","):
            whole = lrpflow.Explainer(model, dtype="float32", workers=1, **RULES[rule])
            split = lrpflow.Explainer(model, dtype="float32", **RULES[rule])
            forced = lrpflow.Explainer(model, dtype="float32", chunk_size=-(-n // args.threads), **RULES[rule])
            plan = split._chunks(model.to_nhwc(x), split.default_method[1], split._workers(x))
            cases = [bench_lrp.Case(("whole",), lambda e=whole: e(x), lambda: None),
                     bench_lrp.Case(("split",), lambda e=split: e(x), lambda: None),
                     bench_lrp.Case(("forced",), lambda e=forced: e(x), lambda: None)]
            bench_lrp.measure(cases, args.min_time, args.min_runs, settle=0.1)
            tw, ts, tf = (c.median for c in cases)
            print(f"{point:<14} {rule:<18} {len(plan):>7} {tw * 1e3:>9.2f} {ts * 1e3:>9.2f} {ts / tw:>11.2f} "
                  f"{tf * 1e3:>9.2f} {tf / tw:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
