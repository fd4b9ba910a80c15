#!/usr/bin/env python
"""Throughput of lrpflow explanations against a PyTorch gradient×input floor (and zennit, if present).

Networks
    lenet  LeNet-5 of the LRP Toolbox (``<shared>/models/MNIST/LeNet-5.txt``), input (N, 32, 32, 1) NHWC.
    mlp    784-1296-1296-1296-10 with ReLU (random weights, seeds 0..3), input (N, 784).
    vgg11, resnet18, wide
           CNNs of ``cnn_cases.py`` (VGG-11 on 32×32 with a CIFAR head, torchvision ResNet-18 on 64×64,
           a small conv net on 128×128), random weights, built in PyTorch and imported through ONNX
           with ``lrpflow.from_torch``; inputs (N, C, H, W) uniform in [0, 1). They need torch.

Methods (lrpflow side)
    forward            ``model.run(x)`` only (no explanation)
    epsilon            ``Explainer(model, rule="epsilon", epsilon=0.01)`` on every layer (pools included)
    alpha2beta1        ``Explainer(model, rule="alpha_beta", alpha=2.0, beta=1.0)`` on every layer
    epsilon_plus       ``Explainer(model, composite="epsilon_plus")``
    epsilon_plus_flat  ``Explainer(model, composite="epsilon_plus_flat")``
    epsilon_gamma_box  ``Explainer(model, composite="epsilon_gamma_box", low=-1.0, high=1.0)``

The PyTorch floor is the cheapest thing any modified-gradient LRP implementation must
do: one forward pass plus one gradient w.r.t. the input (gradient×input, started
from the masked logit as lrpflow's ``init="logit"``); for the ``forward`` row the floor
is a PyTorch forward pass under ``inference_mode``. The PyTorch LeNet-5 is the same
network with NCHW weights; the toolbox SumPool (window sum / √4 = 2·avg_pool) is an
``AvgPool2d`` whose factor 2 is folded into the weights of the convolution after it,
so the logits agree (checked in float64 to 1e-4 before anything is timed).

zennit counterparts (when ``import zennit`` works): LRP-ε = ``LayerMapComposite``
(ε=0.01 on Conv/Linear, zennit's base map on ReLU and AvgPool), alpha2beta1 =
``LayerMapComposite`` with ``AlphaBeta(2, 1)`` on Conv *and* Linear (zennit's preset
``EpsilonAlpha2Beta1`` puts ε on dense layers, which would make the MLP row an ε row),
``EpsilonPlus``, ``EpsilonPlusFlat``, ``EpsilonGammaBox(low=-1, high=1)`` (plus ZBox on a first *dense*
layer, as lrpflow's composite does). ResNet-18 gets zennit's ``ResNetCanonizer`` (lrpflow's
importer folds the batch norms into the convolutions).

Every point is timed interleaved with its floor in one process: each case is warmed
up, given an inner repeat count so one sample takes ≈0.1 s, then all cases of the
point run round after round (alternating order) until each has ≥ ``--min-runs``
samples and ≥ ``--min-time`` seconds; the median sample is reported. Before each
timed block the case pauses (``--settle``) and then makes one untimed call, so no
sample includes waking idle cores (on a VM a call after a pause is up to 20% slower,
and a slow case with one call per sample would pay that every time while a fast
floor with several calls per sample would not). Timings are only printed, never
asserted.

Run ``python benchmarks/bench_lrp.py --help``; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

METHODS = ("forward", "epsilon", "alpha2beta1", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box")
NETWORKS = ("lenet", "mlp", "vgg11", "resnet18", "wide")
CNN_CASES = ("vgg11", "resnet18", "wide")  # built by cnn_cases.py (torch + lrpflow.from_torch)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")
TARGET_SAMPLE_S = 0.1  # one timed sample (inner repeats of a call) lasts about this long
MAX_POINT_S = 20.0  # stop adding rounds to a point after this long (once min-runs are in)
NOISY_CORES = 0.2  # other processes using more CPU than this during a point make it "noisy"
#: the folder with models/ and data/ (``$LRPFLOW_SHARED``, else ``shared/`` beside the checkout)
DEFAULT_SHARED = os.environ.get("LRPFLOW_SHARED") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=DEFAULT_SHARED,
                   help="folder with models/MNIST/LeNet-5.txt and data/MNIST (default: $LRPFLOW_SHARED or ../shared "
                        "beside the checkout; now %(default)s)")
    p.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated subset of %(default)s")
    p.add_argument("--batches", default="1,64,256", help="comma-separated batch sizes (default %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of %(default)s ('forward' is always timed: the other rows are "
                        "compared to it)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default %(default)s)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"),
                   help="lrpflow array backend; cupy is skipped cleanly when unavailable (default %(default)s)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of samples per case and point (default %(default)s)")
    p.add_argument("--min-runs", type=int, default=3, help="samples per case and point at least (default %(default)s)")
    p.add_argument("--settle", type=float, default=0.15,
                   help="pause in seconds after each timed block, so that one library's spinning idle threads "
                        "(OpenBLAS waits ~0.1 s) do not steal cores from the next case (default %(default)s)")
    p.add_argument("--omp-passive", action="store_true",
                   help="set OMP_WAIT_POLICY=PASSIVE (unless already set): idle OpenMP workers sleep at once")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each point wait up to S seconds until other processes use < 0.1 cores (Linux; "
                        "default %(default)s: do not wait)")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="K",
                   help=f"measure a point again (up to K times) when other processes used > {NOISY_CORES} cores "
                        "during it (default %(default)s)")
    p.add_argument("--no-torch", action="store_true", help="do not time the PyTorch floor even if torch imports")
    p.add_argument("--no-zennit", action="store_true", help="do not time zennit even if it imports")
    p.add_argument("--cpu-note", action="store_true",
                   help="print (and store in --json) the CPU model and the BLAS library, version and kernel "
                        "numpy uses (threadpoolctl)")
    p.add_argument("--conv-kernels", default="auto", metavar="K[,K...]",
                   help="lrpflow convolution kernels to time side by side in the same rounds: auto, onnxruntime, "
                        "numpy (lrpflow.layers.ort_conv; default %(default)s); rows then carry the kernel's name")
    p.add_argument("--json", metavar="PATH", help="also write the rows (and run metadata) as JSON to PATH")
    args = p.parse_args(argv)
    args.conv_kernels = _choices(args.conv_kernels, ("auto", "onnxruntime", "numpy"), "--conv-kernels")
    args.networks = _choices(args.networks, NETWORKS, "--networks")
    args.methods = _choices(args.methods, METHODS, "--methods")
    if "forward" not in args.methods:
        args.methods = ["forward"] + args.methods
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1:
        p.error("--batches needs at least one batch size ≥ 1")
    if args.threads < 1:
        p.error("--threads must be ≥ 1")
    return args


def _choices(spec: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def set_threads(n: int, passive: bool = False) -> None:
    """Pin the BLAS/OpenMP pools; only effective before numpy (and torch) are imported."""
    if "numpy" in sys.modules:
        print("warning: numpy was imported before the thread variables were set; --threads may not apply to it",
              file=sys.stderr)
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    # Idle OpenMP workers (PyTorch's pool) spin for a while after each call; with few cores they can
    # steal them from the next case. --settle pauses between blocks instead; this is the alternative.
    if passive:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class CpuLoad:
    """CPU used by *other* processes (in cores) between two snapshots: /proc/stat busy time minus our own."""

    def __init__(self) -> None:
        try:
            self.tick = float(os.sysconf("SC_CLK_TCK"))
            self._busy()
            self.ok = True
        except (OSError, ValueError, AttributeError, IndexError):
            self.ok = False

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as fh:
            v = [int(a) for a in fh.readline().split()[1:9]]
        return float(sum(v) - v[3] - v[4])  # all but idle and iowait, in ticks

    def snapshot(self) -> tuple[float, float, float] | None:
        if not self.ok:
            return None
        t = os.times()
        return time.perf_counter(), self._busy() / self.tick, t.user + t.system

    @staticmethod
    def foreign(a: tuple | None, b: tuple | None) -> float | None:
        if a is None or b is None or b[0] <= a[0]:
            return None
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))

    def wait_quiet(self, limit_s: float, threshold: float = 0.1) -> float | None:
        """Sleep until other processes use < ``threshold`` cores over 1 s (at most ``limit_s``); that load."""
        if not self.ok or limit_s <= 0:
            return None
        end = time.perf_counter() + limit_s
        while True:
            a = self.snapshot()
            time.sleep(1.0)
            load = self.foreign(a, self.snapshot())
            if load is None or load < threshold or time.perf_counter() > end:
                return load


def source_state() -> str | None:
    """``<commit>`` of the checkout this lrpflow comes from, ``+dirty`` if lrpflow/ has local changes."""
    import subprocess

    import lrpflow

    root = os.path.dirname(os.path.dirname(os.path.abspath(lrpflow.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "lrpflow"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def cpu_note() -> dict:
    """The CPU model (``/proc/cpuinfo``, else platform) and numpy's BLAS as threadpoolctl sees it."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            model = names[0]
    except OSError:
        pass
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception as err:  # noqa: BLE001 - informational only
        blas = [{"error": f"{type(err).__name__}: {err}"}]
    return {"cpu_model": model, "blas": blas}


