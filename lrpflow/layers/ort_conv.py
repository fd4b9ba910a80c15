"""Optional convolution kernels from onnxruntime (MLAS) for float32 numpy arrays.

When ``onnxruntime`` and ``onnx`` import (the ``fast`` extra), a 2-D convolution and its
transpose on float32 numpy arrays can run as a one-node ONNX graph: ``Transpose → Conv →
Transpose`` (NHWC in and out), which onnxruntime's optimiser turns into MLAS's blocked
(NCHWc) convolution with channels-last reorders, weights prepacked once. The transpose
``Wᵀ s`` (the backward pass) is either a ``Conv`` of ``s`` with the spatially flipped,
channel-swapped weight (stride 1)::

    (Wᵀ s)[n, i, j, c] = Σ_{a,b,k} s_pad[n, i + a, j + b, k] · W[kh−1−a, kw−1−b, c, k]

with ``s`` padded by ``kh−1−top`` / ``kw−1−left``, or an ONNX ``ConvTranspose`` (any
stride). Sessions are built once per layer, weight array (identity, as the banded-weight
cache), input size and thread count, and kept in a dict the layer owns; the batch axis is
symbolic. Results agree with the numpy kernels up to float32 rounding (different order of
summation); float64, cupy, grouped convolutions and geometries where the numpy kernels are
faster (see :func:`choose_forward`, :func:`choose_transpose`) stay on numpy.

Switch: environment variable ``LRPFLOW_CONV_KERNEL`` = ``auto`` (default: onnxruntime where
measured faster), ``onnxruntime`` (wherever supported; for tests) or ``numpy`` (never), or
:func:`set_conv_kernel` / :func:`use_conv_kernel` in code (these take precedence).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy

from lrpflow.errors import ConfigError
from lrpflow.layers import _windows as win

#: environment variable choosing the convolution kernels
KERNEL_ENV = "LRPFLOW_CONV_KERNEL"
KERNELS = ("auto", "onnxruntime", "numpy")
#: sessions a layer keeps at most before its cache starts over
SESSION_CACHE_ENTRIES = 32

_override: str | None = None
_modules: Any = None  # (onnxruntime, onnx.helper, onnx.numpy_helper, TensorProto) or False
_lock = threading.Lock()


def set_conv_kernel(kernel: str | None) -> None:
    """Choose the convolution kernels for this process: ``auto``, ``onnxruntime``, ``numpy``
    (None: back to ``$LRPFLOW_CONV_KERNEL``, default ``auto``)."""
    global _override
    _override = None if kernel is None else _check(kernel, "set_conv_kernel")


@contextlib.contextmanager
def use_conv_kernel(kernel: str) -> Iterator[None]:
    """Context manager form of :func:`set_conv_kernel` (restores the previous choice)."""
    global _override
    previous, _override = _override, _check(kernel, "use_conv_kernel")
    try:
        yield
    finally:
        _override = previous


def _check(kernel: str, where: str) -> str:
    name = str(kernel).strip().lower()
    if name not in KERNELS:
        raise ConfigError(f"{where}: convolution kernel must be one of {KERNELS}, got {kernel!r}")
    return name


def conv_kernel() -> str:
    """The kernel choice in force: :func:`set_conv_kernel`'s, else ``$LRPFLOW_CONV_KERNEL``, else ``auto``."""
    if _override is not None:
        return _override
    return _check(os.environ.get(KERNEL_ENV, "auto") or "auto", f"${KERNEL_ENV}")


def _load() -> Any:
    global _modules
    if _modules is None:
        with _lock:
            if _modules is None:
                try:
                    import onnxruntime
                    from onnx import TensorProto, helper, numpy_helper

                    _modules = (onnxruntime, helper, numpy_helper, TensorProto)
                except Exception:  # ImportError, or a broken native library
                    _modules = False
    return _modules or None


def available() -> bool:
    """True if onnxruntime and onnx import."""
    return _load() is not None


def _eligible(a: Any, weight: Any) -> bool:
    return type(a) is numpy.ndarray and type(weight) is numpy.ndarray and a.dtype == numpy.float32 \
        and weight.dtype == numpy.float32


# --- where onnxruntime pays --------------------------------------------------------------


