"""Convolution kernels (lrpflow/layers/_windows.py): every path against brute-force loops."""
from __future__ import annotations

import numpy
import pytest

from lrpflow.layers import _windows as win


def brute_conv(x, w, stride, pads):
    t, b, l, r = pads
    xp = numpy.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    kh, kw, _, cout = w.shape
    ho = (xp.shape[1] - kh) // stride[0] + 1
    wo = (xp.shape[2] - kw) // stride[1] + 1
    out = numpy.zeros((x.shape[0], ho, wo, cout))
    for p in range(ho):
        for q in range(wo):
            patch = xp[:, p * stride[0] : p * stride[0] + kh, q * stride[1] : q * stride[1] + kw, :]
            out[:, p, q, :] = numpy.einsum("nabc,abck->nk", patch, w)
    return out


def brute_transpose(s, w, stride, pads, in_shape):
    t, b, l, r = pads
    n, h, wd, cin = in_shape
    kh, kw = w.shape[:2]
    acc = numpy.zeros((n, h + t + b, wd + l + r, cin))
    for p in range(s.shape[1]):
        for q in range(s.shape[2]):
            acc[:, p * stride[0] : p * stride[0] + kh, q * stride[1] : q * stride[1] + kw, :] += \
                numpy.einsum("nk,abck->nabc", s[:, p, q, :], w)
    return acc[:, t : t + h, l : l + wd, :]


def random_geometry(rng, max_channels=4):
    while True:
        kh, kw = (int(v) for v in rng.integers(1, 6, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        h, w = (int(v) for v in rng.integers(1, 13, 2))
        if h + pads[0] + pads[1] >= kh and w + pads[2] + pads[3] >= kw:
            cin, cout = (int(v) for v in rng.integers(1, max_channels + 1, 2))
            return (kh, kw, cin, cout), stride, pads, (int(rng.integers(1, 4)), h, w, cin)


@pytest.mark.parametrize("band", [None, 1, 2, 3, 5])
def test_conv_forward_and_transpose_on_every_path(rng, monkeypatch, band):
    """None: the built-in choice; 1: im2col / batch-last col2im; ≥ 2: banded (Toeplitz) GEMMs."""
    if band is not None:
        monkeypatch.setattr(win, "band_width_forward", lambda *a: min(band, a[-1]))
        monkeypatch.setattr(win, "band_width_transpose", lambda *a: min(band, a[-1]))
    for _ in range(60):
        wshape, stride, pads, xshape = random_geometry(rng)
        x, w = rng.normal(size=xshape), rng.normal(size=wshape)
        y = win.conv_forward(x, w, stride, pads)
        numpy.testing.assert_allclose(y, brute_conv(x, w, stride, pads), rtol=1e-12, atol=1e-12)
        s = rng.normal(size=y.shape)
        g = win.conv_transpose(s, w, stride, pads, x.shape)
        assert g.shape == x.shape and g.flags.c_contiguous
        numpy.testing.assert_allclose(g, brute_transpose(s, w, stride, pads, x.shape), rtol=1e-12, atol=1e-12)
        # adjoint: <conv(x), s> = <x, convᵀ(s)>
        assert abs(numpy.vdot(y, s) - numpy.vdot(x, g)) <= 1e-10 * max(1.0, abs(numpy.vdot(y, s)))


@pytest.mark.parametrize("band", [1, 2, 4])
def test_conv_paths_on_lenet_shapes_and_chunked_workspace(rng, monkeypatch, band):
    """LeNet-5-like layers, float32, with a workspace small enough to force batch chunks."""
    monkeypatch.setattr(win, "band_width_forward", lambda *a: min(band, a[-1]))
    monkeypatch.setattr(win, "band_width_transpose", lambda *a: min(band, a[-1]))
    monkeypatch.setattr(win, "WORKSPACE_ELEMENTS", 5000)
    for xshape, wshape in [((7, 32, 32, 1), (5, 5, 1, 10)), ((5, 14, 14, 10), (5, 5, 10, 25)),
                           ((6, 5, 5, 25), (4, 4, 25, 100))]:
        x = rng.normal(size=xshape).astype(numpy.float32)
        w = rng.normal(size=wshape).astype(numpy.float32)
        y = win.conv_forward(x, w, (1, 1), (0, 0, 0, 0))
        assert y.dtype == numpy.float32
        ref = brute_conv(x.astype(float), w.astype(float), (1, 1), (0, 0, 0, 0))
        numpy.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * numpy.abs(ref).max())
        s = rng.normal(size=y.shape).astype(numpy.float32)
        g = win.conv_transpose(s, w, (1, 1), (0, 0, 0, 0), x.shape)
        assert g.dtype == numpy.float32
        ref = brute_transpose(s.astype(float), w.astype(float), (1, 1), (0, 0, 0, 0), x.shape)
        numpy.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4 * numpy.abs(ref).max())