def peak_rss_mib() -> float:
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kib / (1024.0 * 1024.0) if sys.platform == "darwin" else kib / 1024.0


# --- data and networks ---------------------------------------------------------------


def explain_memory(explainer, model, x) -> tuple[float, float] | None:
    """``(peak MiB allocated during one explanation, that / the forward Trace's bytes)`` (numpy only).

    Measured with tracemalloc, which sees numpy's data buffers; the input itself is the
    caller's and not counted. The Trace is every node's output of one unchunked forward
    pass (the input included): the memory any backward pass needs to keep.
    """
    import tracemalloc

    import numpy

    if not isinstance(x, numpy.ndarray):
        return None
    _, trace = model.run(model.to_nhwc(x))
    trace_bytes = sum(v.nbytes for v in trace.values.values())
    del trace
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = explainer(x)
        peak = tracemalloc.get_traced_memory()[1] - base
        del out
    finally:
        tracemalloc.stop()
    return peak / 2**20, peak / trace_bytes


def load_mnist(shared: str, n: int):
    """``n`` MNIST test images scaled to [-1, 1] as (n, 784) float64, repeated if needed; synthetic if unreadable."""
    import numpy as np

    path = os.path.join(shared, "data", "MNIST", "test_images.mat")
    arr, source = None, None
    try:
        import lrpflow

        if hasattr(lrpflow, "load_data"):
            arr, source = np.asarray(lrpflow.load_data(path)), f"{path} (lrpflow.load_data)"
    except Exception:  # noqa: BLE001 - fall through to the next reader
        arr = None
    if arr is None:
        try:
            import scipy.io

            arr, source = np.asarray(scipy.io.loadmat(path)["data"]), f"{path} (scipy.io.loadmat)"
        except Exception:  # noqa: BLE001
            arr = None
    if arr is None:
        source = "synthetic uniform(-1, 1) (MNIST test images not readable)"
        return np.random.default_rng(0).uniform(-1.0, 1.0, (n, 784)), source
    arr = arr.reshape(arr.shape[0], -1).astype(np.float64)
    if arr.max() > 1.5:  # raw pixels 0..255 -> toolbox scaling
        arr = arr / 127.5 - 1.0
    reps = -(-n // arr.shape[0])
    return np.concatenate([arr] * reps)[:n], source


def lenet_input(x784):
    """(N, 784) in [-1, 1] -> (N, 32, 32, 1), padded with -1 as in the toolbox demo."""
    import numpy as np

    x = x784.reshape(-1, 28, 28, 1)
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)


