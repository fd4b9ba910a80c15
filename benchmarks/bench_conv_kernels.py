#!/usr/bin/env python
"""Per-layer times of the numpy and onnxruntime convolution kernels (lrpflow.layers.ort_conv).

    python benchmarks/bench_conv_kernels.py --threads 1 --points lenet:16,lenet:256,vgg11:64,resnet18:32,wide:16

For every Conv2d of each point's network (network:batch, as in bench_lrp.py) it times, interleaved
in one process, the forward convolution (numpy vs onnxruntime) and the transpose (numpy vs the
flipped Conv vs ConvTranspose), on the plain weight (ε) and on α2β1's weights (stacked
``[W⁺; W⁻]`` forward with 2·C_in inputs, ``[W⁺, W⁻]`` transpose from 2·C_out channels), and
prints each ratio to numpy and what ``auto`` picks. These ratios set ``choose_forward`` and
``choose_transpose``.
"""
from __future__ import annotations

import argparse
import sys

import bench_lrp  # this script's folder is on sys.path when it runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--points", default="lenet:16,lenet:256,vgg11:64,resnet18:32,wide:16")
    p.add_argument("--min-runs", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--shared", default=bench_lrp.DEFAULT_SHARED)
    args = p.parse_args(argv)
    bench_lrp.set_threads(args.threads)
    import numpy as np

    from lrpflow.layers import Conv2d
    from lrpflow.layers import _windows as win
    from lrpflow.layers import ort_conv

    rng = np.random.default_rng(0)
    seen = set()
    print(f"{'point':<12} {'layer':<34} {'variant':<6} {'np fwd ms':>9} {'ort':>5} {'np T ms':>8} {'flip':>5} "
          f"{'convT':>5}  auto")
    for point in args.points.split(","):
        net, batch = point.split(":")
        n = int(batch)
        model = bench_lrp.build_lrpflow(net, args.shared)
        x_all = bench_lrp.load_mnist(args.shared, 16)[0] if net == "lenet" else None
        shapes = model.infer_shapes(tuple(model.to_nhwc(bench_lrp.net_input(net, x_all, 1)).shape[1:]))
        for node in model.nodes:
            layer = node.layer
            if not isinstance(layer, Conv2d) or layer.groups != 1:
                continue
            h, w, cin = shapes[node.inputs[0]]
            for variant in ("eps", "a2b1"):
                kh, kw = layer.kernel
                geo = (n, h, w, cin, layer.n, kh, kw, layer.stride, layer.pads, variant)
                if geo in seen:
                    continue
                seen.add(geo)
                wt = rng.normal(size=(kh, kw, cin, layer.n)).astype(np.float32)
                x = rng.random((n, h, w, cin), dtype=np.float32)
                wf, wtr = wt, wt
                if variant == "a2b1":
                    x = np.concatenate([x, -x], axis=-1)
                    wf = np.concatenate([np.maximum(wt, 0), np.minimum(wt, 0)], axis=-2)
                    wtr = np.concatenate([np.maximum(wt, 0), np.minimum(wt, 0)], axis=-1)
                    xin_shape = (n, h, w, cin)
                else:
                    xin_shape = x.shape
                st, pads = layer.stride, layer.pads
                cache_np, cache_ort = {}, {}
                y = win.conv_forward(x, wf, st, pads, cache_np)
                s = rng.normal(size=(*y.shape[:3], wtr.shape[3])).astype(np.float32)

                def ort(fn):
                    def call():
                        with ort_conv.use_conv_kernel("onnxruntime"):
                            return fn()
                    return call

                def ort_t(how):
                    def call():
                        old = ort_conv.choose_transpose
                        ort_conv.choose_transpose = lambda *a, **k: how
                        try:
                            with ort_conv.use_conv_kernel("onnxruntime"):
                                return ort_conv.conv_transpose(s, wtr, st, pads, xin_shape, cache_ort)
                        finally:
                            ort_conv.choose_transpose = old
                    return call

                flip_ok = ort_conv.choose_transpose(cin, layer.n, (kh, kw), st, pads, y.shape[1:3], forced=True) == "flip"
                cases = [bench_lrp.Case(("np_f",), lambda: win.conv_forward(x, wf, st, pads, cache_np), lambda: None),
                         bench_lrp.Case(("ort_f",), ort(lambda: ort_conv.conv_forward(x, wf, st, pads, cache_ort)),
                                        lambda: None),
                         bench_lrp.Case(("np_t",), lambda: win.conv_transpose(s, wtr, st, pads, xin_shape, cache_np),
                                        lambda: None),
                         bench_lrp.Case(("convT",), ort_t("convT"), lambda: None)]
                if flip_ok:
                    cases.append(bench_lrp.Case(("flip",), ort_t("flip"), lambda: None))
                bench_lrp.measure(cases, args.min_time, args.min_runs)
                med = {c.key[0]: c.median for c in cases}
                fwd_auto = ort_conv.choose_forward(x.shape[3], wf.shape[3], (kh, kw), st, y.shape[1:3])
                t_auto = ort_conv.choose_transpose(cin, wtr.shape[3], (kh, kw), st, pads, y.shape[1:3])
                name = f"{kh}x{kw}/{st[0]} {x.shape[3]}->{wf.shape[3]} {h}x{w} ({wtr.shape[3]}T)"
                flip = f"{med['flip'] / med['np_t']:5.2f}" if "flip" in med else "    -"
                print(f"{point:<12} {name:<34} {variant:<6} {med['np_f'] * 1e3:9.2f} {med['ort_f'] / med['np_f']:5.2f} "
                      f"{med['np_t'] * 1e3:8.2f} {flip} {med['convT'] / med['np_t']:5.2f}  "
                      f"fwd={'ort' if fwd_auto else 'np'} T={t_auto or 'np'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