#: batches up to this size count as "latency" calls for the several-thread rules below
SMALL_BATCH = 4
#: input grids (cells) from which a thin ConvTranspose at batch 1 stays on numpy (memory; see choose_transpose)
THIN_TRANSPOSE_CELLS = 64 * 64
#: fewest input values (whole batch) for the fused graphs (conv_transpose_times, the signed
#: forward): below, their extra nodes cost more than the numpy passes they save. Measured on
#: α2β1 at batch 1 (2 threads): VGG-11 (inputs of 2K–16K values) 1.14× and LeNet-5 1.1× the
#: time with every layer fused; the wide net (32K–65K) 0.92×; ResNet-18 0.97×
FUSED_MIN_VALUES = 1 << 15
#: fewest samples for the unrolled transpose of a small-grid convolution (:func:`_transpose_kernel`). One
#: MatMul with the prepacked dense matrix, 1 thread, VGG-11's 2×2 512→512: 0.3–0.6× the time
#: of numpy's taps at batches 4–32; at batch 1 the flipped Conv reads the 1.7× smaller weight
#: and wins (0.55–0.66× of the MatMul). Forward convolutions stay on the taps: there the
#: MatMul gained 0.95–1.1× end to end (noise) for a session holding ~2.5× its matrix
UNROLLED_MIN_BATCH = 4


def _transpose_kernel(mode: str, weight: numpy.ndarray, stride: tuple[int, int], pads: tuple[int, int, int, int],
                      out_hw: tuple[int, int], in_hw: tuple[int, int], threads: int, batch: int) -> str | None:
    """How a transpose runs: ``"unrolled"`` (one MatMul with the convolution's dense matrix),
    ``"flip"``, ``"convT"`` (see :func:`choose_transpose`) or None (numpy).

    Auto mode first applies the small-grid rules of :mod:`lrpflow.layers._windows`: the dense
    MatMul where the grid is at most half the kernel (``unrolled_fits``, from
    :data:`UNROLLED_MIN_BATCH` samples), numpy's tap-by-tap kernel where padding is a large
    share of the taps (``taps_fit``, above :data:`SMALL_BATCH`; VGG-11's 4×4 layers, 1 thread:
    0.6–0.7× the flipped Conv's time at batch 32, 0.95× at batch 8; at batch 1 the Conv graph
    takes half the time).
    """
    kh, kw, cin, cout = weight.shape
    if mode == "auto":
        if batch >= UNROLLED_MIN_BATCH and win.unrolled_fits(in_hw, out_hw, (kh, kw), cin, cout):
            return "unrolled"
        if batch > SMALL_BATCH and win.taps_fit(in_hw, out_hw, (kh, kw), stride, pads):
            return None
    return choose_transpose(cin, cout, (kh, kw), stride, pads, out_hw, forced=mode == "onnxruntime",
                            threads=threads, batch=batch)


def choose_forward(cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int],
                   forced: bool = False, threads: int = 1, batch: int = 0) -> bool:
    """True where the onnxruntime forward convolution is used.

    Measured per layer with ``benchmarks/bench_conv_kernels.py`` (1 thread, Xeon with AVX-512,
    ORT 1.32, ratios of interleaved medians to numpy's time, ±20% noise): outputs of ≥ 8×8
    positions with C_out a multiple of 16 (MLAS's NCHWc block) 0.38–0.77× (wide net,
    VGG-11, ResNet-18, the 7×7 stem included; VGG's 3→64 0.76–1.08×); 4×4 and 2×2 outputs
    0.9–1.9×; 1×1 kernels (a plain GEMM in numpy) 1.0–2.4×; LeNet's C_out 10 and 25 1.0–1.45×,
    except on a thin input (≤ 3 channels, an image layer), where numpy's banded GEMM is weak:
    LeNet-5's 1→10 on 32×32 at batch 32 0.39× (explanations at batch 64 and 256: ε 0.95–0.97,
    α2β1 0.90–0.92, batch 1 unchanged within noise).
    With 2 threads at batch 1 (numpy's GEMM has only H·W rows to share out), the 4×4 and 2×2
    outputs of VGG-11 and ResNet-18 take 0.56–0.86× (at batch 4 0.82–1.5×: numpy again).
    """
    if forced:
        return True
    if kernel[0] * kernel[1] == 1 or (cout % 16 and cin > 3):
        return False
    return out_hw[0] * out_hw[1] >= 64 or (threads > 1 and batch == 1)


