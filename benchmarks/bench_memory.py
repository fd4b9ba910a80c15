"""Peak memory of one explanation, lrpflow against zennit, measured the same way for both (peak RSS).

    python benchmarks/bench_memory.py [--points lenet:256,vgg11:64,resnet18:32,wide:16,mlp:256] [--methods epsilon]

tracemalloc (``bench_lrp.py``'s ``peak MiB``) sees numpy's buffers but not torch's allocator, so it
cannot compare the two. Here every (network, batch, implementation, method) runs in a fresh
process: it builds the network and the input (as ``bench_lrp.py`` does), explains twice to warm
up (weight caches, onnxruntime sessions, autograd buffers), returns freed heap pages to the
system (glibc ``malloc_trim(0)``), resets the kernel's peak-RSS counter (``5`` into
``/proc/self/clear_refs``), reads ``VmRSS``, explains once more and reads ``VmHWM``. The
difference is the resident memory that one explanation added at its peak — for both libraries
its own buffers, the allocator's slack included (onnxruntime's arena, warmed up, is not
counted again). zennit: the composites of ``bench_lrp.py`` (ε = 0.01 on Conv/Linear). Linux only;
2 threads (``--threads``). Prints a table and a JSON line; no pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import bench_lrp  # this script's folder is on sys.path when it runs



def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure(fn) -> float:
    """MiB of resident memory one call of ``fn`` adds at its peak (see the module docstring)."""
    import ctypes

    fn()
    fn()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    return (peak - base) / 1024.0


def one(impl: str, net: str, batch: int, method: str, shared: str) -> dict:
    """The measurement of one point, in this (fresh) process."""
    import numpy as np

    import lrpflow

    model = bench_lrp.build_lrpflow(net, shared)
    x_all = None if net in bench_lrp.CNN_CASES else bench_lrp.load_mnist(shared, batch)[0]
    x = np.ascontiguousarray(bench_lrp.net_input(net, x_all, batch), dtype=np.float32)
    _, trace = model.run(model.to_nhwc(x))
    trace_mib = sum(v.nbytes for v in trace.values.values()) / 2**20
    del trace
    args = {"epsilon": dict(rule="epsilon", epsilon=0.01), "alpha2beta1": dict(rule="alpha_beta", alpha=2.0, beta=1.0),
            "epsilon_plus_flat": dict(composite="epsilon_plus_flat")}[method]
    if impl == "lrpflow":
        explainer = lrpflow.Explainer(model, dtype="float32", **args)
        mib = _measure(lambda: explainer(x))
    else:
        import torch
        from zennit.attribution import Gradient

        tnet = bench_lrp.build_torch(net, model)
        xt = torch.from_numpy(bench_lrp.to_torch_layout(net, x))
        comp = bench_lrp.zennit_composite(method, first_is_dense=(net == "mlp"), network=net)
        with Gradient(model=tnet, composite=comp) as attributor:
            mib = _measure(lambda: attributor(xt, bench_lrp.zennit_attr_output))
    return {"impl": impl, "network": net, "batch": batch, "method": method, "peak_mib": mib, "trace_mib": trace_mib}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", default="lenet:256,vgg11:64,resnet18:32,wide:16,mlp:256,vgg11:1,resnet18:1,wide:1")
    p.add_argument("--methods", default="epsilon")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shared", default=bench_lrp.DEFAULT_SHARED)
    p.add_argument("--one", nargs=4, metavar=("IMPL", "NET", "BATCH", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        impl, net, batch, method = args.one
        print(json.dumps(one(impl, net, int(batch), method, args.shared)))
        return 0
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    rows = []
    print(f"{'network':<9} {'batch':>5}  {'method':<18} {'trace MiB':>9} {'lrpflow MiB':>11} {'zennit MiB':>10} {'lrpflow/zennit':>14}")
    for point in args.points.split(","):
        net, batch = point.split(":")
        for method in args.methods.split(","):
            got = {}
            for impl in ("lrpflow", "zennit"):
                run = subprocess.run([sys.executable, __file__, "--shared", args.shared, "--one", impl, net, batch, method],
                                     capture_output=True, text=True, env=env)
                if run.returncode != 0:
                    raise SystemExit(f"{impl} {point} {method} failed:\n{run.stderr[-2000:]}")
                got[impl] = json.loads(run.stdout.strip().splitlines()[-1])
            row = {"network": net, "batch": int(batch), "method": method, "trace_mib": got["lrpflow"]["trace_mib"],
                   "lrpflow_mib": got["lrpflow"]["peak_mib"], "zennit_mib": got["zennit"]["peak_mib"]}
            row["ratio"] = row["lrpflow_mib"] / row["zennit_mib"] if row["zennit_mib"] > 0 else None
            rows.append(row)
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            print(f"{net:<9} {batch:>5}  {method:<18} {row['trace_mib']:9.1f} {row['lrpflow_mib']:11.1f} "
                  f"{row['zennit_mib']:10.1f} {ratio:>14}", flush=True)
    print(json.dumps({"threads": args.threads, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