def net_input(name: str, x_all, n: int):
    """The first ``n`` rows of the benchmark input of network ``name`` (MNIST for lenet/mlp)."""
    if name in CNN_CASES:
        import cnn_cases

        return cnn_cases.inputs(name, n)
    return lenet_input(x_all[:n]) if name == "lenet" else x_all[:n]


def build_lrpflow(name: str, shared: str):
    import lrpflow

    if name in CNN_CASES:
        import cnn_cases

        return cnn_cases.build(name)[0]
    if name == "lenet":
        path = os.path.join(shared, "models", "MNIST", "LeNet-5.txt")
        if not os.path.exists(path):
            raise SystemExit(f"LeNet-5 not found at {path}: pass --shared or set LRPFLOW_SHARED")
        return lrpflow.load_model(path)
    L = lrpflow.layers
    dims = (784, 1296, 1296, 1296, 10)
    mods = []
    for i in range(len(dims) - 1):
        mods.append(L.Linear(dims[i], dims[i + 1], rng=i))
        if i < len(dims) - 2:
            mods.append(L.ReLU())
    return lrpflow.Sequential(mods)


def build_torch(name: str, model):
    """The same network in PyTorch (float32, NCHW), weights copied from the lrpflow model."""
    import numpy as np
    import torch

    if name in CNN_CASES:  # the module the lrpflow model was imported from
        import cnn_cases

        return cnn_cases.torch_net(name).float()

    nn = torch.nn
    mods = []
    scale = 1.0  # pending factor of a toolbox SumPool (2·avg_pool), folded into the next affine layer
    for layer in model.modules:
        kind = type(layer).__name__
        if kind == "Conv2d":
            w = np.asarray(layer.weight, dtype=np.float64)  # (h, w, c_in, c_out)
            h, k, cin, cout = w.shape
            if tuple(layer.pads) != (0, 0, 0, 0):
                raise SystemExit("bench: padded convolutions are not mapped to PyTorch here")
            conv = nn.Conv2d(cin, cout, (h, k), stride=tuple(layer.stride))
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1) * scale))
                conv.bias.copy_(torch.from_numpy(np.asarray(layer.bias, dtype=np.float64)))
            mods.append(conv)
            scale = 1.0
        elif kind == "Linear":
            w = np.asarray(layer.weight, dtype=np.float64)  # (in, out)
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.T * scale))
                lin.bias.copy_(torch.from_numpy(np.asarray(layer.bias, dtype=np.float64)))
            mods.append(lin)
            scale = 1.0
        elif kind in ("ReLU", "Rect"):
            mods.append(nn.ReLU())
        elif kind == "SumPool":
            hp, wp = layer.pool
            mods.append(nn.AvgPool2d((hp, wp), stride=tuple(layer.stride)))
            scale *= (hp * wp) / float(np.sqrt(hp * wp))  # Σ/√(hp·wp) = avg·√(hp·wp)
        elif kind == "Flatten":
            mods.append(nn.Flatten())
        else:
            raise SystemExit(f"bench: no PyTorch counterpart for layer {kind}")
    if scale != 1.0:
        raise SystemExit("bench: a SumPool is not followed by an affine layer; cannot fold its scale")
    return nn.Sequential(*mods).float().eval()