def choose_transpose(cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int],
                     pads: tuple[int, int, int, int], out_hw: tuple[int, int], forced: bool = False,
                     threads: int = 1, batch: int = 0) -> str | None:
    """``"flip"`` (Conv with the flipped weight), ``"convT"`` (ONNX ConvTranspose) or None (numpy).

    ``cout`` is the weight's output channels (the transpose's input: 2·C_out for α2β1).
    Measured as :func:`choose_forward`, for ``out_hw`` (the transpose's input grid) of ≥ 8×8:
    the flipped Conv 0.35–0.9× numpy at stride 1 with ``cin ≥ 16`` (4×4 grids: 0.48–1.3×,
    0.9× on average over VGG-11 and ResNet-18, so used from 4×4 on); ConvTranspose for thin
    inputs (``cin < 16``) 0.33–0.76× with ≤ 16 channels in or LeNet's 5×5 kernels (≤ 50 in),
    but 0.9–1.6× with 32–128 channels in under 3×3 kernels; at stride 2 0.35–0.76×
    (ResNet-18's stem and first downsampling, ±noise). Other grids under 8×8: 0.8–3.6×, numpy.
    With 2 threads and batches ≤ 4 (:data:`SMALL_BATCH`), numpy's GEMMs have too few rows to
    share out: the flipped Conv takes 0.29–0.83× on 2×2 grids (VGG-11, LeNet-5's 25→100:
    0.61×), and at batch 1 ConvTranspose 0.5–0.78× on ResNet-18's stride-2 3×3 layers with
    4×4 and 2×2 outputs (1.15–1.7× at batch 4); 1×1 kernels stay on numpy (0.9–3.1×). At
    batch 1 with 2 threads ConvTranspose also takes thin inputs with 32–128 channels out
    (0.72–0.93×: VGG-11's 3→64, the wide net's α2β1 6→16; 1.3× at batch 16). At batch 1 a
    thin transpose with ≤ 16 channels in on a grid of ≥ :data:`THIN_TRANSPOSE_CELLS` stays on
    numpy for memory: the wide net's 16→3 (ε) took 1.07× the explanation's time there but
    3.4 MiB less peak RSS (12.2 → 8.6–8.9 MiB; the column buffer is 27 floats per cell
    against the trace's 16 + 16 + 4).
    """
    kh, kw = kernel
    flip_ok = stride == (1, 1) and max(pads[0], pads[1]) <= kh - 1 and max(pads[2], pads[3]) <= kw - 1
    if forced:
        return "flip" if flip_ok else "convT"
    cells = out_hw[0] * out_hw[1]
    if cin >= 16 and flip_ok and cells >= 16:
        return "flip"
    if cells < 64 and threads > 1 and kh * kw > 1 and 0 < batch <= SMALL_BATCH:
        if cin >= 16 and flip_ok:
            return "flip"
        if batch == 1 and stride != (1, 1):
            return "convT"
    if cells < 64:
        return None
    if stride != (1, 1) or cin >= 16:
        return "convT"
    if batch == 1 and cout <= 16 and cells >= THIN_TRANSPOSE_CELLS:
        return None  # memory: ConvTranspose's column buffer (cin·kh·kw per cell) outweighs one image's trace
    if cout <= 16 or (kh * kw >= 25 and cout <= 64) or (threads > 1 and batch == 1 and kh * kw > 1):
        return "convT"
    return None


# --- sessions ------------------------------------------------------------------------------


def _threads() -> int:
    from lrpflow.chunks import cpu_workers

    return cpu_workers()  # BLAS's thread count; 1 inside a chunk worker (no nested pools)


def _session(graph_nodes: list[Any], inputs: dict[str, tuple[int, ...]], weight_oihw: numpy.ndarray, threads: int,
             bias: numpy.ndarray | None = None) -> Any:
    """A session of ``graph_nodes`` with NHWC float inputs (name → shape without the batch) and output
    ``y``; the weight is the constant ``w``, a bias (if any) ``b``."""
    _, helper, numpy_helper, tensor = _load()
    infos = [helper.make_tensor_value_info(name, tensor.FLOAT, ["N", *shape]) for name, shape in inputs.items()]
    y_info = helper.make_tensor_value_info("y", tensor.FLOAT, None)
    consts = [numpy_helper.from_array(weight_oihw, "w")]
    if bias is not None:
        consts.append(numpy_helper.from_array(numpy.ascontiguousarray(bias), "b"))
    return _build(helper.make_graph(graph_nodes, "lrpflow_conv", infos, [y_info], consts), threads)