def test_unrolled_weight_is_the_convolution_as_one_matrix(rng):
    """``x.reshape(N, −1) @ U`` is the convolution and ``s.reshape(N, −1) @ Uᵀ`` its transpose, on any geometry."""
    for _ in range(40):
        wshape, stride, pads, xshape = random_geometry(rng)
        x, w = rng.normal(size=xshape), rng.normal(size=wshape)
        u = win.unrolled_weight(w, xshape[1:3], stride, pads)
        ref = brute_conv(x, w, stride, pads)
        assert u.shape == (numpy.prod(xshape[1:]), numpy.prod(ref.shape[1:]))
        numpy.testing.assert_allclose((x.reshape(len(x), -1) @ u).reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)
        s = rng.normal(size=ref.shape)
        numpy.testing.assert_allclose((s.reshape(len(s), -1) @ u.T).reshape(xshape),
                                      brute_transpose(s, w, stride, pads, xshape), rtol=1e-12, atol=1e-12)


def test_unrolled_form_where_the_grid_is_at_most_half_the_kernel():
    fits = win.unrolled_fits
    assert fits((2, 2), (2, 2), (3, 3), 512, 512)  # VGG-11's last layers: 4 taps per output instead of 9
    assert fits((1, 1), (1, 1), (3, 3), 512, 512)
    assert not fits((3, 3), (3, 3), (3, 3), 8, 8)  # 9 taps either way
    assert not fits((4, 4), (4, 4), (3, 3), 512, 512)  # 16 > 9
    assert not fits((4, 4), (2, 2), (3, 3), 256, 512)  # stride 2 onto 2×2: still 16 input positions per output
    assert not fits((2, 2), (2, 2), (3, 3), 2048, 2048)  # 256 MiB of matrix
    assert not fits((2, 2), (2, 2), (1, 1), 512, 512)  # a 1×1 kernel is a GEMM already


def test_conv_taps_is_the_convolution_and_its_transpose(rng):
    """Tap by tap (stride 1): every geometry, padding wider than the kernel included, against brute force."""
    for _ in range(80):
        wshape, _, pads, xshape = random_geometry(rng)
        x, w = rng.normal(size=xshape), rng.normal(size=wshape)
        ref = brute_conv(x, w, (1, 1), pads)
        z = win.conv_taps(x, w, pads, ref.shape[1:3])
        numpy.testing.assert_allclose(z, ref, rtol=1e-12, atol=1e-12)
        s = rng.normal(size=ref.shape)
        g = win.conv_taps(s, w, pads, xshape[1:3], transpose=True)
        numpy.testing.assert_allclose(g, brute_transpose(s, w, (1, 1), pads, xshape), rtol=1e-12, atol=1e-12)
        assert z.shape == ref.shape and g.shape == xshape


def test_taps_where_padding_is_a_large_share_of_im2col():
    same = (1, 1, 1, 1)
    assert win.taps_fit((4, 4), (4, 4), (3, 3), (1, 1), same)  # VGG-11's 4×4 layers: 100 of 144 taps real
    assert win.taps_fit((3, 3), (3, 3), (3, 3), (1, 1), same)
    assert not win.taps_fit((8, 8), (8, 8), (3, 3), (1, 1), same)  # 0.84 real
    assert not win.taps_fit((4, 4), (2, 2), (3, 3), (2, 2), same)  # stride 2
    assert not win.taps_fit((6, 6), (4, 4), (3, 3), (1, 1), (0, 0, 0, 0))  # no padding: every tap real
    assert not win.taps_fit((4, 4), (4, 4), (1, 1), (1, 1), (0, 0, 0, 0))


