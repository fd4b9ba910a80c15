#!/usr/bin/env python3
"""GPU check of lrpflow's cupy backend: agreement with numpy, speed against the PyTorch floor, memory.

Phases (each under its own time budget, each guarded: a failure is recorded and the
next phase runs; the JSON is rewritten after every phase and on SIGTERM):

- ``env``: GPU model, cupy / CUDA / driver / torch / zennit versions, TF32 settings.
- ``agreement``: every registered rule and composite on LeNet-5, a VGG-style and a
  ResNet-style net (random weights), numpy vs the backend, float64 (max |Δ| / max |R|
  ≤ 1e-10) and float32 (≤ 1e-3; reported, with the worst cases listed).
- ``timing``: LeNet-5 and the MLP 784-1296-1296-1296-10 at batch 1024, ε (0.01) and
  α2β1 on every layer, against the PyTorch floor (forward + input gradient of the same
  network on the same device) and lrpflow's own forward pass.
- ``vgg``: VGG-16 (224×224, random weights) at batch 64 with ``epsilon_plus_flat``,
  against zennit's ``EpsilonPlusFlat`` (if it imports) and the floor; peak GPU memory of
  each (cupy: a memory-pool hook; torch: ``max_memory_allocated``).
- ``vgg256``: the same at batch 256 (bounded chunks: no out-of-memory).

``--dry-run`` runs every phase on tiny sizes with numpy (and torch on the CPU if it
imports), to check the script end to end without a GPU. Usage: see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from typing import Any

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

PHASES = ("env", "agreement", "timing", "vgg", "vgg256")
#: share of the total budget per phase (unused time rolls over to later phases)
SHARES = {"env": 0.03, "agreement": 0.30, "timing": 0.25, "vgg": 0.25, "vgg256": 0.17}
#: rule parameters for the agreement phase (rules that need some, or would run long)
RULE_PARAMS = {"alpha_beta": {"alpha": 2.0, "beta": 1.0}, "smoothgrad": {"n": 4}, "integrated_gradients": {"steps": 4}}
RANDOM_DRAWS = ("random", "smoothgrad")  # numpy and cupy draw different numbers
TOL = {"float64": 1e-10, "float32": 1e-3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for the JSON (default $OUT)")
    p.add_argument("--json-name", default="gpu_check.json")
    p.add_argument("--backend", default="cupy", choices=("cupy", "numpy"))
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on numpy: checks the script, measures nothing")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ",".join(PHASES))
    p.add_argument("--budget", type=float, default=270.0, help="seconds for all phases together (default %(default)s)")
    p.add_argument("--tag", default=None, help="name of this run in the JSON (default fp32 or tf32); a JSON "
                                               "already in --out keeps its other runs")
    p.add_argument("--tf32", action="store_true", help="CUPY_TF32=1 and TF32 in torch (matmul and cuDNN)")
    p.add_argument("--pytest-log", default=None, help="log of the `-m gpu` test run, summarised into the JSON")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch floor and zennit")
    p.add_argument("--methods", default=None, help="agreement phase: only these comma-separated rule/composite "
                                                   "names (default: every registered one)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.backend = "numpy"
    return args


# --- small helpers -------------------------------------------------------------------------


class Budget:
    """Deadlines per phase out of one total; time a phase leaves unused goes to the next ones."""

    def __init__(self, total: float, phases: list[str]) -> None:
        self.end = time.monotonic() + total
        self.left = list(phases)

    def start(self, phase: str) -> float:
        shares = sum(SHARES[p] for p in self.left)
        remaining = max(0.0, self.end - time.monotonic())
        self.left.remove(phase)
        return time.monotonic() + remaining * SHARES[phase] / shares


def out_of_time(deadline: float) -> bool:
    return time.monotonic() > deadline


class Device:
    """The array backend under test: namespace, synchronisation, peak-memory probe."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        if backend == "cupy":
            import cupy

            self.xp = cupy
            self.cupy = cupy
        else:
            self.xp = numpy
            self.cupy = None

    def sync(self) -> None:
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()

    def put(self, a: numpy.ndarray) -> Any:
        return self.xp.asarray(a)

    def peak_bytes(self, fn: Any) -> dict[str, Any]:
        """Run ``fn`` once; the most bytes cupy's pool had handed out meanwhile (hook) and the pool's size after."""
        if self.cupy is None:
            return {"peak_bytes": None, "note": "numpy: no device memory"}
        cp = self.cupy
        pool = cp.get_default_memory_pool()
        self.sync()
        pool.free_all_blocks()
        base = pool.used_bytes()

        class Peak(cp.cuda.MemoryHook):
            name = "lrpflow_gpu_check_peak"

            def __init__(self) -> None:
                self.now = self.peak = base

            def malloc_postprocess(self, **kw: Any) -> None:
                self.now += kw.get("mem_size", 0)
                self.peak = max(self.peak, self.now)

            def free_postprocess(self, **kw: Any) -> None:
                self.now -= kw.get("mem_size", 0)

        hook = Peak()
        with hook:
            fn()
            self.sync()
        return {"peak_bytes": int(hook.peak), "pool_total_bytes": int(pool.total_bytes()), "before_bytes": int(base)}