def to_torch_layout(name: str, x):
    """NHWC numpy -> NCHW for LeNet; the MLP and the CNN cases (NCHW already) as they are."""
    import numpy as np

    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if name == "lenet" else np.ascontiguousarray(x)


def check_logits(name: str, model, tnet, x64) -> float:
    """Max |Δlogit| between lrpflow and PyTorch in float64; SystemExit above 1e-4 (a wiring error, not noise)."""
    import copy

    import numpy as np
    import torch

    y_lrp, _ = model.run(model.to_nhwc(x64))
    net64 = copy.deepcopy(tnet).double()
    with torch.no_grad():
        y_t = net64(torch.from_numpy(to_torch_layout(name, x64))).numpy()
    err = float(np.abs(np.asarray(y_lrp) - y_t).max())
    if not err <= 1e-4:
        raise SystemExit(f"bench: {name}: lrpflow and PyTorch logits differ by {err:.3g} (> 1e-4); weights mis-copied")
    return err


# --- zennit ---------------------------------------------------------------------------


def zennit_composite(method: str, first_is_dense: bool, network: str = ""):
    import torch
    from zennit.composites import EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat, LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta, Epsilon, ZBox
    from zennit.types import Convolution

    canon = []
    if network == "resnet18":
        from zennit.torchvision import ResNetCanonizer

        canon = [ResNetCanonizer()]
    if method == "epsilon":
        return LayerMapComposite(layer_map_base() + [(Convolution, Epsilon(0.01)), (torch.nn.Linear, Epsilon(0.01))],
                                 canonizers=canon)
    if method == "alpha2beta1":
        return LayerMapComposite(layer_map_base() + [(Convolution, AlphaBeta(2.0, 1.0)),
                                                     (torch.nn.Linear, AlphaBeta(2.0, 1.0))], canonizers=canon)
    if method == "epsilon_plus":
        return EpsilonPlus(canonizers=canon)
    if method == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canon)
    if method == "epsilon_gamma_box":
        first = [(torch.nn.Linear, ZBox(low=-1.0, high=1.0))] if first_is_dense else None
        return EpsilonGammaBox(low=-1.0, high=1.0, first_map=first, canonizers=canon)
    raise ValueError(method)