def test_conv_kernels_take_the_taps_where_they_fit(rng, monkeypatch):
    calls = []
    real = win.conv_taps
    monkeypatch.setattr(win, "conv_taps", lambda *a, **k: calls.append(k.get("transpose", False)) or real(*a, **k))
    w = rng.normal(size=(3, 3, 6, 5))
    for grid, pads, expect in [((4, 4), (1, 1, 1, 1), [False, True]), ((8, 8), (1, 1, 1, 1), []),
                               ((3, 5), (2, 0, 1, 1), [False, True])]:
        calls.clear()
        x = rng.normal(size=(3, *grid, 6))
        y = win.conv_forward(x, w, (1, 1), pads)
        numpy.testing.assert_allclose(y, brute_conv(x, w, (1, 1), pads), rtol=1e-12, atol=1e-12)
        s = rng.normal(size=y.shape)
        g = win.conv_transpose(s, w, (1, 1), pads, x.shape)
        numpy.testing.assert_allclose(g, brute_transpose(s, w, (1, 1), pads, x.shape), rtol=1e-12, atol=1e-12)
        assert calls == expect and g.flags.c_contiguous


def test_banded_weight_is_the_toeplitz_band():
    w = numpy.arange(2 * 3 * 1 * 2, dtype=float).reshape(2, 3, 1, 2) + 1
    t = win.banded_weight(w, bq=2, s1=2).reshape(2, 5, 1, 2, 2)  # Tw = (2 − 1)·2 + 3 = 5
    numpy.testing.assert_array_equal(t[:, 0:3, :, 0, :], w)
    numpy.testing.assert_array_equal(t[:, 3:5, :, 0, :], 0)
    numpy.testing.assert_array_equal(t[:, 2:5, :, 1, :], w)
    numpy.testing.assert_array_equal(t[:, 0:2, :, 1, :], 0)


def test_band_width_choices_stay_in_range():
    for cin in (1, 3, 10, 64):
        for cout in (1, 10, 25, 64, 128):
            for kw in (1, 3, 5, 7):
                for s1 in (1, 2, 3):
                    for wo in (1, 2, 5, 8, 28, 224):
                        for fn in (win.band_width_forward, win.band_width_transpose):
                            b = fn(cin, cout, kw, s1, wo)
                            assert 1 <= b <= max(1, wo)
                            if s1 >= kw:  # no overlap between windows: a band would be all waste
                                assert b == 1


def test_banded_weights_are_cached_per_layer_until_parameters_change(rng, monkeypatch):
    """A Conv2d keeps its banded weights across calls; set_params (and invalidate) forget them."""
    from lrpflow.layers import Conv2d

    monkeypatch.setattr(win, "band_width_forward", lambda *a: min(2, a[-1]))
    monkeypatch.setattr(win, "band_width_transpose", lambda *a: min(2, a[-1]))
    built = []
    real = win.banded_weight
    monkeypatch.setattr(win, "banded_weight", lambda *a: built.append(a[1:]) or real(*a))
    layer = Conv2d(3, 3, 2, 4, padding=1, rng=0)
    x = rng.normal(size=(2, 6, 6, 2))
    y1 = layer.forward(x)
    layer.apply_transpose(y1, layer.params_like(x)["weight"], [x])
    assert len(built) == 1  # the forward's band serves the transpose too
    numpy.testing.assert_allclose(layer.forward(x), y1, rtol=0, atol=0)
    assert len(built) == 1
    w2 = rng.normal(size=layer.weight.shape)
    layer.set_params(weight=w2)
    y2 = layer.forward(x)
    assert len(built) == 2
    numpy.testing.assert_allclose(y2, brute_conv(x, w2, (1, 1), (1, 1, 1, 1)) + layer.bias, rtol=1e-12, atol=1e-12)
    layer.weight[...] = 0.0  # in place: the documented way is invalidate()
    layer.invalidate()
    numpy.testing.assert_allclose(layer.forward(x), numpy.broadcast_to(layer.bias, y2.shape), atol=0)
    assert len(built) == 3
    assert "_band_cache" not in layer.__getstate__()