#: --dry-run: one timed run per case (the figures mean nothing there)
QUICK = False


def timed(fn: Any, sync: Any, deadline: float, min_runs: int = 3, min_time: float = 0.3, warmup: int = 1) -> dict[str, Any]:
    """Median wall time of ``fn`` (synchronised before and after every run) and the runs made."""
    if QUICK:
        min_runs, min_time, warmup = 1, 0.0, min(warmup, 1)
    for _ in range(warmup):
        fn()
        sync()
    times: list[float] = []
    while len(times) < min_runs or sum(times) < min_time:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if out_of_time(deadline) and times:
            break
    return {"ms": 1e3 * statistics.median(times), "runs": len(times), "all_ms": [round(1e3 * t, 3) for t in times]}


def rel_diff(a: Any, b: Any) -> float:
    a = numpy.asarray(a, dtype=numpy.float64)
    b = numpy.asarray(b, dtype=numpy.float64)
    scale = float(numpy.abs(b).max()) if b.size else 0.0
    return float(numpy.abs(a - b).max() / scale) if scale > 0 else float(numpy.abs(a - b).max(initial=0.0))


# --- torch (floor and zennit) -------------------------------------------------------------


class Torch:
    """PyTorch on the same device as the backend (CPU in a dry run), or why not."""

    def __init__(self, backend: str, tf32: bool, disabled: bool) -> None:
        self.torch = self.zennit = None
        self.note = self.zennit_note = ""
        if disabled:
            self.note = "disabled (--no-torch)"
            return
        try:
            import torch
        except Exception as err:  # noqa: BLE001 - any import failure means: no floor
            self.note = f"torch does not import: {err}"
            return
        self.torch = torch
        self.device = "cuda" if backend == "cupy" else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            self.torch, self.note = None, "torch has no CUDA device"
            return
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = True
        try:
            import zennit  # noqa: F401
            from zennit.attribution import Gradient
            from zennit.composites import EpsilonPlusFlat

            self.zennit = (Gradient, EpsilonPlusFlat)
            from importlib.metadata import version

            self.zennit_note = f"zennit {version('zennit')}"
        except Exception as err:  # noqa: BLE001
            self.zennit_note = f"zennit does not import: {err}"

    def sync(self) -> None:
        if self.torch is not None and self.device == "cuda":
            self.torch.cuda.synchronize()

    def tensor(self, x: numpy.ndarray) -> Any:
        from gpu_nets import nhwc_to_nchw

        return self.torch.as_tensor(nhwc_to_nchw(x), dtype=self.torch.float32, device=self.device)

    def floor(self, net: Any, x: Any) -> Any:
        """Forward + gradient of the predicted logit w.r.t. the input, times the input."""
        torch = self.torch

        def run() -> Any:
            with torch.enable_grad():
                xi = x.detach().requires_grad_(True)
                y = net(xi)
                mask = torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).to(y.dtype)
                (g,) = torch.autograd.grad((y * mask).sum(), xi)
                return g * xi.detach()

        return run

    def zennit_fn(self, net: Any, x: Any) -> Any:
        gradient, composite = self.zennit
        torch = self.torch
        attributor = gradient(model=net, composite=composite())
        attributor.__enter__()

        def run() -> Any:
            with torch.enable_grad():
                y = net(x)  # the explained class: the prediction, as lrpflow's target="pred"
                mask = torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).to(y.dtype)
                _, rel = attributor(x, mask)
                return rel

        run.close = lambda: attributor.__exit__(None, None, None)  # type: ignore[attr-defined]
        return run

    def peak_bytes(self, fn: Any) -> dict[str, Any]:
        if self.torch is None or self.device != "cuda":
            return {"peak_bytes": None, "note": "torch on the CPU: no device memory"}
        torch = self.torch
        self.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        self.sync()
        return {"peak_bytes": int(torch.cuda.max_memory_allocated()), "before_bytes": int(before)}