def _build(graph: Any, threads: int) -> Any:
    ort, helper, _, _ = _load()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc + channels-last reorders
    opts.enable_cpu_mem_arena = False  # no arena holding the largest activation after the call
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # numpy works between calls
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _matmul_session(matrix: numpy.ndarray, threads: int) -> Any:
    """A session of ``y = x @ matrix`` (``x`` of shape ``(N, rows)``); MLAS prepacks the matrix once."""
    _, helper, numpy_helper, tensor = _load()
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "lrpflow_unrolled_conv",
                              [helper.make_tensor_value_info("x", tensor.FLOAT, ["N", matrix.shape[0]])],
                              [helper.make_tensor_value_info("y", tensor.FLOAT, None)],
                              [numpy_helper.from_array(numpy.ascontiguousarray(matrix), "w")])
    return _build(graph, threads)


def _attrs(kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int]) -> dict[str, Any]:
    t, b, l, r = pads
    return {"kernel_shape": list(kernel), "strides": list(stride), "pads": [t, l, b, r]}


def _sign_nodes(src: str) -> list[Any]:
    """``xpos = max(src, 0)`` and ``xneg = src − xpos`` (= ``min(src, 0)`` exactly)."""
    from onnx import helper

    return [helper.make_node("Relu", [src], ["xpos"]), helper.make_node("Sub", [src, "xpos"], ["xneg"])]


def _forward_session(weight: numpy.ndarray, bias: numpy.ndarray | None, stride: tuple[int, int],
                     pads: tuple[int, int, int, int], in_hwc: tuple[int, int, int], signed: bool, threads: int) -> Any:
    from onnx import helper

    kh, kw = weight.shape[:2]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])]
    if signed:  # [x⁺, x⁻] along the channels
        nodes += [*_sign_nodes("xt"), helper.make_node("Concat", ["xpos", "xneg"], ["xs"], axis=1)]
    nodes += [helper.make_node("Conv", ["xs" if signed else "xt", "w"] + ([] if bias is None else ["b"]), ["yt"],
                               **_attrs((kh, kw), stride, pads)),
              helper.make_node("Transpose", ["yt"], ["y"], perm=[0, 2, 3, 1])]
    return _session(nodes, {"x": in_hwc}, numpy.ascontiguousarray(weight.transpose(3, 2, 0, 1)), threads, bias)


def _transpose_op(how: str, weight: numpy.ndarray, stride: tuple[int, int], pads: tuple[int, int, int, int],
                  out_hw: tuple[int, int], in_hw: tuple[int, int], src: str, dst: str) -> tuple[Any, numpy.ndarray]:
    """The node computing ``Wᵀ src`` (NCHW) by ``how`` and the weight it reads as ``w`` (OIHW)."""
    from onnx import helper

    kh, kw = weight.shape[:2]
    t, b, l, r = pads
    if how == "flip":  # Conv: output channels = cin, input channels = cout, kernel flipped
        w = numpy.ascontiguousarray(weight[::-1, ::-1].transpose(2, 3, 0, 1))
        return helper.make_node("Conv", [src, "w"], [dst],
                                **_attrs((kh, kw), (1, 1), (kh - 1 - t, kh - 1 - b, kw - 1 - l, kw - 1 - r))), w
    # ConvTranspose: weight (C_in of the transpose = cout, C_out = cin, kh, kw)
    w = numpy.ascontiguousarray(weight.transpose(3, 2, 0, 1))
    ho, wo = out_hw
    extra = [in_hw[0] - ((ho - 1) * stride[0] + kh - t - b), in_hw[1] - ((wo - 1) * stride[1] + kw - l - r)]
    return helper.make_node("ConvTranspose", [src, "w"], [dst], output_padding=extra, **_attrs((kh, kw), stride, pads)), w


def _transpose_session(how: str, weight: numpy.ndarray, stride: tuple[int, int], pads: tuple[int, int, int, int],
                       out_hwc: tuple[int, int, int], in_hw: tuple[int, int], threads: int) -> Any:
    from onnx import helper

    op, w = _transpose_op(how, weight, stride, pads, out_hwc[:2], in_hw, "xt", "yt")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]), op,
             helper.make_node("Transpose", ["yt"], ["y"], perm=[0, 2, 3, 1])]
    return _session(nodes, {"x": out_hwc}, w, threads)


