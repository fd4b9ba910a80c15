#!/usr/bin/env python
"""cProfile of lrpflow explanations on the CNN cases of ``cnn_cases.py`` (needs torch and lrpflow-onnx).

    python benchmarks/profile_cnn.py --case resnet18 --batch 32 --rule alpha2beta1 [--threads 1] [--top 15]

One untimed call, then ``--calls`` profiled calls of ``Explainer.explain`` with ``workers=1``
(cProfile sees only the calling thread), sorted by self time (``--sort cumtime``: with callees). Rules: epsilon (ε = 0.01),
alpha2beta1, epsilon_plus_flat.
"""
from __future__ import annotations

import argparse
import os
import sys

RULES = {"epsilon": dict(rule="epsilon", epsilon=0.01), "alpha2beta1": dict(rule="alpha_beta", alpha=2.0, beta=1.0),
         "epsilon_plus_flat": dict(composite="epsilon_plus_flat")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="resnet18", help="vgg11, resnet18, wide or lenet (default %(default)s)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rule", default="alpha2beta1", choices=sorted(RULES))
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default %(default)s)")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--sort", default="tottime", choices=("tottime", "cumtime"),
                   help="order of the rows: self time or time with callees (default %(default)s)")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import cProfile
    import pstats

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cnn_cases

    import lrpflow

    model, _ = cnn_cases.build(args.case)
    x = cnn_cases.inputs(args.case, args.batch)
    explainer = lrpflow.Explainer(model, workers=1, **RULES[args.rule])
    explainer.explain(x)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        explainer.explain(x)
    prof.disable()
    pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