# --- phases ----------------------------------------------------------------------------------


def phase_env(ctx: dict[str, Any], deadline: float) -> dict[str, Any]:
    import lrpflow

    dev: Device = ctx["device"]
    tt: Torch = ctx["torch"]
    info: dict[str, Any] = {
        "backend": dev.backend, "dry_run": ctx["args"].dry_run, "python": platform.python_version(),
        "numpy": numpy.__version__, "lrpflow": getattr(lrpflow, "__version__", "?"),
        "lrpflow_file": os.path.dirname(lrpflow.__file__), "CUPY_TF32": os.environ.get("CUPY_TF32", "(unset)"),
        "CUPY_ACCELERATORS": os.environ.get("CUPY_ACCELERATORS", "(unset)"), "commit": os.environ.get("GPU_CHECK_COMMIT", "?"),
        "host": platform.node(), "cpu_count": os.cpu_count(),
    }
    if dev.cupy is not None:
        cp = dev.cupy
        rt = cp.cuda.runtime
        props = rt.getDeviceProperties(cp.cuda.Device().id)
        name = props.get("name", b"")
        info.update({
            "gpu": name.decode() if isinstance(name, bytes) else str(name),
            "gpu_memory_bytes": int(props.get("totalGlobalMem", 0)),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "cupy": cp.__version__, "cuda_runtime": rt.runtimeGetVersion(), "cuda_driver": rt.driverGetVersion(),
        })
    if tt.torch is not None:
        torch = tt.torch
        info.update({"torch": torch.__version__, "torch_cuda": getattr(torch.version, "cuda", None),
                     "torch_device": tt.device})
        if tt.device == "cuda":
            info.update({"torch_gpu": torch.cuda.get_device_name(0),
                         "torch_matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                         "torch_cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
                         "cudnn": torch.backends.cudnn.version()})
    info["torch_note"] = tt.note or "ok"
    info["zennit_note"] = tt.zennit_note
    return info


def _methods(only: str | None = None) -> list[tuple[str, str]]:
    from lrpflow.plugins import registries

    out = [("rule", e.name) for e in registries().rules] + [("composite", e.name) for e in registries().composites]
    if only:
        keep = {m.strip() for m in only.split(",")}
        out = [m for m in out if m[1] in keep]
    return out


def _explain(model: Any, x: Any, kind: str, name: str, dtype: str, backend: str | None) -> Any:
    import lrpflow
    from lrpflow.composites import Composite, Override
    from lrpflow.rules import Epsilon, make_rule

    spec: dict[str, Any] = {"rule": name, **RULE_PARAMS.get(name, {})} if kind == "rule" else {"composite": name}
    if name in ("winner_take_all", "proportional", "pass"):  # rules for max pools / shape-keeping layers
        where = "activation" if name == "pass" else "max_pool"
        spec = {"composite": Composite(Epsilon(0.01), overrides=[Override(make_rule(name), kind=where)])}
    return lrpflow.explain(model, x, dtype=dtype, backend=backend, **spec)