def _times_session(how: str, weight: numpy.ndarray, stride: tuple[int, int], pads: tuple[int, int, int, int],
                   part_hwc: tuple[tuple[int, int, int], ...], x_hwc: tuple[int, int, int], signed: bool,
                   threads: int) -> Any:
    """``x ⊙ Wᵀ [s_0, s_1, …]`` (or ``x⁺ ⊙ A + x⁻ ⊙ B``, see :func:`conv_transpose_times`) as one graph.

    The parts are moved to NCHW one by one and joined along the channels there, where each
    part is one contiguous block (a channels-last join copies ``C``-float pieces).
    """
    from onnx import helper

    names = [f"s{i}" for i in range(len(part_hwc))]
    nodes = [helper.make_node("Transpose", [n], [n + "t"], perm=[0, 3, 1, 2]) for n in names]
    if len(names) > 1:
        nodes.append(helper.make_node("Concat", [n + "t" for n in names], ["st"], axis=1))
    op, w = _transpose_op(how, weight, stride, pads, part_hwc[0][:2], x_hwc[:2], "st" if len(names) > 1 else "s0t", "g")
    nodes += [op, helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])]
    if signed:  # g = [A, B] along the channels
        nodes += [helper.make_node("Split", ["g"], ["ga", "gb"], axis=1), *_sign_nodes("xt"),
                  helper.make_node("Mul", ["xpos", "ga"], ["ra"]), helper.make_node("Mul", ["xneg", "gb"], ["rb"]),
                  helper.make_node("Add", ["ra", "rb"], ["rt"])]
    else:
        nodes.append(helper.make_node("Mul", ["g", "xt"], ["rt"]))
    nodes.append(helper.make_node("Transpose", ["rt"], ["y"], perm=[0, 2, 3, 1]))
    return _session(nodes, {**dict(zip(names, part_hwc)), "x": x_hwc}, w, threads)


def _cached(cache: dict | None, key: tuple, consts: tuple[numpy.ndarray, ...], build: Any) -> Any:
    """The session under ``key`` (which starts with the constants' ids), built on a miss.

    The entry holds the constant arrays (weight, bias) themselves, so an id cannot be reused
    while its entry lives (as :func:`lrpflow.layers._windows.cached_banded_weight`). Constants
    seen for the first time are also looked up by their content (a 128-bit BLAKE2 digest of
    their bytes): the modified weights of a new Explainer (``lrpflow.explain`` builds one per
    call) are new arrays with the contents of the last one's, and a session costs far more to
    build than to find.
    """
    if cache is None:
        return build()
    hit = cache.get(key)
    if hit is not None and len(hit[0]) == len(consts) and all(a is b for a, b in zip(hit[0], consts)):
        return hit[1]
    digest = hashlib.blake2b(digest_size=16)
    for a in consts:
        digest.update(numpy.ascontiguousarray(a).data)
    content_key = ("content", digest.digest(), tuple(a.shape for a in consts), *key[len(consts):])
    session = cache.get(content_key)
    if session is None:
        session = build()
    if len(cache) >= 2 * SESSION_CACHE_ENTRIES:
        cache.clear()
    cache[key] = (consts, session)
    cache[content_key] = session
    return session


def _run(session: Any, a: numpy.ndarray) -> numpy.ndarray:
    return session.run(None, {"x": numpy.ascontiguousarray(a)})[0]


# --- the kernels -----------------------------------------------------------------------------


def fusable_bias(bias: Any, weight: Any) -> bool:
    """True if ``bias`` can be added inside the forward graph: a float32 numpy vector of ``C_out``."""
    return type(bias) is numpy.ndarray and bias.dtype == numpy.float32 and bias.shape == (weight.shape[-1],)