def zennit_attr_output(y):
    """Masked logit of the predicted class (lrpflow's default target "pred" with init "logit")."""
    import torch

    yd = y.detach()
    return yd * torch.zeros_like(yd).scatter_(1, yd.argmax(1, keepdim=True), 1.0)


def compare_zennit(name: str, method: str, explainer, znet, x32, tdev: str) -> tuple[float, float]:
    """Pearson r and max |Δ| / max |R| between lrpflow's and zennit's heatmaps of the same batch."""
    import numpy as np
    import torch
    from zennit.attribution import Gradient

    r_lrp = np.asarray(explainer(x32).to_numpy().relevance, dtype=np.float64)
    xt = torch.from_numpy(to_torch_layout(name, x32)).to(tdev)
    with Gradient(model=znet, composite=zennit_composite(method, first_is_dense=(name == "mlp"), network=name)) as attributor:
        _, r_z = attributor(xt, zennit_attr_output)
    r_z = r_z.detach().cpu().numpy().astype(np.float64)
    if name == "lenet":
        r_z = r_z.transpose(0, 2, 3, 1)
    a, b = r_lrp.ravel(), r_z.ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return corr, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


# --- timing -----------------------------------------------------------------------------


def kernel_call(kernel: str, fn):
    """``fn`` run with lrpflow's convolution kernels set to ``kernel`` (see lrpflow.layers.ort_conv)."""
    from lrpflow.layers.ort_conv import use_conv_kernel

    def call():
        with use_conv_kernel(kernel):
            return fn()

    return call


