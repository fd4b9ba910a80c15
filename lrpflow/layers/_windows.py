"""Sliding-window helpers shared by convolution and pooling (NHWC, any backend).

Windows are strided views (no copy); the transposed window sum scatters back with one
strided add per kernel offset. Convolutions are GEMMs over im2col patches, chunked
over the batch so the patch workspace stays bounded, or banded GEMMs, or on padded small
grids one GEMM per kernel offset (:func:`conv_taps`).
"""
from __future__ import annotations

import itertools
import math
from typing import Any

from lrpflow.backend import get_namespace

#: Elements of im2col workspace per chunk at most (float64: 256 MiB).
WORKSPACE_ELEMENTS = 1 << 25
#: Workspace a chunk may always use, even for a small result (float32: 2 MiB).
MIN_WORKSPACE_ELEMENTS = 1 << 19
#: Largest unrolled weight (bytes) a small-grid convolution may use (see :func:`unrolled_fits`).
UNROLLED_MAX_BYTES = 1 << 26
#: Largest share of real (not padding) taps at which a stride-1 convolution runs tap by tap
#: (see :func:`taps_fit`): 3×3 on 4×4 grids has 0.69, on 8×8 0.84.
TAPS_MAX_REAL_SHARE = 0.75


def pair(v: Any, name: str) -> tuple[int, int]:
    """``3`` → ``(3, 3)``; ``(2, 1)`` stays."""
    if isinstance(v, (int,)):
        return (int(v), int(v))
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def pads4(padding: Any) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right) from an int, a pair (rows, cols) or a 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4  # type: ignore[return-value]
    t = tuple(int(a) for a in padding)
    if len(t) == 2:
        return (t[0], t[0], t[1], t[1])
    if len(t) == 4:
        return t  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, a pair or (top, bottom, left, right), got {padding!r}")


def out_size(n: int, k: int, s: int, p0: int, p1: int) -> int:
    """Output length of a valid window sweep: floor((n + p0 + p1 - k) / s) + 1."""
    return (n + p0 + p1 - k) // s + 1


def pad(x: Any, pads: tuple[int, int, int, int], value: float = 0.0) -> Any:
    """Pad the two spatial axes of an NHWC array."""
    if not any(pads):
        return x
    xp = get_namespace(x)
    t, b, l, r = pads
    return xp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), mode="constant", constant_values=value)