def conv_forward(x: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 cache: dict | None = None, bias: Any = None, signed: bool = False) -> Any | None:
    """:func:`lrpflow.layers._windows.conv_forward` through onnxruntime, or None where it does not apply.

    ``bias`` (see :func:`fusable_bias`) is added by the convolution itself (MLAS adds it to
    each finished sum, as ``z + b`` does), saving a pass over the output. ``signed``: the
    convolution of ``[x⁺, x⁻]`` (channels stacked; the weight has ``2·C`` input channels),
    split inside the graph.
    """
    mode = conv_kernel()
    if mode == "numpy" or not _eligible(x, weight) or not available():
        return None
    if bias is not None and not fusable_bias(bias, weight):
        raise ValueError("conv_forward: bias must be a float32 vector of the output channels")
    kh, kw, cin, cout = weight.shape
    if cin != (2 if signed else 1) * x.shape[-1] or (signed and mode == "auto" and x.size < FUSED_MIN_VALUES):
        return None
    hp, wp = x.shape[1] + pads[0] + pads[1], x.shape[2] + pads[2] + pads[3]
    ho, wo = (hp - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
    threads = _threads()
    if not choose_forward(cin, cout, (kh, kw), stride, (ho, wo), forced=mode == "onnxruntime", threads=threads,
                          batch=int(x.shape[0])):
        return None
    in_hwc = tuple(int(d) for d in x.shape[1:])
    consts = (weight,) if bias is None else (weight, bias)
    key = (*(id(a) for a in consts), "fwd", signed, tuple(stride), tuple(pads), in_hwc, threads)
    session = _cached(cache, key, consts, lambda: _forward_session(weight, bias, stride, pads, in_hwc, signed, threads))
    return _run(session, x)


def conv_transpose(s: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                   in_shape: tuple[int, ...], cache: dict | None = None) -> Any | None:
    """:func:`lrpflow.layers._windows.conv_transpose` through onnxruntime, or None where it does not apply."""
    mode = conv_kernel()
    if mode == "numpy" or not _eligible(s, weight) or not available():
        return None
    kh, kw, cin, cout = weight.shape
    out_hwc = tuple(int(d) for d in s.shape[1:])
    threads = _threads()
    n, in_hw = int(s.shape[0]), (int(in_shape[1]), int(in_shape[2]))
    how = _transpose_kernel(mode, weight, tuple(stride), tuple(pads), out_hwc[:2], in_hw, threads, n)
    if how is None:
        return None
    if how == "unrolled":
        key = (id(weight), "unrolledT", tuple(stride), tuple(pads), out_hwc, in_hw, threads)
        session = _cached(cache, key, (weight,), lambda: _matmul_session(
            win.unrolled_weight(weight, in_hw, stride, pads).T, threads))
        return _run(session, s.reshape(n, -1)).reshape(n, *in_hw, cin)
    key = (id(weight), how, tuple(stride), tuple(pads), out_hwc, in_hw, threads)
    session = _cached(cache, key, (weight,),
                      lambda: _transpose_session(how, weight, stride, pads, out_hwc, in_hw, threads))
    return _run(session, s)


def conv_transpose_times(parts: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                         x: Any, signed: bool = False, cache: dict | None = None) -> Any | None:
    """``x ⊙ Wᵀ s`` with ``s`` = the ``parts`` joined along the channels, in one onnxruntime call, or None.

    ``signed``: the weight's input channels are ``[x⁺; x⁻]`` stacked (``2·C`` for ``x`` with
    ``C``), and the result is ``x⁺ ⊙ A + x⁻ ⊙ B`` with ``[A, B] = Wᵀ s`` (the αβ rule on
    signed inputs). Bitwise the same as joining the parts, :func:`conv_transpose` and the
    products in numpy (the same float32 operations in the same order); the join, the
    products and the channel split of ``signed`` cost no numpy pass over strided pieces.
    Applies where :func:`conv_transpose` would run onnxruntime.
    """
    mode = conv_kernel()
    if mode == "numpy" or not available() or not _eligible(x, weight) or not all(_eligible(p, weight) for p in parts):
        return None
    if mode == "auto" and x.size < FUSED_MIN_VALUES:
        return None
    kh, kw, cin, cout = weight.shape
    if cin != (2 if signed else 1) * x.shape[-1] or sum(int(p.shape[-1]) for p in parts) != cout \
            or len({tuple(p.shape[:3]) for p in parts}) != 1:
        return None
    part_hwc = tuple(tuple(int(d) for d in p.shape[1:]) for p in parts)
    x_hwc = tuple(int(d) for d in x.shape[1:])
    threads = _threads()
    how = _transpose_kernel(mode, weight, tuple(stride), tuple(pads), part_hwc[0][:2], x_hwc[:2], threads,
                            int(x.shape[0]))
    if how in (None, "unrolled"):
        return None  # numpy, or the caller's join and then conv_transpose's MatMul
    key = (id(weight), "times", how, signed, tuple(stride), tuple(pads), part_hwc, x_hwc, threads)
    session = _cached(cache, key, (weight,),
                      lambda: _times_session(how, weight, stride, pads, part_hwc, x_hwc, signed, threads))
    feeds = {f"s{i}": numpy.ascontiguousarray(p) for i, p in enumerate(parts)}
    feeds["x"] = numpy.ascontiguousarray(x)
    return session.run(None, feeds)[0]
