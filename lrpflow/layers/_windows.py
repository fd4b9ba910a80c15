"""Sliding-window helpers shared by convolution and pooling (NHWC, any backend).

Windows are strided views (no copy); the transposed window sum scatters back with one
strided add per kernel offset. Convolutions are GEMMs over im2col patches, chunked
over the batch so the patch workspace stays bounded.
"""
from __future__ import annotations

from typing import Any

from lrpflow.backend import get_namespace

#: Elements of im2col workspace per chunk (float64: 256 MiB).
WORKSPACE_ELEMENTS = 1 << 25


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


def window_sum(x: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> Any:
    """``Σ_window x`` of an (already padded) NHWC array: ``kh·kw`` strided adds."""
    n, h, w, c = x.shape
    ho, wo = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    out = None
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            part = x[:, a : a + stride[0] * (ho - 1) + 1 : stride[0], b : b + stride[1] * (wo - 1) + 1 : stride[1], :]
            out = part.copy() if out is None else out.__iadd__(part)
    return out


def window_sum_transpose(g: Any, kernel: tuple[int, int], stride: tuple[int, int],
                         padded_shape: tuple[int, ...], pads: tuple[int, int, int, int]) -> Any:
    """Transpose of the window sum: every window adds its value ``g[n, p, q, c]`` to its members."""
    xp = get_namespace(g)
    n, ho, wo, c = g.shape
    if tuple(stride) == tuple(kernel):  # non-overlapping windows: repeat each value over its window
        kh, kw = kernel
        tiled = xp.broadcast_to(g[:, :, None, :, None, :], (n, ho, kh, wo, kw, c)).reshape(n, ho * kh, wo * kw, c)
        if (ho * kh, wo * kw) == tuple(padded_shape[1:3]):
            return unpad(tiled, pads)
        out = xp.zeros(padded_shape, dtype=g.dtype)
        out[:, : ho * kh, : wo * kw, :] = tiled
        return unpad(out, pads)
    out = xp.zeros(padded_shape, dtype=g.dtype)
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            out[:, a : a + stride[0] * ho : stride[0], b : b + stride[1] * wo : stride[1], :] += g
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


def batch_chunks(n: int, per_sample: int) -> list[slice]:
    """Batch slices whose workspace stays under :data:`WORKSPACE_ELEMENTS`."""
    step = max(1, WORKSPACE_ELEMENTS // max(1, per_sample))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def conv_forward(x: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int]) -> Any:
    """Cross-correlation of NHWC ``x`` with ``weight[kh, kw, c_in, c_out]`` (no bias) as chunked GEMMs."""
    xp = get_namespace(x, weight)
    kh, kw, cin, cout = weight.shape
    xpad = pad(x, pads)
    n, hp, wp, _ = xpad.shape
    ho, wo = (hp - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
    w2 = weight.reshape(kh * kw * cin, cout)
    out = xp.empty((n, ho, wo, cout), dtype=xp.result_type(x, weight))
    for sl in batch_chunks(n, ho * wo * kh * kw * cin):
        patches = windows(xpad[sl], (kh, kw), stride).transpose(0, 1, 2, 4, 5, 3)  # N,Ho,Wo,kh,kw,C
        m = patches.shape[0] * ho * wo
        out[sl] = (patches.reshape(m, kh * kw * cin) @ w2).reshape(-1, ho, wo, cout)
    return out


def conv_transpose(s: Any, weight: Any, stride: tuple[int, int], pads: tuple[int, int, int, int],
                   in_shape: tuple[int, ...]) -> Any:
    """Vector–Jacobian product of :func:`conv_forward` w.r.t. its input: ``Wᵀ s`` back on the input grid.

    One GEMM gives every window's column ``W s`` in kernel-offset-major order
    ``(kh, kw, C, N, Ho, Wo)``, so each of the ``kh·kw`` scatter-adds reads a contiguous block
    (channel-first accumulation, one transpose back to NHWC at the end). Small outputs use
    the NHWC column layout directly.
    """
    xp = get_namespace(s, weight)
    kh, kw, cin, cout = weight.shape
    n, ho, wo, _ = s.shape
    hp, wp = in_shape[1] + pads[0] + pads[1], in_shape[2] + pads[2] + pads[3]
    w2 = weight.reshape(kh * kw * cin, cout)
    parts = []
    for sl in batch_chunks(n, ho * wo * kh * kw * cin):
        sc = s[sl]
        m = sc.shape[0]
        if ho * wo < 64:
            cols = (sc.reshape(-1, cout) @ w2.T).reshape(m, ho, wo, kh, kw, cin)
            parts.append(scatter_windows(cols, (kh, kw), stride, (m, hp, wp, cin), pads))
            continue
        cols = (w2 @ sc.reshape(-1, cout).T).reshape(kh, kw, cin, m, ho, wo)
        acc = xp.zeros((cin, m, hp, wp), dtype=cols.dtype)
        for a in range(kh):
            for b in range(kw):
                acc[:, :, a : a + stride[0] * ho : stride[0], b : b + stride[1] * wo : stride[1]] += cols[a, b]
        parts.append(unpad(acc.transpose(1, 2, 3, 0), pads))
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