def test_window_sums_and_their_transpose_against_loops(rng):
    """Direct (≤ 3×3) and separable (row, then column) window sums, strided and overlapping, by brute
    force; the transpose is the adjoint: ⟨Σ_window x, g⟩ = ⟨x, Σ_windowᵀ g⟩."""
    assert not win.separable((3, 3)) and not win.separable((2, 2)) and not win.separable((1, 7))
    assert win.separable((4, 4)) and win.separable((5, 5)) and win.separable((7, 7)) and win.separable((3, 6))
    for kh, kw, s0, s1 in [(3, 3, 1, 1), (2, 3, 2, 1), (4, 4, 1, 1), (5, 5, 1, 1), (7, 7, 2, 2), (3, 6, 1, 2),
                           (5, 4, 3, 2)]:
        h, w = kh + 2 * s0 + 3, kw + 3 * s1 + 1
        x = rng.normal(size=(2, h, w, 3))
        ho, wo = (h - kh) // s0 + 1, (w - kw) // s1 + 1
        ref = numpy.empty((2, ho, wo, 3))
        for p in range(ho):
            for q in range(wo):
                ref[:, p, q] = x[:, p * s0 : p * s0 + kh, q * s1 : q * s1 + kw].sum(axis=(1, 2))
        numpy.testing.assert_allclose(win.window_sum(x, (kh, kw), (s0, s1)), ref, rtol=1e-12, atol=1e-12)
        counts = win.window_sum(numpy.ones((1, h, w, 1), dtype=numpy.uint8), (kh, kw), (s0, s1))
        assert counts.dtype == numpy.uint8 and (counts == kh * kw).all()
        g = rng.normal(size=ref.shape)
        pads = (1, 0, 2, 1)
        back = win.window_sum_transpose(g, (kh, kw), (s0, s1), x.shape, pads)
        full = numpy.zeros(x.shape)
        for p in range(ho):
            for q in range(wo):
                full[:, p * s0 : p * s0 + kh, q * s1 : q * s1 + kw] += g[:, p, q, None, None, :]
        numpy.testing.assert_allclose(back, full[:, 1:, 2 : w - 1], rtol=1e-12, atol=1e-12)
        assert abs((ref * g).sum() - (x * full).sum()) < 1e-9


def test_maxpool_forward_and_winners_against_loops(rng):
    """Strided-view max pool: overlapping windows, padding (−∞) and ties shared equally, by brute force."""
    from lrpflow.layers import MaxPool

    for _ in range(40):
        kh, kw, s0, s1 = (int(v) for v in rng.integers(1, 4, 4))
        if _ % 2:  # non-overlapping windows (the tiled path)
            s0, s1 = kh, kw
        pads = tuple(int(v) for v in rng.integers(0, min(kh, kw), 4))
        h, w = int(rng.integers(kh, 9)), int(rng.integers(kw, 9))
        x = rng.integers(-2, 3, size=(2, h, w, 3)).astype(float)  # small integers: many ties
        layer = MaxPool(kh, kw, stride=(s0, s1), padding=pads)
        xp_ = numpy.pad(x, ((0, 0), (pads[0], pads[1]), (pads[2], pads[3]), (0, 0)), constant_values=-numpy.inf)
        ho, wo = (xp_.shape[1] - kh) // s0 + 1, (xp_.shape[2] - kw) // s1 + 1
        ref_y = numpy.empty((2, ho, wo, 3))
        ref_r = numpy.zeros_like(xp_)
        r = rng.normal(size=(2, ho, wo, 3))
        for p in range(ho):
            for q in range(wo):
                win_ = xp_[:, p * s0 : p * s0 + kh, q * s1 : q * s1 + kw, :]
                m = win_.max(axis=(1, 2))
                ref_y[:, p, q] = m
                hit = win_ == m[:, None, None, :]
                ref_r[:, p * s0 : p * s0 + kh, q * s1 : q * s1 + kw, :] += hit * (r[:, p, q] / hit.sum(axis=(1, 2)))[:, None, None, :]
        y = layer.forward(x)
        numpy.testing.assert_array_equal(y, ref_y)
        got = layer.winners(x, y, r)
        numpy.testing.assert_allclose(got, ref_r[:, pads[0] : pads[0] + h, pads[2] : pads[2] + w], rtol=1e-12, atol=1e-12)


