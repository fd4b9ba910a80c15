"""Slow, explicit reference implementation of LRP, used as ground truth in the tests.

Nothing here is meant to be fast. Every formula is written out the long way so a
reader can check it against the paper or ``../shared/TOOLBOX_SEMANTICS.md`` line
by line:

- Linear layers build the full contribution tensor ``z[n, i, j] = x[n, i] * W[i, j]``
  (N x I x J) and normalise it column by column.
- Convolutions and pools loop over the output positions ``(p, q)`` in Python and, for
  each one, collect the members of the receptive field explicitly (padding members are
  skipped: they contribute nothing and receive nothing).

The module has no dependency on ``lrpflow``; it is pure numpy in float64.

Part A (generic rules, lrpflow semantics)
    :func:`linear_rule`, :func:`conv2d_rule`, :func:`sumpool_rule`, :func:`avgpool_rule`,
    :func:`maxpool_wta`, :func:`maxpool_proportional`, :func:`maxpool_flat`,
    :func:`add_rule`, :func:`batchnorm_rule`, plus plain forward helpers.

Part B (LRP Toolbox, python/numpy backend, reproduced from the spec including its quirks)
    :func:`read_toolbox_txt`, :func:`toolbox_forward`, :func:`toolbox_layer_lrp`,
    :func:`toolbox_lrp`.

Conventions: activations NHWC ``x[N, H, W, C]`` or dense ``x[N, D]``; Linear weights
``W[m_in, n_out]`` with ``y = x @ W + b``; conv weights ``W[h, w, c_in, c_out]``,
cross-correlation, stride ``(s0, s1)``, symmetric zero padding ``(p0, p1)``.
``s(t) = +1 if t >= 0 else -1``; ``t+ = max(t, 0)``; ``t- = min(t, 0)``;
``safe(a, d) = a / d`` where ``d != 0`` and ``0`` where ``d == 0``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = [
    "RULES",
    "sign0",
    "safe",
    "pos",
    "neg",
    "linear_forward",
    "conv2d_forward",
    "sumpool_forward",
    "avgpool_forward",
    "maxpool_forward",
    "linear_rule",
    "conv2d_rule",
    "sumpool_rule",
    "avgpool_rule",
    "maxpool_wta",
    "maxpool_proportional",
    "maxpool_flat",
    "add_rule",
    "batchnorm_rule",
    "read_toolbox_txt",
    "toolbox_forward",
    "toolbox_layer_lrp",
    "toolbox_lrp",
    "shared_dir",
    "toolbox_mnist_preprocess",
]

F64 = np.float64

#: Rule names understood by the generic (Part A) functions.
RULES = ("z", "epsilon", "gamma", "alpha_beta", "zplus", "zbox", "wsquare", "flat")


# ----------------------------------------------------------------------------------
# elementary helpers
# ----------------------------------------------------------------------------------
def sign0(t: Any) -> np.ndarray:
    """Sign with ``s(0) = +1``.

    Notes
    -----
    ``s(t) = +1 if t >= 0 else -1`` (unlike ``np.sign``, which gives 0 at 0).
    """
    t = np.asarray(t, dtype=F64)
    return np.where(t >= 0, 1.0, -1.0)


def safe(a: Any, d: Any) -> np.ndarray:
    """Division that returns 0 where the denominator is 0 (never NaN, never inf).

    Notes
    -----
    ``safe(a, d) = a / d`` if ``d != 0`` else ``0``; broadcasts like ``a / d``.
    """
    a, d = np.broadcast_arrays(np.asarray(a, dtype=F64), np.asarray(d, dtype=F64))
    out = np.zeros(a.shape, dtype=F64)
    np.divide(a, d, out=out, where=(d != 0))
    return out


def pos(t: Any) -> np.ndarray:
    """Positive part ``t+ = max(t, 0)``."""
    return np.maximum(np.asarray(t, dtype=F64), 0.0)


def neg(t: Any) -> np.ndarray:
    """Negative part ``t- = min(t, 0)``."""
    return np.minimum(np.asarray(t, dtype=F64), 0.0)


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=F64)


def _required(params: dict, key: str, rule: str) -> float:
    if key not in params or params[key] is None:
        raise ValueError(f"rule {rule!r} needs the parameter {key!r}")
    return params[key]


def _pair(v: Any) -> tuple[int, int]:
    if np.isscalar(v):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


# ----------------------------------------------------------------------------------
# Part A: the rule core, for one "window" (one set of inputs feeding a set of outputs)
# ----------------------------------------------------------------------------------
def _window_shares(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    rule: str,
    params: dict,
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
) -> np.ndarray:
    """Shares ``q[n, i, j]`` of output ``j``'s relevance that go to input ``i``.

    Parameters
    ----------
    x : (N, I) inputs of the window (only in-image members).
    w : (I, J) weights connecting those inputs to the J outputs.
    b : (J,) bias or None (no bias).
    rule : one of :data:`RULES`.
    params : rule parameters (``bias``, ``epsilon``, ``gamma``, ``stabilizer``,
        ``alpha``, ``beta``).
    low, high : (N, I) box bounds for ``zbox``.

    Returns
    -------
    q : (N, I, J); ``R_i = sum_j q_ij R_j``.
    """
    x = _f64(x)
    w = _f64(w)
    n_samples, n_in = x.shape
    n_out = w.shape[1]
    use_bias = params.get("bias", True)
    if b is None or not use_bias:
        b_eff = np.zeros(n_out, dtype=F64)
    else:
        b_eff = _f64(b).reshape(n_out)

    # the full contribution tensor z_ij = x_i * w_ij, shape (N, I, J)
    z = x[:, :, None] * w[None, :, :]

    if rule in ("z", "epsilon"):
        eps = params.get("epsilon", 1e-16) if rule == "z" else _required(params, "epsilon", rule)
        z_j = z.sum(axis=1) + b_eff[None, :]                     # (N, J)
        den = z_j + eps * sign0(z_j)
        return safe(z, den[:, None, :])

    if rule == "gamma":
        # generalised gamma (zennit's Gamma): where the plain output z_j > 0 the positive
        # contributions are favoured, z+g = z + g z+, b + g b+; where z_j < 0 the negative
        # ones, z-g = z + g z-, b + g b-; where z_j = 0 nothing is passed
        gamma = _required(params, "gamma", rule)
        stab = params.get("stabilizer", 1e-16)
        z_j = z.sum(axis=1) + b_eff[None, :]
        q = np.zeros_like(z)
        for part, mask in ((pos, z_j > 0), (neg, z_j < 0)):
            z_g = z + gamma * part(z)
            z_gj = z_g.sum(axis=1) + (b_eff + gamma * part(b_eff))[None, :]
            den = z_gj + stab * sign0(z_gj)
            q += safe(z_g, den[:, None, :]) * mask[:, None, :]
        return q

    if rule in ("alpha_beta", "zplus"):
        if rule == "zplus":
            alpha, beta = 1.0, 0.0
        else:
            alpha = float(_required(params, "alpha", rule))
            beta = params.get("beta")
            beta = alpha - 1.0 if beta is None else float(beta)
        z_p, z_n = pos(z), neg(z)
        p_j = z_p.sum(axis=1) + pos(b_eff)[None, :]              # (N, J), >= 0
        n_j = z_n.sum(axis=1) + neg(b_eff)[None, :]              # (N, J), <= 0
        return (alpha * safe(z_p, (p_j + 1e-16)[:, None, :])
                - beta * safe(z_n, (n_j - 1e-16)[:, None, :]))

    if rule == "zbox":
        if low is None or high is None:
            raise ValueError("rule 'zbox' needs the parameters 'low' and 'high'")
        low = _f64(low)
        high = _f64(high)
        # no bias at all
        z_b = (x[:, :, None] * w[None, :, :]
               - low[:, :, None] * pos(w)[None, :, :]
               - high[:, :, None] * neg(w)[None, :, :])
        z_j = z_b.sum(axis=1)
        den = z_j + 1e-16 * sign0(z_j)
        return safe(z_b, den[:, None, :])

    if rule == "wsquare":
        w2 = w ** 2
        q = safe(w2, w2.sum(axis=0, keepdims=True))              # (I, J)
        return np.broadcast_to(q[None, :, :], (n_samples, n_in, n_out)).copy()

    if rule == "flat":
        return np.full((n_samples, n_in, n_out), 1.0 / n_in if n_in else 0.0)

    raise ValueError(f"unknown rule {rule!r}; known: {RULES}")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {RULES}")


def _box(params: dict, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Broadcast zbox bounds to ``x``'s shape (given without or with batch axis)."""
    if "low" not in params or "high" not in params:
        return None, None
    low = np.broadcast_to(_f64(params["low"]), x.shape)
    high = np.broadcast_to(_f64(params["high"]), x.shape)
    return low, high