class Case:
    """One timed callable of a point (lrpflow method, torch floor, zennit method)."""

    def __init__(self, key: tuple[str, str], fn, sync) -> None:
        self.key, self.fn, self.sync = key, fn, sync
        self.inner = 1
        self.samples: list[float] = []

    def timed(self, k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            self.fn()
        self.sync()
        return time.perf_counter() - t0


def measure(cases: list[Case], min_time: float, min_runs: int, settle: float = 0.0) -> None:
    """Warm up, calibrate inner repeats, then interleave rounds until every case has enough samples."""
    import gc
    import statistics

    for c in cases:  # warm-up: casts/caches parameters, allocator, BLAS pools
        c.timed(2)
    for c in cases:
        t = min(c.timed(1), c.timed(1))
        c.inner = max(1, int(TARGET_SAMPLE_S / max(t, 1e-7)))
    gc.collect()
    gc.disable()
    try:
        start, rnd = time.perf_counter(), 0
        while True:
            order = cases if rnd % 2 == 0 else cases[::-1]
            for c in order:
                if settle > 0:
                    time.sleep(settle)  # let the idle BLAS/OpenMP workers of the last case stop spinning
                    c.fn()  # ... and wake this case's cores, caches and threads: an untimed call, every case alike
                    c.sync()
                c.samples.append(c.timed(c.inner) / c.inner)
            rnd += 1
            enough = all(len(c.samples) >= min_runs and sum(c.samples) * c.inner >= min_time for c in cases)
            if enough or (rnd >= min_runs and time.perf_counter() - start > MAX_POINT_S):
                break
    finally:
        gc.enable()
    for c in cases:
        c.median = statistics.median(c.samples)


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads, passive=args.omp_passive)

    import numpy as np  # noqa: E402 - after the thread variables

    import lrpflow

    xp, sync = np, (lambda: None)
    if args.backend == "cupy":
        from lrpflow.backend import cupy_available

        if not cupy_available():
            print("backend cupy: cupy is not installed or sees no CUDA device; skipping (nothing timed)")
            return 0
        import cupy

        xp = cupy
        sync = cupy.cuda.Device().synchronize  # before every timer read

    torch = None
    torch_note = "not requested (--no-torch)"
    tdev = "cpu"
    if not args.no_torch:
        try:
            import torch  # type: ignore[no-redef]

            torch.set_num_threads(args.threads)
            torch_note = f"torch {torch.__version__}"
            if args.backend == "cupy":
                if torch.cuda.is_available():
                    tdev = "cuda"
                else:
                    torch, torch_note = None, f"torch {torch_note[6:]} has no CUDA: no floor for the cupy backend"
        except Exception as err:  # noqa: BLE001 - report and go on without the floor
            torch, torch_note = None, f"not available ({type(err).__name__}: {err})"
    zennit_note = "not requested (--no-zennit)" if args.no_zennit else "needs torch"
    zennit_ok = False
    if torch is not None and not args.no_zennit:
        try:
            import zennit  # noqa: F401
            import zennit.attribution  # noqa: F401
            import zennit.composites  # noqa: F401

            from importlib.metadata import version as _dist_version

            zennit_ok, zennit_note = True, f"zennit {getattr(zennit, '__version__', None) or _dist_version('zennit')}"
        except Exception as err:  # noqa: BLE001 - e.g. a torchvision that does not match torch
            zennit_note = f"not available ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    tsync = (lambda: torch.cuda.synchronize()) if (torch is not None and tdev == "cuda") else (lambda: None)

    x_all, data_source = load_mnist(args.shared, max(args.batches))
    meta = {
        "python": sys.version.split()[0], "numpy": np.__version__, "lrpflow": lrpflow.__version__,
        "lrpflow_source": source_state(),
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "threads": args.threads, "backend": args.backend, "dtype": "float32", "torch": torch_note,
        "zennit": zennit_note, "data": data_source, "min_time_s": args.min_time, "min_runs": args.min_runs,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_before": _loadavg(),
    }
    if args.cpu_note:
        meta["cpu_note"] = cpu_note()
        blas = "; ".join(f"{b.get('internal_api')} {b.get('version')} kernel {b.get('architecture')} "
                         f"({b.get('num_threads')} threads)" if "error" not in b else b["error"]
                         for b in meta["cpu_note"]["blas"]) or "no BLAS found by threadpoolctl"
        print(f"CPU: {meta['cpu_note']['cpu_model']} | BLAS: {blas}")
    print(f"lrpflow {lrpflow.__version__} ({meta['lrpflow_source'] or 'no git info'}) | numpy {np.__version__} | backend {args.backend} | threads {args.threads} | "
          f"float32 | {platform.machine()} {os.cpu_count()} cpus")
    print(f"PyTorch floor: {torch_note}\nzennit: {zennit_note}\ndata: {data_source}")
    print(f"peak RSS after imports: {peak_rss_mib():.0f} MiB")

    explainer_args = {
        "epsilon": dict(rule="epsilon", epsilon=0.01),
        "alpha2beta1": dict(rule="alpha_beta", alpha=2.0, beta=1.0),
        "epsilon_plus": dict(composite="epsilon_plus"),
        "epsilon_plus_flat": dict(composite="epsilon_plus_flat"),
        "epsilon_gamma_box": dict(composite="epsilon_gamma_box", low=-1.0, high=1.0),
    }
    rows: list[dict] = []
    cpu = CpuLoad()
    t_start = time.perf_counter()
    for net in args.networks:
        if net in CNN_CASES and torch is None:
            print(f"\n[{net}] skipped: the CNN cases are built in PyTorch ({torch_note})")
            continue
        model = build_lrpflow(net, args.shared)
        backend = "cupy" if args.backend == "cupy" else None
        explainers = {m: lrpflow.Explainer(model, dtype="float32", backend=backend, **explainer_args[m])
                      for m in args.methods if m != "forward"}
        tnet = znets = None
        if torch is not None:
            tnet = build_torch(net, model)
            x64 = net_input(net, x_all, 8).astype(np.float64)
            err = check_logits(net, model, tnet, x64)
            tnet = tnet.to(tdev)
            print(f"\n[{net}] lrpflow vs PyTorch logits (float64): max |diff| = {err:.2e} (≤ 1e-4: ok)")
            if zennit_ok:
                import copy

                znets = {m: copy.deepcopy(tnet) for m in args.methods if m != "forward"}
                for m, znet in znets.items():
                    r, d = compare_zennit(net, m, explainers[m], znet, x64.astype(np.float32), tdev)
                    print(f"[{net}] {m}: lrpflow vs zennit heatmaps: Pearson r = {r:.4f}, "
                          f"max |diff| / max |R| = {d:.2e} (informational)")
        else:
            print(f"\n[{net}]")
        for n in args.batches:
            x_np = net_input(net, x_all, n).astype(np.float32)
            x = xp.asarray(x_np)
            cases: list[Case] = []
            for k in args.conv_kernels:
                cases.append(Case(("lrpflow", "forward", k), kernel_call(k, lambda x=x: model.run(model.to_nhwc(x))), sync))
                for m, exp in explainers.items():
                    cases.append(Case(("lrpflow", m, k), kernel_call(k, lambda exp=exp, x=x: exp(x)), sync))
            zctx = []
            if tnet is not None:
                xt = torch.from_numpy(to_torch_layout(net, x_np)).to(tdev)

                def t_forward(xt=xt) -> None:
                    with torch.inference_mode():
                        tnet(xt)

                def t_gxi(xt=xt):
                    xg = xt.detach().requires_grad_(True)
                    y = tnet(xg)
                    yd = y.detach()
                    mask = torch.zeros_like(yd).scatter_(1, yd.argmax(1, keepdim=True), 1.0)
                    (g,) = torch.autograd.grad(y, xg, grad_outputs=yd * mask)
                    return g * xt

                cases.append(Case(("torch", "forward"), t_forward, tsync))
                cases.append(Case(("torch", "grad_x_input"), t_gxi, tsync))
                if znets is not None:
                    from zennit.attribution import Gradient

                    for m, znet in znets.items():
                        comp = zennit_composite(m, first_is_dense=(net == "mlp"), network=net)
                        attributor = Gradient(model=znet, composite=comp)
                        attributor.__enter__()
                        zctx.append(attributor)
                        cases.append(Case(("zennit", m), lambda a=attributor, xt=xt: a(xt, zennit_attr_output), tsync))
            try:
                for attempt in range(args.retry_noisy + 1):
                    cpu.wait_quiet(args.wait_quiet)
                    for c in cases:
                        c.samples = []
                    before = cpu.snapshot()
                    measure(cases, args.min_time, args.min_runs, args.settle)
                    others = CpuLoad.foreign(before, cpu.snapshot())
                    if others is None or others <= NOISY_CORES:
                        break
                    if attempt < args.retry_noisy:
                        print(f"[{net}] batch {n}: other processes used {others:.2f} cores meanwhile; measuring again")
            finally:
                for a in zctx:
                    a.__exit__(None, None, None)
            med = {c.key: c.median for c in cases}
            info = {c.key: (len(c.samples), c.inner) for c in cases}
            mems = {k: {m: kernel_call(k, lambda exp=exp: explain_memory(exp, model, x))() for m, exp in explainers.items()}
                    for k in args.conv_kernels}
            for k, m in ((k, m) for k in args.conv_kernels for m in args.methods):
                mem = mems[k]
                fwd = med[("lrpflow", "forward", k)]
                t = med[("lrpflow", m, k)]
                floor_key = ("torch", "forward") if m == "forward" else ("torch", "grad_x_input")
                floor = med.get(floor_key)
                z = med.get(("zennit", m))
                rows.append({
                    "network": net, "batch": n, "method": m if len(args.conv_kernels) == 1 else f"{m}[{k}]",
                    "conv_kernel": k, "heatmaps_per_s": n / t, "ms_per_batch": t * 1e3,
                    "floor": None if floor is None else ("torch forward" if m == "forward" else "torch grad×input"),
                    "floor_ms": None if floor is None else floor * 1e3,
                    "ratio_to_floor": None if floor is None else t / floor,
                    "ratio_to_forward": t / fwd,
                    "zennit_ms": None if z is None else z * 1e3,
                    "ratio_to_zennit": None if z is None else t / z,
                    "runs": info[("lrpflow", m, k)][0], "inner": info[("lrpflow", m, k)][1],
                    "peak_rss_mib": peak_rss_mib(), "other_cpu_cores": others,
                    "explain_peak_mib": (mem.get(m) or (None, None))[0],
                    "explain_peak_x_trace": (mem.get(m) or (None, None))[1],
                })
                print_row(rows[-1], header=(len(rows) == 1 or (n == args.batches[0] and m == "forward")),
                          zennit=zennit_ok)
        print(f"[{net}] peak RSS so far: {peak_rss_mib():.0f} MiB")
    meta["wall_s"] = time.perf_counter() - t_start
    meta["loadavg_after"] = _loadavg()
    meta["peak_rss_mib"] = peak_rss_mib()
    print(f"\n== results (median of interleaved runs; float32; {args.threads} thread(s); backend {args.backend}) ==")
    for i, r in enumerate(rows):
        print_row(r, header=(i == 0), zennit=zennit_ok)
    print(f"x floor: lrpflow time / PyTorch floor time ({torch_note}); x fwd: / lrpflow forward-only time; "
          f"peak MiB: memory allocated during one explanation (tracemalloc, numpy); x trace: that / the bytes of "
          f"one forward Trace; "
          f"others: CPU cores used by other processes during the point (> {NOISY_CORES}: timings disturbed)")
    print(f"peak RSS: {meta['peak_rss_mib']:.0f} MiB | timed section: {meta['wall_s']:.1f} s | "
          f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']} "
          f"(other processes on the machine distort timings)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
        print(f"rows written to {args.json}")
    return 0


def print_row(r: dict, header: bool, zennit: bool) -> None:
    cols = [("network", 8, "{}"), ("batch", 5, "{}"), ("method", 29, "{}"), ("heatmaps/s", 11, "{:.1f}"),
            ("ms/batch", 9, "{:.3f}"), ("floor ms", 9, "{:.3f}"), ("x floor", 7, "{:.2f}"), ("x fwd", 7, "{:.2f}")]
    keys = ["network", "batch", "method", "heatmaps_per_s", "ms_per_batch", "floor_ms", "ratio_to_floor",
            "ratio_to_forward"]
    cols += [("peak MiB", 8, "{:.1f}"), ("x trace", 7, "{:.2f}")]
    keys += ["explain_peak_mib", "explain_peak_x_trace"]
    if zennit:
        cols += [("zennit ms", 9, "{:.3f}"), ("x zennit", 8, "{:.2f}")]
        keys += ["zennit_ms", "ratio_to_zennit"]
    cols += [("others", 6, "{:.2f}")]
    keys += ["other_cpu_cores"]
    if header:
        print("  ".join(f"{name:>{w}}" if i > 2 else f"{name:<{w}}" for i, (name, w, _) in enumerate(cols)))
    cells = []
    for i, ((_, w, fmt), k) in enumerate(zip(cols, keys)):
        v = r[k]
        s = "-" if v is None else fmt.format(v)
        cells.append(f"{s:>{w}}" if i > 2 else f"{s:<{w}}")
    print("  ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())