def phase_agreement(ctx: dict[str, Any], deadline: float) -> dict[str, Any]:
    from gpu_nets import lenet5, resnet_small, vgg_small

    from lrpflow.backend import to_numpy
    from lrpflow.errors import LrpflowError

    dev: Device = ctx["device"]
    n = 2 if ctx["args"].dry_run else 16
    rng = numpy.random.default_rng(1)
    nets = {"lenet5": lenet5(), "vgg_small": vgg_small(), "resnet_small": resnet_small()}
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    skipped: list[str] = []
    note = None
    for net_name, model in nets.items():  # nets in order of importance; both dtypes of a method together
        x = rng.uniform(-1, 1, (n, *model.input_shape))
        xd = dev.put(x)
        for kind, name in _methods(ctx["args"].methods):
            for dtype in ("float64", "float32"):
                if note is None and out_of_time(deadline):
                    note = f"budget spent at {net_name} {name} {dtype}"
                if note is not None:
                    break
                try:
                    ref = _explain(model, x, kind, name, dtype, None)
                except LrpflowError as err:
                    skipped.append(f"{net_name} {name}: {type(err).__name__}")
                    continue
                row: dict[str, Any] = {"dtype": dtype, "net": net_name, "kind": kind, "method": name}
                try:
                    t = time.perf_counter()
                    got = _explain(model, xd, kind, name, dtype, dev.backend)
                    rel = to_numpy(got.relevance)
                    row["seconds"] = round(time.perf_counter() - t, 3)
                    row["finite"] = bool(numpy.isfinite(rel).all())
                    row["logits_rel_diff"] = rel_diff(to_numpy(got.logits), ref.logits)
                    if name in RANDOM_DRAWS:
                        row["rel_diff"] = None
                        row["ok"] = row["finite"] and rel.shape == ref.relevance.shape
                        row["note"] = "random draws differ between backends: shape and finiteness only"
                    else:
                        row["rel_diff"] = rel_diff(rel, ref.relevance)
                        row["ok"] = row["finite"] and row["rel_diff"] <= TOL[dtype]
                except Exception as err:  # noqa: BLE001 - recorded, the next method runs
                    row.update({"ok": False, "error": f"{type(err).__name__}: {err}",
                                "traceback": traceback.format_exc(limit=6)})
                rows.append(row)
                if not row["ok"]:
                    failures.append(row)
    summary = {dt: {"methods": sum(r["dtype"] == dt for r in rows), "ok": sum(r["dtype"] == dt and r["ok"] for r in rows),
                    "worst_rel_diff": max((r["rel_diff"] for r in rows if r["dtype"] == dt and r.get("rel_diff") is not None),
                                          default=None)}
               for dt in ("float64", "float32")}
    return {"complete": note is None, "note": note, "batch": n, "tolerance": TOL, "summary": summary,
            "failures": failures, "skipped": skipped, "rows": rows}