# ----------------------------------------------------------------------------------
# Part A: forward helpers (explicit loops)
# ----------------------------------------------------------------------------------
def _conv_windows(
    H: int, W: int, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int]
) -> Iterator[tuple[int, int, list[tuple[int, int, int, int]]]]:
    """Yield ``(p, q, members)``; members are ``(a, b, row, col)`` with
    kernel offset ``(a, b)`` and in-image input position ``(row, col)``."""
    s0, s1 = stride
    p0, p1 = padding
    h_out = (H + 2 * p0 - kh) // s0 + 1
    w_out = (W + 2 * p1 - kw) // s1 + 1
    for p in range(h_out):
        for q in range(w_out):
            members = []
            for a in range(kh):
                for b in range(kw):
                    row = p * s0 - p0 + a
                    col = q * s1 - p1 + b
                    if 0 <= row < H and 0 <= col < W:
                        members.append((a, b, row, col))
            yield p, q, members


def _pool_windows(
    H: int, W: int, pool: tuple[int, int], stride: tuple[int, int]
) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Yield ``(p, q, [(row, col), ...])`` for an unpadded pool."""
    hp, wp = pool
    s0, s1 = stride
    h_out = (H - hp) // s0 + 1
    w_out = (W - wp) // s1 + 1
    for p in range(h_out):
        for q in range(w_out):
            yield p, q, [(p * s0 + a, q * s1 + b) for a in range(hp) for b in range(wp)]


def _out_size(H: int, W: int, k: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    return ((H + 2 * padding[0] - k[0]) // stride[0] + 1,
            (W + 2 * padding[1] - k[1]) // stride[1] + 1)


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Dense layer: ``y = x @ W + b``."""
    y = _f64(x) @ _f64(W)
    return y if b is None else y + _f64(b)