def test_add_bias_writes_in_place_only_where_that_keeps_the_result():
    from lrpflow.layers.base import add_bias

    z = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    b = numpy.array([1.0, 2.0, 3.0], dtype=numpy.float32)
    out = add_bias(z, b)
    assert out is z and out.tolist() == [[1, 3, 5], [4, 6, 8]]  # the caller's own product: in place
    z = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    out = add_bias(z, b.astype(numpy.float64) + 1e-9)  # a float64 bias promotes: a new array, z untouched
    assert out.dtype == numpy.float64 and z.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out[0, 0] == 1.0 + 1e-9
    ro = numpy.zeros((2, 3), dtype=numpy.float32)
    ro.flags.writeable = False
    assert add_bias(ro, b) is not ro and ro.sum() == 0  # read-only (e.g. a trace value): a new array
    col = numpy.zeros((2, 1), dtype=numpy.float32)
    assert add_bias(col, b).shape == (2, 3) and col.shape == (2, 1)  # broadcasting enlarges: a new array
    view = numpy.zeros((2, 6), dtype=numpy.float32)[:, ::2]
    assert add_bias(view, b).base is None and view.sum() == 0  # not contiguous: a new array
    assert add_bias(z, None) is z


@pytest.mark.parametrize("signed", [False, True])
def test_input_times_transpose_against_loops(rng, signed):
    """``LinearLike.input_times_transpose`` (the plain form every linear-like layer inherits and
    Conv2d's numpy fallback): ``x ⊙ Wᵀ[s_0, s_1]``, or ``Σ_i x⁺_i (Wᵀs)_i + x⁻_i (Wᵀs)_{C+i}``
    when signed, against per-element loops in float64."""
    from lrpflow.layers import Conv2d, Linear

    c, k = 3, 4
    cin = 2 * c if signed else c
    x = rng.normal(size=(2, 5))
    x[0, 1] = 0.0
    dense = Linear(5, 8)
    w = rng.normal(size=(10 if signed else 5, 8))  # a modified weight: [W_a; W_b] stacked when signed
    parts = [rng.normal(size=(2, 3)), rng.normal(size=(2, 5))]
    s = numpy.concatenate(parts, axis=-1)
    d = x.shape[1]
    ref = numpy.zeros_like(x)
    for n in range(2):
        for i in range(d):
            g = [sum(w[row, j] * s[n, j] for j in range(8)) for row in (i, i + d)] if signed else \
                [sum(w[i, j] * s[n, j] for j in range(8))]
            ref[n, i] = max(x[n, i], 0) * g[0] + min(x[n, i], 0) * g[1] if signed else x[n, i] * g[0]
    numpy.testing.assert_allclose(dense.input_times_transpose(x, parts, w, signed=signed), ref, rtol=1e-12, atol=1e-12)

    conv = Conv2d(3, 3, cin, 2 * k, stride=2, padding=1)
    xi = rng.normal(size=(2, 7, 6, c))
    wc = rng.normal(size=(3, 3, cin, 2 * k))
    grid = win.conv_forward(numpy.zeros((2, 7, 6, cin)), wc, conv.stride, conv.pads).shape
    cparts = [rng.normal(size=grid[:3] + (k,)) for _ in range(2)]
    xin = numpy.concatenate([numpy.maximum(xi, 0), numpy.minimum(xi, 0)], axis=-1) if signed else xi
    full = xin * brute_transpose(numpy.concatenate(cparts, axis=-1), wc, conv.stride, conv.pads, xin.shape)
    cref = full[..., :c] + full[..., c:] if signed else full
    out = conv.input_times_transpose(xi, cparts, wc, signed=signed)
    assert cparts == []  # released once joined: not held through the transpose
    assert out.shape == xi.shape and out.dtype == numpy.float64
    numpy.testing.assert_allclose(out, cref, rtol=1e-12, atol=1e-12)