def windows(x: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> Any:
    """Strided view ``(N, Ho, Wo, C, kh, kw)`` of every window of an (already padded) NHWC array."""
    xp = get_namespace(x)
    view = xp.lib.stride_tricks.sliding_window_view(x, kernel, axis=(1, 2))
    return view[:, :: stride[0], :: stride[1]]


def separable(kernel: tuple[int, int]) -> bool:
    """True where a window sum (or its transpose) runs as a row pass then a column pass: ``kh + kw``
    strided adds instead of ``kh·kw``, used from 4×4 windows (``kh·kw ≥ 2(kh + kw)``).

    Measured (1 thread, float32, one channel): LeNet-5's 5×5 at batch 32 0.36× the direct
    transpose's time, ResNet's 7×7 stride-2 stem 0.32×, 4×4 0.32×; 3×3 windows gain on 32×32
    (0.53×) but lose on 128×128 (1.2×), so stay direct.
    """
    return kernel[0] * kernel[1] >= 2 * (kernel[0] + kernel[1])


def window_sum(x: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> Any:
    """``Σ_window x`` of an (already padded) NHWC array: ``kh·kw`` strided adds, or ``kh + kw``
    (:func:`separable`: along each row first, then down the columns)."""
    n, h, w, c = x.shape
    (kh, kw), (s0, s1) = kernel, stride
    ho, wo = (h - kh) // s0 + 1, (w - kw) // s1 + 1
    if separable(kernel):
        x = _strided_sum(x, kw, s1, wo, axis=2)  # (N, H, Wo, C): each window's sum along every row
        return _strided_sum(x, kh, s0, ho, axis=1)
    out = None
    for a in range(kh):
        for b in range(kw):
            part = x[:, a : a + s0 * (ho - 1) + 1 : s0, b : b + s1 * (wo - 1) + 1 : s1, :]
            out = part.copy() if out is None else out.__iadd__(part)
    return out


def _strided_sum(x: Any, k: int, s: int, n_out: int, axis: int) -> Any:
    """``Σ_{t<k} x[..., t + s·i, ...]`` along ``axis`` (1 or 2) for ``i < n_out``."""
    out = None
    for t in range(k):
        index = [slice(None)] * 4
        index[axis] = slice(t, t + s * (n_out - 1) + 1, s)
        part = x[tuple(index)]
        out = part.copy() if out is None else out.__iadd__(part)
    return out


def window_sum_transpose(g: Any, kernel: tuple[int, int], stride: tuple[int, int],
                         padded_shape: tuple[int, ...], pads: tuple[int, int, int, int]) -> Any:
    """Transpose of the window sum: every window adds its value ``g[n, p, q, c]`` to its members
    (row by row, then column by column where :func:`separable`)."""
    xp = get_namespace(g)
    n, ho, wo, c = g.shape
    (kh, kw), (s0, s1) = kernel, stride
    if tuple(stride) == tuple(kernel):  # non-overlapping windows: repeat each value over its window
        tiled = xp.empty((n, ho * kh, wo * kw, c), dtype=g.dtype)  # its own buffer: callers may multiply into it
        tiled.reshape(n, ho, kh, wo, kw, c)[...] = g[:, :, None, :, None, :]
        if (ho * kh, wo * kw) == tuple(padded_shape[1:3]):
            return unpad(tiled, pads)
        out = xp.zeros(padded_shape, dtype=g.dtype)
        out[:, : ho * kh, : wo * kw, :] = tiled
        return unpad(out, pads)
    out = xp.zeros(padded_shape, dtype=g.dtype)
    if separable(kernel):
        rows = xp.zeros((n, ho, padded_shape[2], c), dtype=g.dtype)  # each window's value spread along its row
        for b in range(kw):
            rows[:, :, b : b + s1 * wo : s1, :] += g
        for a in range(kh):
            out[:, a : a + s0 * ho : s0] += rows
        return unpad(out, pads)
    for a in range(kh):
        for b in range(kw):
            out[:, a : a + s0 * ho : s0, b : b + s1 * wo : s1, :] += g
    return unpad(out, pads)


def scatter_windows(cols: Any, kernel: tuple[int, int], stride: tuple[int, int],
                    padded_shape: tuple[int, ...], pads: tuple[int, int, int, int]) -> Any:
    """col2im: add ``cols[n, p, q, a, b, c]`` back to input position (p*s0 + a, q*s1 + b)."""
    xp = get_namespace(cols)
    ho, wo = cols.shape[1], cols.shape[2]
    out = xp.zeros(padded_shape, dtype=cols.dtype)
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            out[:, a : a + stride[0] * ho : stride[0], b : b + stride[1] * wo : stride[1], :] += cols[:, :, :, a, b, :]
    return unpad(out, pads)


def unpad(x: Any, pads: tuple[int, int, int, int]) -> Any:
    """Remove spatial padding from an NHWC array."""
    if not any(pads):
        return x
    t, b, l, r = pads
    return x[:, t : x.shape[1] - b, l : x.shape[2] - r, :]


def batch_chunks(n: int, per_sample: int, result: int = 0) -> list[slice]:
    """Batch slices whose workspace (``per_sample`` elements a sample) stays under
    :data:`WORKSPACE_ELEMENTS` and under the size of the ``result`` being computed
    (at least :data:`MIN_WORKSPACE_ELEMENTS`): scratch memory never outgrows the
    activations themselves."""
    limit = min(WORKSPACE_ELEMENTS, max(MIN_WORKSPACE_ELEMENTS, result))
    step = max(1, limit // max(1, per_sample))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def band_width_forward(cin: int, cout: int, kw: int, s1: int, wo: int) -> int:
    """Output columns per band for :func:`conv_forward` (1: plain im2col).

    Banding pays where im2col's GEMM is skinny (few output channels) and its copy long
    (few input channels): measured on one CPU core for kernels 3–5, c_in 1–32, c_out 10–64.
    """
    if wo < 2 or s1 >= kw or cout >= 96 or (cout >= 48 and cin >= 10):
        return 1
    return min(wo, 4 if (wo >= 24 and cout <= 32) else 2)


def band_width_transpose(cin: int, cout: int, kw: int, s1: int, wo: int) -> int:
    """Output columns per band for :func:`conv_transpose` (1: batch-last col2im)."""
    if wo < 2 or s1 >= kw:
        return 1
    if wo <= 8 and cin >= 128:
        # deep layers of VGG/ResNet: the banded GEMM's zeros cost more than col2im's adds
        # (1 thread, Xeon, interleaved medians: 4x4 512→1024 0.66x, 2x2 0.46–0.80x, 8x8 256→512 0.75x)
        return 1
    if cout >= 48 or (cout >= 20 and wo >= 24):
        if wo >= 24:
            return 4
        return min(wo, kw if kw >= 5 else 2)  # wide kernels: a band as wide as the kernel, 2 adds per row
    if wo <= 8 and cin >= 3:
        return 2
    return 1


def banded_weight(weight: Any, bq: int, s1: int) -> Any:
    """The weight of ``bq`` neighbouring output columns at once: a banded (Toeplitz) matrix.

    ``T[a, t, c, j, k] = W[a, t − j·s1, c, k]`` (0 outside the kernel), shape
    ``(kh·Tw·C_in, bq·C_out)`` with ``Tw = (bq − 1)·s1 + kw`` input columns per band.
    """
    xp = get_namespace(weight)
    kh, kw, cin, cout = weight.shape
    tw = (bq - 1) * s1 + kw
    t = xp.zeros((kh, tw, cin, bq, cout), dtype=weight.dtype)
    for j in range(bq):
        t[:, j * s1 : j * s1 + kw, :, j, :] = weight
    return t.reshape(kh * tw * cin, bq * cout)


#: Banded weights a cache keeps at most before it starts over (a layer sees a handful).
BAND_CACHE_ENTRIES = 16


def cached_banded_weight(weight: Any, bq: int, s1: int, cache: dict | None) -> Any:
    """:func:`banded_weight`, kept in ``cache`` (a dict owned by the layer) across calls.

    The key is the weight array's identity; the entry holds the array itself, so an id
    cannot be reused while its entry lives. Changing a weight in place is only allowed
    through ``set_params``/``invalidate``, which clear the layer's cache.
    """
    if cache is None:
        return banded_weight(weight, bq, s1)
    key = (id(weight), bq, s1)
    hit = cache.get(key)
    if hit is not None and hit[0] is weight:
        return hit[1]
    band = banded_weight(weight, bq, s1)
    if len(cache) >= BAND_CACHE_ENTRIES:
        cache.clear()
    cache[key] = (weight, band)
    return band


def unrolled_fits(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int], cin: int,
                  cout: int) -> bool:
    """True where a convolution's transpose may run as one dense matrix (:func:`unrolled_weight`;
    onnxruntime's prepacked MatMul, :mod:`lrpflow.layers.ort_conv`).

    The dense form multiplies every input position with every output position:
    ``H·W`` taps per output against im2col's ``kh·kw``, which on a grid smaller than the
    kernel also counts the zero padding. Used where that at least halves the work
    (``2·H·W ≤ kh·kw``: VGG-11's and ResNet-18's 3×3 layers on 2×2 grids, 0.44×) and the
    matrix stays under :data:`UNROLLED_MAX_BYTES` (float32).
    """
    h, w = in_hw
    return 2 * h * w <= kernel[0] * kernel[1] \
        and 4 * h * w * out_hw[0] * out_hw[1] * cin * cout <= UNROLLED_MAX_BYTES


def unrolled_weight(weight: Any, in_hw: tuple[int, int], stride: tuple[int, int],
                    pads: tuple[int, int, int, int]) -> Any:
    """The convolution as a dense matrix ``U`` of shape ``(H·W·C_in, Ho·Wo·C_out)``.

    ``U[(i, j, c), (p, q, k)] = W[i + top − p·s0, j + left − q·s1, c, k]`` where that tap
    lies in the kernel, else 0; so ``z = x.reshape(N, −1) @ U`` and ``Wᵀ s = s.reshape(N, −1) @ Uᵀ``
    (the zero padding never enters the product).
    """
    xp = get_namespace(weight)
    kh, kw, cin, cout = weight.shape
    (h, w), (s0, s1), (t, b, l, r) = in_hw, stride, pads
    ho, wo = out_size(h, kh, s0, t, b), out_size(w, kw, s1, l, r)
    u = xp.zeros((h, w, cin, ho, wo, cout), dtype=weight.dtype)
    for p, q, a, c in itertools.product(range(ho), range(wo), range(kh), range(kw)):
        i, j = p * s0 + a - t, q * s1 + c - l
        if 0 <= i < h and 0 <= j < w:
            u[i, j, :, p, q, :] = weight[a, c]
    return u.reshape(h * w * cin, ho * wo * cout)


def _tap_spans(n_in: int, n_out: int, k: int, before: int) -> list[tuple[int, int, int]]:
    """Per kernel offset ``a`` (stride 1): ``(a, p0, p1)``, the outputs whose tap ``a`` lies on the input."""
    spans = [(a, max(0, before - a), min(n_out, n_in + before - a)) for a in range(k)]
    return [(a, p0, p1) for a, p0, p1 in spans if p1 > p0]


def taps_fit(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
             pads: tuple[int, int, int, int]) -> bool:
    """True where a stride-1 convolution is cheaper tap by tap (:func:`conv_taps`) than by im2col.

    Tap by tap, each kernel offset multiplies only the outputs whose tap lies on the input; im2col
    also multiplies the zero padding. Used where the real taps are at most
    :data:`TAPS_MAX_REAL_SHARE` of im2col's (3×3 on 4×4 grids: 0.69; measured on VGG-11's 4×4
    layers at batch 32, 1 thread: 0.6–0.7× im2col's time, as fast as PyTorch's oneDNN).
    """
    if tuple(stride) != (1, 1) or kernel[0] * kernel[1] == 1:
        return False
    rows = sum(p1 - p0 for _, p0, p1 in _tap_spans(in_hw[0], out_hw[0], kernel[0], pads[0]))
    cols = sum(q1 - q0 for _, q0, q1 in _tap_spans(in_hw[1], out_hw[1], kernel[1], pads[2]))
    return rows * cols <= TAPS_MAX_REAL_SHARE * out_hw[0] * out_hw[1] * kernel[0] * kernel[1]


def conv_taps(a: Any, weight: Any, pads: tuple[int, int, int, int], result_hw: tuple[int, int],
              transpose: bool = False) -> Any:
    """Stride-1 convolution (or with ``transpose``, its transpose) as one GEMM per kernel offset.

    ``z[:, P_ab, Q_ab] += x[:, P_ab + a − top, Q_ab + b − left] @ W[a, b]`` over the outputs
    ``P_ab × Q_ab`` whose tap ``(a, b)`` lies on the input; the transpose adds
    ``s[:, P_ab, Q_ab] @ W[a, b]ᵀ`` back onto those inputs. A tap that covers the whole
    result (the centre of a "same" padding) writes it first. The workspace is one copied block
    and one product, each at most the size of ``a`` or the result.
    """
    xp = get_namespace(a, weight)
    kh, kw, cin, cout = weight.shape
    n, c_res = a.shape[0], (cin if transpose else cout)
    grid_in, grid_out = (result_hw, a.shape[1:3]) if transpose else (a.shape[1:3], result_hw)
    taps = []  # (source block, destination block, kernel offset)
    for ka, p0, p1 in _tap_spans(grid_in[0], grid_out[0], kh, pads[0]):
        for kb, q0, q1 in _tap_spans(grid_in[1], grid_out[1], kw, pads[2]):
            at_out = (slice(p0, p1), slice(q0, q1))
            i0, j0 = p0 + ka - pads[0], q0 + kb - pads[2]
            at_in = (slice(i0, i0 + p1 - p0), slice(j0, j0 + q1 - q0))
            taps.append((at_out, at_in, (ka, kb)) if transpose else (at_in, at_out, (ka, kb)))

    def product(src: tuple[slice, slice], dst: tuple[slice, slice], k: tuple[int, int]) -> Any:
        block = xp.ascontiguousarray(a[:, src[0], src[1], :]).reshape(-1, a.shape[-1])
        shape = (n, dst[0].stop - dst[0].start, dst[1].stop - dst[1].start, c_res)
        return (block @ (weight[k].T if transpose else weight[k])).reshape(shape)

    whole = [i for i, (_, dst, _) in enumerate(taps) if (dst[0].stop - dst[0].start, dst[1].stop - dst[1].start)
             == tuple(result_hw)]
    if whole:  # a tap covering the whole result writes it
        out = product(*taps.pop(whole[0]))
    else:
        out = xp.zeros((n, *result_hw, c_res), dtype=xp.result_type(a, weight))
    for src, dst, k in taps:
        out[:, dst[0], dst[1], :] += product(src, dst, k)
    return out


def conv_forward(x: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 cache: dict | None = None) -> Any:
    """Cross-correlation of NHWC ``x`` with ``weight[kh, kw, c_in, c_out]`` (no bias) as chunked GEMMs.

    im2col: each output position's window ``(kh, kw, C_in)`` is a row, times ``W`` as a
    ``(kh·kw·C_in, C_out)`` matrix. Banded (see :func:`band_width_forward`): each row holds
    the ``(kh, Tw, C_in)`` input block of ``bq`` neighbouring outputs, times
    :func:`banded_weight`, so the copy shrinks ~``bq·kw/Tw``-fold and the GEMM gets
    ``bq·C_out`` columns. Where padding is a large share of the taps (:func:`taps_fit`):
    :func:`conv_taps`. ``cache``: see :func:`cached_banded_weight`.
    """
    xp = get_namespace(x, weight)
    kh, kw, cin, cout = weight.shape
    s0, s1 = stride
    n = x.shape[0]
    hp, wp = x.shape[1] + pads[0] + pads[1], x.shape[2] + pads[2] + pads[3]
    ho, wo = (hp - kh) // s0 + 1, (wp - kw) // s1 + 1
    if taps_fit(x.shape[1:3], (ho, wo), (kh, kw), stride, pads):
        return conv_taps(x, weight, pads, (ho, wo))
    out = xp.empty((n, ho, wo, cout), dtype=xp.result_type(x, weight))
    bq = band_width_forward(cin, cout, kw, s1, wo)
    if bq == 1:
        xpad = pad(x, pads)
        w2 = weight.reshape(kh * kw * cin, cout)
        for sl in batch_chunks(n, ho * wo * kh * kw * cin, n * ho * wo * cout):
            patches = windows(xpad[sl], (kh, kw), stride).transpose(0, 1, 2, 4, 5, 3)  # N,Ho,Wo,kh,kw,C
            m = patches.shape[0] * ho * wo
            xp.matmul(patches.reshape(m, kh * kw * cin), w2, out=out[sl].reshape(m, cout))
        return out
    nqb, d, tw = -(-wo // bq), bq * s1, (bq - 1) * s1 + kw
    extra = max(0, (nqb - 1) * d + tw - wp)  # the last band may reach past the input: zeros
    xpad = pad(x, (pads[0], pads[1], pads[2], pads[3] + extra))
    band = cached_banded_weight(weight, bq, s1, cache)
    sn, sh, sw, sc = xpad.strides
    for sl in batch_chunks(n, ho * nqb * kh * tw * cin, n * ho * wo * cout):
        xs = xpad[sl]
        m = xs.shape[0]
        blocks = xp.lib.stride_tricks.as_strided(xs, (m, ho, nqb, kh, tw, cin), (sn, sh * s0, sw * d, sh, sw, sc))
        rows = blocks.reshape(m * ho * nqb, kh * tw * cin)
        if nqb * bq == wo:  # the GEMM writes the output in place
            xp.matmul(rows, band, out=out[sl].reshape(m * ho * nqb, bq * cout))
        else:
            out[sl] = (rows @ band).reshape(m, ho, nqb * bq, cout)[:, :, :wo]
    return out


def conv_transpose(s: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                   in_shape: tuple[int, ...], cache: dict | None = None) -> Any:
    """Vector–Jacobian product of :func:`conv_forward` w.r.t. its input: ``Wᵀ s`` back on the input grid.

    Batch-last col2im (:func:`_transpose_columns`) or, where it pays
    (:func:`band_width_transpose`), bands: ``s`` of ``bq`` neighbouring output columns times
    the banded weight's transpose gives each band's ``(kh, Tw, C_in)`` input block, added
    back with ``kh·⌈Tw/(bq·s1)⌉`` strided adds. Padded small grids: :func:`conv_taps`.
    ``cache``: see :func:`cached_banded_weight`.
    """
    xp = get_namespace(s, weight)
    kh, kw, cin, cout = weight.shape
    s0, s1 = stride
    n, ho, wo, _ = s.shape
    if taps_fit(tuple(in_shape[1:3]), (ho, wo), (kh, kw), stride, pads):
        return conv_taps(s, weight, pads, tuple(in_shape[1:3]), transpose=True)
    bq = band_width_transpose(cin, cout, kw, s1, wo)
    if bq == 1:
        return _transpose_columns(s, weight, stride, pads, in_shape)
    hp, wp = in_shape[1] + pads[0] + pads[1], in_shape[2] + pads[2] + pads[3]
    nqb, d, tw = -(-wo // bq), bq * s1, (bq - 1) * s1 + kw
    nu = -(-tw // d)  # input blocks of width d one band touches
    nblk = max(nqb + nu - 1, -(-wp // d))
    band_t = cached_banded_weight(weight, bq, s1, cache).T
    parts = []
    for sl in batch_chunks(n, ho * nqb * kh * tw * cin, math.prod(in_shape)):
        sc = s[sl]
        m = sc.shape[0]
        if nqb * bq != wo:
            sc = xp.concatenate([sc, xp.zeros((m, ho, nqb * bq - wo, cout), dtype=sc.dtype)], axis=2)
        cols = (sc.reshape(m * ho * nqb, bq * cout) @ band_t).reshape(m, ho, nqb, kh, tw, cin)
        acc = xp.zeros((m, hp, nblk, d, cin), dtype=cols.dtype)
        for a in range(kh):
            for u in range(nu):
                width = min(d, tw - u * d)
                acc[:, a : a + s0 * ho : s0, u : u + nqb, :width, :] += cols[:, :, :, a, u * d : u * d + width, :]
        parts.append(unpad(acc.reshape(m, hp, nblk * d, cin)[:, :, :wp], pads))
    out = parts[0] if len(parts) == 1 else xp.concatenate(parts)
    return xp.ascontiguousarray(out)


def _transpose_columns(s: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                       in_shape: tuple[int, ...]) -> Any:
    """:func:`conv_transpose` by col2im in batch-last order.

    With ``s`` as ``(C_out, Ho, Wo, N)``, one GEMM per kernel row ``a`` gives the columns ``W[a]ᵀ s`` as ``(kw, C_in, Ho, Wo, N)``, and each of the ``kw``
    strided adds into the ``(C_in, Hp, Wp, N)`` accumulator moves runs of ``Wo·N``
    contiguous values (an NHWC accumulator would move runs of ``C_in``). Outputs of fewer
    than 64 positions use the NHWC columns directly.
    """
    xp = get_namespace(s, weight)
    kh, kw, cin, cout = weight.shape
    n, ho, wo, _ = s.shape
    hp, wp = in_shape[1] + pads[0] + pads[1], in_shape[2] + pads[2] + pads[3]
    parts = []
    for sl in batch_chunks(n, ho * wo * kh * kw * cin, math.prod(in_shape)):
        sc = s[sl]
        m = sc.shape[0]
        if ho * wo < 64:
            cols = (sc.reshape(-1, cout) @ weight.reshape(kh * kw * cin, cout).T).reshape(m, ho, wo, kh, kw, cin)
            parts.append(scatter_windows(cols, (kh, kw), stride, (m, hp, wp, cin), pads))
            continue
        s_t = xp.ascontiguousarray(sc.transpose(3, 1, 2, 0)).reshape(cout, ho * wo * m)
        acc = xp.zeros((cin, hp, wp, m), dtype=xp.result_type(s, weight))
        for a in range(kh):
            cols = (weight[a].reshape(kw * cin, cout) @ s_t).reshape(kw, cin, ho, wo, m)
            for b in range(kw):
                acc[:, a : a + stride[0] * ho : stride[0], b : b + stride[1] * wo : stride[1], :] += cols[b]
        parts.append(unpad(acc, pads).transpose(3, 1, 2, 0))  # (C, H, W, N): spatial axes 1, 2 as in NHWC
    out = parts[0] if len(parts) == 1 else xp.concatenate(parts)
    return xp.ascontiguousarray(out)


def conv_weight_grad(x: Any, g: Any, kernel: tuple[int, int], stride: tuple[int, int],
                     pads: tuple[int, int, int, int]) -> Any:
    """Gradient of the convolution w.r.t. its weight: ``Σ_n,p,q patch ⊗ g``, shape (kh, kw, C_in, C_out)."""
    xp = get_namespace(x, g)
    kh, kw = kernel
    xpad = pad(x, pads)
    n, ho, wo, cout = g.shape
    cin = x.shape[3]
    dw = xp.zeros((kh * kw * cin, cout), dtype=xp.result_type(x, g))
    for sl in batch_chunks(n, ho * wo * kh * kw * cin):
        patches = windows(xpad[sl], (kh, kw), stride).transpose(0, 1, 2, 4, 5, 3)
        dw += patches.reshape(-1, kh * kw * cin).T @ g[sl].reshape(-1, cout)
    return dw.reshape(kh, kw, cin, cout)


# --- grouped and depthwise convolution ------------------------------------------------


def depthwise_forward(x: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int]) -> Any:
    """Depthwise cross-correlation, ``weight[kh, kw, 1, C]``: one strided multiply-add per kernel offset."""
    xp = get_namespace(x, weight)
    kh, kw, _, c = weight.shape
    xpad = pad(x, pads)
    ho, wo = (xpad.shape[1] - kh) // stride[0] + 1, (xpad.shape[2] - kw) // stride[1] + 1
    out = xp.zeros((x.shape[0], ho, wo, c), dtype=xp.result_type(x, weight))
    for a in range(kh):
        for b in range(kw):
            out += xpad[:, a : a + stride[0] * (ho - 1) + 1 : stride[0], b : b + stride[1] * (wo - 1) + 1 : stride[1], :] \
                * weight[a, b, 0]
    return out


def depthwise_transpose(s: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                        in_shape: tuple[int, ...]) -> Any:
    """Transpose of :func:`depthwise_forward`: every output adds ``s·w`` back to its window."""
    xp = get_namespace(s, weight)
    kh, kw = weight.shape[:2]
    n, ho, wo, c = s.shape
    out = xp.zeros((n, in_shape[1] + pads[0] + pads[1], in_shape[2] + pads[2] + pads[3], c), dtype=xp.result_type(s, weight))
    for a in range(kh):
        for b in range(kw):
            out[:, a : a + stride[0] * ho : stride[0], b : b + stride[1] * wo : stride[1], :] += s * weight[a, b, 0]
    return unpad(out, pads)


def depthwise_weight_grad(x: Any, g: Any, kernel: tuple[int, int], stride: tuple[int, int],
                          pads: tuple[int, int, int, int]) -> Any:
    """Gradient of :func:`depthwise_forward` w.r.t. its weight, shape (kh, kw, 1, C)."""
    xp = get_namespace(x, g)
    xpad = pad(x, pads)
    n, ho, wo, c = g.shape
    dw = xp.zeros((kernel[0], kernel[1], 1, c), dtype=xp.result_type(x, g))
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            part = xpad[:, a : a + stride[0] * (ho - 1) + 1 : stride[0], b : b + stride[1] * (wo - 1) + 1 : stride[1], :]
            dw[a, b, 0] = (part * g).sum(axis=(0, 1, 2))
    return dw