def conv2d_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None,
    stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
) -> np.ndarray:
    """Cross-correlation with zero padding, one output position at a time.

    Notes
    -----
    ``y[n,p,q,k] = sum_{a,b,c} x[n, p*s0-p0+a, q*s1-p1+b, c] W[a,b,c,k] + b[k]``
    (out-of-image members are zero).
    """
    x, W = _f64(x), _f64(W)
    stride, padding = _pair(stride), _pair(padding)
    N, H, Wd, C = x.shape
    kh, kw, _, K = W.shape
    h_out, w_out = _out_size(H, Wd, (kh, kw), stride, padding)
    y = np.zeros((N, h_out, w_out, K))
    for p, q, members in _conv_windows(H, Wd, kh, kw, stride, padding):
        for a, bb, row, col in members:
            y[:, p, q, :] += x[:, row, col, :] @ W[a, bb, :, :]
        if b is not None:
            y[:, p, q, :] += _f64(b)
    return y


def sumpool_forward(x: np.ndarray, pool: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Plain (unscaled) sum pool per channel: ``y_j = sum_{i in win(j)} x_i``."""
    x = _f64(x)
    pool, stride = _pair(pool), _pair(stride)
    N, H, W, C = x.shape
    y = np.zeros((N, *_out_size(H, W, pool, stride), C))
    for p, q, members in _pool_windows(H, W, pool, stride):
        for row, col in members:
            y[:, p, q, :] += x[:, row, col, :]
    return y


def avgpool_forward(x: np.ndarray, pool: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Average pool per channel: ``y_j = sum_{i in win(j)} x_i / (hp*wp)``."""
    pool = _pair(pool)
    return sumpool_forward(x, pool, stride) / (pool[0] * pool[1])


def maxpool_forward(x: np.ndarray, pool: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Max pool per channel: ``y_j = max_{i in win(j)} x_i``."""
    x = _f64(x)
    pool, stride = _pair(pool), _pair(stride)
    N, H, W, C = x.shape
    y = np.full((N, *_out_size(H, W, pool, stride), C), -np.inf)
    for p, q, members in _pool_windows(H, W, pool, stride):
        for row, col in members:
            y[:, p, q, :] = np.maximum(y[:, p, q, :], x[:, row, col, :])
    return y


# ----------------------------------------------------------------------------------
# Part A: generic rules per layer kind
# ----------------------------------------------------------------------------------
def linear_rule(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, R: np.ndarray, rule: str, **params: Any
) -> np.ndarray:
    """Relevance of a dense layer's input, from the full N x I x J contribution tensor.

    Parameters
    ----------
    x : (N, I) input; W : (I, J); b : (J,) or None; R : (N, J) output relevance.
    rule : one of :data:`RULES`; ``params`` as in the rule table (``bias=True|False``,
        ``epsilon``, ``gamma``/``stabilizer``, ``alpha``/``beta``, ``low``/``high``).

    Returns
    -------
    R_in : (N, I)

    Notes
    -----
    ``z_ij = x_i w_ij``, ``z_j = sum_i z_ij + b_j``, ``R_i = sum_j q_ij R_j`` with e.g.
    ``q_ij = safe(z_ij, z_j + eps*s(z_j))`` for ``z``/``epsilon``.
    """
    _check_rule(rule)
    x, W, R = _f64(x), _f64(W), _f64(R)
    low, high = _box(params, x) if rule == "zbox" else (None, None)
    q = _window_shares(x, W, b, rule, params, low, high)         # (N, I, J)
    return (q * R[:, None, :]).sum(axis=2)


def conv2d_rule(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None, R: np.ndarray,
    stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
    rule: str = "z", **params: Any,
) -> np.ndarray:
    """Relevance of a convolution's input, one output position at a time.

    Parameters
    ----------
    x : (N, H, W, C); W : (h, w, C, K); b : (K,) or None; R : (N, Hout, Wout, K).
    stride, padding : pairs (zero padding, symmetric).
    rule, params : as :func:`linear_rule`.

    Returns
    -------
    R_in : (N, H, W, C)

    Notes
    -----
    For output position ``(p, q)`` the window's in-image members ``i = (row, col, c)``
    form a small dense layer ``z_ik = x_i W[a, b, c, k]`` to which the rule is applied;
    ``R_i`` sums the shares of all windows covering ``i``. Padded members are dropped
    (also from ``flat``'s count and ``wsquare``'s sum).
    """
    _check_rule(rule)
    x, W, R = _f64(x), _f64(W), _f64(R)
    stride, padding = _pair(stride), _pair(padding)
    N, H, Wd, C = x.shape
    kh, kw, c_in, K = W.shape
    assert c_in == C, "channel mismatch"
    low, high = _box(params, x) if rule == "zbox" else (None, None)
    R_in = np.zeros_like(x)
    for p, q, members in _conv_windows(H, Wd, kh, kw, stride, padding):
        M = len(members)
        if M == 0:
            continue
        x_win = np.stack([x[:, row, col, :] for (_, _, row, col) in members], axis=1)
        x_win = x_win.reshape(N, M * C)                          # i = (member, channel)
        w_win = np.stack([W[a, bb, :, :] for (a, bb, _, _) in members], axis=0)
        w_win = w_win.reshape(M * C, K)
        if low is not None:
            low_win = np.stack([low[:, row, col, :] for (_, _, row, col) in members], 1)
            high_win = np.stack([high[:, row, col, :] for (_, _, row, col) in members], 1)
            low_win, high_win = low_win.reshape(N, M * C), high_win.reshape(N, M * C)
        else:
            low_win = high_win = None
        q_share = _window_shares(x_win, w_win, b, rule, params, low_win, high_win)
        r_win = (q_share * R[:, p, q, None, :]).sum(axis=2).reshape(N, M, C)
        for m, (_, _, row, col) in enumerate(members):
            R_in[:, row, col, :] += r_win[:, m, :]
    return R_in


def _pool_rule(
    x: np.ndarray, R: np.ndarray, pool: Sequence[int], stride: Sequence[int],
    weight: float, rule: str, params: dict,
) -> np.ndarray:
    """Per-channel pool as a dense window with all weights equal to ``weight``, no bias."""
    _check_rule(rule)
    x, R = _f64(x), _f64(R)
    pool, stride = _pair(pool), _pair(stride)
    N, H, W, C = x.shape
    low, high = _box(params, x) if rule == "zbox" else (None, None)
    R_in = np.zeros_like(x)
    for p, q, members in _pool_windows(H, W, pool, stride):
        M = len(members)
        w_win = np.full((M, 1), weight)
        for c in range(C):
            x_win = np.stack([x[:, row, col, c] for (row, col) in members], axis=1)  # (N, M)
            if low is not None:
                low_win = np.stack([low[:, row, col, c] for (row, col) in members], 1)
                high_win = np.stack([high[:, row, col, c] for (row, col) in members], 1)
            else:
                low_win = high_win = None
            q_share = _window_shares(x_win, w_win, None, rule, params, low_win, high_win)
            r_win = q_share[:, :, 0] * R[:, p, q, c][:, None]
            for m, (row, col) in enumerate(members):
                R_in[:, row, col, c] += r_win[:, m]
    return R_in


def sumpool_rule(
    x: np.ndarray, R: np.ndarray, pool: Sequence[int], stride: Sequence[int],
    rule: str = "z", **params: Any,
) -> np.ndarray:
    """Sum pool (weights 1, no bias) under a generic rule.

    Notes
    -----
    ``z_ij = x_i``, ``z_j = sum_{i in win(j)} x_i``; ``wsquare`` equals ``flat``.
    """
    return _pool_rule(x, R, pool, stride, 1.0, rule, params)


def avgpool_rule(
    x: np.ndarray, R: np.ndarray, pool: Sequence[int], stride: Sequence[int],
    rule: str = "z", **params: Any,
) -> np.ndarray:
    """Average pool (weights ``1/(hp*wp)``, no bias) under a generic rule.

    Notes
    -----
    ``z_ij = x_i / (hp*wp)``; differs from :func:`sumpool_rule` only through ``epsilon``
    (and the tiny stabilisers).
    """
    hp, wp = _pair(pool)
    return _pool_rule(x, R, pool, stride, 1.0 / (hp * wp), rule, params)


def maxpool_wta(
    x: np.ndarray, R: np.ndarray, pool: Sequence[int], stride: Sequence[int]
) -> np.ndarray:
    """Winner-take-all max pool; ties (exact float equality) share equally.

    Notes
    -----
    ``q_ij = [x_i == max_{win(j)} x] / #{i' in win(j): x_i' == max}``.
    """
    x, R = _f64(x), _f64(R)
    pool, stride = _pair(pool), _pair(stride)
    N, H, W, C = x.shape
    R_in = np.zeros_like(x)
    for p, q, members in _pool_windows(H, W, pool, stride):
        for c in range(C):
            v = np.stack([x[:, row, col, c] for (row, col) in members], axis=1)  # (N, M)
            mx = v.max(axis=1, keepdims=True)
            winners = (v == mx).astype(F64)
            share = winners / winners.sum(axis=1, keepdims=True)
            for m, (row, col) in enumerate(members):
                R_in[:, row, col, c] += share[:, m] * R[:, p, q, c]
    return R_in


def maxpool_proportional(
    x: np.ndarray, R: np.ndarray, pool: Sequence[int], stride: Sequence[int]
) -> np.ndarray:
    """Max pool treated as a sum pool under the ``z`` rule.

    Notes
    -----
    ``q_ij = x_i / (z_j + 1e-16 s(z_j))`` with ``z_j = sum_{i in win(j)} x_i``.
    """
    return sumpool_rule(x, R, pool, stride, "z")


def maxpool_flat(
    x: np.ndarray, R: np.ndarray, pool: Sequence[int], stride: Sequence[int]
) -> np.ndarray:
    """Uniform redistribution over the whole window: ``q_ij = 1/(hp*wp)``."""
    return sumpool_rule(x, R, pool, stride, "flat")


def add_rule(xs: Sequence[np.ndarray], R: np.ndarray, rule: str = "z", **params: Any
             ) -> list[np.ndarray]:
    """Element-wise Add node ``y = sum_k x_k`` (weights 1, no bias).

    Returns
    -------
    list of arrays shaped like ``xs``.

    Notes
    -----
    For every element ``j``: ``z_kj = x_k[j]``, ``z_j = sum_k x_k[j]``, then the same
    share formulas as :func:`linear_rule` with ``w = 1``. ``zbox`` is not defined here.
    """
    _check_rule(rule)
    if rule == "zbox":
        raise ValueError("zbox is not defined for add_rule")
    xs = [_f64(a) for a in xs]
    R = _f64(R)
    shape = xs[0].shape
    K = len(xs)
    # every element is its own tiny layer: "samples" = all elements, I = K inputs, J = 1
    x_el = np.stack([a.reshape(-1) for a in xs], axis=1)              # (E, K)
    r_el = R.reshape(-1)                                              # (E,)
    q_share = _window_shares(x_el, np.ones((K, 1)), None, rule, params)  # (E, K, 1)
    r_in = q_share[:, :, 0] * r_el[:, None]                           # (E, K)
    return [r_in[:, k].reshape(shape) for k in range(K)]


def batchnorm_rule(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, R: np.ndarray,
    rule: str = "z", **params: Any,
) -> np.ndarray:
    """Per-channel affine map ``y = x * scale + shift`` (channel = last axis).

    Notes
    -----
    Each element is a one-input layer with ``w = scale[c]`` and bias ``shift[c]``, so e.g.
    ``z``: ``R_in = safe(x*scale, y + eps*s(y)) * R``; ``flat``: ``R_in = R``.
    """
    _check_rule(rule)
    x, R = _f64(x), _f64(R)
    scale = _f64(scale).reshape(-1)
    shift = _f64(shift).reshape(-1)
    low, high = _box(params, x) if rule == "zbox" else (None, None)
    R_in = np.zeros_like(x)
    for c in range(x.shape[-1]):
        x_c = x[..., c].reshape(-1, 1)
        r_c = R[..., c].reshape(-1, 1)
        lw = None if low is None else low[..., c].reshape(-1, 1)
        hg = None if high is None else high[..., c].reshape(-1, 1)
        q_share = _window_shares(x_c, np.array([[scale[c]]]), np.array([shift[c]]),
                                 rule, params, lw, hg)               # (M, 1, 1)
        R_in[..., c] = (q_share[:, :, 0] * r_c).reshape(x[..., c].shape)
    return R_in


# ----------------------------------------------------------------------------------
# Part B: LRP Toolbox (python/, numpy backend) as specified in TOOLBOX_SEMANTICS.md
# ----------------------------------------------------------------------------------
def _floats(line: str) -> np.ndarray:
    return np.array([float(t) for t in line.split()], dtype=F64)


def read_toolbox_txt(path: str | os.PathLike) -> list[dict]:
    """Parse a toolbox plain-text model (current layout, or legacy Linear layout).

    Returns
    -------
    list of dicts with ``'type'`` in {Linear, Convolution, SumPool, MaxPool, Rect, Tanh,
    SoftMax, Flatten}; Linear: ``W`` (m, n), ``B`` (n,); Convolution: ``W`` (h, w, d, n),
    ``B`` (n,), ``stride``; pools: ``pool``, ``stride``.

    Notes
    -----
    Like the toolbox, reading stops at the first empty line. A Linear block is read in
    the current layout when the line after the header holds ``m*n`` numbers and in the
    legacy layout (``m`` lines of ``n``) when it holds ``n`` (``m == 1``: identical).
    Layer names are matched exactly (the toolbox matches prefixes).
    """
    lines = Path(path).read_text().split("\n")
    layers: list[dict] = []
    k = 0
    while k < len(lines):
        line = lines[k].strip()
        if not line:
            break
        tok = line.split()
        name = tok[0]
        if name == "Linear":
            m, n = int(tok[1]), int(tok[2])
            first = _floats(lines[k + 1])
            if first.size == m * n:
                W = first.reshape(m, n)
                k += 2
            elif first.size == n:
                W = np.stack([_floats(lines[k + 1 + r]) for r in range(m)])
                k += 1 + m
            else:
                raise ValueError(f"{path}: line {k + 2}: expected {m * n} or {n} numbers "
                                 f"for Linear {m} {n}, got {first.size}")
            B = _floats(lines[k])
            if B.size != n or W.shape != (m, n):
                raise ValueError(f"{path}: line {k + 1}: bad Linear {m} {n} block")
            layers.append({"type": "Linear", "W": W, "B": B})
            k += 1
        elif name == "Convolution":
            h, w, d, n, s0, s1 = (int(t) for t in tok[1:7])
            W = _floats(lines[k + 1])
            B = _floats(lines[k + 2])
            if W.size != h * w * d * n or B.size != n:
                raise ValueError(f"{path}: line {k + 1}: bad Convolution block")
            layers.append({"type": "Convolution", "W": W.reshape(h, w, d, n), "B": B,
                           "stride": (s0, s1)})
            k += 3
        elif name in ("SumPool", "MaxPool"):
            hp, wp, s0, s1 = (int(t) for t in tok[1:5])
            layers.append({"type": name, "pool": (hp, wp), "stride": (s0, s1)})
            k += 1
        elif name in ("Rect", "Tanh", "SoftMax", "Flatten"):
            layers.append({"type": name})
            k += 1
        else:
            raise ValueError(f"{path}: line {k + 1}: unknown layer {name!r}")
    return layers


def _tb_conv_forward(X: np.ndarray, W: np.ndarray, B: np.ndarray, stride) -> np.ndarray:
    N, H, Wd, _ = X.shape
    h, w, _, n = W.shape
    s0, s1 = stride
    h_out, w_out = (H - h) // s0 + 1, (Wd - w) // s1 + 1
    Y = np.zeros((N, h_out, w_out, n))
    for i in range(h_out):
        for j in range(w_out):
            Y[:, i, j, :] = (X[:, i * s0:i * s0 + h, j * s1:j * s1 + w, :, None]
                             * W[None]).sum(axis=(1, 2, 3)) + B
    return Y


def _tb_pool_forward(X: np.ndarray, pool, stride, kind: str) -> np.ndarray:
    N, H, W, D = X.shape
    hp, wp = pool
    s0, s1 = stride
    h_out, w_out = int((H - hp) / s0 + 1), int((W - wp) / s1 + 1)
    Y = np.zeros((N, h_out, w_out, D))
    normalizer = 1.0 / np.sqrt(hp * wp)
    for i in range(h_out):
        for j in range(w_out):
            win = X[:, i * s0:i * s0 + hp, j * s1:j * s1 + wp, :]
            if kind == "SumPool":
                Y[:, i, j, :] = win.sum(axis=(1, 2)) * normalizer
            else:
                Y[:, i, j, :] = win.max(axis=(1, 2))
    return Y


def toolbox_forward(layers: Sequence[dict], X: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Toolbox forward pass.

    Returns
    -------
    Y : network output; acts : ``acts[k]`` is the input of layer ``k`` (``acts[0] = X``).

    Notes
    -----
    SumPool is scaled by ``1/sqrt(hp*wp)``; SoftMax has no max-shift; convolution is
    ``(X[:, i*s0:i*s0+h, j*s1:j*s1+w, :, None] * W[None]).sum(axis=(1,2,3)) + B``.
    """
    A = _f64(X)
    acts = []
    for layer in layers:
        acts.append(A)
        t = layer["type"]
        if t == "Linear":
            A = np.dot(A, layer["W"]) + layer["B"]
        elif t == "Convolution":
            A = _tb_conv_forward(A, layer["W"], layer["B"], layer["stride"])
        elif t in ("SumPool", "MaxPool"):
            A = _tb_pool_forward(A, layer["pool"], layer["stride"], t)
        elif t == "Rect":
            A = np.maximum(0, A)
        elif t == "Tanh":
            A = np.tanh(A)
        elif t == "SoftMax":
            e = np.exp(A)
            A = e / e.sum(axis=1, keepdims=True)
        elif t == "Flatten":
            A = A.reshape(A.shape[0], -1)
        else:
            raise ValueError(f"unknown layer type {t!r}")
    return A, acts


_TB_NAMES = {
    None: "simple", "none": "simple", "simple": "simple",
    "epsilon": "epsilon",
    "alphabeta": "alphabeta", "alpha": "alphabeta",
    "flat": "flat",
    "ww": "ww", "w^2": "ww",
}


def _tb_name(lrp_var: str | None) -> str:
    key = lrp_var.lower() if isinstance(lrp_var, str) else lrp_var
    if key not in _TB_NAMES:
        raise ValueError(f"unknown toolbox lrp_var {lrp_var!r}")
    return _TB_NAMES[key]


def _tb_param(var: str, param: Any) -> float:
    if param is None:
        # the toolbox fails with TypeError (eps + None, 1 - None) at the first layer using it
        raise TypeError(f"toolbox lrp_var {var!r} needs a numeric param, got None")
    return float(param)


def _tb_linear_lrp(x, y, W, B, R, var, param) -> np.ndarray:
    """Toolbox Linear LRP; ``y`` is the stored forward output (bias included)."""
    Z = x[:, :, None] * W[None, :, :]                       # (N, m, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        if var == "simple":
            den = y + 1e-16 * sign0(y)
            return (Z * (R / den)[:, None, :]).sum(axis=2)
        if var == "epsilon":
            eps = _tb_param(var, param)
            den = y + eps * sign0(y)
            return (Z * (R / den)[:, None, :]).sum(axis=2)
        if var == "alphabeta":
            alpha = _tb_param(var, param)
            beta = 1 - alpha
            Zplus = Z > 0
            if alpha * beta != 0:
                Zp = Z * Zplus
                Zsp = Zp.sum(axis=1) + (B * (B > 0))[None, :] + 1e-16
                Zn = Z - Zp
                Zsn = y - Zsp - 1e-16
                return (alpha * (Zp * (R / Zsp)[:, None, :]).sum(axis=2)
                        + beta * (Zn * (R / Zsn)[:, None, :]).sum(axis=2))
            if alpha != 0:                      # alpha = 1, beta = 0
                Zp = Z * Zplus
                Zsp = Zp.sum(axis=1) + (B * (B > 0))[None, :] + 1e-16
                return (Zp * (R / Zsp)[:, None, :]).sum(axis=2)
            # alpha = 0, beta = 1
            Zn = Z * np.invert(Zplus)
            Zsn = Zn.sum(axis=1) + (B * (B < 0))[None, :] - 1e-16
            return (Zn * (R / Zsn)[:, None, :]).sum(axis=2)
        if var == "flat":
            m = W.shape[0]
            return (np.ones_like(Z) / m * R[:, None, :]).sum(axis=2)
        if var == "ww":
            Z2 = W ** 2
            Zs = Z2.sum(axis=0, keepdims=True)
            return ((Z2 / Zs)[None, :, :] * R[:, None, :]).sum(axis=2)
    raise ValueError(var)  # pragma: no cover


def _tb_conv_lrp(x, y, W, B, stride, R, var, param) -> np.ndarray:
    """Toolbox Convolution LRP, one output position at a time (stored forward ``y``)."""
    N, H, Wd, D = x.shape
    h, w, d, n = W.shape
    s0, s1 = stride
    _, h_out, w_out, _ = R.shape
    Rx = np.zeros_like(x)
    alpha = beta = None
    if var == "epsilon":
        eps = _tb_param(var, param)
    if var == "alphabeta":
        alpha = _tb_param(var, param)
        beta = 1 - alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(h_out):
            for j in range(w_out):
                rs = slice(i * s0, i * s0 + h)
                cs = slice(j * s1, j * s1 + w)
                Rj = R[:, i, j, :]                                    # (N, n)
                Yj = y[:, i, j, :]                                    # (N, n)
                Z = W[None] * x[:, rs, cs, :, None]                   # (N, h, w, d, n)
                if var in ("simple", "epsilon"):
                    stab = 1e-16 if var == "simple" else eps
                    den = Yj + stab * sign0(Yj)
                    contrib = (Z * (Rj / den)[:, None, None, None, :]).sum(axis=4)
                elif var == "alphabeta":
                    Zplus = Z > 0
                    Bp = (B * (B > 0))[None, :]
                    Bn = (B * (B < 0))[None, :]
                    if alpha * beta != 0:
                        Zp = Z * Zplus
                        Zsp = Zp.sum(axis=(1, 2, 3)) + Bp + 1e-16
                        Zn = Z - Zp
                        Zsn = Yj - Zsp - 1e-16
                        contrib = (alpha * (Zp * (Rj / Zsp)[:, None, None, None, :]).sum(4)
                                   + beta * (Zn * (Rj / Zsn)[:, None, None, None, :]).sum(4))
                    elif alpha != 0:
                        Zp = Z * Zplus
                        Zsp = Zp.sum(axis=(1, 2, 3)) + Bp + 1e-16
                        contrib = (Zp * (Rj / Zsp)[:, None, None, None, :]).sum(4)
                    else:
                        Zn = Z * np.invert(Zplus)
                        Zsn = Zn.sum(axis=(1, 2, 3)) + Bn + 1e-16      # quirk: +1e-16 here
                        contrib = (Zn * (Rj / Zsn)[:, None, None, None, :]).sum(4)
                elif var == "flat":
                    q = np.ones((h, w, d, n)) / (h * w * d)
                    contrib = (q[None] * Rj[:, None, None, None, :]).sum(axis=4)
                elif var == "ww":
                    W2 = W ** 2
                    q = W2 / W2.sum(axis=(0, 1, 2), keepdims=True)
                    contrib = (q[None] * Rj[:, None, None, None, :]).sum(axis=4)
                else:  # pragma: no cover
                    raise ValueError(var)
                Rx[:, rs, cs, :] += contrib
    return Rx


def _tb_sumpool_lrp(x, y, pool, stride, R, var, param, r_squared_bug: bool) -> np.ndarray:
    """Toolbox SumPool LRP; ``S_j = Y_j / (1/sqrt(hp*wp))`` (the scaling cancels)."""
    N, H, W, D = x.shape
    hp, wp = pool
    s0, s1 = stride
    _, h_out, w_out, _ = R.shape
    normalizer = 1.0 / np.sqrt(hp * wp)
    Rx = np.zeros_like(x)
    if var == "epsilon":
        eps = _tb_param(var, param)
    if var == "alphabeta":
        alpha = _tb_param(var, param)
        beta = 1 - alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(h_out):
            for j in range(w_out):
                rs = slice(i * s0, i * s0 + hp)
                cs = slice(j * s1, j * s1 + wp)
                Z = x[:, rs, cs, :]                                   # (N, hp, wp, D)
                Yw = y[:, i:i + 1, j:j + 1, :]                        # (N, 1, 1, D)
                Rw = R[:, i:i + 1, j:j + 1, :]
                S = Yw / normalizer
                if var == "simple":
                    contrib = Z / (S + 1e-12 * sign0(S)) * Rw
                elif var == "epsilon":
                    contrib = Z / (S + eps * sign0(Yw)) * Rw
                elif var == "alphabeta":
                    Zp = Z * (Z > 0)
                    Zsp = Zp.sum(axis=(1, 2), keepdims=True) + 1e-16
                    if alpha * beta != 0:
                        Zn = Z - Zp
                        Zsn = S - Zsp - 1e-16
                        neg_term = Zn * Rw * Rw / Zsn if r_squared_bug else Zn / Zsn * Rw
                        contrib = alpha * Zp / Zsp * Rw + beta * neg_term
                    elif alpha != 0:
                        contrib = Zp / Zsp * Rw
                    else:
                        Zn = Z * (Z <= 0)
                        Zsn = Zn.sum(axis=(1, 2), keepdims=True) - 1e-16
                        contrib = Zn / Zsn * Rw
                elif var in ("flat", "ww"):
                    contrib = np.ones_like(Z) / (hp * wp) * Rw
                else:  # pragma: no cover
                    raise ValueError(var)
                Rx[:, rs, cs, :] += contrib
    return Rx


def _tb_maxpool_lrp(x, y, pool, stride, R, var) -> np.ndarray:
    """Toolbox MaxPool LRP: winner-take-all with shared ties, or uniform for flat/ww."""
    hp, wp = pool
    s0, s1 = stride
    _, h_out, w_out, _ = R.shape
    Rx = np.zeros_like(x)
    for i in range(h_out):
        for j in range(w_out):
            rs = slice(i * s0, i * s0 + hp)
            cs = slice(j * s1, j * s1 + wp)
            Z = x[:, rs, cs, :]
            Yw = y[:, i:i + 1, j:j + 1, :]
            Rw = R[:, i:i + 1, j:j + 1, :]
            if var in ("flat", "ww"):
                Rx[:, rs, cs, :] += np.ones_like(Z) / (hp * wp) * Rw
            else:
                winners = (Z == Yw).astype(F64)
                Rx[:, rs, cs, :] += winners / winners.sum(axis=(1, 2), keepdims=True) * Rw
    return Rx


def toolbox_layer_lrp(
    layer: dict, x: np.ndarray, y: np.ndarray, R: np.ndarray,
    lrp_var: str | None = None, param: Any = None, *, sumpool_r_squared_bug: bool = False,
) -> np.ndarray:
    """Toolbox LRP through one layer.

    Parameters
    ----------
    layer : a dict from :func:`read_toolbox_txt` (or built by hand the same way).
    x, y : the layer's stored forward input and output (from :func:`toolbox_forward`).
    R : relevance at the output (shape of ``y``).
    lrp_var, param : toolbox rule name (case-insensitive; None/'none'/'simple',
        'epsilon', 'alphabeta'/'alpha', 'flat', 'ww'/'w^2') and its parameter
        (epsilon, or alpha with toolbox beta = 1 - alpha).
    sumpool_r_squared_bug : reproduce the toolbox's SumPool alphabeta bug (R_j squared
        in the negative term for general alpha). Off by default: corrected formula.

    Notes
    -----
    simple ``q = z_ij / (Y_j + 1e-16 s(Y_j))`` (SumPool: ``x_i / (S_j + 1e-12 s(S_j))``);
    epsilon ``q = z_ij / (Y_j + eps s(Y_j))``; alphabeta general
    ``alpha z+/P + beta z-/N`` with ``P = sum z+ + b+ + 1e-16`` and ``N = Y - P - 1e-16``.
    """
    var = _tb_name(lrp_var)
    x, y, R = _f64(x), _f64(y), _f64(R)
    t = layer["type"]
    if t == "Linear":
        return _tb_linear_lrp(x, y, _f64(layer["W"]), _f64(layer["B"]), R, var, param)
    if t == "Convolution":
        return _tb_conv_lrp(x, y, _f64(layer["W"]), _f64(layer["B"]), layer["stride"],
                            R, var, param)
    if t == "SumPool":
        return _tb_sumpool_lrp(x, y, layer["pool"], layer["stride"], R, var, param,
                               sumpool_r_squared_bug)
    if t == "MaxPool":
        return _tb_maxpool_lrp(x, y, layer["pool"], layer["stride"], R, var)
    if t in ("Rect", "Tanh", "SoftMax"):
        return R
    if t == "Flatten":
        return R.reshape(x.shape)
    raise ValueError(f"unknown layer type {t!r}")


def _per_layer(value: Any, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} entries for {n} layers")
        return list(value)
    return [value] * n


def toolbox_lrp(
    layers: Sequence[dict], X: np.ndarray, R: np.ndarray,
    lrp_var: str | None | Sequence[str | None] = None, param: Any = None,
    *, sumpool_r_squared_bug: bool = False,
) -> np.ndarray:
    """Toolbox ``Sequential.lrp``: rerun the forward pass on ``X``, then LRP last-to-first.

    Parameters
    ----------
    layers : from :func:`read_toolbox_txt`.
    X : network input; R : relevance at the output (shape of the output).
    lrp_var, param : one value for every layer, or a list with one entry per layer
        (the per-layer presets of ``set_lrp_parameters``).
    sumpool_r_squared_bug : see :func:`toolbox_layer_lrp`.

    Returns
    -------
    R_in : relevance with the shape of ``X``.
    """
    n = len(layers)
    vars_ = _per_layer(lrp_var, n, "lrp_var")
    params = _per_layer(param, n, "param")
    Y, acts = toolbox_forward(layers, X)
    outs = acts[1:] + [Y]
    R = _f64(R)
    for k in range(n - 1, -1, -1):
        R = toolbox_layer_lrp(layers[k], acts[k], outs[k], R, vars_[k], params[k],
                              sumpool_r_squared_bug=sumpool_r_squared_bug)
    return R


# ----------------------------------------------------------------------------------
# test data helpers
# ----------------------------------------------------------------------------------
def shared_dir() -> Path:
    """``$LRPFLOW_SHARED`` or ``<repo root>/../shared``."""
    env = os.environ.get("LRPFLOW_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"


def toolbox_mnist_preprocess(data: np.ndarray) -> np.ndarray:
    """Toolbox demo preprocessing: ``x/127.5 - 1``, ``[N, 28, 28, 1]``, padded to 32x32 with -1."""
    X = _f64(data) / 127.5 - 1.0
    X = X.reshape(X.shape[0], 28, 28, 1)
    return np.pad(X, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="constant", constant_values=-1.0)