def _lrp_rows(model: Any, x: numpy.ndarray, methods: dict[str, dict[str, Any]], ctx: dict[str, Any], deadline: float,
              torch_net: Any = None, chunk_size: int | None = None, memory: bool = False) -> list[dict[str, Any]]:
    """Time lrpflow's forward and each method, and the torch floor (and zennit) on the same batch."""
    import lrpflow

    dev: Device = ctx["device"]
    tt: Torch = ctx["torch"]
    xd = dev.put(x.astype(numpy.float32))
    n = x.shape[0]
    rows = []
    fwd = lrpflow.Explainer(model, rule="epsilon", dtype="float32", chunk_size=chunk_size)
    xin = fwd.prepare(xd)
    rows.append({"method": "forward", **timed(lambda: model.run(xin, upto=model.logits_node), dev.sync, deadline)})
    for label, spec in methods.items():
        row: dict[str, Any] = {"method": label, "spec": {k: v for k, v in spec.items()}, "chunk_size": chunk_size}
        try:
            exp = lrpflow.Explainer(model, dtype="float32", chunk_size=chunk_size, **spec)
            row.update(timed(lambda: exp.explain(xd), dev.sync, deadline))
            row["heatmaps_per_s"] = n / (row["ms"] / 1e3)
            row["x_forward"] = row["ms"] / rows[0]["ms"]
            if memory:
                row["memory"] = dev.peak_bytes(lambda: exp.explain(xd))
        except Exception as err:  # noqa: BLE001
            row.update({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)})
        rows.append(row)
    if tt.torch is not None and torch_net is not None:
        xt = tt.tensor(x.astype(numpy.float32))
        try:
            with tt.torch.no_grad():
                ours = lrpflow.backend.to_numpy(model.run(xin, upto=model.logits_node)[0])
                theirs = torch_net(xt).float().cpu().numpy()
            twin = rel_diff(theirs, ours)
            floor = tt.floor(torch_net, xt)
            row = {"method": "torch_floor", "twin_logits_rel_diff": twin, **timed(floor, tt.sync, deadline)}
            if memory:
                row["memory"] = tt.peak_bytes(floor)
            rows.append(row)
        except Exception as err:  # noqa: BLE001
            rows.append({"method": "torch_floor", "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc(limit=8)})
        for r in rows:
            if "ms" in r and r["method"] not in ("torch_floor", "forward") and "ms" in rows[-1]:
                r["x_floor"] = r["ms"] / rows[-1]["ms"]
    return rows


def phase_timing(ctx: dict[str, Any], deadline: float) -> dict[str, Any]:
    from gpu_nets import lenet5, mlp, to_torch

    dry = ctx["args"].dry_run
    tt: Torch = ctx["torch"]
    n = 16 if dry else 1024
    methods = {"epsilon": {"rule": "epsilon", "epsilon": 0.01},
               "alpha2beta1": {"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0}}
    out: dict[str, Any] = {"batch": n, "goal": "epsilon <= 2x the torch floor at batch 1024"}
    nets = {"lenet5": lambda: lenet5(dtype=numpy.float32),
            "mlp": lambda: mlp((784, 64, 64, 64, 10) if dry else (784, 1296, 1296, 1296, 10), dtype=numpy.float32)}
    for i, (name, build) in enumerate(nets.items()):
        sub = time.monotonic() + (deadline - time.monotonic()) / (len(nets) - i)
        try:
            model = build()
            x = numpy.random.default_rng(2).uniform(-1, 1, (n, *model.input_shape))
            tnet = to_torch(model, tt.torch, tt.device, tt.torch.float32) if tt.torch is not None else None
            out[name] = _lrp_rows(model, x, methods, ctx, sub, torch_net=tnet)
        except Exception as err:  # noqa: BLE001
            out[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}
    return out


def _vgg(ctx: dict[str, Any], deadline: float, batch: int, variants: bool) -> dict[str, Any]:
    from gpu_nets import to_torch, vgg

    dry = ctx["args"].dry_run
    tt: Torch = ctx["torch"]
    t = time.perf_counter()
    model = ctx.get("vgg16")
    if model is None:
        model = ctx["vgg16"] = vgg(width=1 / 16, size=32, hidden=64, classes=10) if dry else vgg()
    out: dict[str, Any] = {"batch": batch, "input": list(model.input_shape), "build_s": round(time.perf_counter() - t, 2),
                           "parameters": int(sum(v.size for layer in model.layers for v in layer.params().values()
                                                 if v is not None))}
    x = numpy.random.default_rng(3).standard_normal((batch, *model.input_shape)).astype(numpy.float32)
    methods = {"epsilon_plus_flat": {"composite": "epsilon_plus_flat"}}
    tnet = ctx.get("vgg16_torch")
    if tnet is None and tt.torch is not None:
        tnet = ctx["vgg16_torch"] = to_torch(model, tt.torch, tt.device, tt.torch.float32)
    rows = _lrp_rows(model, x, methods, ctx, deadline, torch_net=tnet, memory=True)
    if variants and not out_of_time(deadline):  # one chunk for the whole batch: what a larger trace budget buys
        rows += [r for r in _lrp_rows(model, x, methods, ctx, deadline, chunk_size=batch, memory=True)
                 if r["method"] != "forward"]  # (no torch_net: the floor is timed once)
    if tt.zennit is not None and tnet is not None and not out_of_time(deadline):
        try:
            run = tt.zennit_fn(tnet, tt.tensor(x))
            row = {"method": "zennit_epsilon_plus_flat", **timed(run, tt.sync, deadline, min_runs=2)}
            row["memory"] = tt.peak_bytes(run)
            import lrpflow

            ours = lrpflow.backend.to_numpy(lrpflow.explain(model, ctx["device"].put(x[:4]),
                                                            composite="epsilon_plus_flat").relevance)
            theirs = run().detach().cpu().numpy()[:4].transpose(0, 2, 3, 1)
            row["pearson_r_first4"] = float(numpy.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
            run.close()  # type: ignore[attr-defined]
            rows.append(row)
        except Exception as err:  # noqa: BLE001
            rows.append({"method": "zennit_epsilon_plus_flat", "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc(limit=8)})
    out["rows"] = rows
    by = {r["method"] + ("" if r.get("chunk_size") is None else f"@{r['chunk_size']}"): r for r in rows}
    ours = by.get("epsilon_plus_flat", {})
    for ref in ("zennit_epsilon_plus_flat", "torch_floor"):
        if "ms" in ours and "ms" in by.get(ref, {}):
            out[f"speed_vs_{ref}"] = by[ref]["ms"] / ours["ms"]
            a, b = ours.get("memory", {}).get("peak_bytes"), by[ref].get("memory", {}).get("peak_bytes")
            if a and b:
                out[f"memory_vs_{ref}"] = a / b
    out["tf32"] = {"CUPY_TF32": os.environ.get("CUPY_TF32", "(unset)"), "torch": ctx["args"].tf32}
    return out


def phase_vgg(ctx: dict[str, Any], deadline: float) -> dict[str, Any]:
    out = _vgg(ctx, deadline, 4 if ctx["args"].dry_run else 64, variants=True)
    out["goal"] = "epsilon_plus_flat at batch 64: >= zennit's throughput with <= half its peak memory"
    return out


def phase_vgg256(ctx: dict[str, Any], deadline: float) -> dict[str, Any]:
    import lrpflow

    dev: Device = ctx["device"]
    dry = ctx["args"].dry_run
    model = ctx.get("vgg16")
    if model is None:
        from gpu_nets import vgg

        model = ctx["vgg16"] = vgg(width=1 / 16, size=32, hidden=64, classes=10) if dry else vgg()
    batch = 8 if dry else 256
    x = numpy.random.default_rng(4).standard_normal((batch, *model.input_shape)).astype(numpy.float32)
    exp = lrpflow.Explainer(model, composite="epsilon_plus_flat", dtype="float32", chunk_size=2 if dry else None)
    xd = dev.put(x)
    try:
        n_chunks: Any = len(exp._chunks(exp.prepare(xd), exp.default_method[1], 1))
    except Exception as err:  # noqa: BLE001 - a private helper: only informative
        n_chunks = f"unknown ({err})"
    out: dict[str, Any] = {"batch": batch, "chunks": n_chunks, "oom": None}
    t = time.perf_counter()
    try:
        exp.explain(xd)
        dev.sync()
        out["oom"] = False
    except Exception as err:  # noqa: BLE001 - recorded with the figures
        out["oom"] = "OutOfMemory" in type(err).__name__ or "out of memory" in str(err).lower()
        out["error"] = f"{type(err).__name__}: {err}"
        return out
    out["first_call_s"] = round(time.perf_counter() - t, 3)
    if not out_of_time(deadline):
        out["memory"] = dev.peak_bytes(lambda: exp.explain(xd))
    if not out_of_time(deadline):
        out.update(timed(lambda: exp.explain(xd), dev.sync, deadline, min_runs=1, min_time=0.0, warmup=0))
        out["heatmaps_per_s"] = batch / (out["ms"] / 1e3)
    return out


RUNNERS = {"env": phase_env, "agreement": phase_agreement, "timing": phase_timing, "vgg": phase_vgg,
           "vgg256": phase_vgg256}


# --- main ---------------------------------------------------------------------------------


def summarise_pytest(path: str | None) -> dict[str, Any] | None:
    if not path or not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        lines = [ln.rstrip() for ln in f]
    tail = [ln for ln in lines if ln.strip()][-1:] or [""]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return {"summary": tail[0], "failed": failed[:50]}


def write_json(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    global QUICK
    args = parse_args(argv)
    QUICK = args.dry_run
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read when cupy is imported: before the import
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, args.json_name)
    doc: dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = {}
    tag = args.tag or ("tf32" if args.tf32 else "fp32")
    run: dict[str, Any] = {"args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "phases": {}}
    doc.setdefault("runs", {})[tag] = run
    pytest_summary = summarise_pytest(args.pytest_log)
    if pytest_summary is not None:
        doc["pytest_gpu"] = pytest_summary
    t0 = time.monotonic()

    def save(status: str) -> None:
        run["status"], run["seconds"] = status, round(time.monotonic() - t0, 2)
        write_json(path, doc)

    def on_term(signum: int, frame: Any) -> None:  # the shell's timeout: keep what was measured
        save(f"killed by signal {signum}")
        sys.exit(124)

    signal.signal(signal.SIGTERM, on_term)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(RUNNERS)
    if unknown:
        print(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}", file=sys.stderr)
        return 2
    ctx: dict[str, Any] = {"args": args}
    try:
        ctx["device"] = Device(args.backend)
    except Exception as err:  # noqa: BLE001 - cupy missing: record and stop
        run["phases"]["env"] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        save("no backend")
        print(f"backend {args.backend} unavailable: {err}")
        return 1
    ctx["torch"] = Torch(args.backend, args.tf32, args.no_torch)
    budget = Budget(args.budget, phases)
    for phase in phases:
        deadline = budget.start(phase)
        t = time.monotonic()
        print(f"[gpu_check] {tag} {phase}: up to {deadline - t:.0f} s", flush=True)
        try:
            result = RUNNERS[phase](ctx, deadline)
            entry = {"status": "ok", **result}
        except Exception as err:  # noqa: BLE001 - one phase failing must not lose the others
            oom = "OutOfMemory" in type(err).__name__ or "out of memory" in str(err).lower()
            entry = {"status": "error", "error": f"{type(err).__name__}: {err}", "oom": oom,
                     "traceback": traceback.format_exc(limit=10)}
        entry["seconds"] = round(time.monotonic() - t, 2)
        run["phases"][phase] = entry
        save("running")
        print(f"[gpu_check] {tag} {phase}: {entry['status']} in {entry['seconds']} s"
              + (f" ({entry['error']})" if entry["status"] == "error" else ""), flush=True)
        try:
            print(json.dumps(_brief(phase, entry), default=str), flush=True)
        except Exception as err:  # noqa: BLE001 - the JSON is written already
            print(f"[gpu_check] (could not print the figures: {err})")
    save("done")
    print(f"[gpu_check] wrote {path}")
    return 0


def _brief(phase: str, entry: dict[str, Any]) -> Any:
    """The figures of a phase without tracebacks, per-run times and the agreement rows (for the log)."""
    drop = {"traceback", "all_ms", "skipped"} | ({"rows"} if phase == "agreement" else set())

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {a: strip(b) for a, b in v.items() if a not in drop}
        if isinstance(v, list):
            return [strip(i) for i in v]
        return v

    return strip(entry)


if __name__ == "__main__":
    sys.exit(main())
